"""
C{twistd -n esa-tls --workers N} as an administrator runs it: N processes
serve one set of listening sockets and one spool; the limits hold for the
gateway as a whole; SIGHUP reaches every worker, SIGTERM stops them all, a
worker that dies is replaced, and a gateway killed with SIGKILL leaves no
worker behind holding its port.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from esa_tls.config.model import WorkerCPUAffinity
from esa_tls.workers import SharedLimits, WorkerPool, WorkerRole, cpu_plan
from tests.support import TWISTD, Raw, free_port, in_thread, wait_until
from tests.test_gateway import Child

CONFIG = """
[system]
hostname = "mx.test.example"
data_dir = "{data_dir}"
{system}
[interfaces.Loopback]
address = "127.0.0.1/8"

[listeners.InboundMail]
type = "public"
interface = "Loopback"
port = {port}
rat = ["example.com"]
max_concurrency = {listener_limit}

[listeners.InboundMail.policies.LIMITED]
rule = "ACCEPT"
max_concurrency = {ip_limit}
max_rcpts_per_hour = {rcpt_limit}

[[listeners.InboundMail.hat]]
group = "LOCAL"
policy = "LIMITED"
senders = ["127.0.0.0/8"]
{extra}"""


def children(pid: int) -> list[int]:
    """
    The live child processes of C{pid}.
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.append(int(name))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


