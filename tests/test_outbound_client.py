"""
Tests for the delivery client (L{esa_tls.outbound.client}) through
L{esa_tls.outbound.attempt.deliver_message}, against a scripted hostile
SMTP server on loopback with real TLS handshakes: each Destination
Controls TLS setting against servers that offer, strip, refuse or break
STARTTLS, inject plaintext, or present bad certificates.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Sequence
from io import BytesIO

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from esa_tls.config.model import (
    DestinationControl,
    DestinationTLS,
    GatewayConfig,
    SystemSettings,
)
from esa_tls.maillog import MailLog, MailLogCollector
from esa_tls.outbound.attempt import deliver_message
from esa_tls.outbound.client import WHOLE_BODY, Timeouts
from esa_tls.outbound.result import (
    DeliveryResult,
    Fallback,
    RecipientStatus,
    TLSFailureEvent,
    TLSResultType,
)
from esa_tls.testing import CertificateAuthority, expired, self_signed
from tests.peers.hostile import GARBAGE, RESET, HostileServer, Script, start_hostile_server

CA = CertificateAuthority.generate()
GOOD = CA.issue(["partner.example"])
SELF_SIGNED = self_signed(["partner.example"])
EXPIRED = expired(CA, ["partner.example"])
WRONG_NAME = CA.issue(["elsewhere.example"])
CN_ONLY = CA.issue(["partner.example"], san=False)

BODY = b"Subject: test\r\nFrom: sender@gw.test\r\n\r\nHello.\r\n"

NO = DestinationTLS.NO
PREFERRED = DestinationTLS.PREFERRED
REQUIRED = DestinationTLS.REQUIRED
PREFERRED_VERIFY = DestinationTLS.PREFERRED_VERIFY
REQUIRED_VERIFY = DestinationTLS.REQUIRED_VERIFY
HOSTED = DestinationTLS.REQUIRED_VERIFY_HOSTED

DELIVERED = RecipientStatus.DELIVERED
DEFERRED = RecipientStatus.DEFERRED
BOUNCED = RecipientStatus.BOUNCED


class DeliveryTestCase(TestCase):
    """
    Delivers to C{partner.example} through an SMTP route to a scripted
    server, trusting only the test CA.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.ca_file = os.path.join(directory, "ca.pem")
        with open(self.ca_file, "wb") as f:
            f.write(CA.cert_pem)
        self.collector = MailLogCollector()
        self.maillog = MailLog(observer=self.collector)
        self.events: list[TLSFailureEvent] = []

    def serve(self, **script: object) -> HostileServer:
        return start_hostile_server(self, Script(**script))  # type: ignore[arg-type]

    async def deliver(
        self,
        level: DestinationTLS,
        hosts: Sequence[str] | HostileServer,
        *,
        body: bytes = BODY,
        recipients: Sequence[tuple[int, str]] = ((1, "rcpt@partner.example"),),
        mail_from: str = "sender@gw.test",
        timeouts: Timeouts | None = None,
    ) -> DeliveryResult:
        if isinstance(hosts, HostileServer):
            hosts = [f"127.0.0.1:{hosts.port}"]
        config = GatewayConfig(
            system=SystemSettings(hostname="gw.test"),
            destinations={
                "partner.example": DestinationControl(
                    domain="partner.example", tls=level, ca_file=self.ca_file
                )
            },
            smtp_routes={"partner.example": tuple(hosts)},
        )
        return await deliver_message(
            reactor,
            None,
            config,
            "partner.example",
            mail_from,
            recipients,
            BytesIO(body),
            dcid_allocator=itertools.count(1).__next__,
            maillog=self.maillog,
            mid=7,
            on_tls_failure=self.events.append,
            timeouts=timeouts or Timeouts.uniform(10),
            trust_system=False,
        )

    def assertStatuses(self, result: DeliveryResult, *expected: RecipientStatus) -> None:
        self.assertEqual([r.status for r in result.recipients], list(expected), result)

    def assertNothingSent(self, server: HostileServer) -> None:
        """
        No mail transaction command reached the server, and no message.
        """
        verbs = server.verbs()
        for verb in (b"MAIL", b"RCPT", b"DATA"):
            self.assertNotIn(verb, verbs)
        self.assertEqual(server.capture.messages, [])

    def assertDeliveredClear(self, result: DeliveryResult, server: HostileServer) -> None:
        self.assertStatuses(result, DELIVERED)
        assert result.tls is not None
        self.assertFalse(result.tls.encrypted)
        self.assertIn(b"MAIL", server.verbs(over_tls=False))
        self.assertEqual(len(server.capture.messages), 1)

    def assertDeliveredEncrypted(
        self, result: DeliveryResult, server: HostileServer, verified: bool
    ) -> None:
        self.assertStatuses(result, DELIVERED)
        assert result.tls is not None
        self.assertTrue(result.tls.encrypted)
        self.assertEqual(result.tls.verified, verified)
        self.assertIsNotNone(result.tls.protocol)
        self.assertNotIn(b"MAIL", server.verbs(over_tls=False))
        self.assertIn(b"MAIL", server.verbs(over_tls=True))
        self.assertEqual(server.capture.messages[0][2], BODY)

    def assertTLSDeferred(
        self, result: DeliveryResult, server: HostileServer, result_type: TLSResultType
    ) -> None:
        """
        Deferred (4xx class) with nothing sent, a TLS failure recorded and
        the alert callback called.
        """
        self.assertStatuses(result, DEFERRED)
        self.assertTrue(result.recipients[0].text.startswith("4.7.5 TLS required"))
        self.assertNothingSent(server)
        self.assertTrue(result.tls_required_failure)
        self.assertEqual([e.result_type for e in self.events], [result_type])
        self.assertEqual(self.events[0].domain, "partner.example")
        self.assertEqual(self.events[0].mid, 7)


