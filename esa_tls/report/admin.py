# -*- test-case-name: tests.test_report_admin -*-
"""
The admin web site (off unless C{[admin] listen} is set): the TLS
Connections report with its charts and the recent alerts, and
C{/metrics} for Prometheus.

Pages:

  - C{/}: the report for the last 24 hours (C{?since=1h}, C{7d}... for
    another window), a chart and a table per direction, the domains whose
    required TLS is failing now, and the recent alerts, newest first.
  - C{/report.json}: the same report as C{esa-tls report tls --json}.
  - C{/metrics}: see L{esa_tls.report.metrics}.

The site only reads; it has no login, so bind it to loopback or a
management network (the default C{tcp:8025:interface=127.0.0.1}).  Pages
carry a Content-Security-Policy that forbids scripts and any outside
resource: the page is all inline HTML, CSS and SVG.
"""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any

from twisted.application.service import IService
from twisted.application.strports import service as strports_service
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from esa_tls.report.chart import tls_chart_svg
from esa_tls.report.counters import TLSCounters
from esa_tls.report.counts import Direction, TLSCounts
from esa_tls.report.metrics import CONTENT_TYPE, render_metrics
from esa_tls.report.table import TLSReport, format_minute, render_json
from esa_tls.report.window import WindowError, parse_window

__all__ = ["DEFAULT_LISTEN", "admin_service", "make_admin_site", "render_page"]

log = Logger()

#: The endpoint the issue proposes for C{[admin] listen}.
DEFAULT_LISTEN = "tcp:8025:interface=127.0.0.1"

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'"

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { padding: 2px 8px; border-bottom: 1px solid #ddd; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: bold; }
.critical { color: #b71c1c; } .warning { color: #e65100; } .info { color: #1b5e20; }
"""

_COLUMNS = (
    ("Required OK", lambda c: c.required_success),
    ("Required failed", lambda c: c.required_failure),
    ("Preferred OK", lambda c: c.preferred_success),
    ("Preferred failed", lambda c: c.preferred_failure),
    ("TLS attempted", lambda c: c.attempted),
    ("Unencrypted", lambda c: c.unencrypted),
    ("TLS %", lambda c: f"{c.tls_percent:.1f}"),
    ("Encrypted messages", lambda c: c.encrypted_messages),
    ("Unencrypted messages", lambda c: c.unencrypted_messages),
)


def _table(rows: list[tuple[str, TLSCounts]], total: TLSCounts, first: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h, _ in _COLUMNS)
    out = [f"<table><tr><th>{escape(first)}</th>{head}</tr>"]

    def row(name: str, counts: TLSCounts, css: str = "") -> str:
        cells = "".join(f'<td class="n">{get(counts)}</td>' for _, get in _COLUMNS)
        return f'<tr class="{css}"><td>{escape(name)}</td>{cells}</tr>'

    if not rows:
        out.append(f'<tr><td colspan="{len(_COLUMNS) + 1}">No connections.</td></tr>')
    out += [row(name, counts) for name, counts in rows]
    if rows:
        out.append(row("Total", total, "total"))
    out.append("</table>")
    return "\n".join(out)


def render_page(report: TLSReport, dispatcher: Any = None, *, window_text: str = "24h") -> bytes:
    """
    The admin page for C{report}, with C{dispatcher}'s recent alerts and
    failing domains if given.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>esa_tls: TLS Connections</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>TLS Connections</h1>",
        f"<p>Last {escape(window_text)}: {format_minute(report.start)} to "
        f"{format_minute(report.end)} UTC. "
        + " ".join(f'<a href="?since={w}">{w}</a>' for w in ("1h", "24h", "7d", "30d", "90d"))
        + ' | <a href="report.json?since='
        + escape(window_text)
        + '">JSON</a> | <a href="metrics">metrics</a></p>',
    ]
    for direction, first in (
        (Direction.INCOMING, "Sender domain"),
        (Direction.OUTGOING, "Destination domain"),
    ):
        rows = [(r.domain, r.counts) for r in report.rows(direction)]
        parts += [
            f'<h2 id="{direction.value}">{direction.value.capitalize()}</h2>',
            tls_chart_svg(report, direction),
            _table(rows, report.total(direction), first),
        ]
    if dispatcher is not None:
        failing = dispatcher.failing_domains()
        parts.append("<h2>Domains with failing required TLS</h2>")
        parts.append(
            "<p>" + (", ".join(escape(d) for d in failing) if failing else "None.") + "</p>"
        )
        parts.append("<h2>Recent alerts</h2>")
        alerts = list(reversed(dispatcher.recent))
        if not alerts:
            parts.append("<p>No alerts since the gateway started.</p>")
        else:
            parts.append("<table><tr><th>Time (UTC)</th><th>Severity</th><th>Subject</th></tr>")
            for alert in alerts:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(alert.time))
                parts.append(
                    f'<tr><td>{when}</td><td class="{alert.severity.value}">'
                    f"{alert.severity.label}</td><td>{escape(alert.subject)}</td></tr>"
                )
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts).encode("utf-8")


