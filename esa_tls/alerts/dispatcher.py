# -*- test-case-name: tests.test_alerts_dispatcher -*-
"""
The alert dispatcher: decides who hears of an alert, and makes sure that
telling them can never hold up mail.

Routing is the ESA's: an alert of severity I{S} and type I{T} is addressed
to every C{[[alerts.recipients]]} entry subscribed to both I{S} and I{T}
(the TLS-failure alert is Warning/System, so "every recipient set to
receive Warning severity level alerts for System alert types").  Each hook
gets every alert, with those addresses in L{Alert.recipients}; the mail
hook writes to them, the others record or forward the whole alert.  A hook
may narrow what it gets with L{FilteredHook}.

TLS failures come from the delivery engine once per host that could not
give the TLS a domain's setting requires, which during an outage is once
per message per retry.  The dispatcher merges them: the first failure for a
domain raises an alert at once; later ones within the merge interval
(default 15 minutes) are counted and folded into one alert when the
interval ends; and when delivery to the domain succeeds again, a recovery
notice (Info, same type) closes the incident.  The counts, hosts, result
types and message IDs of the folded failures are all in the alerts.

Merging per domain does not bound a flood across domains (a default
Destination Control that requires TLS, and mail or bounces to thousands of
domains whose servers offer none), so two limits hold for the whole
gateway: at most L{MAX_ALERTS_PER_INTERVAL} TLS alerts (failures and
recoveries) go out in a merge interval, the rest being held and told in one
summary at its end (kind C{tls-alerts-held}); and at most
L{MAX_INCIDENTS} domains are followed one by one, a domain quiet for a
merge interval giving up its place when a new one needs it, the failures
of domains beyond that only counted (and the first ones named) in the
summary.

Every hook call is bounded by a timeout on the dispatcher's clock (the
hook's own C{timeout} and a second, when it has a longer one: a command
hook set to 30 seconds is not killed at 10), and its errors (raised or
returned) are logged, never raised: the delivery engine calls
L{AlertDispatcher.tls_failure} and goes on at once.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from attrs import define, evolve, field
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from esa_tls.alerts.alert import (
    DEFAULT_ORIGIN,
    Alert,
    AlertKind,
    AlertType,
    Severity,
    make_alert,
)
from esa_tls.config.model import AlertSettings
from esa_tls.interfaces import IAlertHook

__all__ = [
    "DEFAULT_HOOK_TIMEOUT",
    "DEFAULT_MERGE_INTERVAL",
    "MAX_ALERTS_PER_INTERVAL",
    "MAX_INCIDENTS",
    "MAX_LISTED_HELD",
    "MAX_LISTED_MIDS",
    "AlertDispatcher",
    "FilteredHook",
    "TLSFailureLike",
    "hook_name",
]

#: Seconds between two TLS-failure alerts for one domain.
DEFAULT_MERGE_INTERVAL = 15 * 60.0

#: Seconds a hook may take over one alert before the dispatcher gives up
#: on it (the hook's L{Deferred} is cancelled), unless the hook has a
#: longer C{timeout} of its own.
DEFAULT_HOOK_TIMEOUT = 10.0

#: Message IDs listed in one alert; beyond that only the count grows, so
#: that an outage with thousands of queued messages does not make a
#: thousand-line mail.
MAX_LISTED_MIDS = 50

#: TLS alerts (failures and recoveries) told one by one in a merge
#: interval, for all domains together; the rest are summed up in one alert
#: at its end.
MAX_ALERTS_PER_INTERVAL = 20

#: Domains with a TLS-failure incident followed one by one.
MAX_INCIDENTS = 1000

#: Held alerts and untracked domains named in the summary.
MAX_LISTED_HELD = 50

#: What to check, per RFC 8460 result type, for the alert's body.
_ADVICE = {
    "starttls-not-supported": (
        "The server did not offer STARTTLS (or refused it). Ask the destination's "
        "administrator to enable TLS, or check for a device between us that strips "
        "STARTTLS from the EHLO reply."
    ),
    "certificate-host-mismatch": (
        "The server's certificate does not name the host (or domain) it was required "
        "to. Ask the destination to install a certificate for its MX name, or review "
        "the verify setting of this domain's Destination Controls."
    ),
    "certificate-expired": (
        "The server's certificate has expired (or is not valid yet). Ask the "
        "destination's administrator to renew it."
    ),
    "certificate-not-trusted": (
        "The server's certificate chain does not lead to a trusted CA. Ask the "
        "destination to send its full chain, or set ca_file on this domain's "
        "Destination Controls if it uses a private CA."
    ),
    "validation-failure": (
        "The TLS handshake failed (protocol version, ciphers, or a broken peer). "
        "The detail above has the TLS library's words."
    ),
}


def hook_name(hook: object) -> str:
    """
    A short name for a hook in log lines and metrics: its C{name}
    attribute if it has one, else its class name.
    """
    name = getattr(hook, "name", None)
    return name if isinstance(name, str) else type(hook).__name__


@implementer(IAlertHook)
class FilteredHook:
    """
    A hook that only sees the alerts of some severities and types; for a
    pager that should only wake someone for Critical alerts, say.

    @ivar hook: the wrapped hook.
    @ivar severities: the severities it gets (all when empty).
    @ivar types: the types it gets (all when empty).
    """

    def __init__(
        self,
        hook: IAlertHook,
        severities: Sequence[Severity] = (),
        types: Sequence[AlertType] = (),
    ) -> None:
        self.hook = hook
        self.severities = frozenset(severities)
        self.types = frozenset(types)
        self.name = hook_name(hook)

    def alert(self, alert: object) -> object:
        assert isinstance(alert, Alert)
        if self.severities and alert.severity not in self.severities:
            return None
        if self.types and alert.type not in self.types:
            return None
        return self.hook.alert(alert)


class TLSFailureLike(Protocol):
    """
    What L{AlertDispatcher.on_tls_failure} reads from the delivery engine's
    failure event (L{esa_tls.outbound.result.TLSFailureEvent}).
    """

    @property
    def domain(self) -> str: ...

    @property
    def level(self) -> object: ...

    @property
    def host(self) -> str: ...

    @property
    def address(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def result_type(self) -> object: ...

    @property
    def detail(self) -> str: ...

    @property
    def mid(self) -> int | None: ...


def _text(value: object) -> str | None:
    """
    An enum's value, or the text of anything else; C{None} stays C{None}.
    """
    if value is None:
        return None
    return str(getattr(value, "value", value))


#: Characters of a server's text (the detail) kept in an alert.
_MAX_DETAIL = 1000


def _printable(text: str | None) -> str | None:
    """
    Text from the network (a server's reply, an MX name from DNS) as one
    printable line: anything not printable (CR, LF, NUL, an escape
    sequence, a Unicode line separator) is shown as its Python escape, so
    that it cannot start a line of its own in the alert mail's body, a
    terminal or a log; cut at L{_MAX_DETAIL} characters.
    """
    if text is None:
        return None
    shown = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )
    return shown if len(shown) <= _MAX_DETAIL else shown[:_MAX_DETAIL] + "..."


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _minutes(seconds: float) -> str:
    minutes = seconds / 60
    if minutes == int(minutes):
        n = int(minutes)
        return f"{n} minute" if n == 1 else f"{n} minutes"
    return f"{seconds:g} seconds"


@define
class _Failures:
    """
    TLS failures for one domain not yet told in an alert.
    """

    first_seen: float
    last_seen: float
    count: int = 0
    result_types: list[str] = field(factory=list)
    hosts: list[str] = field(factory=list)
    mids: list[int] = field(factory=list)
    last: dict[str, Any] = field(factory=dict)
    alert_mail_only: bool = True

    def add(self, when: float, facts: dict[str, Any], alert_mail: bool) -> None:
        self.count += 1
        self.alert_mail_only = self.alert_mail_only and alert_mail
        self.last_seen = when
        result_type = facts["result_type"]
        if result_type not in self.result_types:
            self.result_types.append(result_type)
        host = facts.get("host")
        if host is not None:
            where = f"{host}[{facts['address']}]" if facts.get("address") else host
            if where not in self.hosts:
                self.hosts.append(where)
        mid = facts.get("mid")
        if mid is not None and mid not in self.mids and len(self.mids) < MAX_LISTED_MIDS:
            self.mids.append(mid)
        self.last = facts


@define
class _Incident:
    """
    A domain whose required TLS is failing, from its first failure until
    delivery to it succeeds again.
    """

    first_seen: float
    total: int = 0
    alerts: int = 0
    pending: _Failures | None = None
    timer: IDelayedCall | None = None


@define
class _Held:
    """
    What the limits kept from going out in the current window: alerts
    (counted, the first ones' subjects kept) and failures of domains not
    followed (counted, the first domains kept).
    """

    alerts: int = 0
    subjects: list[str] = field(factory=list)
    untracked_failures: int = 0
    untracked_domains: list[str] = field(factory=list)

    def hold(self, alert: Alert) -> None:
        self.alerts += 1
        if len(self.subjects) < MAX_LISTED_HELD:
            self.subjects.append(alert.subject)

    def untracked(self, domain: str) -> None:
        self.untracked_failures += 1
        if domain not in self.untracked_domains and len(self.untracked_domains) < MAX_LISTED_HELD:
            self.untracked_domains.append(domain)


class AlertDispatcher:
    """
    Routes alerts to hooks, merges repeated TLS failures, and follows them
    with recovery notices.

    @ivar recent: the last alerts dispatched, newest last (the admin page
        shows them).
    @ivar counts: alerts dispatched, by C{(severity, type, kind)}.
    @ivar hook_failures: hook calls that failed or timed out, by hook name.
    """

    log = Logger()

    def __init__(
        self,
        settings: AlertSettings,
        hooks: Sequence[IAlertHook],
        clock: IReactorTime,
        *,
        merge_interval: float = DEFAULT_MERGE_INTERVAL,
        hook_timeout: float = DEFAULT_HOOK_TIMEOUT,
        origin: str = DEFAULT_ORIGIN,
        keep_recent: int = 50,
    ) -> None:
        """
        @param settings: C{[alerts]}: the recipients and the TLS-failure
            switch.
        @param hooks: where alerts go, each called for every alert.
        @param clock: times the merge interval and the hook timeouts.
        @param merge_interval: seconds between two TLS-failure alerts for
            one domain.
        @param hook_timeout: seconds one hook may take over one alert.
        @param origin: the name in subjects (see L{esa_tls.alerts.alert}).
        @param keep_recent: how many alerts L{recent} keeps.
        """
        self.settings = settings
        self.hooks = list(hooks)
        self._clock = clock
        self.merge_interval = merge_interval
        self.hook_timeout = hook_timeout
        self.origin = origin
        self.recent: collections.deque[Alert] = collections.deque(maxlen=keep_recent)
        self.counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.hook_failures: collections.Counter[str] = collections.Counter()
        # Least recently failing first: the one to give up at the limit.
        self._incidents: collections.OrderedDict[str, _Incident] = collections.OrderedDict()
        self._in_flight: set[Deferred[Any]] = set()
        # The limit's window: when it ends, how many TLS alerts went out in
        # it, and what was held (told at its end).
        self._window_end = 0.0
        self._window_alerts = 0
        self._held = _Held()
        self._held_timer: IDelayedCall | None = None

    # -- routing ------------------------------------------------------------

    def recipients_for(self, severity: Severity, type: AlertType) -> tuple[str, ...]:
        """
        The addresses subscribed to both C{severity} and C{type}, in
        configuration order, each once.
        """
        out: list[str] = []
        for recipient in self.settings.recipients:
            if severity.value in recipient.severities and type.value in recipient.types:
                if recipient.address not in out:
                    out.append(recipient.address)
        return tuple(out)

    def dispatch(self, alert: Alert) -> Deferred[None]:
        """
        Address C{alert} to its subscribers and hand it to every hook.

        @return: a L{Deferred} that fires (with C{None}, never failing) once
            every hook has finished, failed or timed out.  Nobody needs to
            wait for it; tests and shutdown do.
        """
        routed = evolve(alert, recipients=self.recipients_for(alert.severity, alert.type))
        self.recent.append(routed)
        self.counts[(routed.severity.value, routed.type.value, routed.kind)] += 1
        self.log.info(
            "Alert: {subject}",
            subject=routed.subject,
            alert_kind=routed.kind,
            alert_recipients=list(routed.recipients),
        )
        calls = [self._call(hook, routed) for hook in self.hooks]
        if not calls:
            return succeed(None)
        done: Deferred[None] = DeferredList(calls, consumeErrors=True).addCallback(lambda _: None)
        self._in_flight.add(done)
        done.addBoth(self._landed, done)
        return done

    def _landed(self, result: object, d: Deferred[Any]) -> object:
        self._in_flight.discard(d)
        return result

    def _timeout(self, hook: IAlertHook) -> float:
        """
        How long C{hook} may take: the dispatcher's timeout, or the hook's
        own C{timeout} and a second if that is longer (the second lets the
        hook's own timeout end it, with its own words).
        """
        inner = hook.hook if isinstance(hook, FilteredHook) else hook
        own = getattr(inner, "timeout", None)
        if isinstance(own, int | float) and not isinstance(own, bool) and own > 0:
            return max(self.hook_timeout, own + 1.0)
        return self.hook_timeout

    def _call(self, hook: IAlertHook, alert: Alert) -> Deferred[None]:
        d: Deferred[Any] = maybeDeferred(hook.alert, alert)
        d.addTimeout(self._timeout(hook), self._clock)
        return d.addCallbacks(lambda _: None, self._hook_failed, errbackArgs=(hook, alert))

    def _hook_failed(self, failure: Failure, hook: IAlertHook, alert: Alert) -> None:
        name = hook_name(hook)
        self.hook_failures[name] += 1
        self.log.failure(
            "Alert hook {hook} failed to deliver alert {subject!r}",
            failure,
            hook=name,
            subject=alert.subject,
        )

    def idle(self) -> Deferred[None]:
        """
        @return: a L{Deferred} firing once every hook call under way now
            has finished or timed out (for an orderly shutdown).
        """
        pending = list(self._in_flight)
        if not pending:
            return succeed(None)
        return DeferredList(pending, consumeErrors=True).addCallback(lambda _: None)

    def stop(self) -> None:
        """
        Cancel the merge timers: failures not yet told are dropped.
        """
        for incident in self._incidents.values():
            if incident.timer is not None and incident.timer.active():
                incident.timer.cancel()
            incident.timer = None
        if self._held_timer is not None and self._held_timer.active():
            self._held_timer.cancel()
        self._held_timer = None

    # -- the limit across domains ---------------------------------------------

    def _dispatch_limited(self, alert: Alert) -> None:
        """
        Dispatch a TLS alert, or hold it for the window's summary when
        L{MAX_ALERTS_PER_INTERVAL} went out in this window already.
        """
        self._current_window()
        if self._window_alerts < MAX_ALERTS_PER_INTERVAL:
            self._window_alerts += 1
            self.dispatch(alert)
            return
        self._held.hold(alert)
        self._summary_due()

    def _untracked_failure(self, domain: str) -> None:
        """
        A failure of a domain for which there is no room among the
        incidents: counted for the summary.
        """
        self._current_window()
        self._held.untracked(domain)
        self._summary_due()

    def _current_window(self) -> None:
        """
        Open a new window of the limit if the last one has ended.
        """
        if self._clock.seconds() >= self._window_end:
            self._open_window()

    def _open_window(self) -> None:
        self._window_end = self._clock.seconds() + self.merge_interval
        self._window_alerts = 0

    def _summary_due(self) -> None:
        if self._held_timer is None:
            delay = max(0.0, self._window_end - self._clock.seconds())
            self._held_timer = self._clock.callLater(delay, self._tell_held)

    def _tell_held(self) -> None:
        self._held_timer = None
        held, self._held = self._held, _Held()
        if not held.alerts and not held.untracked_failures:
            return
        # The summary opens the next window, as one of its alerts.
        self._open_window()
        self._window_alerts = 1
        self.dispatch(self._held_alert(held))

    def _held_alert(self, held: _Held) -> Alert:
        lines = [
            f"More TLS alerts than {MAX_ALERTS_PER_INTERVAL} in "
            f"{_minutes(self.merge_interval)}: the rest were held and are summed up here.",
            "",
        ]
        if held.alerts:
            unnamed = held.alerts - len(held.subjects)
            lines.append(f"Alerts held: {held.alerts}")
            lines += [f"  {subject}" for subject in held.subjects]
            if unnamed:
                lines.append(f"  and {unnamed} more")
            lines.append("")
        if held.untracked_failures:
            lines.append(
                f"TLS failures for domains beyond the {MAX_INCIDENTS} followed one by "
                f"one: {held.untracked_failures}, for"
            )
            lines += [f"  {domain}" for domain in held.untracked_domains]
            if len(held.untracked_domains) >= MAX_LISTED_HELD:
                lines.append("  and more")
            lines.append("")
        lines.append(
            "The mail log has every attempt; the admin page lists the domains whose "
            "required TLS is failing."
        )
        told = []
        if held.alerts:
            told.append(f"{held.alerts} TLS alerts held")
        if held.untracked_failures:
            told.append(f"{held.untracked_failures} TLS failures not followed")
        title = ", ".join(told)
        return make_alert(
            Severity.WARNING,
            AlertType.SYSTEM,
            AlertKind.TLS_ALERTS_HELD,
            title,
            "\n".join(lines) + "\n",
            {
                "held": held.alerts,
                "held_subjects": held.subjects,
                "untracked_failures": held.untracked_failures,
                "untracked_domains": held.untracked_domains,
            },
            time=self._clock.seconds(),
            origin=self.origin,
        )

    # -- TLS failures ---------------------------------------------------------

    def on_tls_failure(self, event: TLSFailureLike) -> None:
        """
        The delivery engine's C{on_tls_failure} callback
        (L{esa_tls.outbound.attempt.deliver_message}): one host of a domain
        that requires TLS could not give it.
        """
        self.tls_failure(
            event.domain,
            result_type=event.result_type,
            level=event.level,
            host=event.host,
            address=event.address,
            port=event.port,
            detail=event.detail,
            mid=event.mid,
            dcid=getattr(event, "dcid", None),
        )

    def tls_failure(
        self,
        domain: str,
        *,
        result_type: object,
        level: object = None,
        host: str | None = None,
        address: str | None = None,
        port: int | None = None,
        detail: str | None = None,
        mid: int | None = None,
        dcid: int | None = None,
        listener: str | None = None,
    ) -> None:
        """
        TLS that C{domain}'s setting requires could not be had; no mail was
        sent on that connection.  Raises the Warning/System TLS-failure
        alert now, or counts the failure into the next one if an alert for
        C{domain} went out less than the merge interval ago.  Does nothing
        when C{tls_failure_alert} is off.  Never raises, never waits.

        @param result_type: the RFC 8460 result type (a string or an enum
            whose value is one), e.g. C{"starttls-not-supported"}.
        @param level: the Destination Controls setting that required TLS.
        @param listener: for an inbound failure, the listener's name.
        """
        if not self.settings.tls_failure_alert:
            return
        try:
            alert_mail = mid is not None and self._is_alert_mail(mid)
            self._tls_failure(
                domain.lower().rstrip("."),
                {
                    "domain": domain.lower().rstrip("."),
                    "result_type": _text(result_type) or "validation-failure",
                    "level": _text(level),
                    "host": _printable(host),
                    "address": _printable(address),
                    "port": port,
                    "detail": _printable(detail),
                    "mid": mid,
                    "dcid": dcid,
                    "listener": listener,
                },
                alert_mail,
            )
        except Exception:
            self.log.failure("Could not raise the TLS failure alert for {domain}", domain=domain)

    def _is_alert_mail(self, mid: int) -> bool:
        """
        Whether a hook that sends alerts as mail (with an C{is_alert_mail}
        method, as L{esa_tls.alerts.mailhook.MailAlertHook}) says message
        C{mid} is its own.
        """
        for hook in self.hooks:
            inner = hook.hook if isinstance(hook, FilteredHook) else hook
            check = getattr(inner, "is_alert_mail", None)
            if callable(check) and check(mid):
                return True
        return False

    def _tls_failure(self, domain: str, facts: dict[str, Any], alert_mail: bool) -> None:
        now = self._clock.seconds()
        incident = self._incidents.get(domain)
        if incident is None:
            if len(self._incidents) >= MAX_INCIDENTS and not self._make_room():
                self._untracked_failure(domain)
                return
            incident = self._incidents[domain] = _Incident(first_seen=now)
        else:
            self._incidents.move_to_end(domain)
        incident.total += 1
        if incident.pending is None:
            incident.pending = _Failures(first_seen=now, last_seen=now)
        incident.pending.add(now, facts, alert_mail)
        if incident.timer is None:
            self._tell_failures(domain, incident)

    def _make_room(self) -> bool:
        """
        Give up the incident that failed least recently if it is quiet (told,
        and no failure for a merge interval).
        """
        domain, oldest = next(iter(self._incidents.items()))
        if oldest.pending is not None or (oldest.timer is not None and oldest.timer.active()):
            return False
        del self._incidents[domain]
        return True

    def _tell_failures(self, domain: str, incident: _Incident) -> None:
        """
        Alert on the failures pending for C{domain} and open a new merge
        interval.
        """
        pending = incident.pending
        assert pending is not None
        incident.pending = None
        incident.alerts += 1
        incident.timer = self._clock.callLater(self.merge_interval, self._interval_over, domain)
        self._dispatch_limited(self._failure_alert(domain, incident, pending))

    def _interval_over(self, domain: str) -> None:
        incident = self._incidents.get(domain)
        if incident is None:
            return
        incident.timer = None
        if incident.pending is not None:
            self._tell_failures(domain, incident)

    def _failure_alert(self, domain: str, incident: _Incident, failures: _Failures) -> Alert:
        last = failures.last
        result_type = last["result_type"]
        title = f"TLS failure for destination domain {domain}"
        if failures.count > 1:
            title += f" ({failures.count} failures)"
        where = ", ".join(failures.hosts) or "(unknown host)"
        lines = [
            f"The TLS connection to {domain} failed.",
            "",
            f"The Destination Controls TLS setting for {domain}"
            + (f" ({last['level']})" if last.get("level") else "")
            + " requires TLS, so no message was sent in the clear: the messages stay "
            "in the queue and delivery is retried.",
            "",
            f"Destination domain: {domain}",
            f"Failure: {', '.join(failures.result_types)} (RFC 8460 result type)",
        ]
        if last.get("detail"):
            lines.append(f"Detail: {last['detail']}")
        lines.append(f"Hosts: {where}")
        if last.get("dcid") is not None:
            lines.append(f"Last delivery connection: DCID {last['dcid']}")
        if last.get("listener"):
            lines.append(f"Listener: {last['listener']}")
        lines.append(
            f"Failures: {failures.count}, from {_iso(failures.first_seen)} "
            f"to {_iso(failures.last_seen)}"
        )
        if failures.mids:
            more = " and more" if failures.count > len(failures.mids) else ""
            lines.append("Messages: MID " + ", ".join(str(m) for m in failures.mids) + more)
        if failures.alert_mail_only:
            lines.append(
                "These messages are all alert mail: this alert is not sent by mail, "
                "which would be held back the same way."
            )
        lines += [
            "",
            _ADVICE.get(result_type, _ADVICE["validation-failure"]),
            "",
            f"Further TLS failures for {domain} are merged into one alert every "
            f"{_minutes(self.merge_interval)}; a notice follows when delivery to "
            f"{domain} succeeds again. The mail log (grep the MIDs above) shows "
            "each attempt.",
        ]
        fields: dict[str, object] = {
            "domain": domain,
            "result_type": result_type,
            "result_types": failures.result_types,
            "level": last.get("level"),
            "detail": last.get("detail"),
            "host": last.get("host"),
            "address": last.get("address"),
            "port": last.get("port"),
            "dcid": last.get("dcid"),
            "listener": last.get("listener"),
            "hosts": failures.hosts,
            "mids": failures.mids,
            "count": failures.count,
            "first_seen": _iso(failures.first_seen),
            "last_seen": _iso(failures.last_seen),
            "incident_start": _iso(incident.first_seen),
            "incident_failures": incident.total,
            "alert_mail_only": failures.alert_mail_only or None,
        }
        return make_alert(
            Severity.WARNING,
            AlertType.SYSTEM,
            AlertKind.TLS_FAILURE,
            title,
            "\n".join(lines) + "\n",
            fields,
            time=self._clock.seconds(),
            origin=self.origin,
        )

    def tls_recovered(self, domain: str) -> None:
        """
        A message was delivered to C{domain} with the TLS its setting
        requires.  If TLS failures for C{domain} were alerted, a recovery
        notice (Info/System) ends the incident, telling how many failures
        it had, including those not yet alerted.  Cheap when C{domain} had
        no failure: the delivery engine may call it after every delivery.
        """
        incident = self._incidents.pop(domain.lower().rstrip("."), None)
        if incident is None:
            return
        try:
            if incident.timer is not None and incident.timer.active():
                incident.timer.cancel()
            self._dispatch_limited(self._recovery_alert(domain.lower().rstrip("."), incident))
        except Exception:
            self.log.failure("Could not raise the TLS recovery notice for {domain}", domain=domain)

    def _recovery_alert(self, domain: str, incident: _Incident) -> Alert:
        now = self._clock.seconds()
        unreported = incident.pending.count if incident.pending is not None else 0
        lines = [
            f"Delivery to {domain} with the required TLS succeeded again.",
            "",
            f"Destination domain: {domain}",
            f"Failing since: {_iso(incident.first_seen)}",
            f"Recovered at: {_iso(now)}",
            f"TLS failures in all: {incident.total}",
        ]
        if unreported:
            pending = incident.pending
            assert pending is not None
            lines.append(
                f"Not yet alerted: {unreported} ({', '.join(pending.result_types)}, "
                f"last at {_iso(pending.last_seen)})"
            )
        fields: dict[str, object] = {
            "domain": domain,
            "count": incident.total,
            "unreported": unreported,
            "first_seen": _iso(incident.first_seen),
            "recovered_at": _iso(now),
        }
        return make_alert(
            Severity.INFO,
            AlertType.SYSTEM,
            AlertKind.TLS_RECOVERED,
            f"TLS recovered for destination domain {domain}",
            "\n".join(lines) + "\n",
            fields,
            time=now,
            origin=self.origin,
        )

    def failing_domains(self) -> list[str]:
        """
        The domains with an open TLS-failure incident, sorted.
        """
        return sorted(self._incidents)
