# -*- test-case-name: tests.test_outbound_mx -*-
"""
Where to deliver mail for a domain: SMTP routes first, else the domain's MX
hosts, each with its addresses.

This replaces C{twisted.mail.relaymanager.MXCalculator}, which returns one
host instead of the ordered list a delivery needs for failover, treats a null
MX as a host named C{""}, falls back to the A record on NXDOMAIN, returns an IP
address as the "MX name" (which breaks certificate name checks) and resolves
with C{ANY} queries.  Here:

  - all MX hosts come back, in preference order, shuffled among equal
    preferences so that load spreads as RFC 5321 section 5.1 asks;
  - addresses come from separate A and AAAA queries, never C{ANY} (RFC 8482);
  - the implicit MX (the domain itself) is used only when the domain exists
    and has no MX records (NOERROR with no data), never on NXDOMAIN; an
    answer holding only a CNAME is no such answer: the target's MX is asked;
  - a null MX (RFC 7505) and NXDOMAIN are permanent failures: the message
    bounces at once instead of sitting in the queue for days;
  - SERVFAIL, REFUSED and timeouts are temporary: the message is deferred;
  - an MX whose exchange is an IP address (or not ASCII) names no host and
    is passed over, never connected to at that address;
  - an address-literal domain (C{user@[192.0.2.1]}) is delivered to that
    address, with no lookup;
  - given how the gateway itself is reached (L{LocalHost}), an exchanger
    that is the gateway and every one not preferred to it are dropped (RFC
    5321 section 5.1): a backup MX keeps the mail while the primary is
    down, and the best MX of a domain it has no route for bounces it at
    once ("loops back to myself", 5.4.6) instead of sending it to itself.

An C{[smtp_routes]} entry overrides DNS MX for its domain: its hosts are
tried in the order written, and a route host name is resolved for addresses
only (never for MX), as the ESA C{smtproutes} command does.
"""

from __future__ import annotations

import enum
import ipaddress
import random
import socket
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.names import dns
from twisted.names.client import Resolver
from twisted.names.error import (
    AuthoritativeDomainError,
    DNSFormatError,
    DNSNotImplementedError,
    DNSQueryRefusedError,
    DNSServerError,
    DNSUnknownError,
    DomainError,
)
from twisted.names.hosts import Resolver as HostsResolver
from twisted.names.resolve import ResolverChain

from esa_tls.config.model import GatewayConfig
from esa_tls.inbound.address import address_literal
from esa_tls.outbound.discard import DISCARD_ROUTE, is_discard_route

#: The query timeouts (seconds, one retry per entry) for every DNS lookup of
#: a delivery: the default of C{twisted.names.client}.
DEFAULT_DNS_TIMEOUT: tuple[int, ...] = (1, 3, 11, 45)

#: The port of a mail exchanger when neither the route nor the caller says
#: otherwise.
SMTP_PORT = 25


class HostSource(enum.Enum):
    """
    How a host became a delivery target; certificate name checks depend on
    it (the ESA Verify rules accept the MX host name, Hosted Verify only an
    SMTP route host name).
    """

    MX = "mx"
    IMPLICIT_MX = "implicit-mx"
    ROUTE = "smtp-route"


@frozen
class MailHost:
    """
    One host to try, with the addresses to try it at.

    @ivar name: the MX exchange name, the domain itself (implicit MX) or the
        SMTP route host as written (a name or an IP literal); lower case,
        without a trailing dot.
    @ivar port: the TCP port to connect to.
    @ivar addresses: textual IPv4 and IPv6 addresses, in the order to try.
    @ivar preference: the MX preference (0 for routes and implicit MX; for
        routes, the position in the route list).
    @ivar source: where the host came from.
    """

    name: str
    port: int
    addresses: tuple[str, ...]
    preference: int = 0
    source: HostSource = HostSource.MX

    @property
    def is_literal(self) -> bool:
        """
        Whether C{name} is an IP address: then there is no name to send as
        SNI and none to check a certificate against.
        """
        return is_ip_literal(self.name)

    @property
    def server_name(self) -> str | None:
        """
        The SNI name to send when connecting to this host: the MX (or route)
        host name, never an address.
        """
        return None if self.is_literal else self.name


