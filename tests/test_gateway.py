"""
The gateway as an administrator runs it: C{twistd -n esa-tls --config FILE}
as a child process.  It starts, takes mail, refuses a bad file with a clear
message, stops cleanly, and never loses a message it said 250 for, even when
killed with SIGKILL in the middle of DATA.
"""

from __future__ import annotations

import os
import random
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from esa_tls.spool import DurableSpool
from esa_tls.watch import FileWatcher
from tests.support import TWISTD, free_port, in_thread, wait_until


def config_text(data_dir: str, port: int) -> str:
    return f"""
[system]
hostname = "mx.test.example"
data_dir = "{data_dir}"

[interfaces.Loopback]
address = "127.0.0.1/8"

[listeners.InboundMail]
type = "public"
interface = "Loopback"
port = {port}
rat = ["example.com"]

# Nothing may leave this machine: every domain is routed to a closed local
# port, so deliveries are deferred and accepted mail stays in the spool.
[smtp_routes]
ALL = ["127.0.0.1:9"]
"""


class Child:
    """
    A gateway child process on a free port.
    """

    def __init__(self, testcase: TestCase, directory: str, port: int) -> None:
        self.directory = directory
        self.port = port
        self.config = os.path.join(directory, "gateway.toml")
        with open(self.config, "w") as f:
            f.write(config_text(os.path.join(directory, "var"), port))
        self.process: subprocess.Popen[bytes] | None = None
        # One process unless a test asks for more: these tests are about
        # what one gateway does, and must not race worker start-up
        # (tests/test_workers_process.py covers --workers).
        self.workers = 1
        testcase.addCleanup(self.kill)

    def spawn(self) -> None:
        """
        Start C{twistd}, without waiting for it to listen.
        """
        self.process = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "--logfile",
                os.path.join(self.directory, "twistd.log"),
                "esa-tls",
                "--config",
                self.config,
                "--workers",
                str(self.workers),
            ],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    def start(self) -> None:
        """
        Start C{twistd} and wait until it listens.
        """
        self.spawn()

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False

        if not wait_until(listening, 30):
            raise AssertionError(f"gateway did not start: {self.log()}")

    def log(self) -> str:
        try:
            with open(os.path.join(self.directory, "twistd.log")) as f:
                return f.read()
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)


def send_one(port: int, n: int) -> int:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as s:
        s.ehlo()
        s.mail("a@b.test")
        s.rcpt("u@example.com")
        code, reply = s.data(b"Subject: %d\r\n\r\n" % n + b"line\r\n" * 200)
        assert code == 250, (code, reply)
        return int(reply.split()[3])


