# -*- test-case-name: tests.test_report_cli -*-
"""
Print a report: "tls" is the TLS Connections report (Monitor > TLS Connections).

C{esa-tls report tls [--since 24h] [--json] [--by-address]} reads the
counters the gateway keeps under C{data_dir/reports/} (all worker
processes added up) and prints, for the window ending now, the incoming
rows (by sender domain) and the outgoing rows (by destination domain) with
the ESA report's columns.  The text table's format is documented in
L{esa_tls.report.table}; C{--json} prints L{esa_tls.report.table.render_json}
(with the time series).  Counts a running gateway has not flushed yet (at
most its flush interval, a minute by default) are not included.

The window is rounded down to whole buckets (hours): C{--since 24h} at
13:07 covers 13:00 yesterday to now; it is at most 90 days, as long as
the counts are kept.  Exit status 0, or 2 for a bad
configuration or window.
"""

from __future__ import annotations

import argparse
import json
import time

from esa_tls.cli.main import EXIT_CONFIG_ERROR, CommandContext
from esa_tls.report.counters import DEFAULT_BUCKET_SECONDS
from esa_tls.report.storage import read_buckets, report_directory
from esa_tls.report.table import TLSReport, build_report, render_json, render_text
from esa_tls.report.window import WindowError, parse_window

__all__ = ["REPORTS", "add_arguments", "load_report", "run"]

#: The reports this command prints.
REPORTS = ("tls",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", choices=REPORTS, help="the report: tls (TLS Connections)")
    parser.add_argument(
        "--since",
        default="24h",
        metavar="WINDOW",
        help="how far back: a number and s, m, h, d or w, at most 90d (default: 24h)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--by-address",
        action="store_true",
        help="split incoming rows by sender IP address too",
    )


def load_report(data_dir: str, window: float, now: float | None = None) -> TLSReport:
    """
    The report for the last C{window} seconds, from the files under
    C{data_dir/reports/} (blocking: for command-line tools).
    """
    end = time.time() if now is None else now
    start = end - window
    rows = read_buckets(report_directory(data_dir), start)
    return build_report(rows, start, end, DEFAULT_BUCKET_SECONDS)


def run(options: argparse.Namespace, context: CommandContext) -> int:
    try:
        window = parse_window(options.since)
    except WindowError as e:
        print(f"esa-tls report: {e}", file=context.stderr)
        return EXIT_CONFIG_ERROR
    config = context.load_config()
    report = load_report(config.system.data_dir, window)
    if options.json:
        context.stdout.write(json.dumps(render_json(report), indent=1) + "\n")
    else:
        context.stdout.write(render_text(report, by_address=options.by_address))
    return 0
