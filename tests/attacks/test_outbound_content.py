"""
Hostile content going out: a spooled message built to end DATA early or
smuggle a second transaction into the next hop (dots at line starts, at
every offset around the client's 16 KiB and 64 KiB chunk boundaries,
C{CRLF.CRLF} inside the body, bare CR and bare LF).

The receiving server records the raw bytes of the DATA phase, so the test
sees exactly what a next-hop MTA would: clean CRLF line endings, correct
dot-stuffing, one transaction, and, once unstuffed, the original message.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import ServerFactory

from esa_tls.config.model import DestinationTLS
from tests.peers.hostile import Capture, HostileServer, Script, _HostileSMTP
from tests.test_outbound_client import DELIVERED, GOOD, DeliveryTestCase

SMUGGLED = (
    b"\r\n.\r\nMAIL FROM:<smuggler@evil.example>\r\nRCPT TO:<victim@partner.example>\r\n"
    b"DATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
)


class _Recorder(_HostileSMTP):
    """
    The scripted server, also keeping every byte received (TLS removed).
    """

    def dataReceived(self, data: bytes) -> None:
        self.factory.raw.append(data)
        super().dataReceived(data)


def _start(case: DeliveryTestCase, script: Script) -> tuple[HostileServer, list[bytes]]:
    capture = Capture()
    raw: list[bytes] = []
    factory: Any = ServerFactory()

    def build() -> _Recorder:
        protocol = _Recorder(script, capture)
        protocol.factory = factory
        return protocol

    factory.buildProtocol = lambda addr: build()
    factory.raw = raw
    listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
    case.addCleanup(listening.stopListening)
    case.addCleanup(capture.all_closed)
    port = listening.getHost().port  # type: ignore[attr-defined]
    return HostileServer(port, capture, script, listening), raw


def canonical(body: bytes) -> bytes:
    """
    What a correct client sends for C{body}, unstuffed: every line ending
    (CRLF, bare CR, bare LF) a CRLF, and a final CRLF.
    """
    text = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return text if text.endswith(b"\r\n") or not text else text + b"\r\n"


class HostileContentTests(DeliveryTestCase):
    """
    Bodies built to break out of DATA, delivered in the clear and over TLS.
    """

    async def roundtrip(self, body: bytes, level: DestinationTLS = DestinationTLS.NO) -> None:
        """
        Deliver C{body} and check the wire and the stored message.
        """
        server, raw = _start(self, Script(certificate=GOOD))
        result = await self.deliver(level, server, body=body)
        self.assertStatuses(result, DELIVERED)
        stream = b"".join(raw)
        # Exactly one transaction, and nothing after the end of data but
        # QUIT.
        self.assertEqual(server.verbs().count(b"MAIL"), 1)
        self.assertEqual(len(server.capture.messages), 1)
        start = stream.index(b"DATA\r\n") + len(b"DATA\r\n")
        end = stream.index(b"\r\n.\r\n", start - 2) + 2
        data = stream[start:end]
        self.assertEqual(stream[end:], b".\r\nQUIT\r\n")
        # Clean CRLF: no CR without LF, no LF without CR.
        self.assertEqual(data.count(b"\r"), data.count(b"\n"))
        self.assertEqual(data.count(b"\r\n"), data.count(b"\n"))
        lines = data.split(b"\r\n")[:-1]
        # Correct stuffing: every line starting with a dot has one more.
        unstuffed = b"".join(
            (line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines
        )
        for line in lines:
            if line.startswith(b"."):
                self.assertTrue(line.startswith(b".."), line[:40])
        self.assertEqual(unstuffed, canonical(body))
        self.assertEqual(server.capture.messages[0][2], canonical(body))

    async def test_leading_dots(self) -> None:
        """
        A first line that is a lone dot, lines of dots, and a dot line
        followed by commands reach the next hop as text of one message.
        """
        await self.roundtrip(b".\r\n..\r\n...x\r\nSubject: t\r\n\r\n.hello\r\n." + SMUGGLED)

    async def test_end_of_data_inside_body(self) -> None:
        """
        C{CRLF.CRLF} and a smuggled transaction inside the body, over TLS
        too: one message, the commands are body text.
        """
        body = b"Subject: t\r\n\r\nbefore" + SMUGGLED + b"after\r\n"
        await self.roundtrip(body)
        await self.roundtrip(body, DestinationTLS.REQUIRED)

    async def test_dot_at_every_offset_near_chunk_boundaries(self) -> None:
        """
        A line ending and a dot line at each offset from 8 bytes before to
        8 bytes after 16 KiB and 64 KiB (where the body is read in
        pieces): always stuffed, never an early end of data.
        """
        for boundary in (16384, 65536):
            for offset in range(boundary - 8, boundary + 9):
                head = b"Subject: t\r\n\r\n"
                filler = b"x" * (offset - len(head) - 2)
                body = head + filler + b"\r\n" + SMUGGLED[2:] + b"tail\r\n"
                self.assertEqual(body[offset : offset + 1], b".")
                await self.roundtrip(body)

    async def test_bare_cr_and_lf(self) -> None:
        """
        Bare CR and bare LF (in front of dots, too: C{LF.LF}, C{CR.CR}, the
        smuggling forms) leave as CRLF line endings, and the dot lines they
        start are stuffed.
        """
        body = (
            b"Subject: t\r\n\r\na\rb\nc\n.\nMAIL FROM:<x@evil.example>\n"
            b"d\r.\rRCPT TO:<y@evil.example>\r\ne\r\n.\r"
        )
        await self.roundtrip(body)
        await self.roundtrip(body + b"x" * 16370 + b"\r" + body, DestinationTLS.PREFERRED)
