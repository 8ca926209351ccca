"""
Tests for L{esa_tls.outbound.queue}: the queue manager over a real
L{esa_tls.spool.DurableSpool}, delivering to a capturing SMTP server on
loopback; retries on a test clock; bounces (RFC 3464); limits; and a
sending process killed in the middle of a batch.
"""

from __future__ import annotations

import email
import errno
import itertools
import os
import resource
import sys
import time
from typing import Any, BinaryIO

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol, Protocol, ServerFactory
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from esa_tls.config.model import (
    DestinationControl,
    DestinationTLS,
    GatewayConfig,
    SystemSettings,
)
from esa_tls.maillog import MailLog, MailLogCollector
from esa_tls.outbound.client import Timeouts
from esa_tls.outbound.dsn import build_dsn, status_of
from esa_tls.outbound.queue import QueueManager, RetryPolicy, request_delivery_now
from esa_tls.spool import BOUNCED, DEFERRED, QUEUED, DurableSpool
from esa_tls.spool.fs import FileSystem
from esa_tls.values import Envelope
from tests.peers.hostile import HostileServer, Script, start_hostile_server


def make_config(
    port: int, data_dir: str, *, concurrency: int = 500, limit: int = 0
) -> GatewayConfig:
    route = (f"127.0.0.1:{port}",)
    return GatewayConfig(
        system=SystemSettings(hostname="gw.test", data_dir=data_dir),
        destinations={
            "default": DestinationControl("default", DestinationTLS.NO),
            "partner.example": DestinationControl(
                "partner.example",
                DestinationTLS.NO,
                max_host_concurrency=concurrency,
                recipient_limit=limit,
            ),
        },
        smtp_routes={"partner.example": route, "sender.example": route},
    )


async def inject(
    spool: DurableSpool, mail_from: str, rcpts: list[str], subject: str = "test"
) -> int:
    envelope = Envelope(
        mail_from=mail_from,
        rcpt_to=tuple(rcpts),
        helo="client.example",
        peer_ip="127.0.0.1",
        listener="InboundMail",
        icid=1,
        received_at=time.time(),
    )
    message = spool.new_message(envelope)
    message.write(f"Subject: {subject}\r\nFrom: <{mail_from}>\r\n\r\nbody\r\n".encode())
    mid: int = await message.commit()
    return mid


def _subjects(server: HostileServer) -> list[str]:
    out = []
    for _, _, body in server.capture.messages:
        message = email.message_from_bytes(body)
        out.append(str(message["Subject"]))
    return out


class QueueTestCase(TestCase):
    def setUp(self) -> None:
        self.server = start_hostile_server(
            self,
            Script(
                rcpt_replies={
                    "busy@partner.example": b"450 4.2.1 Mailbox busy",
                    "gone@partner.example": b"550 5.1.1 No such user",
                }
            ),
        )
        self.spool_dir = os.path.abspath(self.mktemp())
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.spool = DurableSpool(self.spool_dir, reactor)
        self.addCleanup(self.spool.close)
        self.clock = Clock()
        self.clock.advance(time.time())

    def manager(self, **kw: Any) -> QueueManager:
        config = kw.pop("config", None) or make_config(self.server.port, self.data_dir)
        return QueueManager(
            reactor,
            self.spool,
            config,
            None,
            dcid_allocator=itertools.count(1).__next__,
            timeouts=Timeouts.uniform(10),
            clock=kw.pop("clock", self.clock),
            **kw,
        )


