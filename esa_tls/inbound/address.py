# -*- test-case-name: tests.attacks.test_fuzz_parsers,tests.test_inbound_session -*-
"""
Strict parsing of SMTP paths (RFC 5321 4.1.2) and of their parameters.

Twisted's C{smtp.Address} strips source routes and accepts most anything; a
gateway that decides relaying by the recipient's domain cannot afford that.
Here an address is either well formed and plain, or refused with the reason,
and the forms that have been used to sneak mail through relays (C{%} hacks,
C{!} paths, quoted C{@}, source routes) are recognised so that the session can
refuse them to anyone whose policy does not say RELAY.
"""

from __future__ import annotations

import ipaddress
import re

from attrs import frozen

#: RFC 5321 4.5.3.1.1 and .2: 64 octets of local part, 255 of domain.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_STRING = rf"{_ATOM}(?:\.{_ATOM})*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_LITERAL = r"\[(?:[0-9.]+|[Ii][Pp][Vv]6:[0-9A-Fa-f:.]+)\]"

_MAILBOX = re.compile(rf"(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_DOMAIN}|{_LITERAL})\Z")
_ROUTE = re.compile(rf"(?:@{_DOMAIN}(?:,@{_DOMAIN})*):")
_PARAM = re.compile(r"(?P<key>[A-Za-z0-9][A-Za-z0-9-]*)(?:=(?P<value>[\x21-\x3c\x3e-\x7e]+))?\Z")


class AddressError(ValueError):
    """
    A path that is not acceptable.

    @ivar code: the SMTP reply code to give.
    @ivar text: the reply text, with its enhanced status code.
    """

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@frozen
class Mailbox:
    """
    A plain mailbox: C{local@domain}.

    @ivar routed: the path carried a source route, C{%}, C{!} or a quoted
        C{@}: forms that ask the receiver to relay onwards.  Only a RELAY
        policy may use such an address.
    """

    local: str
    domain: str
    routed: bool = False

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


@frozen
class Path:
    """
    A parsed C{MAIL FROM} or C{RCPT TO} argument: the mailbox (C{None} for
    the null reverse path C{<>}) and the ESMTP parameters, keys upper-cased.
    """

    mailbox: Mailbox | None
    params: tuple[tuple[str, str | None], ...] = ()

    def param(self, key: str) -> str | None:
        for k, v in self.params:
            if k == key:
                return v
        return None

    def has_param(self, key: str) -> bool:
        return any(k == key for k, _ in self.params)


def _split_path(argument: str, keyword: str) -> tuple[str, str]:
    """
    Split C{FROM:<path> params} into the path (inside the brackets) and the
    parameter text.
    """
    head, sep, rest = argument.partition(":")
    if not sep or head.strip().upper() != keyword:
        raise AddressError(501, f"5.5.4 Syntax: {keyword_command(keyword)}:<address>")
    rest = rest.lstrip(" ")
    if not rest.startswith("<"):
        raise AddressError(501, "5.1.7 Bad address syntax: the path must be in angle brackets")
    end = _closing_bracket(rest)
    if end < 0:
        raise AddressError(501, "5.1.7 Bad address syntax: missing '>'")
    return rest[1:end], rest[end + 1 :]


def keyword_command(keyword: str) -> str:
    return "MAIL FROM" if keyword == "FROM" else "RCPT TO"


def _closing_bracket(text: str) -> int:
    """
    Index of the C{>} closing the path, skipping quoted strings.
    """
    if '"' not in text:
        return text.find(">", 1)
    quoted = False
    escaped = False
    for i, ch in enumerate(text):
        if i == 0:
            continue
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return i
    return -1