class OfferedGoodCertificateTests(DeliveryTestCase):
    """
    The server offers STARTTLS with a certificate for C{partner.example}
    from a trusted CA.
    """

    async def test_no(self) -> None:
        """
        C{no}: STARTTLS is never sent; mail goes in the clear.
        """
        server = self.serve(certificate=GOOD)
        result = await self.deliver(NO, server)
        self.assertDeliveredClear(result, server)
        self.assertNotIn(b"STARTTLS", server.verbs())

    async def test_preferred(self) -> None:
        """
        C{preferred}: delivered encrypted, the certificate not checked.
        """
        server = self.serve(certificate=GOOD)
        result = await self.deliver(PREFERRED, server)
        self.assertDeliveredEncrypted(result, server, verified=False)

    async def test_required(self) -> None:
        """
        C{required}: delivered encrypted.
        """
        server = self.serve(certificate=GOOD)
        result = await self.deliver(REQUIRED, server)
        self.assertDeliveredEncrypted(result, server, verified=False)
        self.assertFalse(result.tls_required_failure)

    async def test_preferred_verify(self) -> None:
        """
        C{preferred-verify}: delivered encrypted and verified against the
        email domain.
        """
        server = self.serve(certificate=GOOD)
        result = await self.deliver(PREFERRED_VERIFY, server)
        self.assertDeliveredEncrypted(result, server, verified=True)
        assert result.tls is not None and result.tls.match is not None
        self.assertEqual(result.tls.match.reference, "partner.example")

    async def test_required_verify(self) -> None:
        """
        C{required-verify}: delivered encrypted and verified.
        """
        server = self.serve(certificate=GOOD)
        result = await self.deliver(REQUIRED_VERIFY, server)
        self.assertDeliveredEncrypted(result, server, verified=True)

    async def test_required_verify_hosted(self) -> None:
        """
        C{required-verify-hosted}: delivered encrypted and verified.
        """
        server = self.serve(certificate=GOOD)
        result = await self.deliver(HOSTED, server)
        self.assertDeliveredEncrypted(result, server, verified=True)

    async def test_cn_only_certificate(self) -> None:
        """
        A certificate without SAN verifies by its CN.
        """
        server = self.serve(certificate=CN_ONLY)
        result = await self.deliver(REQUIRED_VERIFY, server)
        self.assertDeliveredEncrypted(result, server, verified=True)

    async def test_mail_log(self) -> None:
        """
        The mail log tells the ESA story of the delivery connection.
        """
        server = self.serve(certificate=GOOD)
        await self.deliver(REQUIRED_VERIFY, server)
        lines = self.collector.lines
        self.assertEqual(
            lines[0], f"New SMTP DCID 1 interface 127.0.0.1 address 127.0.0.1 port {server.port}"
        )
        self.assertRegex(
            lines[1], r"^DCID 1 TLS success protocol TLSv1\.[23] cipher \S+ verified yes$"
        )
        self.assertEqual(
            lines[2:],
            [
                "Delivery start DCID 1 MID 7 to RID [1]",
                "Message done DCID 1 MID 7 to RID [1]",
                "DCID 1 close",
            ],
        )


class NotOfferedTests(DeliveryTestCase):
    """
    The server does not offer STARTTLS (stripped by a man in the middle,
    or never configured).
    """

    async def test_preferred(self) -> None:
        """
        C{preferred}: delivered in the clear; the log says STARTTLS was not
        supported.
        """
        server = self.serve()
        result = await self.deliver(PREFERRED, server)
        self.assertDeliveredClear(result, server)
        assert result.tls is not None
        self.assertEqual(result.tls.fallback, Fallback.NOT_OFFERED)
        self.assertIn("DCID 1 STARTTLS command not supported.", self.collector.lines)
        self.assertEqual(self.events, [])

    async def test_preferred_verify(self) -> None:
        """
        C{preferred-verify}: delivered in the clear.
        """
        server = self.serve()
        result = await self.deliver(PREFERRED_VERIFY, server)
        self.assertDeliveredClear(result, server)

    async def test_required(self) -> None:
        """
        C{required}: nothing is sent, the message is deferred and a TLS
        failure event is raised.
        """
        server = self.serve()
        result = await self.deliver(REQUIRED, server)
        self.assertTLSDeferred(result, server, TLSResultType.STARTTLS_NOT_SUPPORTED)
        self.assertEqual(server.verbs(), [b"EHLO", b"QUIT"])

    async def test_required_verify(self) -> None:
        """
        C{required-verify}: deferred with nothing sent.
        """
        server = self.serve()
        result = await self.deliver(REQUIRED_VERIFY, server)
        self.assertTLSDeferred(result, server, TLSResultType.STARTTLS_NOT_SUPPORTED)

    async def test_required_then_host_down(self) -> None:
        """
        C{required}, a first host without STARTTLS and a second that is
        down: the deferral (and so a bounce, and the mail log) still says
        that the first was passed over for TLS, not only that the second
        refused the connection.
        """
        server = self.serve()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            down = s.getsockname()[1]
        result = await self.deliver(REQUIRED, [f"127.0.0.1:{server.port}", f"127.0.0.1:{down}"])
        self.assertStatuses(result, DEFERRED)
        text = result.recipients[0].text
        self.assertTrue(text.startswith("4.4.1 connection to 127.0.0.1[127.0.0.1]"), text)
        self.assertIn("; before that, TLS required (required) but 127.0.0.1[127.0.0.1]", text)
        self.assertNothingSent(server)

    async def test_required_verify_hosted(self) -> None:
        """
        C{required-verify-hosted}: deferred with nothing sent.
        """
        server = self.serve()
        result = await self.deliver(HOSTED, server)
        self.assertTLSDeferred(result, server, TLSResultType.STARTTLS_NOT_SUPPORTED)