def _window(request: Request, default: str) -> tuple[str, float]:
    raw = request.args.get(b"since", [default.encode()])[0]
    text = raw.decode("ascii", "replace")
    return text, parse_window(text)


def _headers(request: Request, content_type: bytes) -> None:
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Security-Policy", _CSP.encode())
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Cache-Control", b"no-store")


def _respond(request: Request, d: Any, content_type: bytes) -> object:
    """
    Finish C{request} with the bytes C{d} fires with, or a 500 (logged).
    """
    finished = request.notifyFinish()
    gone: list[bool] = []
    finished.addErrback(lambda _: gone.append(True))

    def done(body: bytes) -> None:
        if gone:
            return
        _headers(request, content_type)
        request.write(body)
        request.finish()

    def failed(failure: Failure) -> None:
        log.failure("Admin page {uri} failed", failure, uri=request.uri)
        if gone:
            return
        request.setResponseCode(500)
        _headers(request, b"text/plain; charset=utf-8")
        request.write(b"internal error; see the gateway's log\n")
        request.finish()

    d.addCallbacks(done, failed)
    return NOT_DONE_YET


class _Bad(Resource):
    isLeaf = True

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(400)
        _headers(request, b"text/plain; charset=utf-8")
        return self.text.encode("utf-8") + b"\n"


class _ReportPage(Resource):
    isLeaf = True

    def __init__(self, counters: TLSCounters, dispatcher: Any, default: str) -> None:
        super().__init__()
        self.counters = counters
        self.dispatcher = dispatcher
        self.default = default

    def render_GET(self, request: Request) -> object:
        try:
            text, seconds = _window(request, self.default)
        except WindowError as e:
            return _Bad(str(e)).render_GET(request)
        d = self.counters.report(seconds)
        d.addCallback(render_page, self.dispatcher, window_text=text)
        return _respond(request, d, b"text/html; charset=utf-8")


class _ReportJSON(_ReportPage):
    def render_GET(self, request: Request) -> object:
        try:
            _, seconds = _window(request, self.default)
        except WindowError as e:
            return _Bad(str(e)).render_GET(request)
        d = self.counters.report(seconds)
        d.addCallback(lambda r: json.dumps(render_json(r), indent=1).encode("utf-8") + b"\n")
        return _respond(request, d, b"application/json")


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, counters: TLSCounters, dispatcher: Any) -> None:
        super().__init__()
        self.counters = counters
        self.dispatcher = dispatcher

    def render_GET(self, request: Request) -> object:
        d = self.counters.totals()
        d.addCallback(render_metrics, self.dispatcher)
        return _respond(request, d, CONTENT_TYPE.encode("ascii"))


class _Root(Resource):
    def __init__(self, page: Resource) -> None:
        super().__init__()
        self.page = page

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self.page
        return super().getChild(path, request)


def make_admin_site(
    counters: TLSCounters, dispatcher: Any = None, *, default_window: str = "24h"
) -> Site:
    """
    The admin site.

    @param counters: the gateway's live counters.
    @param dispatcher: the L{esa_tls.alerts.dispatcher.AlertDispatcher},
        for the recent alerts and the alert metrics; C{None} to leave them
        out.
    @param default_window: the report window without C{?since=}.
    """
    parse_window(default_window)
    page = _ReportPage(counters, dispatcher, default_window)
    root = _Root(page)
    root.putChild(b"report.json", _ReportJSON(counters, dispatcher, default_window))
    root.putChild(b"metrics", _Metrics(counters, dispatcher))
    site = Site(root)
    site.displayTracebacks = False
    return site


def admin_service(endpoint: str, site: Site, reactor: Any) -> IService:
    """
    A service serving C{site} on C{endpoint}, a server endpoint string
    (C{[admin] listen}, e.g. L{DEFAULT_LISTEN}).

    A UNIX socket is made 0600 unless the endpoint gives a C{mode}:
    Twisted's default, 0666, lets every local user read the page.
    """
    if _unix_without_mode(endpoint):
        endpoint += ":mode=600"
    service: IService = strports_service(endpoint, site, reactor=reactor)
    return service


def _unix_without_mode(endpoint: str) -> bool:
    """
    Whether C{endpoint} is a UNIX socket that leaves its mode to Twisted.
    Read as Twisted's parser reads it: the mode may be given by name or as
    the argument after the path (C{unix:PATH:MODE}), and a second one, by
    name, would make the endpoint a C{TypeError} at start-up.
    """
    try:
        from twisted.internet.endpoints import _parse
    except ImportError:  # pragma: no cover (a Twisted that renamed it)
        return False
    args, kwargs = _parse(endpoint)
    return args[:1] == ["unix"] and len(args) < 3 and "mode" not in kwargs
