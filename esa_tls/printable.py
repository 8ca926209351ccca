"""
Text from strangers made safe to show on one line.

Subjects come from senders, replies and certificate names from remote
servers, server names from clients: a CR or LF in one would forge a line
of a log or a listing, and an ESC would drive the administrator's
terminal.  Every place that shows such text (the mail log, the queue
listing, C{tlsverify}) escapes it the same way, so that what an
administrator reads is always the text, never its effect.
"""

from __future__ import annotations

__all__ = ["printable"]


def printable(text: str, *, escape_backslash: bool = False) -> str:
    """
    C{text} with each character that is not printable shown as its escape
    (C{\\x1b}, C{\\u2028}).

    @param escape_backslash: also double each backslash, where a reader must
        tell an escape from the same characters sent as text (the mail log).
    """
    if text.isprintable() and not (escape_backslash and "\\" in text):
        return text
    out = []
    for ch in text:
        if ch == "\\" and escape_backslash:
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)
