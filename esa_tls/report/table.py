# -*- test-case-name: tests.test_report_counters -*-
"""
The TLS Connections report for a time window: rows per domain, totals,
and a time series for the chart, as values; and its two renderings, the
text table of C{esa-tls report tls} and the JSON of C{--json}.

Text format (columns separated by spaces, numbers right-aligned; a tool
may split each line on whitespace, since domains have none)::

    TLS Connections, 2026-05-01 13:00 to 2026-05-02 13:07 UTC

    Incoming (by sender domain)
    DOMAIN            REQ-OK REQ-FAIL  PREF-OK PREF-FAIL ATTEMPTED UNENCRYPTED     TLS% ENC-MSGS
    sender.example         2        1        0         1         4           0    100.0        5
    (unknown)              0        0        0         0         0           1      0.0        0
    TOTAL                  2        1        0         1         4           1     80.0        5

    Outgoing (by destination domain)
    DOMAIN            REQ-OK REQ-FAIL  PREF-OK PREF-FAIL ATTEMPTED UNENCRYPTED     TLS% ENC-MSGS
    (no connections)

The columns are those of the ESA report (see L{esa_tls.report.counts}):
required and preferred successes and failures, TLS attempted, unencrypted
connections, the share with TLS attempted, encrypted messages.  The
first line gives the window (its start rounded down to the hour, its end
now).  Rows are sorted by connections, most first, then by name; the
C{TOTAL} line ends each section; connections of unknown domain are
C{(unknown)}; both sections share one domain column width.  With
C{by_address}, incoming rows are per sender domain and IP address:
C{sender.example[192.0.2.1]}.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from attrs import frozen

from esa_tls.report.counts import Direction, TLSCounts
from esa_tls.report.storage import Key

__all__ = ["Point", "ReportRow", "TLSReport", "build_report", "render_json", "render_text"]

#: The domain shown for connections whose domain was not known.
UNKNOWN_DOMAIN = "(unknown)"

_HEADERS = (
    ("REQ-OK", lambda c: c.required_success),
    ("REQ-FAIL", lambda c: c.required_failure),
    ("PREF-OK", lambda c: c.preferred_success),
    ("PREF-FAIL", lambda c: c.preferred_failure),
    ("ATTEMPTED", lambda c: c.attempted),
    ("UNENCRYPTED", lambda c: c.unencrypted),
    ("TLS%", lambda c: f"{c.tls_percent:.1f}"),
    ("ENC-MSGS", lambda c: c.encrypted_messages),
)


@frozen
class ReportRow:
    """
    One domain's counts, and for incoming rows its senders' addresses.
    """

    domain: str
    counts: TLSCounts
    addresses: tuple[tuple[str, TLSCounts], ...] = ()


@frozen
class Point:
    """
    One bucket of the time series.
    """

    start: int
    incoming: TLSCounts
    outgoing: TLSCounts


@frozen
class TLSReport:
    """
    The report for C{[start, end]}.

    @ivar start: the start of the first bucket in the window (the window's
        start rounded down to a bucket).
    @ivar end: the end of the window (normally now); the bucket it falls
        in is included.
    @ivar series: one point per bucket from C{start} to the bucket of
        C{end}, empty buckets included, so a chart's time axis is regular.
    """

    start: float
    end: float
    bucket_seconds: int
    incoming: tuple[ReportRow, ...]
    outgoing: tuple[ReportRow, ...]
    series: tuple[Point, ...]

    def rows(self, direction: Direction) -> tuple[ReportRow, ...]:
        return self.incoming if direction is Direction.INCOMING else self.outgoing

    def total(self, direction: Direction) -> TLSCounts:
        out = TLSCounts()
        for row in self.rows(direction):
            out = out + row.counts
        return out


def _sorted_rows(by_domain: dict[str, dict[str, TLSCounts]]) -> tuple[ReportRow, ...]:
    rows = []
    for domain, addresses in by_domain.items():
        total = TLSCounts()
        for counts in addresses.values():
            total = total + counts
        listed = tuple(
            sorted(
                ((ip, c) for ip, c in addresses.items() if ip),
                key=lambda item: (-item[1].connections, item[0]),
            )
        )
        rows.append(ReportRow(domain or UNKNOWN_DOMAIN, total, listed))
    return tuple(sorted(rows, key=lambda r: (-r.counts.connections, r.domain)))


def build_report(
    rows: Iterable[tuple[int, int, Key, TLSCounts]],
    start: float,
    end: float,
    bucket_seconds: int,
) -> TLSReport:
    """
    Add up bucket rows into the report for C{[start, end]}.

    @param rows: C{(bucket start, bucket seconds, key, counts)}, from any
        number of workers; buckets outside the window are ignored.
    """
    first = int(start // bucket_seconds) * bucket_seconds
    by_direction: dict[Direction, dict[str, dict[str, TLSCounts]]] = {
        Direction.INCOMING: {},
        Direction.OUTGOING: {},
    }
    series: dict[int, dict[Direction, TLSCounts]] = {}
    for bucket, seconds, (direction, domain, ip), counts in rows:
        if bucket + seconds <= start or bucket > end:
            continue
        addresses = by_direction[direction].setdefault(domain, {})
        addresses[ip] = addresses.get(ip, TLSCounts()) + counts
        slot = int(bucket // bucket_seconds) * bucket_seconds
        point = series.setdefault(slot, {})
        point[direction] = point.get(direction, TLSCounts()) + counts
    points = []
    slot = first
    while slot <= end:
        values = series.get(slot, {})
        points.append(
            Point(
                slot,
                values.get(Direction.INCOMING, TLSCounts()),
                values.get(Direction.OUTGOING, TLSCounts()),
            )
        )
        slot += bucket_seconds
    return TLSReport(
        start=first,
        end=end,
        bucket_seconds=bucket_seconds,
        incoming=_sorted_rows(by_direction[Direction.INCOMING]),
        outgoing=_sorted_rows(by_direction[Direction.OUTGOING]),
        series=tuple(points),
    )


def format_minute(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(when))


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _section(
    title: str, rows: list[tuple[str, TLSCounts]], total: TLSCounts, width: int
) -> list[str]:
    widths = [max(len(h), 8) for h, _ in _HEADERS]
    widths[5] = max(widths[5], 11)

    def line(first: str, cells: Iterable[object]) -> str:
        parts = [first.ljust(width)]
        parts += [str(cell).rjust(w) for cell, w in zip(cells, widths, strict=True)]
        return " ".join(parts).rstrip()

    out = [title, line("DOMAIN", (h for h, _ in _HEADERS))]
    if not rows:
        out.append("(no connections)")
        return out
    for name, counts in rows:
        out.append(line(name, (get(counts) for _, get in _HEADERS)))
    out.append(line("TOTAL", (get(total) for _, get in _HEADERS)))
    return out


def render_text(report: TLSReport, *, by_address: bool = False) -> str:
    """
    The report as the text table described in the module docstring.
    """
    incoming: list[tuple[str, TLSCounts]] = []
    for row in report.incoming:
        if by_address and row.addresses:
            incoming += [(f"{row.domain}[{ip}]", counts) for ip, counts in row.addresses]
        else:
            incoming.append((row.domain, row.counts))
    outgoing = [(row.domain, row.counts) for row in report.outgoing]
    width = max([len("DOMAIN"), *(len(name) for name, _ in incoming + outgoing)])
    lines = [
        f"TLS Connections, {format_minute(report.start)} to {format_minute(report.end)} UTC",
        "",
        *_section(
            "Incoming (by sender domain and address)"
            if by_address
            else "Incoming (by sender domain)",
            incoming,
            report.total(Direction.INCOMING),
            width,
        ),
        "",
        *_section(
            "Outgoing (by destination domain)", outgoing, report.total(Direction.OUTGOING), width
        ),
    ]
    return "\n".join(lines) + "\n"


def render_json(report: TLSReport) -> dict[str, Any]:
    """
    The report as JSON::

        {"start": ISO, "end": ISO, "bucket_seconds": 3600,
         "incoming": {"total": COUNTS, "rows": [
             {"domain": "...", "counts": COUNTS,
              "addresses": [{"ip": "...", "counts": COUNTS}]}]},
         "outgoing": {"total": COUNTS, "rows": [...]},
         "series": [{"start": ISO, "incoming": COUNTS, "outgoing": COUNTS}]}

    where COUNTS is L{TLSCounts.to_json} (the stored columns plus
    C{attempted}, C{connections}, C{tls_percent}); outgoing rows have no
    C{addresses}.
    """

    def section(direction: Direction) -> dict[str, Any]:
        rows = []
        for row in report.rows(direction):
            entry: dict[str, Any] = {"domain": row.domain, "counts": row.counts.to_json()}
            if direction is Direction.INCOMING:
                entry["addresses"] = [
                    {"ip": ip, "counts": counts.to_json()} for ip, counts in row.addresses
                ]
            rows.append(entry)
        return {"total": report.total(direction).to_json(), "rows": rows}

    return {
        "start": _iso(report.start),
        "end": _iso(report.end),
        "bucket_seconds": report.bucket_seconds,
        "incoming": section(Direction.INCOMING),
        "outgoing": section(Direction.OUTGOING),
        "series": [
            {
                "start": _iso(p.start),
                "incoming": p.incoming.to_json(),
                "outgoing": p.outgoing.to_json(),
            }
            for p in report.series
        ],
    }
