# -*- test-case-name: tests.test_report_cli -*-
"""
Report windows as people write them: C{90m}, C{24h}, C{7d}, C{2w}.

A window is at most L{MAX_WINDOW}, the 90 days the counts are kept: a
report has one point per hour of its window, so an unbounded one (the
admin page's C{?since=}, which anyone who reaches the page can give)
would have the reactor build millions of empty hours.
"""

from __future__ import annotations

import re

__all__ = ["MAX_WINDOW", "WindowError", "parse_window"]

#: The longest window: the retention of the counts (90 days).
MAX_WINDOW = 90 * 86400.0

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_WINDOW = re.compile(r"\A\s*(\d+)\s*([smhdw])\s*\Z", re.IGNORECASE)


class WindowError(ValueError):
    """
    Not a window; the message shows the accepted form.
    """


def parse_window(text: str) -> float:
    """
    @return: the window in seconds.
    @raise WindowError: C{text} is not a positive number followed by one
        of C{s}, C{m}, C{h}, C{d}, C{w}, or is longer than L{MAX_WINDOW}.
    """
    match = _WINDOW.match(text)
    shown = text if len(text) <= 40 else text[:40] + "..."
    # Without its leading zeros, so that "0h" is no window; and looked at
    # before int() turns it into a number that may be thousands of digits
    # long: twelve are beyond the longest window in any unit.
    digits = match.group(1).lstrip("0") if match is not None else ""
    if match is None or not digits:
        raise WindowError(
            f"not a time window: {shown!r} (use a number and s, m, h, d or w, e.g. 24h or 7d)"
        )
    if len(digits) > 12 or int(digits) * _UNITS[match.group(2).lower()] > MAX_WINDOW:
        raise WindowError(f"time window too long: {shown!r} (at most 90d: counts are kept 90 days)")
    return float(int(digits) * _UNITS[match.group(2).lower()])
