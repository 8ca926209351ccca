"""
Attacks on the delivery client's STARTTLS, from a hostile server on
loopback, under every Destination Controls TLS setting: response injection
(plaintext sent with or right after the C{220}), and stripping or
downgrade (no STARTTLS, 454, 502, garbage or a reset after the C{220}, an
old protocol, certificates that do not verify).

Every verdict is read on the server side, from the bytes it received: under
a C{required*} setting no C{MAIL FROM} ever arrives in the clear; under
C{preferred*} the fallback is the one issue 4 describes (before the C{220}:
same connection; after it: a new connection in the clear, logged).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import ServerFactory
from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate

from esa_tls.config.model import DestinationTLS
from esa_tls.outbound.result import DeliveryResult, Fallback
from tests.peers.hostile import (
    GARBAGE,
    RESET,
    Capture,
    HostileServer,
    Script,
    _HostileSMTP,
)
from tests.test_outbound_client import (
    DEFERRED,
    DELIVERED,
    EXPIRED,
    GOOD,
    SELF_SIGNED,
    WRONG_NAME,
    DeliveryTestCase,
)

#: The six settings (C{default} only names another destination's).
LEVELS = tuple(level for level in DestinationTLS if level is not DestinationTLS.DEFAULT)

#: A whole forged conversation: the post-TLS EHLO reply (without
#: STARTTLS), then replies to MAIL, RCPT, DATA and the final dot.
FORGED = (
    b"250-forged.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
    b"250 2.1.0 INJECTED MAIL ok\r\n250 2.1.5 INJECTED RCPT ok\r\n"
    b"354 INJECTED go on\r\n250 2.0.0 INJECTED queued\r\n"
)

TRANSACTION = (b"MAIL", b"RCPT", b"DATA")


def _tls_options(script: Script, old_protocol: bool) -> CertificateOptions:
    cert = script.certificate
    assert cert is not None
    private = PrivateCertificate.loadPEM(cert.cert_pem + cert.key_pem)
    chain = [
        Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + part).original
        for part in cert.chain_pem.split(b"-----BEGIN CERTIFICATE-----")[1:]
    ]
    extra: dict[str, Any] = {}
    if old_protocol:
        from twisted.internet.ssl import TLSVersion

        extra = {
            "insecurelyLowerMinimumTo": TLSVersion.TLSv1_0,
            "lowerMaximumSecurityTo": TLSVersion.TLSv1_0,
        }
    options = CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        extraCertChain=chain,
        **extra,
    )
    if old_protocol:
        # Let OpenSSL really speak TLS 1.0 (its default security level
        # refuses it), so that the client is the one that must say no.
        options.getContext().set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    return options


class _LateInjector(_HostileSMTP):
    """
    Answers STARTTLS with C{220}, then, in a later TCP segment and still in
    plaintext, a forged conversation; only then starts TLS.  Or, with
    C{old_protocol}, starts TLS limited to TLS 1.0.
    """

    late: bytes = b""
    old_protocol = False

    def do_STARTTLS(self, line: bytes) -> None:
        transport: Any = self.transport
        transport.write(self.script.starttls_reply + b"\r\n")
        # Read nothing more (the ClientHello waits in the socket) until TLS
        # is started.
        transport.pauseProducing()
        self.clearLineBuffer()
        self.tls = True

        def go_on() -> None:
            if self.late:
                transport.write(self.late)
            transport.startTLS(_tls_options(self.script, self.old_protocol))
            transport.resumeProducing()

        # Long enough for the 220 to leave in its own segment.
        reactor.callLater(0.05, go_on)


def _start(
    case: DeliveryTestCase, script: Script, *, late: bytes = b"", old_protocol: bool = False
) -> HostileServer:
    capture = Capture()

    def build() -> _LateInjector:
        protocol = _LateInjector(script, capture)
        protocol.late = late
        protocol.old_protocol = old_protocol
        return protocol

    factory: Any = ServerFactory.forProtocol(build)
    listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
    case.addCleanup(listening.stopListening)
    case.addCleanup(capture.all_closed)
    return HostileServer(
        listening.getHost().port,  # type: ignore[attr-defined]
        capture,
        script,
        listening,
    )


class _Matrix(DeliveryTestCase):
    """
    Checks shared by the attack matrices.
    """

    def assertNoMailInClear(self, server: HostileServer) -> None:
        """
        Nothing of a mail transaction crossed the wire in plaintext.
        """
        clear = server.verbs(over_tls=False)
        for verb in TRANSACTION:
            self.assertNotIn(verb, clear)

    def assertRequiredHeld(self, result: DeliveryResult, server: HostileServer) -> None:
        """
        A C{required*} setting: deferred (4xx), nothing sent at all, no
        clear reconnection.
        """
        self.assertNoMailInClear(server)
        self.assertNothingSent(server)
        self.assertStatuses(result, DEFERRED)
        self.assertTrue(result.tls_required_failure)
        self.assertEqual(server.capture.connections, 1)

    def assertReconnectedClear(self, result: DeliveryResult, server: HostileServer) -> None:
        """
        Issue 4, failure after the C{220}: the first connection carried
        nothing after STARTTLS; a second one, in the clear and without
        STARTTLS, carried the mail; the fallback is logged.
        """
        self.assertStatuses(result, DELIVERED)
        self.assertEqual(server.capture.connections, 2)
        self.assertEqual(
            server.verbs(), [b"EHLO", b"STARTTLS", b"EHLO", b"MAIL", b"RCPT", b"DATA", b"QUIT"]
        )
        assert result.tls is not None
        self.assertFalse(result.tls.encrypted)
        self.assertEqual(result.tls.fallback, Fallback.RECONNECTED)
        self.assertTrue(any(" TLS failed:" in line for line in self.collector.lines))
        self.assertEqual(len(server.capture.messages), 1)

    def assertSameConnectionClear(
        self, result: DeliveryResult, server: HostileServer, fallback: Fallback
    ) -> None:
        """
        Issue 4, failure before the C{220}: the session goes on in the
        clear on the same connection.
        """
        self.assertStatuses(result, DELIVERED)
        self.assertEqual(server.capture.connections, 1)
        assert result.tls is not None
        self.assertFalse(result.tls.encrypted)
        self.assertEqual(result.tls.fallback, fallback)
        self.assertEqual(len(server.capture.messages), 1)


Scenario = Callable[[Any], Coroutine[Any, Any, None]]


def _each_level(cls: type[_Matrix]) -> type[_Matrix]:
    """
    One test per TLS setting from the class's C{scenario}, so that a
    failure names the setting.
    """

    def make(level: DestinationTLS) -> Scenario:
        async def test(self: Any) -> None:
            await self.scenario(level)

        test.__doc__ = f"{(cls.__doc__ or '').strip()}  (Setting: {level.value}.)"
        return test

    for level in LEVELS:
        setattr(cls, "test_" + level.name.lower(), make(level))
    return cls


@_each_level
class InjectionSameSegmentTests(_Matrix):
    """
    A forged EHLO reply and forged MAIL, RCPT, DATA and end-of-data replies
    follow the C{220} to STARTTLS in the same segment: all are discarded,
    and no command leaves before the real post-TLS EHLO reply.
    """

    async def scenario(self, level: DestinationTLS) -> None:
        server = self.serve(
            certificate=GOOD,
            starttls_reply=b"220 go ahead",
            after_starttls=FORGED,
            hold_ehlo_reply_over_tls=0.2,
        )
        result = await self.deliver(level, server)
        self.assertStatuses(result, DELIVERED)
        self.assertEqual(len(server.capture.messages), 1)
        self.assertEqual(server.capture.messages[0][2], self.body_sent)
        if level is DestinationTLS.NO:
            self.assertNotIn(b"STARTTLS", server.verbs())
            return
        self.assertNoMailInClear(server)
        self.assertEqual(server.capture.premature, [])
        # Over TLS, the first command is EHLO: nothing the forged replies
        # could have answered.
        self.assertEqual(server.verbs(over_tls=True)[:2], [b"EHLO", b"MAIL"])
        assert result.tls is not None
        self.assertTrue(result.tls.encrypted)
        self.assertEqual(result.tls.discarded_plaintext, len(FORGED))

    body_sent = b"Subject: test\r\nFrom: sender@gw.test\r\n\r\nHello.\r\n"


@_each_level
class InjectionNextSegmentTests(_Matrix):
    """
    The forged replies arrive in plaintext in a segment after the C{220},
    where the client already speaks TLS: they break the handshake and are
    never read as replies; required settings defer, preferred ones
    reconnect in the clear.
    """

    async def scenario(self, level: DestinationTLS) -> None:
        server = _start(self, Script(certificate=GOOD), late=FORGED)
        result = await self.deliver(level, server)
        self.assertNotIn(b"MAIL", server.verbs(over_tls=True))
        if level is DestinationTLS.NO:
            self.assertNotIn(b"STARTTLS", server.verbs())
            self.assertStatuses(result, DELIVERED)
        elif level.value.startswith("required"):
            self.assertRequiredHeld(result, server)
        else:
            self.assertReconnectedClear(result, server)


@_each_level
class NotOfferedTests(_Matrix):
    """
    Stripping: the EHLO reply does not offer STARTTLS.
    """

    async def scenario(self, level: DestinationTLS) -> None:
        server = self.serve(certificate=GOOD, ehlo_keywords=(b"PIPELINING",))
        result = await self.deliver(level, server)
        self.assertNotIn(b"STARTTLS", server.verbs())
        if level.value.startswith("required"):
            self.assertRequiredHeld(result, server)
        elif level is DestinationTLS.NO:
            self.assertStatuses(result, DELIVERED)
        else:
            self.assertSameConnectionClear(result, server, Fallback.NOT_OFFERED)


def _refusal(reply: bytes) -> type[_Matrix]:
    class Refused(_Matrix):
        async def scenario(self, level: DestinationTLS) -> None:
            server = self.serve(certificate=GOOD, starttls_reply=reply)
            result = await self.deliver(level, server)
            if level.value.startswith("required"):
                self.assertRequiredHeld(result, server)
            elif level is DestinationTLS.NO:
                self.assertNotIn(b"STARTTLS", server.verbs())
                self.assertStatuses(result, DELIVERED)
            else:
                self.assertSameConnectionClear(result, server, Fallback.REFUSED)
                self.assertEqual(
                    server.verbs(), [b"EHLO", b"STARTTLS", b"MAIL", b"RCPT", b"DATA", b"QUIT"]
                )

    return Refused


@_each_level
class Refused454Tests(_refusal(b"454 4.7.0 TLS not available due to local problem")):  # type: ignore[misc]
    """
    Stripping: STARTTLS is offered, then refused with 454.
    """


@_each_level
class Refused502Tests(_refusal(b"502 5.5.2 Error: command not recognized")):  # type: ignore[misc]
    """
    Stripping: STARTTLS is offered, then refused with 502.
    """


def _broken(**script: Any) -> type[_Matrix]:
    class Broken(_Matrix):
        async def scenario(self, level: DestinationTLS) -> None:
            if "old_protocol" in script:
                server = _start(self, Script(certificate=GOOD), old_protocol=True)
            else:
                server = self.serve(**script)
            result = await self.deliver(level, server)
            self.assertNotIn(b"MAIL", server.verbs(over_tls=True))
            if level.value.startswith("required"):
                self.assertRequiredHeld(result, server)
            elif level is DestinationTLS.NO:
                self.assertNotIn(b"STARTTLS", server.verbs())
                self.assertStatuses(result, DELIVERED)
            else:
                self.assertReconnectedClear(result, server)

    return Broken


@_each_level
class GarbageAfter220Tests(_broken(certificate=GOOD, after_220=GARBAGE)):  # type: ignore[misc]
    """
    Downgrade: plaintext garbage instead of a handshake after the C{220}.
    """


@_each_level
class ResetAfter220Tests(_broken(certificate=GOOD, after_220=RESET)):  # type: ignore[misc]
    """
    Downgrade: the connection is reset right after the C{220}.
    """


@_each_level
class OldProtocolTests(_broken(old_protocol=True)):  # type: ignore[misc]
    """
    Downgrade: the server offers only TLS 1.0, which the client refuses.
    """


def _certificate(issued: Any) -> type[_Matrix]:
    class BadCertificate(_Matrix):
        async def scenario(self, level: DestinationTLS) -> None:
            server = self.serve(certificate=issued)
            result = await self.deliver(level, server)
            if level is DestinationTLS.NO:
                self.assertNotIn(b"STARTTLS", server.verbs())
                self.assertStatuses(result, DELIVERED)
                return
            self.assertNoMailInClear(server)
            if level in (DestinationTLS.REQUIRED_VERIFY, DestinationTLS.REQUIRED_VERIFY_HOSTED):
                self.assertRequiredHeld(result, server)
                return
            self.assertStatuses(result, DELIVERED)
            assert result.tls is not None
            # Encrypted, and under preferred-verify logged as unverified.
            self.assertTrue(result.tls.encrypted)
            self.assertFalse(result.tls.verified)
            self.assertEqual(server.capture.connections, 1)

    return BadCertificate


@_each_level
class SelfSignedTests(_certificate(SELF_SIGNED)):  # type: ignore[misc]
    """
    A self-signed certificate: only the C{required-verify*} settings hold
    the mail back; the others deliver encrypted.
    """


@_each_level
class ExpiredTests(_certificate(EXPIRED)):  # type: ignore[misc]
    """
    An expired certificate from the trusted CA: only the
    C{required-verify*} settings hold the mail back.
    """


@_each_level
class WrongNameTests(_certificate(WRONG_NAME)):  # type: ignore[misc]
    """
    A trusted certificate for another name: only the C{required-verify*}
    settings hold the mail back.
    """