class GatewayProcessTests(TestCase):
    @inlineCallbacks
    def test_runsTakesMailStops(self) -> Any:
        """
        C{twistd -n esa-tls --config FILE} takes mail, writes the ESA mail
        log, and on SIGTERM exits leaving the message in the spool.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        child = Child(self, directory, free_port())
        yield in_thread(child.start)
        mid = yield in_thread(send_one, child.port, 1)
        child.kill(signal.SIGTERM)
        # twistd stops cleanly, then re-raises the signal so that its exit
        # status says what stopped it (the Unix convention).
        self.assertIn(child.process.returncode if child.process else None, (0, -signal.SIGTERM))
        self.assertIn("Server Shut Down.", child.log())
        spool = DurableSpool(os.path.join(directory, "var", "spool"), reactor)
        self.addCleanup(spool.close)
        self.assertEqual([q.mid for q in spool.queued()], [mid])
        with open(os.path.join(directory, "var", "logs", "mail.log")) as f:
            log = f.read()
        self.assertIn(f"Info: MID {mid} queued for delivery", log)

    def test_badConfigRefused(self) -> None:
        """
        A bad file stops start-up with one line per fault naming the file,
        line and key, and nothing listens.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "bad.toml")
        with open(path, "w") as f:
            f.write(config_text(directory, 70000).replace('rat = ["example.com"]', 'rat = ["ALL"]'))
        result = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "esa-tls", "--config", path],
            cwd=directory,
            capture_output=True,
            timeout=60,
        )
        self.assertNotEqual(result.returncode, 0)
        output = (result.stdout + result.stderr).decode()
        self.assertIn(
            f"{path}:12: listeners.InboundMail.port: 70000 is out of range 1-65535", output
        )
        self.assertIn(
            f"{path}:13: listeners.InboundMail.rat[0]: ALL is not allowed in a RAT", output
        )

    @inlineCallbacks
    def test_crashSafety(self) -> Any:
        """
        Killed with SIGKILL at random moments while clients send, the
        gateway never loses a message it acknowledged: after each restart
        every acknowledged MID is in the spool, complete, and nothing
        half-written is queued.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        child = Child(self, directory, free_port())
        acknowledged: dict[int, int] = {}
        rng = random.Random(os.getpid())

        def load_and_kill() -> None:
            stop = threading.Event()
            counter = iter(range(10**6))
            lock = threading.Lock()

            def client() -> None:
                while not stop.is_set():
                    with lock:
                        n = next(counter)
                    try:
                        mid = send_one(child.port, n)
                    except (OSError, smtplib.SMTPException, AssertionError):
                        continue
                    with lock:
                        acknowledged[mid] = n

            threads = [threading.Thread(target=client) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 1.2))
            child.kill(signal.SIGKILL)
            stop.set()
            for t in threads:
                t.join(30)

        for _ in range(3):
            yield in_thread(child.start)
            yield in_thread(load_and_kill)
        self.assertTrue(acknowledged, "no message was acknowledged before the kills")
        spool = DurableSpool(os.path.join(directory, "var", "spool"), reactor)
        self.addCleanup(spool.close)
        queued = {q.mid: q for q in spool.queued()}
        for mid, n in acknowledged.items():
            self.assertIn(mid, queued)
            with spool.open_body(mid) as f:
                body = f.read()
            self.assertIn(b"\r\nSubject: %d\r\n\r\n" % n, body)
            self.assertTrue(body.endswith(b"line\r\n" * 200))
        for mid in queued:
            with spool.open_body(mid) as f:
                self.assertTrue(f.read().endswith(b"line\r\n" * 200))


def ehlo_and_mail(port: int) -> tuple[bytes, bytes]:
    from tests.support import Raw

    raw = Raw(port)
    try:
        raw.reply()
        return raw.chat(b"EHLO c\r\n"), raw.chat(b"MAIL FROM:<a@b.test>\r\n")
    finally:
        raw.close()


def run_refused(case: TestCase, child: Child, directory: str, workers: int, status: int) -> str:
    """
    Run C{twistd} on C{child}'s configuration in C{directory}, which must
    refuse to start: exit C{status} within 30 seconds, without a traceback.

    @return: what it wrote.
    """
    command = [TWISTD, "-n", "--pidfile=", "esa-tls", "--config", child.config]
    try:
        result = subprocess.run(
            [*command, "--workers", str(workers)],
            cwd=directory,
            capture_output=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired as e:
        started = (e.stdout or b"") + (e.stderr or b"")
        case.fail(f"the gateway started:\n{started.decode()}")
    output = (result.stdout + result.stderr).decode()
    case.assertEqual(result.returncode, status, output)
    case.assertNotIn("Traceback", output)
    return output


class ListenFailureTests(TestCase):
    """
    A port the gateway cannot open stops start-up with a message naming
    what could not listen, where, and why; never a gateway running without
    it.  Before, with one worker, twistd logged an "Unhandled Error"
    traceback, logged the listener as listening, and ran on without it.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.child = Child(self, self.directory, free_port())
        # Someone else has the port.
        self.squatter = socket.socket()
        self.addCleanup(self.squatter.close)
        self.squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.squatter.bind(("127.0.0.1", 0))
        self.squatter.listen()
        self.busy = self.squatter.getsockname()[1]

    def refused(self, workers: int) -> str:
        """
        Run C{twistd}; it must exit with status 1 and no traceback.

        @return: what it wrote.
        """
        output = run_refused(self, self.child, self.directory, workers, status=1)
        self.assertNotIn("Unhandled Error", output)
        return output

    def test_listenerPortInUse(self) -> None:
        """
        A listener's port in use, with one worker and with several.
        """
        with open(self.child.config, "w") as f:
            f.write(config_text(os.path.join(self.directory, "var"), self.busy))
        for workers in (1, 2):
            self.assertIn(
                f"esa-tls: cannot listen: listener InboundMail on 127.0.0.1 port {self.busy}: "
                "Address already in use",
                self.refused(workers),
            )

    def test_adminPortInUse(self) -> None:
        """
        The admin page's port in use, with one worker and with several.
        """
        with open(self.child.config, "a") as f:
            f.write(f'[admin]\nlisten = "tcp:{self.busy}:interface=127.0.0.1"\n')
        for workers in (1, 2):
            output = self.refused(workers)
            self.assertIn(
                f'esa-tls: cannot listen: [admin] listen "tcp:{self.busy}:interface=127.0.0.1": ',
                output,
            )
            self.assertIn("Address already in use", output)


