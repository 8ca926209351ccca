"""
C{esa-tls destconfig} and C{esa-tls alertconfig}: destination controls and
alert recipients through their dialogs.
"""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stderr, redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from esa_tls.cli.destconfig import format_table, parse_table
from esa_tls.cli.main import main
from esa_tls.config.load import load_config
from esa_tls.config.model import AlertRecipient, DestinationTLS

CONFIG = """\
[system]
hostname = "mx.test.example"

[interfaces.Loopback]
address = "127.0.0.1/8"

[listeners.Inboundmail]
type = "public"
interface = "Loopback"
port = 2525
rat = ["example.com"]
"""

#: The ESA's TLS question and its six settings.
TLS_MENU = """\
Do you wish to apply a specific TLS setting for this domain? [N]>y
Do you want to use TLS support?
1. No
2. Preferred
3. Required
4. Preferred (Verify)
5. Required (Verify)
6. Required - Verify Hosted Domains
[2]>6
You have chosen to enable TLS. Please use the 'certconfig' command to
ensure that there is a valid certificate configured.
"""


def answers(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


class DialogTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.config = os.path.join(self.directory, "esa.toml")
        with open(self.config, "w") as f:
            f.write(CONFIG)
        cwd = os.getcwd()
        os.chdir(self.directory)
        self.addCleanup(os.chdir, cwd)

    def dialog(self, command: str, *lines: str) -> str:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdin", io.StringIO(answers(*lines, "")))
        with redirect_stdout(out), redirect_stderr(err):
            status = main(["--config", self.config, command])
        self.assertEqual(status, 0, out.getvalue() + err.getvalue())
        return out.getvalue()

    def commit(self) -> None:
        out = io.StringIO()
        with redirect_stdout(out), redirect_stderr(out):
            status = main(["--config", self.config, "commit", "--no-reload"])
        self.assertEqual(status, 0, out.getvalue())


class DestConfigTests(DialogTestCase):
    def test_new_domain(self) -> None:
        """
        NEW asks the ESA's questions, including the exact TLS question and
        its six settings; the row is written after commit.
        """
        out = self.dialog(
            "destconfig", "new", "Example.NET", "y", "20", "y", "5", "n", "y", "6", "n"
        )
        self.assertIn(TLS_MENU, out)
        self.assertIn("    TLS: Required - Verify Hosted Domains\n", out)
        self.commit()
        row = load_config(self.config).destinations["example.net"]
        self.assertEqual(row.tls, DestinationTLS.REQUIRED_VERIFY_HOSTED)
        self.assertEqual((row.max_host_concurrency, row.max_messages_per_connection), (20, 5))

    def test_no_specific_tls_uses_default(self) -> None:
        """
        Answering no to the specific TLS question leaves the domain on the
        default row's setting; DEFAULT changes that row; DETAIL shows both.
        """
        out = self.dialog(
            "destconfig",
            "new", "example.org", "n", "n", "y", "10", "100", "n",
            "default", "y", "", "n", "n", "3",
            "detail", "ALL",
        )  # fmt: skip
        self.assertIn("    TLS: Default (Required)\n", out)
        self.assertIn("    Recipient limit: 100 per 10 minutes\n", out)
        self.commit()
        config = load_config(self.config)
        self.assertEqual(config.destinations["example.org"].tls, DestinationTLS.DEFAULT)
        self.assertEqual(config.destinations["default"].tls, DestinationTLS.REQUIRED)

    def test_default_row_as_it_runs(self) -> None:
        """
        Without a default row the gateway uses Preferred: LIST and DETAIL
        say so, and editing the default row while keeping its TLS answer
        keeps Preferred (not No, which would send every other domain's
        mail in the clear).
        """
        out = self.dialog("destconfig", "list", "detail", "ALL")
        self.assertRegex(out, r"\(Default\) +\d+ +\d+ +None +Preferred\n")
        self.assertIn("(Default)\n", out)
        self.assertIn("    TLS: Preferred\n", out)
        out = self.dialog("destconfig", "default", "y", "200", "n", "n", "")
        self.assertIn("[2]>", out)
        self.commit()
        default = load_config(self.config).destinations["default"]
        self.assertEqual(
            (default.tls, default.max_host_concurrency), (DestinationTLS.PREFERRED, 200)
        )

    def test_specific_tls_offers_inherited(self) -> None:
        """
        A row that inherits the default row's TLS, given a setting of its
        own, is offered the one it runs with now: Enter keeps the default
        row's Required (not No, which would send its mail in the clear),
        for an existing row (EDIT) and a new one (NEW).
        """
        self.dialog("destconfig", "default", "n", "n", "n", "5", "n")
        self.dialog("destconfig", "new", "bank.example", "n", "n", "n", "n")
        self.commit()
        out = self.dialog(
            "destconfig",
            "edit", "bank.example", "n", "n", "n", "y", "", "n",
            "new", "shop.example", "n", "n", "n", "y", "", "n",
        )  # fmt: skip
        self.assertEqual(out.count("[5]>"), 2, out)
        self.commit()
        config = load_config(self.config)
        self.assertEqual(config.destinations["bank.example"].tls, DestinationTLS.REQUIRED_VERIFY)
        self.assertEqual(config.destinations["shop.example"].tls, DestinationTLS.REQUIRED_VERIFY)

    def test_import_key_twice(self) -> None:
        """
        IMPORT refuses a section that gives a key twice, as TOML does,
        rather than taking the last value (required, then no).
        """
        with open("twice.ini", "w") as f:
            f.write("[bank.example]\ntls = required\nmax_host_concurrency = 10\ntls = no\n")
        out = self.dialog("destconfig", "import", "twice.ini")
        self.assertIn("twice.ini was not imported:", out)
        self.assertIn("line 4: tls is given twice in [bank.example]", out)
        with self.assertRaises(ValueError):
            parse_table("[a.example]\ntls = no\ntls = required\n")

    def test_import_esa_export_keys(self) -> None:
        """
        An ESA export's keys with nothing to set here import when their
        value is what the gateway does anyway, each said in a note; a value
        it cannot honour (limits per MX IP, per Virtual Gateway, IPv6 only)
        refuses the file, naming the line.
        """
        with open("esa.ini", "w") as f:
            f.write(
                "[DEFAULT]\nip_sort_pref = PREFER_V4\nmax_host_concurrency = 500\n"
                "limit_type = host\nlimit_apply = system\nmax_messages_per_connection = 50\n"
                "tls = preferred\nbounce_profile = Default\n\n"
                "[bank.example]\nlimit_type = 0\nlimit_apply = 0\ntls = required-verify\n"
            )
        out = self.dialog("destconfig", "import", "esa.ini")
        self.assertIn("Imported 2 entries from esa.ini", out)
        self.assertIn("  line 2: ip_sort_pref = PREFER_V4: IPv4 addresses are tried first\n", out)
        self.assertIn("  line 8: bounce_profile = Default: not a feature of this gateway", out)
        self.commit()
        config = load_config(self.config)
        self.assertEqual(config.destinations["bank.example"].tls, DestinationTLS.REQUIRED_VERIFY)
        self.assertEqual(config.destinations["default"].max_host_concurrency, 500)
        with open("vg.ini", "w") as f:
            f.write(
                "[DEFAULT]\ntls = preferred\nlimit_apply = VG\n"
                "[a.example]\nlimit_type = MXIP\nip_sort_pref = REQUIRE_v6\n"
            )
        out = self.dialog("destconfig", "import", "vg.ini")
        self.assertIn("vg.ini was not imported:", out)
        self.assertIn("line 3: limit_apply = VG cannot be honoured here (accepted: 0, system)", out)
        self.assertIn("line 5: limit_type = MXIP cannot be honoured here", out)
        self.assertIn("line 6: ip_sort_pref = REQUIRE_v6 cannot be honoured here", out)

    def test_export_import(self) -> None:
        """
        EXPORT writes the table; IMPORT replaces it, refusing a file whose
        values the loader refuses.
        """
        self.dialog("destconfig", "new", "example.net", "n", "n", "n", "y", "3")
        self.dialog("destconfig", "export", "dest.ini")
        with open("dest.ini") as f:
            text = f.read()
        self.assertIn("[example.net]\ntls = required\n", text)
        self.assertEqual(parse_table(text)["example.net"], {"tls": "required"})
        self.assertEqual(format_table(parse_table(text)), text)
        with open("bad.ini", "w") as f:
            f.write("[example.com]\ntls = sometimes\n")
        out = self.dialog("destconfig", "import", "bad.ini")
        self.assertIn("bad.ini was not imported:", out)
        self.assertIn('"sometimes" is not one of', out)
        with open("good.ini", "w") as f:
            f.write("[DEFAULT]\ntls = preferred\n\n[example.com]\ntls = required-verify\n")
        out = self.dialog("destconfig", "import", "good.ini", "list")
        self.assertIn("Imported 2 entries", out)
        self.assertIn("Required (Verify)", out)
        self.commit()
        config = load_config(self.config)
        self.assertNotIn("example.net", config.destinations)
        self.assertEqual(config.destinations["default"].tls, DestinationTLS.PREFERRED)

    def test_setup_alert_switch(self) -> None:
        """
        SETUP switches the TLS-failure alert, warning when nobody would
        receive it.
        """
        out = self.dialog("destconfig", "setup", "y")
        self.assertIn("nobody will receive it", out)
        self.commit()
        self.assertTrue(load_config(self.config).alerts.tls_failure_alert)


class AlertConfigTests(DialogTestCase):
    def test_recipients(self) -> None:
        """
        NEW, EDIT and DELETE alert recipients with their classes and
        severities.
        """
        out = self.dialog(
            "alertconfig",
            "new", "not-an-address", "ops@example.com", "2", "3",
            "new", "all@example.com", "", "",
            "edit", "1", "", "2,3", "1",
            "delete", "all@example.com",
        )  # fmt: skip
        self.assertIn("'not-an-address' is not an email address.", out)
        self.assertIn("1. ops@example.com\n   Class: System - Severities: Warning\n", out)
        self.commit()
        self.assertEqual(
            load_config(self.config).alerts.recipients,
            (
                AlertRecipient(
                    "ops@example.com",
                    severities=("critical", "warning", "info"),
                    types=("system", "hardware"),
                ),
            ),
        )

    def test_capitalised_classes_kept_by_enter(self) -> None:
        """
        The loader takes a recipient's classes and severities in any case
        (C{"Warning"}, as the ESA shows them).  EDIT offers them as the
        current choice, so Enter keeps them, where it used to offer All and
        widen the recipient to every alert; and destconfig SETUP counts
        that recipient as getting the TLS failure alert.
        """
        with open(self.config, "a") as f:
            f.write(
                '\n[[alerts.recipients]]\naddress = "ops@example.com"\n'
                'severities = ["Warning"]\ntypes = ["System", "Hardware"]\n'
            )
        out = self.dialog("alertconfig", "edit", "1", "", "", "")
        self.assertIn("Choose the Alert Class", out)
        self.assertIn("[2,3]>\n", out)
        self.assertIn("[3]>\n", out)
        out = self.dialog("destconfig", "setup", "y")
        self.assertNotIn("nobody will receive it", out)
        self.commit()
        self.assertEqual(
            load_config(self.config).alerts.recipients,
            (
                AlertRecipient(
                    "ops@example.com", severities=("warning",), types=("system", "hardware")
                ),
            ),
        )
