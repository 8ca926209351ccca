# -*- test-case-name: tests.test_report_admin -*-
"""
The admin page's chart, drawn on the server as inline SVG: no script, no
external file, so the page works offline, behind a strict
Content-Security-Policy, and its numbers can be checked by a test.

One chart per direction, one column per time bucket: encrypted messages
(green) with unencrypted messages stacked on them (grey), and TLS failures
(red dots on a red line) on the same scale.  Every column carries its
numbers twice: in a C{<title>} that browsers show on hover, and in
C{data-*} attributes (C{data-start}, C{data-encrypted},
C{data-unencrypted}, C{data-failures}) for programs.
"""

from __future__ import annotations

import time
from html import escape

from esa_tls.report.counts import Direction
from esa_tls.report.table import TLSReport

__all__ = ["tls_chart_svg"]

_ENCRYPTED = "#2e7d32"
_CLEAR = "#9e9e9e"
_FAILED = "#c62828"


def _label(when: float, bucket_seconds: int) -> str:
    fmt = "%m-%d" if bucket_seconds >= 86400 else "%m-%d %H:%M"
    return time.strftime(fmt, time.gmtime(when))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def tls_chart_svg(
    report: TLSReport, direction: Direction, *, width: int = 720, height: int = 220
) -> str:
    """
    @return: an C{<svg>} element (text) charting C{direction} of
        C{report} over its series.
    """
    left, right, top, bottom = 48, 12, 24, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [
        (p.start, p.incoming if direction is Direction.INCOMING else p.outgoing)
        for p in report.series
    ]
    peak = max([1, *(max(c.messages, c.failures) for _, c in points)])
    step = plot_w / max(1, len(points))
    bar = max(1.0, step * 0.8)

    def y(value: int) -> float:
        return top + plot_h - plot_h * value / peak

    name = direction.value.capitalize()
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-direction="{direction.value}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{name} TLS: encrypted and unencrypted messages, TLS failures">',
        f'<text x="{left}" y="14" font-size="12">{name}: '
        f'<tspan fill="{_ENCRYPTED}">encrypted</tspan> / '
        f'<tspan fill="{_CLEAR}">unencrypted</tspan> messages, '
        f'<tspan fill="{_FAILED}">TLS failures</tspan></text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#444"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#444"/>',
        f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end">{peak}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" font-size="10" text-anchor="end">0</text>',
    ]
    line = []
    for index, (start, counts) in enumerate(points):
        x = left + index * step + (step - bar) / 2
        enc, clear, failures = (
            counts.encrypted_messages,
            counts.unencrypted_messages,
            counts.failures,
        )
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
        title = (
            f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(start))} UTC: {enc} encrypted, "
            f"{_plural(clear, 'unencrypted message')}; {_plural(failures, 'TLS failure')}"
        )
        out.append(
            f'<g class="bucket" data-start="{stamp}" data-encrypted="{enc}" '
            f'data-unencrypted="{clear}" data-failures="{failures}"><title>{escape(title)}</title>'
        )
        if enc:
            out.append(
                f'<rect x="{x:.1f}" y="{y(enc):.1f}" width="{bar:.1f}" '
                f'height="{y(0) - y(enc):.1f}" fill="{_ENCRYPTED}"/>'
            )
        if clear:
            out.append(
                f'<rect x="{x:.1f}" y="{y(enc + clear):.1f}" width="{bar:.1f}" '
                f'height="{y(enc) - y(enc + clear):.1f}" fill="{_CLEAR}"/>'
            )
        cx = left + index * step + step / 2
        line.append(f"{cx:.1f},{y(failures):.1f}")
        if failures:
            out.append(f'<circle cx="{cx:.1f}" cy="{y(failures):.1f}" r="3" fill="{_FAILED}"/>')
        out.append("</g>")
    if line:
        out.append(
            f'<polyline points="{" ".join(line)}" fill="none" stroke="{_FAILED}" stroke-width="1"/>'
        )
    if points:
        first, last = points[0][0], points[-1][0]
        out.append(
            f'<text x="{left}" y="{height - 8}" font-size="10">'
            f"{_label(first, report.bucket_seconds)}</text>"
        )
        out.append(
            f'<text x="{left + plot_w}" y="{height - 8}" font-size="10" text-anchor="end">'
            f"{_label(last, report.bucket_seconds)} UTC</text>"
        )
    out.append("</svg>")
    return "\n".join(out)
