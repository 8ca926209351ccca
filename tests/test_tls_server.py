"""
Tests for L{esa_tls.tls.server}: real TLS handshakes over loopback between a
listener's connection creator and real clients (Python's C{ssl} module and
C{openssl s_client}).
"""

from __future__ import annotations

import os
import socket
import ssl
import struct

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from esa_tls.testing import CertificateAuthority, IssuedCertificate, self_signed
from esa_tls.tls.server import TLSConfigurationError
from esa_tls.tls.store import CertificateStore
from tests.test_tls_support import (
    client_context,
    install,
    make_config,
    make_listener,
    python_client,
    s_client,
    serve,
    serve_starttls,
    write_pem,
)


def der(issued: IssuedCertificate) -> bytes:
    return issued.certificate.public_bytes(Encoding.DER)


class ServerFixture:
    """
    A CA, a certificate C{main} for C{mx.example.test} and a second one,
    C{other}, for C{mx2.example.test}, in a store.
    """

    def setUpCertificates(self, test: TestCase, key_type: str = "ec") -> None:
        base = test.mktemp()
        self.base = base
        self.ca = CertificateAuthority.generate()
        self.cafile = write_pem(os.path.join(_mkdir(base), "ca.pem"), self.ca.cert_pem)
        self.main = self.ca.issue(["mx.example.test"], key_type=key_type)  # type: ignore[arg-type]
        self.other = self.ca.issue(["mx2.example.test"])
        self.certificates = [
            install("main", self.main, os.path.join(base, "main")),
            install("other", self.other, os.path.join(base, "other")),
        ]

    def store(self, *listeners: object) -> CertificateStore:
        config = make_config(
            os.path.join(self.base, "data"),
            self.certificates,
            listeners,  # type: ignore[arg-type]
        )
        return CertificateStore(config)


def _mkdir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


