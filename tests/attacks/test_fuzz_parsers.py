"""
Property-based fuzzing (Hypothesis) of the parsers an attacker feeds
directly: SMTP paths (C{esa_tls.inbound.address}) against an independent
RFC 5321 reference grammar, the DATA scanner
(C{esa_tls.inbound.framing.DataReader}) against a line-by-line reference
and against itself under every way of cutting the input into reads, and
the HAT sender syntax (C{esa_tls.hat.syntax.parse_sender}).

C{make fuzz} runs these with many more examples (C{HYPOTHESIS_PROFILE=long}).
"""

from __future__ import annotations

import ipaddress

from hypothesis import assume, given, note
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from esa_tls.hat.syntax import (
    DomainSuffix,
    HostName,
    IPRange,
    SenderSyntaxError,
    parse_sender,
)
from esa_tls.inbound.address import AddressError, Path, parse_mail_from, parse_rcpt_to
from esa_tls.inbound.framing import DataReader
from tests.attacks.reference import (
    PRECEDENCE,
    body_bytes,
    paths,
    ref_data,
    ref_domain,
    ref_mailbox,
    valid_mailboxes,
)
from tests.attacks.support import FUZZ


def parse_path(keyword: str, text: str) -> Path:
    """
    Parse the argument of MAIL (C{keyword} C{FROM}) or RCPT (C{TO}).
    """
    if keyword == "FROM":
        return parse_mail_from(f"FROM:{text}")
    return parse_rcpt_to(f"TO:{text}", "example.com")


class AddressTests(SynchronousTestCase):
    @FUZZ
    @given(valid_mailboxes)
    def test_validAccepted(self, mailbox: str) -> None:
        """
        Every RFC 5321 mailbox is accepted as MAIL FROM and RCPT TO, with
        its domain lower-cased (an address literal in its one canonical
        spelling) and its local part intact.
        """
        for keyword in ("FROM", "TO"):
            path = parse_path(keyword, f"<{mailbox}>")
            assert path.mailbox is not None
            local, _, domain = mailbox.rpartition("@")
            self.assertEqual(path.mailbox.local, local)
            # Literals are generated in their canonical spelling already.
            expected = domain if domain.startswith("[") else domain.lower()
            self.assertEqual(path.mailbox.domain, expected)
            self.assertEqual(path.mailbox.routed, "%" in local or "!" in local)

    @FUZZ
    @given(paths, st.sampled_from(["FROM", "TO"]))
    def test_nothingOutsideTheGrammar(self, text: str, keyword: str) -> None:
        """
        Whatever the path, the parser either refuses it with an
        L{AddressError} (a 5xx reply) or returns a mailbox that the
        reference grammar accepts; it never raises anything else.
        """
        try:
            path = parse_path(keyword, f"<{text}>")
        except AddressError as e:
            self.assertTrue(500 <= e.code < 600)
            return
        if path.mailbox is None:
            self.assertEqual((keyword, text), ("FROM", ""))
            return
        if keyword == "TO" and text.lower() == "postmaster":
            return
        mailbox = text
        if mailbox.startswith("@"):
            mailbox = mailbox.split(":", 1)[1]
            self.assertTrue(path.mailbox.routed)
        note(repr(path.mailbox))
        self.assertTrue(ref_mailbox(mailbox), mailbox)

    @FUZZ
    @given(paths)
    def test_routedFormsFlagged(self, text: str) -> None:
        """
        A recipient the RAT would judge by one domain while delivery could
        go elsewhere is always flagged C{routed}: the domain of its
        canonical text is the domain checked, and C{%}, C{!}, a source
        route or an C{@} inside the local part mark it.
        """
        try:
            path = parse_rcpt_to(f"TO:<{text}>", "example.com")
        except AddressError:
            return
        mailbox = path.mailbox
        assert mailbox is not None
        canonical = str(mailbox)
        self.assertEqual(canonical.rpartition("@")[2], mailbox.domain)
        local = mailbox.local
        inner = local[1:-1] if local.startswith('"') else local
        if text.startswith("@") or any(c in inner for c in "@%!"):
            self.assertTrue(mailbox.routed, text)
        # What is stored and delivered must parse back to the same mailbox.
        again = parse_rcpt_to(f"TO:<{canonical}>", "example.com").mailbox
        assert again is not None
        self.assertEqual((again.local, again.domain), (mailbox.local, mailbox.domain))


# -- DATA --------------------------------------------------------------------------


