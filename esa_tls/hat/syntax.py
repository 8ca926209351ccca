# -*- test-case-name: tests.test_hat_syntax -*-
"""
The ESA sender-group entry syntax (ESA reference section 2.2, Table 7-1).

One HAT entry is one of: an IPv4 address, partial address, range or CIDR
block; an IPv6 address, range or CIDR block; a fully qualified host name or a
C{.partial} domain; C{dnslist[zone]}; C{SBRS[a:b]}, C{SBRS[none]} or
C{SBO:n}; or C{ALL}.  L{parse_sender} turns the text into a frozen value that
says what it needs (DNS, a reputation service, nothing) and, for address
entries, matches an address on the spot.

Parsing is strict on purpose: a HAT entry that is silently read as something
else could put a stranger in the WHITELIST, so anything the ESA does not
document is refused with a reason an administrator can act on.

Choices where the ESA documentation is silent (each is the narrower reading,
so that an entry never matches more hosts than its author could expect):

  - A range is allowed only in the last octet given (C{10.1.1.1-50},
    C{10.1-5.}), as Table 7-1 lists; C{10.1-5.1.1} is refused.
  - Octets with leading zeros (C{010.1.1.1}) are refused: some software reads
    them as octal.
  - A CIDR block whose address has host bits set (C{10.1.1.1/16}) is refused
    rather than silently widened.
  - IPv6 text is an address in the usual notation, C{::} compression
    included; C{2001:db8::} is the one address C{2001:db8:0:0:0:0:0:0}, not a
    prefix.  Use C{2001:db8::/32} for a prefix.
  - An IPv6 range in one group (C{2001:db8:0:1-5:0:0:0:1}) leaves every other
    group fixed: it is the set of addresses that differ from the written one
    only in that group, within the range.
  - C{.partner.example} matches names below C{partner.example} but not
    C{partner.example} itself (the ESA adds both entries when it means both).
  - Host names must be fully qualified (at least two labels) and in ASCII
    (IDNA A-labels, C{xn--...}, for internationalized names).
"""

from __future__ import annotations

import re
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
)

from attrs import frozen

IPAddress = IPv4Address | IPv6Address


class SenderSyntaxError(ValueError):
    """
    A HAT sender entry is not valid ESA syntax.

    C{str()} of it is one short sentence naming the entry and what is wrong
    with it, so that the configuration loader can put it after the file name
    and key path and an administrator knows what to fix.

    @ivar entry: the offending entry as written.
    @ivar reason: what is wrong with it.
    """

    def __init__(self, kind: str, entry: str, reason: str) -> None:
        super().__init__(f"bad {kind} {entry!r}: {reason}")
        self.entry = entry
        self.reason = reason


@frozen
class IPRange:
    """
    A contiguous block of addresses of one family, from C{first} to C{last}
    inclusive: a full, partial or ranged IPv4 address, a CIDR block, or an
    IPv6 address or range.

    @ivar text: the entry as written (whitespace trimmed).
    """

    text: str
    first: IPAddress
    last: IPAddress

    @property
    def needs_dns(self) -> bool:
        return False

    @property
    def needs_reputation(self) -> bool:
        return False

    def matches_address(self, ip: IPAddress) -> bool:
        """
        Whether C{ip} lies in the block.  An address of the other family
        never does.
        """
        if ip.version != self.first.version:
            return False
        return int(self.first) <= int(ip) <= int(self.last)


@frozen
class IPv6GroupRange:
    """
    An IPv6 address with a range in one 16-bit group
    (C{2001:db8:0:1-5:0:0:0:1}): the other groups must equal the written
    ones.  Not contiguous, so not an L{IPRange}.

    @ivar address: the written address with the range's low end in place.
    @ivar group: the index (0 to 7) of the ranged group.
    @ivar low: the range's first value.
    @ivar high: the range's last value.
    """

    text: str
    address: IPv6Address
    group: int
    low: int
    high: int

    @property
    def needs_dns(self) -> bool:
        return False

    @property
    def needs_reputation(self) -> bool:
        return False

    def matches_address(self, ip: IPAddress) -> bool:
        if ip.version != 6:
            return False
        shift = 16 * (7 - self.group)
        mask = 0xFFFF << shift
        value = int(ip)
        if value & ~mask != int(self.address) & ~mask:
            return False
        return self.low <= (value & mask) >> shift <= self.high


