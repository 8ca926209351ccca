"""
Outbound delivery against a real Postfix destination: every Destination
Controls TLS setting against Postfix with STARTTLS offered, not offered,
broken, and with valid, self-signed, expired and wrong-name certificates.

Each test starts one Postfix (L{tests.peers.postfix}) and delivers one
message per TLS setting to it, found through a real DNS server on loopback
(MX C{mx.partner.example}).  What Postfix stored (its C{Received:} header
says whether TLS was used) and what it logged (each session's command
counts) prove the outcome: delivered encrypted, delivered in the clear, or
deferred with no MAIL FROM sent.
"""

from __future__ import annotations

import itertools
import os
import re
from io import BytesIO

from twisted.internet import reactor
from twisted.names import dns
from twisted.trial.unittest import TestCase

from esa_tls.config.model import (
    DestinationControl,
    DestinationTLS,
    GatewayConfig,
    SystemSettings,
)
from esa_tls.outbound.attempt import deliver_message
from esa_tls.outbound.client import Timeouts
from esa_tls.outbound.result import (
    DeliveryResult,
    RecipientStatus,
    TLSFailureEvent,
    TLSResultType,
)
from esa_tls.testing import CertificateAuthority, IssuedCertificate, expired, self_signed
from tests.peers.dns import start_dns_server
from tests.peers.postfix import PostfixInstance, start_postfix

CA = CertificateAuthority.generate()
MX = "mx.partner.example"


#: Expected outcomes: "tls" delivered encrypted, "clear" delivered in the
#: clear, or an RFC 8460 result type for a deferral with nothing sent.
Expectation = str | TLSResultType


class PostfixTestCase(TestCase):
    """
    A DNS server with C{partner.example MX 10 mx.partner.example}, and
    helpers to deliver there and check what Postfix got.
    """

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.ca_file = os.path.join(directory, "ca.pem")
        with open(self.ca_file, "wb") as f:
            f.write(CA.cert_pem)
        self.dns = start_dns_server(
            self,
            {
                "partner.example": [dns.Record_MX(10, MX.encode())],
                MX: [dns.Record_A("127.0.0.1")],
            },
        )
        self.events: list[TLSFailureEvent] = []
        self.dcids = itertools.count(1)

    async def deliver(
        self, postfix: PostfixInstance, level: DestinationTLS, subject: str
    ) -> DeliveryResult:
        config = GatewayConfig(
            system=SystemSettings(hostname="gw.test"),
            destinations={
                "partner.example": DestinationControl(
                    domain="partner.example", tls=level, ca_file=self.ca_file
                )
            },
        )
        body = f"Subject: {subject}\r\nFrom: sender@gw.test\r\n\r\nTLS setting {level.value}.\r\n"
        return await deliver_message(
            reactor,
            self.dns.resolver(),
            config,
            "partner.example",
            "sender@gw.test",
            [(1, "rcpt@partner.example")],
            BytesIO(body.encode()),
            dcid_allocator=self.dcids.__next__,
            mid=1,
            on_tls_failure=self.events.append,
            timeouts=Timeouts.uniform(15),
            port=postfix.port,
            trust_system=False,
        )

    async def check_matrix(
        self, postfix: PostfixInstance, expected: dict[DestinationTLS, Expectation]
    ) -> None:
        """
        Deliver once per setting and check each outcome against what
        Postfix received and logged.
        """
        delivered: dict[str, str] = {}
        deferred = 0
        for level, expectation in expected.items():
            subject = f"level {level.value}"
            result = await self.deliver(postfix, level, subject)
            status = result.recipients[0].status
            if isinstance(expectation, TLSResultType):
                self.assertEqual(status, RecipientStatus.DEFERRED, (level, result))
                self.assertTrue(result.tls_required_failure, level)
                self.assertEqual(self.events[-1].result_type, expectation, level)
                self.assertEqual(self.events[-1].host, MX)
                deferred += 1
            else:
                self.assertEqual(status, RecipientStatus.DELIVERED, (level, result))
                assert result.tls is not None
                self.assertEqual(result.tls.encrypted, expectation == "tls", level)
                delivered[subject] = expectation
        self.assertEqual(len(self.events), deferred)
        messages = await postfix.wait_for_messages(len(delivered))
        seen = {}
        for message in messages:
            found = re.search(rb"^Subject: (.*)$", message, re.M)
            assert found is not None
            received = message.split(b"\nSubject:")[0]
            seen[found.group(1).decode().strip()] = (
                "tls" if b"using TLS" in received and b"with ESMTPS" in received else "clear"
            )
        self.assertEqual(seen, delivered)
        # Postfix counts each session's commands: only the delivered
        # messages ever got a MAIL FROM, whatever the number of sessions.
        sessions = await postfix.settled_sessions(len(delivered))
        self.assertEqual(sum("mail=1" in s for s in sessions), len(delivered), sessions)


