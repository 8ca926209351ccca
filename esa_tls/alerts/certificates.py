# -*- test-case-name: tests.test_alerts_certificates -*-
"""
Alerts about our own certificates: expiry coming (30, 7 and 1 days
before), expiry passed, and the insecure Demo certificate served by a
listener with TLS on.

An expired listener certificate makes every verifying peer give up on TLS
with us, and the Demo certificate cannot be verified by anyone: both are
outages of TLS that nothing in the mail flow reports, because the failure
is on the peer's side.  So the gateway looks for them itself, once a day
(L{CertificateWatch.service}).

Expiry alerts are Warning/System, one per certificate per threshold
crossed (a certificate 25 days from expiry gives one alert, then another at
7 days, another at 1 day); an expired certificate gives a Critical/System
alert at every check, whether it is still in service or was refused when
loaded (a restart after it expired: its listeners then offer no TLS).  The Demo alert is Warning/System,
one per listener at every check: it stays until the listener gets a real
certificate.  Which thresholds were told is kept in memory, so a restart
tells the current one once more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from esa_tls.alerts.alert import DEFAULT_ORIGIN, Alert, AlertKind, AlertType, Severity, make_alert
from esa_tls.config.model import GatewayConfig
from esa_tls.tls.certificates import CertificateError, CertificateInfo, format_time
from esa_tls.tls.demo import DEMO_NAME, uses_demo_with_tls

__all__ = [
    "CHECK_INTERVAL",
    "EXPIRY_THRESHOLDS",
    "CertificateWatch",
    "demo_certificate_alerts",
    "expiry_alert",
    "expiry_threshold",
]

log = Logger()

#: Days before expiry at which an alert is raised, longest first.
EXPIRY_THRESHOLDS: tuple[int, ...] = (30, 7, 1)

#: Seconds between two checks.
CHECK_INTERVAL = 24 * 3600.0


class _Describes(Protocol):
    """
    The part of L{esa_tls.tls.store.CertificateStore} the watch uses.
    """

    def names(self) -> list[str]: ...

    def describe(self, name: str) -> CertificateInfo: ...

    def describe_out_of_date(self, name: str) -> CertificateInfo | None: ...


def _users(config: GatewayConfig, name: str) -> list[str]:
    return [
        listener.name
        for listener in config.listeners.values()
        if listener.certificate == name or name in listener.sni.values()
    ]


def expiry_threshold(
    not_after: datetime, now: datetime, thresholds: Sequence[int] = EXPIRY_THRESHOLDS
) -> int | None:
    """
    @return: the smallest threshold (in days) that C{not_after} is within,
        C{0} if it has passed, or C{None} if it is further away than every
        threshold.
    """
    left = not_after - now
    if left <= timedelta(0):
        return 0
    within = [t for t in thresholds if left <= timedelta(days=t)]
    return min(within) if within else None


def expiry_alert(
    info: CertificateInfo,
    threshold: int,
    now: datetime,
    listeners: Sequence[str],
    *,
    origin: str = DEFAULT_ORIGIN,
    in_service: bool = True,
) -> Alert:
    """
    The alert for certificate C{info} within C{threshold} days of expiry
    (or expired, when C{threshold} is 0).

    @param in_service: C{False} for an expired certificate the gateway
        refused when it loaded it.
    """
    used = ", ".join(listeners) if listeners else "(no listener)"
    left = info.not_after - now
    if threshold == 0:
        severity, kind = Severity.CRITICAL, AlertKind.CERTIFICATE_EXPIRED
        title = f"Certificate {info.name} has expired"
        if in_service:
            first = (
                f"The certificate {info.name} expired on {format_time(info.not_after)} and is "
                "still in service: peers that verify certificates refuse TLS with us."
            )
        else:
            first = (
                f"The certificate {info.name} expired on {format_time(info.not_after)} and is "
                "not in service: the gateway refused it, so the listeners that serve it "
                "offer no TLS (a policy requiring TLS takes no mail)."
            )
    else:
        severity, kind = Severity.WARNING, AlertKind.CERTIFICATE_EXPIRY
        days = max(1, math.ceil(left.total_seconds() / 86400))
        title = f"Certificate {info.name} expires in {days} day{'s' if days != 1 else ''}"
        first = (
            f"The certificate {info.name} expires on {format_time(info.not_after)}, "
            f"within {threshold} day{'s' if threshold != 1 else ''}."
        )
    body = "\n".join(
        [
            first,
            "",
            f"Certificate: {info.name}",
            f"Subject: {info.subject}",
            f"Issuer: {info.issuer}",
            f"Not after: {format_time(info.not_after)}",
            f"Fingerprint: SHA256 {info.fingerprint}",
            f"Listeners: {used}",
            "",
            "Install the renewed certificate files and reload (esa-tls certificates "
            "shows what is in service).",
        ]
    )
    return make_alert(
        severity,
        AlertType.SYSTEM,
        kind,
        title,
        body + "\n",
        {
            "certificate": info.name,
            "subject": info.subject,
            "not_after": info.not_after,
            "fingerprint": info.fingerprint,
            "threshold_days": threshold,
            "seconds_left": int(left.total_seconds()),
            "listeners": tuple(listeners),
        },
        time=now.timestamp(),
        origin=origin,
    )


def demo_certificate_alerts(
    config: GatewayConfig, now: datetime, *, origin: str = DEFAULT_ORIGIN
) -> list[Alert]:
    """
    One Warning/System alert per listener that may serve the Demo
    certificate with TLS on (L{uses_demo_with_tls}).
    """
    alerts = []
    for listener in config.listeners.values():
        if not uses_demo_with_tls(listener):
            continue
        body = "\n".join(
            [
                f"Listener {listener.name} has TLS enabled with the demonstration "
                "certificate (Demo).",
                "",
                "The Demo certificate was generated on this machine and no CA vouches "
                "for it: no peer can verify it, so TLS on this listener protects "
                "against passive eavesdropping only. It is meant for testing.",
                "",
                "Configure a certificate under [certificates.NAME] and set the "
                "listener's certificate key (ESA: listenerconfig > edit > certificate).",
            ]
        )
        alerts.append(
            make_alert(
                Severity.WARNING,
                AlertType.SYSTEM,
                AlertKind.DEMO_CERTIFICATE,
                f"Listener {listener.name} uses the Demo certificate with TLS",
                body + "\n",
                {"listener": listener.name, "certificate": DEMO_NAME},
                time=now.timestamp(),
                origin=origin,
            )
        )
    return alerts


class CertificateWatch:
    """
    Checks our certificates and raises their alerts through a dispatcher
    (any callable taking an L{Alert}, such as
    L{esa_tls.alerts.dispatcher.AlertDispatcher.dispatch}).
    """

    def __init__(
        self,
        config: GatewayConfig,
        store: _Describes,
        dispatch: Callable[[Alert], object],
        *,
        now: Callable[[], datetime] | None = None,
        origin: str = DEFAULT_ORIGIN,
    ) -> None:
        """
        @param store: the certificates in service
            (L{esa_tls.tls.store.CertificateStore}).
        @param now: the current time, aware (tests move it).
        """
        self.config = config
        self.store = store
        self._dispatch = dispatch
        self._now = now if now is not None else (lambda: datetime.now(UTC))
        self.origin = origin
        self._told: set[tuple[str, str, int]] = set()

    def alerts(self) -> list[Alert]:
        """
        The alerts due now, noting the expiry thresholds they tell so that
        the next call does not repeat them.
        """
        now = self._now()
        out: list[Alert] = []
        for name in self.store.names():
            if name == DEMO_NAME:
                continue
            in_service = True
            try:
                info = self.store.describe(name)
            except KeyError:
                continue
            except CertificateError:
                refused = self.store.describe_out_of_date(name)
                if refused is None or refused.not_after > now:
                    continue
                info, in_service = refused, False
            threshold = expiry_threshold(info.not_after, now)
            if threshold is None:
                continue
            key = (name, info.fingerprint, threshold)
            if threshold != 0 and key in self._told:
                continue
            self._told.add(key)
            out.append(
                expiry_alert(
                    info,
                    threshold,
                    now,
                    _users(self.config, name),
                    origin=self.origin,
                    in_service=in_service,
                )
            )
        out += demo_certificate_alerts(self.config, now, origin=self.origin)
        return out

    def check(self) -> list[Alert]:
        """
        Dispatch the alerts due now (see L{alerts}); never raises.

        @return: the alerts dispatched.
        """
        try:
            alerts = self.alerts()
        except Exception:
            log.failure("Certificate check failed")
            return []
        for alert in alerts:
            self._dispatch(alert)
        return alerts

    def service(self, clock: IReactorTime, interval: float = CHECK_INTERVAL) -> TimerService:
        """
        A service that runs L{check} when it starts and every C{interval}
        seconds after.
        """
        service = TimerService(interval, self.check)
        service.clock = clock
        return service
