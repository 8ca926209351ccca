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
import re

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
from tests.attacks.support import FUZZ

# -- the reference grammar (RFC 5321 4.1.2 and 4.1.3), written apart ------------

_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_REF_DOT_STRING = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*\Z")
_REF_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"\Z')
_REF_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")


def ref_domain(text: str) -> bool:
    labels = text.split(".")
    return all(_REF_LABEL.match(label) and len(label) <= 63 for label in labels)


def ref_literal(text: str) -> bool:
    """
    An address literal: C{[IPv4]} with four decimal octets of 0-255, or
    C{[IPv6:...]} that is a valid IPv6 address (RFC 5321 4.1.3).
    """
    if not (text.startswith("[") and text.endswith("]")):
        return False
    inner = text[1:-1]
    if inner[:5].lower() == "ipv6:":
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            return False
        return True
    parts = inner.split(".")
    return len(parts) == 4 and all(
        p.isdigit() and p.isascii() and len(p) <= 3 and int(p) <= 255 for p in parts
    )


def ref_mailbox(text: str) -> bool:
    """
    Whether C{text} is a Mailbox (RFC 5321): a dot-string or quoted local
    part of at most 64 octets, C{@}, a domain or an address literal.
    """
    if text.startswith('"'):
        end = 1
        while end < len(text):
            if text[end] == "\\":
                end += 2
                continue
            if text[end] == '"':
                break
            end += 1
        local, rest = text[: end + 1], text[end + 1 :]
        if not _REF_QUOTED.match(local) or not rest.startswith("@"):
            return False
        domain = rest[1:]
    else:
        local, sep, domain = text.rpartition("@")
        if not sep or not _REF_DOT_STRING.match(local):
            return False
    if len(local) > 64 or len(domain) > 255:
        return False
    return ref_domain(domain) or ref_literal(domain)


# -- strategies ----------------------------------------------------------------

atoms = st.text(alphabet=_ATEXT.replace("A-Z", "ABCXYZ").replace("a-z", "abcxyz"), min_size=1)
dot_strings = st.lists(atoms, min_size=1, max_size=4).map(".".join)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
ipv4_literals = st.integers(0, 2**32 - 1).map(lambda n: f"[{ipaddress.IPv4Address(n)}]")
ipv6_literals = st.integers(0, 2**128 - 1).map(lambda n: f"[IPv6:{ipaddress.IPv6Address(n)}]")
valid_mailboxes = st.builds(
    lambda local, domain: f"{local}@{domain}",
    dot_strings.filter(lambda s: len(s) <= 64),
    st.one_of(domains, ipv4_literals, ipv6_literals),
)
#: Path-shaped text: the characters that matter to the grammar, so that
#: Hypothesis reaches its corners instead of failing at the first byte.
path_noise = st.text(
    alphabet='abc.@"\\%![]:,<> -_0123456789IPv6\x00\r\n\t\x7f\u00e9',
    max_size=40,
)
#: Address literals, well-formed or not (C{[1.2]}, C{[300.1.1.1]},
#: C{[IPv6:zz]}...).
literal_noise = st.builds(
    lambda local, inner: f"{local}@[{inner}]",
    dot_strings,
    st.text(alphabet="0123456789.:IPVipv6abcdef", max_size=24),
)
paths = st.one_of(
    valid_mailboxes,
    literal_noise,
    path_noise,
    st.builds(lambda a, b: a + b, valid_mailboxes, path_noise),
    st.builds(lambda a, b: a + b, path_noise, valid_mailboxes),
)


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

body_bytes = st.lists(
    st.sampled_from([b"a", b"b", b".", b"..", b"\r", b"\n", b"\r\n", b"\x00", b" ", b"x" * 300]),
    max_size=60,
).map(b"".join)


def ref_data(wire: bytes, max_size: int) -> tuple[set[bytes], bytes, bytes | None]:
    """
    The reference reading of a DATA phase: the message ends at the first
    C{CRLF.CRLF} (counting a CRLF before the first line); its lines are
    unstuffed; it is faulty if it holds a bare CR or LF, a NUL, a line over
    998 octets, or more than C{max_size} octets of content.

    @return: the kinds of fault (by enhanced code), the content, and the
        bytes after the terminator (C{None} while there is none).
    """
    stream = b"\r\n" + wire
    end = stream.find(b"\r\n.\r\n")
    if end < 0:
        return set(), b"", None
    lines = stream[2 : end + 2].split(b"\r\n")[:-1] if end else []
    faults = set()
    content = b""
    for line in lines:
        if b"\r" in line or b"\n" in line:
            faults.add(b"5.6.11")
        if b"\x00" in line:
            faults.add(b"5.6.0")
        if len(line) > 998:
            faults.add(b"5.5.2")
        content += (line[1:] if line.startswith(b".") else line) + b"\r\n"
    if len(content) > max_size:
        faults.add(b"5.3.4")
    return faults, content, stream[end + 5 :]


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


#: Precedence of faults: the reply a faulty message gets.
_PRECEDENCE = [b"5.6.11", b"5.6.0", b"5.5.2", b"5.3.4"]


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
        expected = next(code for code in _PRECEDENCE if code in faults)
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
