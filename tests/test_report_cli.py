"""
C{esa-tls report tls}: the table and the JSON of the counters a gateway
left in its data directory, over the window asked for, in-process and as
the installed console script.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from esa_tls.cli.main import main
from esa_tls.report import TLSCounters
from esa_tls.report.storage import report_directory
from esa_tls.report.window import MAX_WINDOW, WindowError, parse_window

CONFIG = """\
[system]
hostname = "mx.example.test"
data_dir = "data"

[interfaces.Loop]
address = "127.0.0.1/8"

[listeners.In]
type = "public"
interface = "Loop"
port = 2525
rat = ["example.com"]
"""


def inline(f: Callable[[], Any]) -> Deferred[Any]:
    return maybeDeferred(f)


class WindowTests(SynchronousTestCase):
    def test_windows(self) -> None:
        """
        Windows are a number and a unit: s, m, h, d or w.
        """
        self.assertEqual(parse_window("24h"), 86400)
        self.assertEqual(parse_window("90m"), 5400)
        self.assertEqual(parse_window("7D"), 7 * 86400)
        self.assertEqual(parse_window("2w"), 14 * 86400)
        for bad in ("", "24", "h", "0h", "-1h", "1y", "1.5h"):
            self.assertRaises(WindowError, parse_window, bad)

    def test_longestWindow(self) -> None:
        """
        A window is at most the 90 days the counts are kept: a longer one
        (which would make a report of millions of empty hours, on the
        admin page's reactor) or a number too long to convert is a
        L{WindowError}, not a hang or another exception.
        """
        self.assertEqual(parse_window("90d"), MAX_WINDOW)
        self.assertEqual(parse_window("129600m"), MAX_WINDOW)
        for bad in ("91d", "13w", "100000w", "7776001s", "1" * 400 + "s", "9" * 5000 + "h"):
            with self.assertRaises(WindowError) as caught:
                parse_window(bad)
            self.assertIn("at most 90d", str(caught.exception))


class ReportCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.config = os.path.join(base, "esa.toml")
        with open(self.config, "w") as f:
            f.write(CONFIG)
        directory = report_directory(os.path.join(base, "data"))
        now = time.time()
        # What a gateway counted 30 hours ago, 2 hours ago and just now.
        for ago, domain, tls, messages in (
            (30 * 3600, "old.example", True, 7),
            (2 * 3600, "partner.example", False, 0),
            (0, "partner.example", True, 4),
        ):
            clock = Clock()
            clock.advance(now - ago)
            counters = TLSCounters(directory, clock, executor=inline, worker="w1")
            counters.outgoing(domain, "required-verify", tls, messages)
            counters.incoming("sender.example", "192.0.2.1", "preferred", True, 2)
            self.successResultOf(counters.flush())

    def main(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            status = main(["--config", self.config, *args])
        return status, out.getvalue(), err.getvalue()

    def test_table(self) -> None:
        """
        The default window is the last 24 hours: the counts from 30 hours
        ago are not in it; the table has the ESA columns and totals.
        """
        status, out, err = self.main("report", "tls")
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("TLS Connections, "), lines[0])
        self.assertEqual(
            lines[3].split(),
            [
                "DOMAIN",
                "REQ-OK",
                "REQ-FAIL",
                "PREF-OK",
                "PREF-FAIL",
                "ATTEMPTED",
                "UNENCRYPTED",
                "TLS%",
                "ENC-MSGS",
            ],
        )
        rows = {line.split()[0]: line.split()[1:] for line in lines[4:] if line.strip()}
        self.assertEqual(rows["partner.example"], ["1", "1", "0", "0", "2", "0", "100.0", "4"])
        self.assertNotIn("old.example", out)
        self.assertEqual(rows["sender.example"], ["0", "0", "2", "0", "2", "0", "100.0", "4"])

    def test_since(self) -> None:
        """
        C{--since} picks the window: 1h holds only the latest hour, 48h
        everything.
        """
        _, out, _ = self.main("report", "tls", "--since", "1h", "--json")
        document = json.loads(out)
        (partner,) = document["outgoing"]["rows"]
        self.assertEqual(partner["counts"]["required_success"], 1)
        self.assertEqual(partner["counts"]["required_failure"], 0)
        _, out, _ = self.main("report", "tls", "--since", "48h", "--json")
        domains = [r["domain"] for r in json.loads(out)["outgoing"]["rows"]]
        self.assertEqual(sorted(domains), ["old.example", "partner.example"])

    def test_json(self) -> None:
        """
        C{--json} prints the report as JSON: totals, rows with the sender
        addresses, and an hourly series over the window.
        """
        status, out, _ = self.main("report", "tls", "--since", "3h", "--json")
        self.assertEqual(status, 0)
        document = json.loads(out)
        self.assertEqual(document["bucket_seconds"], 3600)
        self.assertEqual(document["outgoing"]["total"]["required_failure"], 1)
        self.assertEqual(document["outgoing"]["total"]["encrypted_messages"], 4)
        (sender,) = document["incoming"]["rows"]
        self.assertEqual(sender["addresses"][0]["ip"], "192.0.2.1")
        self.assertEqual(sender["counts"]["preferred_success"], 2)
        self.assertEqual(len(document["series"]), 4)
        self.assertEqual(
            sum(p["outgoing"]["attempted"] for p in document["series"]),
            2,
        )

    def test_byAddress(self) -> None:
        """
        C{--by-address} splits incoming rows by sender IP.
        """
        _, out, _ = self.main("report", "tls", "--by-address")
        self.assertIn("sender.example[192.0.2.1]", out)

    def test_badWindow(self) -> None:
        """
        A malformed window exits with status 2 and says what is accepted.
        """
        status, out, err = self.main("report", "tls", "--since", "yesterday")
        self.assertEqual((status, out), (2, ""))
        self.assertIn("e.g. 24h or 7d", err)

    def test_windowTooLong(self) -> None:
        """
        A window longer than the counts are kept exits with status 2 at
        once (it used to build a report of one row per hour of it).
        """
        status, out, err = self.main("report", "tls", "--since", "100000000w")
        self.assertEqual((status, out), (2, ""))
        self.assertIn("at most 90d", err)

    def test_unknownReport(self) -> None:
        """
        Only the tls report exists.
        """
        status, _, err = self.main("report", "spam")
        self.assertEqual(status, 2)
        self.assertIn("invalid choice", err)

    def test_noData(self) -> None:
        """
        A gateway that never counted anything prints empty sections.
        """
        other = os.path.abspath(self.mktemp())
        os.makedirs(other)
        path = os.path.join(other, "esa.toml")
        with open(path, "w") as f:
            f.write(CONFIG)
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(main(["--config", path, "report", "tls"]), 0)
        self.assertEqual(out.getvalue().count("(no connections)"), 2)

    def test_consoleScript(self) -> None:
        """
        The installed C{esa-tls report tls --json} prints the same JSON.
        """
        script = os.path.join(os.path.dirname(sys.executable), "esa-tls")
        if not os.access(script, os.X_OK):
            raise SkipTest(f"the esa-tls console script is not installed at {script}")
        done = subprocess.run(
            [script, "--config", self.config, "report", "tls", "--json"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        document = json.loads(done.stdout)
        self.assertEqual(document["outgoing"]["total"]["attempted"], 2)
