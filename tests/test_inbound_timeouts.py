"""
Session timers (idle, unsuccessful injection, total connection time) and
shutdown, with real sockets and a test clock driving the timers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.support import PUBLIC, Gateway, Raw, in_thread
from tests.test_inbound_session import SabotagedStore


def connect(port: int) -> Raw:
    raw = Raw(port)
    raw.reply()
    return raw


class TimerTests(TestCase):
    @inlineCallbacks
    def test_idleTimeout(self) -> Any:
        """
        A silent client gets 421 4.4.2 after the idle timeout and is
        disconnected.
        """
        gw = Gateway(self, clock=True)
        raw = yield in_thread(connect, gw.port)
        self.addCleanup(raw.close)
        gw.clock.advance(299)
        gw.clock.advance(2)
        rest = yield in_thread(raw.rest)
        self.assertEqual(rest, b"421 4.4.2 mx.test.example Error: timeout exceeded\r\n")

    @inlineCallbacks
    def test_unsuccessfulInjection(self) -> Any:
        """
        A client that keeps talking without injecting a message gets the
        ESA's 421 when the unsuccessful-connection timeout runs out.
        """
        gw = Gateway(self, clock=True)
        raw = yield in_thread(connect, gw.port)
        self.addCleanup(raw.close)
        for _ in range(2):
            gw.clock.advance(100)
            reply = yield in_thread(raw.chat, b"NOOP\r\n")
            self.assertEqual(reply, b"250 2.0.0 Ok\r\n")
        gw.clock.advance(100)
        rest = yield in_thread(raw.rest)
        self.assertEqual(
            rest, b"421 Timed out waiting for successful message injection, disconnecting.\r\n"
        )

    @inlineCallbacks
    def test_injectionResetsTimer(self) -> Any:
        """
        A message accepted restarts the unsuccessful-connection timer.
        """
        gw = Gateway(self, clock=True)
        raw = yield in_thread(connect, gw.port)
        self.addCleanup(raw.close)
        gw.clock.advance(200)
        for command in (
            b"EHLO c\r\n",
            b"MAIL FROM:<a@b.test>\r\n",
            b"RCPT TO:<u@example.com>\r\n",
            b"DATA\r\n",
        ):
            yield in_thread(raw.chat, command)
        accepted = yield in_thread(raw.chat, b"x\r\n.\r\n")
        self.assertTrue(accepted.startswith(b"250 2.0.0 Ok: Message"))
        gw.clock.advance(200)
        reply = yield in_thread(raw.chat, b"NOOP\r\n")
        self.assertEqual(reply, b"250 2.0.0 Ok\r\n")

    @inlineCallbacks
    def test_totalConnectionTime(self) -> Any:
        """
        At 80% of the total connection time limit the ESA's 421 is sent.
        """
        gw = Gateway(
            self,
            clock=True,
            extra_base="[listener_settings]\ntotal_time_limit = 100\nunsuccessful_timeout = 1000\nidle_timeout = 1000\n",
        )
        raw = yield in_thread(connect, gw.port)
        self.addCleanup(raw.close)
        gw.clock.advance(79)
        reply = yield in_thread(raw.chat, b"NOOP\r\n")
        self.assertEqual(reply, b"250 2.0.0 Ok\r\n")
        gw.clock.advance(1)
        rest = yield in_thread(raw.rest)
        self.assertEqual(rest, b"421 Exceeded allowable connection time, disconnecting.\r\n")

    @inlineCallbacks
    def test_timeLimitLetsMessageFinish(self) -> Any:
        """
        A message on its way at the 80% mark is allowed to finish and is
        accepted; then the connection is closed with the 421.
        """
        gw = Gateway(
            self,
            PUBLIC,
            clock=True,
            extra_base="[listener_settings]\ntotal_time_limit = 100\nunsuccessful_timeout = 1000\nidle_timeout = 1000\n",
        )
        raw = yield in_thread(connect, gw.port)
        self.addCleanup(raw.close)
        for command in (
            b"EHLO c\r\n",
            b"MAIL FROM:<a@b.test>\r\n",
            b"RCPT TO:<u@example.com>\r\n",
            b"DATA\r\n",
        ):
            yield in_thread(raw.chat, command)
        gw.clock.advance(85)
        raw.send(b"x\r\n.\r\n")
        rest = yield in_thread(raw.rest)
        self.assertRegex(
            rest,
            rb"^250 2\.0\.0 Ok: Message \d+ accepted\r\n421 Exceeded allowable connection time",
        )
        self.assertEqual(len(gw.queued()), 1)

    @inlineCallbacks
    def test_shutdown(self) -> Any:
        """
        When the gateway stops, open sessions are told 421 4.3.2.
        """
        gw = Gateway(self)
        raw = yield in_thread(connect, gw.port)
        self.addCleanup(raw.close)
        yield gw.factory.shutdown()
        rest = yield in_thread(raw.rest)
        self.assertEqual(
            rest,
            b"421 4.3.2 mx.test.example Service shutting down, closing transmission channel\r\n",
        )

    @inlineCallbacks
    def test_shutdownLetsCommitFinish(self) -> Any:
        """
        A message whose commit is under way when the gateway stops reaches
        the disk (the stop waits for it): its client is told so with the
        250, and only then 421, rather than a bare 421 that has it send
        the message again (a duplicate delivered).
        """
        gate: Deferred[None] = Deferred()
        committing: list[None] = []

        def hold_commit(message: Any) -> None:
            original = message.commit

            def commit() -> Deferred[int]:
                committing.append(None)
                return gate.addCallback(lambda _: original())

            message.commit = commit

        gw = Gateway(self, wrap_store=lambda spool: SabotagedStore(spool, hold_commit))
        raw = yield in_thread(connect, gw.port)
        self.addCleanup(raw.close)
        for command in (
            b"EHLO c\r\n",
            b"MAIL FROM:<a@b.test>\r\n",
            b"RCPT TO:<u@example.com>\r\n",
            b"DATA\r\n",
        ):
            yield in_thread(raw.chat, command)
        raw.send(b"x\r\n.\r\n")
        while not committing:
            yield deferLater(reactor, 0.01, lambda: None)
        stopped = gw.factory.shutdown()
        gate.callback(None)
        rest = yield in_thread(raw.rest)
        yield stopped
        self.assertRegex(
            rest,
            rb"^250 2\.0\.0 Ok: Message \d+ accepted\r\n"
            rb"421 4\.3\.2 mx\.test\.example Service shutting down, closing transmission channel\r\n$",
        )
        self.assertEqual(len(gw.queued()), 1)

    @inlineCallbacks
    def test_shutdownWhileClassifying(self) -> Any:
        """
        A connection the HAT is still looking up (a slow DNS server, which
        the client may run itself) when the gateway stops gets the 421 at
        once, not a banner once the answer comes: the stop does not wait
        for that client to finish a whole session.
        """
        gw = Gateway(self)
        pending: list[Deferred[Any]] = []
        verdict = gw.factory.classify_now("127.0.0.1")

        def slow(ip: str) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append(d)
            return d

        gw.factory.classify_now = lambda ip: None  # type: ignore[method-assign]
        gw.factory.classify = slow  # type: ignore[method-assign]
        raw = yield in_thread(Raw, gw.port)
        self.addCleanup(raw.close)
        while not pending:
            yield deferLater(reactor, 0.01, lambda: None)
        stopped = gw.factory.shutdown()
        pending[0].callback(verdict)
        first = yield in_thread(raw.reply)
        self.assertEqual(
            first,
            b"421 4.3.2 mx.test.example Service shutting down, closing transmission channel\r\n",
        )
        yield stopped
        self.assertEqual(gw.factory.sessions, set())