class RefusedTests(DeliveryTestCase):
    """
    STARTTLS is offered but refused before the C{220}.
    """

    async def test_preferred_454(self) -> None:
        """
        C{preferred} and a 454: continue in the clear on the same
        connection.
        """
        server = self.serve(certificate=GOOD, starttls_reply=b"454 4.7.0 TLS not available")
        result = await self.deliver(PREFERRED, server)
        self.assertDeliveredClear(result, server)
        self.assertEqual(server.capture.connections, 1)
        assert result.tls is not None
        self.assertEqual(result.tls.fallback, Fallback.REFUSED)

    async def test_preferred_502(self) -> None:
        """
        C{preferred} and a 502: continue in the clear on the same
        connection.
        """
        server = self.serve(certificate=GOOD, starttls_reply=b"502 5.5.1 Not implemented")
        result = await self.deliver(PREFERRED, server)
        self.assertDeliveredClear(result, server)
        self.assertEqual(server.capture.connections, 1)

    async def test_preferred_verify_454(self) -> None:
        """
        C{preferred-verify} and a 454: delivered in the clear.
        """
        server = self.serve(certificate=GOOD, starttls_reply=b"454 4.7.0 TLS not available")
        result = await self.deliver(PREFERRED_VERIFY, server)
        self.assertDeliveredClear(result, server)

    async def test_required_454(self) -> None:
        """
        C{required} and a 454: deferred, nothing sent.
        """
        server = self.serve(certificate=GOOD, starttls_reply=b"454 4.7.0 TLS not available")
        result = await self.deliver(REQUIRED, server)
        self.assertTLSDeferred(result, server, TLSResultType.STARTTLS_NOT_SUPPORTED)

    async def test_required_verify_502(self) -> None:
        """
        C{required-verify} and a 502: deferred, nothing sent.
        """
        server = self.serve(certificate=GOOD, starttls_reply=b"502 5.5.1 Not implemented")
        result = await self.deliver(REQUIRED_VERIFY, server)
        self.assertTLSDeferred(result, server, TLSResultType.STARTTLS_NOT_SUPPORTED)

    async def test_required_421(self) -> None:
        """
        C{required} and a 421 in place of the 220 (a server closing, or a
        man in the middle hiding that it strips TLS): deferred, nothing
        sent, and a TLS failure with its alert, as for a 454.
        """
        server = self.serve(certificate=GOOD, starttls_reply=b"421 4.3.2 Service not available")
        result = await self.deliver(REQUIRED, server)
        self.assertTLSDeferred(result, server, TLSResultType.STARTTLS_NOT_SUPPORTED)

    async def test_preferred_421(self) -> None:
        """
        C{preferred} and a 421: the server is closing; deferred, no TLS
        alert (the setting does not require TLS).
        """
        server = self.serve(certificate=GOOD, starttls_reply=b"421 4.3.2 Service not available")
        result = await self.deliver(PREFERRED, server)
        self.assertStatuses(result, DEFERRED)
        self.assertNothingSent(server)
        self.assertFalse(result.tls_required_failure)
        self.assertEqual(self.events, [])


class EHLORefusedOverTLSTests(DeliveryTestCase):
    """
    TLS is up and verified, and the server then refuses the EHLO that
    RFC 3207 has the client send again.
    """

    async def test_required_verify(self) -> None:
        """
        A session error, not a TLS failure: deferred, nothing sent, the
        TLS outcome kept (encrypted, verified), and no TLS alert.
        """
        server = self.serve(
            certificate=GOOD, ehlo_reply_over_tls=b"554 5.7.1 EHLO rejected by local policy"
        )
        result = await self.deliver(REQUIRED_VERIFY, server)
        self.assertStatuses(result, DEFERRED)
        self.assertIn("EHLO refused after STARTTLS: 554", result.recipients[0].text)
        self.assertNothingSent(server)
        self.assertFalse(result.tls_required_failure)
        assert result.tls is not None
        self.assertTrue(result.tls.encrypted and result.tls.verified)
        self.assertIsNone(result.tls.failure)
        self.assertEqual(self.events, [])