class PostfixDestinationTests(PostfixTestCase):
    """
    One Postfix behaviour per test, every TLS setting against it.
    """

    async def test_starttls_offered_valid_certificate(self) -> None:
        """
        Postfix offers STARTTLS with a trusted certificate for the MX name:
        every setting delivers, encrypted except under C{no}; Hosted Verify
        does not accept the MX name (only the email domain or a route), so
        it defers with C{certificate-host-mismatch}.
        """
        postfix = await start_postfix(self, tls="may", certificate=CA.issue([MX]))
        await self.check_matrix(
            postfix,
            {
                DestinationTLS.NO: "clear",
                DestinationTLS.PREFERRED: "tls",
                DestinationTLS.REQUIRED: "tls",
                DestinationTLS.PREFERRED_VERIFY: "tls",
                DestinationTLS.REQUIRED_VERIFY: "tls",
                DestinationTLS.REQUIRED_VERIFY_HOSTED: TLSResultType.CERTIFICATE_HOST_MISMATCH,
            },
        )

    async def test_email_domain_certificate(self) -> None:
        """
        A certificate for the email domain itself satisfies every setting,
        Hosted Verify included.
        """
        postfix = await start_postfix(
            self, tls="encrypt", certificate=CA.issue(["partner.example"])
        )
        await self.check_matrix(
            postfix,
            {
                DestinationTLS.REQUIRED_VERIFY: "tls",
                DestinationTLS.REQUIRED_VERIFY_HOSTED: "tls",
            },
        )

    async def test_starttls_not_offered(self) -> None:
        """
        Postfix without TLS: the settings that allow it deliver in the
        clear; the required ones defer with nothing sent.
        """
        postfix = await start_postfix(self, tls="none")
        await self.check_matrix(
            postfix,
            {
                DestinationTLS.NO: "clear",
                DestinationTLS.PREFERRED: "clear",
                DestinationTLS.REQUIRED: TLSResultType.STARTTLS_NOT_SUPPORTED,
                DestinationTLS.PREFERRED_VERIFY: "clear",
                DestinationTLS.REQUIRED_VERIFY: TLSResultType.STARTTLS_NOT_SUPPORTED,
                DestinationTLS.REQUIRED_VERIFY_HOSTED: TLSResultType.STARTTLS_NOT_SUPPORTED,
            },
        )

    async def test_starttls_stripped(self) -> None:
        """
        Postfix with TLS configured but STARTTLS removed from EHLO (what a
        stripping attacker leaves): the same as not offered.
        """
        postfix = await start_postfix(
            self, tls="may", certificate=CA.issue([MX]), discard_starttls=True
        )
        await self.check_matrix(
            postfix,
            {
                DestinationTLS.PREFERRED: "clear",
                DestinationTLS.REQUIRED: TLSResultType.STARTTLS_NOT_SUPPORTED,
                DestinationTLS.PREFERRED_VERIFY: "clear",
            },
        )

    async def test_handshake_broken(self) -> None:
        """
        Postfix offers STARTTLS but speaks only TLSv1, which the client
        refuses: the handshake fails after the 220.  C{preferred} settings
        reconnect and deliver in the clear; required ones defer.
        """
        postfix = await start_postfix(
            self, tls="may", certificate=CA.issue([MX]), tls_protocols="TLSv1"
        )
        await self.check_matrix(
            postfix,
            {
                DestinationTLS.PREFERRED: "clear",
                DestinationTLS.REQUIRED: TLSResultType.VALIDATION_FAILURE,
                DestinationTLS.PREFERRED_VERIFY: "clear",
                DestinationTLS.REQUIRED_VERIFY: TLSResultType.VALIDATION_FAILURE,
            },
        )

    async def _bad_certificate(
        self, certificate: IssuedCertificate, failure: TLSResultType
    ) -> None:
        postfix = await start_postfix(self, tls="may", certificate=certificate)
        await self.check_matrix(
            postfix,
            {
                DestinationTLS.PREFERRED: "tls",
                DestinationTLS.REQUIRED: "tls",
                DestinationTLS.PREFERRED_VERIFY: "tls",
                DestinationTLS.REQUIRED_VERIFY: failure,
                DestinationTLS.REQUIRED_VERIFY_HOSTED: failure,
            },
        )

    async def test_self_signed(self) -> None:
        """
        A self-signed certificate: encrypted delivery except under the
        required verify settings (C{certificate-not-trusted}).
        """
        await self._bad_certificate(
            self_signed([MX, "partner.example"]), TLSResultType.CERTIFICATE_NOT_TRUSTED
        )

    async def test_expired(self) -> None:
        """
        An expired certificate: C{certificate-expired} under the required
        verify settings.
        """
        await self._bad_certificate(
            expired(CA, [MX, "partner.example"]), TLSResultType.CERTIFICATE_EXPIRED
        )

    async def test_wrong_name(self) -> None:
        """
        A trusted certificate for another name: C{certificate-host-mismatch}.
        """
        await self._bad_certificate(
            CA.issue(["wrong.example"]), TLSResultType.CERTIFICATE_HOST_MISMATCH
        )


