"""
Tests for L{esa_tls.outbound.dotstuff}: DATA encoding that does not depend
on where the body is cut.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from esa_tls.outbound.dotstuff import DataEncoder, encode_body

#: Bodies made of the bytes that matter: dots, CR, LF and a letter.
bodies = st.lists(st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b"\r\n.", b"\n."])).map(
    b"".join
)


def _cuts(body: bytes, points: list[int]) -> list[bytes]:
    points = sorted({p % (len(body) + 1) for p in points})
    pieces, last = [], 0
    for p in points:
        pieces.append(body[last:p])
        last = p
    pieces.append(body[last:])
    return pieces


def _decode(wire: bytes) -> bytes:
    """
    What a receiving server makes of DATA bytes: lines up to the lone
    dot, each unstuffed.
    """
    lines = wire.split(b"\r\n")
    out = []
    for line in lines:
        if line == b".":
            break
        out.append(line[1:] if line.startswith(b".") else line)
    return b"".join(x + b"\r\n" for x in out)


def _canonical(body: bytes) -> bytes:
    text = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if text and not text.endswith(b"\n"):
        text += b"\n"
    return text.replace(b"\n", b"\r\n")


class DataEncoderTests(SynchronousTestCase):
    """
    L{DataEncoder} output is the same for every way of cutting the body.
    """

    def test_leading_dot(self) -> None:
        """
        A dot at the very start of the body is stuffed.
        """
        self.assertEqual(encode_body(b".\r\nQUIT\r\n"), b"..\r\nQUIT\r\n.\r\n")

    def test_dot_at_chunk_boundary(self) -> None:
        """
        A line starting with a dot right after a 16 KiB boundary is
        stuffed, so the body cannot end DATA early and smuggle commands.
        """
        body = b"x" * 16382 + b"\r\n" + b".\r\nMAIL FROM:<evil@example>\r\n"
        self.assertEqual(body[16384:16385], b".")
        wire = encode_body(body, chunk_size=16384)
        self.assertEqual(wire.count(b"\r\n.\r\n"), 1)
        self.assertTrue(wire.endswith(b"\r\n.\r\n"))
        self.assertIn(b"\r\n..\r\nMAIL FROM", wire)

    def test_cr_lf_split_across_chunks(self) -> None:
        """
        A CRLF cut between two chunks stays one line ending.
        """
        encoder = DataEncoder()
        wire = encoder.encode(b"a\r") + encoder.encode(b"\n.b") + encoder.finish()
        self.assertEqual(wire, b"a\r\n..b\r\n.\r\n")

    def test_canonical_lines(self) -> None:
        """
        A body whose line endings are all CRLF already (as the spool stores
        them) gets one more dot on each line that starts with one, wherever
        the chunks are cut, and nothing else changes.
        """
        self.assertEqual(
            encode_body(b"a\r\n.b\r\n..c\r\n\r\n.\r\n"),
            b"a\r\n..b\r\n...c\r\n\r\n..\r\n.\r\n",
        )
        encoder = DataEncoder()
        wire = encoder.encode(b"a\r\n") + encoder.encode(b".b\r\nc") + encoder.encode(b".d")
        self.assertEqual(wire + encoder.finish(), b"a\r\n..b\r\nc.d\r\n.\r\n")

    def test_bare_cr_and_lf(self) -> None:
        """
        Bare CR and bare LF never reach the wire unpaired.
        """
        self.assertEqual(encode_body(b"a\rb\nc"), b"a\r\nb\r\nc\r\n.\r\n")

    def test_empty_body(self) -> None:
        """
        An empty body is just the terminator.
        """
        self.assertEqual(encode_body(b""), b".\r\n")

    @given(bodies, st.lists(st.integers(min_value=0, max_value=10_000), max_size=6))
    def test_cut_independent(self, body: bytes, points: list[int]) -> None:
        """
        However the body is cut, the wire bytes are the same; they contain
        only CRLF line endings, end DATA exactly once, at the end, and
        decode back to the body with canonical line endings.
        """
        whole = encode_body(body)
        encoder = DataEncoder()
        pieces = b"".join(encoder.encode(p) for p in _cuts(body, points)) + encoder.finish()
        self.assertEqual(pieces, whole)
        self.assertEqual(whole.replace(b"\r\n", b"").count(b"\r"), 0)
        self.assertEqual(whole.replace(b"\r\n", b"").count(b"\n"), 0)
        self.assertEqual((b"\r\n" + whole).count(b"\r\n.\r\n"), 1)
        self.assertTrue((b"\r\n" + whole).endswith(b"\r\n.\r\n"))
        self.assertEqual(_decode(whole), _canonical(body))
