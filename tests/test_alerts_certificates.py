"""
Certificate alerts: our own certificates near expiry (30, 7 and 1 days),
told once per threshold; an expired one in service; and a listener
serving the insecure Demo certificate with TLS on.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from esa_tls.alerts import Alert, AlertKind, AlertType, Severity
from esa_tls.alerts.certificates import CertificateWatch, expiry_threshold
from esa_tls.config.load import parse_config
from esa_tls.testing import CertificateAuthority, expiring_in
from esa_tls.tls.store import CertificateStore

CONFIG = """\
[system]
hostname = "gateway.example.test"
data_dir = "{base}/data"

[interfaces.Loop]
address = "127.0.0.1/8"

[certificates.main]
cert = "{base}/main/cert.pem"
key = "{base}/main/key.pem"
chain = "{base}/main/chain.pem"

[listeners.Public]
type = "public"
interface = "Loop"
port = 2525
rat = ["example.com"]
certificate = "main"

[listeners.Private]
type = "private"
interface = "Loop"
port = 2526
{private_tls}
"""


class ThresholdTests(TestCase):
    def test_thresholds(self) -> None:
        """
        The threshold is the smallest of 30, 7 and 1 days that the expiry is
        within; 0 once it has passed; none when it is further away.
        """
        now = datetime(2026, 1, 1, tzinfo=UTC)
        cases = [
            (timedelta(days=45), None),
            (timedelta(days=30), 30),
            (timedelta(days=8), 30),
            (timedelta(days=6, hours=23), 7),
            (timedelta(hours=5), 1),
            (timedelta(seconds=-1), 0),
        ]
        for left, expected in cases:
            self.assertEqual(expiry_threshold(now + left, now), expected, left)


class WatchTests(TestCase):
    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        self.ca = CertificateAuthority.generate()
        self.sent: list[Alert] = []

    def watch(
        self, left: timedelta, private_tls: str = "", now: datetime | None = None
    ) -> CertificateWatch:
        expiring_in(self.ca, ["mx.example.test"], left).write(os.path.join(self.base, "main"))
        config = parse_config(
            CONFIG.format(base=self.base, private_tls=private_tls), "t.toml", base_dir=self.base
        )
        store = CertificateStore(config)
        self.now = now or datetime.now(UTC)
        return CertificateWatch(config, store, self.sent.append, now=lambda: self.now)

    def test_expiryToldOncePerThreshold(self) -> None:
        """
        A certificate 20 days from expiry gives one Warning/System alert
        naming it and its listener; checking again the next day says
        nothing more; at 6 days left comes the 7-day alert, at 12 hours
        the 1-day one.
        """
        watch = self.watch(timedelta(days=20))
        (alert,) = watch.check()
        self.assertEqual(self.sent, [alert])
        self.assertEqual((alert.severity, alert.type), (Severity.WARNING, AlertType.SYSTEM))
        self.assertEqual(alert.kind, AlertKind.CERTIFICATE_EXPIRY)
        self.assertEqual(
            alert.subject, "Warning <System> esa_tls: Certificate main expires in 20 days"
        )
        self.assertEqual(alert.fields["threshold_days"], 30)
        self.assertEqual(alert.fields["listeners"], ("Public",))
        self.assertIn("Listeners: Public", alert.body)
        self.now += timedelta(days=1)
        self.assertEqual(watch.check(), [])
        self.now += timedelta(days=13)
        (week,) = watch.check()
        self.assertEqual(week.fields["threshold_days"], 7)
        self.now += timedelta(days=5, hours=12)
        (day,) = watch.check()
        self.assertEqual(day.fields["threshold_days"], 1)
        self.assertEqual(watch.check(), [])

    def test_farExpiryQuiet(self) -> None:
        """
        A certificate with months left raises nothing.
        """
        self.assertEqual(self.watch(timedelta(days=90)).check(), [])

    def test_expired(self) -> None:
        """
        A certificate in service that has expired gives a Critical alert at
        every check.
        """
        watch = self.watch(timedelta(days=2))
        self.now += timedelta(days=3)
        (first,) = watch.check()
        self.assertEqual(first.severity, Severity.CRITICAL)
        self.assertEqual(first.kind, AlertKind.CERTIFICATE_EXPIRED)
        self.assertEqual(first.subject, "Critical <System> esa_tls: Certificate main has expired")
        self.assertEqual(len(watch.check()), 1)

    def test_demoWithTLS(self) -> None:
        """
        A listener with TLS on and the Demo certificate gets a Warning
        alert naming it; a listener on Demo without TLS does not.
        """
        watch = self.watch(
            timedelta(days=365), '[listeners.Private.policies.default]\ntls = "preferred"'
        )
        (alert,) = watch.check()
        self.assertEqual(alert.kind, AlertKind.DEMO_CERTIFICATE)
        self.assertEqual(alert.severity, Severity.WARNING)
        self.assertEqual(
            alert.subject,
            "Warning <System> esa_tls: Listener Private uses the Demo certificate with TLS",
        )
        self.assertIn("no peer can verify it", alert.body)
        self.assertEqual(alert.fields["listener"], "Private")

    def test_service(self) -> None:
        """
        The watch's service checks at start and then once a day.
        """
        watch = self.watch(
            timedelta(days=365), '[listeners.Private.policies.default]\ntls = "required"'
        )
        clock = Clock()
        service = watch.service(clock)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(self.sent), 1)
        clock.advance(24 * 3600)
        self.assertEqual(len(self.sent), 2)

    def test_expiredAtStart(self) -> None:
        """
        A certificate already expired when the gateway starts is refused by
        the store (its listener offers no TLS) and still gives the Critical
        alert at every check, saying it is not in service: before, only a
        certificate that expired while in service was alerted on, so a
        restart after expiry turned it into a silent TLS outage.
        """
        watch = self.watch(timedelta(days=-1))
        (alert,) = watch.check()
        self.assertEqual(alert.severity, Severity.CRITICAL)
        self.assertEqual(alert.kind, AlertKind.CERTIFICATE_EXPIRED)
        self.assertEqual(alert.subject, "Critical <System> esa_tls: Certificate main has expired")
        self.assertIn("is not in service", alert.body)
        self.assertNotIn("still in service", alert.body)
        self.assertIn("Listeners: Public", alert.body)
        self.assertEqual(alert.fields["listeners"], ("Public",))
        self.assertEqual(len(watch.check()), 1)
