"""
Inbound TLS per mail flow policy (issue 3) over real loopback TLS: the
seed's No / Preferred / Required, STARTTLS that cannot be tricked, implicit
TLS, client certificates, and interoperability with swaks and openssl.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.names.client import Resolver
from twisted.trial.unittest import TestCase

from esa_tls.config.load import parse_config_with_warnings
from esa_tls.inbound.listener import BUSY_LINGER
from esa_tls.service import GatewayService
from esa_tls.testing import CertificateAuthority, expired
from tests.support import BASE, Gateway, Raw, in_thread, require, smtp_send, wait_until


def listener(tls: str, extra: str = "", protocol: str = "SMTP") -> str:
    return f"""
[listeners.InboundMail]
type = "public"
interface = "Loopback"
port = 2525
protocol = "{protocol}"
rat = ["example.com"]
certificate = "MX"

[listeners.InboundMail.policies.default]
tls = "{tls}"
{extra}
"""


class TLSGatewayMixin:
    """
    Builds a gateway whose listener serves a certificate from a test CA.
    """

    def gateway(
        self: Any,
        tls: str,
        extra: str = "",
        protocol: str = "SMTP",
        users: str = "",
        clock: bool = False,
    ) -> Gateway:
        self.ca = CertificateAuthority.generate()
        directory = os.path.abspath(self.mktemp())
        cert, key, chain = self.ca.issue(["mx.test.example"]).write(directory)
        self.ca_file = os.path.join(directory, "ca.pem")
        with open(self.ca_file, "wb") as f:
            f.write(self.ca.cert_pem)
        certificates = f'[certificates.MX]\ncert = "{cert}"\nkey = "{key}"\nchain = "{chain}"\n'
        return Gateway(
            self, listener(tls, extra, protocol), extra_base=certificates, users=users, clock=clock
        )

    def client_context(self: Any, cert: Any = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        context.check_hostname = True
        if cert is not None:
            directory = os.path.abspath(self.mktemp())
            cert_path, key_path, _ = cert.write(directory)
            context.load_cert_chain(cert_path, key_path)
        return context


def session(
    port: int, before: list[bytes], after: list[bytes], context: ssl.SSLContext | None
) -> list[bytes]:
    """
    Greeting, commands in the clear, STARTTLS (if C{context}), commands
    inside TLS; one reply per command.
    """
    raw = Raw(port)
    try:
        out = [raw.reply()]
        for c in before:
            out.append(raw.chat(c))
        if context is not None:
            out.append(raw.chat(b"STARTTLS\r\n"))
            raw.starttls(context, server_hostname="mx.test.example")
            for c in after:
                out.append(raw.chat(c))
        return out
    finally:
        raw.close()


def after_handshake(port: int, context: ssl.SSLContext) -> bytes:
    """
    EHLO, STARTTLS and a handshake with C{context}, then everything the
    server sends until it closes (a refusal of the client's certificate
    comes once the handshake is done).
    """
    raw = Raw(port)
    try:
        raw.reply()
        raw.chat(b"EHLO c\r\n")
        raw.chat(b"STARTTLS\r\n")
        raw.starttls(context, server_hostname="mx.test.example")
        return raw.rest()
    finally:
        raw.close()


class ModeTests(TLSGatewayMixin, TestCase):
    @inlineCallbacks
    def test_off(self) -> Any:
        """
        TLS off: STARTTLS is not advertised, the command gets a non-2xx
        reply and the session goes on in the clear.
        """
        gw = self.gateway("off")
        replies = yield in_thread(
            session, gw.port, [b"EHLO c\r\n", b"STARTTLS\r\n", b"NOOP\r\n"], [], None
        )
        self.assertNotIn(b"STARTTLS", replies[1])
        self.assertEqual(replies[2], b"502 5.5.1 STARTTLS not available\r\n")
        self.assertEqual(replies[3], b"250 2.0.0 Ok\r\n")

    @inlineCallbacks
    def test_preferred(self) -> Any:
        """
        Preferred: STARTTLS is advertised; mail is accepted both in the clear
        and over TLS, and the TLS one's C{Received:} header and the mail log
        record the protocol and cipher.
        """
        gw = self.gateway("preferred")
        clear = yield in_thread(
            smtp_send, gw.port, "a@b.test", ["u@example.com"], b"Subject: clear\r\n\r\nx\r\n"
        )
        self.assertEqual(clear, {})
        replies = yield in_thread(
            session,
            gw.port,
            [b"EHLO c\r\n"],
            [
                b"EHLO c\r\n",
                b"MAIL FROM:<a@b.test>\r\n",
                b"RCPT TO:<u@example.com>\r\n",
                b"DATA\r\n",
                b"Subject: tls\r\n\r\nx\r\n.\r\n",
            ],
            self.client_context(),
        )
        self.assertRegex(replies[1], rb"\r\n250[ -]STARTTLS\r\n")
        self.assertEqual(replies[2], b"220 2.0.0 Ready to start TLS\r\n")
        self.assertNotIn(b"STARTTLS", replies[3])
        self.assertTrue(replies[7].startswith(b"250 2.0.0 Ok: Message "))
        bodies = [gw.body(q.mid) for q in gw.queued()]
        (tls_body,) = [b for b in bodies if b"Subject: tls" in b]
        self.assertIn(b"with ESMTPS", tls_body)
        self.assertRegex(tls_body, rb"\(using TLSv1\.3 with cipher TLS_[A-Z0-9_]+\)")
        self.assertTrue(
            any(
                line.startswith("ICID 2 TLS success protocol TLSv1.3 cipher TLS_")
                for line in gw.lines
            )
        )
        (clear_body,) = [b for b in bodies if b"Subject: clear" in b]
        self.assertNotIn(b"using TLS", clear_body)

    @inlineCallbacks
    def test_mandatorySenders(self) -> Any:
        """
        Preferred with C{tls_mandatory_senders}: a listed sender is refused
        with 530 5.7.0 in the clear and accepted over TLS; others may send
        in the clear.
        """
        gw = self.gateway(
            "preferred", 'tls_mandatory_senders = ["@.bank.example", "ceo@corp.example"]'
        )
        replies = yield in_thread(
            session,
            gw.port,
            [
                b"EHLO c\r\n",
                b"MAIL FROM:<x@mail.bank.example>\r\n",
                b"MAIL FROM:<ceo@corp.example>\r\n",
                b"MAIL FROM:<intern@corp.example>\r\n",
                b"RSET\r\n",
            ],
            [b"EHLO c\r\n", b"MAIL FROM:<x@mail.bank.example>\r\n"],
            self.client_context(),
        )
        self.assertTrue(
            replies[2].startswith(b"530 5.7.0 Must issue a STARTTLS command first"), replies[2]
        )
        self.assertTrue(replies[3].startswith(b"530 5.7.0 "))
        self.assertEqual(replies[4], b"250 2.1.0 Ok\r\n")
        self.assertEqual(replies[8], b"250 2.1.0 Ok\r\n")

    @inlineCallbacks
    def test_required(self) -> Any:
        """
        Required: before TLS everything but EHLO, NOOP, STARTTLS and QUIT
        gets C{530 5.7.0 Must issue a STARTTLS command first} (HELO too);
        after TLS the session works normally.
        """
        gw = self.gateway("required")
        refused = [
            b"HELO c\r\n",
            b"MAIL FROM:<a@b.test>\r\n",
            b"RCPT TO:<u@example.com>\r\n",
            b"DATA\r\n",
            b"RSET\r\n",
            b"VRFY u\r\n",
            b"HELP\r\n",
            b"AUTH PLAIN\r\n",
        ]
        replies = yield in_thread(
            session,
            gw.port,
            [b"EHLO c\r\n", b"NOOP\r\n", *refused],
            [
                b"EHLO c\r\n",
                b"MAIL FROM:<a@b.test>\r\n",
                b"RCPT TO:<u@example.com>\r\n",
                b"DATA\r\n",
                b"x\r\n.\r\n",
                b"QUIT\r\n",
            ],
            self.client_context(),
        )
        self.assertRegex(replies[1], rb"\r\n250[ -]STARTTLS\r\n")
        self.assertEqual(replies[2], b"250 2.0.0 Ok\r\n")
        for reply in replies[3:11]:
            self.assertEqual(reply, b"530 5.7.0 Must issue a STARTTLS command first\r\n")
        self.assertTrue(replies[16].startswith(b"250 2.0.0 Ok: Message "))
        self.assertEqual(replies[17], b"221 2.0.0 Bye\r\n")
        self.assertEqual(len(gw.queued()), 1)

    @inlineCallbacks
    def test_requiredNoMessageInClear(self) -> Any:
        """
        Required: a client that never starts TLS cannot get one byte of a
        message accepted, even pipelining a whole transaction.
        """
        gw = self.gateway("required")

        def talk() -> bytes:
            raw = Raw(gw.port)
            raw.reply()
            raw.send(
                b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@example.com>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n"
            )
            return raw.rest()

        data = yield in_thread(talk)
        self.assertEqual(data.count(b"530 5.7.0 Must issue a STARTTLS command first"), 3)
        self.assertNotIn(b"354", data)
        self.assertNotIn(b"Ok: Message", data)
        self.assertEqual(gw.queued(), [])


class STARTTLSTests(TLSGatewayMixin, TestCase):
    @inlineCallbacks
    def test_injectionDiscarded(self) -> Any:
        """
        Plaintext pipelined behind STARTTLS (CVE-2011-0411) is discarded:
        after the handshake the first reply is to the first command sent
        inside TLS.
        """
        gw = self.gateway("preferred")
        context = self.client_context()

        def talk() -> list[bytes]:
            raw = Raw(gw.port)
            raw.reply()
            raw.chat(b"EHLO c\r\n")
            raw.send(b"STARTTLS\r\nHELP\r\nMAIL FROM:<injected@evil.test>\r\n")
            ready = raw.reply()
            raw.starttls(context, server_hostname="mx.test.example")
            first = raw.chat(b"NOOP\r\n")
            second = raw.chat(b"EHLO c\r\n")
            third = raw.chat(b"RCPT TO:<u@example.com>\r\n")
            raw.close()
            return [ready, first, second, third]

        ready, first, second, third = yield in_thread(talk)
        self.assertEqual(ready, b"220 2.0.0 Ready to start TLS\r\n")
        self.assertEqual(first, b"250 2.0.0 Ok\r\n")
        self.assertTrue(second.startswith(b"250-mx.test.example"))
        self.assertEqual(third, b"503 5.5.1 Error: need MAIL command\r\n")

    @inlineCallbacks
    def test_stateReset(self) -> Any:
        """
        After the handshake the session is as after the greeting: EHLO is
        needed again, and MAIL given before TLS is forgotten.
        """
        gw = self.gateway("preferred")
        replies = yield in_thread(
            session,
            gw.port,
            [b"EHLO c\r\n", b"MAIL FROM:<a@b.test>\r\n"],
            [b"MAIL FROM:<a@b.test>\r\n", b"EHLO c\r\n", b"RCPT TO:<u@example.com>\r\n"],
            self.client_context(),
        )
        self.assertEqual(replies[2], b"250 2.1.0 Ok\r\n")
        self.assertEqual(replies[4], b"503 5.5.1 Error: send HELO/EHLO first\r\n")
        self.assertEqual(replies[6], b"503 5.5.1 Error: need MAIL command\r\n")

    @inlineCallbacks
    def test_parametersAndRepeat(self) -> Any:
        """
        STARTTLS with parameters gets 501; once TLS is up it is neither
        advertised nor accepted.
        """
        gw = self.gateway("required")
        replies = yield in_thread(
            session,
            gw.port,
            [b"EHLO c\r\n", b"STARTTLS now\r\n"],
            [b"EHLO c\r\n", b"STARTTLS\r\n"],
            self.client_context(),
        )
        self.assertEqual(replies[2], b"501 5.5.4 Syntax: STARTTLS takes no parameters\r\n")
        self.assertNotIn(b"STARTTLS", replies[4])
        self.assertEqual(replies[5], b"503 5.5.1 TLS already active\r\n")

    @inlineCallbacks
    def test_failedHandshake(self) -> Any:
        """
        A handshake that fails closes the connection, is logged as
        C{TLS failed}, and no mail is accepted.
        """
        gw = self.gateway("required")

        def talk() -> bytes:
            raw = Raw(gw.port)
            raw.reply()
            raw.chat(b"EHLO c\r\n")
            raw.chat(b"STARTTLS\r\n")
            raw.send(b"this is not a TLS ClientHello\r\n" * 10)
            return raw.rest()

        rest = yield in_thread(talk)
        self.assertNotIn(b"250", rest)
        self.assertTrue(any(line.startswith("ICID 1 TLS failed: ") for line in gw.lines), gw.lines)
        self.assertIn("ICID 1 close", gw.lines)

    @inlineCallbacks
    def test_implicitTLSBusyClosed(self) -> Any:
        """
        On a full SMTPS listener, a connection turned away whose client
        never makes the handshake (so never reads the 421) is still
        closed, after L{BUSY_LINGER} seconds, rather than held for ever.
        """
        gw = self.gateway("required", extra="", protocol="SMTPS", clock=True)
        gw.factory.config = attrs.evolve(gw.factory.config, max_concurrency=1)
        first = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        self.addCleanup(first.close)
        while len(gw.factory.sessions) < 1:
            yield deferLater(reactor, 0.01, lambda: None)
        second = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        self.addCleanup(second.close)

        def state(wait: float) -> str:
            second.settimeout(wait)
            try:
                return "closed" if second.recv(100) == b"" else "data"
            except TimeoutError:
                return "open"
            except ConnectionResetError:
                return "closed"

        self.assertEqual((yield in_thread(state, 0.5)), "open")
        gw.clock.advance(BUSY_LINGER)
        self.assertEqual((yield in_thread(state, 5)), "closed")
        self.assertEqual(len(gw.factory.sessions), 1)

    @inlineCallbacks
    def test_implicitTLS(self) -> Any:
        """
        An SMTPS listener (RFC 8314) speaks TLS from the first byte and never
        offers STARTTLS inside it.
        """
        gw = self.gateway("required", protocol="SMTPS")
        context = self.client_context()

        def talk() -> list[bytes]:
            raw = Raw(gw.port)
            raw.starttls(context, server_hostname="mx.test.example")
            out = [
                raw.reply(),
                raw.chat(b"EHLO c\r\n"),
                raw.chat(b"STARTTLS\r\n"),
                raw.chat(b"MAIL FROM:<a@b.test>\r\n"),
            ]
            raw.close()
            return out

        banner, ehlo, starttls, mail = yield in_thread(talk)
        self.assertTrue(banner.startswith(b"220 mx.test.example"))
        self.assertNotIn(b"STARTTLS", ehlo)
        self.assertEqual(starttls, b"503 5.5.1 TLS already active\r\n")
        self.assertEqual(mail, b"250 2.1.0 Ok\r\n")


class ClientCertificateTests(TLSGatewayMixin, TestCase):
    def verifying(self, tls: str) -> Gateway:
        # The client CA file is written by gateway(); it must exist before the
        # config naming it is loaded, so make the CA first.
        ca = CertificateAuthority.generate()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        client_ca = os.path.join(directory, "clients.pem")
        with open(client_ca, "wb") as f:
            f.write(ca.cert_pem)
        self.client_ca = ca
        return self.gateway(tls, f'verify_client_certificate = true\nclient_ca = "{client_ca}"')

    @inlineCallbacks
    def test_preferredVerify(self) -> Any:
        """
        Preferred + Verify Client Certificate: no certificate may go on, a
        valid one goes on, an invalid one is turned away.
        """
        gw = self.verifying("preferred")
        good = self.client_ca.issue(["client.test"], client=True)
        bad = CertificateAuthority.generate().issue(["client.test"], client=True)
        after = [b"EHLO c\r\n", b"NOOP\r\n"]
        none_ = yield in_thread(session, gw.port, [b"EHLO c\r\n"], after, self.client_context())
        self.assertEqual(none_[-1], b"250 2.0.0 Ok\r\n")
        valid = yield in_thread(session, gw.port, [b"EHLO c\r\n"], after, self.client_context(good))
        self.assertEqual(valid[-1], b"250 2.0.0 Ok\r\n")
        refused = yield in_thread(after_handshake, gw.port, self.client_context(bad))
        self.assertIn(b"421 4.7.1 mx.test.example Client certificate not accepted\r\n", refused)

    @inlineCallbacks
    def test_requiredVerify(self) -> Any:
        """
        Required + Verify Client Certificate: without a valid certificate
        the handshake fails; with one, mail flows.
        """
        gw = self.verifying("required")
        good = self.client_ca.issue(["client.test"], client=True)
        d = in_thread(session, gw.port, [b"EHLO c\r\n"], [b"EHLO c\r\n"], self.client_context())
        yield self.assertFailure(d, ssl.SSLError, ConnectionResetError, BrokenPipeError)
        valid = yield in_thread(
            session,
            gw.port,
            [b"EHLO c\r\n"],
            [b"EHLO c\r\n", b"MAIL FROM:<a@b.test>\r\n"],
            self.client_context(good),
        )
        self.assertEqual(valid[-1], b"250 2.1.0 Ok\r\n")


class SystemCAClientCertificateTests(TLSGatewayMixin, TestCase):
    """
    Verify Client Certificate without a C{client_ca}: the system's trusted
    CAs (C{listenerconfig} offers this as C{system}).  Before, Preferred
    never asked for a certificate (an invalid one went through) and
    Required dropped each STARTTLS with an unhandled error.
    """

    def setUp(self) -> None:
        # OpenSSL reads the system's CAs from SSL_CERT_FILE when it is set:
        # the test CA plays a public one.
        self.system_ca = CertificateAuthority.generate()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        bundle = os.path.join(directory, "system.pem")
        with open(bundle, "wb") as f:
            f.write(self.system_ca.cert_pem)
        old = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = bundle

        def restore() -> None:
            if old is None:
                del os.environ["SSL_CERT_FILE"]
            else:
                os.environ["SSL_CERT_FILE"] = old

        self.addCleanup(restore)

    @inlineCallbacks
    def test_preferred(self) -> Any:
        """
        Preferred: a certificate from a CA the system trusts goes on, one
        from any other CA is turned away, no certificate goes on.
        """
        gw = self.gateway("preferred", "verify_client_certificate = true")
        good = self.system_ca.issue(["client.test"], client=True)
        bad = CertificateAuthority.generate().issue(["client.test"], client=True)
        after = [b"EHLO c\r\n", b"NOOP\r\n"]
        valid = yield in_thread(session, gw.port, [b"EHLO c\r\n"], after, self.client_context(good))
        self.assertEqual(valid[-1], b"250 2.0.0 Ok\r\n")
        none_ = yield in_thread(session, gw.port, [b"EHLO c\r\n"], after, self.client_context())
        self.assertEqual(none_[-1], b"250 2.0.0 Ok\r\n")
        refused = yield in_thread(after_handshake, gw.port, self.client_context(bad))
        self.assertIn(b"421 4.7.1 mx.test.example Client certificate not accepted\r\n", refused)

    @inlineCallbacks
    def test_required(self) -> Any:
        """
        Required: without a certificate the handshake fails; with one from
        a CA the system trusts, mail flows.
        """
        gw = self.gateway("required", "verify_client_certificate = true")
        good = self.system_ca.issue(["client.test"], client=True)
        d = in_thread(session, gw.port, [b"EHLO c\r\n"], [b"EHLO c\r\n"], self.client_context())
        yield self.assertFailure(d, ssl.SSLError, ConnectionResetError, BrokenPipeError)
        valid = yield in_thread(
            session,
            gw.port,
            [b"EHLO c\r\n"],
            [b"EHLO c\r\n", b"MAIL FROM:<a@b.test>\r\n"],
            self.client_context(good),
        )
        self.assertEqual(valid[-1], b"250 2.1.0 Ok\r\n")


class CertificateNotInServiceTests(TestCase):
    """
    A listener whose certificate did not load at start-up (expired, so no
    configuration fault) offers no TLS until it is renewed, as the README
    says.  Before, it advertised STARTTLS and dropped each client that
    asked, with an unhandled error.
    """

    def expired_gateway(self, tls: str, protocol: str = "SMTP") -> Gateway:
        directory = os.path.abspath(self.mktemp())
        cert, key, chain = expired(CertificateAuthority.generate(), ["mx.test.example"]).write(
            directory
        )
        certificates = f'[certificates.MX]\ncert = "{cert}"\nkey = "{key}"\nchain = "{chain}"\n'
        return Gateway(self, listener(tls, protocol=protocol), extra_base=certificates)

    @inlineCallbacks
    def test_preferred(self) -> Any:
        """
        Preferred: STARTTLS is not offered, and refused as a temporary
        failure (RFC 3207's 454); mail goes on in the clear.
        """
        gw = self.expired_gateway("preferred")
        out = yield in_thread(
            session,
            gw.port,
            [b"EHLO c\r\n", b"STARTTLS\r\n", b"MAIL FROM:<a@b.test>\r\n"],
            [],
            None,
        )
        self.assertNotIn(b"STARTTLS", out[1])
        self.assertEqual(out[2], b"454 4.7.0 TLS not available due to temporary reason\r\n")
        self.assertEqual(out[3], b"250 2.1.0 Ok\r\n")

    @inlineCallbacks
    def test_required(self) -> Any:
        """
        Required: the same 454, and no mail in the clear.
        """
        gw = self.expired_gateway("required")
        out = yield in_thread(
            session,
            gw.port,
            [b"EHLO c\r\n", b"STARTTLS\r\n", b"MAIL FROM:<a@b.test>\r\n"],
            [],
            None,
        )
        self.assertNotIn(b"STARTTLS", out[1])
        self.assertEqual(out[2], b"454 4.7.0 TLS not available due to temporary reason\r\n")
        self.assertEqual(out[3], b"530 5.7.0 Must issue a STARTTLS command first\r\n")

    @inlineCallbacks
    def test_implicitTLS(self) -> Any:
        """
        SMTPS: the listener starts, and each handshake fails as a TLS
        failure in the mail log.  Before, building the listener raised, and
        the gateway did not start.
        """
        gw = self.expired_gateway("preferred", protocol="SMTPS")

        def connect() -> bytes:
            raw = Raw(gw.port)
            raw.starttls(server_hostname="mx.test.example")
            return raw.reply()

        yield self.assertFailure(in_thread(connect), ssl.SSLError, ConnectionResetError)
        yield in_thread(wait_until, lambda: any("TLS failed" in line for line in gw.lines))
        self.assertTrue(any("ICID 1 TLS failed" in line for line in gw.lines), gw.lines)


class PeerTests(TLSGatewayMixin, TestCase):
    @inlineCallbacks
    def test_swaksTLS(self) -> Any:
        """
        swaks with C{--tls} delivers to a Required listener; swaks without
        TLS is refused with 530 and nothing is stored from it.
        """
        swaks = require("swaks")
        gw = self.gateway("required")
        base = [
            swaks,
            "--server",
            "127.0.0.1",
            "--port",
            str(gw.port),
            "--from",
            "a@b.test",
            "--to",
            "u@example.com",
            "--helo",
            "client.test",
        ]
        plain = yield in_thread(subprocess.run, base, capture_output=True, timeout=30)
        self.assertNotEqual(plain.returncode, 0)
        self.assertIn(b"530 5.7.0 Must issue a STARTTLS command first", plain.stdout)
        self.assertEqual(gw.queued(), [])
        tls = yield in_thread(subprocess.run, [*base, "--tls"], capture_output=True, timeout=30)
        self.assertEqual(tls.returncode, 0, tls.stdout + tls.stderr)
        self.assertIn(b"<~  250 2.0.0 Ok: Message", tls.stdout)
        self.assertEqual(len(gw.queued()), 1)

    @inlineCallbacks
    def test_swaksOptional(self) -> Any:
        """
        swaks C{--tls-optional} negotiates TLS with a Preferred listener.
        """
        swaks = require("swaks")
        gw = self.gateway("preferred")
        result = yield in_thread(
            subprocess.run,
            [
                swaks,
                "--server",
                "127.0.0.1",
                "--port",
                str(gw.port),
                "--from",
                "a@b.test",
                "--to",
                "u@example.com",
                "--tls-optional",
            ],
            capture_output=True,
            timeout=30,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn(b"TLS started with cipher", result.stdout)
        (queued,) = gw.queued()
        self.assertIn(b"with ESMTPS", gw.body(queued.mid))

    @inlineCallbacks
    def test_opensslStartTLS(self) -> Any:
        """
        C{openssl s_client -starttls smtp} negotiates TLS 1.3 with an ECDHE
        key exchange and sees our certificate; forcing TLS 1.1 fails.
        """
        openssl = require("openssl")
        gw = self.gateway("preferred")
        base = [
            openssl,
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            f"127.0.0.1:{gw.port}",
            "-servername",
            "mx.test.example",
            "-CAfile",
            self.ca_file,
            "-verify_return_error",
        ]
        ok = yield in_thread(
            subprocess.run, base, input=b"QUIT\r\n", capture_output=True, timeout=30
        )
        out = ok.stdout.decode("utf-8", "replace")
        self.assertIn("Verify return code: 0 (ok)", out)
        self.assertIn("TLSv1.3", out)
        self.assertIn("CN = mx.test.example", out)
        old = yield in_thread(
            subprocess.run, [*base, "-tls1_1"], input=b"QUIT\r\n", capture_output=True, timeout=30
        )
        self.assertNotEqual(old.returncode, 0)


class DemoWarningTests(TestCase):
    def test_demoWarningAtStart(self) -> None:
        """
        Starting a gateway whose TLS-enabled listener uses the Demo
        certificate logs the seed's warning.
        """
        data_dir = os.path.abspath(self.mktemp())
        text = (
            BASE.format(data_dir=data_dir, system_extra="")
            + """
[listeners.Inboundmail]
type = "public"
interface = "Loopback"
port = 1
rat = ["example.com"]

[listeners.Inboundmail.policies.default]
tls = "required"
"""
        )
        loaded = parse_config_with_warnings(text, "test.toml", base_dir=data_dir)
        service = GatewayService(loaded, resolver=Resolver(servers=[("127.0.0.1", 53)]))
        for name in list(service.namedServices):
            service.removeService(service.getServiceNamed(name))
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service.startService()
        self.addCleanup(service.stopService)
        texts = [formatEvent(e) for e in events]
        self.assertIn(
            "You have chosen to enable TLS. Please use the 'certconfig' command to "
            "ensure that there is a valid certificate configured.",
            texts,
        )
        self.assertTrue(any("Demo" in t and "not secure" in t for t in texts), texts)


class SNITests(TLSGatewayMixin, TestCase):
    @inlineCallbacks
    def test_sniPicksCertificate(self) -> Any:
        """
        A listener with an C{sni} map serves the named certificate to a
        client asking for that name (openssl C{-servername}) and its own to
        everyone else.
        """
        openssl = require("openssl")
        ca = CertificateAuthority.generate()
        directory = os.path.abspath(self.mktemp())
        own = ca.issue(["mx.test.example"]).write(os.path.join(directory, "own"))
        other = ca.issue(["mx2.test.example"]).write(os.path.join(directory, "other"))
        ca_file = os.path.join(directory, "ca.pem")
        with open(ca_file, "wb") as f:
            f.write(ca.cert_pem)
        certificates = "".join(
            f'[certificates.{name}]\ncert = "{c}"\nkey = "{k}"\nchain = "{ch}"\n'
            for name, (c, k, ch) in (("MX", own), ("OTHER", other))
        )
        toml = listener("preferred").replace(
            'certificate = "MX"', 'certificate = "MX"\nsni = { "mx2.test.example" = "OTHER" }'
        )
        gw = Gateway(self, toml, extra_base=certificates)

        def subject(name: str) -> str:
            result = subprocess.run(
                [
                    openssl,
                    "s_client",
                    "-starttls",
                    "smtp",
                    "-connect",
                    f"127.0.0.1:{gw.port}",
                    "-servername",
                    name,
                    "-CAfile",
                    ca_file,
                    "-verify_hostname",
                    name,
                    "-verify_return_error",
                ],
                input=b"QUIT\r\n",
                capture_output=True,
                timeout=30,
            )
            out = result.stdout.decode("utf-8", "replace")
            assert "Verify return code: 0 (ok)" in out, out
            return next(line for line in out.splitlines() if line.startswith("subject="))

        self.assertIn("mx2.test.example", (yield in_thread(subject, "mx2.test.example")))
        self.assertIn("mx.test.example", (yield in_thread(subject, "mx.test.example")))
