"""
STARTTLS command injection (CVE-2011-0411 and the 2021 "Why TLS is better
without STARTTLS" splits) against Preferred and Required listeners: every
way of getting plaintext bytes executed, or answered, inside TLS.  After
the handshake the reply stream holds exactly one reply per command sent
inside TLS, and the session is as just after the greeting: HELO/EHLO
name, MAIL, RCPT and AUTH given in the clear are forgotten.
"""

from __future__ import annotations

import base64
import os
import re
import ssl
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from esa_tls.inbound.auth import hash_password
from tests.attacks.support import SegmentTLS, receive_all, split_replies, stored_content
from tests.support import Gateway, Raw, in_thread
from tests.test_inbound_tls import TLSGatewayMixin

READY = b"220 2.0.0 Ready to start TLS\r\n"
NOOP_OK = b"250 2.0.0 Ok\r\n"
BYE = b"221 2.0.0 Bye\r\n"
PLAIN_ALICE = base64.b64encode(b"\x00alice\x00s3cret")

#: Commands an attacker appends to the client's STARTTLS.  Each would show
#: in the reply stream, or end the session, if it were run.
INJECTIONS = [
    b"HELP\r\n",
    b"VRFY root\r\n",
    b"MAIL FROM:<attacker@evil.test>\r\n",
    b"RSET\r\n",
    b"QUIT\r\n",
    b"EHLO evil.test\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN " + PLAIN_ALICE + b"\r\n",
    b"HELP\r\nMAIL FROM:<attacker@evil.test>\r\nRCPT TO:<u@example.com>\r\nDATA\r\n",
]

_SMTP_REPLY = re.compile(rb"(?:^|\r\n)[2-5]\d\d[ -]")


def _after_tls(tls: SegmentTLS) -> list[bytes]:
    """
    The whole reply stream of a short session inside TLS: NOOP then QUIT.
    """
    tls.send(b"NOOP\r\nQUIT\r\n")
    return split_replies(tls.rest())


def _glued(port: int, payload: bytes) -> tuple[bytes, list[bytes]]:
    """
    EHLO, then C{STARTTLS} with C{payload} behind it in the same segment;
    the handshake, then NOOP and QUIT inside TLS.
    """
    raw = Raw(port)
    try:
        raw.reply()
        raw.chat(b"EHLO client.test\r\n")
        raw.send(b"STARTTLS\r\n" + payload)
        ready = raw.reply()
        tls = SegmentTLS(raw)
        tls.finish_handshake()
        return ready, _after_tls(tls)
    finally:
        raw.close()


def _hello_glued(port: int, injected: bytes) -> tuple[bytes, list[bytes]]:
    """
    C{STARTTLS}, C{injected} and the ClientHello in one segment (a client,
    or a man in the middle, that does not wait for the 220).  The server
    must drop all of it; sending the same ClientHello again after the 220
    then completes the handshake.
    """
    raw = Raw(port)
    try:
        raw.reply()
        raw.chat(b"EHLO client.test\r\n")
        tls = SegmentTLS(raw)
        hello = tls.client_hello()
        raw.send(b"STARTTLS\r\n" + injected + hello)
        ready = raw.reply()
        raw.send(hello)
        tls.finish_handshake()
        return ready, _after_tls(tls)
    finally:
        raw.close()


def _broken_handshake(port: int, before: bytes, after: bytes) -> tuple[bytes, bytes, bytes]:
    """
    After the 220, send plaintext C{before} the ClientHello and C{after} it,
    all in one segment, and take whatever comes back.

    @return: the 220, what came back inside TLS (if the client got that
        far: with TLS 1.3 its side of the handshake may complete before the
        server reads past the ClientHello), and the raw bytes after that.
    """
    raw = Raw(port)
    try:
        raw.reply()
        raw.chat(b"EHLO client.test\r\n")
        ready = raw.chat(b"STARTTLS\r\n")
        tls = SegmentTLS(raw)
        raw.send(before + tls.client_hello() + after)
        inside = b""
        try:
            tls.finish_handshake()
            tls.send(b"NOOP\r\n")
            inside = tls.rest()
        except (ssl.SSLError, EOFError, OSError):
            pass
        return ready, inside, receive_all(raw)
    finally:
        raw.close()


def _plaintext_after_ready(port: int, plaintext: bytes) -> tuple[bytes, bytes]:
    """
    After the 220, send plaintext commands instead of a ClientHello.
    """
    raw = Raw(port)
    try:
        raw.reply()
        raw.chat(b"EHLO client.test\r\n")
        ready = raw.chat(b"STARTTLS\r\n")
        raw.send(plaintext)
        return ready, receive_all(raw)
    finally:
        raw.close()