class DeliveryTests(QueueTestCase):
    """
    Messages go out, states are recorded, finished messages leave.
    """

    async def test_delivers_and_removes(self) -> None:
        """
        Every queued message is delivered once and then removed from the
        spool.
        """
        for i in range(3):
            await inject(self.spool, "a@sender.example", ["x@partner.example"], f"m{i}")
        await self.manager().run_once()
        self.assertEqual(sorted(_subjects(self.server)), ["m0", "m1", "m2"])
        self.assertEqual(self.spool.queued(), [])

    async def test_per_recipient_states(self) -> None:
        """
        A 250, a 450 and a 550 leave the recipients delivered, deferred
        (to retry in 5 minutes, with the reply as last error) and bounced.
        """
        mid = await inject(
            self.spool,
            "a@sender.example",
            ["ok@partner.example", "busy@partner.example", "gone@partner.example"],
        )
        manager = self.manager()
        await manager.run_once()
        states = {s.address: s for s in self.spool.get(mid).recipients}
        self.assertEqual(states["ok@partner.example"].status, "delivered")
        busy = states["busy@partner.example"]
        self.assertEqual((busy.status, busy.attempts), (DEFERRED, 1))
        self.assertEqual(busy.next_attempt, self.clock.seconds() + 300)
        self.assertEqual(busy.last_error, "450 4.2.1 Mailbox busy")
        self.assertEqual(states["gone@partner.example"].status, BOUNCED)

    async def test_retry_backoff(self) -> None:
        """
        A deferred recipient is not tried before its time, then is; each
        failure doubles the wait.
        """
        mid = await inject(self.spool, "", ["busy@partner.example"])
        manager = self.manager()
        await manager.run_once()
        await manager.run_once()
        self.assertEqual(self.server.verbs().count(b"RCPT"), 1)
        self.clock.advance(300)
        await manager.run_once()
        self.assertEqual(self.server.verbs().count(b"RCPT"), 2)
        [state] = self.spool.get(mid).recipients
        self.assertEqual((state.attempts, state.next_attempt), (2, self.clock.seconds() + 600))
        self.assertEqual(RetryPolicy().delay(10), 3600)

    async def test_retry_time_from_a_wrong_clock(self) -> None:
        """
        A retry time further off than the longest wait (set while the
        system clock was wrong, weeks ahead, and since put right) is not
        believed: the recipient is tried at the next scan, not held until
        that date.
        """
        mid = await inject(self.spool, "a@sender.example", ["ok@partner.example"])
        [state] = self.spool.get(mid).recipients
        await self.spool.update_recipients(
            mid,
            {
                0: attrs.evolve(
                    state,
                    status=DEFERRED,
                    attempts=3,
                    next_attempt=self.clock.seconds() + 30 * 86400,
                )
            },
        )
        await self.manager().run_once()
        self.assertEqual(
            [rcpts for _, rcpts, _ in self.server.capture.messages], [[b"ok@partner.example"]]
        )
        self.assertEqual(self.spool.queued(), [])

    async def test_retry_after_many_attempts(self) -> None:
        """
        A recipient tried more than a thousand times (a script running
        C{delivernow} every few minutes for days does that) still gets the
        longest wait; its delivery is recorded, so a recipient delivered in
        the same session is not sent the message again at the next scan.
        """
        self.assertEqual(RetryPolicy().delay(5000), 3600)
        mid = await inject(
            self.spool, "a@sender.example", ["ok@partner.example", "busy@partner.example"]
        )
        busy = self.spool.get(mid).recipients[1]
        await self.spool.update_recipients(
            mid, {1: attrs.evolve(busy, status=DEFERRED, attempts=1500)}
        )
        manager = self.manager()
        await manager.run_once()
        await manager.run_once()
        copies = [rcpts for _, rcpts, _ in self.server.capture.messages]
        self.assertEqual(copies, [[b"ok@partner.example"]])
        [state] = self.spool.get(mid).pending
        self.assertEqual(
            (state.status, state.attempts, state.next_attempt),
            (DEFERRED, 1501, self.clock.seconds() + 3600),
        )

    async def test_bounce_dsn(self) -> None:
        """
        A bounced recipient gets its sender an RFC 3464 report from the null
        sender, which the queue then delivers.
        """
        await inject(self.spool, "a@sender.example", ["gone@partner.example"], "original")
        manager = self.manager()
        await manager.run_once()
        await manager.run_once()
        self.assertEqual(self.spool.queued(), [])
        dsn_from, dsn_to, dsn = self.server.capture.messages[-1]
        self.assertEqual((dsn_from, dsn_to), (b"", [b"a@sender.example"]))
        report = email.message_from_bytes(dsn)
        self.assertEqual(report.get_content_type(), "multipart/report")
        self.assertEqual(report.get_param("report-type"), "delivery-status")
        parts = [p.get_content_type() for p in report.walk()]
        self.assertIn("message/delivery-status", parts)
        self.assertIn("text/rfc822-headers", parts)
        self.assertIn(b"Final-Recipient: rfc822; gone@partner.example", dsn)
        self.assertIn(b"Status: 5.1.1", dsn)
        self.assertIn(b"Diagnostic-Code: smtp; 550 5.1.1 No such user", dsn)
        self.assertIn(b"Subject: original", dsn)

    async def test_bounce_in_mail_log(self) -> None:
        """
        The bounce's own MID is introduced in the mail log, saying which
        message it reports on, as a received message is: a script
        following a MID never meets one that came from nowhere (its
        delivery lines and its final line had no beginning).
        """
        collector = MailLogCollector()
        mid = await inject(self.spool, "a@sender.example", ["gone@partner.example"])
        manager = self.manager(maillog=MailLog(collector))
        await manager.run_once()
        [bounce] = self.spool.queued()
        dsn = bounce.mid
        body = self.spool.open_body(dsn)
        self.addCleanup(body.close)
        size = len(body.read())
        lines = [
            line
            for line in collector.lines
            if line.startswith(f"MID {dsn} ") or line.startswith(f"Start MID {dsn} ")
        ]
        self.assertEqual(
            lines,
            [
                f"Start MID {dsn} ICID 0",
                f"MID {dsn} was generated for bounce of MID {mid}",
                f"MID {dsn} ICID 0 From: <>",
                f"MID {dsn} ICID 0 RID 0 To: <a@sender.example>",
                f"MID {dsn} ready {size} bytes from <>",
                f"MID {dsn} queued for delivery",
            ],
        )
        # After the line that tells why: the ESA's order.
        self.assertLess(
            collector.lines.index(f"MID {mid} RID [0] bounced: 550 5.1.1 No such user"),
            collector.lines.index(f"Start MID {dsn} ICID 0"),
        )

    async def test_bounce_long_reply(self) -> None:
        """
        A long multi-line refusal (a reply may be up to 64 KiB) is folded
        in the DSN, whose lines stay within RFC 5322's 998 octets, which
        strict receivers (our own listeners) enforce: the bounce would
        otherwise be refused and, from the null sender, lost.  Unfolded,
        the diagnostic is whole.
        """
        words = " ".join(f"word{i}" for i in range(12))
        lines = [f"550-5.7.1 {words} line {i}".encode() for i in range(40)]
        self.server.script.rcpt_replies = {
            "gone@partner.example": b"\r\n".join([*lines, b"550 5.7.1 " + b"x" * 1500])
        }
        await inject(self.spool, "a@sender.example", ["gone@partner.example"])
        manager = self.manager()
        await manager.run_once()
        await manager.run_once()
        [(_, _, dsn)] = self.server.capture.messages
        self.assertLessEqual(max(len(line) for line in dsn.split(b"\r\n")), 998)
        report = email.message_from_bytes(dsn)
        [status] = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"]
        diagnostic = " ".join(str(status.get_payload()[1]["Diagnostic-Code"]).split())
        self.assertIn(f"smtp; 550 5.7.1 {words} line 0 5.7.1 {words} line 1 ", diagnostic)
        self.assertIn(f"line 39 5.7.1 {'x' * 900}", diagnostic)
        self.assertEqual(diagnostic.count("x"), 1500)

    async def test_bounce_status_not_from_an_address(self) -> None:
        """
        A refusal without an enhanced status code gets C{Status: 5.0.0}
        from its reply code, even when its text holds an IP address such
        as C{192.5.1.1}: its tail was taken for the code, and a bounce
        saying 5.1.1 (no such mailbox) has mailing lists drop a
        subscriber who exists.
        """
        self.server.script.rcpt_replies = {
            "gone@partner.example": b"550 Mail from 192.5.1.1 refused, see 5.7.1.example"
        }
        await inject(self.spool, "a@sender.example", ["gone@partner.example"])
        manager = self.manager()
        await manager.run_once()
        await manager.run_once()
        [(_, _, dsn)] = self.server.capture.messages
        self.assertIn(b"Status: 5.0.0\r\n", dsn)
        self.assertIn(b"Diagnostic-Code: smtp; 550 Mail from 192.5.1.1 refused", dsn)

    async def test_bounce_8bit_headers(self) -> None:
        """
        The original's headers are returned as they were, 8-bit octets
        included, and the DSN then says so (RFC 2045: unlabelled content
        is 7-bit) and goes with C{BODY=8BITMIME}; a 7-bit original's DSN
        is 7-bit and says nothing.
        """
        await inject(self.spool, "a@sender.example", ["gone@partner.example"], "na\u00efve")
        await inject(self.spool, "b@sender.example", ["gone@partner.example"], "plain")
        manager = self.manager()
        await manager.run_once()
        await manager.run_once()
        dsns = {rcpts[0]: dsn for _, rcpts, dsn in self.server.capture.messages}
        report = email.message_from_bytes(dsns[b"a@sender.example"])
        self.assertEqual(report["Content-Transfer-Encoding"], "8bit")
        [headers] = [p for p in report.walk() if p.get_content_type() == "text/rfc822-headers"]
        self.assertEqual(headers["Content-Transfer-Encoding"], "8bit")
        self.assertIn(b"Subject: na\xc3\xafve\r\n", dsns[b"a@sender.example"])
        mails = [line for _, line in self.server.capture.commands if line.startswith(b"MAIL")]
        self.assertIn(b"MAIL FROM:<> BODY=8BITMIME", mails)
        self.assertTrue(dsns[b"b@sender.example"].isascii())
        self.assertNotIn(b"Content-Transfer-Encoding", dsns[b"b@sender.example"])

    async def test_bounce_to_quoted_sender(self) -> None:
        """
        A sender whose quoted local part holds a space (legal, RFC 5321
        section 4.1.2, and accepted by our listeners) gets the bounce: the
        DSN goes out with that address in its RCPT command, instead of
        being refused as unsafe and dropped as a bounce that bounced.
        """
        sender = '"john doe"@sender.example'
        await inject(self.spool, sender, ["gone@partner.example"], "original")
        manager = self.manager()
        await manager.run_once()
        await manager.run_once()
        self.assertEqual(self.spool.queued(), [])
        commands = [line for _, line in self.server.capture.commands]
        self.assertIn(b'RCPT TO:<"john doe"@sender.example>', commands)
        [(dsn_from, _, dsn)] = self.server.capture.messages
        self.assertEqual(dsn_from, b"")
        self.assertIn(b'To: <"john doe"@sender.example>', dsn)

    async def test_quoted_recipient(self) -> None:
        """
        A recipient with such a local part is delivered, not bounced.
        """
        mid = await inject(self.spool, "", ['"jane doe"@partner.example'])
        await self.manager().run_once()
        self.assertRaises(KeyError, self.spool.get, mid)
        commands = [line for _, line in self.server.capture.commands]
        self.assertIn(b'RCPT TO:<"jane doe"@partner.example>', commands)
        self.assertEqual(len(self.server.capture.messages), 1)

    def with_other_domain(self) -> GatewayConfig:
        """
        A configuration that routes C{other.example} to the test server
        too, whose C{gone@other.example} is refused (550).
        """
        config = make_config(self.server.port, self.data_dir)
        self.server.script.rcpt_replies = {
            **self.server.script.rcpt_replies,
            "gone@other.example": b"550 5.1.1 Unknown here too",
        }
        return attrs.evolve(
            config,
            smtp_routes={
                **config.smtp_routes,
                "other.example": config.smtp_routes["sender.example"],
            },
        )

    async def test_mixed_outcomes_one_bounce(self) -> None:
        """
        One message, two domains delivered at once: delivered, deferred
        and refused recipients in each.  The sender gets one DSN for all
        the refused ones; the delivered ones are never sent it again, and
        the deferred one is retried alone.
        """
        config = self.with_other_domain()
        mid = await inject(
            self.spool,
            "a@sender.example",
            [
                "ok@partner.example",
                "gone@partner.example",
                "busy@partner.example",
                "ok@other.example",
                "gone@other.example",
            ],
        )
        manager = self.manager(config=config)
        await manager.run_once()
        await manager.run_once()
        dsns = [dsn for sender, _, dsn in self.server.capture.messages if sender == b""]
        self.assertEqual(len(dsns), 1)
        self.assertIn(b"Final-Recipient: rfc822; gone@partner.example", dsns[0])
        self.assertIn(b"Final-Recipient: rfc822; gone@other.example", dsns[0])
        states = {s.address: s.status for s in self.spool.get(mid).recipients}
        self.assertEqual(
            states,
            {
                "ok@partner.example": "delivered",
                "gone@partner.example": BOUNCED,
                "busy@partner.example": DEFERRED,
                "ok@other.example": "delivered",
                "gone@other.example": BOUNCED,
            },
        )
        rcpts_before = self.server.verbs().count(b"RCPT")
        self.clock.advance(300)
        await manager.run_once()
        await manager.run_once()
        self.assertEqual(self.server.verbs().count(b"RCPT"), rcpts_before + 1)
        self.assertEqual(
            [rcpts for sender, rcpts, _ in self.server.capture.messages if sender],
            [[b"ok@partner.example"], [b"ok@other.example"]],
        )
        self.assertEqual(len(self.server.capture.messages), 3)

    async def test_held_failures_not_tried_while_bounced(self) -> None:
        """
        While the last of a message's deliveries spools the one DSN, the
        failures another delivery held for it are neither held nor in
        flight any more, and their states on disk are still the old ones:
        a scan (or delivernow) in that moment must not send them the
        message again (a second refusal, and a second bounce).
        """
        config = self.with_other_domain()
        mid = await inject(
            self.spool, "a@sender.example", ["gone@partner.example", "gone@other.example"]
        )
        manager = self.manager(config=config)
        spooling: Deferred[None] = Deferred()
        release: Deferred[None] = Deferred()
        new_message = self.spool.new_message

        def held_dsn(envelope: Envelope) -> Any:
            incoming = new_message(envelope)
            commit = incoming.commit

            async def late_commit() -> int:
                spooling.callback(None)
                await release
                return await commit()

            incoming.commit = late_commit
            return incoming

        self.spool.new_message = held_dsn  # type: ignore[method-assign]
        first = manager.run_once()
        await spooling
        self.spool.new_message = new_message  # type: ignore[method-assign]
        await manager.deliver_now()
        release.callback(None)
        await first
        rcpts = [line for _, line in self.server.capture.commands if line.startswith(b"RCPT")]
        self.assertEqual(
            sorted(rcpts), [b"RCPT TO:<gone@other.example>", b"RCPT TO:<gone@partner.example>"]
        )
        self.assertRaises(KeyError, self.spool.get, mid)
        self.assertEqual(len(self.spool.queued()), 1)

    async def test_no_bounce_for_bounce(self) -> None:
        """
        A message from the null sender that bounces makes no DSN.
        """
        await inject(self.spool, "", ["gone@partner.example"])
        await self.manager().run_once()
        self.assertEqual(self.spool.queued(), [])
        self.assertEqual(self.server.capture.messages, [])

    async def test_give_up(self) -> None:
        """
        A recipient still deferred when the message is older than the
        give-up time bounces, with status 4.4.7.
        """
        await inject(self.spool, "a@sender.example", ["busy@partner.example"])
        manager = self.manager(retry=RetryPolicy(give_up=3600))
        self.clock.advance(3601)
        await manager.run_once()
        await manager.run_once()
        self.assertEqual(self.spool.queued(), [])
        dsn = self.server.capture.messages[-1][2]
        self.assertIn(b"Status: 4.4.7", dsn)
        self.assertIn(b"gave up after 1 attempts", dsn)


