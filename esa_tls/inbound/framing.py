# -*- test-case-name: tests.attacks.test_smuggling,tests.attacks.test_fuzz_parsers,tests.attacks.test_mail_loop -*-
"""
The DATA phase as a byte scanner.

Twisted's line receiver hands every body line to Python one at a time and,
on an over-long line, falls back to command mode in the middle of a message
(twisted.md 1.6: an SMTP smuggling primitive).  L{DataReader} instead scans
whole chunks with C-speed C{bytes} methods, never leaves DATA before the one
true terminator C{CRLF.CRLF}, and notes (rather than acts on) everything
wrong on the way: bare CR or LF, NUL, over-long lines, oversize messages,
and a header with as many C{Received:} fields as a mail loop leaves.
The session decides the reply once the terminator arrives.
"""

from __future__ import annotations

import re
from collections.abc import Callable

#: RFC 5321 4.5.3.1.6: a text line is at most 1000 octets with its CRLF.
MAX_TEXT_LINE = 1000

_TERMINATOR = b"\r\n.\r\n"

#: The faults a message body can have, most serious first: a message with
#: several gets the reply of the first one here, whatever order they were
#: found in (that order depends on how the client's bytes were cut into
#: reads, which must not change the verdict).
BARE_LINE_END = (550, b"5.6.11 Message contains bare CR or LF characters")
NUL = (550, b"5.6.0 Message contains NUL characters")
LINE_TOO_LONG = (500, b"5.5.2 Line too long (RFC 5321 limit is 1000 octets)")
TOO_BIG = (552, b"5.3.4 Message size exceeds fixed maximum message size")
#: RFC 3463 X.4.6, "routing loop detected"; the text is Postfix's.
TOO_MANY_HOPS = (554, b"5.4.6 Too many hops")
_PRECEDENCE = (BARE_LINE_END, NUL, LINE_TOO_LONG, TOO_BIG, TOO_MANY_HOPS)

#: The start of a C{Received:} field in a lower-cased header, the obsolete
#: white space before the colon (RFC 5322 4.5.3) included.
_RECEIVED_FIELD = re.compile(rb"\r\nreceived[ \t]*:")

#: RFC 5321 6.3: a server counting C{Received:} fields to detect loops
#: "SHOULD use a large rejection threshold, normally at least 100".
MAX_RECEIVED_HEADERS = 100


def _rank(fault: tuple[int, bytes]) -> int:
    return _PRECEDENCE.index(fault) if fault in _PRECEDENCE else len(_PRECEDENCE)


class DataReader:
    """
    Collect one message body from the wire.

    Bytes are passed to C{sink} dot-unstuffed and with CRLF line endings,
    a few complete lines at a time; nothing is passed once a fault is noted.

    @ivar fault: C{None}, or the (code, text) reply the message gets at its
        end: the most serious problem found (see L{_PRECEDENCE}); among
        others (a store failure the session notes), the first.
    @ivar size: octets of message content seen (after unstuffing).
    @ivar hops: the C{Received:} fields in the message's header so far.
    """

    def __init__(
        self,
        sink: Callable[[bytes], None],
        max_size: int,
        max_hops: int = MAX_RECEIVED_HEADERS,
    ) -> None:
        self._sink = sink
        self._max_size = max_size
        self._max_hops = max_hops
        # Until the empty line that ends the header, each region's field
        # names are looked at; the body costs nothing more.
        self._in_header = True
        self.hops = 0
        # The buffer always starts with the CRLF that ended the previous
        # line (a virtual one before the first line), so that a terminator
        # or a dot at the start of a line is found by one search.
        self._buffer = b"\r\n"
        self.fault: tuple[int, bytes] | None = None
        self.size = 0

    def note(self, code: int, text: bytes) -> None:
        """
        Record a fault; the most serious one is the reply.
        """
        fault = (code, text)
        if self.fault is None or _rank(fault) < _rank(self.fault):
            self.fault = fault

    def feed(self, data: bytes) -> bytes | None:
        """
        Take more bytes of the body.

        @return: C{None} while the message goes on; once the terminator has
            been seen, the bytes that followed it (pipelined commands), which
            belong to the command reader.
        """
        buffer = self._buffer + data
        end = buffer.find(_TERMINATOR)
        if end >= 0:
            self._consume(buffer[: end + 2])
            self._buffer = b""
            return buffer[end + 5 :]
        cut = buffer.rfind(b"\r\n")
        if cut > 0:
            self._consume(buffer[: cut + 2])
            buffer = buffer[cut:]
        if len(buffer) > MAX_TEXT_LINE + 2:
            # A line with no end in sight: note it, and keep only what could
            # still be the start of the terminator, so that memory stays
            # bounded whatever the client sends.
            self.note(*LINE_TOO_LONG)
            # What is dropped is judged as if it had been kept, so that the
            # verdict does not depend on where the reads were cut.
            dropped = buffer[2:-1]
            if b"\r" in dropped or b"\n" in dropped:
                self.note(*BARE_LINE_END)
            if b"\x00" in dropped:
                self.note(*NUL)
            stuffed = buffer[:2] == b"\r\n" and dropped[:1] == b"."
            self._count(len(dropped) - stuffed)
            # The line is not at its start, so the terminator can only begin
            # with this line's own CRLF: the last byte may be its CR.
            buffer = b"xx" + buffer[-1:]
        self._buffer = buffer
        return None

    def _consume(self, region: bytes) -> None:
        """
        Check and pass on C{region}: complete lines, starting with the CRLF
        before the first of them and ending with the CRLF of the last.
        """
        lines = region.count(b"\r\n")
        if region.count(b"\r") != lines or region.count(b"\n") != lines:
            self.note(*BARE_LINE_END)
        if b"\x00" in region:
            self.note(*NUL)
        if (
            len(region) > MAX_TEXT_LINE + 2
            and max(map(len, region.split(b"\r\n"))) > MAX_TEXT_LINE - 2
        ):
            self.note(*LINE_TOO_LONG)
        # Dot-unstuffed, still after the CRLF before its first line.
        unstuffed = region.replace(b"\r\n.", b"\r\n")
        if self._in_header:
            self._count_hops(unstuffed)
        content = unstuffed[2:]
        self._count(len(content))
        if self.fault is None and content:
            self._sink(content)

    def _count_hops(self, region: bytes) -> None:
        """
        Count the C{Received:} fields of the header part of C{region}
        (unstuffed, as it is stored and as the next hop will count it; its
        lines each follow a CRLF, the first line included).  Field names are
        case-insensitive, and a folded field's further lines start with
        white space, so that only field starts can match.
        """
        end = region.find(b"\r\n\r\n")
        if end >= 0:
            self._in_header = False
            region = region[: end + 2]
        self.hops += len(_RECEIVED_FIELD.findall(region.lower()))
        if self.hops >= self._max_hops:
            self.note(*TOO_MANY_HOPS)

    def _count(self, octets: int) -> None:
        self.size += octets
        if self.size > self._max_size:
            self.note(*TOO_BIG)