class HELOFallbackTests(DeliveryTestCase):
    """
    EHLO is refused and a setting that does not require TLS falls back to
    HELO (RFC 5321 section 3.2).
    """

    #: Short: without the fix, the refused HELO was sent again for ever.
    timeout = 15

    async def test_preferred_helo(self) -> None:
        """
        C{preferred}: EHLO refused, HELO taken; no STARTTLS without EHLO,
        so the mail goes in the clear.
        """
        server = self.serve(certificate=GOOD, ehlo_reply=b"502 5.5.2 Error: command not recognized")
        result = await self.deliver(PREFERRED, server)
        self.assertDeliveredClear(result, server)
        self.assertEqual(server.verbs()[:3], [b"EHLO", b"HELO", b"MAIL"])

    async def test_required_never_helo(self) -> None:
        """
        Under every C{required*} setting a refused EHLO is a TLS failure:
        no HELO (which cannot lead to STARTTLS), nothing sent, the alert.
        """
        for level in (REQUIRED, REQUIRED_VERIFY, HOSTED):
            self.events = []
            server = self.serve(
                certificate=GOOD, ehlo_reply=b"502 5.5.2 Error: command not recognized"
            )
            result = await self.deliver(level, server)
            self.assertTLSDeferred(result, server, TLSResultType.STARTTLS_NOT_SUPPORTED)
            self.assertEqual(server.verbs(), [b"EHLO", b"QUIT"], level)

    async def test_helo_refused(self) -> None:
        """
        A refused HELO ends the session: one HELO, then QUIT, and the
        recipient deferred with the server's refusal.  (Twisted's client
        keeps EHLO's failure handler, which sends HELO, for the HELO: it
        sent HELO again for every refusal, thousands a second, for as
        long as the server kept answering.)
        """
        server = self.serve(
            ehlo_reply=b"500 5.5.1 EHLO not understood",
            helo_reply=b"550 5.7.1 Go away",
        )
        result = await self.deliver(PREFERRED, server)
        self.assertStatuses(result, DEFERRED)
        self.assertIn("HELO refused: 550 5.7.1 Go away", result.recipients[0].text)
        self.assertEqual(server.verbs(), [b"EHLO", b"HELO", b"QUIT"])
        self.assertNothingSent(server)

    async def test_helo_refused_over_tls(self) -> None:
        """
        The same after STARTTLS, where the EHLO over TLS is refused: one
        HELO over TLS, then QUIT.
        """
        server = self.serve(
            certificate=GOOD,
            ehlo_reply_over_tls=b"502 5.5.2 Error: command not recognized",
            helo_reply=b"554 5.7.1 Not today",
        )
        result = await self.deliver(PREFERRED, server)
        self.assertStatuses(result, DEFERRED)
        self.assertIn("HELO refused: 554 5.7.1 Not today", result.recipients[0].text)
        self.assertEqual(server.verbs(), [b"EHLO", b"STARTTLS", b"EHLO", b"HELO", b"QUIT"])
        self.assertNothingSent(server)

    async def test_cleartext_extensions_forgotten_over_tls(self) -> None:
        """
        RFC 3207 section 4.2: what the server said before TLS is forgotten.
        When the EHLO over TLS is refused and HELO taken instead, no
        extension of the cleartext EHLO (SIZE, PIPELINING, which a man in
        the middle may have added) is used: MAIL FROM goes bare, alone.
        """
        server = self.serve(
            certificate=GOOD,
            ehlo_keywords=(b"PIPELINING", b"SIZE 10240000", b"SMTPUTF8", b"STARTTLS"),
            ehlo_reply_over_tls=b"502 5.5.2 Error: command not recognized",
        )
        result = await self.deliver(PREFERRED, server)
        self.assertDeliveredEncrypted(result, server, verified=False)
        self.assertEqual(
            [line for tls, line in server.capture.commands if tls and line.startswith(b"MAIL")],
            [b"MAIL FROM:<sender@gw.test>"],
        )


class MalformedReplyTests(DeliveryTestCase):
    """
    RFC 5321 section 4.2: a reply code is three digits, 2-5, 0-5, 0-9.
    """

    async def test_malformed_codes(self) -> None:
        """
        A reply whose code is not one (C{2_0}, C{+25}, C{ 250}, an
        informational C{050}, C{250x}), which Twisted's client read with
        C{int()} as 20, 25 or 250 or skipped, ends the session at once: the
        recipient deferred with the line quoted, and the replies behind it
        (to the pipelined RCPT and DATA) not taken for answers.
        """
        for reply in (b"2_0 2.1.0 Ok", b"+25 2.1.0 Ok", b" 250 2.1.0 Ok", b"050 wait", b"250x Ok"):
            server = self.serve(mail_reply=reply)
            result = await self.deliver(PREFERRED, server)
            self.assertStatuses(result, DEFERRED)
            self.assertIn("malformed reply to MAIL FROM", result.recipients[0].text, reply)


class EightBitTests(DeliveryTestCase):
    """
    RFC 6152: a body with octets above 127 goes with C{BODY=8BITMIME} to
    a server that offers 8BITMIME, and whole.
    """

    def mail_commands(self, server: HostileServer) -> list[bytes]:
        return [line for _, line in server.capture.commands if line.startswith(b"MAIL")]

    async def test_declared_where_offered(self) -> None:
        """
        An 8-bit body (past the first chunk the client reads, too) is
        declared to a server offering 8BITMIME; a 7-bit body is not.
        """
        keywords = (b"PIPELINING", b"8BITMIME")
        eight = b"Subject: x\r\n\r\n" + b"a" * (70 * 1024) + b"\r\nna\xc3\xafve\r\n"
        for body, declared in ((eight, True), (BODY, False)):
            server = self.serve(ehlo_keywords=keywords)
            result = await self.deliver(PREFERRED, server, body=body)
            self.assertStatuses(result, RecipientStatus.DELIVERED)
            (mail,) = self.mail_commands(server)
            self.assertEqual(mail.endswith(b" BODY=8BITMIME"), declared, mail)
            self.assertEqual(server.capture.messages[0][2], body)

    async def test_not_declared_where_not_offered(self) -> None:
        """
        A server that does not offer 8BITMIME gets no BODY parameter (which
        it would refuse), and the message as it is.
        """
        server = self.serve(ehlo_keywords=(b"PIPELINING",))
        body = b"Subject: x\r\n\r\nna\xc3\xafve\r\n"
        result = await self.deliver(PREFERRED, server, body=body)
        self.assertStatuses(result, RecipientStatus.DELIVERED)
        (mail,) = self.mail_commands(server)
        self.assertNotIn(b"BODY=", mail)
        self.assertEqual(server.capture.messages[0][2], body)


