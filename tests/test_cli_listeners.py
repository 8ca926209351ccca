"""
Tests for the C{esa-tls} command and its C{listeners} command, run as the
installed console script (a real process) and in-process through
L{esa_tls.cli.main.main}.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from esa_tls.cli.main import command_names, main
from esa_tls.config.load import load_config
from esa_tls.summary import listener_summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The listener summary quoted in the seed (Cisco TN 118954).
SEED_BLOCK = b"""\
Name: Inboundmail
Type: Public
Interface: PublicNet (192.168.2.1/24) TCP Port 25
Protocol: SMTP
Default Domain:
Max Concurrency: 1000 (TCP Queue: 50)
Domain map: disabled
TLS: Required
"""

BAD_CONFIG = """\
[interfaces.PublicNet]
address = "192.168.2.1/24"

[listeners.Inboundmail]
type = "public"
interface = "PublicNet"
port = 70000
"""

TWO_LISTENERS = """\
[interfaces.Loop]
address = "127.0.0.1/8"

[listeners.A]
type = "public"
interface = "Loop"
port = 2525
rat = ["example.com"]

[listeners.B]
type = "private"
interface = "Loop"
port = 2526
"""


def script() -> str:
    path = os.path.join(os.path.dirname(sys.executable), "esa-tls")
    if not os.access(path, os.X_OK):
        raise SkipTest(f"the esa-tls console script is not installed at {path}")
    return path


class ConsoleScriptTests(SynchronousTestCase):
    """
    The installed C{esa-tls} script.
    """

    def run_script(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [script(), *args], cwd=ROOT, capture_output=True, timeout=60, check=False
        )

    def test_seed_golden(self) -> None:
        """
        C{esa-tls --config examples/seed.toml listeners} prints the seed's
        listener summary verbatim as its first eight lines.
        """
        done = self.run_script("--config", "examples/seed.toml", "listeners")
        self.assertEqual(done.returncode, 0, done.stderr)
        first_eight = b"".join(done.stdout.splitlines(keepends=True)[:8])
        self.assertEqual(first_eight, SEED_BLOCK)

    def test_bad_config(self) -> None:
        """
        An invalid configuration exits with status 2, the faults on stderr
        as C{FILE:LINE: KEY.PATH: what is wrong}, nothing on stdout.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(BAD_CONFIG)
        done = self.run_script("--config", path, "listeners")
        self.assertEqual(done.returncode, 2)
        self.assertEqual(done.stdout, b"")
        self.assertEqual(
            done.stderr.decode(),
            f"{path}:7: listeners.Inboundmail.port: 70000 is out of range 1-65535\n",
        )


class MainTests(SynchronousTestCase):
    """
    L{main} in-process.
    """

    def main(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            status = main(list(args))
        return status, out.getvalue(), err.getvalue()

    def config(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_blank_line_between(self) -> None:
        """
        Listeners are printed in file order, a blank line between them.
        """
        path = self.config(TWO_LISTENERS)
        status, out, err = self.main("--config", path, "listeners")
        self.assertEqual((status, err), (0, ""))
        config = load_config(path)
        expected = "\n\n".join(listener_summary(config.listeners[n], config) for n in "AB")
        self.assertEqual(out, expected + "\n")
        self.assertEqual([b.splitlines()[0] for b in out.split("\n\n")], ["Name: A", "Name: B"])

    def test_named(self) -> None:
        """
        Listener names select which summaries to print; C{--config} may
        follow the command.
        """
        status, out, _ = self.main("listeners", "B", "--config", self.config(TWO_LISTENERS))
        self.assertEqual(status, 0)
        self.assertEqual(out.splitlines()[0], "Name: B")
        self.assertNotIn("Name: A", out)

    def test_unknown_name(self) -> None:
        """
        An unknown listener name is an error with a suggestion (names are
        case-sensitive).
        """
        status, out, err = self.main("--config", self.config(TWO_LISTENERS), "listeners", "a")
        self.assertEqual((status, out), (2, ""))
        self.assertEqual(err, "esa-tls listeners: no listener named 'a'; did you mean 'A'?\n")

    def test_embedded_default(self) -> None:
        """
        Without C{--config} the embedded default's listener is shown.
        """
        status, out, _ = self.main("listeners")
        self.assertEqual(status, 0)
        self.assertEqual(
            out.splitlines()[:3],
            [
                "Name: InboundMail",
                "Type: Public",
                "Interface: Loopback (127.0.0.1/8) TCP Port 2525",
            ],
        )

    def test_warnings_on_stderr(self) -> None:
        """
        Configuration warnings go to stderr, keeping stdout for the summary.
        """
        text = TWO_LISTENERS + '[listeners.A.policies.default]\nvirus_check = "on"\n'
        status, out, err = self.main("--config", self.config(text), "listeners")
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith("Name: A\n"))
        self.assertIn("listeners.A.policies.default.virus_check: not implemented", err)
        self.assertTrue(err.startswith("warning: "))

    def test_no_command(self) -> None:
        """
        A command is required: usage error, status 2.
        """
        status, _, err = self.main()
        self.assertEqual(status, 2)
        self.assertIn("usage: esa-tls", err)

    def test_help_lists_commands(self) -> None:
        """
        C{--help} lists the discovered commands with their one-line help.
        """
        status, out, _ = self.main("--help")
        self.assertEqual(status, 0)
        self.assertIn("listeners", command_names())
        self.assertIn("  listeners       Print each listener's summary", out)