@frozen
class MailRoute:
    """
    Everything needed to try a domain's hosts in order.

    @ivar domain: the recipient domain, lower case.
    @ivar hosts: hosts in the order to try; never empty.
    @ivar via_smtp_route: whether an C{[smtp_routes]} entry chose the hosts.
    @ivar skipped: hosts that had no usable address, with the reason, for
        the log and for C{tlsverify}.
    """

    domain: str
    hosts: tuple[MailHost, ...]
    via_smtp_route: bool = False
    skipped: tuple[tuple[str, str], ...] = ()


class RouteError(Exception):
    """
    No host to deliver to.

    @ivar permanent: C{True} when retrying cannot help (NXDOMAIN, null MX,
        no address for any exchanger): the recipients bounce.  C{False} for
        DNS trouble that may pass (SERVFAIL, timeouts): they are deferred.
    @ivar code: an SMTP-style reply code for bounce and deferral texts.
    @ivar status: the RFC 3463 enhanced status code.
    """

    def __init__(self, text: str, *, permanent: bool, code: int, status: str) -> None:
        super().__init__(text)
        self.text = text
        self.permanent = permanent
        self.code = code
        self.status = status

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"


@frozen
class LocalHost:
    """
    Where this gateway takes SMTP, to recognize itself among a domain's
    mail exchangers.

    @ivar endpoints: each listener's C{(address, port)}.
    @ivar every_address_ports: the ports of listeners bound to every
        address (C{0.0.0.0}, C{::}), where any of L{addresses}, and any
        address of the machine's (L{is_local_address}), is this gateway.
    @ivar addresses: the C{[interfaces]} addresses.
    @ivar names: each listener's banner name with its port.
    """

    endpoints: frozenset[tuple[str, int]] = frozenset()
    every_address_ports: frozenset[int] = frozenset()
    addresses: frozenset[str] = frozenset()
    names: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def from_config(cls, config: GatewayConfig) -> LocalHost:
        """
        The listeners of C{config}, made once per configuration (every
        delivery asks).  A listener behind a proxy (whose port the world
        does not see) is recognized by neither; the hop count of the
        listeners stops such a loop.
        """
        cached = _local_hosts.get(id(config))
        if cached is not None and cached[0] is config:
            return cached[1]
        local = cls._of(config)
        _local_hosts.clear()
        # The machine's addresses are looked at again with a new
        # configuration (a reload), so that one added since counts.
        _local_addresses.clear()
        _local_hosts[id(config)] = (config, local)
        return local

    @classmethod
    def _of(cls, config: GatewayConfig) -> LocalHost:
        endpoints = set()
        every_address = set()
        names = set()
        for listener in config.listeners.values():
            ip = listener.interface.address.ip
            if ip.is_unspecified:
                every_address.add(listener.port)
            else:
                endpoints.add((str(ip), listener.port))
            name = normalize_name(listener.hostname or config.system.hostname)
            if name:
                names.add((name, listener.port))
        return cls(
            frozenset(endpoints),
            frozenset(every_address),
            frozenset(i.ip for i in config.interfaces.values()),
            frozenset(names),
        )

    def is_self(self, host: MailHost) -> bool:
        """
        Whether C{host} is this gateway: its name is a listener's banner
        name, or one of its addresses a listener's, at the listener's port.
        """
        if (host.name, host.port) in self.names:
            return True
        for address in map(_unmapped, host.addresses):
            if (address, host.port) in self.endpoints:
                return True
            if host.port in self.every_address_ports and (
                address in self.addresses or is_local_address(address)
            ):
                return True
        return False


#: L{LocalHost.from_config}'s one configuration (kept in the value, so
#: that its identity stays valid).
_local_hosts: dict[int, tuple[GatewayConfig, LocalHost]] = {}

#: L{is_local_address}'s answers, for the configuration in L{_local_hosts}.
_local_addresses: dict[str, bool] = {}


def _unmapped(address: str) -> str:
    """
    C{address}, an IPv4-mapped IPv6 one (C{::ffff:192.0.2.10}) as the IPv4
    address it connects to.
    """
    if ":" not in address:
        return address
    mapped = ipaddress.IPv6Address(address).ipv4_mapped
    return address if mapped is None else str(mapped)