@frozen
class HostName:
    """
    A fully qualified host name (C{mail.partner.example}).  It matches a
    connection whose forward-confirmed reverse DNS name is this name, so an
    address alone never matches it.

    @ivar name: the name in lower case without a trailing dot.
    """

    text: str
    name: str

    @property
    def needs_dns(self) -> bool:
        return True

    @property
    def needs_reputation(self) -> bool:
        return False

    def matches_address(self, ip: IPAddress) -> bool:
        return False

    def matches_name(self, name: str) -> bool:
        """
        Whether the verified host name C{name} (lower case) is this one.
        """
        return name == self.name


@frozen
class DomainSuffix:
    """
    A partial host name (C{.partner.example}): any host whose
    forward-confirmed reverse DNS name lies below that domain, at any depth.

    @ivar domain: the domain in lower case, without the leading dot.
    """

    text: str
    domain: str

    @property
    def needs_dns(self) -> bool:
        return True

    @property
    def needs_reputation(self) -> bool:
        return False

    def matches_address(self, ip: IPAddress) -> bool:
        return False

    def matches_name(self, name: str) -> bool:
        """
        Whether the verified host name C{name} (lower case) is below the
        domain.
        """
        return name.endswith("." + self.domain)


@frozen
class DNSList:
    """
    C{dnslist[zone]}: the connecting address is listed in the DNS list
    (DNSBL, RFC 5782) served under C{zone}.
    """

    text: str
    zone: str

    @property
    def needs_dns(self) -> bool:
        return True

    @property
    def needs_reputation(self) -> bool:
        return False

    def matches_address(self, ip: IPAddress) -> bool:
        return False

    def query_name(self, ip: IPAddress) -> str:
        """
        The name whose A record lists C{ip}: the address's octets (IPv4) or
        nibbles (IPv6) in reverse order, then the zone (RFC 5782 2.1, 2.4).
        """
        if ip.version == 4:
            labels = reversed(str(ip).split("."))
        else:
            labels = reversed(f"{int(ip):032x}")
        return ".".join([*labels, self.zone])


@frozen
class ReputationRange:
    """
    C{SBRS[low:high]}: the sender's reputation score lies in the range,
    inclusive.  Only a configured L{esa_tls.interfaces.IReputationSource}
    can say; without one it never matches.
    """

    text: str
    low: float
    high: float

    @property
    def needs_dns(self) -> bool:
        return False

    @property
    def needs_reputation(self) -> bool:
        return True

    def matches_address(self, ip: IPAddress) -> bool:
        return False

    def matches_score(self, score: float | None) -> bool:
        return score is not None and self.low <= score <= self.high


@frozen
class NoReputation:
    """
    C{SBRS[none]}: the reputation source knows nothing about the sender.
    Without a reputation source it never matches: not being asked is not
    the same as having no score.
    """

    text: str

    @property
    def needs_dns(self) -> bool:
        return False

    @property
    def needs_reputation(self) -> bool:
        return True

    def matches_address(self, ip: IPAddress) -> bool:
        return False

    def matches_score(self, score: float | None) -> bool:
        return score is None


@frozen
class NetworkOwner:
    """
    C{SBO:n}: the SenderBase network owner ID.  Parsed so that an ESA HAT
    loads, but L{esa_tls.interfaces.IReputationSource} has no way to give an
    owner ID, so it never matches.
    """

    text: str
    owner: int

    @property
    def needs_dns(self) -> bool:
        return False

    @property
    def needs_reputation(self) -> bool:
        return True

    def matches_address(self, ip: IPAddress) -> bool:
        return False