class ReloadTests(TestCase):
    @inlineCallbacks
    def test_sighupReloads(self) -> Any:
        """
        SIGHUP makes a running gateway apply an edited policy to new
        connections without restarting; an invalid edit is refused and the
        gateway goes on with what it had.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        child = Child(self, directory, free_port())
        yield in_thread(child.start)
        ehlo, mail = yield in_thread(ehlo_and_mail, child.port)
        self.assertNotIn(b"STARTTLS", ehlo)
        self.assertEqual(mail, b"250 2.1.0 Ok\r\n")
        assert child.process is not None

        with open(child.config, "a") as f:
            f.write('\n[listeners.InboundMail.policies.default]\ntls = "required"\n')
        child.process.send_signal(signal.SIGHUP)

        def required() -> bool:
            ehlo, mail = ehlo_and_mail(child.port)
            return b"STARTTLS" in ehlo and mail.startswith(b"530 5.7.0")

        self.assertTrue((yield in_thread(wait_until, required, 20)), child.log())

        with open(child.config, "a") as f:
            f.write("\nnot valid toml ===\n")
        child.process.send_signal(signal.SIGHUP)
        self.assertTrue((yield in_thread(wait_until, lambda: "reload refused" in child.log(), 20)))
        self.assertTrue((yield in_thread(required)))
        self.assertIsNone(child.process.poll())

    @inlineCallbacks
    def test_sighupReopensMailLog(self) -> Any:
        """
        After C{logrotate} renamed C{mail.log} (its default, C{create}) and
        sent SIGHUP, every process of a two-process gateway writes to a new
        C{mail.log}: no line goes on into the renamed file.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        child = Child(self, directory, free_port())
        child.workers = 2
        yield in_thread(child.start)
        assert child.process is not None
        mail_log = os.path.join(directory, "var", "logs", "mail.log")
        for n in range(6):
            yield in_thread(send_one, child.port, n)
        rotated = mail_log + ".1"
        os.rename(mail_log, rotated)
        child.process.send_signal(signal.SIGHUP)
        self.assertTrue((yield in_thread(wait_until, lambda: os.path.exists(mail_log), 20)))
        # Both processes have had their SIGHUP (the worker's is forwarded).
        yield in_thread(wait_until, lambda: False, 2)
        with open(rotated) as f:
            before = f.read()
        mids = []
        for n in range(12):
            mids.append((yield in_thread(send_one, child.port, n)))
        yield in_thread(wait_until, lambda: False, 1)
        with open(rotated) as f:
            self.assertEqual(f.read(), before)
        with open(mail_log) as f:
            after = f.read()
        for mid in mids:
            self.assertIn(f"Start MID {mid} ICID", after)


