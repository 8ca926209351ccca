"""
Hostile server replies against the delivery client: a reply line far over
any limit, megabytes without a line ending, a multi-line reply that never
ends (fast, or one line at a time), a reply cut off mid-line, non-ASCII.

The client must neither wait forever nor buffer without bound: each
delivery ends deferred, with an error that says what was wrong, and the
server sees the client hang up while it is still sending.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from esa_tls.config.model import DestinationTLS
from esa_tls.outbound.client import Timeouts
from esa_tls.outbound.result import DeliveryResult
from tests.test_outbound_client import BOUNCED, DEFERRED, DeliveryTestCase

NO = DestinationTLS.NO

#: Short enough to keep the tests quick, long enough for loopback.
SHORT = Timeouts.uniform(1.0)

#: A stream the server offers: far more than a client may hold.
TOTAL = 8 << 20


class _Flood(Protocol):
    """
    Greets (C{greeting}), then on the first line from the client (EHLO)
    starts sending C{piece} every C{interval} seconds, up to L{TOTAL}
    bytes or until the client hangs up; C{sent} counts what was written.
    """

    def __init__(self, greeting: bytes, piece: bytes, interval: float) -> None:
        self.greeting = greeting
        self.piece = piece
        self.interval = interval
        self.sent = 0
        self.closed = False
        self.loop: LoopingCall | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.greeting)
        if not self.greeting.endswith(b"\r\n") or self.greeting.startswith(b"220-"):
            self._start()

    def dataReceived(self, data: bytes) -> None:
        if self.loop is None and data.upper().startswith((b"EHLO", b"HELO")):
            self._start()

    def _start(self) -> None:
        self.loop = LoopingCall(self._more)
        self.loop.clock = reactor
        self.loop.start(self.interval)

    def _more(self) -> None:
        if self.closed or self.sent >= TOTAL:
            assert self.loop is not None
            self.loop.stop()
            return
        assert self.transport is not None
        self.transport.write(self.piece)
        self.sent += len(self.piece)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True
        if self.loop is not None and self.loop.running:
            self.loop.stop()


class HostileReplyTests(DeliveryTestCase):
    """
    Replies no SMTP server should send.
    """

    timeout = 30

    async def flood(
        self, piece: bytes, *, greeting: bytes = b"220 flood.test ESMTP\r\n", interval: float
    ) -> tuple[DeliveryResult, _Flood]:
        protocols: list[_Flood] = []

        def build(addr: Any) -> _Flood:
            protocols.append(_Flood(greeting, piece, interval))
            return protocols[-1]

        factory = ServerFactory()
        factory.buildProtocol = build  # type: ignore[method-assign]
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        port = listening.getHost().port  # type: ignore[attr-defined]
        result = await self.deliver(NO, [f"127.0.0.1:{port}"], timeouts=SHORT)
        self.assertEqual(len(protocols), 1)
        return result, protocols[0]

    def assertDeferredFor(self, result: DeliveryResult, *words: str) -> None:
        self.assertStatuses(result, DEFERRED)
        text = result.recipients[0].text
        self.assertTrue(text.startswith("4."), text)
        for word in words:
            self.assertIn(word, text)

    async def test_megabytes_without_line_end(self) -> None:
        """
        A greeting that never reaches its CRLF, megabytes long: the client
        gives up early with a line-length error, not a timeout.
        """
        result, server = await self.flood(b"x" * 65536, greeting=b"220 flood.test ", interval=0.001)
        self.assertDeferredFor(result, "too long")
        self.assertLess(server.sent, TOTAL)

    async def test_long_reply_line(self) -> None:
        """
        An EHLO reply line of 100 KB, CRLF-terminated: refused as too long.
        """
        result, server = await self.flood(b"250-" + b"x" * 100_000 + b"\r\n", interval=0.001)
        self.assertDeferredFor(result, "too long")
        self.assertLess(server.sent, TOTAL)

    async def test_endless_multiline_fast(self) -> None:
        """
        C{250-} continuation lines as fast as the server can send them:
        the client stops reading after a bounded reply and defers.
        """
        result, server = await self.flood(b"250-more\r\n" * 1000, interval=0.001)
        self.assertDeferredFor(result, "too long")
        self.assertLess(server.sent, TOTAL)

    async def test_endless_multiline_slow(self) -> None:
        """
        One C{250-} line every 50 ms, forever, each well inside the
        timeout: the timeout bounds the whole reply, not each line, so the
        delivery still ends, deferred.
        """
        result, server = await self.flood(b"250-more\r\n", interval=0.05)
        self.assertDeferredFor(result, "timeout")
        self.assertLess(server.sent, TOTAL)

    async def test_informational_lines_forever(self) -> None:
        """
        Lines with a code starting with C{0} (which the stock client skips) are no way
        to keep a session alive either: no reply code of RFC 5321, the
        first one ends the session.
        """
        result, server = await self.flood(b"050 still here\r\n", interval=0.05)
        self.assertDeferredFor(result, "malformed reply")
        self.assertLess(server.sent, TOTAL)

    async def test_greeting_never_ends(self) -> None:
        """
        A multi-line greeting whose last line never comes, and a greeting
        cut off mid-line: deferred on the timeout.
        """
        for greeting in (b"220-hello\r\n", b"220 hel"):
            result, _ = await self.flood(b"", greeting=greeting, interval=0.05)
            self.assertDeferredFor(result, "timeout")

    async def test_non_ascii(self) -> None:
        """
        Non-ASCII and invalid UTF-8 in EHLO keywords and a refusal text:
        the refusal is reported, readable, and the recipient bounced.
        """
        server = self.serve(
            ehlo_keywords=(b"\xff\xfeWEIRD \xc3\xa9", b"8BITMIME"),
            mail_reply=b"550 5.7.1 m\xc3\xa9chant \xff\xfe",
        )
        result = await self.deliver(NO, server, timeouts=SHORT)
        self.assertStatuses(result, BOUNCED)
        self.assertIn("méchant", result.recipients[0].text)
        self.assertNotIn(b"DATA", server.verbs())
        self.assertEqual(server.capture.messages, [])