class InjectionTests(TLSGatewayMixin, TestCase):
    def check_clean(self, ready: bytes, after: list[bytes]) -> None:
        self.assertEqual(ready, READY)
        self.assertEqual(after, [NOOP_OK, BYE])

    @inlineCallbacks
    def test_sameSegment(self) -> Any:
        """
        Commands glued to STARTTLS in the same segment are discarded on
        Preferred and Required listeners alike: inside TLS the only replies
        are those to the commands sent inside TLS.
        """
        for mode in ("preferred", "required"):
            gw = self.gateway(mode)
            for payload in INJECTIONS:
                ready, after = yield in_thread(_glued, gw.port, payload)
                self.check_clean(ready, after)
            self.assertEqual(gw.queued(), [])

    @inlineCallbacks
    def test_clientHelloInSameSegment(self) -> Any:
        """
        STARTTLS, injected commands and the ClientHello in one segment: the
        gateway drops everything after the STARTTLS line, so no injected
        command runs, and the TLS layer starts from the next segment.
        """
        for mode in ("preferred", "required"):
            gw = self.gateway(mode)
            for injected in (b"", b"HELP\r\n", b"MAIL FROM:<attacker@evil.test>\r\n"):
                ready, after = yield in_thread(_hello_glued, gw.port, injected)
                self.check_clean(ready, after)

    @inlineCallbacks
    def test_plaintextAroundClientHello(self) -> Any:
        """
        Plaintext glued before or after the ClientHello (in the segment
        that follows the 220) is never taken as SMTP: the handshake fails,
        nothing is answered, the failure is logged and the connection ends.
        """
        for mode in ("preferred", "required"):
            gw = self.gateway(mode)
            for before, after in ((b"HELP\r\n", b""), (b"", b"HELP\r\nNOOP\r\n")):
                ready, inside, rest = yield in_thread(_broken_handshake, gw.port, before, after)
                self.assertEqual(ready, READY)
                self.assertEqual(inside, b"", (mode, before, after))
                self.assertIsNone(_SMTP_REPLY.search(rest), rest)
            failed = [line for line in gw.lines if " TLS failed: " in line]
            self.assertEqual(len(failed), 2, gw.lines)

    @inlineCallbacks
    def test_plaintextInNextSegment(self) -> Any:
        """
        Plaintext commands sent after the 220, in their own segment, go to
        the TLS layer, not to SMTP: no reply, no command run, the
        connection ends and no message exists.
        """
        for mode in ("preferred", "required"):
            gw = self.gateway(mode)
            ready, rest = yield in_thread(
                _plaintext_after_ready,
                gw.port,
                b"MAIL FROM:<a@client.test>\r\nRCPT TO:<u@example.com>\r\nDATA\r\n"
                b"Subject: clear\r\n\r\nx\r\n.\r\nQUIT\r\n",
            )
            self.assertEqual(ready, READY)
            self.assertIsNone(_SMTP_REPLY.search(rest), rest)
            self.assertEqual(gw.queued(), [])
            self.assertFalse([line for line in gw.lines if "MID" in line], gw.lines)

    @inlineCallbacks
    def test_starttlsInsideTLSRecord(self) -> Any:
        """
        Inside TLS a second STARTTLS is refused (503) and, not being a real
        STARTTLS, neither discards nor resets anything: the commands after
        it in the same TLS record are answered in order and the transaction
        given before it goes on.
        """
        gw = self.gateway("required")

        def talk() -> list[bytes]:
            raw = Raw(gw.port)
            try:
                raw.reply()
                raw.chat(b"EHLO client.test\r\n")
                raw.chat(b"STARTTLS\r\n")
                tls = SegmentTLS(raw)
                tls.finish_handshake()
                tls.chat(b"EHLO client.test\r\n")
                tls.send(
                    b"MAIL FROM:<a@client.test>\r\nSTARTTLS\r\nRCPT TO:<u@example.com>\r\n"
                    b"NOOP\r\nQUIT\r\n"
                )
                return split_replies(tls.rest())
            finally:
                raw.close()

        replies = yield in_thread(talk)
        self.assertEqual(
            replies,
            [
                b"250 2.1.0 Ok\r\n",
                b"503 5.5.1 TLS already active\r\n",
                b"250 2.1.5 Ok\r\n",
                NOOP_OK,
                BYE,
            ],
        )