class SpoolSyncTests(TestCase):
    @inlineCallbacks
    def test_filesystemSync(self) -> Any:
        """
        A gateway with C{spool_sync = "filesystem"} (one C{syncfs} per
        phase of a commit batch) acknowledges messages sent at once, each
        whole in the spool after a SIGKILL; a reload that changes the
        setting says it needs a restart.
        """
        from concurrent.futures import ThreadPoolExecutor

        from esa_tls.spool.fs import syncfs_unsupported

        why = syncfs_unsupported()
        if why is not None:
            raise SkipTest(why)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        child = Child(self, directory, free_port())
        with open(child.config) as f:
            text = f.read()
        with open(child.config, "w") as f:
            f.write(text.replace("[system]\n", '[system]\nspool_sync = "filesystem"\n', 1))
        yield in_thread(child.start)

        def send_all() -> list[int]:
            with ThreadPoolExecutor(8) as pool:
                return list(pool.map(lambda n: send_one(child.port, n), range(16)))

        mids = yield in_thread(send_all)
        assert child.process is not None
        with open(child.config, "w") as f:
            f.write(text)
        child.process.send_signal(signal.SIGHUP)
        self.assertTrue(
            (yield in_thread(wait_until, lambda: "spool_sync changed" in child.log(), 20)),
            child.log(),
        )
        self.assertIn("system: spool_sync changed; restart to apply", child.log())
        child.kill()
        spool = DurableSpool(os.path.join(directory, "var", "spool"), reactor)
        self.addCleanup(spool.close)
        self.assertEqual(sorted(q.mid for q in spool.queued()), sorted(mids))
        for n, mid in enumerate(mids):
            with spool.open_body(mid) as body:
                self.assertIn(b"Subject: %d\r\n" % n, body.read())


def served_certificate(port: int) -> bytes:
    """
    The DER certificate the listener serves after STARTTLS.
    """
    import ssl

    from tests.support import Raw

    raw = Raw(port)
    try:
        raw.reply()
        raw.chat(b"EHLO c\r\n")
        raw.chat(b"STARTTLS\r\n")
        raw.starttls()
        der = raw.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        assert isinstance(der, bytes)
        return der
    except ssl.SSLError:
        return b""
    finally:
        raw.close()


