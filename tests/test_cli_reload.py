"""
C{commit} tells a running gateway to reload: a real C{twistd esa-tls} child
process, a real SMTP client, and the real C{esa-tls} console script.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support import free_port

GATEWAY = """\
# A gateway for the reload test.
[system]
hostname = "mx.test.example"
data_dir = "var"

[interfaces.Loopback]
address = "127.0.0.1/8"

[listeners.Inboundmail]
type = "public"
interface = "Loopback"
port = {port}
rat = ["example.com"]
"""


def program(name: str) -> str:
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.access(path, os.X_OK):
        raise SkipTest(f"{name} is not installed at {path}")
    return path


class ReloadTests(SynchronousTestCase):
    """
    A change committed while the gateway runs applies to new connections.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.port = free_port()
        self.config = os.path.join(self.directory, "gateway.toml")
        with open(self.config, "w") as f:
            f.write(GATEWAY.format(port=self.port))
        self.pidfile = os.path.join(self.directory, "twistd.pid")
        self.logfile = os.path.join(self.directory, "twistd.log")
        self.gateway = subprocess.Popen(
            [
                program("twistd"),
                "-n",
                f"--pidfile={self.pidfile}",
                f"--logfile={self.logfile}",
                "esa-tls",
                "--config",
                self.config,
            ],
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(self.stop)
        self.wait_until_listening()

    def log(self) -> str:
        try:
            with open(self.logfile) as f:
                return f.read()
        except OSError:
            return ""

    def wait_until_listening(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.gateway.poll() is not None:
                self.fail(f"the gateway exited with {self.gateway.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
            except OSError:
                time.sleep(0.1)
                continue
            return
        self.fail(f"the gateway never listened on port {self.port}:\n{self.log()}")

    def stop(self) -> None:
        if self.gateway.poll() is None:
            self.gateway.send_signal(signal.SIGTERM)
            try:
                self.gateway.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.gateway.kill()
                self.gateway.wait()

    def esa_tls(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [program("esa-tls"), "--config", self.config, *args],
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def client(self) -> smtplib.SMTP:
        smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        self.addCleanup(smtp.close)
        return smtp

    def test_commit_reloads_running_gateway(self) -> None:
        """
        After C{set ... tls required} and C{commit}, new connections are
        offered STARTTLS and MAIL before STARTTLS gets C{530 5.7.0}; the
        gateway process is the same one, and a session opened before the
        commit is still served.
        """
        before = self.client()
        code, _ = before.ehlo("before.example")
        self.assertEqual(code, 250)
        self.assertFalse(before.has_extn("starttls"))

        done = self.esa_tls("set", "listeners.Inboundmail.policies.default.tls", "required")
        self.assertEqual(done.returncode, 0, done.stderr)
        done = self.esa_tls("commit", "--pidfile", self.pidfile, "require TLS")
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn(f"The gateway (pid {self.gateway.pid}) was told to reload", done.stdout)

        deadline = time.monotonic() + 60
        while True:
            smtp = self.client()
            smtp.ehlo("after.example")
            if smtp.has_extn("starttls"):
                break
            smtp.quit()
            if time.monotonic() > deadline:
                self.fail(f"STARTTLS never offered after commit:\n{self.log()}")
            time.sleep(0.1)
        code, message = smtp.mail("sender@example.org")
        self.assertEqual(code, 530)
        self.assertTrue(message.startswith(b"5.7.0"), message)
        smtp.quit()

        self.assertIsNone(self.gateway.poll(), "the gateway kept running")
        with open(self.pidfile) as f:
            self.assertEqual(int(f.read().strip()), self.gateway.pid)
        self.assertEqual(before.noop()[0], 250)
        self.assertEqual(before.mail("sender@example.org")[0], 250)
        self.assertIn("configuration reloaded from", self.log())

    def test_commit_of_another_file(self) -> None:
        """
        Committing a file the running gateway does not run (here a copy
        beside it) does not claim that the gateway reloaded it: the output
        names the file the gateway runs, and the gateway is not signalled.
        """
        other = os.path.join(self.directory, "other.toml")
        with open(self.config) as source, open(other, "w") as copy:
            copy.write(source.read())
        done = subprocess.run(
            [program("esa-tls"), "--config", other, "set", "listeners.Inboundmail.tcp_queue", "9"],
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        done = subprocess.run(
            [program("esa-tls"), "--config", other, "commit", "--pidfile", self.pidfile],
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn(
            f"The gateway (pid {self.gateway.pid}) runs {os.path.realpath(self.config)}, "
            f"not {other}: it was not told to reload.",
            done.stdout,
        )
        self.assertNotIn("told to reload its configuration", done.stdout)
        time.sleep(1)
        self.assertNotIn("configuration reloaded from", self.log())

    def test_invalid_commit_leaves_gateway_alone(self) -> None:
        """
        A pending configuration with a fault is refused by C{commit}: the
        file is unchanged, the gateway is not signalled and keeps serving
        with the old settings.
        """
        with open(self.config) as f:
            original = f.read()
        done = self.esa_tls("set", "listeners.Inboundmail.tcp_queue", "10")
        self.assertEqual(done.returncode, 0, done.stderr)
        pending = self.config + ".pending"
        with open(pending) as f:
            text = f.read()
        with open(pending, "w") as f:
            f.write(text.replace('rat = ["example.com"]', 'rat = ["example.com", "ALL"]'))
        done = self.esa_tls("commit", "--pidfile", self.pidfile)
        self.assertEqual(done.returncode, 1)
        self.assertIn("listeners.Inboundmail.rat[1]: ALL is not allowed in a RAT", done.stdout)
        self.assertNotIn("told to reload", done.stdout)
        with open(self.config) as f:
            self.assertEqual(f.read(), original)
        smtp = self.client()
        smtp.ehlo("after.example")
        self.assertEqual(smtp.mail("sender@example.org")[0], 250)