class Gateway(Child):
    """
    A C{twistd -n esa-tls --workers N} child process on a free port.
    """

    def __init__(
        self,
        case: TestCase,
        workers: int,
        listener_limit: int = 1000,
        ip_limit: int = 10,
        rcpt_limit: int = -1,
        extra: str = "",
        system: str = "",
    ) -> None:
        directory = os.path.abspath(case.mktemp())
        os.makedirs(directory)
        super().__init__(case, directory, free_port())
        self.workers = workers
        with open(self.config, "w") as f:
            f.write(
                CONFIG.format(
                    data_dir=os.path.join(self.directory, "var"),
                    port=self.port,
                    listener_limit=listener_limit,
                    ip_limit=ip_limit,
                    rcpt_limit=rcpt_limit,
                    extra=extra,
                    system=system,
                )
            )
        self.sockets: list[socket.socket] = []
        case.addCleanup(self.cleanup)

    def start(self) -> None:
        """
        Start C{twistd} and wait until the parent and every worker listen.
        """
        self.spawn()
        ready = [f"[worker {i}] listener InboundMail" for i in range(1, self.workers)]
        if not wait_until(
            lambda: "listener InboundMail" in self.log() and all(r in self.log() for r in ready),
            60,
        ):
            raise AssertionError(f"gateway did not start:\n{self.log()}")

    def reload(self, old: str, new: str) -> None:
        """
        Change the first C{old} in the configuration file to C{new}, and
        send the parent SIGHUP (which it passes on to every worker).
        """
        with open(self.config) as f:
            text = f.read()
        with open(self.config, "w") as f:
            f.write(text.replace(old, new, 1))
        os.kill(self.pid, signal.SIGHUP)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def connect(self, source: str = "127.0.0.1") -> bytes:
        """
        Open a session and return its first reply line; the socket stays
        open (idle) until the test ends.
        """
        sock = socket.create_connection(
            ("127.0.0.1", self.port), timeout=10, source_address=(source, 0)
        )
        self.sockets.append(sock)
        f = sock.makefile("rb")
        line = f.readline()
        if line.startswith(b"421"):
            # Refused: wait until the gateway has closed its end, and then
            # a moment more: Twisted closes the socket just before it tells
            # the session, which then gives back the slot it held.
            f.read()
            time.sleep(0.2)
        return line

    def cleanup(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.process is not None and self.process.poll() is None:
            for pid in [self.pid, *children(self.pid)]:
                try:
                    os.kill(pid, signal.SIGCONT)
                except OSError:
                    pass
            self.process.kill()
            self.process.wait(30)


class Sink:
    """
    A minimal SMTP server in a thread that takes every message and keeps
    it: the destination of the gateway's deliveries.
    """

    def __init__(self, case: TestCase) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port: int = self.server.getsockname()[1]
        self.messages: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        case.addCleanup(self.server.close)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                f = conn.makefile("rb")
                conn.sendall(b"220 sink.test ESMTP\r\n")
                while True:
                    line = f.readline()
                    if not line:
                        break
                    verb = line[:4].upper()
                    if verb == b"DATA":
                        conn.sendall(b"354 go on\r\n")
                        body = b""
                        while not body.endswith(b"\r\n.\r\n"):
                            chunk = f.readline()
                            if not chunk:
                                break
                            body += chunk
                        self.messages.append(body)
                        conn.sendall(b"250 2.0.0 kept\r\n")
                    elif verb == b"QUIT":
                        conn.sendall(b"221 bye\r\n")
                        break
                    else:
                        conn.sendall(b"250 ok\r\n")


class WorkerTests(TestCase):
    @inlineCallbacks
    def test_workersMailDeliveredAtOnce(self) -> Any:
        """
        A message accepted by worker 1 is delivered by the parent's
        delivery engine at once (the worker tells the parent), not at the
        engine's next scan of the queue half a minute later.
        """
        sink = Sink(self)
        gateway = Gateway(
            self,
            workers=2,
            extra=f'\n[smtp_routes]\n"example.com" = ["127.0.0.1:{sink.port}"]\n',
        )
        yield in_thread(gateway.start)
        [worker] = children(gateway.pid)

        def send() -> bytes:
            os.kill(gateway.pid, signal.SIGSTOP)
            try:
                with smtplib.SMTP(
                    "127.0.0.1", gateway.port, local_hostname="client.test", timeout=10
                ) as s:
                    s.ehlo()
                    s.mail("a@client.test")
                    s.rcpt("u@example.com")
                    reply: bytes = s.data(b"Subject: via worker 1\r\n\r\nbody\r\n")[1]
                    return reply
            finally:
                os.kill(gateway.pid, signal.SIGCONT)

        reply = yield in_thread(send)
        self.assertTrue(reply.startswith(b"2.0.0 Ok"), reply)
        self.assertTrue(
            (yield in_thread(wait_until, lambda: bool(sink.messages), 10)), gateway.log()
        )
        self.assertIn(b"Subject: via worker 1", sink.messages[0])
        self.assertTrue(alive(worker))
        # Both processes wrote their mail log lines to mail.log (worker 1
        # the reception, the parent the delivery), and none to twistd.log.
        mid = int(reply.split()[3])
        path = os.path.join(gateway.directory, "var", "logs", "mail.log")

        def logged() -> bool:
            with open(path) as f:
                text = f.read()
            return f"MID {mid} queued for delivery" in text and f"MID {mid} to RID" in text

        self.assertTrue((yield in_thread(wait_until, logged, 10)))
        self.assertNotIn("queued for delivery", gateway.log())

    @inlineCallbacks
    def test_limitsHoldAcrossWorkers(self) -> Any:
        """
        Concurrent connections per IP and the listener's Max Concurrency
        count the sessions of every worker: with the limit at 3, two
        sessions held by the parent and one by worker 1 leave no room for a
        fourth; when worker 1 is killed, its sessions stop counting and the
        replacement worker serves again.
        """
        gateway = Gateway(self, workers=2, listener_limit=5, ip_limit=3)
        yield in_thread(gateway.start)
        [worker] = children(gateway.pid)

        def scenario() -> list[bytes]:
            replies = []
            # Only the parent can accept while worker 1 is stopped...
            os.kill(worker, signal.SIGSTOP)
            replies += [gateway.connect(), gateway.connect()]
            # ...and only worker 1 while the parent is.
            os.kill(gateway.pid, signal.SIGSTOP)
            os.kill(worker, signal.SIGCONT)
            replies += [gateway.connect(), gateway.connect()]
            os.kill(gateway.pid, signal.SIGCONT)
            # The listener's own limit: 3 sessions from 127.0.0.1, 2 more
            # from 127.0.0.2 make 5, wherever they land.
            replies += [gateway.connect("127.0.0.2") for _ in range(3)]
            return replies

        replies = yield in_thread(scenario)
        self.assertEqual([r[:4] for r in replies[:3]], [b"220 "] * 3)
        self.assertTrue(
            replies[3].startswith(b"421 4.7.0 ") and b"Too many concurrent" in replies[3],
            replies[3],
        )
        self.assertEqual([r[:4] for r in replies[4:6]], [b"220 "] * 2)
        self.assertEqual(
            replies[6], b"421 4.3.2 Too many connections to this listener, try again later\r\n"
        )

        os.kill(worker, signal.SIGKILL)

        def replaced() -> bool:
            text = gateway.log()
            restarted = text.split("starting it again", 1)
            return len(restarted) == 2 and "[worker 1] listener InboundMail" in restarted[1]

        self.assertTrue((yield in_thread(wait_until, replaced, 30)), gateway.log())
        [replacement] = children(gateway.pid)
        self.assertNotEqual(replacement, worker)
        # The killed worker's session no longer counts: one more fits.
        self.assertEqual((yield in_thread(gateway.connect))[:4], b"220 ")

    @inlineCallbacks
    def test_recipientsPerHourAcrossWorkers(self) -> Any:
        """
        Max recipients per hour counts an address's recipients in every
        worker: with 3 allowed, two accepted by the parent and one by
        worker 1 leave none for a fourth in either.
        """
        gateway = Gateway(self, workers=2, rcpt_limit=3)
        yield in_thread(gateway.start)
        [worker] = children(gateway.pid)

        def session(count: int) -> list[bytes]:
            raw = Raw(gateway.port)
            try:
                raw.reply()
                raw.chat(b"EHLO client.test\r\n")
                raw.chat(b"MAIL FROM:<a@client.test>\r\n")
                return [raw.chat(b"RCPT TO:<u%d@example.com>\r\n" % n) for n in range(count)]
            finally:
                raw.close()

        def scenario() -> list[bytes]:
            os.kill(worker, signal.SIGSTOP)
            first = session(2)
            os.kill(gateway.pid, signal.SIGSTOP)
            os.kill(worker, signal.SIGCONT)
            try:
                second = session(2)
            finally:
                os.kill(gateway.pid, signal.SIGCONT)
            return first + second

        replies = yield in_thread(scenario)
        self.assertEqual([r[:4] for r in replies[:3]], [b"250 "] * 3, replies)
        self.assertEqual(replies[3], b"452 4.5.3 Too many recipients received this hour\r\n")

    @inlineCallbacks
    def test_signals(self) -> Any:
        """
        SIGHUP reaches every worker (each logs its reload); SIGTERM stops
        them all before the parent exits cleanly.
        """
        gateway = Gateway(self, workers=3)
        yield in_thread(gateway.start)
        workers = children(gateway.pid)
        self.assertEqual(len(workers), 2)
        os.kill(gateway.pid, signal.SIGHUP)

        def reloaded() -> bool:
            text = gateway.log()
            return text.count("configuration reloaded from") == 3

        self.assertTrue((yield in_thread(wait_until, reloaded, 30)), gateway.log())
        for index in (1, 2):
            self.assertIn(f"[worker {index}] configuration reloaded from", gateway.log())
        # A Max Concurrency above what the shared per-IP table was made for
        # is applied, and every process says what it cannot count.
        gateway.reload("max_concurrency = 1000", "max_concurrency = 5000")
        warning = "listener InboundMail: max_concurrency 5000 is above the 1023"
        self.assertTrue(
            (yield in_thread(wait_until, lambda: gateway.log().count(warning) == 3, 30)),
            gateway.log(),
        )
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        yield in_thread(gateway.process.wait, 60)
        self.assertIn(gateway.process.returncode, (0, -signal.SIGTERM))
        self.assertIn("Server Shut Down.", gateway.log())
        self.assertEqual([pid for pid in workers if alive(pid)], [])
        # Each worker finished its own shutdown and exited, rather than
        # being killed half-way.
        for index in (1, 2):
            self.assertIn(
                f"worker {index} stopped (A process has ended without apparent errors",
                gateway.log(),
            )

    @inlineCallbacks
    def test_proxyTrustInEveryWorker(self) -> Any:
        """
        On a C{proxy_protocol} listener every process believes the PROXY
        header of a C{proxy_trusted} peer only: a client on 127.0.0.2 that
        claims a RELAYLIST address gets nothing from the parent or from
        worker 1 (each logs the refusal), the proxy on 127.0.0.1 is
        believed by both; a reload that trusts 127.0.0.2 instead reaches
        every process.
        """
        from tests.test_proxy_protocol import v1
        from tests.test_proxy_trust import FORGED, RELAY, converse, rejected

        gateway = Gateway(
            self,
            workers=2,
            extra=(
                '\n[[listeners.InboundMail.hat]]\ngroup = "RELAYLIST"\npolicy = "RELAYED"\n'
                'senders = ["10.1.2.3"]\n\n[listeners.InboundMail.policies.RELAYED]\n'
                'rule = "RELAY"\n'
            ),
        )
        with open(gateway.config) as f:
            text = f.read()
        with open(gateway.config, "w") as f:
            f.write(
                text.replace(
                    "max_concurrency = 1000\n",
                    'max_concurrency = 1000\nproxy_protocol = true\nproxy_trusted = ["127.0.0.1"]\n',
                    1,
                )
            )
        yield in_thread(gateway.start)
        [worker] = children(gateway.pid)

        def each_process(attempt: Callable[[], bytes]) -> list[bytes]:
            """
            Make C{attempt} once with worker 1 (the parent stopped), once
            with the parent (worker 1 stopped).
            """
            out = []
            for stopped in (gateway.pid, worker):
                os.kill(stopped, signal.SIGSTOP)
                try:
                    out.append(attempt())
                finally:
                    os.kill(stopped, signal.SIGCONT)
            return out

        def forge(source: str) -> Callable[[], bytes]:
            return lambda: rejected(gateway.port, source, FORGED)

        def relay(source: str) -> Callable[[], bytes]:
            return lambda: converse(gateway.port, source, v1("10.1.2.3"), RELAY)[3][:4]

        self.assertEqual((yield in_thread(each_process, forge("127.0.0.2"))), [b""] * 2)
        self.assertEqual((yield in_thread(each_process, relay("127.0.0.1"))), [b"250 "] * 2)
        line = "PROXY protocol: listener InboundMail: refusing 127.0.0.2: not a trusted proxy"
        log = gateway.log()
        self.assertIn(f"[worker 1] {line}", log)
        self.assertEqual(log.count(line), 2, log)
        gateway.reload('proxy_trusted = ["127.0.0.1"]', 'proxy_trusted = ["127.0.0.2"]')

        def reloaded() -> bool:
            return gateway.log().count("configuration reloaded from") == 2

        self.assertTrue((yield in_thread(wait_until, reloaded, 30)), gateway.log())
        self.assertNotIn("restart to apply", gateway.log())
        self.assertEqual((yield in_thread(each_process, relay("127.0.0.2"))), [b"250 "] * 2)
        self.assertEqual((yield in_thread(each_process, forge("127.0.0.1"))), [b""] * 2)

    @inlineCallbacks
    def test_listenersRemovedAndAdded(self) -> Any:
        """
        A listener removed by a reload stops listening in every process,
        each saying so, so that its port closes and nothing relays through
        it any more.  A listener added needs a restart, and a worker
        started again meanwhile serves neither.
        """
        from tests.test_service_reload import RELAY, RELAY_SESSION, converse, refused

        relay_port, extra_port = free_port(), free_port()
        relay = RELAY.format(port=relay_port)
        gateway = Gateway(self, workers=2, extra=relay)
        yield in_thread(gateway.start)
        replies = yield in_thread(converse, relay_port, RELAY_SESSION)
        self.assertEqual(replies[3], b"250 2.1.5 Ok\r\n")

        gateway.reload(relay, RELAY.format(port=extra_port).replace("Relay", "Extra"))
        removed = f"listener Relay: removed; stopped listening on 127.0.0.1 port {relay_port}"
        added = "listener Extra: added; restart to apply"

        def closed() -> bool:
            text = gateway.log()
            return text.count(removed) == 2 and text.count(added) >= 2 and refused(relay_port)

        self.assertTrue((yield in_thread(wait_until, closed, 30)), gateway.log())
        self.assertIn(f"[worker 1] reload: {removed}", gateway.log())
        self.assertIn(f"[worker 1] reload: {added}", gateway.log())
        self.assertTrue(refused(extra_port))
        [worker] = children(gateway.pid)
        os.kill(worker, signal.SIGKILL)

        def replaced() -> bool:
            return gateway.log().count("[worker 1] listener InboundMail") == 2

        self.assertTrue((yield in_thread(wait_until, replaced, 30)), gateway.log())
        self.assertIn(f"[worker 1] {added}", gateway.log())
        self.assertTrue((yield in_thread(refused, relay_port)))
        self.assertTrue((yield in_thread(refused, extra_port)))
        self.assertEqual((yield in_thread(gateway.connect)), b"220 mx.test.example ESMTP\r\n")

    @inlineCallbacks
    def test_workerWaitsForAValidConfiguration(self) -> Any:
        """
        A worker that dies while the file holds a configuration every
        process refused cannot start again (it would load that file): it
        is not started over and over, each time failing, but once a
        reload succeeds; meanwhile the others serve.
        """
        gateway = Gateway(self, workers=2)
        yield in_thread(gateway.start)
        [worker] = children(gateway.pid)
        gateway.reload('rule = "ACCEPT"', 'rule = "BOGUS"')
        self.assertTrue(
            (yield in_thread(wait_until, lambda: gateway.log().count("reload refused") == 2, 30)),
            gateway.log(),
        )
        os.kill(worker, signal.SIGKILL)
        waiting = "worker 1 cannot start: configuration error; it starts again at the next reload"
        self.assertTrue(
            (yield in_thread(wait_until, lambda: waiting in gateway.log(), 30)), gateway.log()
        )
        # Given time for several attempts, none is made.
        yield in_thread(time.sleep, 3 * WorkerPool.restart_delay + 1)
        self.assertEqual(gateway.log().count("started worker 1"), 2, gateway.log())
        self.assertEqual(children(gateway.pid), [])
        self.assertEqual((yield in_thread(gateway.connect)), b"220 mx.test.example ESMTP\r\n")
        gateway.reload('rule = "BOGUS"', 'rule = "ACCEPT"')

        def serving() -> bool:
            return gateway.log().count("[worker 1] listener InboundMail") == 2

        self.assertTrue((yield in_thread(wait_until, serving, 30)), gateway.log())
        self.assertEqual(len(children(gateway.pid)), 1)

    @inlineCallbacks
    def test_hangupWhileStarting(self) -> Any:
        """
        A SIGHUP that reaches a worker while it starts (a reload just after
        the parent started it again) neither ends it nor is lost: the worker
        notes it before its imports (it is caught before cryptography's
        OpenSSL is even loaded), and reloads once it runs.
        """
        gateway = Gateway(self, workers=2)
        yield in_thread(gateway.start)
        [worker] = children(gateway.pid)

        def caught_early() -> tuple[int, bool]:
            os.kill(worker, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                new = [pid for pid in children(gateway.pid) if pid != worker]
                if new:
                    break
                time.sleep(0.001)
            [replacement] = new
            while time.monotonic() < deadline:
                time.sleep(0.001)
                try:
                    with open(f"/proc/{replacement}/cmdline", "rb") as f:
                        if b"esa_tls.worker" not in f.read():
                            # Forked, not yet the worker program: the
                            # parent's handlers and libraries still.
                            continue
                    with open(f"/proc/{replacement}/status") as f:
                        caught = next(ln for ln in f if ln.startswith("SigCgt:"))
                    with open(f"/proc/{replacement}/maps") as f:
                        loaded = "_rust.abi3.so" in f.read()
                except OSError:
                    return replacement, False
                if int(caught.split()[1], 16) & (1 << (signal.SIGHUP - 1)):
                    os.kill(replacement, signal.SIGHUP)
                    return replacement, not loaded
            return replacement, False

        replacement, early = yield in_thread(caught_early)
        self.assertTrue(early, "SIGHUP was caught only after the imports")

        def reloaded() -> bool:
            return "[worker 1] configuration reloaded from" in gateway.log()

        self.assertTrue((yield in_thread(wait_until, reloaded, 30)), gateway.log())
        self.assertEqual(children(gateway.pid), [replacement])
        self.assertEqual(gateway.log().count("started worker 1"), 2, gateway.log())

    @inlineCallbacks
    def test_cpuAffinity(self) -> Any:
        """
        With as many processes as CPUs, C{worker_cpu_affinity = "auto"} (the
        default) keeps the parent and the worker, every thread of each, on
        a CPU of its own and says so; with C{"off"} both may run on every
        CPU; a reload that changes the setting says it needs a restart.
        """
        from esa_tls.workers import default_workers

        allowed = sorted(os.sched_getaffinity(0))
        if default_workers() < 2:
            raise SkipTest(f"needs two CPUs, this process may use {allowed}")

        def cpus(pid: int) -> set[frozenset[int]]:
            return {
                frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")
            }

        pinned = Gateway(self, workers=2)
        yield in_thread(pinned.start)
        [worker] = children(pinned.pid)
        self.assertEqual(cpus(pinned.pid), {frozenset({allowed[0]})})
        self.assertEqual(cpus(worker), {frozenset({allowed[1]})})
        self.assertIn(
            f"processes 0-1 kept on CPUs {allowed[0]}, {allowed[1]}"
            " ([system] worker_cpu_affinity = auto)",
            pinned.log(),
        )
        pinned.reload("[system]\n", '[system]\nworker_cpu_affinity = "off"\n')
        # Each process says so (at each reload until the restart).
        changed = "system: worker_cpu_affinity changed; restart to apply"
        said = [f"[esa_tls.service#warn] reload: {changed}", f"[worker 1] reload: {changed}"]
        self.assertTrue(
            (yield in_thread(wait_until, lambda: all(s in pinned.log() for s in said), 30)),
            pinned.log(),
        )
        free = Gateway(self, workers=2, system='worker_cpu_affinity = "off"')
        yield in_thread(free.start)
        [free_worker] = children(free.pid)
        self.assertEqual(cpus(free.pid), {frozenset(allowed)})
        self.assertEqual(cpus(free_worker), {frozenset(allowed)})
        self.assertNotIn("kept on CPUs", free.log())

    @inlineCallbacks
    def test_killedParentLeavesNoWorker(self) -> Any:
        """
        A gateway killed with SIGKILL takes its workers with it, so the port
        is free for the next start.
        """
        gateway = Gateway(self, workers=2)
        yield in_thread(gateway.start)
        workers = children(gateway.pid)
        assert gateway.process is not None
        gateway.process.kill()
        yield in_thread(gateway.process.wait, 30)
        self.assertTrue(
            (yield in_thread(wait_until, lambda: not any(alive(p) for p in workers), 10))
        )

        def port_free() -> bool:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", gateway.port))
                    s.listen(1)
                except OSError:
                    return False
                return True

        self.assertTrue((yield in_thread(wait_until, port_free, 10)))

    @inlineCallbacks
    def test_listenerNamedWorkers(self) -> Any:
        """
        A listener may be called C{workers}: the parent's pool of workers
        is a service of the gateway too, and was named C{workers}, so such
        a listener stopped C{--workers N} start-up with C{RuntimeError:
        cannot have two services with same name 'workers'}.
        """
        port = free_port()
        extra = (
            '\n[listeners.workers]\ntype = "public"\ninterface = "Loopback"\n'
            f'port = {port}\nrat = ["example.com"]\n'
        )
        gateway = Gateway(self, workers=2, extra=extra)
        yield in_thread(gateway.start)
        self.assertNotIn("Traceback", gateway.log())
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(sock.close)
        self.assertEqual(sock.makefile("rb").readline()[:4], b"220 ")

    @inlineCallbacks
    def test_oneWorkerIsOneProcess(self) -> Any:
        """
        C{--workers 1} is the gateway as it always was: one process, which
        takes mail.
        """
        gateway = Gateway(self, workers=1)
        yield in_thread(gateway.start)
        self.assertEqual(children(gateway.pid), [])
        self.assertEqual((yield in_thread(gateway.connect))[:4], b"220 ")
        self.assertNotIn("started worker", gateway.log())

    def test_badWorkerCount(self) -> None:
        """
        A nonsensical C{--workers} stops start-up with a usage message.
        """
        result = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "esa-tls", "--workers", "none"],
            capture_output=True,
            timeout=60,
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(b"--workers: not a number", result.stdout + result.stderr)


#: A stand-in for a worker that writes what no worker should on its pipes
#: to the parent, then a good log event and a good MID on each.
GARBLED_WORKER = r"""
import os
import time
from twisted.logger import LogLevel, eventAsJSON
uuid = "e76887e2-20ed-49bf-a8f8-ba25cc586f2f"
os.write(1, b'42\nnull\n[1]\n{}\n{"log_level": [], "log_time": 1}\n')
os.write(1, b'{"a": {"__class_uuid__": "%s"}}\n' % uuid.encode())
event = {"log_format": "still heard", "log_level": LogLevel.info, "log_time": time.time()}
os.write(1, eventAsJSON(event).encode() + b"\n")
os.write(4, b"9" * 5000 + b"\n17\n")
"""


class _Pool:
    """
    What a L{_WorkerProtocol} tells its pool, kept.
    """

    def __init__(self) -> None:
        self.announced: list[int] = []

    def announce(self, mid: int) -> None:
        self.announced.append(mid)

    def ended(self, protocol: Any, reason: Any) -> None:
        pass


class PipeTests(TestCase):
    @inlineCallbacks
    def test_garbageFromAWorker(self) -> Any:
        """
        A line on a worker's pipes that is not what a worker sends (JSON
        that is not an event, a number too long for a MID) is passed over:
        the pipe stays open, and what the worker says next is heard.
        """
        import sys

        from twisted.internet import reactor
        from twisted.logger import globalLogPublisher

        from esa_tls.workers import _ANNOUNCE_FD, _WorkerProtocol

        heard: list[dict[str, Any]] = []
        observer = heard.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        pool = _Pool()
        protocol = _WorkerProtocol(pool, 1)  # type: ignore[arg-type]
        reactor.spawnProcess(
            protocol,
            sys.executable,
            [sys.executable, "-c", GARBLED_WORKER],
            env=dict(os.environ),
            childFDs={0: "w", 1: "r", 2: "r", _ANNOUNCE_FD: "r"},
        )
        yield protocol.ended
        self.assertIn(
            "still heard", [e.get("log_format") for e in heard if e.get("log_system") == "worker 1"]
        )
        self.assertEqual(pool.announced, [17])


class DirectoryTests(TestCase):
    @inlineCallbacks
    def test_workersRunWhereTheGatewayStarted(self) -> Any:
        """
        Workers run in the directory the gateway was started in, even after
        the parent moved (C{twistd --rundir}): the embedded default's
        relative C{data_dir} then names one spool for every process, where
        it used to give the workers a spool (and MID counter) of their own
        under the run directory, handing out MIDs the parent also used.
        """
        from twisted.internet import reactor

        started = os.path.abspath(self.mktemp())
        moved = os.path.abspath(self.mktemp())
        os.makedirs(started)
        os.makedirs(moved)
        # A stand-in for the worker program: it says where it runs.
        worker = os.path.join(started, "worker")
        with open(worker, "w") as f:
            f.write("#!/bin/sh\npwd > where\n")
        os.chmod(worker, 0o755)
        limits = SharedLimits.create({}, 2)
        self.addCleanup(limits.close)
        here = os.getcwd()
        os.chdir(started)
        try:
            pool = WorkerPool(reactor, WorkerRole(0, 2, {}, {}, limits), None, executable=worker)
        finally:
            os.chdir(moved)
            self.addCleanup(os.chdir, here)
        pool.startService()
        self.addCleanup(pool.stopService)
        yield in_thread(wait_until, lambda: os.path.exists(os.path.join(started, "where")), 30)
        self.assertFalse(os.path.exists(os.path.join(moved, "where")))
        with open(os.path.join(started, "where")) as f:
            self.assertEqual(os.path.realpath(f.read().strip()), os.path.realpath(started))


class CPUPlanTests(SynchronousTestCase):
    """
    L{cpu_plan}: which CPU each process keeps to.
    """

    def test_oneEach(self) -> None:
        """
        With at least as many CPUs as processes, process I gets the I-th
        CPU it may use, in order (not CPU I: a C{taskset} may have left it
        others).
        """
        self.assertEqual(cpu_plan(2, WorkerCPUAffinity.AUTO, {0, 1}), (0, 1))
        self.assertEqual(cpu_plan(2, WorkerCPUAffinity.AUTO, {7, 3, 5}), (3, 5))
        self.assertEqual(cpu_plan(3, WorkerCPUAffinity.AUTO, range(8)), (0, 1, 2))

    def test_none(self) -> None:
        """
        Nothing is pinned with C{off}, for a single process, or with more
        processes than CPUs.
        """
        self.assertEqual(cpu_plan(2, WorkerCPUAffinity.OFF, {0, 1}), ())
        self.assertEqual(cpu_plan(1, WorkerCPUAffinity.AUTO, {0, 1}), ())
        self.assertEqual(cpu_plan(3, WorkerCPUAffinity.AUTO, {0, 1}), ())