def is_local_address(address: str) -> bool:
    """
    Whether a connection to C{address} reaches this machine: a loopback or
    unspecified address (C{0.0.0.0} connects to the machine itself), in
    its IPv4-mapped form too, or one of the machine's own addresses.  A
    listener on every address takes mail at all of them, and the
    C{[interfaces]} of such a gateway need not name them (its listener's
    interface is C{0.0.0.0/0}).

    The kernel is asked where it would send a datagram (a UDP C{connect},
    which sends nothing): to an address of its own, from that same
    address.  Binding instead would say yes to every address on a machine
    that allows non-local binds (C{ip_nonlocal_bind}, common with VRRP),
    and then every MX would be taken for this gateway.
    """
    ip = ipaddress.ip_address(_unmapped(address))
    if ip.is_loopback or ip.is_unspecified:
        return True
    text = str(ip)
    known = _local_addresses.get(text)
    if known is not None:
        return known
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((text, 9))
            local = probe.getsockname()[0] == text
    except OSError:
        local = False  # no route to it: not here either
    if len(_local_addresses) >= 1024:
        _local_addresses.clear()
    _local_addresses[text] = local
    return local


def is_ip_literal(name: str) -> bool:
    """
    Whether C{name} is a textual IPv4 or IPv6 address.
    """
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def normalize_name(name: str) -> str:
    """
    The comparable form of a DNS name: lower case, no trailing dot.
    """
    return name.strip().rstrip(".").lower()


def parse_route_host(entry: str, default_port: int = SMTP_PORT) -> tuple[str, int]:
    """
    Split an C{[smtp_routes]} host entry into host and port.

    Accepted forms: C{host}, C{host:port}, C{1.2.3.4}, C{1.2.3.4:port},
    C{[2001:db8::1]}, C{[2001:db8::1]:port} and a bare IPv6 address.

    @raise ValueError: for an empty host or a port that is not 1-65535.
    """
    entry = entry.strip()
    host, port_text = entry, ""
    if entry.startswith("["):
        close = entry.find("]")
        if close < 0:
            raise ValueError(f"unbalanced brackets in route host {entry!r}")
        host, rest = entry[1:close], entry[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"unexpected text after ] in route host {entry!r}")
            port_text = rest[1:]
    elif entry.count(":") == 1:
        host, port_text = entry.split(":")
    host = normalize_name(host)
    if not host:
        raise ValueError(f"empty host in route {entry!r}")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port in route host {entry!r}")
        port = int(port_text)
    return host, port


_Row = TypeVar("_Row")

#: Tables by normalized name, by the identity of the table they were made
#: from (kept in the value, so that the identity stays valid).
_normalized: dict[tuple[int, str], tuple[Mapping[str, Any], dict[str, Any]]] = {}


def normalized_table(table: Mapping[str, _Row], keep: str = "") -> dict[str, _Row]:
    """
    C{table} (C{[smtp_routes]}, Destination Controls) by normalized name,
    made once per table: every delivery asks, and a table can have
    thousands of rows.

    @param keep: a key left as it is (C{[smtp_routes]}' C{ALL}).
    """
    cached = _normalized.get((id(table), keep))
    if cached is not None and cached[0] is table:
        return cached[1]
    rows = {key if key == keep else normalize_name(key): row for key, row in table.items()}
    if len(_normalized) >= 32:
        _normalized.clear()
    _normalized[(id(table), keep)] = (table, rows)
    return rows


def find_route(routes: Mapping[str, Sequence[str]], domain: str) -> Sequence[str] | None:
    """
    The C{[smtp_routes]} hosts for C{domain}: an exact entry wins, then the
    nearest C{.parent} entry (which matches subdomains only), then C{ALL}.
    """
    domain = normalize_name(domain)
    table = normalized_table(routes, keep="ALL")
    if domain in table:
        return table[domain]
    labels = domain.split(".")
    for i in range(1, len(labels)):
        parent = "." + ".".join(labels[i:])
        if parent in table:
            return table[parent]
    return table.get("ALL")


def resolver_from_config(config: GatewayConfig, reactor: IReactorTime | None = None) -> Any:
    """
    The resolver deliveries use: the C{[system] resolvers} servers when set
    (C{"host"} or C{"host:port"}), else the system's C{resolv.conf} with the
    hosts file and a cache in front.

    @return: an L{twisted.internet.interfaces.IResolver} provider.
    """
    if not config.system.resolvers:
        return ResolverChain(
            [
                HostsResolver(b"/etc/hosts"),
                Resolver(resolv=b"/etc/resolv.conf", reactor=reactor),
            ]
        )
    servers = [parse_route_host(entry, default_port=53) for entry in config.system.resolvers]
    return ResolverChain([Resolver(servers=servers, reactor=reactor)])


