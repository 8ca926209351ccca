# -*- test-case-name: tests.test_outbound_dotstuff -*-
"""
The DATA encoder: message bytes to what goes on the wire between C{354}
and the final C{.}.

Twisted's C{SMTPClient.transformChunk} dot-stuffs each 16 KiB chunk on its
own: a line that starts with C{.} right at a chunk boundary (or as the very
first line) goes out unstuffed, so a body containing C{CRLF.CRLF} there ends
DATA early and the rest of the body runs as SMTP commands on the next hop,
a second message smuggled by our own client (twisted.md 2.6).  It also
turns CRLF input into C{CR CR LF} and lets bare CRs through.

L{DataEncoder} keeps its state across chunks, so the output is the same
however the body is cut: every line ending on the wire is CRLF (a bare CR
or a bare LF becomes CRLF, never passing unpaired), and every line that
starts with C{.} gets one more.  The spool stores CRLF, dot-unstuffed
bytes, so for a well-formed message only the stuffing changes anything.
"""

from __future__ import annotations

CR = b"\r"
LF = b"\n"
CRLF = b"\r\n"


class DataEncoder:
    """
    Stateful CRLF canonicalisation and dot-stuffing across chunk boundaries.

    Feed chunks to L{encode} in order, then call L{finish} once for the
    tail and the terminating C{.CRLF}.

    @ivar _at_line_start: whether the next byte begins a line (true at the
        start of the body, so a leading C{.} is stuffed too).
    @ivar _pending_cr: the previous chunk ended in a CR whose partner LF,
        if any, is in the next chunk.
    """

    def __init__(self) -> None:
        self._at_line_start = True
        self._pending_cr = False

    def encode(self, chunk: bytes) -> bytes:
        """
        Encode the next piece of the body.
        """
        if not chunk:
            return b""
        if (
            not self._pending_cr
            and not chunk.endswith(CR)
            and chunk.count(CR) == chunk.count(LF) == chunk.count(CRLF)
        ):
            # Every line ending is already CRLF (a spooled message's always
            # are): only the stuffing changes anything, and a few scans in C
            # do it instead of a Python step per line.
            stuffed = chunk.replace(b"\r\n.", b"\r\n..")
            if self._at_line_start and chunk.startswith(b"."):
                stuffed = b"." + stuffed
            self._at_line_start = chunk.endswith(CRLF)
            return stuffed
        out = bytearray()
        data = chunk
        if self._pending_cr:
            # The CR that ended the previous chunk becomes a CRLF, and an
            # LF that follows it is that same line ending.
            self._pending_cr = False
            out += CRLF
            self._at_line_start = True
            if data.startswith(LF):
                data = data[1:]
        if data.endswith(CR):
            self._pending_cr = True
            data = data[:-1]
        if not data:
            return bytes(out)
        # Every CRLF, bare CR and bare LF is one line ending.
        lines = data.replace(CRLF, LF).replace(CR, LF).split(LF)
        for index, line in enumerate(lines):
            if index:
                out += CRLF
                self._at_line_start = True
            if line:
                if self._at_line_start and line.startswith(b"."):
                    out += b"."
                out += line
                self._at_line_start = False
        return bytes(out)

    def finish(self) -> bytes:
        """
        The end of the body: a pending line ending, a CRLF if the body did
        not end with one, and the C{.CRLF} that ends DATA.
        """
        out = bytearray()
        if self._pending_cr:
            self._pending_cr = False
            out += CRLF
            self._at_line_start = True
        if not self._at_line_start:
            out += CRLF
        out += b".\r\n"
        self._at_line_start = True
        return bytes(out)


def encode_body(body: bytes, chunk_size: int | None = None) -> bytes:
    """
    Encode a whole body at once, cut into C{chunk_size} pieces (all at
    once when C{None}): the DATA bytes, terminating C{.CRLF} included.
    """
    encoder = DataEncoder()
    if chunk_size is None:
        return encoder.encode(body) + encoder.finish()
    parts = [encoder.encode(body[i : i + chunk_size]) for i in range(0, len(body), chunk_size)]
    return b"".join(parts) + encoder.finish()