class ReloadInFlightTests(QueueTestCase):
    """
    A reload that changes a domain's TLS setting while one of its
    deliveries is under way.
    """

    async def test_stricter_setting_applies_to_the_next_host(self) -> None:
        """
        A delivery to C{partner.example} (C{no}) is waiting on its first
        host when a reload makes the domain C{required}.  That host then
        drops the connection: the delivery goes on to the next host under
        the new setting, so the host without STARTTLS gets no MAIL FROM,
        the failure is reported, and the message stays queued.  Before,
        the delivery kept the setting it started with and sent the message
        in the clear, after the reload had been acknowledged.
        """
        connected: Deferred[Any] = Deferred()

        class Stall(Protocol):
            def connectionMade(self) -> None:
                connected.callback(self.transport)

        listening = reactor.listenTCP(  # type: ignore[attr-defined]
            0, ServerFactory.forProtocol(Stall), interface="127.0.0.1"
        )
        self.addCleanup(listening.stopListening)
        stall_port = listening.getHost().port
        hosts = (f"127.0.0.1:{stall_port}", f"127.0.0.1:{self.server.port}")

        def config(level: DestinationTLS) -> GatewayConfig:
            return attrs.evolve(
                make_config(self.server.port, self.data_dir),
                destinations={"partner.example": DestinationControl("partner.example", level)},
                smtp_routes={"partner.example": hosts},
            )

        events: list[Any] = []
        manager = self.manager(config=config(DestinationTLS.NO), on_tls_failure=events.append)
        manager.startService()
        self.addCleanup(manager.stopService)
        mid = await inject(self.spool, "a@sender.example", ["b@partner.example"])
        transport = await connected
        manager.config = config(DestinationTLS.REQUIRED)
        transport.loseConnection()
        await self.until_idle(manager)
        self.assertNotIn(b"MAIL", self.server.verbs())
        self.assertEqual(self.server.capture.messages, [])
        self.assertEqual([e.port for e in events], [self.server.port])
        (state,) = self.spool.get(mid).recipients
        self.assertEqual(state.status, DEFERRED)
        self.assertIn("TLS required", state.last_error)

    async def until_idle(self, manager: QueueManager) -> None:
        deadline = time.monotonic() + 20
        while manager.in_flight and time.monotonic() < deadline:
            await deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(manager.in_flight, {})