def _is_temporary(error: BaseException) -> bool:
    """
    Whether a lookup failure may go away: everything but "no such name"
    (NXDOMAIN, or a local authority that knows the name does not exist).
    """
    if isinstance(error, DNSServerError | DNSQueryRefusedError | DNSUnknownError):
        return True
    if isinstance(error, DNSFormatError | DNSNotImplementedError):
        return True
    return not isinstance(error, DomainError | AuthoritativeDomainError)


@frozen
class _Addresses:
    """
    The outcome of the A and AAAA lookups of one host.
    """

    name: str
    addresses: tuple[str, ...]
    temporary_error: str | None
    permanent_error: str | None


class MXResolver:
    """
    Resolves delivery routes with an injected resolver.

    @ivar resolver: an L{twisted.internet.interfaces.IResolver} provider.
    @ivar rng: the source of the shuffle among equal MX preferences
        (injectable so tests can pin an order).
    @ivar prefer_ipv6: try a host's IPv6 addresses before its IPv4 ones
        (the ESA C{ip_sort_pref}); IPv4 first by default.
    @ivar clock: with a clock, answers are remembered for their TTL (at
        most C{max_ttl} seconds): a queue delivering to one domain asked
        the same MX, A and AAAA questions for every message.  Answers
        without records (NODATA) are remembered for the negative TTL of
        the zone's SOA (RFC 2308), when the server gives one; failures are
        never remembered.
    """

    def __init__(
        self,
        resolver: Any,
        *,
        rng: random.Random | None = None,
        timeout: Sequence[int] = DEFAULT_DNS_TIMEOUT,
        prefer_ipv6: bool = False,
        clock: IReactorTime | None = None,
        max_ttl: float = 300.0,
    ) -> None:
        self.resolver = resolver
        self.clock = clock
        self.max_ttl = max_ttl
        self._answers: dict[tuple[str, int], tuple[float, list[Any]]] = {}
        self.rng = rng if rng is not None else random.Random()
        self.timeout = tuple(timeout)
        self.prefer_ipv6 = prefer_ipv6
        self._literal_routes: dict[tuple[str, tuple[str, ...]], MailRoute] = {}

    def resolve(
        self,
        domain: str,
        routes: Mapping[str, Sequence[str]] | None = None,
        *,
        port: int = SMTP_PORT,
        local: LocalHost | None = None,
    ) -> Deferred[MailRoute]:
        """
        Find the hosts to try for C{domain}.

        @param routes: the C{[smtp_routes]} table; an entry for the domain
            (or its parent, or C{ALL}) replaces the MX lookup.
        @param port: the port of hosts found through DNS (routes carry
            their own).
        @param local: this gateway: of hosts found through DNS, it and
            those not preferred to it are dropped (routes are as written).

        @return: a L{Deferred} firing with a L{MailRoute}, or failing with
            L{RouteError}.
        """
        domain = normalize_name(domain)
        routes = routes or {}
        literal = self._literal_route(domain, routes)
        if literal is not None:
            return succeed(literal)
        return Deferred.fromCoroutine(self._resolve(domain, routes, port, local))

    def _literal_route(self, domain: str, routes: Mapping[str, Sequence[str]]) -> MailRoute | None:
        """
        The route of C{domain} when its C{[smtp_routes]} hosts are all IP
        addresses: nothing to look up, so it is built once and remembered
        (a relay to a fixed next hop asks for it with every message).
        """
        if not routes:
            return None
        hosts = find_route(routes, domain)
        if hosts is None or is_discard_route(hosts):
            return None
        key = (domain, tuple(hosts))
        route = self._literal_routes.get(key)
        if route is not None:
            return route
        targets = [parse_route_host(entry) for entry in hosts]
        if not all(is_ip_literal(host) for host, _ in targets):
            return None
        route = MailRoute(
            domain,
            tuple(
                MailHost(host, port, (str(ipaddress.ip_address(host)),), position, HostSource.ROUTE)
                for position, (host, port) in enumerate(targets)
            ),
            True,
        )
        if len(self._literal_routes) >= 10000:
            self._literal_routes.clear()
        self._literal_routes[key] = route
        return route

    async def _resolve(
        self,
        domain: str,
        routes: Mapping[str, Sequence[str]],
        port: int,
        local: LocalHost | None = None,
    ) -> MailRoute:
        route = find_route(routes, domain)
        if is_discard_route(route):
            # The queue manager drops such mail before it gets here; a
            # caller that does get here (tlsverify) has no host to talk to.
            raise RouteError(
                f"Mail for {domain} is dropped: its SMTP route is {DISCARD_ROUTE}",
                permanent=True,
                code=550,
                status="5.3.5",
            )
        if route is not None:
            return await self._resolve_route(domain, route)
        if domain.startswith("["):
            return _address_literal_route(domain, port, local)
        try:
            answers = await self._mx_answers(domain)
        except RouteError:
            raise
        except Exception as e:
            raise self._lookup_error(domain, "MX", e) from e
        exchanges: list[tuple[int, str]] = []
        # Exchange names that are no host name (DNS carries any octets, and
        # an IP address is no name): hosts without an address, never a
        # reason to use the implicit MX.
        malformed: list[_Addresses] = []
        for rr in answers:
            if rr.type != dns.MX:
                continue
            raw = rr.payload.name.name
            try:
                name = normalize_name(raw.decode("ascii"))
            except UnicodeDecodeError:
                text = raw.decode("ascii", "backslashreplace")
                malformed.append(_Addresses(text, (), None, f"MX host name {text!r} is not ASCII"))
                continue
            if is_ip_literal(name):
                # An exchange is a domain name (RFC 5321 section 5.1); taken
                # as an address, DNS data alone would send mail to any
                # address (loopback, private networks).  Postfix and Exim
                # pass such a record over too.
                reason = f"MX host name {name} is an IP address, not a host name"
                malformed.append(_Addresses(name, (), None, reason))
                continue
            exchanges.append((rr.payload.preference, name))
        if not exchanges and not malformed:
            # NOERROR/NODATA: the domain exists but has no MX, so it is its
            # own mail exchanger (RFC 5321 section 5.1).
            found = await self._addresses(domain)
            if not found.addresses:
                raise self._no_address_error(domain, [found])
            host = MailHost(domain, port, found.addresses, 0, HostSource.IMPLICIT_MX)
            if local is not None and local.is_self(host):
                raise _loop_error(domain)
            return MailRoute(domain, (host,))
        if len(exchanges) == 1 and exchanges[0][1] == "" and not malformed:
            raise RouteError(
                f"Domain {domain} does not accept mail (null MX)",
                permanent=True,
                code=556,
                status="5.1.10",
            )
        # RFC 7505: a null MX next to real ones is an error of the domain; the
        # real exchangers are still worth trying.
        ordered = self._order([(pref, name) for pref, name in exchanges if name])
        results = await gatherResults(
            [Deferred.fromCoroutine(self._addresses(n)) for _, n in ordered]
        )
        hosts = tuple(
            MailHost(name, port, found.addresses, pref, HostSource.MX)
            for (pref, name), found in zip(ordered, results, strict=True)
            if found.addresses
        )
        mine = [host.preference for host in hosts if local is not None and local.is_self(host)]
        dropped: tuple[tuple[str, str], ...] = ()
        if mine:
            # RFC 5321 section 5.1: "it MUST discard MX records with equal
            # or greater preference value" than its own.
            cutoff = min(mine)
            dropped = tuple(
                (host.name, f"preference {host.preference}, not better than this gateway's")
                for host in hosts
                if host.preference >= cutoff
            )
            hosts = tuple(host for host in hosts if host.preference < cutoff)
            results = [
                found for (pref, _), found in zip(ordered, results, strict=True) if pref < cutoff
            ]
            if not hosts and not results:
                raise _loop_error(domain)
        results = [*malformed, *results]
        skipped = tuple(_skip_reason(found) for found in results if not found.addresses)
        if not hosts:
            raise self._no_address_error(domain, results)
        return MailRoute(domain, hosts, False, skipped + dropped)

    async def _mx_answers(self, domain: str) -> list[Any]:
        """
        The answer to the MX question of C{domain}, asked again of the
        alias's target when it holds a CNAME and no MX: an authoritative
        server answers with the CNAME alone, which is no "no MX" answer
        (RFC 5321 section 5.1: the target "is processed as if it were the
        initial domain").  C{twisted}'s C{MXCalculator} follows such
        chains too.

        @raise RouteError: a CNAME loop, or a chain longer than
            L{_MAX_CNAMES} (temporary, as a recursive server's SERVFAIL).
        """
        name = domain
        seen = {domain}
        for _ in range(_MAX_CNAMES):
            answers = await self._lookup(name, dns.MX)
            if any(rr.type == dns.MX for rr in answers):
                return answers
            target = _alias_target(answers, name)
            if target is None:
                return answers
            if target in seen:
                break
            seen.add(target)
            name = target
        raise RouteError(
            f"Temporary DNS failure looking up MX of {domain}: CNAME chain loops or is too long",
            permanent=False,
            code=451,
            status="4.4.3",
        )

    async def _resolve_route(self, domain: str, route: Sequence[str]) -> MailRoute:
        targets = [parse_route_host(entry) for entry in route]
        results = await gatherResults(
            [Deferred.fromCoroutine(self._addresses(host)) for host, _ in targets]
        )
        hosts = tuple(
            MailHost(host, port, found.addresses, position, HostSource.ROUTE)
            for position, ((host, port), found) in enumerate(zip(targets, results, strict=True))
            if found.addresses
        )
        skipped = tuple(_skip_reason(found) for found in results if not found.addresses)
        if not hosts:
            raise self._no_address_error(domain, results)
        return MailRoute(domain, hosts, True, skipped)

    def _order(self, exchanges: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """
        Sort by preference, shuffling within each preference; a host listed
        twice is kept once, at its best preference.
        """
        best: dict[str, int] = {}
        for pref, name in exchanges:
            best[name] = min(pref, best.get(name, pref))
        keyed = [(pref, self.rng.random(), name) for name, pref in best.items()]
        keyed.sort()
        return [(pref, name) for pref, _, name in keyed]

    async def _addresses(self, name: str) -> _Addresses:
        """
        Look up A and AAAA for C{name} (in parallel; never C{ANY}).
        """
        if is_ip_literal(name):
            return _Addresses(name, (str(ipaddress.ip_address(name)),), None, None)
        v4, v6 = await gatherResults(
            [
                Deferred.fromCoroutine(self._one_family(name, dns.A)),
                Deferred.fromCoroutine(self._one_family(name, dns.AAAA)),
            ]
        )
        first, second = (v6, v4) if self.prefer_ipv6 else (v4, v6)
        addresses = tuple(dict.fromkeys(first[0] + second[0]))
        temporary = first[1] or second[1]
        permanent = first[2] or second[2]
        return _Addresses(name, addresses, temporary, permanent)

    async def _one_family(
        self, name: str, rrtype: int
    ) -> tuple[tuple[str, ...], str | None, str | None]:
        label = "A" if rrtype == dns.A else "AAAA"
        try:
            answers = await self._lookup(name, rrtype)
        except Exception as e:
            text = f"{label} lookup of {name} failed: {_describe(e)}"
            if _is_temporary(e):
                return (), text, None
            return (), None, text
        if rrtype == dns.A:
            found = tuple(rr.payload.dottedQuad() for rr in answers if rr.type == dns.A)
        else:
            found = tuple(
                str(ipaddress.IPv6Address(rr.payload.address))
                for rr in answers
                if rr.type == dns.AAAA
            )
        return found, None, None

    async def _lookup(self, name: str, rrtype: int) -> list[Any]:
        """
        The answer records of one question, remembered for their TTL when
        there is a L{clock}.
        """
        key = (name, rrtype)
        now = self.clock.seconds() if self.clock is not None else 0.0
        cached = self._answers.get(key)
        if cached is not None:
            if cached[0] > now:
                return cached[1]
            del self._answers[key]
        lookup = {
            dns.MX: self.resolver.lookupMailExchange,
            dns.A: self.resolver.lookupAddress,
            dns.AAAA: self.resolver.lookupIPV6Address,
        }[rrtype]
        answers, authority, _additional = await lookup(name, self.timeout)
        if self.clock is not None:
            ttl = _ttl(answers, authority)
            if ttl is not None and ttl > 0:
                if len(self._answers) >= 10000:
                    self._answers.clear()
                self._answers[key] = (now + min(ttl, self.max_ttl), list(answers))
        return list(answers)

    def _lookup_error(self, domain: str, kind: str, error: BaseException) -> RouteError:
        if _is_temporary(error):
            return RouteError(
                f"Temporary DNS failure looking up {kind} of {domain}: {_describe(error)}",
                permanent=False,
                code=451,
                status="4.4.3",
            )
        return RouteError(
            f"Host or domain name not found: {domain}",
            permanent=True,
            code=550,
            status="5.1.2",
        )

    def _no_address_error(self, domain: str, results: Sequence[_Addresses]) -> RouteError:
        reasons = "; ".join(_skip_reason(found)[1] for found in results)
        if any(found.temporary_error for found in results):
            return RouteError(
                f"Temporary DNS failure resolving mail hosts of {domain}: {reasons}",
                permanent=False,
                code=451,
                status="4.4.3",
            )
        return RouteError(
            f"No address for any mail host of {domain}: {reasons}",
            permanent=True,
            code=550,
            status="5.4.4",
        )


#: How many names an MX question follows through CNAMEs (C{twisted}'s
#: C{MXCalculator} follows 3; resolvers give up near 8-16).
_MAX_CNAMES = 8


def _alias_target(answers: Sequence[Any], name: str) -> str | None:
    """
    Where the CNAME records of C{answers} lead from C{name}, or C{None}
    when C{name} is no alias there.
    """
    aliases = {
        normalize_name(rr.name.name.decode("ascii", "replace")): normalize_name(
            rr.payload.name.name.decode("ascii", "replace")
        )
        for rr in answers
        if rr.type == dns.CNAME
    }
    current = name
    for _ in range(len(aliases)):
        if current not in aliases:
            break
        current = aliases[current]
    return None if current == name else current


def _address_literal_route(domain: str, port: int, local: LocalHost | None) -> MailRoute:
    """
    The one host of an address-literal domain (C{user@[192.0.2.1]},
    C{user@[IPv6:2001:db8::1]}, as the listeners write them): RFC 5321
    section 5.1 has the mail go to that address, with no lookup, as
    Postfix does.  An address that names no single host (unspecified,
    multicast, broadcast, reserved), or this gateway, is a permanent
    failure: the listeners take such a recipient only from a client
    allowed to relay, and its mail must end in a bounce that says why, not
    in "domain not found".
    """
    try:
        address = address_literal(domain)
    except ValueError:
        raise RouteError(
            f"{domain} is not an address literal", permanent=True, code=550, status="5.1.2"
        ) from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if (
        address.is_unspecified
        or address.is_multicast
        or address.is_reserved  # 240.0.0.0/4, the broadcast address too
    ):
        raise RouteError(
            f"{domain} names no host to deliver to", permanent=True, code=550, status="5.1.2"
        )
    # Named by its address: no SNI, and no name for a certificate to match
    # (a Verify setting cannot be met by an address literal).
    host = MailHost(str(address), port, (str(address),), 0, HostSource.IMPLICIT_MX)
    if local is not None and local.is_self(host):
        raise _loop_error(domain)
    return MailRoute(domain, (host,))


def _loop_error(domain: str) -> RouteError:
    """
    This gateway is the best mail exchanger of C{domain} (and no route
    says where its mail goes): Postfix's words and RFC 3463's "routing
    loop detected".
    """
    return RouteError(
        f"mail for {domain} loops back to myself", permanent=True, code=554, status="5.4.6"
    )


def _ttl(answers: Sequence[Any], authority: Sequence[Any]) -> float | None:
    """
    How long an answer may be remembered: the smallest TTL of its records;
    for an answer without records, the SOA's negative TTL (RFC 2308
    section 5); C{None} when the response does not say.
    """
    if answers:
        return float(min(rr.ttl for rr in answers))
    for rr in authority:
        if rr.type == dns.SOA:
            return float(min(rr.ttl, rr.payload.minimum))
    return None


def _skip_reason(found: _Addresses) -> tuple[str, str]:
    return (
        found.name,
        found.temporary_error or found.permanent_error or f"no A or AAAA record for {found.name}",
    )


def _describe(error: BaseException) -> str:
    """
    A short text for a DNS failure: the exception class says what happened
    (DNSServerError is SERVFAIL); its argument is a whole DNS message.
    """
    return {
        "DNSNameError": "NXDOMAIN",
        "DNSServerError": "SERVFAIL",
        "DNSQueryRefusedError": "REFUSED",
        "DNSQueryTimeoutError": "timeout",
        "TimeoutError": "timeout",
    }.get(type(error).__name__, type(error).__name__)