class QuitTests(DeliveryTestCase):
    """
    The reply to QUIT, whatever it is, ends the session.
    """

    #: Short: without the fix, QUIT was sent again for ever.
    timeout = 15

    async def test_malformed_quit_reply(self) -> None:
        """
        A reply code out of range (C{-1}, which Twisted's reply parser
        takes for a number) to the QUIT that follows a refusal: the client
        hangs up, one QUIT sent.  (The stock client kept the failure
        handler of the command before QUIT, and where that handler sends
        QUIT, every such reply sent QUIT again.)
        """
        cases: list[tuple[DestinationTLS, dict[str, object]]] = [
            (REQUIRED, {}),
            (PREFERRED, {"ehlo_reply": b"500 no", "helo_reply": b"550 no"}),
            (REQUIRED, {"certificate": GOOD, "starttls_reply": b"454 4.7.0 No"}),
        ]
        for level, script in cases:
            server = self.serve(quit_reply=b"-1 no", **script)
            result = await self.deliver(level, server)
            self.assertStatuses(result, DEFERRED)
            self.assertEqual(server.verbs().count(b"QUIT"), 1, (script, server.verbs()[:8]))
            self.assertNothingSent(server)


class BrokenAfter220Tests(DeliveryTestCase):
    """
    The server says C{220} to STARTTLS and then breaks the handshake.
    """

    async def test_preferred_garbage_reconnects_clear(self) -> None:
        """
        C{preferred}: a handshake that fails after the 220 is followed by a
        new connection, in the clear, which carries the mail.
        """
        server = self.serve(certificate=GOOD, after_220=GARBAGE)
        result = await self.deliver(PREFERRED, server)
        self.assertDeliveredClear(result, server)
        self.assertEqual(server.capture.connections, 2)
        self.assertEqual(
            server.verbs(), [b"EHLO", b"STARTTLS", b"EHLO", b"MAIL", b"RCPT", b"DATA", b"QUIT"]
        )
        assert result.tls is not None
        self.assertEqual(result.tls.fallback, Fallback.RECONNECTED)
        self.assertTrue(any(line.startswith("DCID 1 TLS failed:") for line in self.collector.lines))
        self.assertIn("Delivery start DCID 2 MID 7 to RID [1]", self.collector.lines)

    async def test_preferred_verify_reset_reconnects_clear(self) -> None:
        """
        C{preferred-verify}: a reset after the 220 also falls back to a
        clear reconnection.
        """
        server = self.serve(certificate=GOOD, after_220=RESET)
        result = await self.deliver(PREFERRED_VERIFY, server)
        self.assertDeliveredClear(result, server)
        self.assertEqual(server.capture.connections, 2)

    async def test_required_garbage(self) -> None:
        """
        C{required}: deferred, nothing sent, no clear reconnection.
        """
        server = self.serve(certificate=GOOD, after_220=GARBAGE)
        result = await self.deliver(REQUIRED, server)
        self.assertTLSDeferred(result, server, TLSResultType.VALIDATION_FAILURE)
        self.assertEqual(server.capture.connections, 1)

    async def test_required_verify_reset(self) -> None:
        """
        C{required-verify}: deferred, nothing sent.
        """
        server = self.serve(certificate=GOOD, after_220=RESET)
        result = await self.deliver(REQUIRED_VERIFY, server)
        self.assertTLSDeferred(result, server, TLSResultType.VALIDATION_FAILURE)
        self.assertEqual(server.capture.connections, 1)


class ResponseInjectionTests(DeliveryTestCase):
    """
    The server (or a man in the middle) sends C{250 INJECTED} in the same
    plaintext segment as its C{220} to STARTTLS, hoping the client takes it
    for the post-TLS EHLO reply.
    """

    def injector(self) -> HostileServer:
        return self.serve(
            certificate=GOOD,
            starttls_reply=b"220 go ahead",
            after_starttls=b"250 INJECTED\r\n",
            hold_ehlo_reply_over_tls=0.2,
        )

    async def test_preferred(self) -> None:
        """
        The injected bytes are discarded: the client sends EHLO over TLS
        and nothing more until the real reply.
        """
        server = self.injector()
        result = await self.deliver(PREFERRED, server)
        self.assertDeliveredEncrypted(result, server, verified=False)
        self.assertEqual(server.capture.premature, [])
        assert result.tls is not None
        self.assertEqual(result.tls.discarded_plaintext, len(b"250 INJECTED\r\n"))

    async def test_required_verify(self) -> None:
        """
        Same under C{required-verify}.
        """
        server = self.injector()
        result = await self.deliver(REQUIRED_VERIFY, server)
        self.assertDeliveredEncrypted(result, server, verified=True)
        self.assertEqual(server.capture.premature, [])