class LimitTests(QueueTestCase):
    """
    Destination Controls limits.
    """

    async def test_recipient_rate(self) -> None:
        """
        With C{recipient_limit = 2}, only two recipients go in the window;
        C{delivernow} lifts the count.
        """
        for i in range(3):
            await inject(self.spool, "", [f"r{i}@partner.example"])
        config = make_config(self.server.port, self.data_dir, limit=2)
        manager = self.manager(config=config)
        await manager.run_once()
        self.assertEqual(len(self.server.capture.messages), 2)
        [left] = self.spool.queued()
        self.assertEqual(left.recipients[0].status, QUEUED)
        await manager.deliver_now("partner.example")
        self.assertEqual(len(self.server.capture.messages), 3)

    async def test_concurrency(self) -> None:
        """
        With C{max_host_concurrency = 1}, a running manager delivers every
        message, one connection at a time.
        """
        for i in range(4):
            await inject(self.spool, "", [f"r{i}@partner.example"])
        config = make_config(self.server.port, self.data_dir, concurrency=1)
        manager = self.manager(config=config, clock=reactor)
        manager.startService()
        self.addCleanup(manager.stopService)
        while len(self.server.capture.messages) < 4:
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.server.capture.max_open, 1)

    async def test_delivernow_request(self) -> None:
        """
        C{esa-tls delivernow}'s request file makes a running manager retry
        deferred recipients at once.
        """
        mid = await inject(self.spool, "", ["busy@partner.example"])
        manager = self.manager()
        await manager.run_once()
        self.server.script.rcpt_replies = {}
        config = make_config(self.server.port, self.data_dir)
        request_delivery_now(config, "Partner.Example")
        manager._check_requests()
        while self.spool.queued():
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.server.capture.messages), 1)
        self.assertEqual(os.listdir(os.path.join(self.data_dir, "delivernow")), [])
        self.assertRaises(KeyError, self.spool.get, mid)

    async def test_delivernow_beyond_concurrency(self) -> None:
        """
        C{delivernow} with more deferred messages than the domain's
        concurrency limit: those that wait for a slot are still tried now
        when their turn comes, not at their retry time (a backlog after an
        outage of the next hop is flushed whole).
        """
        for i in range(4):
            await inject(self.spool, "", [f"busy{i}@partner.example"])
        self.server.script.rcpt_replies = {
            f"busy{i}@partner.example": b"450 4.2.1 Mailbox busy" for i in range(4)
        }
        config = make_config(self.server.port, self.data_dir, concurrency=1)
        manager = self.manager(config=config)
        manager.startService()
        self.addCleanup(manager.stopService)
        while any(s.attempts == 0 for m in self.spool.queued() for s in m.recipients):
            await deferLater(reactor, 0.05, lambda: None)
        self.server.script.rcpt_replies = {}
        manager.deliver_now()
        deadline = time.monotonic() + 10
        while self.spool.queued() and time.monotonic() < deadline:
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.server.capture.messages), 4)
        self.assertEqual(self.server.capture.max_open, 1)

    async def test_delivernow_during_a_delivery(self) -> None:
        """
        C{delivernow} that comes while a message's delivery is under way
        (and then deferred) has the message tried again as that delivery
        ends, not left to the retry time the deferral set.
        """

        class Once(dict[str, bytes]):
            """
            Each reply given once: the next try of the address is taken.
            """

            def get(self, key: str, default: Any = None) -> Any:
                return self.pop(key, default)

        await inject(self.spool, "", ["busy0@partner.example"])
        self.server.script.rcpt_replies = Once({"busy0@partner.example": b"450 4.2.1 Busy"})
        manager = self.manager(config=make_config(self.server.port, self.data_dir))
        manager.startService()
        self.addCleanup(manager.stopService)
        self.assertEqual(len(manager.in_flight), 1)
        manager.deliver_now()
        deadline = time.monotonic() + 10
        while self.spool.queued() and time.monotonic() < deadline:
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.server.capture.messages), 1)
        self.assertEqual(self.server.verbs().count(b"RCPT"), 2)

    async def both_deferred_one_per_minute(self) -> QueueManager:
        """
        With C{partner.example} limited to one recipient a minute, try the
        queued C{busy0@} and C{busy1@} (each deferred with a 450, a minute
        apart), then have the server take them: the manager, ready for
        C{delivernow}.
        """
        self.server.script.rcpt_replies = {
            f"busy{i}@partner.example": b"450 4.2.1 Mailbox busy" for i in range(2)
        }
        config = make_config(self.server.port, self.data_dir, limit=1)
        partner = attrs.evolve(config.destinations["partner.example"], recipient_minutes=1)
        config = attrs.evolve(config, destinations={**config.destinations, partner.domain: partner})
        manager = self.manager(config=config)
        await manager.run_once()
        self.clock.advance(61)
        await manager.run_once()
        self.assertEqual(self.server.verbs().count(b"RCPT"), 2)
        self.server.script.rcpt_replies = {}
        return manager

    async def test_delivernow_beyond_recipient_rate(self) -> None:
        """
        A message that C{delivernow} asked for but the domain's recipient
        rate held back goes at the first scan the rate allows, not at its
        retry time.
        """
        for i in range(2):
            await inject(self.spool, "", [f"busy{i}@partner.example"])
        manager = await self.both_deferred_one_per_minute()
        await manager.deliver_now()
        self.assertEqual(len(self.server.capture.messages), 1)
        # The rate's window has passed; the retry time (5 minutes after the
        # last failure) has not.
        self.clock.advance(61)
        await manager.run_once()
        self.assertEqual(len(self.server.capture.messages), 2)
        self.assertEqual(self.spool.queued(), [])

    async def test_delivernow_split_by_recipient_rate(self) -> None:
        """
        The same with both deferred recipients in one message: the one the
        rate held back goes at the first scan the rate allows, not at its
        retry time.
        """
        await inject(self.spool, "", ["busy0@partner.example", "busy1@partner.example"])
        manager = await self.both_deferred_one_per_minute()
        self.clock.advance(61)
        await manager.deliver_now()
        self.assertEqual(len(self.server.capture.messages), 1)
        # The rate's window has passed; neither retry time has.
        self.clock.advance(61)
        await manager.run_once()
        self.assertEqual(len(self.server.capture.messages), 2)
        self.assertEqual(self.spool.queued(), [])


