# -*- test-case-name: tests.test_report_admin -*-
"""
The TLS counters and alert counts for Prometheus, through the official
client library's exposition format.

A custom collector over a snapshot of the counters, registered in a
registry of its own for each scrape (never the library's global one, which
would mix in whatever else the process registered and could not be
rebuilt from the persisted totals).  Metrics::

    esa_tls_tls_connections_total{direction, result}
        result: required_success, required_failure, preferred_success,
        preferred_failure, unencrypted
    esa_tls_messages_total{direction, encrypted}      encrypted: yes | no
    esa_tls_outgoing_tls_connections_total{domain, result}
    esa_tls_alerts_total{severity, type, kind}
    esa_tls_alert_hook_failures_total{hook}

The connection and message counters count since the data directory was
made (they survive restarts); incoming counts have no domain label, since
sender domains are unbounded, and the outgoing ones name at most
L{esa_tls.report.counters.MAX_TOTAL_DOMAINS} domains (later ones are
C{domain="(other domains)"}).  The alert counters count since the process
started.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from esa_tls.report.counts import Direction, TLSCounts

__all__ = ["CONTENT_TYPE", "TLSCollector", "render_metrics"]

#: The C{Content-Type} of L{render_metrics}'s output.
CONTENT_TYPE: str = CONTENT_TYPE_LATEST

_RESULTS = (
    "required_success",
    "required_failure",
    "preferred_success",
    "preferred_failure",
    "unencrypted",
)


class TLSCollector:
    """
    Yields the metrics of one snapshot.
    """

    def __init__(
        self,
        totals: Mapping[tuple[Direction, str], TLSCounts],
        dispatcher: Any = None,
    ) -> None:
        """
        @param totals: L{esa_tls.report.counters.TLSCounters.totals}.
        @param dispatcher: an L{esa_tls.alerts.dispatcher.AlertDispatcher}
            for the alert counts, or C{None}.
        """
        self.totals = totals
        self.dispatcher = dispatcher

    def collect(self) -> Iterator[Metric]:
        per_direction: dict[Direction, TLSCounts] = {d: TLSCounts() for d in Direction}
        for (direction, _), counts in self.totals.items():
            per_direction[direction] = per_direction[direction] + counts
        connections = CounterMetricFamily(
            "esa_tls_tls_connections",
            "SMTP connections by direction and TLS result (ESA TLS Connections report).",
            labels=["direction", "result"],
        )
        messages = CounterMetricFamily(
            "esa_tls_messages",
            "Messages received or delivered, by whether TLS protected them.",
            labels=["direction", "encrypted"],
        )
        for direction, counts in per_direction.items():
            for result in _RESULTS:
                connections.add_metric([direction.value, result], getattr(counts, result))
            messages.add_metric([direction.value, "yes"], counts.encrypted_messages)
            messages.add_metric([direction.value, "no"], counts.unencrypted_messages)
        yield connections
        yield messages
        domains = CounterMetricFamily(
            "esa_tls_outgoing_tls_connections",
            "Delivery connections by destination domain and TLS result.",
            labels=["domain", "result"],
        )
        for (direction, domain), counts in sorted(self.totals.items(), key=lambda i: i[0][1]):
            if direction is Direction.OUTGOING:
                for result in _RESULTS:
                    domains.add_metric([domain or "(unknown)", result], getattr(counts, result))
        yield domains
        if self.dispatcher is not None:
            alerts = CounterMetricFamily(
                "esa_tls_alerts",
                "Alerts raised since the process started.",
                labels=["severity", "type", "kind"],
            )
            for (severity, type_, kind), n in sorted(self.dispatcher.counts.items()):
                alerts.add_metric([severity, type_, kind], n)
            yield alerts
            failures = CounterMetricFamily(
                "esa_tls_alert_hook_failures",
                "Alert hook calls that failed or timed out since the process started.",
                labels=["hook"],
            )
            for hook, n in sorted(self.dispatcher.hook_failures.items()):
                failures.add_metric([hook], n)
            yield failures


def render_metrics(
    totals: Mapping[tuple[Direction, str], TLSCounts], dispatcher: Any = None
) -> bytes:
    """
    @return: the exposition text of one snapshot (see L{CONTENT_TYPE}).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TLSCollector(totals, dispatcher))
    data: bytes = generate_latest(registry)
    return data