class PostfixBodyTests(PostfixTestCase):
    """
    The body reaches a real MTA exactly as stored.
    """

    async def test_dot_at_16k_boundary(self) -> None:
        """
        A line starting with C{.} at offset 16384, followed by what would
        be a smuggled transaction, is stored by Postfix as part of the one
        message; Postfix saw one MAIL FROM.
        """
        postfix = await start_postfix(self)
        body = (
            b"Subject: boundary\r\n\r\n"
            + b"x" * (16384 - 23)
            + b"\r\n.\r\nMAIL FROM:<smuggler@evil.example>\r\n"
            + b"RCPT TO:<victim@partner.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n"
        )
        self.assertEqual(body[16384:16385], b".")
        config = GatewayConfig(system=SystemSettings(hostname="gw.test"))
        result = await deliver_message(
            reactor,
            self.dns.resolver(),
            config,
            "partner.example",
            "sender@gw.test",
            [(1, "rcpt@partner.example")],
            BytesIO(body),
            dcid_allocator=self.dcids.__next__,
            port=postfix.port,
        )
        self.assertEqual(result.recipients[0].status, RecipientStatus.DELIVERED)
        [message] = await postfix.wait_for_messages(1)
        stored = message.replace(b"\r\n", b"\n")
        self.assertTrue(stored.endswith(body.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")))
        sessions = await postfix.settled_sessions(1)
        self.assertEqual(sum("mail=1" in s for s in sessions), 1, sessions)
        self.assertEqual(len(postfix.messages()), 1)


class PostfixClientHarnessTests(TestCase):
    """
    The harness's client mode: Postfix relays what C{sendmail -C} injects
    to a given host and port, with the TLS level asked for.
    """

    async def test_relay_over_tls(self) -> None:
        """
        With C{client_tls="encrypt"}, Postfix relays to the relay host over
        TLS; the capturing server sees the message after STARTTLS.
        """
        from tests.peers.hostile import Script, start_hostile_server

        sink = start_hostile_server(self, Script(certificate=CA.issue(["sink.example"])))
        postfix = await start_postfix(
            self, relayhost=f"[127.0.0.1]:{sink.port}", client_tls="encrypt"
        )
        await postfix.send(
            "alice@client.example",
            ["bob@partner.example"],
            b"Subject: relayed\r\n\r\nthrough Postfix\r\n",
        )
        await postfix.wait_for_log(r"status=sent")
        [(mail_from, rcpts, body)] = sink.capture.messages
        self.assertEqual((mail_from, rcpts), (b"alice@client.example", [b"bob@partner.example"]))
        self.assertIn(b"through Postfix", body)
        self.assertIn(b"MAIL", sink.verbs(over_tls=True))
        self.assertNotIn(b"MAIL", sink.verbs(over_tls=False))