def parse_mailbox(text: str) -> Mailbox:
    """
    Parse a mailbox, possibly with a source route.

    @raise AddressError: when it is not a well-formed mailbox.
    """
    routed = False
    if text.startswith("@"):
        m = _ROUTE.match(text)
        if m is None:
            raise AddressError(501, "5.1.7 Bad address syntax: malformed source route")
        text = text[m.end() :]
        routed = True
    if len(text) > MAX_PATH:
        raise AddressError(501, "5.1.7 Bad address syntax: path too long")
    m = _MAILBOX.match(text)
    if m is None:
        raise AddressError(501, f"5.1.7 Bad address syntax: <{text}>")
    local, domain = m.group("local"), m.group("domain")
    if len(local) > MAX_LOCAL_PART:
        raise AddressError(501, "5.1.7 Bad address syntax: local part longer than 64 octets")
    if len(domain) > MAX_DOMAIN:
        raise AddressError(501, "5.1.2 Bad address syntax: domain longer than 255 octets")
    domain = _canonical_domain(domain)
    if local.startswith('"'):
        inner = local[1:-1]
        if "@" in inner or "%" in inner or "!" in inner:
            routed = True
        # A quoted local part that needs no quoting is the same mailbox as the
        # unquoted form; keep the canonical unquoted text in that case.
        unescaped = re.sub(r"\\(.)", r"\1", inner)
        if re.fullmatch(_DOT_STRING, unescaped):
            local = unescaped
    elif "%" in local or "!" in local:
        routed = True
    return Mailbox(local=local, domain=domain, routed=routed)


def address_literal(domain: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """
    The address an address-literal domain names (C{[192.0.2.1]},
    C{[IPv6:2001:db8::1]}, the tag in any case), for the listeners that
    take it and for the delivery that goes to it.

    @raise ValueError: C{domain} is no such literal (C{[1.2]},
        C{[999.0.0.1]}).
    """
    inner = domain[1:-1] if domain[:1] == "[" and domain[-1:] == "]" else ""
    if inner[:5].lower() == "ipv6:":
        return ipaddress.IPv6Address(inner[5:])
    if inner.count(".") != 3:
        raise ValueError(domain)
    return ipaddress.IPv4Address(inner)


def _canonical_domain(domain: str) -> str:
    """
    A domain in lower case, or an address literal checked and written the
    one way it is compared and stored (C{[192.0.2.1]}, C{[IPv6:2001:db8::1]}):
    the regular expression lets through C{[1.2]} or C{[999.0.0.1]}, which
    name no host, and C{[ipv6:...]} spelt in another case would not parse
    again where the envelope is read back.

    @raise AddressError: for a literal that is not an address.
    """
    if not domain.startswith("["):
        return domain.lower()
    try:
        address = address_literal(domain)
    except ValueError:
        raise AddressError(501, f"5.1.3 Bad address syntax: {domain} is not an address") from None
    return f"[IPv6:{address}]" if address.version == 6 else f"[{address}]"


def _parse_params(text: str) -> tuple[tuple[str, str | None], ...]:
    params: list[tuple[str, str | None]] = []
    for word in text.split():
        m = _PARAM.match(word)
        if m is None:
            raise AddressError(555, f"5.5.4 Malformed parameter {word!r}")
        params.append((m.group("key").upper(), m.group("value")))
    return tuple(params)


def parse_mail_from(argument: str) -> Path:
    """
    Parse the argument of C{MAIL} (everything after the verb).
    """
    inner, rest = _split_path(argument, "FROM")
    params = _parse_params(rest)
    if inner == "":
        return Path(mailbox=None, params=params)
    return Path(mailbox=parse_mailbox(inner), params=params)


def parse_rcpt_to(argument: str, postmaster_domain: str) -> Path:
    """
    Parse the argument of C{RCPT}.  The bare C{<postmaster>} (RFC 5321
    4.1.1.3, which every server must accept) becomes
    C{postmaster@postmaster_domain}.
    """
    inner, rest = _split_path(argument, "TO")
    params = _parse_params(rest)
    if inner.lower() == "postmaster":
        return Path(mailbox=Mailbox("postmaster", postmaster_domain.lower()), params=params)
    if inner == "":
        raise AddressError(501, "5.1.3 Bad recipient address syntax: empty")
    return Path(mailbox=parse_mailbox(inner), params=params)
