"""
The CLI driven as a person drives it: the real C{esa-tls} console script on
a pseudo-terminal, answering each prompt after it appears.  Includes the
seed's TLS dialog as a golden test.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from esa_tls.config.load import load_config

#: The dialog of the seed (Cisco TN 118954), exactly.
SEED_DIALOG = """\
Do you want to allow encrypted TLS connections?
1. No
2. Preferred
3. Required
[1]>3
You have chosen to enable TLS. Please use the 'certconfig' command to
ensure that there is a valid certificate configured.
"""

#: The seed's listener summary after the change.
SEED_SUMMARY = """\
Name: Inboundmail
Type: Public
Interface: PublicNet (192.168.2.1/24) TCP Port 25
Protocol: SMTP
Default Domain:
Max Concurrency: 1000 (TCP Queue: 50)
Domain map: disabled
TLS: Required
"""

#: The seed's listener before TLS is switched on, with comments that must
#: survive the edit.
SEED_CONFIG = """\
# The seed's gateway (Cisco TN 118954).
[system]
hostname = "mail.example.com"
data_dir = "var"

[interfaces.PublicNet]
address = "192.168.2.1/24"   # the public interface

[listeners.Inboundmail]
type = "public"
interface = "PublicNet"
port = 25
protocol = "SMTP"
default_domain = ""
max_concurrency = 1000
tcp_queue = 50
domain_map = false
certificate = "Demo"          # no certificate yet
rat = ["example.com"]
# end of the listener
"""

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")


def script() -> str:
    path = os.path.join(os.path.dirname(sys.executable), "esa-tls")
    if not os.access(path, os.X_OK):
        raise SkipTest(f"the esa-tls console script is not installed at {path}")
    return path


class Terminal:
    """
    A program on a pseudo-terminal, driven expect-style.

    @ivar transcript: everything the terminal showed so far, with CRLF
        turned into LF and terminal control sequences removed.
    """

    def __init__(self, testcase: SynchronousTestCase, args: list[str], cwd: str) -> None:
        try:
            import pty  # noqa: F401  (only to know the platform has ptys)
        except ImportError:
            raise SkipTest("no pseudo-terminals on this platform") from None
        master, slave = os.openpty()
        env = dict(os.environ, HOME=cwd, TERM="dumb", COLUMNS="200", LINES="50")
        self.process = subprocess.Popen(
            args,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        os.close(slave)
        self.master = master
        self.transcript = ""
        self._seen = 0
        testcase.addCleanup(self.close)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:
            data = b""
        if not data:
            return False
        text = data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "")
        self.transcript += _ANSI.sub("", text)
        return True

    def expect(self, text: str, timeout: float = 30) -> str:
        """
        Wait until C{text} is shown after what earlier calls consumed.

        @return: the output from the end of the previous match to the end of
            this one.
        """
        deadline = time.monotonic() + timeout
        while True:
            index = self.transcript.find(text, self._seen)
            if index >= 0:
                chunk = self.transcript[self._seen : index + len(text)]
                self._seen = index + len(text)
                return chunk
            if time.monotonic() > deadline or not self._read(0.2):
                if self.transcript.find(text, self._seen) >= 0:
                    continue
                raise AssertionError(
                    f"{text!r} never appeared; the terminal showed:\n"
                    + self.transcript[self._seen :]
                )

    def send(self, line: str) -> None:
        """
        Type C{line} and Enter.
        """
        os.write(self.master, line.encode() + b"\r")

    def answer(self, prompt: str, line: str) -> str:
        chunk = self.expect(prompt)
        self.send(line)
        return chunk

    def finish(self, timeout: float = 60) -> int:
        """
        Wait for the program to end; read what it still shows.
        """
        deadline = time.monotonic() + timeout
        while self._read(0.2) and time.monotonic() < deadline:
            if self.process.poll() is not None and not select.select([self.master], [], [], 0)[0]:
                break
        return self.process.wait(timeout=max(1.0, deadline - time.monotonic()))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        try:
            os.close(self.master)
        except OSError:
            pass


class SeedDialogTests(SynchronousTestCase):
    """
    C{listenerconfig > EDIT > HOSTACCESS > DEFAULT} on a terminal.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.config = os.path.join(self.directory, "esa.toml")
        with open(self.config, "w") as f:
            f.write(SEED_CONFIG)

    def walk_to_tls(self, terminal: Terminal) -> None:
        terminal.answer("[]>", "edit")
        terminal.answer("listener you wish to edit.\n[]>", "1")
        terminal.answer("[]>", "hostaccess")
        terminal.answer("[]>", "default")
        for question in (
            "maximum message size",
            "concurrent connections allowed from a single IP",
            "messages per connection",
            "recipients per message",
            "override the hostname in the SMTP banner? [N]>",
            "custom SMTP acceptance response? [N]>",
            "custom SMTP rejection response? [N]>",
            "rate limiting per host? [N]>",
        ):
            terminal.expect(question)
            if not question.endswith(">"):
                terminal.expect(">")
            terminal.send("")

    def test_seed_dialog_golden(self) -> None:
        """
        The TLS question, its numbered answers, the bracketed current value
        C{[1]} (No), the answer C{3} and the ESA's note appear on the
        terminal exactly as in the seed; the listener summary that follows
        says C{TLS: Required}; after C{commit} the file has C{tls =
        "required"} in the listener's Default Policy Parameters, keeps its
        comments, validates, and the previous file is kept as a backup.
        """
        terminal = Terminal(
            self, [script(), "--config", self.config, "listenerconfig"], self.directory
        )
        self.walk_to_tls(terminal)
        terminal.expect("\n")  # the echo of the last answer
        dialog = terminal.answer("[1]>", "3") + terminal.expect("configured.\n")
        self.assertEqual(dialog, SEED_DIALOG)
        terminal.answer("verify client certificates? [N]>", "")
        terminal.answer("SMTP Authentication?\n1. No\n2. Yes\n3. Required\n[1]>", "")
        terminal.answer("Remove all entries.\n[]>", "")
        summary = terminal.expect("TLS: Required\n")
        self.assertTrue(summary.endswith(SEED_SUMMARY), summary)
        terminal.answer("[]>", "")
        terminal.answer("[]>", "")
        self.assertEqual(terminal.finish(), 0)
        self.assertIn("Changes are pending", terminal.transcript)
        with open(self.config) as f:
            self.assertEqual(f.read(), SEED_CONFIG, "nothing is written before commit")

        done = subprocess.run(
            [script(), "--config", self.config, "commit", "--pidfile", "none.pid", "TLS on"],
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("Changes committed: ", done.stdout)
        with open(self.config) as f:
            text = f.read()
        self.assertEqual(
            text,
            SEED_CONFIG + '\n[listeners.Inboundmail.policies.default]\ntls = "required"\n',
        )
        with open(self.config + ".bak") as f:
            self.assertEqual(f.read(), SEED_CONFIG)
        config = load_config(self.config)
        self.assertEqual(config.listeners["Inboundmail"].default_policy.tls.value, "required")
        self.assertFalse(os.path.exists(self.config + ".pending"))

    def test_bad_answer_repeats(self) -> None:
        """
        An answer that is not one of the numbers gets a short reason and the
        same prompt again; the next good answer is taken.
        """
        terminal = Terminal(
            self, [script(), "--config", self.config, "listenerconfig"], self.directory
        )
        self.walk_to_tls(terminal)
        terminal.answer("[1]>", "7")
        terminal.expect("Please enter a number from 1 to 3.\n")
        terminal.answer("[1]>", "maybe")
        terminal.expect("Please enter a number from 1 to 3.\n")
        terminal.answer("[1]>", "2")
        terminal.expect("You have chosen to enable TLS.")
        terminal.answer("address list? [N]>", "perhaps")
        terminal.expect("Please answer Y or N.\n")
        terminal.answer("address list? [N]>", "n")
        terminal.answer("verify client certificates? [N]>", "")
        terminal.answer("[1]>", "")
        terminal.answer("[]>", "")
        terminal.expect("TLS: Preferred\n")
        terminal.answer("[]>", "")
        terminal.answer("[]>", "")
        self.assertEqual(terminal.finish(), 0)

    def test_interrupted_dialog_writes_nothing(self) -> None:
        """
        End of input (Ctrl-D) in the middle of a dialog aborts it: no
        pending changes are kept and the file is untouched.
        """
        terminal = Terminal(
            self, [script(), "--config", self.config, "listenerconfig"], self.directory
        )
        self.walk_to_tls(terminal)
        terminal.expect("[1]>")
        os.write(terminal.master, b"\x04")
        terminal.expect("Aborted at the end of the input")
        self.assertEqual(terminal.finish(), 1)
        self.assertFalse(os.path.exists(self.config + ".pending"))
        with open(self.config) as f:
            self.assertEqual(f.read(), SEED_CONFIG)


class ShellTests(SynchronousTestCase):
    """
    C{esa-tls --config FILE cli} on a terminal.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.config = os.path.join(self.directory, "esa.toml")
        with open(self.config, "w") as f:
            f.write(SEED_CONFIG)

    def test_prompt_completion_history(self) -> None:
        """
        The shell prompts with the configured host name; Tab completes a
        command name; C{set} and C{commit} change the file; the commands
        typed are kept in the history file for the next session.
        """
        terminal = Terminal(self, [script(), "--config", self.config, "cli"], self.directory)
        terminal.expect("mail.example.com> ")
        os.write(terminal.master, b"destc\t")
        terminal.expect("destconfig")
        terminal.send("")
        terminal.expect("Export tables to a file.\n[]>")
        terminal.send("")
        terminal.answer("mail.example.com> ", "set listeners.Inboundmail.tcp_queue 64")
        terminal.expect("listeners.Inboundmail.tcp_queue = 64 (pending")
        terminal.answer("mail.example.com> ", "nosuchcommand")
        terminal.expect('Unknown command or missing feature: "nosuchcommand".')
        terminal.answer("mail.example.com> ", "commit")
        terminal.answer("describing your changes:\n[]>", "bigger queue")
        terminal.expect("Changes committed: ")
        terminal.answer("mail.example.com> ", "exit")
        self.assertEqual(terminal.finish(), 0)
        self.assertEqual(load_config(self.config).listeners["Inboundmail"].tcp_queue, 64)
        with open(self.config + ".history") as f:
            self.assertIn("comment=bigger queue", f.read())
        with open(os.path.join(self.directory, ".esa_tls_history")) as f:
            history = [line.strip() for line in f]
        self.assertIn("set listeners.Inboundmail.tcp_queue 64", history)
        self.assertIn("destconfig", history)

    def test_uncommitted_changes_kept(self) -> None:
        """
        Changes not committed when the shell ends wait in C{FILE.pending};
        the next shell says so and can commit them.
        """
        terminal = Terminal(self, [script(), "--config", self.config, "cli"], self.directory)
        terminal.answer("mail.example.com> ", "set listeners.Inboundmail.max_concurrency 10")
        terminal.answer("mail.example.com> ", "exit")
        terminal.expect("Uncommitted changes are kept in")
        self.assertEqual(terminal.finish(), 0)
        self.assertTrue(os.path.exists(self.config + ".pending"))
        with open(self.config) as f:
            self.assertEqual(f.read(), SEED_CONFIG)

        terminal = Terminal(self, [script(), "--config", self.config, "cli"], self.directory)
        terminal.expect("Pending changes from an earlier session were loaded")
        terminal.answer("mail.example.com> ", "commit --pidfile none.pid 'fewer connections'")
        terminal.expect("Changes committed: ")
        terminal.answer("mail.example.com> ", "quit")
        self.assertEqual(terminal.finish(), 0)
        self.assertEqual(load_config(self.config).listeners["Inboundmail"].max_concurrency, 10)
        self.assertFalse(os.path.exists(self.config + ".pending"))
