"""
The reference model the fuzzers judge the gateway by, written apart from
the code under test: RFC 5321 paths (4.1.2, 4.1.3) and the DATA phase as a
plain line-by-line reading, with the Hypothesis strategies that feed them.
"""

from __future__ import annotations

import ipaddress
import re

from hypothesis import strategies as st

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


#: Precedence of faults: the reply a faulty message gets.
PRECEDENCE = [b"5.6.11", b"5.6.0", b"5.5.2", b"5.3.4"]


# -- MAIL and RCPT arguments --------------------------------------------------------

_REF_PARAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(?:=[\x21-\x3c\x3e-\x7e]+)?\Z")
_REF_ROUTE = re.compile(r"@[^,:@]+(?:,@[^,:@]+)*:")


def _closing(text: str) -> int:
    """
    Index of the C{>} that closes a path starting at C{text[0] == "<"},
    skipping quoted strings; -1 if none.
    """
    quoted = escaped = False
    for index in range(1, len(text)):
        ch = text[index]
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return index
    return -1


def ref_argument(argument: str, keyword: str) -> tuple[str, str | None] | None:
    """
    Read the argument of MAIL (C{keyword} C{FROM}) or RCPT (C{TO}) as
    RFC 5321 4.1.2 has it, lenient only about blanks around the keyword and
    colon: C{keyword:<path> params}.

    @return: C{None} if malformed; else the mailbox without any source
        route (C{""} for the null path, which only MAIL may use) and the
        source route (C{None} if there is none).
    """
    head, sep, rest = argument.partition(":")
    if not sep or head.strip(" ").upper() != keyword:
        return None
    rest = rest.lstrip(" ")
    if not rest.startswith("<"):
        return None
    end = _closing(rest)
    if end < 0:
        return None
    path, params = rest[1:end], rest[end + 1 :]
    if not all(_REF_PARAM.match(word) for word in params.split()):
        return None
    if path == "":
        return ("", None) if keyword == "FROM" else None
    if keyword == "TO" and path.lower() == "postmaster":
        return "postmaster", None
    route = None
    if path.startswith("@"):
        m = _REF_ROUTE.match(path)
        if m is None or not all(ref_domain(d[1:]) for d in m.group()[:-1].split(",")):
            return None
        route, path = m.group(), path[m.end() :]
    if len(path) > 256 or not ref_mailbox(path):
        return None
    return path, route


def ref_relays(mailbox: str, route: str | None, rat: tuple[str, ...]) -> bool:
    """
    Whether taking C{mailbox} as a recipient would be relaying by a listener
    whose RAT is C{rat}: it asks for onward routing (a source route, or C{@},
    C{%} or C{!} in the local part) or its domain is not the RAT's.
    """
    if route is not None:
        return True
    local, _, domain = mailbox.rpartition("@")
    if local.startswith('"'):
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    if any(c in local for c in "@%!"):
        return True
    domain = domain.lower()
    address = f"{local.lower()}@{domain}"
    for entry in rat:
        entry = entry.lower()
        if "@" in entry:
            if entry == address:
                return False
        elif entry.startswith("."):
            if domain.endswith(entry):
                return False
        elif domain == entry:
            return False
    return True