def der(issued: Any) -> bytes:
    """
    The DER form of an issued test certificate, as a server sends it.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(issued.cert_pem).public_bytes(Encoding.DER)


class WatchTests(TestCase):
    def serving(self, watch_interval: float) -> tuple[Any, Any, Any, str, str, int]:
        """
        A gateway serving STARTTLS with certificate C{MX}, issued by a test
        CA, from files that it watches every C{watch_interval} seconds.

        @return: the service, the CA, the first certificate issued, the
            certificate and key file paths, and the listener's port.
        """
        from twisted.names.client import Resolver

        from esa_tls.config.load import load_config_with_warnings
        from esa_tls.service import GatewayService
        from esa_tls.testing import CertificateAuthority

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        ca = CertificateAuthority.generate()
        first = ca.issue(["mx.test.example"])
        cert, key, chain = first.write(os.path.join(directory, "tls"))
        port = free_port()
        path = os.path.join(directory, "gateway.toml")
        with open(path, "w") as f:
            f.write(
                config_text(os.path.join(directory, "var"), port).replace(
                    'rat = ["example.com"]', 'rat = ["example.com"]\ncertificate = "MX"'
                )
                + '\n[listeners.InboundMail.policies.default]\ntls = "preferred"\n'
                + f'\n[certificates.MX]\ncert = "{cert}"\nkey = "{key}"\nchain = "{chain}"\n'
            )
        service = GatewayService(
            load_config_with_warnings(path),
            resolver=Resolver(servers=[("127.0.0.1", 53)]),
            watch_interval=watch_interval,
        )
        service.startService()
        self.addCleanup(service.stopService)
        return service, ca, first, cert, key, port

    @inlineCallbacks
    def test_renewedCertificateServed(self) -> Any:
        """
        A certificate renewed in place (files replaced) is served to new
        connections within moments, without SIGHUP or restart; a bad
        replacement is refused and the good one stays in service.
        """
        from esa_tls.testing import expired

        _, ca, first, cert, _, port = self.serving(0.1)
        self.assertEqual((yield in_thread(served_certificate, port)), der(first))
        second = ca.issue(["mx.test.example"])
        second.write(os.path.dirname(cert))
        renewed = yield in_thread(wait_until, lambda: served_certificate(port) == der(second), 20)
        self.assertTrue(renewed)
        expired(ca, ["mx.test.example"]).write(os.path.dirname(cert))
        yield in_thread(wait_until, lambda: False, 1)
        self.assertEqual((yield in_thread(served_certificate, port)), der(second))

    @inlineCallbacks
    def test_certificateLandsDuringTheReload(self) -> Any:
        """
        A renewal that writes the key first and the certificate a moment
        later: the reload the new key starts finds a pair that does not
        match and is refused.  When the certificate lands while that
        reload runs (after it read the files), the watcher must still see
        it as a change and reload again, so that the renewed pair is
        served; the old one must not stay in service until some unrelated
        change.
        """
        from twisted.internet.task import Clock

        service, ca, _, cert, key, port = self.serving(0)
        second = ca.issue(["mx.test.example"])
        refusals: list[list[str]] = []

        def reload_as_the_certificate_lands() -> list[str]:
            problems = service.reload()
            if not refusals:
                refusals.append(problems)
                with open(cert, "wb") as f:
                    f.write(second.cert_pem)
            return problems

        # The gateway's own watcher polls on a timer; this one, over the
        # same files, is checked by hand.
        watcher = FileWatcher(service._watched_files, reload_as_the_certificate_lands, Clock(), 0)
        with open(key, "wb") as f:
            f.write(second.key_pem)
        self.assertTrue(watcher.check())
        [[refused]] = refusals
        self.assertIn("the private key does not match the certificate", refused)
        self.assertTrue(watcher.check())
        self.assertEqual((yield in_thread(served_certificate, port)), der(second))


def certificate_config(child: Child, cert: str, key: str, tls: str = "required") -> str:
    """
    Make C{child}'s listener serve certificate C{Mine} (C{cert} and C{key})
    with TLS C{tls}; return the configuration text written.
    """
    with open(child.config) as f:
        text = f.read()
    text = (
        text.replace('rat = ["example.com"]', 'rat = ["example.com"]\ncertificate = "Mine"')
        + f'\n[listeners.InboundMail.policies.default]\ntls = "{tls}"\n'
        + f'\n[certificates.Mine]\ncert = "{cert}"\nkey = "{key}"\n'
    )
    with open(child.config, "w") as f:
        f.write(text)
    return text


def line_of(text: str, line: str) -> int:
    return text.splitlines().index(line) + 1


class CertificateStartTests(TestCase):
    """
    A certificate a listener serves that fails validation stops start-up
    with a configuration error naming the file, line, key and reason:
    the gateway never listens offering STARTTLS it cannot complete.
    """

    def setUp(self) -> None:
        from esa_tls.testing import CertificateAuthority

        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.ca = CertificateAuthority.generate()
        self.cert, self.key, _ = self.ca.issue(["mx.test.example"]).write(
            os.path.join(self.directory, "tls")
        )
        _, self.other_key, _ = self.ca.issue(["mx.test.example"]).write(
            os.path.join(self.directory, "other")
        )
        self.child = Child(self, self.directory, free_port())

    def refused(self, workers: int = 1) -> str:
        """
        Run C{twistd} on the child's configuration; it must exit at once,
        with status 2 and no traceback, having made nothing.

        @return: what it wrote.
        """
        output = run_refused(self, self.child, self.directory, workers, status=2)
        self.assertIn("esa-tls: configuration error\n", output)
        self.assertFalse(os.path.exists(os.path.join(self.directory, "var")), output)
        return output

    def test_mismatchedKey(self) -> None:
        """
        A key that is not the certificate's: the fault is at C{key}.
        """
        text = certificate_config(self.child, self.cert, self.other_key)
        line = line_of(text, f'key = "{self.other_key}"')
        self.assertIn(
            f"{self.child.config}:{line}: certificates.Mine.key: the private key does not "
            "match the certificate; served by listener InboundMail\n",
            self.refused(),
        )

    def test_notPEMCertificate(self) -> None:
        """
        A certificate file that is not PEM: the fault is at C{cert}.
        """
        garbage = os.path.join(self.directory, "garbage.crt")
        with open(garbage, "w") as f:
            f.write("this is not a certificate\n")
        text = certificate_config(self.child, garbage, self.key)
        line = line_of(text, f'cert = "{garbage}"')
        self.assertIn(
            f"{self.child.config}:{line}: certificates.Mine.cert: certificate file {garbage} "
            "holds no PEM certificate; served by listener InboundMail\n",
            self.refused(),
        )

    def test_certificateAsKey(self) -> None:
        """
        The certificate given as the key too: the fault is at C{key}.
        """
        text = certificate_config(self.child, self.cert, self.cert)
        line = line_of(text, f'key = "{self.cert}"')
        self.assertIn(
            f"{self.child.config}:{line}: certificates.Mine.key: key file {self.cert} holds "
            "no usable PEM private key; served by listener InboundMail\n",
            self.refused(),
        )

    def test_workers(self) -> None:
        """
        With C{--workers 2} start-up stops the same way, before any worker
        is started.
        """
        text = certificate_config(self.child, self.cert, self.other_key)
        line = line_of(text, f'key = "{self.other_key}"')
        output = self.refused(workers=2)
        self.assertIn(f"{self.child.config}:{line}: certificates.Mine.key: ", output)
        self.assertNotIn("worker 1", output)

    @inlineCallbacks
    def test_demoStarts(self) -> Any:
        """
        The Demo certificate, made at the first start, is served with
        Required TLS as before.
        """
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        from esa_tls.tls.demo import DEMO_UNIT

        with open(self.child.config, "a") as f:
            f.write('\n[listeners.InboundMail.policies.default]\ntls = "required"\n')
        yield in_thread(self.child.start)
        der = yield in_thread(served_certificate, self.child.port)
        subject = x509.load_der_x509_certificate(der).subject
        (unit,) = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        self.assertEqual(unit.value, DEMO_UNIT)

    @inlineCallbacks
    def test_unusedBrokenCertificateStarts(self) -> Any:
        """
        A broken certificate that no listener serves does not stop the
        gateway: it is refused with a logged error, and the listener serves
        its own certificate.
        """
        text = certificate_config(self.child, self.cert, self.other_key)
        with open(self.child.config, "w") as f:
            f.write(text.replace('certificate = "Mine"', 'certificate = "Demo"'))
        yield in_thread(self.child.start)
        self.assertNotEqual((yield in_thread(served_certificate, self.child.port)), b"")
        self.assertIn(
            "Certificate Mine refused: the private key does not match the certificate",
            self.child.log(),
        )


class CertificateReloadTests(TestCase):
    """
    A reload that would make a listener serve a certificate failing
    validation is refused as a whole: the old configuration and
    certificate stay in service.
    """

    def setUp(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding
        from twisted.names.client import Resolver

        from esa_tls.config.load import load_config_with_warnings
        from esa_tls.service import GatewayService
        from esa_tls.testing import CertificateAuthority

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.directory = directory
        ca = CertificateAuthority.generate()
        first = ca.issue(["mx.test.example"])
        self.cert, self.key, _ = first.write(os.path.join(directory, "tls"))
        self.first = x509.load_pem_x509_certificate(first.cert_pem).public_bytes(Encoding.DER)
        _, self.other_key, _ = ca.issue(["mx.test.example"]).write(os.path.join(directory, "other"))
        self.child = Child(self, directory, free_port())
        self.text = certificate_config(self.child, self.cert, self.key, tls="preferred")
        self.service = GatewayService(
            load_config_with_warnings(self.child.config),
            resolver=Resolver(servers=[("127.0.0.1", 53)]),
            watch_interval=0,
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)

    @inlineCallbacks
    def assertOldServed(self) -> Any:
        """
        The listener still serves the first certificate with Preferred TLS.
        """
        self.assertEqual((yield in_thread(served_certificate, self.child.port)), self.first)
        ehlo, mail = yield in_thread(ehlo_and_mail, self.child.port)
        self.assertIn(b"STARTTLS", ehlo)
        self.assertEqual(mail, b"250 2.1.0 Ok\r\n")

    @inlineCallbacks
    def test_newBrokenCertificate(self) -> Any:
        """
        An edit that gives the listener a new certificate whose key is not
        its own, and Required TLS, is refused with the fault; nothing of it
        applies.
        """
        yield self.assertOldServed()
        text = (
            self.text.replace('certificate = "Mine"', 'certificate = "New"').replace(
                'tls = "preferred"', 'tls = "required"'
            )
            + f'\n[certificates.New]\ncert = "{self.cert}"\nkey = "{self.other_key}"\n'
        )
        with open(self.child.config, "w") as f:
            f.write(text)
        line = text.splitlines().index(f'key = "{self.other_key}"') + 1
        self.assertEqual(
            self.service.reload(),
            [
                f"{self.child.config}:{line}: certificates.New.key: the private key does not "
                "match the certificate; served by listener InboundMail"
            ],
        )
        self.assertEqual(self.service.config.listeners["InboundMail"].certificate, "Mine")
        yield self.assertOldServed()

    @inlineCallbacks
    def test_keyReplacedInPlace(self) -> Any:
        """
        A key file replaced by another key, in the same reload as an edit to
        Required TLS, is refused the same way: the certificate in service
        and the old policy stay.
        """
        yield self.assertOldServed()
        with open(self.child.config, "w") as f:
            f.write(self.text.replace('tls = "preferred"', 'tls = "required"'))
        with open(self.other_key, "rb") as f:
            other = f.read()
        with open(self.key, "wb") as f:
            f.write(other)
        (problem,) = self.service.reload()
        self.assertIn(
            "certificates.Mine.key: the private key does not match the certificate", problem
        )
        yield self.assertOldServed()


class ReportTests(TestCase):
    @inlineCallbacks
    def test_incomingCountedInReport(self) -> Any:
        """
        A running gateway counts its inbound sessions for the TLS
        Connections report: after a clear and a TLS delivery to a Preferred
        listener and a stop, C{esa-tls report tls --json} shows one
        preferred success, the clear connections, and one encrypted and one
        clear message.
        """
        import json
        import ssl

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        child = Child(self, directory, free_port())
        with open(child.config, "a") as f:
            f.write('\n[listeners.InboundMail.policies.default]\ntls = "preferred"\n')
        yield in_thread(child.start)

        def send(tls: bool) -> None:
            with smtplib.SMTP(
                "127.0.0.1", child.port, local_hostname="client.test", timeout=10
            ) as s:
                if tls:
                    context = ssl.create_default_context()
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                    s.starttls(context=context)
                s.sendmail("a@b.test", ["u@example.com"], b"Subject: r\r\n\r\nx\r\n")

        yield in_thread(send, False)
        yield in_thread(send, True)
        child.kill(signal.SIGTERM)
        result = subprocess.run(
            [
                os.path.join(os.path.dirname(sys.executable), "esa-tls"),
                "--config",
                child.config,
                "report",
                "tls",
                "--json",
            ],
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        total = json.loads(result.stdout)["incoming"]["total"]
        self.assertEqual(
            (
                total["preferred_success"],
                total["unencrypted"],
                total["encrypted_messages"],
                total["unencrypted_messages"],
            ),
            # Two clear connections: the start-up probe that waited for the
            # port, and the clear delivery.
            (1, 2, 1, 1),
        )