@frozen
class AllSenders:
    """
    C{ALL}: every host.
    """

    text: str

    @property
    def needs_dns(self) -> bool:
        return False

    @property
    def needs_reputation(self) -> bool:
        return False

    def matches_address(self, ip: IPAddress) -> bool:
        return True


#: Every kind of HAT sender entry.
Sender = (
    IPRange
    | IPv6GroupRange
    | HostName
    | DomainSuffix
    | DNSList
    | ReputationRange
    | NoReputation
    | NetworkOwner
    | AllSenders
)

_OCTET = re.compile(r"[0-9]+")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_HEX_GROUP = re.compile(r"[0-9a-fA-F]{1,4}")
_SCORE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_IPV4_CHARS = frozenset("0123456789.-/")


def parse_sender(text: str) -> Sender:
    """
    Parse one HAT sender entry.

    Keywords (C{ALL}, C{dnslist}, C{SBRS}, C{SBO}, C{none}) are
    case-insensitive and surrounding whitespace is ignored; nothing else is
    forgiven.

    @param text: one entry, as written in the configuration.
    @return: the entry as a value.
    @raise SenderSyntaxError: when C{text} is not an ESA sender entry.
    """
    entry = text.strip()
    lower = entry.lower()
    if not entry:
        raise SenderSyntaxError("sender entry", entry, "it is empty")
    if lower == "all":
        return AllSenders(entry)
    if lower.startswith("dnslist["):
        return _parse_dnslist(entry)
    if lower.startswith("sbrs["):
        return _parse_sbrs(entry)
    if lower.startswith("sbo:"):
        return _parse_sbo(entry)
    if any(c.isspace() for c in entry):
        raise SenderSyntaxError(
            "sender entry",
            entry,
            "it contains whitespace (write one entry per list item; comments are not allowed)",
        )
    if ":" in entry:
        return _parse_ipv6(entry)
    if set(entry) <= _IPV4_CHARS and any(c.isdigit() for c in entry):
        return _parse_ipv4(entry)
    if entry.startswith("."):
        return DomainSuffix(entry, _parse_domain(entry[1:], entry, "partial host name", 1))
    return HostName(entry, _parse_domain(entry, entry, "host name", 2))


def _parse_domain(name: str, entry: str, kind: str, min_labels: int) -> str:
    """
    Check and normalise a DNS name: ASCII letters, digits and hyphens in
    labels of 1 to 63 characters, at most 253 in all, not all digits at the
    end (that would be an address).

    @return: the name in lower case, without a trailing dot.
    """
    if not name.isascii():
        raise SenderSyntaxError(
            kind, entry, "it is not ASCII (write internationalized names as xn-- A-labels)"
        )
    name = name.lower()
    if name.endswith(".") and not name.endswith(".."):
        name = name[:-1]
    if not name:
        raise SenderSyntaxError(kind, entry, "the name is empty")
    if len(name) > 253:
        raise SenderSyntaxError(kind, entry, "the name is longer than 253 characters")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise SenderSyntaxError(kind, entry, "it has an empty label")
        if not _LABEL.fullmatch(label):
            raise SenderSyntaxError(
                kind,
                entry,
                f"label {label!r} is not 1 to 63 letters, digits or inner hyphens",
            )
    if len(labels) < min_labels:
        raise SenderSyntaxError(kind, entry, "a host name must be fully qualified")
    if labels[-1].isdigit():
        raise SenderSyntaxError(kind, entry, "the last label is all digits")
    return name


def _parse_dnslist(entry: str) -> DNSList:
    if not entry.endswith("]"):
        raise SenderSyntaxError("DNS list", entry, "expected dnslist[zone.example]")
    zone = entry[len("dnslist[") : -1].strip()
    if not zone:
        raise SenderSyntaxError("DNS list", entry, "the zone is empty")
    return DNSList(entry, _parse_domain(zone, entry, "DNS list", 2))


