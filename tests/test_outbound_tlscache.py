"""
Tests for the shared client TLS contexts of L{esa_tls.outbound.tlscontext}:
building the trust store once per trust setting must never let a stale
one decide a delivery.  Real handshakes with the recording server.
"""

from __future__ import annotations

import itertools
import os
from io import BytesIO

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from esa_tls.config.model import (
    DestinationControl,
    DestinationTLS,
    GatewayConfig,
    SystemSettings,
)
from esa_tls.outbound.attempt import deliver_message
from esa_tls.outbound.client import Timeouts
from esa_tls.outbound.result import DeliveryResult, RecipientStatus, TLSResultType
from esa_tls.testing import CertificateAuthority
from tests.peers.hostile import Script, start_hostile_server

CA = CertificateAuthority.generate()
OTHER_CA = CertificateAuthority.generate()
GOOD = CA.issue(["partner.example"])


class TrustFileTests(TestCase):
    """
    A destination's C{ca_file} is read again when it changes.
    """

    async def deliver(self, port: int, ca_file: str) -> DeliveryResult:
        config = GatewayConfig(
            system=SystemSettings(hostname="gw.test"),
            destinations={
                "partner.example": DestinationControl(
                    "partner.example", DestinationTLS.REQUIRED_VERIFY, ca_file=ca_file
                )
            },
            smtp_routes={"partner.example": (f"127.0.0.1:{port}",)},
        )
        return await deliver_message(
            reactor,
            None,
            config,
            "partner.example",
            "a@sender.example",
            [(0, "x@partner.example")],
            BytesIO(b"Subject: t\r\n\r\nbody\r\n"),
            dcid_allocator=itertools.count(1).__next__,
            timeouts=Timeouts.uniform(10),
            trust_system=False,
        )

    async def test_changed_ca_file(self) -> None:
        """
        Under C{required-verify}: delivered while C{ca_file} holds the
        server's CA; once the file holds another CA, the next delivery is
        deferred as C{certificate-not-trusted} with nothing sent; back to
        the right CA, delivered again.
        """
        server = start_hostile_server(self, Script(certificate=GOOD))
        ca_file = os.path.abspath(self.mktemp())

        def write(pem: bytes, stamp: int) -> None:
            with open(ca_file, "wb") as f:
                f.write(pem)
            os.utime(ca_file, ns=(stamp, stamp))

        write(CA.cert_pem, 1_000_000_000)
        first = await self.deliver(server.port, ca_file)
        self.assertEqual(first.recipients[0].status, RecipientStatus.DELIVERED)
        write(OTHER_CA.cert_pem, 2_000_000_000)
        second = await self.deliver(server.port, ca_file)
        self.assertEqual(second.recipients[0].status, RecipientStatus.DEFERRED)
        self.assertEqual(
            [e.result_type for e in second.tls_failures],
            [TLSResultType.CERTIFICATE_NOT_TRUSTED],
        )
        write(CA.cert_pem, 3_000_000_000)
        third = await self.deliver(server.port, ca_file)
        self.assertEqual(third.recipients[0].status, RecipientStatus.DELIVERED)
        self.assertEqual(len(server.capture.messages), 2)
        await server.capture.all_closed()
