"""
The inbound hot path's shortcuts (issue 7) change nothing a client sees:
paths with and without quoted strings parse as before, replies of one and
of several lines are framed as before, and the C{Received:} header's date
is the message's second.
"""

from __future__ import annotations

import ssl
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

import attrs
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from esa_tls.inbound.address import AddressError, Mailbox, parse_mail_from, parse_rcpt_to
from tests.support import PUBLIC, Gateway, Raw, in_thread
from tests.test_inbound_session import conversation


class PathTests(SynchronousTestCase):
    def test_closingBracket(self) -> None:
        """
        The path ends at the first C{>} outside a quoted string, with or
        without quoted strings in it; a path without its C{>} is refused.
        """
        self.assertEqual(parse_mail_from("FROM:<a@x.test> SIZE=10").params, (("SIZE", "10"),))
        self.assertEqual(parse_mail_from('FROM:<"a>b"@x.test>').mailbox, Mailbox('"a>b"', "x.test"))
        self.assertEqual(
            parse_rcpt_to('TO:<"a\\">"@x.test>', "d").mailbox, Mailbox('"a\\">"', "x.test")
        )
        for bad in ("FROM:<a@x.test", 'FROM:<"a>@x.test'):
            with self.assertRaises(AddressError) as caught:
                parse_mail_from(bad)
            self.assertEqual(caught.exception.text, "5.1.7 Bad address syntax: missing '>'")


class ReplyTests(TestCase):
    @inlineCallbacks
    def test_replies(self) -> Any:
        """
        One-line replies are C{code SP text CRLF}; the EHLO reply is
        C{code-text} lines ending with one C{code SP text}; the banner and
        EHLO name the host; the stored message's C{Received:} header ends
        with the date of its second.
        """
        gw = Gateway(self)
        replies = yield in_thread(
            conversation,
            gw.port,
            b"EHLO c\r\n",
            b"NOOP\r\n",
            b"MAIL FROM:<a@client.test>\r\n",
            b"RCPT TO:<u@example.com>\r\n",
            b"DATA\r\n",
            b"Subject: x\r\n\r\nbody\r\n.\r\n",
            b"QUIT\r\n",
        )
        banner, ehlo, noop = replies[:3]
        self.assertTrue(banner.startswith(b"220 mx.test.example "), banner)
        lines = ehlo.split(b"\r\n")[:-1]
        self.assertEqual(lines[0], b"250-mx.test.example")
        self.assertTrue(all(line.startswith(b"250-") for line in lines[:-1]), lines)
        self.assertTrue(lines[-1].startswith(b"250 "), lines)
        self.assertEqual(noop, b"250 2.0.0 Ok\r\n")
        self.assertTrue(replies[-1].startswith(b"221 "), replies)
        (queued,) = gw.queued()
        head = gw.body(queued.mid).split(b"\r\n\r\n", 1)[0].decode()
        received = head.split("Subject:")[0]
        stamp = received.rsplit("; ", 1)[1].strip()
        when = int(queued.envelope.received_at)
        self.assertEqual(stamp, formatdate(when))
        self.assertEqual(int(parsedate_to_datetime(stamp).timestamp()), when)


class TLSCreatorTests(TestCase):
    @inlineCallbacks
    def test_reloadedListenerSettings(self) -> Any:
        """
        The listener remembers its STARTTLS creator for its configuration:
        a TLS 1.2 client gets through twice; once the configuration is
        replaced by one allowing TLS 1.3 only (a reload), the same client's
        handshake fails, and a TLS 1.3 client gets through.
        """
        gw = Gateway(self, PUBLIC + '[listeners.InboundMail.policies.default]\ntls = "preferred"\n')

        def handshake(maximum: ssl.TLSVersion) -> str:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.maximum_version = maximum
            client = Raw(gw.port)
            try:
                client.reply()
                client.chat(b"EHLO c\r\n")
                reply = client.chat(b"STARTTLS\r\n")
                assert reply.startswith(b"220 "), reply
                try:
                    client.starttls(context)
                except (ssl.SSLError, OSError) as e:
                    return f"failed: {type(e).__name__}"
                version: str = client.sock.version()  # type: ignore[attr-defined]
                return version
            finally:
                client.close()

        for _ in range(2):
            self.assertEqual((yield in_thread(handshake, ssl.TLSVersion.TLSv1_2)), "TLSv1.2")
        gw.factory.config = attrs.evolve(gw.listener, tls_protocols=("TLSv1.3",))
        refused = yield in_thread(handshake, ssl.TLSVersion.TLSv1_2)
        self.assertTrue(refused.startswith("failed: "), refused)
        self.assertEqual((yield in_thread(handshake, ssl.TLSVersion.TLSv1_3)), "TLSv1.3")
