"""
C{esa-tls set KEY.PATH VALUE}: one key at a time, for scripts.
"""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stderr, redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from esa_tls.cli.main import main
from esa_tls.cli.set import parse_value
from esa_tls.config.load import load_config
from esa_tls.config.model import DestinationTLS, TLSMode

CONFIG = """\
# Scripted gateway.
[system]
hostname = "mx.test.example"

[interfaces.Loopback]
address = "127.0.0.1/8"

[listeners.Inboundmail]
type = "public"
interface = "Loopback"
port = 2525       # test port
rat = ["example.com"]
"""


class SetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.config = os.path.join(self.directory, "esa.toml")
        with open(self.config, "w") as f:
            f.write(CONFIG)

    def esa_tls(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdin", io.StringIO(""))
        with redirect_stdout(out), redirect_stderr(err):
            status = main(["--config", self.config, *args])
        return status, out.getvalue(), err.getvalue()

    def commit(self) -> None:
        status, out, err = self.esa_tls("commit", "--no-reload")
        self.assertEqual(status, 0, out + err)

    def test_issue_example(self) -> None:
        """
        The issue's example sets the Default Policy Parameters' TLS; the
        value needs no quotes; the change is pending until commit, which
        keeps the comments.
        """
        status, out, err = self.esa_tls(
            "set", "listeners.Inboundmail.policies.default.tls", "required"
        )
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out,
            'listeners.Inboundmail.policies.default.tls = "required" '
            "(pending: use 'commit' to apply)\n",
        )
        with open(self.config) as f:
            self.assertEqual(f.read(), CONFIG)
        self.commit()
        with open(self.config) as f:
            text = f.read()
        self.assertEqual(
            text, CONFIG + '\n[listeners.Inboundmail.policies.default]\ntls = "required"\n'
        )
        listener = load_config(self.config).listeners["Inboundmail"]
        self.assertEqual(listener.default_policy.tls, TLSMode.REQUIRED)

    def test_values(self) -> None:
        """
        Values are TOML when they parse as TOML (numbers, booleans, arrays,
        quoted strings), else strings.
        """
        self.assertEqual(parse_value("25"), 25)
        self.assertEqual(parse_value("true"), True)
        self.assertEqual(parse_value('["a.example", "b.example"]'), ["a.example", "b.example"])
        self.assertEqual(parse_value('"25"'), "25")
        self.assertEqual(parse_value("required-verify"), "required-verify")
        self.assertEqual(parse_value("10.1.1.1-50"), "10.1.1.1-50")

    def test_several_keys(self) -> None:
        """
        Several C{set}s accumulate in the pending changes, including quoted
        keys and array elements.
        """
        for args in (
            ("listeners.Inboundmail.port", "25"),
            ("listeners.Inboundmail.rat", '["example.com", "example.net"]'),
            ('destinations."example.org".tls', "required-verify"),
            ("listeners.Inboundmail.hat[0].senders", '["10.1.1.1-50"]'),
        ):
            status, out, err = self.esa_tls("set", *args)
            self.assertEqual(status, 0, out + err)
        self.commit()
        config = load_config(self.config)
        listener = config.listeners["Inboundmail"]
        self.assertEqual(listener.port, 25)
        self.assertEqual(listener.rat, ("example.com", "example.net"))
        self.assertEqual(config.destinations["example.org"].tls, DestinationTLS.REQUIRED_VERIFY)
        self.assertEqual(listener.hat[0].name, "WHITELIST")
        self.assertEqual(listener.hat[0].senders, ("10.1.1.1-50",))
        self.assertEqual(len(listener.hat), 5, "the predefined groups were written out")
        with open(self.config) as f:
            self.assertIn("port = 25       # test port\n", f.read())

    def test_refused_value(self) -> None:
        """
        A value the loader refuses is reported naming the key, with exit
        status 1, and the pending configuration is unchanged.
        """
        status, out, err = self.esa_tls("set", "listeners.Inboundmail.port", "70000")
        self.assertEqual(status, 1)
        self.assertEqual(out, "")
        self.assertIn("listeners.Inboundmail.port: 70000 is out of range 1-65535", err)
        self.assertIn("nothing was changed", err)
        self.assertFalse(os.path.exists(self.config + ".pending"))
        status, _, err = self.esa_tls("set", "listeners.Inboundmail.policies.default.tls", "yes")
        self.assertEqual(status, 1)
        self.assertIn('listeners.Inboundmail.policies.default.tls: "yes" is not one of', err)

    def test_misspelt_key(self) -> None:
        """
        A misspelt key is refused with a suggestion.
        """
        status, _, err = self.esa_tls("set", "listeners.Inboundmail.prot", "25")
        self.assertEqual(status, 1)
        self.assertIn("listeners.Inboundmail.prot: unknown key; did you mean 'port'?", err)
        status, _, err = self.esa_tls("set", "listner.Inboundmail.port", "25")
        self.assertEqual(status, 1)
        self.assertIn("listner: unknown key; did you mean 'listeners'?", err)

    def test_predefined_policy_written_out(self) -> None:
        """
        Setting one parameter of a predefined policy writes out its ESA
        values, so the others keep them.
        """
        status, _, err = self.esa_tls(
            "set", "listeners.Inboundmail.policies.TRUSTED.max_msgs_per_session", "5000"
        )
        self.assertEqual(status, 0, err)
        self.commit()
        trusted = load_config(self.config).listeners["Inboundmail"].policies["TRUSTED"]
        self.assertEqual(trusted.max_msgs_per_session, 5000)
        self.assertEqual(trusted.max_rcpts_per_msg, 1000)

    def test_unset(self) -> None:
        """
        C{--unset} removes a key; unsetting one that is not set is an error.
        """
        self.esa_tls("set", "listeners.Inboundmail.max_concurrency", "5")
        status, out, _ = self.esa_tls("set", "--unset", "listeners.Inboundmail.max_concurrency")
        self.assertEqual(status, 0)
        self.assertIn("listeners.Inboundmail.max_concurrency unset", out)
        status, _, err = self.esa_tls("set", "--unset", "listeners.Inboundmail.tcp_queue")
        self.assertEqual(status, 1)
        self.assertIn("is not set", err)

    def test_new_listener_key_by_key(self) -> None:
        """
        A script can build a new listener one key at a time: the faults of
        the unfinished listener are shown as a note, not refused.
        """
        status, _, err = self.esa_tls("set", "listeners.Second.port", "2600")
        self.assertEqual(status, 0, err)
        self.assertIn("note: the pending configuration has other problems", err)
        self.assertIn('missing key "type"', err)
        self.esa_tls("set", "listeners.Second.type", "private")
        status, _, err = self.esa_tls("set", "listeners.Second.interface", "Loopback")
        self.assertEqual((status, err), (0, ""))
        self.commit()
        self.assertEqual(load_config(self.config).listeners["Second"].port, 2600)

    def test_table_value_echoed_on_one_line(self) -> None:
        """
        A table given as VALUE (an inline table, or an array of them) is
        echoed as C{KEY = VALUE} on one line, in the form it was given,
        not as the body of a C{[table]} whose keys look like top-level
        ones.
        """
        status, out, err = self.esa_tls(
            "set", "listeners.Second", '{type = "private", interface = "Loopback", port = 2600}'
        )
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out,
            'listeners.Second = {type = "private", interface = "Loopback", port = 2600} '
            "(pending: use 'commit' to apply)\n",
        )
        status, out, err = self.esa_tls(
            "set",
            "listeners.Second.hat",
            '[{group = "ALL", policy = "RELAYED", senders = ["ALL"]}]',
        )
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out,
            'listeners.Second.hat = [{group = "ALL", policy = "RELAYED", senders = ["ALL"]}] '
            "(pending: use 'commit' to apply)\n",
        )
        self.commit()
        self.assertEqual(load_config(self.config).listeners["Second"].port, 2600)

    def test_usage_errors(self) -> None:
        """
        A bad key path, or a value together with C{--unset}, is a usage
        error (status 2).
        """
        status, _, err = self.esa_tls("set", "listeners..port", "1")
        self.assertEqual(status, 2)
        self.assertIn("esa-tls set:", err)
        status, _, _ = self.esa_tls("set", "--unset", "listeners.Inboundmail.port", "1")
        self.assertEqual(status, 2)
