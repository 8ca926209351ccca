# -*- test-case-name: tests.test_inbound_framing -*-
"""
The DATA phase as a byte scanner.

Twisted's line receiver hands every body line to Python one at a time and,
on an over-long line, falls back to command mode in the middle of a message
(twisted.md 1.6: an SMTP smuggling primitive).  L{DataReader} instead scans
whole chunks with C-speed C{bytes} methods, never leaves DATA before the one
true terminator C{CRLF.CRLF}, and notes (rather than acts on) everything
wrong on the way: bare CR or LF, NUL, over-long lines, oversize messages.
The session decides the reply once the terminator arrives.
"""

from __future__ import annotations

from collections.abc import Callable

#: RFC 5321 4.5.3.1.6: a text line is at most 1000 octets with its CRLF.
MAX_TEXT_LINE = 1000

_TERMINATOR = b"\r\n.\r\n"


class DataReader:
    """
    Collect one message body from the wire.

    Bytes are passed to C{sink} dot-unstuffed and with CRLF line endings,
    a few complete lines at a time; nothing is passed once a fault is noted.

    @ivar fault: C{None}, or the (code, text) reply the message gets at its
        end: the first problem found wins.
    @ivar size: octets of message content seen (after unstuffing).
    """

    def __init__(self, sink: Callable[[bytes], None], max_size: int) -> None:
        self._sink = sink
        self._max_size = max_size
        # The buffer always starts with the CRLF that ended the previous
        # line (a virtual one before the first line), so that a terminator
        # or a dot at the start of a line is found by one search.
        self._buffer = b"\r\n"
        self.fault: tuple[int, bytes] | None = None
        self.size = 0

    def note(self, code: int, text: bytes) -> None:
        """
        Record a fault; the first one is the reply.
        """
        if self.fault is None:
            self.fault = (code, text)

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
            self.note(500, b"5.5.2 Line too long (RFC 5321 limit is 1000 octets)")
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
            self.note(550, b"5.6.11 Message contains bare CR or LF characters")
        if b"\x00" in region:
            self.note(550, b"5.6.0 Message contains NUL characters")
        if (
            len(region) > MAX_TEXT_LINE + 2
            and max(map(len, region.split(b"\r\n"))) > MAX_TEXT_LINE - 2
        ):
            self.note(500, b"5.5.2 Line too long (RFC 5321 limit is 1000 octets)")
        content = region.replace(b"\r\n.", b"\r\n")[2:]
        self.size += len(content)
        if self.size > self._max_size:
            self.note(552, b"5.3.4 Message size exceeds fixed maximum message size")
        if self.fault is None and content:
            self._sink(content)
