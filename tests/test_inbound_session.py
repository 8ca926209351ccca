"""
The inbound session over real loopback TCP: access rules, relay refusal,
policy limits, the durable 250, and the protocol-safety rules of issue 2.
"""

from __future__ import annotations

import smtplib
import subprocess
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from esa_tls.interfaces import IListener, StoreError
from esa_tls.spool.store import DurableSpool
from tests.support import PUBLIC, Gateway, Raw, in_thread, require, smtp_send

MESSAGE = b"From: a@client.test\r\nSubject: hello\r\n\r\nbody line\r\n.leading dot\r\n"


def conversation(port: int, *commands: bytes) -> list[bytes]:
    """
    Greeting, then one reply per command, each command sent alone.
    """
    raw = Raw(port)
    try:
        replies = [raw.reply()]
        for command in commands:
            replies.append(raw.chat(command))
        return replies
    finally:
        raw.close()


class AcceptTests(TestCase):
    @inlineCallbacks
    def test_acceptedMessageIsDurableAndNamed(self) -> Any:
        """
        A message for a RAT domain gets 250 naming its MID, and that MID is
        in the spool with the envelope and the exact bytes behind a
        C{Received:} header.
        """
        gw = Gateway(self)
        replies = yield in_thread(
            conversation,
            gw.port,
            b"EHLO client.test\r\n",
            b"MAIL FROM:<a@client.test>\r\n",
            b"RCPT TO:<bob@example.com>\r\n",
            b"DATA\r\n",
            MESSAGE.replace(b"\r\n.", b"\r\n..") + b".\r\n",
            b"QUIT\r\n",
        )
        self.assertTrue(replies[0].startswith(b"220 mx.test.example ESMTP"))
        self.assertIn(b"250-SIZE 104857600\r\n", replies[1])
        self.assertIn(b"PIPELINING", replies[1])
        self.assertTrue(replies[5].startswith(b"250 2.0.0 Ok: Message "), replies[5])
        mid = int(replies[5].split()[4])
        (queued,) = gw.queued()
        self.assertEqual(queued.mid, mid)
        self.assertEqual(queued.envelope.mail_from, "a@client.test")
        self.assertEqual(queued.envelope.rcpt_to, ("bob@example.com",))
        self.assertEqual(queued.envelope.listener, "InboundMail")
        body = gw.body(mid)
        self.assertTrue(body.startswith(b"Received: from client.test (unknown [127.0.0.1])\r\n"))
        self.assertIn(b"\tid MID %d ICID " % mid, body)
        self.assertTrue(body.endswith(b"\r\n\r\n" + MESSAGE.split(b"\r\n\r\n", 1)[1]))
        self.assertIn(f"Start MID {mid} ICID 1", gw.lines)
        self.assertIn(f"MID {mid} ICID 1 RID 0 To: <bob@example.com>", gw.lines)
        self.assertIn("ICID 1 ACCEPT SG ALL match ALL SBRS None", gw.lines)

    @inlineCallbacks
    def test_smtplib(self) -> Any:
        """
        Python's smtplib delivers to the listener; the body round-trips.
        """
        gw = Gateway(self)
        refused = yield in_thread(smtp_send, gw.port, "a@client.test", ["x@example.com"], MESSAGE)
        self.assertEqual(refused, {})
        (queued,) = gw.queued()
        self.assertTrue(gw.body(queued.mid).endswith(b"body line\r\n.leading dot\r\n"))

    @inlineCallbacks
    def test_swaks(self) -> Any:
        """
        swaks, a real SMTP client, delivers to the listener.
        """
        swaks = require("swaks")
        gw = Gateway(self)
        result = yield in_thread(
            subprocess.run,
            [
                swaks,
                "--server",
                "127.0.0.1",
                "--port",
                str(gw.port),
                "--from",
                "a@client.test",
                "--to",
                "someone@example.com",
                "--helo",
                "client.test",
                "--body",
                "hello from swaks",
            ],
            capture_output=True,
            timeout=30,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn(b"<-  250 2.0.0 Ok: Message", result.stdout)
        (queued,) = gw.queued()
        self.assertIn(b"hello from swaks", gw.body(queued.mid))

    def test_verifyObject(self) -> None:
        """
        The listener factory provides L{IListener}, with the summary.
        """
        gw = Gateway(self)
        self.assertTrue(verifyObject(IListener, gw.factory))
        self.assertTrue(gw.factory.summary().startswith("Name: InboundMail\nType: Public\n"))


class RelayTests(TestCase):
    @inlineCallbacks
    def test_ratRefusesOtherDomains(self) -> Any:
        """
        A public listener with an ACCEPT policy takes only RAT recipients:
        the domain, subdomains of a C{.domain} entry and listed addresses.
        """
        gw = Gateway(self)
        replies = yield in_thread(
            conversation,
            gw.port,
            b"EHLO c\r\n",
            b"MAIL FROM:<a@client.test>\r\n",
            b"RCPT TO:<u@example.com>\r\n",
            b"RCPT TO:<u@EXAMPLE.COM>\r\n",
            b"RCPT TO:<u@a.sub.example.net>\r\n",
            b"RCPT TO:<u@sub.example.net>\r\n",
            b"RCPT TO:<only@example.org>\r\n",
            b"RCPT TO:<other@example.org>\r\n",
            b"RCPT TO:<u@evil.example>\r\n",
            b"RCPT TO:<u@example.com.evil.example>\r\n",
        )
        codes = [r[:3] for r in replies[3:]]
        self.assertEqual(codes, [b"250", b"250", b"250", b"550", b"250", b"550", b"550", b"550"])
        self.assertIn(b"5.7.1 <u@evil.example>: Relaying denied", replies[9])

    @inlineCallbacks
    def test_ratLocalPartEntry(self) -> Any:
        """
        A C{user@} RAT entry (C{postmaster@}, docs/CLI.md) takes that local
        part at every domain the RAT names (a domain, the subdomains of a
        C{.domain}, the domain of a C{user@domain}), and so relays nowhere
        the rest of the RAT does not already receive for.
        """
        rat = '["example.com", ".sub.example.net", "only@example.org", "postmaster@"]'
        gw = Gateway(
            self, PUBLIC.replace('["example.com", ".sub.example.net", "only@example.org"]', rat)
        )
        replies = yield in_thread(
            conversation,
            gw.port,
            b"EHLO c\r\n",
            b"MAIL FROM:<a@client.test>\r\n",
            b"RCPT TO:<postmaster@example.org>\r\n",
            b"RCPT TO:<PostMaster@a.sub.example.net>\r\n",
            b"RCPT TO:<other@example.org>\r\n",
            b"RCPT TO:<postmaster@sub.example.net>\r\n",
            b"RCPT TO:<postmaster@evil.example>\r\n",
            b"RCPT TO:<postmaster@example.org.evil.example>\r\n",
        )
        codes = [r[:3] for r in replies[3:]]
        self.assertEqual(codes, [b"250", b"250", b"550", b"550", b"550", b"550"])
        self.assertIn(b"5.7.1 <postmaster@evil.example>: Relaying denied", replies[7])

    @inlineCallbacks
    def test_routedAddressesRefused(self) -> Any:
        """
        The relay tricks (C{%} hack, C{!} path, quoted C{@}, source route)
        are refused even with a RAT domain at the end.
        """
        gw = Gateway(self)
        replies = yield in_thread(
            conversation,
            gw.port,
            b"EHLO c\r\n",
            b"MAIL FROM:<a@client.test>\r\n",
            b"RCPT TO:<u%evil.example@example.com>\r\n",
            b"RCPT TO:<evil.example!u@example.com>\r\n",
            b'RCPT TO:<"u@evil.example"@example.com>\r\n',
            b"RCPT TO:<@example.com:u@evil.example>\r\n",
            b"RCPT TO:<@evil.example:u@example.com>\r\n",
            b"RCPT TO:<u@evil.example@example.com>\r\n",
        )
        for reply in replies[3:]:
            self.assertTrue(reply.startswith((b"550 5.7.1", b"501 5.1.7")), reply)

    @inlineCallbacks
    def test_relayPolicyRelays(self) -> Any:
        """
        A private listener's RELAYLIST (RELAY) takes any domain; its ALL
        group (BLOCKED) rejects everyone else at the banner.
        """
        gw = Gateway(
            self,
            """
[listeners.Outbound]
type = "private"
interface = "Loopback"
port = 2526

[[listeners.Outbound.hat]]
group = "RELAYLIST"
policy = "RELAYED"
senders = ["127.0.0.1"]
""",
        )
        replies = yield in_thread(
            conversation,
            gw.port,
            b"EHLO c\r\n",
            b"MAIL FROM:<a@inside.test>\r\n",
            b"RCPT TO:<u@anywhere.example>\r\n",
        )
        self.assertEqual(replies[3][:3], b"250")
        self.assertIn("ICID 1 RELAY SG RELAYLIST match 127.0.0.1 SBRS None", gw.lines)

    @inlineCallbacks
    def test_relayedIgnoresDefaultRecipientRate(self) -> Any:
        """
        The predefined RELAYED policy has no recipients-per-hour limit
        (UG 7.5 Table 5-13: "-1 (Disabled)", not "Default"): a rate limit
        set in the Default Policy Parameters does not throttle the hosts
        the listener relays for.
        """
        gw = Gateway(
            self,
            """
[listeners.Outbound]
type = "private"
interface = "Loopback"
port = 2526

[listeners.Outbound.policies.default]
max_rcpts_per_hour = 2

[[listeners.Outbound.hat]]
group = "RELAYLIST"
policy = "RELAYED"
senders = ["127.0.0.1"]
""",
        )
        replies = yield in_thread(
            conversation,
            gw.port,
            b"EHLO c\r\n",
            b"MAIL FROM:<a@inside.test>\r\n",
            *(b"RCPT TO:<u%d@anywhere.example>\r\n" % n for n in range(4)),
        )
        self.assertEqual([r[:3] for r in replies[3:]], [b"250"] * 4)

    @inlineCallbacks
    def test_rejectAtBanner(self) -> Any:
        """
        A REJECT policy answers with the reject banner and closes: no mail
        can follow.
        """
        gw = Gateway(
            self,
            PUBLIC
            + """
[[listeners.InboundMail.hat]]
group = "BLOCKED_LIST"
policy = "BLOCKED"
senders = ["127.0.0.0/8"]
""",
        )

        def talk() -> tuple[bytes, bytes]:
            raw = Raw(gw.port)
            return raw.reply(), raw.rest()

        banner, rest = yield in_thread(talk)
        self.assertEqual(banner, b"554 5.7.1 Access denied\r\n")
        self.assertEqual(rest, b"")

    @inlineCallbacks
    def test_rejectCodeClassInText(self) -> Any:
        """
        A reject banner code set alone (421, "try later") does not go out
        with the default text's permanent enhanced code: the class of the
        enhanced status code follows the reply code (RFC 3463 section 3),
        or a client that trusts the enhanced code would bounce the mail.
        """
        gw = Gateway(
            self,
            PUBLIC
            + """
[listeners.InboundMail.policies.BLOCKED]
rule = "REJECT"
reject_banner_code = 421

[[listeners.InboundMail.hat]]
group = "BLOCKED_LIST"
policy = "BLOCKED"
senders = ["127.0.0.0/8"]
""",
        )

        def talk() -> bytes:
            raw = Raw(gw.port)
            return raw.reply()

        banner = yield in_thread(talk)
        self.assertEqual(banner, b"421 4.7.1 Access denied\r\n")

    @inlineCallbacks
    def test_rejectAtRcpt(self) -> Any:
        """
        With C{reject_at_rcpt}, a REJECT policy answers at RCPT TO, so the
        sender and recipient are logged.
        """
        gw = Gateway(
            self,
            PUBLIC
            + """
[[listeners.InboundMail.hat]]
group = "BLOCKED_LIST"
policy = "BLOCKED"
senders = ["127.0.0.1"]
""",
            extra_base="[listener_settings]\nreject_at_rcpt = true\n",
        )
        replies = yield in_thread(
            conversation,
            gw.port,
            b"EHLO c\r\n",
            b"MAIL FROM:<a@b.test>\r\n",
            b"RCPT TO:<u@example.com>\r\n",
        )
        self.assertTrue(replies[0].startswith(b"220 "))
        self.assertEqual(replies[3], b"554 5.7.1 Access denied\r\n")

    @inlineCallbacks
    def test_unmatchedRejectedWhateverBlockedSays(self) -> Any:
        """
        A host no sender group matches (a HAT without ALL) is rejected,
        even when the administrator has switched the BLOCKED policy to
        ACCEPT to let the blocked list through for a while: the fallback
        is closed, not whatever BLOCKED happens to do now.
        """
        gw = Gateway(
            self,
            PUBLIC
            + """
[listeners.InboundMail.policies.BLOCKED]
rule = "ACCEPT"

[[listeners.InboundMail.hat]]
group = "BLOCKED_LIST"
policy = "BLOCKED"
senders = ["192.0.2.1"]
""",
        )

        def talk() -> tuple[bytes, bytes]:
            raw = Raw(gw.port)
            return raw.reply(), raw.rest()

        banner, rest = yield in_thread(talk)
        self.assertEqual(banner, b"554 5.7.1 Access denied\r\n")
        self.assertEqual(rest, b"")

    @inlineCallbacks
    def test_tcpRefuse(self) -> Any:
        """
        TCPREFUSE closes the connection before any byte is sent.
        """
        gw = Gateway(
            self,
            PUBLIC
            + """
[listeners.InboundMail.policies.DROP]
rule = "TCPREFUSE"

[[listeners.InboundMail.hat]]
group = "DROPPED"
policy = "DROP"
senders = ["127.0.0.1"]
""",
        )

        def talk() -> bytes:
            raw = Raw(gw.port)
            return raw.rest()

        data = yield in_thread(talk)
        self.assertEqual(data, b"")
        self.assertIn("ICID 1 TCPREFUSE SG DROPPED match 127.0.0.1 SBRS None", gw.lines)


LIMITED = (
    PUBLIC
    + """
[listeners.InboundMail.policies.LIMITED]
rule = "ACCEPT"
max_msgs_per_session = 2
max_rcpts_per_msg = 2
max_message_size = 2000
max_concurrency = 1
max_rcpts_per_hour = 3
max_rcpts_per_hour_code = 452
max_rcpts_per_hour_text = "4.7.1 Slow down please"

[[listeners.InboundMail.hat]]
group = "LIMITED_HOSTS"
policy = "LIMITED"
senders = ["127.0.0.1"]
"""
)


class LimitTests(TestCase):
    @inlineCallbacks
    def test_sizeAdvertisedAndEnforced(self) -> Any:
        """
        SIZE is advertised with the policy's limit; a declared SIZE above it
        gets 552 at MAIL, and an oversize body gets 552 5.3.4 at the end of
        DATA with nothing stored.
        """
        gw = Gateway(self, LIMITED)
        big = b"Subject: x\r\n\r\n" + (b"y" * 70 + b"\r\n") * 40
        replies = yield in_thread(
            conversation,
            gw.port,
            b"EHLO c\r\n",
            b"MAIL FROM:<a@b.test> SIZE=5000\r\n",
            b"MAIL FROM:<a@b.test> SIZE=100\r\n",
            b"RCPT TO:<u@example.com>\r\n",
            b"DATA\r\n",
            big + b".\r\n",
        )
        self.assertIn(b"250-SIZE 2000\r\n", replies[1])
        self.assertEqual(
            replies[2], b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
        )
        self.assertEqual(
            replies[6], b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
        )
        self.assertEqual(gw.queued(), [])

    @inlineCallbacks
    def test_recipientsPerHourCodeClassInText(self) -> Any:
        """
        A recipients-per-hour code set to a permanent one keeps the default
        text's wording but not its transient enhanced code.
        """
        gw = Gateway(
            self,
            PUBLIC
            + """
[listeners.InboundMail.policies.LIMITED]
rule = "ACCEPT"
max_rcpts_per_hour = 1
max_rcpts_per_hour_code = 550

[[listeners.InboundMail.hat]]
group = "LIMITED_HOSTS"
policy = "LIMITED"
senders = ["127.0.0.1"]
""",
        )
        replies = yield in_thread(
            conversation,
            gw.port,
            b"EHLO c\r\n",
            b"MAIL FROM:<a@b.test>\r\n",
            b"RCPT TO:<u1@example.com>\r\n",
            b"RCPT TO:<u2@example.com>\r\n",
        )
        self.assertEqual(replies[4], b"550 5.5.3 Too many recipients received this hour\r\n")

    @inlineCallbacks
    def test_recipientsPerMessage(self) -> Any:
        """
        Recipients past C{max_rcpts_per_msg} get 452 4.5.3; the ones before
        are kept.
        """
        gw = Gateway(self, LIMITED)
        replies = yield in_thread(
            conversation,
            gw.port,
            b"EHLO c\r\n",
            b"MAIL FROM:<a@b.test>\r\n",
            b"RCPT TO:<u1@example.com>\r\n",
            b"RCPT TO:<u2@example.com>\r\n",
            b"RCPT TO:<u3@example.com>\r\n",
            b"DATA\r\n",
            b"Subject: x\r\n\r\nx\r\n.\r\n",
        )
        self.assertEqual(replies[5], b"452 4.5.3 Too many recipients\r\n")
        self.assertTrue(replies[7].startswith(b"250 "))
        (queued,) = gw.queued()
        self.assertEqual(queued.envelope.rcpt_to, ("u1@example.com", "u2@example.com"))

    @inlineCallbacks
    def test_recipientsFitTheSpoolHeader(self) -> Any:
        """
        However many recipients a policy allows, a message takes no more
        than its spool header can hold and be read back: past that, RCPT
        gets 452 4.5.3, and the 250 for the message is for a file the
        queue reads with every recipient accepted.
        """
        gw = Gateway(
            self,
            PUBLIC
            + """
[listeners.InboundMail.policies.MANY]
rule = "RELAY"
max_rcpts_per_msg = 1000000
max_rcpts_per_hour = -1

[[listeners.InboundMail.hat]]
group = "MANY_HOSTS"
policy = "MANY"
senders = ["127.0.0.1"]
""",
        )
        # Paths near RFC 5321's 256 octets: about 8,300 fit in the budget;
        # 18,000 of them would make a header over MAX_HEADER_LENGTH.
        domain = ".".join(["d" * 60] * 3) + ".test"

        def send() -> tuple[list[bytes], bytes]:
            raw = Raw(gw.port, timeout=60)
            try:
                raw.reply()
                raw.chat(b"EHLO c\r\n")
                raw.chat(b"MAIL FROM:<a@b.test>\r\n")
                replies: list[bytes] = []
                for start in range(0, 18000, 300):
                    raw.send(
                        b"".join(
                            b"RCPT TO:<%s%05d@%s>\r\n" % (b"u" * 57, n, domain.encode())
                            for n in range(start, start + 300)
                        )
                    )
                    replies += [raw.reply() for _ in range(300)]
                return replies, raw.chat(b"DATA\r\n") + raw.chat(MESSAGE + b".\r\n")
            finally:
                raw.close()

        replies, data = yield in_thread(send)
        accepted = replies.count(b"250 2.1.5 Ok\r\n")
        self.assertTrue(7000 < accepted < 9000, accepted)
        self.assertEqual(len(replies), 18000)
        self.assertEqual(set(replies[accepted:]), {b"452 4.5.3 Too many recipients\r\n"})
        self.assertTrue(data.startswith(b"354 ") and b"\r\n250 " in data, data)
        # Read back as after a restart, from the file alone.
        (queued,) = DurableSpool(gw.spool.directory, reactor).queued()
        self.assertEqual(len(queued.envelope.rcpt_to), accepted)

    @inlineCallbacks
    def test_recipientsPerHour(self) -> Any:
        """
        The hourly recipient limit per IP is counted across sessions and
        answered with the policy's own code and text.
        """
        gw = Gateway(self, LIMITED)
        first = yield in_thread(
            conversation,
            gw.port,
            b"EHLO c\r\n",
            b"MAIL FROM:<a@b.test>\r\n",
            b"RCPT TO:<u1@example.com>\r\n",
            b"RCPT TO:<u2@example.com>\r\n",
            b"QUIT\r\n",
        )
        self.assertEqual([r[:3] for r in first[3:5]], [b"250", b"250"])
        second = yield in_thread(
            conversation,
            gw.port,
            b"EHLO c\r\n",
            b"MAIL FROM:<a@b.test>\r\n",
            b"RCPT TO:<u3@example.com>\r\n",
            b"RCPT TO:<u4@example.com>\r\n",
        )
        self.assertEqual(second[3][:3], b"250")
        self.assertEqual(second[4], b"452 4.7.1 Slow down please\r\n")

    @inlineCallbacks
    def test_messagesPerSession(self) -> Any:
        """
        After C{max_msgs_per_session} messages, MAIL gets 421 and the
        connection closes.
        """
        gw = Gateway(self, LIMITED)
        one = [
            b"MAIL FROM:<a@b.test>\r\n",
            b"RCPT TO:<u@example.com>\r\n",
            b"DATA\r\n",
            b"x\r\n.\r\n",
        ]
        replies = yield in_thread(
            conversation, gw.port, b"EHLO c\r\n", *one, *one, b"MAIL FROM:<a@b.test>\r\n"
        )
        self.assertTrue(
            replies[10].startswith(b"421 4.7.0 mx.test.example Too many messages"), replies[10]
        )
        self.assertEqual(len(gw.queued()), 2)

    @inlineCallbacks
    def test_concurrencyPerIP(self) -> Any:
        """
        A second simultaneous connection from the same IP beyond the
        policy's C{max_concurrency} gets 421 4.7.0.
        """
        gw = Gateway(self, LIMITED)

        def talk() -> tuple[bytes, bytes]:
            first = Raw(gw.port)
            banner = first.reply()
            second = Raw(gw.port)
            try:
                return banner, second.reply()
            finally:
                second.close()
                first.close()

        banner, refused = yield in_thread(talk)
        self.assertTrue(banner.startswith(b"220 "))
        self.assertTrue(refused.startswith(b"421 4.7.0 "), refused)

    @inlineCallbacks
    def test_listenerMaxConcurrency(self) -> Any:
        """
        Connections beyond the listener's C{max_concurrency} get 421.
        """
        gw = Gateway(self, PUBLIC + "max_concurrency = 1\n")

        def talk() -> bytes:
            first = Raw(gw.port)
            first.reply()
            second = Raw(gw.port)
            try:
                return second.reply()
            finally:
                second.close()
                first.close()

        refused = yield in_thread(talk)
        self.assertTrue(refused.startswith(b"421 4.3.2 "), refused)

    @inlineCallbacks
    def test_diskNearlyFull(self) -> Any:
        """
        With the spool's file system nearly full, MAIL gets 452 4.3.1.
        """
        gw = Gateway(self, free_bytes=lambda: 1024)
        replies = yield in_thread(conversation, gw.port, b"EHLO c\r\n", b"MAIL FROM:<a@b.test>\r\n")
        self.assertEqual(replies[2], b"452 4.3.1 Insufficient system storage\r\n")

    @inlineCallbacks
    def test_storeFailureIsTransient(self) -> Any:
        """
        A store that fails to commit gets 451, never 250 or a 5xx.
        """

        def fail_commit(message: Any) -> None:
            def commit() -> Any:
                message.abort()
                raise StoreError("disk on fire")

            message.commit = commit

        gw = Gateway(self, wrap_store=lambda spool: SabotagedStore(spool, fail_commit))
        replies = yield in_thread(
            conversation,
            gw.port,
            b"EHLO c\r\n",
            b"MAIL FROM:<a@b.test>\r\n",
            b"RCPT TO:<u@example.com>\r\n",
            b"DATA\r\n",
            b"x\r\n.\r\n",
        )
        self.assertEqual(
            replies[5], b"451 4.3.0 Temporary error storing the message, try again later\r\n"
        )
        self.assertEqual(gw.queued(), [])
        self.flushLoggedErrors(StoreError)


class WriteErrorTests(TestCase):
    @inlineCallbacks
    def test_writeErrorIsTransient(self) -> Any:
        """
        A write error while the body arrives (a full disk) is answered 451
        4.3.0 at the end of DATA, never 250, and nothing is queued.
        """

        def full_after_header(message: Any) -> None:
            writes = [0]
            original = message.write

            def write(data: bytes) -> None:
                writes[0] += 1
                if writes[0] > 1:  # the Received: header fits, the body does not
                    raise StoreError("No space left on device")
                original(data)

            message.write = write

        gw = Gateway(self, wrap_store=lambda spool: SabotagedStore(spool, full_after_header))
        replies = yield in_thread(
            conversation,
            gw.port,
            b"EHLO c\r\n",
            b"MAIL FROM:<a@b.test>\r\n",
            b"RCPT TO:<u@example.com>\r\n",
            b"DATA\r\n",
            b"x\r\n.\r\n",
            b"NOOP\r\n",
        )
        # The reason is the log's: spool paths and OS errors are not the
        # client's business.
        self.assertEqual(
            replies[5],
            b"451 4.3.0 Temporary error storing the message, try again later\r\n",
        )
        self.assertEqual(replies[6], b"250 2.0.0 Ok\r\n")
        self.assertEqual(gw.queued(), [])


class SabotagedStore:
    """
    The real spool, with each new message handed to C{sabotage} first, so
    that a test can make its writes or its commit fail.
    """

    def __init__(self, spool: Any, sabotage: Callable[[Any], None]) -> None:
        self.spool = spool
        self.sabotage = sabotage

    def has_space(self, size: int) -> bool:
        return True

    def new_message(self, envelope: Any) -> Any:
        message = self.spool.new_message(envelope)
        self.sabotage(message)
        return message


class ProtocolSafetyTests(TestCase):
    @inlineCallbacks
    def test_overlongDataLineStaysInData(self) -> Any:
        """
        An over-long line inside DATA never drops back to command mode
        (twisted.md 1.6): the commands hidden in the body are never run, the
        message is refused at its end, and nothing is stored.
        """
        gw = Gateway(self)

        def talk() -> list[bytes]:
            raw = Raw(gw.port)
            out = [raw.reply()]
            for c in (
                b"EHLO c\r\n",
                b"MAIL FROM:<a@b.test>\r\n",
                b"RCPT TO:<u@example.com>\r\n",
                b"DATA\r\n",
            ):
                out.append(raw.chat(c))
            raw.send(b"Subject: legit\r\n\r\n" + b"A" * 20000)
            raw.send(
                b"\r\nMAIL FROM:<smuggled@evil.test>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nsmuggled\r\n.\r\n"
            )
            out.append(raw.reply())
            out.append(raw.chat(b"NOOP\r\n"))
            raw.close()
            return out

        replies = yield in_thread(talk)
        self.assertEqual(replies[5], b"500 5.5.2 Line too long (RFC 5321 limit is 1000 octets)\r\n")
        self.assertEqual(replies[6], b"250 2.0.0 Ok\r\n")
        self.assertEqual(gw.queued(), [])

    @inlineCallbacks
    def test_bareLineFeedRejected(self) -> Any:
        """
        A message with a bare LF (the C{<LF>.<LF>} smuggling forms) is
        refused at the real terminator: never two messages out of one DATA.
        """
        gw = Gateway(self)
        for variant in (b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r"):
            body = (
                b"Subject: x\r\n\r\nhello"
                + variant
                + b"MAIL FROM:<s@evil.test>\r\nRCPT TO:<v@example.com>\r\nDATA\r\nsmuggled\r\n.\r\n"
            )
            replies = yield in_thread(
                conversation,
                gw.port,
                b"EHLO c\r\n",
                b"MAIL FROM:<a@b.test>\r\n",
                b"RCPT TO:<u@example.com>\r\n",
                b"DATA\r\n",
                body,
                b"NOOP\r\n",
            )
            self.assertEqual(
                replies[5], b"550 5.6.11 Message contains bare CR or LF characters\r\n", variant
            )
            self.assertEqual(replies[6], b"250 2.0.0 Ok\r\n")
        self.assertEqual(gw.queued(), [])

    @inlineCallbacks
    def test_pipelinedRepliesInOrder(self) -> Any:
        """
        A whole pipelined transaction in one write, with a durable commit
        in the middle, gets its replies in command order.
        """
        gw = Gateway(self)

        def talk() -> bytes:
            raw = Raw(gw.port)
            raw.reply()
            raw.chat(b"EHLO c\r\n")
            raw.send(
                b"MAIL FROM:<a@b.test>\r\nRCPT TO:<u@example.com>\r\nRCPT TO:<u@evil.test>\r\nDATA\r\n"
            )
            replies = b"".join(raw.reply() for _ in range(4))
            raw.send(
                b"x\r\n.\r\nMAIL FROM:<b@b.test>\r\nRCPT TO:<v@example.com>\r\nNOOP\r\nQUIT\r\n"
            )
            return replies + raw.rest()

        data = yield in_thread(talk)
        codes = [line[:3] for line in data.split(b"\r\n") if line]
        self.assertEqual(
            codes, [b"250", b"250", b"550", b"354", b"250", b"250", b"250", b"250", b"221"]
        )

    @inlineCallbacks
    def test_longCommandLine(self) -> Any:
        """
        A command line over 512 octets gets 500 5.5.2 and is not run, nor
        is its tail.
        """
        gw = Gateway(self)
        replies = yield in_thread(
            conversation,
            gw.port,
            b"EHLO c\r\n",
            b"MAIL FROM:<" + b"a" * 600 + b"@b.test>\r\n",
            b"NOOP\r\n",
        )
        self.assertEqual(replies[2], b"500 5.5.2 Line too long\r\n")
        self.assertEqual(replies[3], b"250 2.0.0 Ok\r\n")

    @inlineCallbacks
    def test_garbageCommands(self) -> Any:
        """
        Non-ASCII and unknown commands get 500 without hurting the session;
        the fifth bad command gets the ESA's 421 and the connection closes.
        """
        gw = Gateway(self)
        replies = yield in_thread(
            conversation,
            gw.port,
            b"\xff\xfe\r\n",
            b"FOO\r\n",
            b"NOOP\r\n",
            b"\x00\r\n",
            b"BAR x\r\n",
            b"BAZ\r\n",
            b"NOOP\r\n",
        )
        self.assertEqual(replies[1], b"500 5.5.2 Syntax error: non-ASCII command\r\n")
        self.assertEqual(replies[2], b"500 5.5.1 command not recognized\r\n")
        self.assertEqual(replies[3], b"250 2.0.0 Ok\r\n")
        self.assertEqual(replies[6], b"421 Exceeded bad SMTP command limit, disconnecting.\r\n")
        self.assertEqual(replies[7], b"")
        self.assertEqual(self.flushLoggedErrors(), [])

    @inlineCallbacks
    def test_basicCommands(self) -> Any:
        """
        NOOP, HELP, VRFY, RSET and the sequencing errors answer as RFC 5321
        asks.
        """
        gw = Gateway(self)
        replies = yield in_thread(
            conversation,
            gw.port,
            b"MAIL FROM:<a@b.test>\r\n",
            b"HELO c\r\n",
            b"RCPT TO:<u@example.com>\r\n",
            b"DATA\r\n",
            b"VRFY bob\r\n",
            b"HELP\r\n",
            b"MAIL FROM:<a@b.test>\r\n",
            b"MAIL FROM:<a@b.test>\r\n",
            b"RSET\r\n",
            b"QUIT\r\n",
        )
        self.assertEqual(replies[1], b"503 5.5.1 Error: send HELO/EHLO first\r\n")
        self.assertEqual(replies[2], b"250 mx.test.example\r\n")
        self.assertEqual(replies[3], b"503 5.5.1 Error: need MAIL command\r\n")
        self.assertEqual(replies[4], b"503 5.5.1 Error: need MAIL command\r\n")
        self.assertTrue(replies[5].startswith(b"252 2.5.2 "))
        self.assertTrue(replies[6].startswith(b"214-2.0.0 The following commands are recognized"))
        self.assertEqual(replies[8], b"503 5.5.1 Error: nested MAIL command\r\n")
        self.assertEqual(replies[9], b"250 2.0.0 Ok\r\n")
        self.assertEqual(replies[10], b"221 2.0.0 Bye\r\n")

    @inlineCallbacks
    def test_earlyTalker(self) -> Any:
        """
        A client that talks before the greeting is refused (554) once the
        HAT has answered.
        """
        gw = Gateway(self)
        slow: list[Any] = []
        original = gw.factory.classify_now

        def no_sync(ip: str) -> Any:
            return None

        def later(ip: str) -> Any:
            slow.append(ip)
            return deferLater(reactor, 0.3, lambda: original(ip))

        gw.factory.classify_now = no_sync  # type: ignore[method-assign]
        gw.factory.classify = later  # type: ignore[method-assign]

        def talk() -> bytes:
            raw = Raw(gw.port)
            raw.send(b"EHLO spambot\r\n")
            return raw.rest()

        data = yield in_thread(talk)
        self.assertIn(b"554 5.5.1 Protocol error: data received before the greeting\r\n", data)

    @inlineCallbacks
    def test_smtplibRefusalsVisible(self) -> Any:
        """
        Relay refusals reach a standard client as refused recipients.
        """
        gw = Gateway(self)
        d = in_thread(smtp_send, gw.port, "a@b.test", ["x@evil.test"], MESSAGE)
        failure = yield self.assertFailure(d, smtplib.SMTPRecipientsRefused)
        self.assertEqual(failure.recipients["x@evil.test"][0], 550)