class ProtocolAndCipherTests(TestCase, ServerFixture):
    """
    The protocol floor is TLS 1.2 and the default TLS 1.2 suites are ECDHE
    with AEAD ciphers.
    """

    def setUp(self) -> None:
        self.setUpCertificates(self)

    async def test_tls13(self) -> None:
        """
        A modern client negotiates TLS 1.3 and verifies the listener's
        certificate for its host name; the server reports the same protocol.
        """
        listener = make_listener(certificate="main")
        port, factory = serve(self, self.store(listener).server_creator(listener))
        result = await python_client(port, server_hostname="mx.example.test", cafile=self.cafile)
        self.assertEqual(result.version, "TLSv1.3")
        self.assertEqual(result.peer_der, der(self.main))
        self.assertTrue(result.data.startswith(b"OK TLSv1.3 "))
        outcome = await factory.outcomes.get()
        assert outcome.info is not None
        self.assertEqual(outcome.info.protocol, "TLSv1.3")
        self.assertEqual(outcome.info.cipher, result.cipher)

    async def test_tls12_ecdhe_aead(self) -> None:
        """
        A TLS 1.2 client gets an ECDHE key exchange with an AEAD cipher
        (GCM or ChaCha20-Poly1305).
        """
        listener = make_listener(certificate="main")
        port, _factory = serve(self, self.store(listener).server_creator(listener))
        result = await python_client(port, maximum=ssl.TLSVersion.TLSv1_2)
        self.assertEqual(result.version, "TLSv1.2")
        assert result.cipher is not None
        self.assertTrue(result.cipher.startswith("ECDHE-"), result.cipher)
        self.assertTrue("GCM" in result.cipher or "CHACHA20" in result.cipher, result.cipher)

    async def test_tls12_rsa_certificate(self) -> None:
        """
        With an RSA certificate TLS 1.2 still uses ECDHE (ECDHE-RSA), and a
        client offering only static-RSA key exchange is refused.
        """
        self.setUpCertificates(self, key_type="rsa")
        listener = make_listener(certificate="main")
        port, factory = serve(self, self.store(listener).server_creator(listener))
        result = await python_client(port, maximum=ssl.TLSVersion.TLSv1_2)
        self.assertTrue(result.cipher and result.cipher.startswith("ECDHE-RSA-"), result.cipher)
        await self.assertFailure(
            python_client(port, maximum=ssl.TLSVersion.TLSv1_2, ciphers="AES128-GCM-SHA256"),
            ssl.SSLError,
        )
        await factory.outcomes.get()
        outcome = await factory.outcomes.get()
        self.assertIsNotNone(outcome.failure)

    async def test_floor_refuses_tls11(self) -> None:
        """
        A client that can do at most TLS 1.1 is refused by the default
        listener: the handshake fails on both sides.
        """
        listener = make_listener(certificate="main")
        port, factory = serve(self, self.store(listener).server_creator(listener))
        await self.assertFailure(
            python_client(
                port,
                minimum=ssl.TLSVersion.TLSv1,
                maximum=ssl.TLSVersion.TLSv1_1,
                ciphers="ALL:@SECLEVEL=0",
            ),
            ssl.SSLError,
            ConnectionResetError,
        )
        outcome = await factory.outcomes.get()
        self.assertIsNone(outcome.info)
        self.assertIsNotNone(outcome.failure)

    async def test_listener_lowers_floor(self) -> None:
        """
        A listener that explicitly enables TLS 1.1 accepts the same TLS 1.1
        client: the refusal above is the listener's floor, not the client's.
        """
        listener = make_listener(certificate="main", tls_protocols=("TLSv1.1", "TLSv1.2"))
        port, _factory = serve(self, self.store(listener).server_creator(listener))
        result = await python_client(
            port,
            minimum=ssl.TLSVersion.TLSv1,
            maximum=ssl.TLSVersion.TLSv1_1,
            ciphers="ALL:@SECLEVEL=0",
        )
        self.assertEqual(result.version, "TLSv1.1")

    async def test_tls13_only(self) -> None:
        """
        A listener with C{tls_protocols = ["TLSv1.3"]} refuses a TLS 1.2
        client.
        """
        listener = make_listener(certificate="main", tls_protocols=("TLSv1.3",))
        port, _factory = serve(self, self.store(listener).server_creator(listener))
        await self.assertFailure(python_client(port, maximum=ssl.TLSVersion.TLSv1_2), ssl.SSLError)

    async def test_ciphers_override(self) -> None:
        """
        C{tls_ciphers} replaces the TLS 1.2 suite list.
        """
        listener = make_listener(certificate="main", tls_ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")
        port, _factory = serve(self, self.store(listener).server_creator(listener))
        result = await python_client(port, maximum=ssl.TLSVersion.TLSv1_2)
        self.assertEqual(result.cipher, "ECDHE-ECDSA-AES256-GCM-SHA384")

    def test_bad_settings(self) -> None:
        """
        Unknown protocol names and cipher strings OpenSSL rejects fail when
        the creator is made (at start-up), not at the first handshake.
        """
        store = self.store()
        for listener in [
            make_listener(certificate="main", tls_protocols=("SSLv3",)),
            make_listener(certificate="main", tls_protocols=()),
            make_listener(certificate="main", tls_ciphers="NO-SUCH-CIPHER"),
        ]:
            self.assertRaises(TLSConfigurationError, store.server_creator, listener)

    async def test_openssl_s_client(self) -> None:
        """
        C{openssl s_client} negotiates TLS 1.3 and verifies the chain.
        """
        listener = make_listener(certificate="main")
        port, _factory = serve(self, self.store(listener).server_creator(listener))
        out = await s_client(
            port, "-servername", "mx.example.test", "-CAfile", self.cafile, "-verify_return_error"
        )
        self.assertIn("Verify return code: 0 (ok)", out)
        self.assertIn("TLSv1.3", out)
        self.assertIn("OK TLSv1.3", out)


class StartTLSTests(TestCase, ServerFixture):
    """
    The creator works with C{transport.startTLS}, as the SMTP session uses
    it, and the session can read the TLS details from its own transport.
    """

    def setUp(self) -> None:
        self.setUpCertificates(self)

    async def test_starttls(self) -> None:
        """
        After a plaintext exchange, TLS starts on the same connection and
        the server's transport reports the negotiated protocol.
        """
        listener = make_listener(certificate="main")
        port, factory = serve_starttls(self, self.store(listener).server_creator(listener))
        result = await python_client(
            port, server_hostname="mx.example.test", cafile=self.cafile, starttls=True
        )
        self.assertEqual(result.peer_der, der(self.main))
        outcome = await factory.outcomes.get()
        assert outcome.info is not None
        self.assertEqual(outcome.info.protocol, result.version)


class SNITests(TestCase, ServerFixture):
    """
    The client's server name picks the certificate from the listener's
    C{sni} map; the listener's own certificate is the default.
    """

    def setUp(self) -> None:
        self.setUpCertificates(self)
        self.listener = make_listener(
            certificate="main", sni={"mx2.example.test": "other", ".example.org": "other"}
        )
        self.port, self.factory = serve(
            self, self.store(self.listener).server_creator(self.listener)
        )

    async def test_mapped_name(self) -> None:
        """
        A client asking for C{mx2.example.test} gets the C{other}
        certificate and verifies it for that name.
        """
        result = await python_client(
            self.port, server_hostname="mx2.example.test", cafile=self.cafile
        )
        self.assertEqual(result.peer_der, der(self.other))

    async def test_parent_domain(self) -> None:
        """
        A C{.example.org} key serves every name under example.org.
        """
        result = await python_client(self.port, server_hostname="a.b.example.org")
        self.assertEqual(result.peer_der, der(self.other))

    async def test_case_insensitive(self) -> None:
        """
        Server names are matched without regard to case.
        """
        result = await python_client(self.port, server_hostname="MX2.Example.Test")
        self.assertEqual(result.peer_der, der(self.other))

    async def test_default(self) -> None:
        """
        An unknown name, and no name at all, get the listener's certificate.
        """
        result = await python_client(self.port, server_hostname="unknown.example.test")
        self.assertEqual(result.peer_der, der(self.main))
        result = await python_client(self.port)
        self.assertEqual(result.peer_der, der(self.main))

    async def test_not_a_host_name(self) -> None:
        """
        A server name that is no host name (a CR LF in it, which OpenSSL
        lets a client send) matches no key, not even C{.example.org}: it
        gets the listener's certificate, and can never be written to a
        log line as a mapped name.
        """

        def peer(name: bytes) -> bytes:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            # Blocking for pyOpenSSL, which has no use for Python's timeouts,
            # but never for ever.
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
            try:
                connection = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), sock)
                connection.set_tlsext_host_name(name)
                connection.set_connect_state()
                connection.do_handshake()
                certificate = connection.get_peer_certificate()
                assert certificate is not None
                return certificate.to_cryptography().public_bytes(Encoding.DER)
            finally:
                sock.close()

        self.assertEqual((await deferToThread(peer, b"a.example.org")), der(self.other))
        self.assertEqual(
            (await deferToThread(peer, b"x\r\nforged: line.example.org")), der(self.main)
        )

    async def test_openssl_servername(self) -> None:
        """
        C{openssl s_client -servername} sees the mapped certificate's
        subject, and the default one without a match.
        """
        out = await s_client(self.port, "-servername", "mx2.example.test")
        self.assertIn("CN = mx2.example.test", out)
        out = await s_client(self.port, "-servername", "nomatch.example.test")
        self.assertIn("CN = mx.example.test", out)