class CertificateTests(DeliveryTestCase):
    """
    Certificates that do not verify.
    """

    def break_ca_file(self) -> None:
        """
        The destination's C{ca_file} was replaced, since the configuration
        was loaded, by something that is not PEM.
        """
        with open(self.ca_file, "wb") as f:
            f.write(b"not a certificate\n")

    async def test_inherited_setting_keeps_its_ca_file(self) -> None:
        """
        A row that takes the Default row's TLS setting (C{tls = "default"},
        the answer "no" to "apply a specific TLS setting") takes it whole,
        with the Default row's C{ca_file}: a row added only to limit a
        domain's connections must not make its mail fail verification (or,
        under a preferred setting, go unverified) for want of the trust
        anchors every other domain is checked with.  A row's own
        C{ca_file} still wins.
        """
        server = self.serve(certificate=GOOD)
        other = os.path.join(os.path.dirname(self.ca_file), "other.pem")
        with open(other, "wb") as f:
            f.write(CertificateAuthority.generate().cert_pem)

        async def deliver(row_ca_file: str) -> DeliveryResult:
            config = GatewayConfig(
                system=SystemSettings(hostname="gw.test"),
                destinations={
                    "default": DestinationControl(
                        domain="default", tls=REQUIRED_VERIFY, ca_file=self.ca_file
                    ),
                    "partner.example": DestinationControl(
                        domain="partner.example",
                        tls=DestinationTLS.DEFAULT,
                        max_host_concurrency=2,
                        ca_file=row_ca_file,
                    ),
                },
                smtp_routes={"partner.example": (f"127.0.0.1:{server.port}",)},
            )
            return await deliver_message(
                reactor,
                None,
                config,
                "partner.example",
                "sender@gw.test",
                [(1, "rcpt@partner.example")],
                BytesIO(BODY),
                dcid_allocator=itertools.count(1).__next__,
                on_tls_failure=self.events.append,
                timeouts=Timeouts.uniform(10),
                trust_system=False,
            )

        result = await deliver("")
        self.assertDeliveredEncrypted(result, server, verified=True)
        self.assertEqual(self.events, [])
        result = await deliver(other)
        self.assertStatuses(result, DEFERRED)
        self.assertEqual(
            [e.result_type for e in self.events], [TLSResultType.CERTIFICATE_NOT_TRUSTED]
        )

    async def test_unloadable_ca_file_preferred_verify(self) -> None:
        """
        C{preferred-verify} with trust anchors that cannot be loaded: the
        peer cannot be verified, so the message goes encrypted and
        unverified, never in the clear, and the error is logged.
        """
        self.break_ca_file()
        server = self.serve(certificate=GOOD)
        result = await self.deliver(PREFERRED_VERIFY, server)
        self.assertDeliveredEncrypted(result, server, verified=False)
        assert result.tls is not None
        self.assertEqual(result.tls.failure, TLSResultType.CERTIFICATE_NOT_TRUSTED)
        self.assertEqual(server.capture.connections, 1)

    async def test_unloadable_ca_file_required_verify(self) -> None:
        """
        C{required-verify} with trust anchors that cannot be loaded: a
        verification failure (deferred, alert), not a handshake failure
        blamed on the peer.
        """
        self.break_ca_file()
        server = self.serve(certificate=GOOD)
        result = await self.deliver(REQUIRED_VERIFY, server)
        self.assertTLSDeferred(result, server, TLSResultType.CERTIFICATE_NOT_TRUSTED)

    async def test_self_signed_preferred_verify(self) -> None:
        """
        C{preferred-verify} delivers encrypted but unverified, and says
        why.
        """
        server = self.serve(certificate=SELF_SIGNED)
        result = await self.deliver(PREFERRED_VERIFY, server)
        self.assertDeliveredEncrypted(result, server, verified=False)
        assert result.tls is not None
        self.assertEqual(result.tls.failure, TLSResultType.CERTIFICATE_NOT_TRUSTED)
        self.assertIn("verified no", " ".join(self.collector.lines))
        self.assertEqual(self.events, [])

    async def test_self_signed_preferred(self) -> None:
        """
        C{preferred} does not check: delivered encrypted.
        """
        server = self.serve(certificate=SELF_SIGNED)
        result = await self.deliver(PREFERRED, server)
        self.assertDeliveredEncrypted(result, server, verified=False)

    async def test_self_signed_required(self) -> None:
        """
        C{required} does not check either.
        """
        server = self.serve(certificate=SELF_SIGNED)
        result = await self.deliver(REQUIRED, server)
        self.assertDeliveredEncrypted(result, server, verified=False)

    async def test_self_signed_required_verify(self) -> None:
        """
        C{required-verify}: deferred, nothing but QUIT sent over TLS.
        """
        server = self.serve(certificate=SELF_SIGNED)
        result = await self.deliver(REQUIRED_VERIFY, server)
        self.assertTLSDeferred(result, server, TLSResultType.CERTIFICATE_NOT_TRUSTED)
        self.assertEqual(server.verbs(over_tls=True), [b"QUIT"])
        self.assertTrue(
            any(
                line.startswith("DCID 1 TLS failed: verify error: self-signed")
                for line in self.collector.lines
            )
        )

    async def test_expired_required_verify(self) -> None:
        """
        An expired certificate: deferred, C{certificate-expired}.
        """
        server = self.serve(certificate=EXPIRED)
        result = await self.deliver(REQUIRED_VERIFY, server)
        self.assertTLSDeferred(result, server, TLSResultType.CERTIFICATE_EXPIRED)

    async def test_expired_hosted(self) -> None:
        """
        C{required-verify-hosted} also refuses an expired certificate.
        """
        server = self.serve(certificate=EXPIRED)
        result = await self.deliver(HOSTED, server)
        self.assertTLSDeferred(result, server, TLSResultType.CERTIFICATE_EXPIRED)

    async def test_wrong_name_required_verify(self) -> None:
        """
        A trusted certificate for another name: deferred,
        C{certificate-host-mismatch}.
        """
        server = self.serve(certificate=WRONG_NAME)
        result = await self.deliver(REQUIRED_VERIFY, server)
        self.assertTLSDeferred(result, server, TLSResultType.CERTIFICATE_HOST_MISMATCH)

    async def test_wrong_name_preferred_verify(self) -> None:
        """
        C{preferred-verify} delivers to the wrong name, encrypted and
        unverified.
        """
        server = self.serve(certificate=WRONG_NAME)
        result = await self.deliver(PREFERRED_VERIFY, server)
        self.assertDeliveredEncrypted(result, server, verified=False)
        assert result.tls is not None
        self.assertEqual(result.tls.failure, TLSResultType.CERTIFICATE_HOST_MISMATCH)

    async def test_route_host_name(self) -> None:
        """
        Through an SMTP route with a host name, Verify and Hosted Verify
        accept a certificate for the route host.
        """
        from twisted.names import dns

        from tests.peers.dns import start_dns_server

        server = self.serve(certificate=CA.issue(["relay.example"]))
        dns_server = start_dns_server(self, {"relay.example": [dns.Record_A("127.0.0.1")]})
        config = GatewayConfig(
            system=SystemSettings(hostname="gw.test"),
            destinations={
                "partner.example": DestinationControl(
                    domain="partner.example", tls=HOSTED, ca_file=self.ca_file
                )
            },
            smtp_routes={"partner.example": (f"relay.example:{server.port}",)},
        )
        result = await deliver_message(
            reactor,
            dns_server.resolver(),
            config,
            "partner.example",
            "s@gw.test",
            [(1, "r@partner.example")],
            BytesIO(BODY),
            dcid_allocator=itertools.count(1).__next__,
            trust_system=False,
        )
        self.assertStatuses(result, DELIVERED)
        assert result.tls is not None and result.tls.match is not None
        self.assertEqual(result.tls.match.kind.value, "SMTP route hostname")
        self.assertEqual(server.capture.server_names, ["relay.example"])

    async def test_no_sni_for_ip_literal(self) -> None:
        """
        A route to an IP literal sends no SNI (an address is never a
        server name).
        """
        server = self.serve(certificate=GOOD)
        await self.deliver(REQUIRED, server)
        self.assertEqual(server.capture.server_names, [None])


