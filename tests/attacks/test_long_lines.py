"""
Over-long lines everywhere: command lines around the RFC 5321 limit of 512
octets, AUTH lines around RFC 4954's 12288, DATA text lines around 1000,
and 10 MB lines without any CRLF in each state.  The gateway answers one
500 per over-long line, keeps its memory bounded, never runs the tail of
such a line as a command and never leaves DATA because of one.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from esa_tls.inbound.auth import hash_password
from tests.attacks.support import open_transaction, stored_content
from tests.support import Gateway, Raw, in_thread

TOO_LONG = b"500 5.5.2 Line too long\r\n"
TEXT_TOO_LONG = b"500 5.5.2 Line too long (RFC 5321 limit is 1000 octets)\r\n"
NOOP_OK = b"250 2.0.0 Ok\r\n"

#: Ten megabytes, sent as one line with no CRLF.
HUGE = 10 * 1024 * 1024

#: A listener that offers AUTH in the clear (so that AUTH lines can be
#: tried without TLS).
AUTH_LISTENER = """
[listeners.InboundMail]
type = "public"
interface = "Loopback"
port = 2525
rat = ["example.com"]

[listeners.InboundMail.policies.default]
smtp_auth = "allow"
smtp_auth_requires_tls = false
"""


def noop(length: int) -> bytes:
    """
    A NOOP command line of exactly C{length} octets, CRLF included.
    """
    return b"NOOP " + b"x" * (length - 7) + b"\r\n"


def _huge_line_then(port: int, tail: bytes) -> list[bytes]:
    """
    Send a 10 MB line, without CRLF, in many writes, then C{tail}; return
    every reply up to the one for a final NOOP.
    """
    raw = Raw(port, timeout=30)
    try:
        raw.reply()
        block = b"y" * (1024 * 1024)
        for _ in range(HUGE // len(block)):
            raw.send(block)
        raw.send(tail + b"NOOP\r\n")
        replies = []
        while True:
            reply = raw.reply()
            replies.append(reply)
            if reply in (NOOP_OK, b"") or reply.startswith(b"421"):
                return replies
    finally:
        raw.close()


class CommandLineTests(TestCase):
    @inlineCallbacks
    def test_aroundTheLimit(self) -> Any:
        """
        Command lines of 511 and 512 octets (CRLF included) are run; 513
        octets gets 500 5.5.2 and is not run.
        """
        gw = Gateway(self)

        def talk() -> list[bytes]:
            raw = Raw(gw.port)
            raw.reply()
            out = [raw.chat(noop(n)) for n in (511, 512, 513)]
            out.append(raw.chat(b"NOOP\r\n"))
            raw.close()
            return out

        replies = yield in_thread(talk)
        self.assertEqual(replies, [NOOP_OK, NOOP_OK, TOO_LONG, NOOP_OK])

    @inlineCallbacks
    def test_tenMegabyteLineAnsweredOnce(self) -> Any:
        """
        A 10 MB command line without CRLF gets exactly one 500, however many
        reads it takes; its tail, which ends in a command, is never run,
        and the next line is.
        """
        gw = Gateway(self)
        replies = yield in_thread(_huge_line_then, gw.port, b"QUIT\r\n")
        self.assertEqual(replies, [TOO_LONG, NOOP_OK])
        self.assertEqual(self.flushLoggedErrors(), [])

    @inlineCallbacks
    def test_crOfCRLFInNextRead(self) -> Any:
        """
        When the CR ending an over-long line is the last octet of one read
        and its LF the first of the next, the line ends there: the command
        after it is run, not swallowed as part of the long line.
        """
        gw = Gateway(self)

        def talk() -> list[bytes]:
            raw = Raw(gw.port)
            raw.reply()
            raw.send(b"NOOP " + b"x" * 600 + b"\r")
            first = raw.reply()
            second = raw.chat(b"\nNOOP\r\n")
            raw.close()
            return [first, second]

        replies = yield in_thread(talk)
        self.assertEqual(replies, [TOO_LONG, NOOP_OK])


class AuthLineTests(TestCase):
    def gateway(self) -> Gateway:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        users = os.path.join(directory, "users")
        with open(users, "w") as f:
            f.write(f"alice:{hash_password('s3cret')}\n")
        return Gateway(self, AUTH_LISTENER, users=users)

    @inlineCallbacks
    def test_authLineLimit(self) -> Any:
        """
        An AUTH command line may be 12288 octets (RFC 4954 4): at that size
        it is read and answered on its merits (here a bad credential, 535);
        one octet more gets 500 Line too long.  The same holds for a SASL
        response line after 334.
        """
        gw = self.gateway()

        def plain(length: int, prefix: bytes) -> bytes:
            # A syntactically valid PLAIN response padded to length octets.
            room = length - len(prefix) - 2
            secret = b"p" * ((room // 4) * 3 - len(b"\x00alice\x00"))
            encoded = base64.b64encode(b"\x00alice\x00" + secret)
            assert len(encoded) <= room
            return prefix + encoded + b" " * (room - len(encoded)) + b"\r\n"

        def talk() -> list[bytes]:
            raw = Raw(gw.port)
            raw.reply()
            out = [raw.chat(b"EHLO c\r\n")]
            at_limit = plain(12288, b"AUTH PLAIN ")
            over = plain(12289, b"AUTH PLAIN ")
            assert len(at_limit) == 12288 and len(over) == 12289
            out.append(raw.chat(at_limit))
            out.append(raw.chat(over))
            out.append(raw.chat(b"AUTH PLAIN\r\n"))
            out.append(raw.chat(plain(12288, b"")))
            out.append(raw.chat(b"AUTH PLAIN\r\n"))
            out.append(raw.chat(plain(12289, b"")))
            out.append(raw.chat(b"NOOP\r\n"))
            raw.close()
            return out

        replies = yield in_thread(talk)
        self.assertIn(b"AUTH PLAIN LOGIN", replies[0])
        self.assertEqual(replies[1], b"535 5.7.8 Authentication credentials invalid\r\n")
        self.assertEqual(replies[2], TOO_LONG)
        self.assertEqual(replies[3], b"334 \r\n")
        self.assertEqual(replies[4], b"535 5.7.8 Authentication credentials invalid\r\n")
        self.assertEqual(replies[5], b"334 \r\n")
        self.assertEqual(replies[6], TOO_LONG)
        # The over-long SASL response ended the exchange: NOOP is a command.
        self.assertEqual(replies[7], NOOP_OK)

    @inlineCallbacks
    def test_hugeSaslResponse(self) -> Any:
        """
        A 10 MB SASL response without CRLF gets one 500, ends the AUTH
        exchange, and the line after it is a command again (never a second
        SASL response).
        """
        gw = self.gateway()

        def talk() -> list[bytes]:
            raw = Raw(gw.port, timeout=30)
            raw.reply()
            raw.chat(b"EHLO c\r\n")
            out = [raw.chat(b"AUTH PLAIN\r\n")]
            block = b"A" * (1024 * 1024)
            for _ in range(HUGE // len(block)):
                raw.send(block)
            out.append(raw.reply())
            out.append(raw.chat(b"\r\n" + base64.b64encode(b"\x00alice\x00s3cret") + b"\r\n"))
            raw.close()
            return out

        replies = yield in_thread(talk)
        self.assertEqual(replies[0], b"334 \r\n")
        self.assertEqual(replies[1], TOO_LONG)
        # The credentials line is taken as a (bad) command, not as SASL.
        self.assertEqual(replies[2], b"500 5.5.1 command not recognized\r\n")


class DataLineTests(TestCase):
    @inlineCallbacks
    def test_textLineLengths(self) -> Any:
        """
        A DATA text line may hold 998 octets before its CRLF (1000 in all,
        RFC 5321 4.5.3.1.6): such a message is stored exactly.  Lines of
        999, 1000 and 1001 octets get 500 5.5.2 at the terminator, the
        message is not stored, and the session stays in DATA until the real
        terminator (what follows the long line is never a command).
        """
        gw = Gateway(self)

        def send(length: int) -> bytes:
            raw = open_transaction(gw.port)
            body = b"Subject: long\r\n\r\n" + b"z" * length + b"\r\nRSET\r\nQUIT\r\n"
            reply = raw.chat(body + b".\r\n")
            after = raw.chat(b"NOOP\r\n")
            raw.close()
            assert after == NOOP_OK, after
            return reply

        accepted = yield in_thread(send, 998)
        self.assertTrue(accepted.startswith(b"250 2.0.0 Ok: Message "), accepted)
        (queued,) = gw.queued()
        self.assertEqual(
            stored_content(gw, queued.mid),
            b"Subject: long\r\n\r\n" + b"z" * 998 + b"\r\nRSET\r\nQUIT\r\n",
        )
        for length in (999, 1000, 1001):
            refused = yield in_thread(send, length)
            self.assertEqual(refused, TEXT_TOO_LONG, length)
        self.assertEqual(len(gw.queued()), 1)

    @inlineCallbacks
    def test_tenMegabyteDataLine(self) -> Any:
        """
        A 10 MB DATA line without CRLF, whose tail holds a whole smuggled
        transaction, leaves the session in DATA: the terminator gets one
        500, nothing is stored, and the session takes commands again.
        """
        gw = Gateway(self)

        def talk() -> list[bytes]:
            raw = open_transaction(gw.port)
            block = b"w" * (1024 * 1024)
            for _ in range(HUGE // len(block)):
                raw.send(block)
            raw.send(
                b"MAIL FROM:<s@evil.test>\r\nRCPT TO:<v@example.com>\r\nDATA\r\nsmuggled\r\n.\r\n"
            )
            out = [raw.reply(), raw.chat(b"NOOP\r\n")]
            raw.close()
            return out

        replies = yield in_thread(talk)
        self.assertEqual(replies, [TEXT_TOO_LONG, NOOP_OK])
        self.assertEqual(gw.queued(), [])
