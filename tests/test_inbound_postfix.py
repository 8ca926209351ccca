"""
A real Postfix C{smtp} client relaying to our listener (issue 3): with
C{smtp_tls_security_level = may} and C{encrypt} (and C{verify}, checking
our certificate against its CA) the message reaches our spool and its
C{Received:} header shows TLS; against a Required listener a Postfix that
will not do TLS gets nothing through.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.peers.postfix import start_postfix
from tests.test_inbound_tls import TLSGatewayMixin

MESSAGE = b"From: alice@client.example\r\nSubject: via postfix\r\n\r\nhello from postfix\r\n"


class PostfixClientTests(TLSGatewayMixin, TestCase):
    async def relay(self, tls: str, client_tls: str) -> tuple[Any, Any]:
        gw = self.gateway(tls)
        pf = await start_postfix(
            self,
            relayhost=f"[127.0.0.1]:{gw.port}",
            client_tls=client_tls,
            client_ca_file=self.ca_file,
            main_cf={"smtp_tls_verify_cert_match": "mx.test.example"}
            if client_tls == "verify"
            else None,
        )
        await pf.send("alice@client.example", ["bob@example.com"], MESSAGE)
        return gw, pf

    async def delivered(self, gw: Any, pf: Any) -> bytes:
        await pf.wait_for_log(r"status=sent")
        (queued,) = gw.queued()
        body: bytes = gw.body(queued.mid)
        return body

    def test_may(self) -> Deferred[None]:
        """
        Postfix with C{may} negotiates TLS with a Preferred listener.
        """

        async def run() -> None:
            gw, pf = await self.relay("preferred", "may")
            body = await self.delivered(gw, pf)
            self.assertIn(b"hello from postfix", body)
            self.assertRegex(body, rb"with ESMTPS\r\n")
            self.assertRegex(body, rb"\(using TLSv1\.[23] with cipher ")
            # Postfix's log is written asynchronously (postlogd): wait.
            await pf.wait_for_log(r"TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]")

        return Deferred.fromCoroutine(run())

    def test_encryptToRequired(self) -> Deferred[None]:
        """
        Postfix with C{encrypt} delivers to a Required listener.
        """

        async def run() -> None:
            gw, pf = await self.relay("required", "encrypt")
            body = await self.delivered(gw, pf)
            self.assertRegex(body, rb"with ESMTPS\r\n")

        return Deferred.fromCoroutine(run())

    def test_verify(self) -> Deferred[None]:
        """
        Postfix with C{verify} trusts our listener's certificate chain and
        name: a strict sender accepts us.
        """

        async def run() -> None:
            gw, pf = await self.relay("required", "verify")
            await self.delivered(gw, pf)
            await pf.wait_for_log(r"Verified TLS connection established to 127\.0\.0\.1")

        return Deferred.fromCoroutine(run())

    def test_noTLSRefusedByRequired(self) -> Deferred[None]:
        """
        Postfix with TLS off cannot get a message into a Required listener:
        it is told 530 5.7.0 and the message stays in Postfix's queue.
        """

        async def run() -> None:
            gw, pf = await self.relay("required", "none")
            await pf.wait_for_log(r"530 5\.7\.0 Must issue a STARTTLS command first")
            self.assertEqual(gw.queued(), [])

        return Deferred.fromCoroutine(run())