class _FailingWrites(FileSystem):
    """
    A file system on which new files fail with ENOSPC while C{full} says
    so: every one (C{"all"}) or new messages only (C{"messages"}, which
    leaves recipient state files alone).
    """

    full = ""

    def _check(self, path: str) -> None:
        if self.full == "all" or (self.full == "messages" and ".json" not in path):
            raise OSError(errno.ENOSPC, "No space left on device", path)

    def open_for_writing(self, path: str) -> BinaryIO:
        self._check(path)
        return super().open_for_writing(path)

    def create(self, path: str, data: bytes) -> int:
        self._check(path)
        return super().create(path, data)


class SpoolFaultTests(QueueTestCase):
    """
    When the spool cannot write (disk full), a delivery's outcome is not
    lost and the message is not sent again to recipients who have it.
    """

    def setUp(self) -> None:
        super().setUp()
        self.fs = _FailingWrites()
        self.spool = DurableSpool(os.path.abspath(self.mktemp()), reactor, filesystem=self.fs)
        self.addCleanup(self.spool.close)

    def copies(self, rcpt: bytes) -> int:
        return sum(1 for _, rcpts, _ in self.server.capture.messages if rcpt in rcpts)

    async def test_bounce_not_spooled(self) -> None:
        """
        A 250 and a 550 in one delivery, and no room for the bounce: the
        delivered recipient is recorded (and not sent the message again),
        the refused one is deferred, and bounced once it can be.
        """
        mid = await inject(
            self.spool, "a@sender.example", ["ok@partner.example", "gone@partner.example"]
        )
        self.fs.full = "messages"
        manager = self.manager()
        for _ in range(3):
            await manager.run_once()
        self.assertEqual(self.copies(b"ok@partner.example"), 1)
        states = {s.address: s for s in self.spool.get(mid).recipients}
        self.assertEqual(states["ok@partner.example"].status, "delivered")
        gone = states["gone@partner.example"]
        self.assertEqual((gone.status, gone.next_attempt), (DEFERRED, self.clock.seconds() + 300))
        self.assertIn("550 5.1.1 No such user (its bounce was not spooled:", gone.last_error)
        self.fs.full = ""
        self.clock.advance(300)
        await manager.run_once()
        await manager.run_once()
        self.assertEqual(self.spool.queued(), [])
        self.assertEqual(self.copies(b"ok@partner.example"), 1)
        # RCPTs: ok@ and gone@, gone@ again after the fault, the bounce.
        self.assertEqual(self.server.verbs().count(b"RCPT"), 4)
        dsn_from, dsn_to, dsn = self.server.capture.messages[-1]
        self.assertEqual((dsn_from, dsn_to), (b"", [b"a@sender.example"]))
        self.assertIn(b"Final-Recipient: rfc822; gone@partner.example", dsn)

    async def test_states_not_recorded(self) -> None:
        """
        With no room even for the recipients' states, the message waits,
        not sent again, while each scan tries to record them; once they
        are, the rest of its work goes on.
        """
        mid = await inject(
            self.spool, "a@sender.example", ["ok@partner.example", "busy@partner.example"]
        )
        self.fs.full = "all"
        manager = self.manager()
        for _ in range(3):
            await manager.run_once()
            self.clock.advance(400)
        self.assertEqual(self.copies(b"ok@partner.example"), 1)
        self.assertEqual(self.copies(b"busy@partner.example"), 0)
        self.assertEqual(self.server.verbs().count(b"RCPT"), 2)
        # Handled, not a failed delivery.
        self.assertEqual(self.flushLoggedErrors(), [])
        self.fs.full = ""
        await manager.run_once()
        states = {s.address: s for s in self.spool.get(mid).recipients}
        self.assertEqual(states["ok@partner.example"].status, "delivered")
        self.assertEqual(states["busy@partner.example"].status, DEFERRED)
        # Recorded on disk: a new spool (a restart) finds the same.
        again = DurableSpool(self.spool.directory, reactor)
        self.addCleanup(again.close)
        self.assertEqual(
            {s.address: s.status for s in again.get(mid).recipients},
            {"ok@partner.example": "delivered", "busy@partner.example": DEFERRED},
        )
        self.server.script.rcpt_replies = {}
        self.clock.advance(300)
        await manager.run_once()
        self.assertEqual(self.copies(b"ok@partner.example"), 1)
        self.assertEqual(self.copies(b"busy@partner.example"), 1)
        self.assertEqual(self.spool.queued(), [])