class TransactionTests(DeliveryTestCase):
    """
    Replies per recipient, errors and timeouts.
    """

    RECIPIENTS = (
        (1, "ok@partner.example"),
        (2, "later@partner.example"),
        (3, "no@partner.example"),
    )
    REPLIES = {
        "later@partner.example": b"450 4.2.1 Mailbox busy",
        "no@partner.example": b"550 5.1.1 No such user",
    }

    async def test_per_recipient_pipelined(self) -> None:
        """
        With PIPELINING, each recipient gets its own outcome: 2xx
        delivered, 4xx deferred, 5xx bounced.
        """
        server = self.serve(rcpt_replies=self.REPLIES)
        result = await self.deliver(NO, server, recipients=self.RECIPIENTS)
        self.assertStatuses(result, DELIVERED, DEFERRED, BOUNCED)
        self.assertEqual(result.recipients[2].code, 550)
        self.assertEqual(server.capture.messages[0][1], [b"ok@partner.example"])
        self.assertIn("MID 7 RID [2] deferred: 450 4.2.1 Mailbox busy", self.collector.lines)
        self.assertIn("MID 7 RID [3] bounced: 550 5.1.1 No such user", self.collector.lines)

    async def test_per_recipient_sequential(self) -> None:
        """
        Without PIPELINING, the same outcomes, one command at a time.
        """
        server = self.serve(rcpt_replies=self.REPLIES, ehlo_keywords=(b"8BITMIME",))
        result = await self.deliver(NO, server, recipients=self.RECIPIENTS)
        self.assertStatuses(result, DELIVERED, DEFERRED, BOUNCED)

    async def test_mail_from_rejected(self) -> None:
        """
        A 5xx to MAIL FROM bounces every recipient.
        """
        server = self.serve(mail_reply=b"553 5.7.1 Sender rejected")
        result = await self.deliver(NO, server, recipients=self.RECIPIENTS)
        self.assertStatuses(result, BOUNCED, BOUNCED, BOUNCED)

    async def test_mail_from_temporary(self) -> None:
        """
        A 4xx to MAIL FROM on the only host defers every recipient, with
        that reply as the reason.
        """
        server = self.serve(mail_reply=b"451 4.3.2 Not now")
        result = await self.deliver(NO, server, recipients=self.RECIPIENTS)
        self.assertStatuses(result, DEFERRED, DEFERRED, DEFERRED)
        self.assertIn("MAIL FROM: 451 4.3.2 Not now", result.recipients[0].text)

    async def test_final_reply_temporary(self) -> None:
        """
        A 4xx after the final dot defers the accepted recipients.
        """
        server = self.serve(final_reply=b"451 4.3.0 Try later")
        result = await self.deliver(NO, server)
        self.assertStatuses(result, DEFERRED)
        self.assertEqual(result.recipients[0].code, 451)

    async def test_timeout(self) -> None:
        """
        A server that stops answering after MAIL FROM: the recipient is
        deferred, with the reason.
        """
        server = self.serve(silent_after=b"MAIL", ehlo_keywords=(b"8BITMIME",))
        result = await self.deliver(NO, server, timeouts=Timeouts.uniform(0.5))
        self.assertStatuses(result, DEFERRED)
        self.assertIn("timeout", result.recipients[0].text)

    async def test_shorter_timeout_applies(self) -> None:
        """
        A stage with a shorter timeout than the one before gets it: a
        server silent once it has accepted RCPT never answers DATA (the
        C{354} wait, 0.5 s here), and the recipient is deferred in about
        that time, not after the 30 s of MAIL and RCPT.
        """
        server = self.serve(silent_after=b"RCPT", ehlo_keywords=(b"8BITMIME",))
        timeouts = Timeouts(connect=30, greeting=30, command=30, mail=30, rcpt=30, data_init=0.5)
        started = time.monotonic()
        result = await self.deliver(NO, server, timeouts=timeouts)
        self.assertLess(time.monotonic() - started, 10)
        self.assertStatuses(result, DEFERRED)
        self.assertIn("timeout", result.recipients[0].text)

    async def test_null_sender(self) -> None:
        """
        The null reverse path goes out as C{MAIL FROM:<>}.
        """
        server = self.serve()
        result = await self.deliver(NO, server, mail_from="")
        self.assertStatuses(result, DELIVERED)
        self.assertIn((False, b"MAIL FROM:<>"), server.capture.commands)

    async def test_bad_address_never_sent(self) -> None:
        """
        A stored address with a line break bounces without reaching the
        wire.
        """
        server = self.serve()
        result = await self.deliver(
            NO,
            server,
            recipients=[(1, "a@partner.example\r\nRCPT TO:<x@y>"), (2, "b@partner.example")],
        )
        self.assertStatuses(result, BOUNCED, DELIVERED)
        self.assertNotIn(b"x@y", b"".join(line for _, line in server.capture.commands))

    async def test_next_host(self) -> None:
        """
        An unreachable first host is passed over for the next.
        """
        unused = socket.socket()
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
        unused.close()
        server = self.serve()
        result = await self.deliver(NO, [f"127.0.0.1:{closed_port}", f"127.0.0.1:{server.port}"])
        self.assertStatuses(result, DELIVERED)
        self.assertEqual(result.port, server.port)

    async def test_required_tls_next_host(self) -> None:
        """
        Under C{required}, a host without STARTTLS is passed over (and
        reported) for one with it.
        """
        plain = self.serve()
        good = self.serve(certificate=GOOD)
        result = await self.deliver(REQUIRED, [f"127.0.0.1:{plain.port}", f"127.0.0.1:{good.port}"])
        self.assertStatuses(result, DELIVERED)
        self.assertNothingSent(plain)
        self.assertEqual(len(self.events), 1)
        self.assertEqual(self.events[0].port, plain.port)