def _parse_sbrs(entry: str) -> ReputationRange | NoReputation:
    if not entry.endswith("]"):
        raise SenderSyntaxError("SBRS range", entry, "expected SBRS[low:high] or SBRS[none]")
    inner = entry[len("sbrs[") : -1].strip()
    if inner.lower() == "none":
        return NoReputation(entry)
    parts = inner.split(":")
    if len(parts) != 2:
        raise SenderSyntaxError("SBRS range", entry, "expected SBRS[low:high] or SBRS[none]")
    low_text, high_text = (p.strip() for p in parts)
    scores = []
    for part in (low_text, high_text):
        if not _SCORE.fullmatch(part):
            raise SenderSyntaxError("SBRS range", entry, f"{part!r} is not a number")
        score = float(part)
        if not -10.0 <= score <= 10.0:
            raise SenderSyntaxError("SBRS range", entry, f"score {part} is not from -10 to 10")
        scores.append(score)
    low, high = scores
    if low > high:
        raise SenderSyntaxError("SBRS range", entry, "the low end is above the high end")
    return ReputationRange(entry, low, high)


def _parse_sbo(entry: str) -> NetworkOwner:
    number = entry[len("sbo:") :].strip()
    if not number.isascii() or not number.isdigit():
        raise SenderSyntaxError("SBO entry", entry, "expected SBO:n with n a network owner number")
    return NetworkOwner(entry, int(number))


def _octet(part: str, entry: str, kind: str) -> int:
    if not _OCTET.fullmatch(part):
        raise SenderSyntaxError(kind, entry, f"{part!r} is not an octet")
    if len(part) > 1 and part.startswith("0"):
        raise SenderSyntaxError(kind, entry, f"octet {part} has a leading zero")
    value = int(part)
    if value > 255:
        raise SenderSyntaxError(kind, entry, f"octet {value} is out of range")
    return value


def _parse_ipv4(entry: str) -> IPRange:
    """
    Full, partial and ranged IPv4 addresses and IPv4 CIDR blocks.
    """
    if "/" in entry:
        return _parse_ipv4_cidr(entry)
    kind = "IPv4 range" if "-" in entry else "IPv4 address"
    body = entry[:-1] if entry.endswith(".") else entry
    parts = body.split(".")
    if len(parts) > 4:
        raise SenderSyntaxError(kind, entry, "an IPv4 address has at most four octets")
    if len(parts) == 4 and entry.endswith("."):
        raise SenderSyntaxError(kind, entry, "a full address takes no trailing dot")
    lows: list[int] = []
    highs: list[int] = []
    for index, part in enumerate(parts):
        if "-" in part:
            if index != len(parts) - 1:
                raise SenderSyntaxError(kind, entry, "a range is allowed only in the last octet")
            start, _, end = part.partition("-")
            if "-" in end:
                raise SenderSyntaxError(kind, entry, "a range has one '-'")
            low, high = _octet(start, entry, kind), _octet(end, entry, kind)
            if low > high:
                raise SenderSyntaxError(
                    kind, entry, f"the range start {low} is above its end {high}"
                )
        else:
            low = high = _octet(part, entry, kind)
        lows.append(low)
        highs.append(high)
    missing = 4 - len(parts)
    first = IPv4Address(bytes([*lows, *[0] * missing]))
    last = IPv4Address(bytes([*highs, *[255] * missing]))
    return IPRange(entry, first, last)


def _parse_ipv4_cidr(entry: str) -> IPRange:
    kind = "IPv4 CIDR block"
    address, _, prefix_text = entry.partition("/")
    if "-" in address:
        raise SenderSyntaxError(kind, entry, "a CIDR block cannot hold a range")
    parts = address.split(".")
    if len(parts) > 4:
        raise SenderSyntaxError(kind, entry, "an IPv4 address has at most four octets")
    octets = [_octet(part, entry, kind) for part in parts]
    prefix = _prefix(prefix_text, 32, entry, kind)
    base = IPv4Address(bytes([*octets, *[0] * (4 - len(octets))]))
    try:
        network = IPv4Network((base, prefix))
    except ValueError:
        suggestion = IPv4Network((base, prefix), strict=False)
        raise SenderSyntaxError(
            kind, entry, f"host bits are set (did you mean {suggestion}?)"
        ) from None
    return IPRange(entry, network.network_address, network.broadcast_address)


