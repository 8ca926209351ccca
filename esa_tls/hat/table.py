# -*- test-case-name: tests.test_hat_table -*-
"""
A listener's Host Access Table: classify a connecting host into a sender
group and so a mail flow policy.

The rules are the ESA's (reference section 2.1): groups are tried top to
bottom, the first group with any matching entry wins, and a group whose
policy's rule is CONTINUE never stops the search.  Everything else here is
about not being fooled:

  - A host-name entry matches only a name that the peer's address maps to
    (PTR) I{and} that maps back to the address (A or AAAA): anyone can
    publish a PTR record claiming to be C{mail.partner.example}.
  - A DNS failure, a timeout, a missing resolver or reputation source all
    count as "does not match".  They never make a host look trusted; at
    worst they let a later group (typically C{ALL}) decide.
  - Every DNS query and reputation query is bounded in time, so a dead DNS
    server delays a connection but never holds it forever.
  - When no group matches, the host gets a REJECT policy: a HAT that forgot
    its C{ALL} group must fail closed, not open.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address
from typing import Any, TypeVar

import attrs
from attrs import frozen
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DomainError
from twisted.python.failure import Failure
from zope.interface import implementer

from esa_tls.config.model import AccessRule, Listener, MailFlowPolicy
from esa_tls.hat.syntax import (
    AllSenders,
    DNSList,
    DomainSuffix,
    HostName,
    IPAddress,
    IPRange,
    IPv6GroupRange,
    NoReputation,
    ReputationRange,
    Sender,
    parse_sender,
)
from esa_tls.interfaces import IHostAccessTable, IReputationSource
from esa_tls.values import HATVerdict

_T = TypeVar("_T")

#: The default bound, in seconds, on each DNS or reputation query.
DEFAULT_TIMEOUT = 10.0

#: How many PTR names of one address are checked.  Real hosts have one or
#: two; a reverse zone that lists hundreds is someone trying to make us send
#: hundreds of forward queries.
MAX_PTR_NAMES = 10

#: How many peer addresses each table remembers the address-only verdict
#: of (and how many parsed addresses are remembered): a mail server sees
#: the same few thousand senders again and again, and parsing and matching
#: an address costs more than the rest of accepting its connection.
ADDRESS_CACHE_SIZE = 4096

#: How many CNAME links are followed inside one answer.
_MAX_CNAME_CHAIN = 8

#: DNSBL answers are in 127.0.0.0/8 (RFC 5782 2.1).  Some lists answer
#: 127.255.255.x to mean "query refused" (rate limits, public resolvers):
#: that is an error, not a listing, and an error never matches.
_LISTED = IPv4Network("127.0.0.0/8")
_DNSBL_ERRORS = IPv4Network("127.255.255.0/24")

#: Entries that decide on the peer address alone.
_AddressSender = IPRange | IPv6GroupRange | AllSenders


@frozen
class _Group:
    """
    A sender group ready for matching.

    @ivar immediate: the entries decided by the address alone.
    @ivar deferred: the entries that need a DNS or reputation answer and can
        match with the resolver and reputation source this table has (the
        others can never match and are left out).
    """

    name: str
    policy: MailFlowPolicy
    immediate: tuple[_AddressSender, ...]
    deferred: tuple[Sender, ...]

    def match_address(self, addresses: Sequence[IPAddress]) -> _AddressSender | None:
        for sender in self.immediate:
            if any(sender.matches_address(ip) for ip in addresses):
                return sender
        return None


@frozen
class _ReverseDNS:
    """
    What reverse DNS said about one peer.

    @ivar names: every PTR name, lower case, in answer order.
    @ivar verified: the PTR names whose forward lookup holds the peer's
        address.
    """

    names: tuple[str, ...] = ()
    verified: tuple[str, ...] = ()


def _name(value: object) -> str:
    """
    A DNS name from an answer, lower case, without the trailing dot; C{""}
    for one that is not ASCII.  Any byte is valid in a label on the wire,
    and the peer writes its own reverse zone: such a name is no name (it
    matches nothing), not an error that fails the whole classification.
    """
    try:
        return str(value).rstrip(".").lower()
    except UnicodeError:
        return ""


def _answers_for(answers: Sequence[dns.RRHeader], name: str, record_type: int) -> list[Any]:
    """
    The payloads of the C{record_type} records for C{name} in an answer
    section, following CNAMEs that the same answer gives.  Records for any
    other name are ignored: a server's extra records are not evidence.
    """
    wanted = {_name(name)}
    for _ in range(_MAX_CNAME_CHAIN):
        targets = {
            _name(rr.payload.name)  # type: ignore[union-attr]
            for rr in answers
            if rr.type == dns.CNAME and _name(rr.name) in wanted
        }
        if targets <= wanted:
            break
        wanted |= targets
    return [rr.payload for rr in answers if rr.type == record_type and _name(rr.name) in wanted]


@lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def _peer_addresses(address: str) -> tuple[IPAddress, ...]:
    """
    The addresses to match for a peer: the address itself, and for an
    IPv4-mapped IPv6 address (a dual-stack socket) the IPv4 address first,
    since that is the host's real address and the one its DNS describes.

    @raise ValueError: C{address} is not an IP address.
    """
    ip = ip_address(address.strip("[]").partition("%")[0])
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return (ip.ipv4_mapped, ip)
    return (ip,)


def fallback_policy(listener: Listener) -> MailFlowPolicy:
    """
    The policy for a host that no sender group matches: the listener's
    C{BLOCKED} policy if it has one, else its Default Policy Parameters
    with the rule REJECT.

    Closed by default: the ESA's own tables end with C{ALL}, so reaching
    this point means the table was cut short, and a host the administrator
    never classified must not be let in by accident.  So C{BLOCKED} is
    taken for its reject banner, never for its rule: an administrator may
    switch it to ACCEPT to let the blocked list through for a while, which
    must not open the gateway to every unclassified host as well.
    """
    blocked = listener.policies.get("BLOCKED")
    if blocked is not None:
        if blocked.rule in (AccessRule.REJECT, AccessRule.TCPREFUSE):
            return blocked
        return attrs.evolve(blocked, rule=AccessRule.REJECT)
    default = listener.policies.get("default")
    if default is None:
        return MailFlowPolicy(name="BLOCKED", rule=AccessRule.REJECT, explicit=frozenset({"rule"}))
    return attrs.evolve(
        default, name="BLOCKED", rule=AccessRule.REJECT, explicit=frozenset({"rule"})
    )


class _Unparsable:
    """
    The cached answer for a peer address that is not an IP address (its
    warning is logged on every lookup, not only the first).
    """


_UNPARSABLE = _Unparsable()


@implementer(IHostAccessTable)
class HostAccessTable:
    """
    The Host Access Table of one listener.

    @ivar listener: the L{Listener} it was built from.
    @ivar timeout: the bound, in seconds, on each DNS or reputation query.
    """

    _log = Logger()

    def __init__(
        self,
        listener: Listener,
        resolver: IResolver | None = None,
        reputation: IReputationSource | None = None,
        clock: IReactorTime | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """
        @param listener: its C{hat} groups are evaluated in order; each names
            a policy in its C{policies}.
        @param resolver: answers PTR, A, AAAA and DNSBL queries.  Without
            one, host-name and C{dnslist} entries never match.
        @param reputation: answers C{SBRS[...]} entries.  Without one, they
            never match.
        @param clock: measures the timeouts; the global reactor if C{None}.
        @param timeout: the most seconds any one DNS or reputation query may
            take before it counts as failed.
        @raise esa_tls.hat.syntax.SenderSyntaxError: an entry is not valid.
        @raise ValueError: a group names a policy the listener does not have.
        """
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.listener = listener
        self.timeout = timeout
        self._resolver = resolver
        self._reputation = reputation
        self._clock: IReactorTime = clock
        self._fallback = fallback_policy(listener)
        self._groups = tuple(self._compile(listener))
        # Per table: a reloaded configuration builds a new table, and so
        # starts with an empty cache.
        self._classify_address: Callable[[str], HATVerdict | _Unparsable | None] = lru_cache(
            maxsize=ADDRESS_CACHE_SIZE
        )(self._address_verdict)

    def _compile(self, listener: Listener) -> list[_Group]:
        groups = []
        unanswerable: list[str] = []
        for group in listener.hat:
            policy = listener.policies.get(group.policy)
            if policy is None:
                raise ValueError(
                    f"sender group {group.name!r} names policy {group.policy!r}, "
                    f"which listener {listener.name!r} does not have"
                )
            senders = [parse_sender(text) for text in group.senders]
            if policy.rule is AccessRule.CONTINUE:
                continue
            immediate: list[_AddressSender] = []
            deferred: list[Sender] = []
            for sender in senders:
                if isinstance(sender, IPRange | IPv6GroupRange | AllSenders):
                    immediate.append(sender)
                elif self._can_answer(sender):
                    deferred.append(sender)
                else:
                    unanswerable.append(sender.text)
            groups.append(_Group(group.name, policy, tuple(immediate), tuple(deferred)))
        if unanswerable:
            self._log.warn(
                "Listener {listener}: HAT entries {entries} can never match "
                "(no DNS resolver or reputation source for them)",
                listener=listener.name,
                entries=", ".join(unanswerable),
            )
        return groups

    def _can_answer(self, sender: Sender) -> bool:
        if sender.needs_dns:
            return self._resolver is not None
        if isinstance(sender, ReputationRange | NoReputation):
            return self._reputation is not None
        return False

    def lookup_sync(self, address: str) -> HATVerdict | None:
        """
        Classify the peer without waiting, when its address alone decides:
        some group matches it by an address entry before any group with an
        entry that needs DNS or a reputation score is reached.  The listener
        uses it to refuse a TCPREFUSE host before reading a byte.

        @param address: the peer's textual IPv4 or IPv6 address.
        @return: the same verdict L{lookup} would give (with no reverse DNS
            or score), or C{None} when only L{lookup} can tell.
        """
        verdict = self._classify_address(address)
        if isinstance(verdict, _Unparsable):
            return self._unclassifiable(address)
        return verdict

    def _address_verdict(self, address: str) -> HATVerdict | _Unparsable | None:
        """
        L{lookup_sync}'s answer, which depends on nothing but the address
        and this table (the verdicts are frozen values, safe to share).
        """
        try:
            addresses = _peer_addresses(address)
        except ValueError:
            return _UNPARSABLE
        for group in self._groups:
            matched = group.match_address(addresses)
            if matched is not None:
                return HATVerdict(group.name, group.policy, matched.text)
            if group.deferred:
                return None
        return HATVerdict(None, self._fallback)

    def lookup(self, address: str) -> Deferred[HATVerdict]:
        """
        Classify the peer at C{address}; see L{IHostAccessTable.lookup}.

        Within a group, address entries are tried before entries that need
        DNS, so that a host matched by its address costs no query; the
        verdict then names that entry even if an earlier-written host-name
        entry of the same group would also match.

        @return: a L{Deferred} that fires with a L{HATVerdict} and never
            fails: an unexpected error gives the fallback (REJECT) verdict.
        """
        try:
            addresses = _peer_addresses(address)
        except ValueError:
            return succeed(self._unclassifiable(address))
        session = _Classification(self, addresses)
        d = Deferred.fromCoroutine(session.classify())

        def failed(reason: Failure) -> HATVerdict:
            self._log.failure("HAT lookup of {address} failed", reason, address=address)
            return HATVerdict(None, self._fallback)

        return d.addErrback(failed)

    def _unclassifiable(self, address: str) -> HATVerdict:
        self._log.warn("HAT: peer address {address!r} is not an IP address", address=address)
        return HATVerdict(None, self._fallback)

    def _bounded(self, d: Deferred[_T]) -> Deferred[_T]:
        """
        Give up on C{d} a little after the query's own timeout, for
        resolvers and reputation sources that ignore theirs.
        """
        return d.addTimeout(self.timeout + 1.0, self._clock)

    def _retry_schedule(self) -> tuple[float, ...]:
        """
        The per-try timeouts handed to the resolver: three tries (UDP loses
        packets) that together take C{timeout}.
        """
        return (self.timeout / 10, self.timeout * 3 / 10, self.timeout * 6 / 10)


class _Classification:
    """
    The classification of one connection.  It remembers its DNS and
    reputation answers, so that the PTR lookup, each DNS list and the score
    are asked at most once however many entries need them.
    """

    _log = Logger()

    def __init__(self, table: HostAccessTable, addresses: tuple[IPAddress, ...]) -> None:
        self._table = table
        self._addresses = addresses
        self._ip = addresses[0]
        self._reverse: _ReverseDNS | None = None
        self._listed: dict[str, bool] = {}
        self._score: float | None = None
        self._scored = False
        self._score_known = False

    async def classify(self) -> HATVerdict:
        table = self._table
        for group in table._groups:
            matched: Sender | None = group.match_address(self._addresses)
            if matched is None:
                for sender in group.deferred:
                    if await self._matches(sender):
                        matched = sender
                        break
            if matched is not None:
                return await self._verdict(group.name, group.policy, matched)
        return await self._verdict(None, table._fallback, None)

    async def _verdict(
        self, group: str | None, policy: MailFlowPolicy, matched: Sender | None
    ) -> HATVerdict:
        if self._table._reputation is not None:
            await self._get_score()
        reverse_dns: str | None = None
        verified = False
        if self._reverse is not None:
            if isinstance(matched, HostName | DomainSuffix):
                names = [n for n in self._reverse.verified if matched.matches_name(n)]
            else:
                names = list(self._reverse.verified)
            if names:
                reverse_dns, verified = names[0], True
            elif self._reverse.names:
                reverse_dns = self._reverse.names[0]
        return HATVerdict(
            group,
            policy,
            matched.text if matched is not None else None,
            reverse_dns,
            verified,
            self._score,
        )

    async def _matches(self, sender: Sender) -> bool:
        if isinstance(sender, HostName | DomainSuffix):
            reverse = await self._get_reverse()
            return any(sender.matches_name(name) for name in reverse.verified)
        if isinstance(sender, DNSList):
            return await self._is_listed(sender)
        if isinstance(sender, ReputationRange | NoReputation):
            score = await self._get_score()
            return self._score_known and sender.matches_score(score)
        return False

    async def _query(self, kind: str, name: str, method: str) -> list[dns.RRHeader] | None:
        """
        One bounded DNS query.

        @param method: the L{IResolver} method to call.
        @return: the answer section, or C{None} when the query failed (the
            failure is logged; NXDOMAIN is an answer, an empty one).
        """
        table = self._table
        assert table._resolver is not None
        try:
            d = getattr(table._resolver, method)(name, timeout=table._retry_schedule())
            answers, _authority, _additional = await table._bounded(d)
        except DomainError:
            return []
        except Exception as e:
            self._log.info(
                "HAT: {kind} lookup of {name} failed: {error}",
                kind=kind,
                name=name,
                error=f"{type(e).__name__}: {e}",
            )
            return None
        return list(answers)

    async def _get_reverse(self) -> _ReverseDNS:
        if self._reverse is None:
            self._reverse = await self._resolve_reverse()
        return self._reverse

    async def _resolve_reverse(self) -> _ReverseDNS:
        pointer = self._ip.reverse_pointer
        answers = await self._query("PTR", pointer, "lookupPointer")
        if not answers:
            return _ReverseDNS()
        names: list[str] = []
        for payload in _answers_for(answers, pointer, dns.PTR):
            name = _name(payload.name)
            if name and name not in names:
                names.append(name)
        names = names[:MAX_PTR_NAMES]
        confirmations = await DeferredList(
            [Deferred.fromCoroutine(self._confirms(name)) for name in names],
            consumeErrors=True,
        )
        verified = tuple(
            name for name, (ok, result) in zip(names, confirmations, strict=True) if ok and result
        )
        return _ReverseDNS(tuple(names), verified)

    async def _confirms(self, name: str) -> bool:
        """
        Whether the forward lookup of C{name} holds the peer's address.
        """
        if isinstance(self._ip, IPv4Address):
            answers = await self._query("A", name, "lookupAddress")
            record_type = dns.A
        else:
            answers = await self._query("AAAA", name, "lookupIPV6Address")
            record_type = dns.AAAA
        if not answers:
            return False
        return any(
            ip_address(payload.address) == self._ip
            for payload in _answers_for(answers, name, record_type)
        )

    async def _is_listed(self, sender: DNSList) -> bool:
        if sender.zone not in self._listed:
            name = sender.query_name(self._ip)
            answers = await self._query("DNS list", name, "lookupAddress")
            listed = False
            for payload in _answers_for(answers or [], name, dns.A):
                ip = ip_address(payload.address)
                if ip in _LISTED and ip not in _DNSBL_ERRORS:
                    listed = True
            self._listed[sender.zone] = listed
        return self._listed[sender.zone]

    async def _get_score(self) -> float | None:
        """
        The peer's score, asked once.  When the source fails or times out,
        C{_score_known} stays false: no answer is not the same as "no
        score", so then neither C{SBRS[a:b]} nor C{SBRS[none]} matches.
        """
        if not self._scored:
            self._scored = True
            self._score = await self._ask_score()
        return self._score

    async def _ask_score(self) -> float | None:
        table = self._table
        assert table._reputation is not None
        try:
            d = maybeDeferred(table._reputation.score, str(self._ip))
            score = await table._bounded(d)
        except Exception as e:
            self._log.info(
                "HAT: reputation of {address} unknown: {error}",
                address=str(self._ip),
                error=f"{type(e).__name__}: {e}",
            )
            return None
        if score is None:
            self._score_known = True
        elif isinstance(score, int | float) and -10.0 <= score <= 10.0:
            self._score_known = True
            return float(score)
        else:
            self._log.warn("HAT: reputation source gave {score!r}", score=score)
        return None


__all__ = ["DEFAULT_TIMEOUT", "HostAccessTable", "fallback_policy"]