class _OutOfDescriptors:
    """
    While in effect, this process can open no descriptor: every C{open},
    C{listdir} and C{socket} fails with a real C{EMFILE}, as in a busy
    gateway at its C{ulimit -n}.
    """

    def __enter__(self) -> None:
        self._saved = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest = os.open(os.devnull, os.O_RDONLY)
        os.close(lowest)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, self._saved[1]))

    def __exit__(self, *exc_info: object) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, self._saved)


class RunningTests(QueueTestCase):
    """
    The manager's own timers (the queue scan, the delivernow check) keep
    running whatever one round of them met.
    """

    timeout = 60

    async def test_scan_survives_a_failed_scan(self) -> None:
        """
        A scan that cannot list the queue (out of descriptors) is logged,
        and the next scan, once the descriptors are back, delivers a
        deferred recipient that came due: one failure does not stop the
        scans for the life of the process.
        """
        await inject(self.spool, "a@sender.example", ["busy@partner.example"])
        manager = self.manager(scan_interval=30)
        manager.startService()
        self.addCleanup(manager.stopService)
        while self.server.verbs().count(b"RCPT") < 1 or manager.in_flight:
            await deferLater(reactor, 0.05, lambda: None)
        self.server.script.rcpt_replies = {}
        self.clock.advance(270)
        with _OutOfDescriptors():
            self.clock.advance(30)
        self.assertTrue(self.flushLoggedErrors(OSError))
        self.assertEqual(manager.in_flight, {})
        self.clock.advance(30)
        self.assertTrue(manager.in_flight, "the scan after the failed one started nothing")
        while self.spool.queued():
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.server.capture.messages), 1)

    async def test_delivernow_survives_a_failed_check(self) -> None:
        """
        A delivernow check that cannot list its directory (out of
        descriptors) is said, and the next check takes the request.
        """
        await inject(self.spool, "a@sender.example", ["busy@partner.example"])
        manager = self.manager(scan_interval=3600)
        manager.startService()
        self.addCleanup(manager.stopService)
        while self.server.verbs().count(b"RCPT") < 1 or manager.in_flight:
            await deferLater(reactor, 0.05, lambda: None)
        self.server.script.rcpt_replies = {}
        request_delivery_now(make_config(self.server.port, self.data_dir))
        with _OutOfDescriptors():
            self.clock.advance(1)
        self.flushLoggedErrors(OSError)
        self.assertEqual(manager.in_flight, {})
        self.clock.advance(1)
        self.assertEqual(os.listdir(os.path.join(self.data_dir, "delivernow")), [])
        self.assertTrue(manager.in_flight, "the check after the failed one started nothing")
        while self.spool.queued():
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.server.capture.messages), 1)