def _prefix(text: str, maximum: int, entry: str, kind: str) -> int:
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text.startswith("0")):
        raise SenderSyntaxError(kind, entry, f"prefix length {text!r} is not a number")
    prefix = int(text)
    if prefix > maximum:
        raise SenderSyntaxError(kind, entry, f"prefix length {prefix} is above {maximum}")
    return prefix


def _ipv6(text: str, entry: str, kind: str) -> IPv6Address:
    if "%" in text:
        raise SenderSyntaxError(kind, entry, "scoped addresses (%zone) are not allowed")
    try:
        address = ip_address(text)
    except ValueError:
        raise SenderSyntaxError(kind, entry, f"{text!r} is not an IPv6 address") from None
    if not isinstance(address, IPv6Address):
        raise SenderSyntaxError(kind, entry, f"{text!r} is not an IPv6 address")
    return address


def _parse_ipv6(entry: str) -> IPRange | IPv6GroupRange:
    """
    IPv6 addresses, CIDR blocks, address-to-address ranges and ranges in one
    group.
    """
    if "/" in entry:
        kind = "IPv6 CIDR block"
        address_text, _, prefix_text = entry.partition("/")
        address = _ipv6(address_text, entry, kind)
        prefix = _prefix(prefix_text, 128, entry, kind)
        try:
            network = IPv6Network((address, prefix))
        except ValueError:
            suggestion = IPv6Network((address, prefix), strict=False)
            raise SenderSyntaxError(
                kind, entry, f"host bits are set (did you mean {suggestion}?)"
            ) from None
        return IPRange(entry, network.network_address, network.broadcast_address)
    if "-" not in entry:
        address = _ipv6(entry, entry, "IPv6 address")
        return IPRange(entry, address, address)
    kind = "IPv6 range"
    group_range = _parse_ipv6_group_range(entry)
    if group_range is not None:
        return group_range
    start_text, _, end_text = entry.partition("-")
    if "-" in end_text:
        raise SenderSyntaxError(kind, entry, "a range has one '-'")
    start = _ipv6(start_text, entry, kind)
    end = _ipv6(end_text, entry, kind)
    if start > end:
        raise SenderSyntaxError(kind, entry, f"the range start {start} is above its end {end}")
    return IPRange(entry, start, end)


def _parse_ipv6_group_range(entry: str) -> IPRange | IPv6GroupRange | None:
    """
    Read C{entry} as an address with one group written C{low-high}, or
    return C{None} if it is not one (it may then be an address-to-address
    range).  The two readings never both apply: a group range has eight
    groups in all, an address range twice as many.
    """
    groups = entry.split(":")
    ranged = [i for i, group in enumerate(groups) if "-" in group]
    if len(ranged) != 1:
        return None
    index = ranged[0]
    low_text, _, high_text = groups[index].partition("-")
    if not (_HEX_GROUP.fullmatch(low_text) and _HEX_GROUP.fullmatch(high_text)):
        return None
    low_groups = [*groups[:index], low_text, *groups[index + 1 :]]
    high_groups = [*groups[:index], high_text, *groups[index + 1 :]]
    try:
        low_address = IPv6Address(":".join(low_groups))
        high_address = IPv6Address(":".join(high_groups))
    except ValueError:
        return None
    low, high = int(low_text, 16), int(high_text, 16)
    if low > high:
        raise SenderSyntaxError(
            "IPv6 range", entry, f"the range start {low_text} is above its end {high_text}"
        )
    differing = int(low_address) ^ int(high_address)
    if differing == 0:
        return IPRange(entry, low_address, low_address)
    group = 7 - (differing.bit_length() - 1) // 16
    if group == 7:
        return IPRange(entry, low_address, high_address)
    return IPv6GroupRange(entry, low_address, group, low, high)