class ResetTests(TLSGatewayMixin, TestCase):
    def auth_gateway(self) -> Gateway:
        """
        Preferred TLS, AUTH allowed in the clear (the weakest setting, so
        that AUTH state exists before STARTTLS).
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        users = os.path.join(directory, "users")
        with open(users, "w") as f:
            f.write(f"alice:{hash_password('s3cret')}\n")
        extra = 'smtp_auth = "allow"\nsmtp_auth_requires_tls = false'
        gateway: Gateway = self.gateway("preferred", extra, users=users)
        return gateway

    @inlineCallbacks
    def test_pipelinedTransactionBeforeSTARTTLS(self) -> Any:
        """
        MAIL and RCPT pipelined with STARTTLS in one segment are answered in
        the clear and then forgotten: inside TLS, RCPT and DATA get 503 and
        EHLO is needed again.  On Required they are refused (530) before TLS.
        """
        expected_clear = {
            "preferred": [b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n", READY],
            "required": [
                b"530 5.7.0 Must issue a STARTTLS command first\r\n",
                b"530 5.7.0 Must issue a STARTTLS command first\r\n",
                READY,
            ],
        }
        for mode, clear_replies in expected_clear.items():
            gw = self.gateway(mode)

            def talk(port: int) -> tuple[list[bytes], list[bytes]]:
                raw = Raw(port)
                try:
                    raw.reply()
                    raw.chat(b"EHLO pre.client.test\r\n")
                    raw.send(
                        b"MAIL FROM:<a@client.test>\r\nRCPT TO:<u@example.com>\r\nSTARTTLS\r\n"
                    )
                    clear = [raw.reply() for _ in range(3)]
                    tls = SegmentTLS(raw)
                    tls.finish_handshake()
                    inside = [
                        tls.chat(b"MAIL FROM:<b@client.test>\r\n"),
                        tls.chat(b"EHLO post.client.test\r\n"),
                        tls.chat(b"RCPT TO:<u@example.com>\r\n"),
                        tls.chat(b"DATA\r\n"),
                    ]
                    return clear, inside
                finally:
                    raw.close()

            clear, inside = yield in_thread(talk, gw.port)
            self.assertEqual(clear, clear_replies, mode)
            self.assertEqual(inside[0], b"503 5.5.1 Error: send HELO/EHLO first\r\n")
            self.assertTrue(inside[1].startswith(b"250-"), inside[1])
            self.assertEqual(inside[2], b"503 5.5.1 Error: need MAIL command\r\n")
            self.assertEqual(inside[3], b"503 5.5.1 Error: need MAIL command\r\n")

    @inlineCallbacks
    def test_heloNameForgotten(self) -> Any:
        """
        The HELO/EHLO name given in the clear does not survive STARTTLS: the
        stored message's C{Received:} header names the one given inside TLS.
        """
        gw = self.gateway("preferred")

        def talk() -> bytes:
            raw = Raw(gw.port)
            try:
                raw.reply()
                raw.chat(b"EHLO forged.before.tls\r\n")
                raw.chat(b"STARTTLS\r\n")
                tls = SegmentTLS(raw)
                tls.finish_handshake()
                for command in (
                    b"EHLO real.after.tls\r\n",
                    b"MAIL FROM:<a@client.test>\r\n",
                    b"RCPT TO:<u@example.com>\r\n",
                    b"DATA\r\n",
                ):
                    tls.chat(command)
                return tls.chat(b"Subject: t\r\n\r\nx\r\n.\r\n")
            finally:
                raw.close()

        reply = yield in_thread(talk)
        self.assertTrue(reply.startswith(b"250 2.0.0 Ok: Message "), reply)
        (queued,) = gw.queued()
        self.assertEqual(queued.envelope.helo, "real.after.tls")
        body = gw.body(queued.mid)
        self.assertIn(b"Received: from real.after.tls ", body)
        self.assertNotIn(b"forged.before.tls", body)
        self.assertEqual(stored_content(gw, queued.mid), b"Subject: t\r\n\r\nx\r\n")

    @inlineCallbacks
    def test_authForgotten(self) -> Any:
        """
        A user authenticated in the clear is no longer authenticated after
        STARTTLS (RFC 3207 4.2): inside TLS, relaying to a foreign domain is
        refused, whether AUTH came in its own segment or pipelined with
        STARTTLS; and AUTH glued behind STARTTLS is discarded unanswered.
        """
        gw = self.auth_gateway()
        auth = b"AUTH PLAIN " + PLAIN_ALICE + b"\r\n"

        def talk(before: bytes, glued: bytes, answered: int) -> tuple[list[bytes], list[bytes]]:
            raw = Raw(gw.port)
            try:
                raw.reply()
                raw.chat(b"EHLO client.test\r\n")
                clear = [raw.chat(before)] if before else []
                raw.send(glued)
                clear += [raw.reply() for _ in range(answered)]
                tls = SegmentTLS(raw)
                tls.finish_handshake()
                inside = [
                    tls.chat(b"EHLO client.test\r\n"),
                    tls.chat(b"MAIL FROM:<alice@client.test>\r\n"),
                    tls.chat(b"RCPT TO:<friend@elsewhere.test>\r\n"),
                ]
                return clear, inside
            finally:
                raw.close()

        authenticated = b"235 2.7.0 Authentication successful\r\n"
        for before, glued, clear_replies in (
            (auth, b"STARTTLS\r\n", [authenticated, READY]),
            (b"", auth + b"STARTTLS\r\n", [authenticated, READY]),
            (b"", b"STARTTLS\r\n" + auth, [READY]),
        ):
            answered = len(clear_replies) - (1 if before else 0)
            clear, inside = yield in_thread(talk, before, glued, answered)
            self.assertEqual(clear, clear_replies)
            self.assertEqual(inside[1], b"250 2.1.0 Ok\r\n")
            self.assertEqual(
                inside[2], b"550 5.7.1 <friend@elsewhere.test>: Relaying denied\r\n", glued
            )
