"""
Pending changes, C{commit} and C{clear}: what reaches the configuration
file, when, and what is kept of the previous one.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from esa_tls.cli._pending import PendingConfig, PendingError
from esa_tls.cli.commit import UNKNOWN, reload_gateway, running_configuration
from esa_tls.cli.main import main
from esa_tls.config.errors import ConfigError
from esa_tls.config.load import load_config

CONFIG = """\
# Production gateway: keep this comment.
[system]
hostname = "mx.test.example"

[interfaces.Loopback]
address = "127.0.0.1/8"

[listeners.Inboundmail]   # the public one
type = "public"
interface = "Loopback"
port = 2525
rat = ["example.com"]
"""


class CommitTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.config = os.path.join(self.directory, "esa.toml")
        with open(self.config, "w") as f:
            f.write(CONFIG)
        os.chmod(self.config, 0o640)

    def esa_tls(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdin", io.StringIO(stdin))
        with redirect_stdout(out), redirect_stderr(err):
            status = main(["--config", self.config, *args])
        return status, out.getvalue(), err.getvalue()

    def read(self, path: str | None = None) -> str:
        with open(path or self.config) as f:
            return f.read()


class PendingConfigTests(CommitTestCase):
    """
    L{PendingConfig} directly.
    """

    def test_commit_writes_backup_history(self) -> None:
        """
        A commit replaces the file with the pending text (its mode kept),
        keeps the old file as C{FILE.bak}, records the comment in
        C{FILE.history}, removes C{FILE.pending} and leaves no temporary
        file behind.
        """
        pending = PendingConfig.open(self.config)
        pending.text = CONFIG.replace("port = 2525", "port = 2526")
        pending.save()
        self.assertTrue(os.path.exists(self.config + ".pending"))
        result = PendingConfig.open(self.config).commit("new port")
        self.assertTrue(result.committed)
        self.assertEqual(result.backup, self.config + ".bak")
        self.assertEqual(self.read(), CONFIG.replace("port = 2525", "port = 2526"))
        self.assertEqual(self.read(self.config + ".bak"), CONFIG)
        self.assertEqual(stat.S_IMODE(os.stat(self.config).st_mode), 0o640)
        self.assertIn(" comment=new port\n", self.read(self.config + ".history"))
        self.assertEqual(
            sorted(os.listdir(self.directory)), ["esa.toml", "esa.toml.bak", "esa.toml.history"]
        )

    def test_commit_keeps_owner(self) -> None:
        """
        A commit by root (C{sudo esa-tls commit}) keeps the owner and group
        of the file, of its backup and of the pending file: the gateway,
        running as its own user (C{twistd --uid}), must still be able to
        read the file at the reload the commit asks for.  Before, they
        became root's, and with the usual 0640 the reload was refused.
        """
        if os.geteuid() != 0:
            raise SkipTest("only root can give a file to another user")
        os.chown(self.config, 65534, 65534)
        pending = PendingConfig.open(self.config)
        pending.text = CONFIG.replace("port = 2525", "port = 2526")
        pending.save()
        owners = {}
        owners["pending"] = os.stat(self.config + ".pending")
        PendingConfig.open(self.config).commit("new port")
        owners["file"] = os.stat(self.config)
        owners["backup"] = os.stat(self.config + ".bak")
        self.assertEqual(
            {name: (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) for name, st in owners.items()},
            {name: (65534, 65534, 0o640) for name in owners},
        )

    def test_invalid_refused(self) -> None:
        """
        A pending text with a fault raises L{ConfigError} naming it, and
        nothing is written; the pending changes stay for fixing.
        """
        pending = PendingConfig.open(self.config)
        pending.text = CONFIG.replace('interface = "Loopback"', 'interface = "Nowhere"')
        pending.save()
        with self.assertRaises(ConfigError) as caught:
            PendingConfig.open(self.config).commit()
        self.assertIn(
            'listeners.Inboundmail.interface: unknown interface "Nowhere"', str(caught.exception)
        )
        self.assertEqual(self.read(), CONFIG)
        self.assertFalse(os.path.exists(self.config + ".bak"))
        self.assertTrue(os.path.exists(self.config + ".pending"))

    def certificate_text(self, key: str, certificate: str = "Mine") -> tuple[str, int]:
        """
        The configuration with a C{[certificates.Mine]} whose C{key} is
        C{key} (C{"own"} or C{"other"}, a key of another certificate) and
        the listener serving C{certificate}; and the line of that key.
        """
        from esa_tls.testing import CertificateAuthority

        ca = CertificateAuthority.generate()
        cert, own, _ = ca.issue(["mx.test.example"]).write(os.path.join(self.directory, "mine"))
        _, other, _ = ca.issue(["mx.test.example"]).write(os.path.join(self.directory, "other"))
        path = own if key == "own" else other
        text = (
            CONFIG.replace(
                'rat = ["example.com"]', f'rat = ["example.com"]\ncertificate = "{certificate}"'
            )
            + f'\n[certificates.Mine]\ncert = "{cert}"\nkey = "{path}"\n'
        )
        return text, text.splitlines().index(f'key = "{path}"') + 1

    def test_broken_certificate_refused(self) -> None:
        """
        A pending configuration whose listener would serve a certificate
        that fails validation raises L{ConfigError} naming the file, line,
        key and reason, as the gateway would at start-up; nothing is
        written.
        """
        pending = PendingConfig.open(self.config)
        pending.text, line = self.certificate_text("other")
        pending.save()
        with self.assertRaises(ConfigError) as caught:
            PendingConfig.open(self.config).commit()
        self.assertEqual(
            str(caught.exception),
            f"{self.config}:{line}: certificates.Mine.key: the private key does not match "
            "the certificate; served by listener Inboundmail",
        )
        self.assertEqual(self.read(), CONFIG)
        self.assertFalse(os.path.exists(self.config + ".bak"))
        self.assertTrue(os.path.exists(self.config + ".pending"))

    def test_unused_broken_certificate_committed(self) -> None:
        """
        A broken certificate no listener serves does not stop a commit (the
        gateway logs it and goes on); the certificate a listener serves is
        the one checked.
        """
        pending = PendingConfig.open(self.config)
        pending.text, _ = self.certificate_text("other", certificate="Demo")
        self.assertTrue(pending.commit().committed)
        pending.text, _ = self.certificate_text("own")
        self.assertTrue(pending.commit().committed)

    def test_stale_pending_refused(self) -> None:
        """
        Pending changes made before someone else changed the file are
        refused (committing them would undo that change) until cleared.
        """
        pending = PendingConfig.open(self.config)
        pending.text = CONFIG + "\n[alerts]\ntls_failure_alert = true\n"
        pending.save()
        with open(self.config, "a") as f:
            f.write("# edited by hand\n")
        with self.assertRaises(PendingError) as caught:
            PendingConfig.open(self.config)
        self.assertIn("has changed since the pending changes", str(caught.exception))
        status, out, _ = self.esa_tls("clear")
        self.assertEqual(status, 0)
        self.assertIn("discarded", out)
        self.assertFalse(PendingConfig.open(self.config).changed)

    def test_concurrent_save_refused(self) -> None:
        """
        Two commands editing the same pending changes at once (a long
        dialog in one terminal, C{set} in another): the one that finishes
        second is refused instead of overwriting the other's changes with
        its own copy, and the first one's changes stay pending.  Before,
        the second silently dropped the first's.
        """
        slow = PendingConfig.open(self.config)
        quick = PendingConfig.open(self.config)
        quick.text = CONFIG.replace("port = 2525", "port = 2600")
        quick.save()
        slow.text = CONFIG + "\n[alerts]\ntls_failure_alert = true\n"
        with self.assertRaises(PendingError) as caught:
            slow.save()
        self.assertIn("changed by another esa-tls command", str(caught.exception))
        self.assertEqual(PendingConfig.open(self.config).text, quick.text)
        # Saving again what it saved itself is fine.
        quick.text = CONFIG.replace("port = 2525", "port = 2601")
        quick.save()
        self.assertEqual(PendingConfig.open(self.config).text, quick.text)

    def test_concurrent_commit_refused(self) -> None:
        """
        A shell that committed would write its copy and remove the
        pending file another command saved meanwhile: refused, nothing
        written, the other's changes still pending.
        """
        shell = PendingConfig.open(self.config)
        shell.text = CONFIG + "\n[alerts]\ntls_failure_alert = true\n"
        other = PendingConfig.open(self.config)
        other.text = CONFIG.replace("port = 2525", "port = 2600")
        other.save()
        with self.assertRaises(PendingError):
            shell.commit("mine")
        self.assertEqual(self.read(), CONFIG)
        self.assertEqual(PendingConfig.open(self.config).text, other.text)

    def test_new_file(self) -> None:
        """
        A configuration file that does not exist yet starts from the
        embedded default; commit creates it, with no backup.
        """
        path = os.path.join(self.directory, "new.toml")
        pending = PendingConfig.open(path)
        self.assertFalse(pending.exists)
        pending.text = pending.text.replace("port = 2525", "port = 2600")
        result = pending.commit()
        self.assertIsNone(result.backup)
        self.assertEqual(load_config(path).listeners["InboundMail"].port, 2600)


class CommandTests(CommitTestCase):
    """
    The C{commit} and C{clear} commands.
    """

    def test_nothing_to_commit(self) -> None:
        """
        Without pending changes, commit says so and writes nothing.
        """
        status, out, _ = self.esa_tls("commit")
        self.assertEqual((status, out), (0, "There are no changes to commit.\n"))
        self.assertFalse(os.path.exists(self.config + ".bak"))

    def test_commit_refused_lists_faults(self) -> None:
        """
        An invalid pending configuration is refused by the command with every
        fault and exit status 1.
        """
        pending = PendingConfig.open(self.config)
        pending.text = CONFIG.replace("port = 2525", "port = 0").replace(
            '"example.com"', '"example.com", "ALL"'
        )
        pending.save()
        status, out, _ = self.esa_tls("commit", "--no-reload")
        self.assertEqual(status, 1)
        self.assertIn("cannot be committed", out)
        self.assertIn("listeners.Inboundmail.port: 0 is out of range 1-65535", out)
        self.assertIn("listeners.Inboundmail.rat[1]: ALL is not allowed", out)
        self.assertEqual(self.read(), CONFIG)

    def test_commit_refuses_broken_certificate(self) -> None:
        """
        The command refuses a configuration whose listener would serve a
        certificate that fails validation, with the fault, and exit status 1.
        """
        pending = PendingConfig.open(self.config)
        pending.text = CONFIG.replace(
            'rat = ["example.com"]', 'rat = ["example.com"]\ncertificate = "Mine"'
        ) + (f'\n[certificates.Mine]\ncert = "{self.config}"\nkey = "{self.config}"\n')
        pending.save()
        status, out, _ = self.esa_tls("commit", "--no-reload")
        self.assertEqual(status, 1)
        self.assertIn("cannot be committed", out)
        self.assertIn(
            f"certificates.Mine.cert: certificate file {self.config} holds no PEM "
            "certificate; served by listener Inboundmail",
            out,
        )
        self.assertEqual(self.read(), CONFIG)

    def test_clear(self) -> None:
        """
        clear drops the pending changes; the file is untouched.
        """
        self.esa_tls("set", "listeners.Inboundmail.port", "2600")
        status, out, _ = self.esa_tls("clear")
        self.assertEqual((status, out), (0, "All pending changes have been discarded.\n"))
        self.assertFalse(os.path.exists(self.config + ".pending"))
        status, out, _ = self.esa_tls("clear")
        self.assertEqual(out, "There are no pending changes to discard.\n")
        self.assertEqual(self.read(), CONFIG)

    def test_dialog_overtaken(self) -> None:
        """
        A dialog during which another command saved pending changes ends
        with the conflict said (exit status 2) and the other's changes
        kept, not with a traceback or a silent overwrite.
        """

        class Overtaken(io.StringIO):
            """
            The dialog's answers; while the administrator types the
            second, someone else runs C{esa-tls set}.
            """

            def __init__(self, case: CommandTests, text: str) -> None:
                super().__init__(text)
                self.case, self.lines = case, 0

            def readline(self, *args: Any) -> str:
                self.lines += 1
                if self.lines == 2:
                    pending = PendingConfig.open(self.case.config)
                    pending.text = CONFIG.replace("port = 2525", "port = 2600")
                    pending.save()
                return super().readline(*args)

        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdin", Overtaken(self, "edit\n1\nlimits\n20\n\n\n\n"))
        with redirect_stdout(out), redirect_stderr(err):
            status = main(["--config", self.config, "listenerconfig"])
        self.assertEqual(status, 2, out.getvalue() + err.getvalue())
        self.assertIn("changed by another esa-tls command", err.getvalue())
        self.assertNotIn("Traceback", out.getvalue() + err.getvalue())
        self.assertEqual(
            PendingConfig.open(self.config).text, CONFIG.replace("port = 2525", "port = 2600")
        )

    def test_no_config(self) -> None:
        """
        Commands that change the configuration need C{--config}.
        """
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            status = main(["commit"])
        self.assertEqual(status, 2)
        self.assertIn("--config FILE", err.getvalue())

    def test_shell_here_document(self) -> None:
        """
        The shell reads its commands from a here-document; C{clear} drops
        what was set; C{commit} with a comment applies the rest.
        """
        status, out, _ = self.esa_tls(
            "cli",
            stdin=(
                "set listeners.Inboundmail.port 2600\n"
                "clear\n"
                "set listeners.Inboundmail.max_concurrency 77\n"
                "commit --no-reload shell test\n"
            ),
        )
        self.assertEqual(status, 0, out)
        self.assertIn("mx.test.example> set listeners.Inboundmail.port 2600\n", out)
        self.assertIn("All pending changes have been discarded.", out)
        self.assertIn("Changes committed: ", out)
        listener = load_config(self.config).listeners["Inboundmail"]
        self.assertEqual((listener.port, listener.max_concurrency), (2525, 77))
        self.assertIn("comment=shell test", self.read(self.config + ".history"))
        self.assertIn("# Production gateway: keep this comment.\n", self.read())
        self.assertIn("[listeners.Inboundmail]   # the public one\n", self.read())


class ReloadGatewayTests(SynchronousTestCase):
    """
    L{reload_gateway}: finding the gateway through its pid file.
    """

    def test_no_pidfile(self) -> None:
        """
        Without a pid file there is no gateway to tell.
        """
        message = reload_gateway(os.path.abspath(self.mktemp()))
        self.assertIn("No running gateway found", message)

    def test_garbage_pidfile(self) -> None:
        """
        A pid file without a process id is reported, nothing signalled.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a pid\n")
        self.assertIn("does not hold a process id", reload_gateway(path))

    def test_pidfile_int_cannot_read(self) -> None:
        """
        A pid file whose digits C{int()} refuses (C{²}), that is not UTF-8,
        or that is huge, is reported as holding no process id: the commit
        is already written, and must not end in a traceback.
        """
        for content in ("²".encode(), b"\xff\xfe12", b"9" * 100_000):
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(content)
            self.assertIn("does not hold a process id", reload_gateway(path))

    def test_process_gone(self) -> None:
        """
        A pid file naming a process that has exited is reported as a
        gateway that is not running.
        """
        child = subprocess.Popen([sys.executable, "-c", "pass # esa"])
        child.wait()
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"{child.pid}\n")
        self.assertIn("is not running", reload_gateway(path))

    def test_not_a_gateway(self) -> None:
        """
        A stale pid file naming some other program does not get it signalled
        (SIGHUP would terminate it).
        """
        child = subprocess.Popen(["sleep", "60"])
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"{child.pid}\n")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(f"/proc/{child.pid}/cmdline", "rb") as f:
                if b"sleep" in f.read():
                    break
        self.assertIn("is not an esa-tls gateway", reload_gateway(path))
        self.assertIsNone(child.poll())

    def fake_gateway(self, *args: str, cwd: str | None = None) -> tuple[int, str]:
        """
        A process whose command line reads as C{twistd -n esa-tls ARGS}
        (it handles C{SIGHUP} by writing a file, so a signal shows), and
        its pid file.

        @return: its pid and the pid file.
        """
        code = (
            "import signal, sys, time\n"
            "signal.signal(signal.SIGHUP, lambda *a: open('hupped', 'w').close())\n"
            "open('ready', 'w').close()\n"
            "time.sleep(60)\n"
        )
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        child = subprocess.Popen(
            [sys.executable, "-c", code, "twistd", "-n", "esa-tls", *args],
            cwd=cwd or directory,
        )
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(cwd or directory, "ready")):
            self.assertLess(time.monotonic(), deadline, "the fake gateway never started")
            time.sleep(0.01)
        self.hupped = os.path.join(cwd or directory, "hupped")
        pidfile = os.path.join(directory, "twistd.pid")
        with open(pidfile, "w") as f:
            f.write(f"{child.pid}\n")
        return child.pid, pidfile

    def test_embedded_default_not_told(self) -> None:
        """
        A gateway started without C{--config} (C{make run}) runs the
        embedded default: committing a file does not claim it reloaded
        that file, and it is not signalled.
        """
        config = os.path.abspath(self.mktemp())
        pid, pidfile = self.fake_gateway("--workers", "1")
        self.assertIsNone(running_configuration(pid))
        message = reload_gateway(pidfile, config)
        self.assertEqual(
            message,
            f"The gateway (pid {pid}) runs the embedded default configuration, not {config}: "
            f"it was not told to reload. Start it with 'twistd -n esa-tls --config {config}' "
            "to run this file.",
        )
        self.assertFalse(os.path.exists(self.hupped))

    def test_other_file_not_told(self) -> None:
        """
        A gateway running another file (in any of the option's spellings)
        is not told to reload the one committed; one running this file is.
        """
        config = os.path.realpath(self.mktemp())
        other = os.path.realpath(self.mktemp())
        for args in (["--config", other], [f"--config={other}"], ["-c", other], [f"-c{other}"]):
            pid, pidfile = self.fake_gateway(*args)
            self.assertEqual(running_configuration(pid), other)
            message = reload_gateway(pidfile, config)
            self.assertIn(f"runs {other}, not {config}: it was not told to reload", message)
            self.assertFalse(os.path.exists(self.hupped))
        pid, pidfile = self.fake_gateway("-w", "2", "--conf", config)
        self.assertEqual(
            reload_gateway(pidfile, config),
            f"The gateway (pid {pid}) was told to reload its configuration.",
        )
        deadline = time.monotonic() + 30
        while not os.path.exists(self.hupped):
            self.assertLess(time.monotonic(), deadline, "the gateway was not signalled")
            time.sleep(0.01)

    def test_relative_file_told(self) -> None:
        """
        A relative C{--config} cannot be compared (the gateway resolved it
        before C{twistd --rundir} moved it): the gateway is signalled, as
        without the check.
        """
        pid, pidfile = self.fake_gateway("--config", "gateway.toml")
        self.assertEqual(running_configuration(pid), UNKNOWN)
        self.assertIn("was told to reload", reload_gateway(pidfile, self.mktemp()))
