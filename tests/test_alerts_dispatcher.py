"""
The alert dispatcher as an administrator sees it: who gets which alert,
how repeated TLS failures for a domain are merged, the recovery notice,
the global switch, and hooks that fail or hang never holding anything up.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from esa_tls.alerts import (
    Alert,
    AlertDispatcher,
    AlertFields,
    AlertKind,
    AlertType,
    FilteredHook,
    Severity,
    format_subject,
    make_alert,
)
from esa_tls.alerts.dispatcher import MAX_ALERTS_PER_INTERVAL, MAX_INCIDENTS
from esa_tls.config.model import AlertRecipient, AlertSettings
from esa_tls.interfaces import IAlertHook

RECIPIENTS = (
    AlertRecipient("warn-system@example.com", ("warning",), ("system",)),
    AlertRecipient("all@example.com"),
    AlertRecipient("critical-only@example.com", ("critical",), ("system", "hardware")),
    AlertRecipient("warn-hardware@example.com", ("warning",), ("hardware",)),
)

SETTINGS = AlertSettings(tls_failure_alert=True, recipients=RECIPIENTS)


@implementer(IAlertHook)
class Recorder:
    """
    A hook that keeps what it gets.
    """

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def alert(self, alert: object) -> None:
        assert isinstance(alert, Alert)
        self.alerts.append(alert)


@implementer(IAlertHook)
class Raising:
    name = "raising"

    def alert(self, alert: object) -> None:
        raise RuntimeError("hook is broken")


@implementer(IAlertHook)
class Hanging:
    name = "hanging"

    def __init__(self) -> None:
        self.cancelled = 0

    def alert(self, alert: object) -> Deferred[None]:
        def cancel(d: Deferred[None]) -> None:
            self.cancelled += 1

        return Deferred(cancel)


def fail(dispatcher: AlertDispatcher, domain: str = "partner.example", **kw: Any) -> None:
    args: dict[str, Any] = {
        "result_type": "starttls-not-supported",
        "level": "required",
        "host": "mx1." + domain,
        "address": "192.0.2.1",
        "port": 25,
        "detail": "STARTTLS command not supported",
    }
    args.update(kw)
    dispatcher.tls_failure(domain, **args)


class SubjectTests(TestCase):
    def test_esaSubject(self) -> None:
        """
        Subjects read as the ESA's alert mails: severity, type in angle
        brackets, origin, then the title.
        """
        self.assertEqual(
            format_subject(
                Severity.WARNING,
                AlertType.SYSTEM,
                "TLS failure for destination domain partner.example",
            ),
            "Warning <System> esa_tls: TLS failure for destination domain partner.example",
        )

    def test_subjectIsOneLine(self) -> None:
        """
        A title with line breaks (from a peer's text, say) cannot add
        header lines: the subject is folded to one line.
        """
        subject = format_subject(Severity.INFO, AlertType.HARDWARE, "a\r\nBcc: x@y", "mx")
        self.assertEqual(subject, "Info <Hardware> mx: a Bcc: x@y")

    def test_fieldsFrozenAndJSON(self) -> None:
        """
        Alert fields are an immutable mapping; lists become tuples and
        None values are left out; the JSON form has them as lists.
        """
        fields = AlertFields.of({"mids": [1, 2], "host": None, "count": 2})
        self.assertEqual(dict(fields), {"mids": (1, 2), "count": 2})
        self.assertEqual(hash(fields), hash(AlertFields.of(count=2, mids=(1, 2))))
        alert = make_alert(Severity.INFO, AlertType.SYSTEM, "x", "t", "b", fields, time=0.0)
        self.assertEqual(alert.to_json()["fields"], {"count": 2, "mids": [1, 2]})
        self.assertEqual(alert.to_json()["time"], "1970-01-01T00:00:00Z")


class RoutingTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.hook = Recorder()
        self.dispatcher = AlertDispatcher(SETTINGS, [self.hook], self.clock)

    def test_tlsFailureGoesToWarningSystemSubscribers(self) -> None:
        """
        The TLS-failure alert is Warning/System and is addressed to exactly
        the recipients subscribed to Warning for System: not to the one
        subscribed only to Critical, nor to the one with Warning for
        Hardware only.
        """
        fail(self.dispatcher)
        (alert,) = self.hook.alerts
        self.assertEqual(alert.severity, Severity.WARNING)
        self.assertEqual(alert.type, AlertType.SYSTEM)
        self.assertEqual(alert.recipients, ("warn-system@example.com", "all@example.com"))
        self.assertEqual(
            alert.subject,
            "Warning <System> esa_tls: TLS failure for destination domain partner.example",
        )

    def test_criticalRouting(self) -> None:
        """
        A Critical/Hardware alert reaches the catch-all and the Critical
        subscriber of Hardware, and nobody subscribed only to Warning.
        """
        alert = make_alert(Severity.CRITICAL, AlertType.HARDWARE, "disk", "Disk failing", "b")
        self.dispatcher.dispatch(alert)
        self.assertEqual(
            self.hook.alerts[0].recipients, ("all@example.com", "critical-only@example.com")
        )

    def test_noSubscriber(self) -> None:
        """
        An alert nobody is subscribed to still reaches the hooks (the log
        keeps it), with no recipients.
        """
        dispatcher = AlertDispatcher(AlertSettings(True, (RECIPIENTS[0],)), [self.hook], self.clock)
        dispatcher.dispatch(make_alert(Severity.INFO, AlertType.UPDATER, "u", "Updated", "b"))
        self.assertEqual(self.hook.alerts[0].recipients, ())

    def test_alertContent(self) -> None:
        """
        The alert names the domain, the cause as an RFC 8460 result type,
        the host and address, the required level and the message.
        """
        fail(self.dispatcher, mid=42, dcid=7)
        (alert,) = self.hook.alerts
        self.assertEqual(alert.kind, AlertKind.TLS_FAILURE)
        self.assertEqual(alert.fields["domain"], "partner.example")
        self.assertEqual(alert.fields["result_type"], "starttls-not-supported")
        self.assertEqual(alert.fields["host"], "mx1.partner.example")
        self.assertEqual(alert.fields["address"], "192.0.2.1")
        self.assertEqual(alert.fields["level"], "required")
        self.assertEqual(alert.fields["mids"], (42,))
        self.assertEqual(alert.fields["dcid"], 7)
        self.assertEqual(alert.fields["count"], 1)
        self.assertIn("The TLS connection to partner.example failed.", alert.body)
        self.assertIn("starttls-not-supported", alert.body)
        self.assertIn("mx1.partner.example[192.0.2.1]", alert.body)
        self.assertIn("MID 42", alert.body)

    def test_switchOff(self) -> None:
        """
        With C{tls_failure_alert = false} TLS failures raise nothing, and
        there is no recovery notice either; other alerts still flow.
        """
        dispatcher = AlertDispatcher(AlertSettings(False, RECIPIENTS), [self.hook], self.clock)
        fail(dispatcher)
        dispatcher.tls_recovered("partner.example")
        self.assertEqual(self.hook.alerts, [])
        dispatcher.dispatch(make_alert(Severity.WARNING, AlertType.SYSTEM, "x", "Other", "b"))
        self.assertEqual(len(self.hook.alerts), 1)

    def test_filteredHook(self) -> None:
        """
        A hook configured for some severities only sees those.
        """
        pager = Recorder()
        dispatcher = AlertDispatcher(
            SETTINGS, [FilteredHook(pager, [Severity.CRITICAL])], self.clock
        )
        verifyObject(IAlertHook, FilteredHook(pager))
        fail(dispatcher)
        dispatcher.dispatch(make_alert(Severity.CRITICAL, AlertType.SYSTEM, "x", "Down", "b"))
        self.assertEqual([a.severity for a in pager.alerts], [Severity.CRITICAL])

    def test_recent(self) -> None:
        """
        The dispatcher keeps the most recent alerts, newest last, and
        counts them by severity, type and kind.
        """
        dispatcher = AlertDispatcher(SETTINGS, [], self.clock, keep_recent=2)
        for title in ("one", "two", "three"):
            dispatcher.dispatch(make_alert(Severity.INFO, AlertType.SYSTEM, "k", title, "b"))
        self.assertEqual([a.subject.rsplit(" ", 1)[1] for a in dispatcher.recent], ["two", "three"])
        self.assertEqual(dispatcher.counts[("info", "system", "k")], 3)


class MergeTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.hook = Recorder()
        self.dispatcher = AlertDispatcher(SETTINGS, [self.hook], self.clock)

    def test_mergedWithinInterval(self) -> None:
        """
        The first failure alerts at once; more failures for the same
        domain within 15 minutes raise nothing until the interval ends,
        then one alert with their count, hosts, causes and messages.
        """
        fail(self.dispatcher, mid=1)
        self.clock.advance(60)
        fail(self.dispatcher, mid=2)
        self.clock.advance(60)
        fail(
            self.dispatcher,
            mid=3,
            host="mx2.partner.example",
            address="192.0.2.2",
            result_type="certificate-host-mismatch",
        )
        self.assertEqual(len(self.hook.alerts), 1)
        self.clock.advance(15 * 60 - 121)
        self.assertEqual(len(self.hook.alerts), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.hook.alerts), 2)
        merged = self.hook.alerts[1]
        self.assertEqual(merged.fields["count"], 2)
        self.assertEqual(merged.fields["mids"], (2, 3))
        self.assertEqual(
            merged.fields["result_types"],
            ("starttls-not-supported", "certificate-host-mismatch"),
        )
        self.assertEqual(
            merged.fields["hosts"],
            ("mx1.partner.example[192.0.2.1]", "mx2.partner.example[192.0.2.2]"),
        )
        self.assertEqual(merged.fields["incident_failures"], 3)
        self.assertIn("(2 failures)", merged.subject)
        self.assertEqual(merged.recipients, ("warn-system@example.com", "all@example.com"))

    def test_quietIntervalNoAlert(self) -> None:
        """
        An interval without further failures ends without an alert; the
        next failure after it alerts at once.
        """
        fail(self.dispatcher)
        self.clock.advance(3600)
        self.assertEqual(len(self.hook.alerts), 1)
        fail(self.dispatcher)
        self.assertEqual(len(self.hook.alerts), 2)
        self.assertEqual(self.hook.alerts[1].fields["count"], 1)
        self.assertEqual(self.hook.alerts[1].fields["incident_failures"], 2)

    def test_domainsSeparate(self) -> None:
        """
        Merging is per domain: a failure for another domain alerts at once.
        """
        fail(self.dispatcher, "a.example")
        fail(self.dispatcher, "b.example")
        fail(self.dispatcher, "A.Example.")
        self.assertEqual([a.fields["domain"] for a in self.hook.alerts], ["a.example", "b.example"])

    def test_configurableInterval(self) -> None:
        """
        The merge interval is a parameter.
        """
        dispatcher = AlertDispatcher(SETTINGS, [self.hook], self.clock, merge_interval=60)
        fail(dispatcher)
        fail(dispatcher)
        self.clock.advance(60)
        self.assertEqual([a.fields["count"] for a in self.hook.alerts], [1, 1])
        self.assertIn("every 1 minute;", self.hook.alerts[0].body)

    def test_recovery(self) -> None:
        """
        When delivery to a failing domain succeeds again, an Info/System
        notice follows, to the Info/System subscribers, counting every
        failure of the incident, including those not yet alerted; the
        merge timer stops.
        """
        fail(self.dispatcher)
        self.clock.advance(30)
        fail(self.dispatcher)
        self.clock.advance(30)
        self.dispatcher.tls_recovered("partner.example")
        self.assertEqual(len(self.hook.alerts), 2)
        notice = self.hook.alerts[1]
        self.assertEqual(notice.kind, AlertKind.TLS_RECOVERED)
        self.assertEqual(notice.severity, Severity.INFO)
        self.assertEqual(notice.type, AlertType.SYSTEM)
        self.assertEqual(
            notice.subject,
            "Info <System> esa_tls: TLS recovered for destination domain partner.example",
        )
        self.assertEqual(notice.recipients, ("all@example.com",))
        self.assertEqual(notice.fields["count"], 2)
        self.assertEqual(notice.fields["unreported"], 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.dispatcher.tls_recovered("partner.example")
        self.assertEqual(len(self.hook.alerts), 2)

    def test_recoveryOfHealthyDomainSilent(self) -> None:
        """
        Success for a domain that never failed raises nothing.
        """
        self.dispatcher.tls_recovered("fine.example")
        self.assertEqual(self.hook.alerts, [])

    def test_newIncidentAfterRecovery(self) -> None:
        """
        After a recovery, a new failure alerts at once.
        """
        fail(self.dispatcher)
        self.dispatcher.tls_recovered("partner.example")
        fail(self.dispatcher)
        self.assertEqual(
            [a.kind for a in self.hook.alerts],
            [AlertKind.TLS_FAILURE, AlertKind.TLS_RECOVERED, AlertKind.TLS_FAILURE],
        )

    def test_floodOfDomainsBounded(self) -> None:
        """
        TLS failures for thousands of domains (a default Destination
        Control that requires TLS, and mail or bounces to many domains
        whose servers offer none) raise at most L{MAX_ALERTS_PER_INTERVAL}
        alerts in a merge interval, then one summary of the rest at its
        end, naming the first domains held and the count; the domains
        followed one by one are at most L{MAX_INCIDENTS}.  Before, every
        domain raised its own alert at once (a mail, a process, an HTTP
        request each) and was remembered until it recovered.
        """
        domains = [f"d{n}.example" for n in range(3000)]
        for domain in domains:
            fail(self.dispatcher, domain)
        self.assertEqual(len(self.hook.alerts), MAX_ALERTS_PER_INTERVAL)
        self.assertLessEqual(len(self.dispatcher.failing_domains()), MAX_INCIDENTS)
        self.clock.advance(15 * 60)
        self.assertEqual(len(self.hook.alerts), MAX_ALERTS_PER_INTERVAL + 1)
        summary = self.hook.alerts[-1]
        self.assertEqual(summary.kind, AlertKind.TLS_ALERTS_HELD)
        self.assertEqual(summary.severity, Severity.WARNING)
        self.assertEqual(summary.recipients, ("warn-system@example.com", "all@example.com"))
        self.assertEqual(summary.fields["held"], MAX_INCIDENTS - MAX_ALERTS_PER_INTERVAL)
        self.assertEqual(summary.fields["untracked_failures"], 3000 - MAX_INCIDENTS)
        self.assertIn(domains[MAX_ALERTS_PER_INTERVAL], summary.body)
        self.assertIn(domains[MAX_INCIDENTS], summary.body)
        self.assertLess(len(summary.body), 20000)

        # The flood goes on: still a bounded number of alerts per interval.
        for _ in range(3):
            before = len(self.hook.alerts)
            for domain in domains:
                fail(self.dispatcher, domain)
            self.clock.advance(15 * 60)
            self.assertLessEqual(len(self.hook.alerts) - before, MAX_ALERTS_PER_INTERVAL + 1)
            self.assertLessEqual(len(self.dispatcher.failing_domains()), MAX_INCIDENTS)

    def test_recoveryFloodBounded(self) -> None:
        """
        Recovery notices count against the same limit: many domains
        recovering together (our own TLS fixed) make a bounded number of
        alerts, the rest in the summary.
        """
        domains = [f"d{n}.example" for n in range(200)]
        for domain in domains:
            fail(self.dispatcher, domain)
        self.clock.advance(15 * 60)
        before = len(self.hook.alerts)
        for domain in domains:
            self.dispatcher.tls_recovered(domain)
        self.clock.advance(15 * 60)
        self.assertLessEqual(len(self.hook.alerts) - before, MAX_ALERTS_PER_INTERVAL + 1)
        self.assertEqual(self.dispatcher.failing_domains(), [])
        self.assertIn("TLS recovered for destination domain", self.hook.alerts[-1].body)

    def test_quietIncidentMakesRoom(self) -> None:
        """
        With L{MAX_INCIDENTS} domains failing, a domain that has not failed
        for a merge interval makes room for a new one: a long-running
        gateway does not fill up with domains it no longer sends to.
        """
        dispatcher = AlertDispatcher(SETTINGS, [self.hook], self.clock)
        for n in range(MAX_INCIDENTS):
            fail(dispatcher, f"old{n}.example")
            self.clock.advance(1)
        self.clock.advance(15 * 60)
        fail(dispatcher, "new.example")
        self.assertIn("new.example", dispatcher.failing_domains())
        self.assertEqual(len(dispatcher.failing_domains()), MAX_INCIDENTS)
        self.assertNotIn("old0.example", dispatcher.failing_domains())

    def test_networkTextOneLine(self) -> None:
        """
        An MX name from DNS (any octets) and a server's text are kept as
        one printable line each, escaped, and the text is cut at 1000
        characters: a hostile name cannot add lines to the alert.
        """
        fail(
            self.dispatcher,
            host="mx\r\nhosts: forged.example",
            detail="454 " + "x" * 5000 + "\u2028",
        )
        (alert,) = self.hook.alerts
        self.assertEqual(alert.fields["host"], "mx\\r\\nhosts: forged.example")
        self.assertIn("Hosts: mx\\r\\nhosts: forged.example[192.0.2.1]\n", alert.body)
        self.assertEqual(len(alert.fields["detail"]), 1003)
        self.assertTrue(alert.fields["detail"].endswith("x..."))
        self.assertEqual(len(alert.body.splitlines()), len(alert.body.split("\n")) - 1)

    def test_onTLSFailureEvent(self) -> None:
        """
        The delivery engine's failure event (any object with its
        attributes; enums are read by value) is accepted as is.
        """

        class Level:
            value = "required-verify"

        class Event:
            domain = "partner.example"
            level = Level()
            host = "mx.partner.example"
            address = "192.0.2.9"
            port = 25
            result_type = "certificate-not-trusted"
            detail = "self-signed certificate"
            mid = 5

        self.dispatcher.on_tls_failure(Event())
        (alert,) = self.hook.alerts
        self.assertEqual(alert.fields["level"], "required-verify")
        self.assertEqual(alert.fields["result_type"], "certificate-not-trusted")
        self.assertEqual(alert.fields["mids"], (5,))


class HookFailureTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.hook = Recorder()

    def test_raisingHookDoesNotStopOthers(self) -> None:
        """
        A hook that raises does not stop the hooks after it, nor the
        caller; the failure is logged.
        """
        dispatcher = AlertDispatcher(SETTINGS, [Raising(), self.hook], self.clock)
        fail(dispatcher)
        self.assertEqual(len(self.hook.alerts), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(dispatcher.hook_failures["raising"], 1)

    def test_hangingHookBounded(self) -> None:
        """
        A hook that never answers does not delay the others, and the
        dispatcher gives up on it after the hook timeout (cancelling it),
        logging it; the dispatch then completes.
        """
        hanging = Hanging()
        dispatcher = AlertDispatcher(SETTINGS, [hanging, self.hook], self.clock, hook_timeout=5)
        done = dispatcher.dispatch(make_alert(Severity.WARNING, AlertType.SYSTEM, "x", "t", "b"))
        self.assertEqual(len(self.hook.alerts), 1)
        self.assertNoResult(done)
        self.assertNoResult(dispatcher.idle())
        self.clock.advance(5)
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(hanging.cancelled, 1)
        self.assertEqual(dispatcher.hook_failures["hanging"], 1)
        self.flushLoggedErrors()
        self.assertIsNone(self.successResultOf(dispatcher.idle()))

    def test_hookOwnTimeoutKept(self) -> None:
        """
        A hook with its own, longer timeout (C{timeout = 30} on a command
        or webhook hook in C{[[alerts.hooks]]}) is given that long, filtered
        or not: before, the dispatcher's 10 seconds cut every hook short
        (a command hook was killed at 10 seconds whatever its setting).
        """
        slow = Hanging()
        slow.timeout = 30  # type: ignore[attr-defined]
        filtered = Hanging()
        filtered.timeout = 30  # type: ignore[attr-defined]
        quick = Hanging()
        dispatcher = AlertDispatcher(
            SETTINGS, [slow, FilteredHook(filtered, [Severity.WARNING]), quick], self.clock
        )
        dispatcher.dispatch(make_alert(Severity.WARNING, AlertType.SYSTEM, "x", "t", "b"))
        self.clock.advance(10)
        self.assertEqual((slow.cancelled, filtered.cancelled, quick.cancelled), (0, 0, 1))
        self.clock.advance(25)
        self.assertEqual((slow.cancelled, filtered.cancelled, quick.cancelled), (1, 1, 1))
        self.flushLoggedErrors()

    def test_tlsFailureReturnsAtOnce(self) -> None:
        """
        C{tls_failure}, the delivery engine's entry point, returns without
        waiting even when every hook hangs.
        """
        dispatcher = AlertDispatcher(SETTINGS, [Hanging(), Hanging()], self.clock)
        dispatcher.tls_failure("x.example", result_type="validation-failure")
        self.assertEqual(len(dispatcher.recent), 1)
        self.clock.advance(10)
        self.flushLoggedErrors()
