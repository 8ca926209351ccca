"""
SMTP smuggling (CVE-2023-51764/5/6 and the published scanners' variants):
every non-standard end-of-data form, NUL forms, dots at odd places, and
the terminator split across TCP segments at every offset.  One DATA never
gives two messages, a message with a bare CR, bare LF or NUL is never
accepted, and what is stored is exactly the client's lines, CRLF-ended and
dot-unstuffed.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.attacks.support import open_transaction, receive_all, split_replies, stored_content
from tests.support import Gateway, in_thread

BARE = b"550 5.6.11 Message contains bare CR or LF characters\r\n"
NUL = b"550 5.6.0 Message contains NUL characters\r\n"
NOOP_OK = b"250 2.0.0 Ok\r\n"
BYE = b"221 2.0.0 Bye\r\n"

#: What follows a fake end of data: a whole second transaction that would
#: be delivered to the victim if the fake terminator were taken.
SMUGGLED = (
    b"MAIL FROM:<ceo@example.com>\r\n"
    b"RCPT TO:<victim@example.com>\r\n"
    b"DATA\r\n"
    b"From: ceo@example.com\r\nSubject: smuggled\r\n\r\nwire the money\r\n"
)

#: (fake end-of-data, the reply the real one must get).  The SEC Consult
#: list, its NUL forms, and mixtures of them.
VARIANTS = [
    (b"\n.\n", BARE),
    (b"\n.\r\n", BARE),
    (b"\r\n.\n", BARE),
    (b"\r.\r\n", BARE),
    (b"\r\n.\r", BARE),
    (b"\r.\n", BARE),
    (b"\n.\r", BARE),
    (b"\r.\r", BARE),
    (b"\r\r\n.\r\r\n", BARE),
    (b"\r\n.\n\r\n", BARE),
    (b"\n\n.\n\n", BARE),
    (b"\r\n\x00.\r\n", NUL),
    (b"\r\n.\x00\r\n", NUL),
    (b"\x00\n.\n", BARE),
]

#: Content with dots in every awkward place, as the client means it (one
#: line per item) and as it goes on the wire (dot-stuffed).
TRICKY_LINES = [
    b".starts with a dot",
    b"..two dots",
    b".",
    b"..",
    b"ends with a dot.",
    b" .",
    b"mid.dle",
    b"",
    b"QUIT",
    b".\tdot tab",
]


def stuffed(lines: list[bytes]) -> bytes:
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


def _transaction_then(port: int, *segments: bytes) -> list[bytes]:
    """
    A transaction up to 354, then C{segments} as separate TCP segments
    (Nagle off, a pause between them), then NOOP and QUIT; every reply
    after the 354.
    """
    raw = open_transaction(port)
    try:
        raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index, segment in enumerate(segments):
            if index:
                time.sleep(0.005)
            raw.send(segment)
        raw.send(b"NOOP\r\nQUIT\r\n")
        return split_replies(receive_all(raw))
    finally:
        raw.close()


class EndOfDataTests(TestCase):
    @inlineCallbacks
    def test_publishedVariants(self) -> Any:
        """
        Each published fake end-of-data, followed by a whole smuggled
        transaction and the real terminator, gets one refusal at the real
        terminator; the smuggled commands never run and nothing is stored.
        """
        gw = Gateway(self)
        for fake, refusal in VARIANTS:
            body = b"Subject: legit\r\n\r\nhello" + fake + SMUGGLED + b".\r\n"
            replies = yield in_thread(_transaction_then, gw.port, body)
            self.assertEqual(replies, [refusal, NOOP_OK, BYE], fake)
        self.assertEqual(gw.queued(), [])
        self.assertFalse([line for line in gw.lines if "victim" in line])

    @inlineCallbacks
    def test_fakeTerminatorSplitEverywhere(self) -> Any:
        """
        A fake end-of-data cut into two TCP segments at every offset is
        still refused with one reply: the scanner's verdict does not depend
        on where a read ends.
        """
        gw = Gateway(self)
        for fake, refusal in [(b"\n.\n", BARE), (b"\r.\r\n", BARE), (b"\r\n\x00.\r\n", NUL)]:
            body = b"Subject: legit\r\n\r\nhello" + fake + SMUGGLED + b".\r\n"
            start = body.index(fake) - 1
            for cut in range(start, start + len(fake) + 2):
                replies = yield in_thread(_transaction_then, gw.port, body[:cut], body[cut:])
                self.assertEqual(replies, [refusal, NOOP_OK, BYE], (fake, cut))
        self.assertEqual(gw.queued(), [])


class ExactStorageTests(TestCase):
    @inlineCallbacks
    def test_dotsStoredUnstuffed(self) -> Any:
        """
        Lines with dots at their start, their end and alone are stored
        exactly as the client meant them: unstuffed, each ended by CRLF,
        and the message ends only at the real terminator.
        """
        gw = Gateway(self)
        wire = b"Subject: dots\r\n\r\n" + stuffed(TRICKY_LINES) + b".\r\n"
        replies = yield in_thread(_transaction_then, gw.port, wire)
        self.assertTrue(replies[0].startswith(b"250 2.0.0 Ok: Message "), replies)
        self.assertEqual(replies[1:], [NOOP_OK, BYE])
        (queued,) = gw.queued()
        self.assertEqual(
            stored_content(gw, queued.mid),
            b"Subject: dots\r\n\r\n" + b"".join(line + b"\r\n" for line in TRICKY_LINES),
        )

    @inlineCallbacks
    def test_terminatorSplitAtEveryOffset(self) -> Any:
        """
        The real terminator (and the stuffed dot before it) cut into two
        TCP segments at every offset gives one message, stored exactly,
        and the command after it is answered.
        """
        gw = Gateway(self)
        wire = b"Subject: s\r\n\r\nline\r\n..dotted\r\n.\r\n"
        expected = b"Subject: s\r\n\r\nline\r\n.dotted\r\n"
        first = wire.index(b"..dotted") - 2
        for cut in range(first, len(wire) + 1):
            replies = yield in_thread(_transaction_then, gw.port, wire[:cut], wire[cut:])
            self.assertTrue(replies[0].startswith(b"250 2.0.0 Ok: Message "), (cut, replies))
            self.assertEqual(replies[1:], [NOOP_OK, BYE], cut)
        queued = gw.queued()
        self.assertEqual(len(queued), len(wire) + 1 - first)
        for message in queued:
            self.assertEqual(stored_content(gw, message.mid), expected)

    @inlineCallbacks
    def test_emptyMessage(self) -> Any:
        """
        A terminator right after the 354 gives one empty message (only
        the gateway's C{Received:} header), not a parse of what follows.
        """
        gw = Gateway(self)
        replies = yield in_thread(_transaction_then, gw.port, b".\r\n")
        self.assertTrue(replies[0].startswith(b"250 2.0.0 Ok: Message "), replies)
        (queued,) = gw.queued()
        self.assertEqual(stored_content(gw, queued.mid), b"")
