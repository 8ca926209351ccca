"""
Tests for L{esa_tls.outbound.reuse}: queued messages for one destination go
over fewer SMTP sessions (RSET between transactions), within the
destination's C{max_messages_per_connection}, never across TLS settings,
and a kept session that went stale costs a new connection, never a
message.  Against the recording server of C{tests/peers/hostile.py} and
Postfix's C{smtp-sink}.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from io import BytesIO
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from esa_tls.config.model import (
    DestinationControl,
    DestinationTLS,
    GatewayConfig,
    SystemSettings,
)
from esa_tls.maillog import MailLog, MailLogCollector
from esa_tls.outbound.attempt import deliver_message
from esa_tls.outbound.client import Timeouts
from esa_tls.outbound.queue import QueueManager
from esa_tls.outbound.result import RecipientStatus
from esa_tls.outbound.reuse import SessionPool
from esa_tls.spool import DurableSpool
from esa_tls.testing import CertificateAuthority
from esa_tls.values import Envelope
from tests.peers.hostile import Script, start_hostile_server
from tests.support import free_port

CA = CertificateAuthority.generate()
GOOD = CA.issue(["partner.example"])


async def _turn(seconds: float = 0.02) -> None:
    await deferLater(reactor, seconds, lambda: None)


class ReuseTestCase(TestCase):
    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.ca_file = os.path.join(self.data_dir, "ca.pem")
        with open(self.ca_file, "wb") as f:
            f.write(CA.cert_pem)
        self.spool = DurableSpool(os.path.abspath(self.mktemp()), reactor)
        self.addCleanup(self.spool.close)
        self.collector = MailLogCollector()

    def config(self, port: int, **rows: DestinationControl) -> GatewayConfig:
        route = (f"127.0.0.1:{port}",)
        return GatewayConfig(
            system=SystemSettings(hostname="gw.test", data_dir=self.data_dir),
            destinations={"default": DestinationControl("default", DestinationTLS.NO), **rows},
            smtp_routes={domain: route for domain in ("partner.example", "other.example")},
        )

    def deliver(
        self,
        config: GatewayConfig,
        pool: SessionPool,
        rcpt: str,
        body: bytes,
        dcids: Iterator[int],
        maillog: MailLog | None = None,
    ) -> Deferred[Any]:
        """
        One message from a@sender.example to C{rcpt} at partner.example,
        handed to L{deliver_message} with C{pool}.
        """
        return deliver_message(
            reactor,
            None,
            config,
            "partner.example",
            "a@sender.example",
            [(0, rcpt)],
            BytesIO(body),
            dcid_allocator=dcids.__next__,
            maillog=maillog,
            timeouts=Timeouts.uniform(10),
            pool=pool,
        )

    def start(self, config: GatewayConfig) -> QueueManager:
        manager = QueueManager(
            reactor,
            self.spool,
            config,
            None,
            dcid_allocator=itertools.count(1).__next__,
            maillog=MailLog(self.collector),
            timeouts=Timeouts.uniform(10),
            scan_interval=3600,
            trust_system=False,
        )
        manager.startService()
        self.addCleanup(manager.stopService)
        return manager

    async def inject(self, rcpt: str, subject: str) -> int:
        envelope = Envelope(
            mail_from="a@sender.example",
            rcpt_to=(rcpt,),
            helo="client.example",
            peer_ip="127.0.0.1",
            listener="InboundMail",
            icid=1,
            received_at=time.time(),
        )
        message = self.spool.new_message(envelope)
        message.write(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
        mid: int = await message.commit()
        return mid

    async def until(self, predicate: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            await _turn()

    async def drain(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.spool.queued() and time.monotonic() < deadline:
            await _turn()
        self.assertEqual(self.spool.queued(), [])

    def dcid_lines(self) -> tuple[int, int]:
        """
        (connections opened, connections closed) according to the mail log.
        """
        lines = self.collector.lines
        return (
            sum(line.startswith("New SMTP DCID") for line in lines),
            sum(re.fullmatch(r"DCID \d+ close", line) is not None for line in lines),
        )


class QueueReuseTests(ReuseTestCase):
    """
    The running queue manager keeps sessions for the next message.
    """

    async def test_fewer_connections_each_message_once(self) -> None:
        """
        Twelve messages to one destination, one delivery at a time: every
        message arrives exactly once, over fewer connections than
        messages, with RSET before each transaction after a session's
        first; every session opened is closed in the mail log once the
        manager stops.
        """
        server = start_hostile_server(self, Script())
        control = DestinationControl("partner.example", DestinationTLS.NO, max_host_concurrency=1)
        manager = self.start(self.config(server.port, **{"partner.example": control}))
        subjects = [f"m{i}" for i in range(12)]
        for subject in subjects:
            await self.inject("x@partner.example", subject)
        await self.drain()
        received = [body.split(b"\r\n", 1)[0] for _, _, body in server.capture.messages]
        self.assertEqual(sorted(received), sorted(f"Subject: {s}".encode() for s in subjects))
        self.assertLess(server.capture.connections, len(subjects))
        verbs = server.verbs()
        self.assertEqual(verbs.count(b"MAIL"), len(subjects))
        self.assertEqual(verbs.count(b"RSET"), len(subjects) - server.capture.connections)
        await manager.stopService()
        await server.capture.all_closed()
        opened, closed = self.dcid_lines()
        self.assertEqual((opened, closed), (server.capture.connections,) * 2)

    async def test_max_messages_per_connection(self) -> None:
        """
        With C{max_messages_per_connection = 3}, seven messages sent one at
        a time take three sessions, none carrying more than three.
        """
        server = start_hostile_server(self, Script())
        control = DestinationControl(
            "partner.example",
            DestinationTLS.NO,
            max_host_concurrency=1,
            max_messages_per_connection=3,
        )
        self.start(self.config(server.port, **{"partner.example": control}))
        for i in range(7):
            await self.inject("x@partner.example", f"m{i}")
        await self.drain()
        self.assertEqual(len(server.capture.messages), 7)
        self.assertEqual(server.capture.connections, 3)
        sessions = b" ".join(server.verbs()).split(b"EHLO")[1:]
        self.assertEqual(sorted(s.count(b"MAIL") for s in sessions), [1, 3, 3])

    async def test_never_across_tls_settings(self) -> None:
        """
        Two domains routed to the same server, one C{required} and one
        C{no}, interleaved: the required domain's transactions all run over
        TLS, the other's all in the clear; a session is never handed from
        one to the other.
        """
        server = start_hostile_server(self, Script(certificate=GOOD))
        required = DestinationControl(
            "partner.example", DestinationTLS.REQUIRED, ca_file=self.ca_file
        )
        self.start(self.config(server.port, **{"partner.example": required}))
        for i in range(4):
            await self.inject("x@partner.example", f"tls{i}")
            await self.inject("y@other.example", f"clear{i}")
        await self.drain()
        self.assertEqual(len(server.capture.messages), 8)
        by_rcpt: dict[bytes, set[bool]] = {}
        rcpt_tls = [(tls, line) for tls, line in server.capture.commands if line[:4] == b"RCPT"]
        for tls, line in rcpt_tls:
            by_rcpt.setdefault(line.split(b"<")[1].split(b">")[0], set()).add(tls)
        self.assertEqual(by_rcpt, {b"x@partner.example": {True}, b"y@other.example": {False}})

    async def test_idle_sessions_close(self) -> None:
        """
        A kept session that no message needs is closed (QUIT) after the
        pool's idle time, and its close is in the mail log.
        """
        server = start_hostile_server(self, Script())
        manager = self.start(self.config(server.port))
        assert manager._pool is not None
        manager._pool.idle_timeout = 0.05
        await self.inject("x@partner.example", "one")
        await self.drain()
        await server.capture.all_closed()
        self.assertEqual(server.verbs()[-1], b"QUIT")
        await self.until(lambda: self.dcid_lines()[1] == 1)
        self.assertEqual(self.dcid_lines(), (1, 1))

    async def test_reload_closes_kept_sessions(self) -> None:
        """
        A configuration reload closes the kept sessions: a session opened
        under the old trust anchors or TLS levels never carries mail under
        the new ones.  The next message opens a new connection.
        """
        server = start_hostile_server(self, Script())
        config = self.config(server.port)
        manager = self.start(config)
        await self.inject("x@partner.example", "before")
        await self.drain()
        self.assertEqual(server.capture.connections, 1)
        manager.config = config
        await self.until(lambda: not server.capture.open)
        self.assertEqual(server.verbs()[-1], b"QUIT")
        await self.inject("x@partner.example", "after")
        await self.drain()
        self.assertEqual(server.capture.connections, 2)
        self.assertEqual(len(server.capture.messages), 2)


class StaleSessionTests(ReuseTestCase):
    """
    A kept session the server dropped while it was idle.
    """

    async def test_stale_session_new_connection(self) -> None:
        """
        The server drops the kept session just before the next message is
        handed to it: that message goes over a new connection, once.
        """
        server = start_hostile_server(self, Script())
        config = self.config(server.port)
        pool = SessionPool(reactor)
        self.addCleanup(pool.close)
        dcids = itertools.count(1)

        def send(subject: str) -> Deferred[Any]:
            body = f"Subject: {subject}\r\n\r\nbody\r\n".encode()
            return self.deliver(config, pool, "x@partner.example", body, dcids)

        first = await send("first")
        self.assertEqual(first.recipients[0].status, RecipientStatus.DELIVERED)
        [protocol] = server.capture.open
        protocol.transport.abortConnection()
        second = await send("second")
        self.assertEqual(second.recipients[0].status, RecipientStatus.DELIVERED)
        self.assertEqual(
            [body.split(b"\r\n", 1)[0] for _, _, body in server.capture.messages],
            [b"Subject: first", b"Subject: second"],
        )
        self.assertEqual(server.capture.connections, 2)
        await pool.close()
        await server.capture.all_closed()

    async def test_temporary_answer_on_kept_session(self) -> None:
        """
        A kept session that gets only a temporary answer before any data
        (a server that limits messages per session answers so) is not the
        last word: the message is tried on a new connection, which decides
        (here: deferred, never sent).
        """
        server = start_hostile_server(
            self, Script(rcpt_replies={"busy@partner.example": b"450 4.2.1 Busy"})
        )
        config = self.config(server.port)
        pool = SessionPool(reactor)
        self.addCleanup(pool.close)
        dcids = itertools.count(1)

        def send(rcpt: str) -> Deferred[Any]:
            return self.deliver(config, pool, rcpt, b"Subject: t\r\n\r\nbody\r\n", dcids)

        first = await send("ok@partner.example")
        self.assertEqual(first.recipients[0].status, RecipientStatus.DELIVERED)
        second = await send("busy@partner.example")
        self.assertEqual(second.recipients[0].status, RecipientStatus.DEFERRED)
        self.assertEqual(server.capture.connections, 2)
        self.assertEqual(len(server.capture.messages), 1)
        rcpts = [line for _, line in server.capture.commands if line.startswith(b"RCPT")]
        self.assertEqual(rcpts.count(b"RCPT TO:<busy@partner.example>"), 2)
        await pool.close()
        await server.capture.all_closed()


class PoolCloseTests(ReuseTestCase):
    """
    Stopping never waits on a peer that stopped answering.
    """

    async def test_close_aborts_silent_peer(self) -> None:
        """
        A kept session whose server never answers QUIT is aborted after
        the pool's grace time, and its close is logged.
        """
        server = start_hostile_server(self, Script(silent_after=b"DOT"))
        pool = SessionPool(reactor, maillog=MailLog(self.collector))
        result = await self.deliver(
            self.config(server.port),
            pool,
            "x@partner.example",
            b"Subject: once\r\n\r\nbody\r\n",
            itertools.count(1),
            maillog=MailLog(self.collector),
        )
        self.assertEqual(result.recipients[0].status, RecipientStatus.DELIVERED)
        await pool.close(grace=0.1)
        self.assertEqual(server.verbs()[-1], b"QUIT")
        self.assertEqual(self.dcid_lines(), (1, 1))
        await server.capture.all_closed()


class _Sink(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)

    def count(self) -> int:
        found = re.findall(rb"mesg=(\d+)", self.output)
        return int(found[-1]) if found else 0


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class SmtpSinkTests(ReuseTestCase):
    """
    Against Postfix's C{smtp-sink}, a real server that counts what it takes.
    """

    async def test_relay_to_smtp_sink(self) -> None:
        """
        Forty messages relayed two at a time to C{smtp-sink}: it counts
        exactly forty, and the mail log shows far fewer sessions.
        """
        path = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        if not os.access(path, os.X_OK):
            raise SkipTest("smtp-sink (postfix package) not installed")
        port = free_port()
        command = [path, "-c", f"127.0.0.1:{port}", "64"]
        if os.geteuid() == 0:
            command[1:1] = ["-u", "nobody"]
        sink = _Sink()
        process = reactor.spawnProcess(sink, path, command, env=os.environ)

        async def stop() -> None:
            if sink.ended.called:
                return
            process.signalProcess("TERM")
            await sink.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        await self.until(lambda: _listening(port))
        control = DestinationControl(
            "partner.example", DestinationTLS.PREFERRED, max_host_concurrency=2
        )
        manager = self.start(self.config(port, **{"partner.example": control}))
        for i in range(40):
            await self.inject("x@partner.example", f"m{i}")
        await self.drain()
        deadline = time.monotonic() + 10
        while sink.count() < 40 and time.monotonic() < deadline:
            await _turn()
        self.assertEqual(sink.count(), 40)
        await manager.stopService()
        opened, closed = self.dcid_lines()
        self.assertLessEqual(opened, 10)
        self.assertEqual(closed, opened)
