"""
The TLS Connections report against real sessions: a real listener on
loopback with real TLS, real clients, and the counts the report shows
afterwards compared with what happened on the wire.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, maybeDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from esa_tls.config.model import DestinationControl, DestinationTLS
from esa_tls.report import Direction, TLSCounters, TLSCounts
from esa_tls.report.delivery import record_delivery
from esa_tls.testing import CertificateAuthority
from tests.peers.hostile import Script, start_hostile_server
from tests.support import PUBLIC, Gateway, Raw, in_thread
from tests.test_inbound_tls import TLSGatewayMixin, after_handshake, session
from tests.test_outbound_reuse import ReuseTestCase


def count(gw: Gateway) -> TLSCounters:
    """
    Give C{gw}'s listener live counters, as the service does.
    """
    counters = TLSCounters(os.path.join(gw.data_dir, "reports"), reactor, executor=maybeDeferred)
    gw.factory.counters = counters
    return counters


@inlineCallbacks
def incoming_total(gw: Gateway, counters: TLSCounters) -> Any:
    """
    The report's incoming total once every session of C{gw} has ended.
    """
    for _ in range(500):
        if not gw.factory.sessions:
            break
        yield deferLater(reactor, 0.01, lambda: None)
    report = yield counters.report(3600)
    total: TLSCounts = report.total(Direction.INCOMING)
    return total


class ClientCertificateReportTests(TLSGatewayMixin, TestCase):
    @inlineCallbacks
    def test_certificateNotAccepted(self) -> Any:
        """
        Preferred + Verify Client Certificate: a session turned away for a
        certificate that did not verify (the mail log says C{TLS failed})
        is a preferred failure in the report, not a success; one with no
        certificate is a success, one in the clear is unencrypted.
        """
        ca = CertificateAuthority.generate()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        client_ca = os.path.join(directory, "clients.pem")
        with open(client_ca, "wb") as f:
            f.write(ca.cert_pem)
        gw = self.gateway(
            "preferred", f'verify_client_certificate = true\nclient_ca = "{client_ca}"'
        )
        counters = count(gw)
        bad = CertificateAuthority.generate().issue(["client.test"], client=True)
        after = [b"EHLO c\r\n", b"NOOP\r\n"]
        yield in_thread(session, gw.port, [b"EHLO c\r\n"], after, self.client_context())
        yield in_thread(session, gw.port, [b"EHLO c\r\n"], [], None)
        refused = yield in_thread(after_handshake, gw.port, self.client_context(bad))
        self.assertIn(b"421 4.7.1 mx.test.example Client certificate not accepted\r\n", refused)
        total = yield incoming_total(gw, counters)
        self.assertEqual(
            (total.preferred_success, total.preferred_failure, total.unencrypted),
            (1, 1, 1),
        )


ONE_PER_ADDRESS = (
    PUBLIC
    + """
[listeners.InboundMail.policies.ONE]
rule = "ACCEPT"
tls = "required"
max_concurrency = 1

[[listeners.InboundMail.hat]]
group = "ONE_EACH"
policy = "ONE"
senders = ["127.0.0.1"]
"""
)


class AdmissionReportTests(TestCase):
    @inlineCallbacks
    def test_tooManyConnectionsNotCounted(self) -> Any:
        """
        A connection turned away at the banner for the policy's concurrent
        connections per IP (421 before any command, so no chance at TLS) is
        not a row of the report, as a REJECT banner is not: under TLS
        Required it used to be counted as a required TLS failure, and a
        client that reconnects in a loop filled REQ-FAIL.
        """
        gw = Gateway(self, ONE_PER_ADDRESS)
        counters = count(gw)

        def talk() -> bytes:
            first = Raw(gw.port)
            try:
                first.reply()
                second = Raw(gw.port)
                try:
                    return second.rest()
                finally:
                    second.close()
            finally:
                first.close()

        refused = yield in_thread(talk)
        self.assertIn(b"Too many concurrent connections from your address", refused)
        total = yield incoming_total(gw, counters)
        # The first connection, which never started TLS.
        self.assertEqual((total.required_failure, total.connections), (1, 1))


class ReusedSessionReportTests(ReuseTestCase):
    """
    Outgoing rows against a real server: a delivery session kept for the
    next message is one connection however many messages it carries.
    """

    async def test_reusedSessionCountedOnce(self) -> None:
        """
        Twelve messages to one destination over fewer sessions: the
        report counts the connections the server saw, and every message.
        """
        server = start_hostile_server(self, Script())
        counters = TLSCounters(
            os.path.join(self.data_dir, "reports"), reactor, executor=maybeDeferred
        )
        control = DestinationControl("partner.example", DestinationTLS.NO, max_host_concurrency=1)
        manager = self.start(self.config(server.port, **{"partner.example": control}))
        manager.on_result = lambda result: record_delivery(result, counters)
        for i in range(12):
            await self.inject("x@partner.example", f"m{i}")
        await self.drain()
        self.assertLess(server.capture.connections, 12)
        report = await counters.report(3600)
        total = report.total(Direction.OUTGOING)
        self.assertEqual(
            (total.unencrypted, total.unencrypted_messages), (server.capture.connections, 12)
        )