class _Child(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


def _child_main(spool_dir: str, port: int, data_dir: str) -> None:
    """
    A gateway's queue runner in its own process, for the crash test.
    """
    from twisted.internet import reactor as child_reactor

    spool = DurableSpool(spool_dir, child_reactor)
    manager = QueueManager(
        child_reactor,
        spool,
        make_config(port, data_dir, concurrency=1),
        None,
        dcid_allocator=itertools.count(1).__next__,
        timeouts=Timeouts.uniform(60),
        scan_interval=3600,
    )
    child_reactor.callWhenRunning(manager.startService)
    child_reactor.run()


class CrashTests(QueueTestCase):
    """
    The sending process dies in the middle of a batch.
    """

    async def test_restart_delivers_each_recipient_once(self) -> None:
        """
        A queue runner is killed (SIGKILL) while its third message waits
        for the final reply; a new one on the same spool delivers the rest,
        and the sink has every message exactly once.
        """
        subjects = [f"batch {i}" for i in range(5)]
        for subject in subjects:
            await inject(self.spool, "", ["x@partner.example"], subject)
        await self.spool.close()
        self.server.script.hang_after_messages = 2
        child = _Child()
        code = (
            "import sys; from tests.test_outbound_queue import _child_main; "
            "_child_main(sys.argv[1], int(sys.argv[2]), sys.argv[3])"
        )
        process = reactor.spawnProcess(
            child,
            sys.executable,
            [sys.executable, "-c", code, self.spool_dir, str(self.server.port), self.data_dir],
            env=dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + _project_root()),
        )
        deadline = time.monotonic() + 30
        while not self.server.capture.unanswered:
            if time.monotonic() > deadline:
                process.signalProcess("KILL")
                await child.ended
                self.fail(f"child never reached the third message: {child.output!r}")
            await deferLater(reactor, 0.05, lambda: None)
        process.signalProcess("KILL")
        await child.ended
        self.assertEqual(len(self.server.capture.messages), 2)

        self.server.script.hang_after_messages = None
        spool = DurableSpool(self.spool_dir, reactor)
        self.addCleanup(spool.close)
        manager = QueueManager(
            reactor,
            spool,
            make_config(self.server.port, self.data_dir, concurrency=1),
            None,
            dcid_allocator=itertools.count(100).__next__,
            timeouts=Timeouts.uniform(10),
        )
        manager.startService()
        self.addCleanup(manager.stopService)
        while spool.queued():
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(sorted(_subjects(self.server)), subjects)


def _project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DSNTests(TestCase):
    """
    The DSN builder on its own.
    """

    def test_never_for_null_sender(self) -> None:
        """
        No DSN can be built for the null reverse path.
        """
        self.assertRaises(
            ValueError, build_dsn, reporting_mta="gw", sender="", failed=[], original_headers=b""
        )

    def test_status(self) -> None:
        """
        The enhanced status comes from the reply when it is a permanent
        one, else from the reply code.
        """
        self.assertEqual(status_of("550 5.7.1 Denied", 550), "5.7.1")
        self.assertEqual(status_of("550 Denied", 550), "5.0.0")
        self.assertEqual(status_of("4.2.1 busy", 550), "5.0.0")
        self.assertEqual(status_of("MAIL FROM: 5.1.8 Bad sender", 553), "5.1.8")
        self.assertEqual(status_of("Relay 10.5.2.1 denied", 554), "5.0.0")
        self.assertEqual(status_of("Host 5.2.2.1 denied", 554), "5.0.0")
        self.assertEqual(status_of("Denied by policy 5.7.1.", 554), "5.7.1")