class DotStuffingTests(DeliveryTestCase):
    """
    The body crosses the wire intact however it is cut.
    """

    async def assertDeliveredIntact(self, body: bytes) -> None:
        """
        C{body} arrives as one message, exactly, in one transaction.
        """
        server = self.serve()
        result = await self.deliver(NO, server, body=body)
        self.assertStatuses(result, DELIVERED)
        self.assertEqual(len(server.capture.messages), 1)
        self.assertEqual(server.capture.messages[0][2], body)
        self.assertEqual(server.verbs().count(b"MAIL"), 1)

    async def test_dot_at_16k_boundary(self) -> None:
        """
        A line starting with C{.} at offset 16384, followed by what would be
        a smuggled transaction, arrives as part of the one message.
        """
        body = (
            b"Subject: boundary\r\n\r\n"
            + b"x" * (16384 - 23)
            + b"\r\n"
            + b".\r\nMAIL FROM:<smuggler@evil.example>\r\nRCPT TO:<victim@partner.example>\r\n"
            + b"DATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
        )
        self.assertEqual(body[16384:16385], b".")
        await self.assertDeliveredIntact(body)

    async def test_dot_after_whole_body_read(self) -> None:
        """
        A body longer than L{WHOLE_BODY} is read ahead by that much and
        streamed after: a line starting with C{.} right where the streaming
        takes over, followed by what would be a smuggled transaction,
        arrives as part of the one message.
        """
        filler = WHOLE_BODY + 1 - len(b"Subject: long\r\n\r\n") - 2
        body = (
            b"Subject: long\r\n\r\n"
            + b"y" * filler
            + b"\r\n"
            + b".\r\nMAIL FROM:<smuggler@evil.example>\r\n"
            + b"z" * 40000
            + b"\r\n.\r\n"
        )
        self.assertEqual(body[WHOLE_BODY + 1 : WHOLE_BODY + 2], b".")
        await self.assertDeliveredIntact(body)

    async def test_whole_body_limit(self) -> None:
        """
        A body of exactly L{WHOLE_BODY} octets, sent in one write with the
        final dot, ends in a dot line that is stuffed, not taken for the
        end of DATA.
        """
        head = b"Subject: exact\r\n\r\n"
        tail = b"\r\n.\r\n"
        body = head + b"w" * (WHOLE_BODY - len(head) - len(tail)) + tail
        self.assertEqual(len(body), WHOLE_BODY)
        await self.assertDeliveredIntact(body)
