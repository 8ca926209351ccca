# -*- test-case-name: tests.test_report_cli -*-
"""
Report windows as people write them: C{90m}, C{24h}, C{7d}, C{2w}.
"""

from __future__ import annotations

import re

__all__ = ["WindowError", "parse_window"]

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
        of C{s}, C{m}, C{h}, C{d}, C{w}.
    """
    match = _WINDOW.match(text)
    if match is None or int(match.group(1)) == 0:
        raise WindowError(
            f"not a time window: {text!r} (use a number and s, m, h, d or w, e.g. 24h or 7d)"
        )
    return float(int(match.group(1)) * _UNITS[match.group(2).lower()])
