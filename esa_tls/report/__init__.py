"""
The TLS Connections report (ESA Monitor > TLS Connections): counters per
direction and domain, kept across restarts, shown by C{esa-tls report
tls}, the admin web page and C{/metrics}.

The pieces, each in its own module:

  - L{esa_tls.report.counts}: the report's columns as a value, and the
    counting rules.
  - L{esa_tls.report.counters}: the live counters the sessions and the
    delivery engine add to, flushed to disk from a thread.
  - L{esa_tls.report.storage}: the files under C{data_dir/reports/}.
  - L{esa_tls.report.table}: the report for a time window, as text and
    JSON.
  - L{esa_tls.report.chart}: the inline SVG chart.
  - L{esa_tls.report.metrics}: the Prometheus collector.
  - L{esa_tls.report.admin}: the admin web site.
"""

from __future__ import annotations

from esa_tls.report.counters import TLSCounters
from esa_tls.report.counts import Direction, Level, TLSCounts
from esa_tls.report.table import TLSReport

__all__ = ["Direction", "Level", "TLSCounters", "TLSCounts", "TLSReport"]