def run_reader(pieces: list[bytes], max_size: int) -> tuple[object, bytes, bytes | None, int]:
    out: list[bytes] = []
    reader = DataReader(out.append, max_size)
    rest = None
    for index, piece in enumerate(pieces):
        rest = reader.feed(piece)
        if rest is not None:
            # The pieces after the terminator's belong to the commands.
            rest += b"".join(pieces[index + 1 :])
            break
    return reader.fault, b"".join(out), rest, reader.size


def cut(data: bytes, offsets: list[int]) -> list[bytes]:
    points = sorted({o % (len(data) + 1) for o in offsets})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


class DataReaderTests(SynchronousTestCase):
    @FUZZ
    @given(body_bytes, st.lists(st.integers(0, 10**6), max_size=12), st.integers(0, 3000))
    def test_chunkingDoesNotMatter(self, wire: bytes, offsets: list[int], max_size: int) -> None:
        """
        However the bytes are cut into reads, the scanner gives the same
        verdict, the same size, the same bytes after the terminator, and
        (for a clean message) the same content as when they come at once.
        """
        wire += b"\r\n.\r\nNOOP\r\n"
        whole = run_reader([wire], max_size)
        pieces = cut(wire, offsets)
        note(repr(pieces))
        chunked = run_reader(pieces, max_size)
        self.assertEqual(chunked[0], whole[0])
        self.assertEqual(chunked[2], whole[2])
        self.assertEqual(chunked[3], whole[3])
        if whole[0] is None:
            self.assertEqual(chunked[1], whole[1])

    @FUZZ
    @given(body_bytes, st.lists(st.integers(0, 10**6), max_size=6), st.integers(0, 3000))
    def test_matchesReference(self, wire: bytes, offsets: list[int], max_size: int) -> None:
        """
        The scanner agrees with the line-by-line reference: the message ends
        where the reference says, a clean message's content is exactly the
        unstuffed CRLF lines, and a faulty one gets the reply of its most
        serious fault (bare CR/LF, then NUL, then line length, then size).
        """
        wire += b"\r\n.\r\nQUIT\r\n"
        faults, content, rest = ref_data(wire, max_size)
        fault, got, got_rest, size = run_reader(cut(wire, offsets), max_size)
        self.assertEqual(got_rest, rest)
        if not faults:
            self.assertIsNone(fault)
            self.assertEqual(got, content)
            self.assertEqual(size, len(content))
            return
        assert isinstance(fault, tuple)
        expected = next(code for code in PRECEDENCE if code in faults)
        self.assertEqual(fault[1].split(b" ")[0], expected, faults)


# -- HAT sender syntax ----------------------------------------------------------------

sender_noise = st.text(alphabet="0123456789abcdef.:-/[]ABCDEFxn ALLdnslist", max_size=30)
senders = st.one_of(
    sender_noise,
    st.text(max_size=20),
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
    st.builds(lambda a, b: f"{a}-{b}", st.integers(0, 300), st.integers(0, 300)),
    st.builds(
        lambda a, b: f"{ipaddress.IPv4Address(a)}/{b}",
        st.integers(0, 2**32 - 1),
        st.integers(-1, 40),
    ),
    st.builds(
        lambda a, b: f"{ipaddress.IPv6Address(a)}/{b}",
        st.integers(0, 2**128 - 1),
        st.integers(-1, 140),
    ),
)
probes = st.one_of(
    st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
    st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
)


class SenderSyntaxTests(SynchronousTestCase):
    @FUZZ
    @given(senders, probes)
    def test_parseSenderTotal(
        self, text: str, probe: ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> None:
        """
        Any text either parses or raises L{SenderSyntaxError} (never another
        exception, which would stop start-up with a traceback instead of
        the file:key message); an address block is well-formed and matches
        exactly the addresses inside it; names are lower-case DNS names.
        """
        try:
            sender = parse_sender(text)
        except SenderSyntaxError:
            return
        note(repr(sender))
        if isinstance(sender, IPRange):
            self.assertLessEqual(int(sender.first), int(sender.last))
            self.assertEqual(sender.first.version, sender.last.version)
            inside = probe.version == sender.first.version and sender.first <= probe <= sender.last  # type: ignore[operator]
            self.assertEqual(sender.matches_address(probe), inside)
        elif isinstance(sender, (HostName, DomainSuffix)):
            name = sender.name if isinstance(sender, HostName) else sender.domain
            assume(name)
            self.assertEqual(name, name.lower())
            self.assertTrue(ref_domain(name), name)
        else:
            sender.matches_address(probe)