class NoSNITests(TestCase, ServerFixture):
    """
    A listener without C{sni} names serves its own certificate whatever
    name the client asks for (no server name callback runs at all).
    """

    def setUp(self) -> None:
        self.setUpCertificates(self)
        self.listener = make_listener(certificate="main")
        self.port, self.factory = serve(
            self, self.store(self.listener).server_creator(self.listener)
        )

    async def test_ownCertificate(self) -> None:
        """
        Asking for another certificate's name, or for none, gets the
        listener's certificate.
        """
        for name in ("mx2.example.test", None):
            result = await python_client(self.port, server_hostname=name)
            self.assertEqual(result.peer_der, der(self.main))


class ClientCertificateTests(TestCase, ServerFixture):
    """
    Verify Client Certificate: in request mode the handshake always
    completes and the session learns whether a certificate was presented and
    verified; in require mode only a valid certificate gets through.
    """

    def setUp(self) -> None:
        self.setUpCertificates(self)
        good = self.ca.issue(["client.example.test"], client=True)
        self.good = good.write(os.path.join(self.base, "good"))[:2]
        stranger = CertificateAuthority.generate("Stranger CA").issue(
            ["client.example.test"], client=True
        )
        self.bad = stranger.write(os.path.join(self.base, "bad"))[:2]
        lone = self_signed(["client.example.test"])
        self.lone = lone.write(os.path.join(self.base, "lone"))[:2]
        self.listener = make_listener(certificate="main")
        self.store_ = self.store(self.listener)

    def serve_mode(self, require: bool, oneshot: bool = True) -> tuple[int, object]:
        creator = self.store_.server_creator(
            self.listener, client_ca=self.cafile, require_client_certificate=require
        )
        return serve(self, creator, oneshot)

    async def test_request_valid(self) -> None:
        """
        Request mode, valid certificate: presented and verified, with its
        subject.
        """
        port, factory = serve(
            self, self.store_.server_creator(self.listener, client_ca=self.cafile)
        )
        result = await python_client(port, cert=self.good)
        self.assertIn(b"presented=True verified=True", result.data)
        outcome = await factory.outcomes.get()
        assert outcome.status is not None
        self.assertEqual(outcome.status.subject, "CN=client.example.test")
        self.assertIsNone(outcome.status.error)

    async def test_request_none(self) -> None:
        """
        Request mode, no certificate: the handshake completes and the
        session sees none presented (a Preferred client may go on).
        """
        port, _factory = serve(
            self, self.store_.server_creator(self.listener, client_ca=self.cafile)
        )
        result = await python_client(port)
        self.assertIn(b"presented=False verified=False", result.data)

    async def test_request_invalid(self) -> None:
        """
        Request mode, a certificate from an unknown CA: the handshake
        completes but the session sees it presented and not verified, with
        the reason (so a Preferred session can refuse the client).
        """
        port, factory = serve(
            self, self.store_.server_creator(self.listener, client_ca=self.cafile)
        )
        result = await python_client(port, cert=self.bad)
        self.assertIn(b"presented=True verified=False", result.data)
        outcome = await factory.outcomes.get()
        assert outcome.status is not None
        self.assertIn("unable to get local issuer certificate", outcome.status.error or "")

    async def test_request_invalid_resumed(self) -> None:
        """
        A client whose invalid certificate was let through cannot look
        verified by resuming that TLS session.
        """
        for maximum in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            port, _factory = serve(
                self, self.store_.server_creator(self.listener, client_ca=self.cafile)
            )
            context = client_context(cert=self.lone, maximum=maximum)
            first = await python_client(port, context=context)
            second = await python_client(port, context=context, session=first.session)
            self.assertTrue(second.reused)
            self.assertIn(b"presented=True verified=False", second.data)

    async def test_request_valid_resumed(self) -> None:
        """
        A resumed session of a verified certificate is still verified.
        """
        port, _factory = serve(
            self, self.store_.server_creator(self.listener, client_ca=self.cafile)
        )
        context = client_context(cert=self.good)
        first = await python_client(port, context=context)
        second = await python_client(port, context=context, session=first.session)
        self.assertTrue(second.reused)
        self.assertIn(b"presented=True verified=True", second.data)

    async def test_require_valid(self) -> None:
        """
        Require mode admits a valid certificate (C{openssl s_client -cert}).
        """
        port, _factory = self.serve_mode(require=True)
        out = await s_client(port, "-cert", self.good[0], "-key", self.good[1])
        self.assertIn("presented=True verified=True", out)

    async def test_require_absent(self) -> None:
        """
        Require mode refuses a client without a certificate: the server's
        handshake fails and the client is never served.
        """
        port, factory = self.serve_mode(require=True)
        out = await s_client(port)
        self.assertNotIn("presented=", out)
        outcome = await factory.outcomes.get()  # type: ignore[attr-defined]
        self.assertIsNone(outcome.info)
        self.assertIn("peer did not return a certificate", outcome.failure)

    async def test_require_invalid(self) -> None:
        """
        Require mode refuses a certificate from an unknown CA.
        """
        port, factory = self.serve_mode(require=True)
        out = await s_client(port, "-cert", self.bad[0], "-key", self.bad[1])
        self.assertNotIn("presented=", out)
        outcome = await factory.outcomes.get()  # type: ignore[attr-defined]
        self.assertIsNone(outcome.info)
        self.assertIn("certificate verify failed", outcome.failure)

    async def test_openssl_request_modes(self) -> None:
        """
        Request mode with C{openssl s_client}: valid, invalid and absent
        client certificates all complete the handshake and are told apart.
        """
        port, _factory = self.serve_mode(require=False)
        out = await s_client(port, "-cert", self.good[0], "-key", self.good[1])
        self.assertIn("presented=True verified=True", out)
        out = await s_client(port, "-cert", self.bad[0], "-key", self.bad[1])
        self.assertIn("presented=True verified=False", out)
        out = await s_client(port)
        self.assertIn("presented=False verified=False", out)

    async def test_require_system_cas(self) -> None:
        """
        Requiring client certificates without a client CA file checks them
        against the system's trusted CAs (C{listenerconfig}'s C{system}),
        which know nothing of a private CA.
        """
        port, factory = serve(
            self, self.store_.server_creator(self.listener, require_client_certificate=True)
        )
        out = await s_client(port, "-cert", self.good[0], "-key", self.good[1])
        self.assertNotIn("presented=", out)
        outcome = await factory.outcomes.get()  # type: ignore[attr-defined]
        self.assertIn("certificate verify failed", outcome.failure)


class ResumptionTests(TestCase, ServerFixture):
    """
    TLS session resumption is on, for TLS 1.2 and TLS 1.3.
    """

    def setUp(self) -> None:
        self.setUpCertificates(self)

    async def test_resumption(self) -> None:
        """
        A client offering its previous session resumes it.
        """
        listener = make_listener(certificate="main")
        port, _factory = serve(self, self.store(listener).server_creator(listener))
        for maximum in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            context = client_context(maximum=maximum)
            first = await python_client(port, context=context)
            self.assertFalse(first.reused)
            second = await python_client(port, context=context, session=first.session)
            self.assertTrue(second.reused, maximum)

    async def test_same_creator(self) -> None:
        """
        Asking the store again for the same listener's creator (as a session
        does at each STARTTLS) gives one that resumes the same sessions.
        """
        listener = make_listener(certificate="main")
        store = self.store(listener)
        port1, _ = serve(self, store.server_creator(listener))
        port2, _ = serve(self, store.server_creator(listener))
        context = client_context()
        first = await python_client(port1, context=context)
        second = await python_client(port2, context=context, session=first.session)
        self.assertTrue(second.reused)
