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

from esa_tls.report import Direction, TLSCounters, TLSCounts
from esa_tls.testing import CertificateAuthority
from tests.support import Gateway, Raw, in_thread
from tests.test_inbound_tls import TLSGatewayMixin, session


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

        def invalid() -> bytes:
            raw = Raw(gw.port)
            try:
                raw.reply()
                raw.chat(b"EHLO c\r\n")
                raw.chat(b"STARTTLS\r\n")
                raw.starttls(self.client_context(bad), server_hostname="mx.test.example")
                return raw.rest()
            finally:
                raw.close()

        refused = yield in_thread(invalid)
        self.assertIn(b"421 4.7.1 mx.test.example Client certificate not accepted\r\n", refused)
        total = yield incoming_total(gw, counters)
        self.assertEqual(
            (total.preferred_success, total.preferred_failure, total.unencrypted),
            (1, 1, 1),
        )
