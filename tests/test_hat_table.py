"""
Tests for L{esa_tls.hat.table}: sender group precedence, and host-name and
DNS list entries answered by a real C{twisted.names} DNS server on loopback.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from ipaddress import IPv4Interface, ip_address
from typing import Any, cast

import attrs
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorUDP, IResolver
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.names import client, dns, server
from twisted.names.common import ResolverBase
from twisted.names.error import AuthoritativeDomainError
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from esa_tls.config.model import (
    AccessRule,
    Interface,
    Listener,
    ListenerType,
    MailFlowPolicy,
    SenderGroup,
)
from esa_tls.hat.syntax import SenderSyntaxError
from esa_tls.hat.table import HostAccessTable
from esa_tls.interfaces import IHostAccessTable, IReputationSource
from esa_tls.values import HATVerdict

DEFAULT = MailFlowPolicy(name="default")
POLICIES = {
    "default": DEFAULT,
    "TRUSTED": attrs.evolve(DEFAULT, name="TRUSTED", max_msgs_per_session=1000),
    "ACCEPTED": attrs.evolve(DEFAULT, name="ACCEPTED"),
    "BLOCKED": attrs.evolve(DEFAULT, name="BLOCKED", rule=AccessRule.REJECT),
    "REFUSED": attrs.evolve(DEFAULT, name="REFUSED", rule=AccessRule.TCPREFUSE),
    "NOPOLICY": attrs.evolve(DEFAULT, name="NOPOLICY", rule=AccessRule.CONTINUE),
}


def make_listener(
    *groups: tuple[str, str, tuple[str, ...]],
    policies: Mapping[str, MailFlowPolicy] = POLICIES,
) -> Listener:
    """
    A public listener whose HAT holds C{groups}, each (name, policy,
    senders), in that order.
    """
    return Listener(
        name="InboundMail",
        type=ListenerType.PUBLIC,
        interface=Interface("Loopback", IPv4Interface("127.0.0.1/8")),
        port=2525,
        policies=dict(policies),
        hat=tuple(SenderGroup(name, policy, senders) for name, policy, senders in groups),
    )


class PrecedenceTests(SynchronousTestCase):
    """
    Groups are tried top to bottom; the first match wins; CONTINUE groups
    never stop the search; no match is a REJECT.
    """

    def setUp(self) -> None:
        self.table = HostAccessTable(
            make_listener(
                ("WHITELIST", "TRUSTED", ("10.1.1.1-50", "2001:db8::/32")),
                ("PASSTHROUGH", "NOPOLICY", ("10.2.", "10.1.1.60")),
                ("BLOCKED_LIST", "BLOCKED", ("10.1.", "10.2.2.")),
                ("REFUSE", "REFUSED", ("10.3.",)),
                ("ALL", "ACCEPTED", ("ALL",)),
            ),
            clock=Clock(),
        )

    def verdict(self, address: str) -> HATVerdict:
        return self.successResultOf(self.table.lookup(address))

    def test_provides_interface(self) -> None:
        """
        The table provides L{IHostAccessTable}.
        """
        self.assertTrue(verifyObject(IHostAccessTable, self.table))

    def test_first_match_wins(self) -> None:
        """
        A host in two groups gets the policy of the upper one, and the
        verdict names the group, the policy and the entry that matched.
        """
        verdict = self.verdict("10.1.1.7")
        self.assertEqual(verdict.sender_group, "WHITELIST")
        self.assertEqual(verdict.policy, POLICIES["TRUSTED"])
        self.assertEqual(verdict.matched, "10.1.1.1-50")
        self.assertEqual((verdict.reverse_dns, verdict.verified, verdict.sbrs), (None, False, None))
        self.assertEqual(self.verdict("10.1.1.51").sender_group, "BLOCKED_LIST")
        self.assertEqual(self.verdict("10.1.1.51").policy.rule, AccessRule.REJECT)
        self.assertEqual(self.verdict("2001:db8:1::5").matched, "2001:db8::/32")

    def test_continue_falls_through(self) -> None:
        """
        A host matched by a group whose policy is CONTINUE is classified by
        the groups below it.
        """
        self.assertEqual(self.verdict("10.2.9.9").sender_group, "ALL")
        verdict = self.verdict("10.2.2.1")
        self.assertEqual((verdict.sender_group, verdict.matched), ("BLOCKED_LIST", "10.2.2."))
        self.assertEqual(self.verdict("10.1.1.60").sender_group, "BLOCKED_LIST")

    def test_all(self) -> None:
        """
        C{ALL} takes every host nothing above took, IPv4 and IPv6.
        """
        for address in ("192.0.2.1", "::1", "2001:db9::1"):
            verdict = self.verdict(address)
            self.assertEqual((verdict.sender_group, verdict.matched), ("ALL", "ALL"))
            self.assertEqual(verdict.policy, POLICIES["ACCEPTED"])

    def test_ipv4_mapped_peer(self) -> None:
        """
        A peer seen through a dual-stack socket as C{::ffff:a.b.c.d} is
        classified by its IPv4 address.
        """
        self.assertEqual(self.verdict("::ffff:10.1.1.7").sender_group, "WHITELIST")
        self.assertEqual(self.verdict("::ffff:10.3.0.1").policy.rule, AccessRule.TCPREFUSE)

    def test_sync_verdict(self) -> None:
        """
        With only address entries, L{HostAccessTable.lookup_sync} gives the
        same verdict as L{HostAccessTable.lookup}, TCPREFUSE included, so
        the listener can refuse before reading a byte.
        """
        for address in ("10.1.1.7", "10.2.2.1", "10.3.4.5", "192.0.2.1", "2001:db8::1"):
            self.assertEqual(self.table.lookup_sync(address), self.verdict(address), address)
        refused = self.table.lookup_sync("10.3.4.5")
        assert refused is not None
        self.assertEqual(refused.policy.rule, AccessRule.TCPREFUSE)

    def test_not_an_address(self) -> None:
        """
        A peer that has no IP address (a UNIX socket, garbage) cannot be
        classified and gets the REJECT fallback, never a group.
        """
        for verdict in (self.verdict("not-an-ip"), self.table.lookup_sync("")):
            assert verdict is not None
            self.assertIsNone(verdict.sender_group)
            self.assertEqual(verdict.policy.rule, AccessRule.REJECT)


class RememberedVerdictTests(SynchronousTestCase):
    """
    The address-only verdicts are remembered per address (issue 7): the
    answers stay those of the table, however many addresses come and go,
    and a new table (a reload) answers from its own groups.
    """

    def test_manyAddresses(self) -> None:
        """
        More distinct addresses than are remembered, each asked twice, in
        two interleaved passes: every answer is the one its group gives,
        the same the second time.
        """
        table = HostAccessTable(
            make_listener(
                ("REFUSE", "REFUSED", ("10.3.",)),
                ("WHITELIST", "TRUSTED", ("10.1.0.0/16",)),
                ("ALL", "ACCEPTED", ("ALL",)),
            ),
            clock=Clock(),
        )
        expected = {"1": "WHITELIST", "3": "REFUSE", "9": "ALL"}
        addresses = [f"10.{b}.{n // 250}.{n % 250}" for n in range(3000) for b in "139"]
        for _ in range(2):
            for address in addresses:
                verdict = table.lookup_sync(address)
                assert verdict is not None
                self.assertEqual(verdict.sender_group, expected[address.split(".")[1]], address)

    def test_reloadedTable(self) -> None:
        """
        A table built from a changed HAT classifies an address it has never
        seen by its own groups, even right after the old table answered.
        """
        old = HostAccessTable(make_listener(("ALL", "ACCEPTED", ("ALL",))), clock=Clock())
        new = HostAccessTable(
            make_listener(("REFUSE", "REFUSED", ("10.3.",)), ("ALL", "ACCEPTED", ("ALL",))),
            clock=Clock(),
        )
        before, after = old.lookup_sync("10.3.0.1"), new.lookup_sync("10.3.0.1")
        assert before is not None and after is not None
        self.assertEqual((before.sender_group, after.sender_group), ("ALL", "REFUSE"))

    def test_notAnAddressWarnsEachTime(self) -> None:
        """
        A peer address that is not an IP address is logged every time it
        is classified, not only the first.
        """
        table = HostAccessTable(make_listener(("ALL", "ACCEPTED", ("ALL",))), clock=Clock())
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        table.lookup_sync("garbage")
        table.lookup_sync("garbage")
        warned = [e for e in events if e.get("address") == "garbage"]
        self.assertEqual(len(warned), 2)


class FallbackTests(SynchronousTestCase):
    """
    A host no group matches is rejected.
    """

    def test_blocked_policy(self) -> None:
        """
        The listener's C{BLOCKED} policy applies when it has one.
        """
        table = HostAccessTable(make_listener(("WHITELIST", "TRUSTED", ("10.1.1.1",))))
        verdict = self.successResultOf(table.lookup("192.0.2.1"))
        self.assertEqual(verdict, HATVerdict(None, POLICIES["BLOCKED"]))
        self.assertEqual(table.lookup_sync("192.0.2.1"), verdict)

    def test_derived_reject(self) -> None:
        """
        Without a C{BLOCKED} policy, the fallback is the Default Policy
        Parameters with the rule REJECT (and so the default reject banner).
        """
        default = attrs.evolve(DEFAULT, reject_banner_text="5.7.1 Go away")
        table = HostAccessTable(
            make_listener(
                ("WHITELIST", "TRUSTED", ("10.1.1.1",)),
                policies={"default": default, "TRUSTED": POLICIES["TRUSTED"]},
            )
        )
        verdict = self.successResultOf(table.lookup("192.0.2.1"))
        self.assertIsNone(verdict.sender_group)
        self.assertEqual(verdict.policy.rule, AccessRule.REJECT)
        self.assertEqual(verdict.policy.reject_banner_text, "5.7.1 Go away")

    def test_empty_table(self) -> None:
        """
        A listener with no sender groups rejects everyone.
        """
        table = HostAccessTable(make_listener())
        self.assertEqual(
            self.successResultOf(table.lookup("127.0.0.1")).policy.rule, AccessRule.REJECT
        )

    def test_only_continue(self) -> None:
        """
        Groups that all CONTINUE leave the host unclassified: rejected.
        """
        table = HostAccessTable(make_listener(("PASS", "NOPOLICY", ("ALL",))))
        verdict = self.successResultOf(table.lookup("127.0.0.1"))
        self.assertEqual((verdict.sender_group, verdict.policy.rule), (None, AccessRule.REJECT))


class ConstructionTests(SynchronousTestCase):
    """
    A table that cannot work is refused when it is built, not at the first
    connection.
    """

    def test_bad_entry(self) -> None:
        """
        A malformed entry raises L{SenderSyntaxError} naming it.
        """
        with self.assertRaises(SenderSyntaxError) as caught:
            HostAccessTable(make_listener(("WHITELIST", "TRUSTED", ("10.1.1.1", "10.1.1.300"))))
        self.assertIn("'10.1.1.300'", str(caught.exception))

    def test_unknown_policy(self) -> None:
        """
        A group naming a policy the listener lacks raises L{ValueError}.
        """
        with self.assertRaises(ValueError) as caught:
            HostAccessTable(make_listener(("WHITELIST", "NOSUCH", ("10.1.1.1",))))
        self.assertIn("'NOSUCH'", str(caught.exception))


class NoServicesTests(SynchronousTestCase):
    """
    Without a resolver or a reputation source, the entries that need them
    never match, and do not stop a synchronous verdict.
    """

    def test_dns_entries_without_resolver(self) -> None:
        """
        Host-name, partial host-name and DNS list entries never match
        without a resolver; the host falls through to a later group.
        """
        table = HostAccessTable(
            make_listener(
                (
                    "WHITELIST",
                    "TRUSTED",
                    ("localhost.localdomain", ".example", "dnslist[bl.example]"),
                ),
                ("ALL", "ACCEPTED", ("ALL",)),
            )
        )
        verdict = table.lookup_sync("127.0.0.1")
        assert verdict is not None
        self.assertEqual(verdict.sender_group, "ALL")
        self.assertEqual(self.successResultOf(table.lookup("127.0.0.1")), verdict)

    def test_reputation_entries_without_source(self) -> None:
        """
        C{SBRS[...]}, C{SBRS[none]} and C{SBO:n} never match without a
        reputation source.
        """
        table = HostAccessTable(
            make_listener(
                ("BLOCKED_LIST", "BLOCKED", ("SBRS[-10:10]", "SBRS[none]", "SBO:1")),
                ("ALL", "ACCEPTED", ("ALL",)),
            )
        )
        self.assertEqual(self.successResultOf(table.lookup("192.0.2.1")).sender_group, "ALL")
        verdict = table.lookup_sync("192.0.2.1")
        assert verdict is not None
        self.assertEqual(verdict.sender_group, "ALL")


@implementer(IReputationSource)
class ScoreTable:
    """
    A reputation source that knows a fixed set of scores; an address it
    has no entry for has no score, and C{"hang"} never answers.
    """

    def __init__(self, scores: Mapping[str, float | str]) -> None:
        self.scores = scores
        self.asked: list[str] = []

    def score(self, address: str) -> Deferred[float | None]:
        self.asked.append(address)
        value = self.scores.get(address)
        if value == "hang":
            return Deferred()
        if value == "error":
            return fail(RuntimeError("reputation service down"))
        assert not isinstance(value, str)
        return succeed(value)


class ReputationTests(SynchronousTestCase):
    """
    SBRS entries consult the configured L{IReputationSource}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.source = ScoreTable(
            {"192.0.2.1": -8.5, "192.0.2.2": 4.0, "192.0.2.4": "hang", "192.0.2.5": "error"}
        )
        self.table = HostAccessTable(
            make_listener(
                ("WHITELIST", "TRUSTED", ("10.1.1.1",)),
                ("BLOCKED_LIST", "BLOCKED", ("SBRS[-10:-7.5]",)),
                ("UNKNOWNLIST", "NOPOLICY", ("SBRS[none]",)),
                ("SUSPECT", "REFUSED", ("SBRS[none]",)),
                ("ALL", "ACCEPTED", ("ALL",)),
            ),
            reputation=self.source,
            clock=self.clock,
            timeout=5,
        )

    def test_score_range(self) -> None:
        """
        A score inside an SBRS range matches it, and the verdict carries the
        score; a score outside falls through.
        """
        verdict = self.successResultOf(self.table.lookup("192.0.2.1"))
        self.assertEqual((verdict.sender_group, verdict.sbrs), ("BLOCKED_LIST", -8.5))
        verdict = self.successResultOf(self.table.lookup("192.0.2.2"))
        self.assertEqual((verdict.sender_group, verdict.sbrs), ("ALL", 4.0))

    def test_no_score(self) -> None:
        """
        An address with no score matches C{SBRS[none]}; the score is asked
        once however many entries need it.
        """
        verdict = self.successResultOf(self.table.lookup("192.0.2.3"))
        self.assertEqual((verdict.sender_group, verdict.sbrs), ("SUSPECT", None))
        self.assertEqual(self.source.asked, ["192.0.2.3"])

    def test_address_decides_first(self) -> None:
        """
        An address entry above the SBRS entries decides synchronously.
        """
        verdict = self.table.lookup_sync("10.1.1.1")
        assert verdict is not None
        self.assertEqual(verdict.sender_group, "WHITELIST")
        self.assertIsNone(self.table.lookup_sync("192.0.2.1"))

    def test_hanging_source(self) -> None:
        """
        A reputation source that never answers is given up on after the
        timeout and the lookup finishes.  No answer is not "no score":
        C{SBRS[none]} does not match either.
        """
        d = self.table.lookup("192.0.2.4")
        self.assertNoResult(d)
        self.clock.advance(10)
        verdict = self.successResultOf(d)
        self.assertEqual((verdict.sender_group, verdict.sbrs), ("ALL", None))

    def test_failing_source(self) -> None:
        """
        A reputation source that fails matches no SBRS entry and the lookup
        still succeeds.
        """
        verdict = self.successResultOf(self.table.lookup("192.0.2.5"))
        self.assertEqual((verdict.sender_group, verdict.sbrs), ("ALL", None))


class _ServFail(Exception):
    """
    The test zone's way of making the DNS server answer SERVFAIL.
    """


class Zone(ResolverBase):
    """
    An in-memory authoritative zone for the test DNS server: names to
    records, names that fail (SERVFAIL), names that are never answered;
    any other name is NXDOMAIN.  It counts the queries it gets.
    """

    def __init__(
        self,
        records: Mapping[str, list[Any]],
        servfail: frozenset[str] = frozenset(),
        silent: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__()
        self.records = {name.lower(): value for name, value in records.items()}
        self.servfail = servfail
        self.silent = silent
        self.queries: Counter[tuple[str, int]] = Counter()

    def _lookup(
        self, name: bytes, cls: int, type: int, timeout: object = None
    ) -> Deferred[tuple[list[dns.RRHeader], list[dns.RRHeader], list[dns.RRHeader]]]:
        key = name.decode("ascii").lower()
        self.queries[key, type] += 1
        if key in self.servfail:
            return fail(_ServFail(key))
        if key in self.silent:
            return Deferred()
        if key not in self.records:
            return fail(AuthoritativeDomainError(key))
        answers = []
        owner = key
        for _ in range(8):
            records = self.records.get(owner, [])
            answers += [
                dns.RRHeader(owner.encode("ascii"), record.TYPE, dns.IN, 60, record, auth=True)
                for record in records
                if record.TYPE in (type, dns.CNAME)
            ]
            aliases = [record for record in records if record.TYPE == dns.CNAME]
            if type == dns.CNAME or not aliases:
                break
            owner = aliases[0].name.name.decode("ascii").lower()
        return succeed((answers, [], []))


def ptr(address: str) -> str:
    return ip_address(address).reverse_pointer


RECORDS: dict[str, list[Any]] = {
    # verified: PTR and A agree
    ptr("192.0.2.10"): [dns.Record_PTR(b"mail.partner.example")],
    "mail.partner.example": [dns.Record_A("192.0.2.10")],
    # forged: PTR claims the partner's name, whose A record does not agree
    ptr("192.0.2.11"): [dns.Record_PTR(b"mail.partner.example")],
    # two PTR names, only the second verifies
    ptr("192.0.2.12"): [
        dns.Record_PTR(b"bogus.other.example"),
        dns.Record_PTR(b"mx2.partner.example"),
    ],
    "bogus.other.example": [dns.Record_A("198.51.100.1")],
    "mx2.partner.example": [dns.Record_A("198.51.100.2"), dns.Record_A("192.0.2.12")],
    # PTR whose forward lookup fails
    ptr("192.0.2.15"): [dns.Record_PTR(b"broken.partner.example")],
    # PTR whose forward lookup is never answered
    ptr("192.0.2.16"): [dns.Record_PTR(b"slow.partner.example")],
    # forward lookup through a CNAME
    ptr("192.0.2.17"): [dns.Record_PTR(b"alias.partner.example")],
    "alias.partner.example": [dns.Record_CNAME(b"real.partner.example")],
    "real.partner.example": [dns.Record_A("192.0.2.17")],
    # a verified name outside the partner's domain
    ptr("192.0.2.18"): [dns.Record_PTR(b"host.elsewhere.example")],
    "host.elsewhere.example": [dns.Record_A("192.0.2.18")],
    # IPv6, forward-confirmed by AAAA
    ptr("2001:db8::25"): [dns.Record_PTR(b"v6.partner.example")],
    "v6.partner.example": [dns.Record_AAAA("2001:db8::25")],
    # PTR names that are not ASCII (any bytes are valid on the wire):
    # one beside a good name, one alone
    ptr("192.0.2.26"): [
        dns.Record_PTR(b"m\xe9il.partner.example"),
        dns.Record_PTR(b"mail26.partner.example"),
    ],
    "mail26.partner.example": [dns.Record_A("192.0.2.26")],
    ptr("192.0.2.27"): [dns.Record_PTR(b"\xff.partner.example")],
    # a look-alike domain
    ptr("192.0.2.19"): [dns.Record_PTR(b"mail.evilpartner.example")],
    "mail.evilpartner.example": [dns.Record_A("192.0.2.19")],
    # DNS list zone: 192.0.2.20 and 2001:db8::20 listed, .21 answered
    # with an error code, .22 SERVFAIL
    "20.2.0.192.bl.example": [dns.Record_A("127.0.0.2")],
    "21.2.0.192.bl.example": [dns.Record_A("127.255.255.254")],
    "23.2.0.192.bl.example": [dns.Record_A("192.0.2.1")],
    "0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example": [
        dns.Record_A("127.0.0.4")
    ],
}


class DNSTests(TestCase):
    """
    Host-name and DNS list entries, answered by a real DNS server on
    127.0.0.1 through C{twisted.names.client.Resolver}.
    """

    timeout = 30

    def setUp(self) -> None:
        self.zone = Zone(
            RECORDS,
            servfail=frozenset(
                {ptr("192.0.2.14"), "broken.partner.example", "22.2.0.192.bl.example"}
            ),
            silent=frozenset({ptr("192.0.2.13"), "slow.partner.example", "24.2.0.192.bl.example"}),
        )
        factory = server.DNSServerFactory(authorities=[self.zone])
        port = cast(IReactorUDP, reactor).listenUDP(
            0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1", maxPacketSize=8192
        )
        self.addCleanup(port.stopListening)
        host = port.getHost()
        assert isinstance(host, IPv4Address)
        self.resolver = client.Resolver(servers=[("127.0.0.1", host.port)])

    def make_table(self, *groups: tuple[str, str, tuple[str, ...]]) -> HostAccessTable:
        return HostAccessTable(
            make_listener(*groups, ("ALL", "ACCEPTED", ("ALL",))),
            resolver=self.resolver,
            timeout=2.0,
        )

    def partner_table(self) -> HostAccessTable:
        return self.make_table(
            ("WHITELIST", "TRUSTED", ("mail.partner.example", ".partner.example")),
        )

    async def test_verified_name(self) -> None:
        """
        A host whose PTR name resolves back to it matches a host-name
        entry; the verdict names the entry, the name and says it is
        verified.
        """
        verdict = await self.partner_table().lookup("192.0.2.10")
        self.assertEqual(verdict.sender_group, "WHITELIST")
        self.assertEqual(verdict.matched, "mail.partner.example")
        self.assertEqual((verdict.reverse_dns, verdict.verified), ("mail.partner.example", True))

    async def test_forged_name(self) -> None:
        """
        A PTR name whose forward lookup does not hold the address matches
        nothing; the verdict shows the name as unverified.
        """
        verdict = await self.partner_table().lookup("192.0.2.11")
        self.assertEqual(verdict.sender_group, "ALL")
        self.assertEqual((verdict.reverse_dns, verdict.verified), ("mail.partner.example", False))

    async def test_all_ptr_names_tried(self) -> None:
        """
        Each PTR name is checked; the one that verifies matches.
        """
        verdict = await self.partner_table().lookup("192.0.2.12")
        self.assertEqual((verdict.sender_group, verdict.matched), ("WHITELIST", ".partner.example"))
        self.assertEqual((verdict.reverse_dns, verdict.verified), ("mx2.partner.example", True))

    async def test_cname(self) -> None:
        """
        A forward lookup answered through a CNAME confirms the name.
        """
        verdict = await self.partner_table().lookup("192.0.2.17")
        self.assertEqual(
            (verdict.sender_group, verdict.reverse_dns), ("WHITELIST", "alias.partner.example")
        )

    async def test_ipv6(self) -> None:
        """
        An IPv6 peer is confirmed through its ip6.arpa PTR and AAAA
        records.
        """
        verdict = await self.partner_table().lookup("2001:db8::25")
        self.assertEqual((verdict.sender_group, verdict.verified), ("WHITELIST", True))

    async def test_other_domain(self) -> None:
        """
        A verified name outside the entry's domain, or in a look-alike
        domain, does not match; the verdict still reports the name.
        """
        table = self.partner_table()
        verdict = await table.lookup("192.0.2.18")
        self.assertEqual(verdict.sender_group, "ALL")
        self.assertEqual((verdict.reverse_dns, verdict.verified), ("host.elsewhere.example", True))
        verdict = await table.lookup("192.0.2.19")
        self.assertEqual(verdict.sender_group, "ALL")

    async def test_non_ascii_ptr_name(self) -> None:
        """
        A PTR name that is not ASCII (the peer's own reverse zone says
        what it likes) is no name: it matches nothing and is not
        reported, the host's other names still count, and a host with
        only such a name goes on to the next group like one without PTR,
        rather than failing the lookup (the fallback REJECT and a
        traceback in the log for every connection).
        """
        table = self.partner_table()
        verdict = await table.lookup("192.0.2.26")
        self.assertEqual(verdict.sender_group, "WHITELIST")
        self.assertEqual((verdict.reverse_dns, verdict.verified), ("mail26.partner.example", True))
        verdict = await table.lookup("192.0.2.27")
        self.assertEqual(verdict.sender_group, "ALL")
        self.assertEqual((verdict.reverse_dns, verdict.verified), (None, False))

    async def test_dns_failures_do_not_match(self) -> None:
        """
        No PTR record (NXDOMAIN), a SERVFAIL on the PTR or on the forward
        lookup, and DNS servers that never answer all leave the host to
        the next group, and every lookup finishes.
        """
        table = self.partner_table()
        for address in ("192.0.2.30", "192.0.2.14", "192.0.2.15", "192.0.2.13", "192.0.2.16"):
            verdict = await table.lookup(address)
            self.assertEqual(verdict.sender_group, "ALL", address)
            self.assertFalse(verdict.verified, address)
        self.flushLoggedErrors(_ServFail)

    async def test_ptr_once(self) -> None:
        """
        However many host-name entries there are, the PTR is asked once
        per connection; a table without host-name entries never asks.
        """
        table = self.make_table(
            ("WHITELIST", "TRUSTED", ("mail.partner.example",)),
            ("SUSPECT", "REFUSED", (".nowhere.example",)),
            ("PARTNERS", "TRUSTED", (".partner.example", "other.partner.example")),
        )
        verdict = await table.lookup("192.0.2.18")
        self.assertEqual(verdict.sender_group, "ALL")
        self.assertEqual(self.zone.queries[ptr("192.0.2.18"), dns.PTR], 1)
        self.assertEqual(self.zone.queries["host.elsewhere.example", dns.A], 1)

        address_only = self.make_table(("WHITELIST", "TRUSTED", ("10.1.1.1",)))
        verdict = await address_only.lookup("192.0.2.10")
        self.assertEqual(verdict, HATVerdict("ALL", POLICIES["ACCEPTED"], "ALL"))
        self.assertEqual(self.zone.queries[ptr("192.0.2.10"), dns.PTR], 0)

    async def test_address_entry_spares_dns(self) -> None:
        """
        In a group with both kinds of entries, an address match needs no
        query at all.
        """
        table = self.make_table(("WHITELIST", "TRUSTED", ("mail.partner.example", "192.0.2.10")))
        verdict = await table.lookup("192.0.2.10")
        self.assertEqual((verdict.sender_group, verdict.matched), ("WHITELIST", "192.0.2.10"))
        self.assertEqual(sum(self.zone.queries.values()), 0)

    async def test_sync_stops_at_dns(self) -> None:
        """
        L{HostAccessTable.lookup_sync} decides only while no DNS entry
        stands before the matching group.
        """
        table = self.make_table(
            ("REFUSE", "REFUSED", ("10.3.",)),
            ("WHITELIST", "TRUSTED", (".partner.example",)),
        )
        verdict = table.lookup_sync("10.3.0.1")
        assert verdict is not None
        self.assertEqual(verdict.policy.rule, AccessRule.TCPREFUSE)
        self.assertIsNone(table.lookup_sync("192.0.2.10"))
        self.assertEqual(sum(self.zone.queries.values()), 0)

    async def test_dnslist(self) -> None:
        """
        C{dnslist[zone]} matches an address the list lists (an A record in
        127.0.0.0/8), IPv4 and IPv6; an unlisted address, a 127.255.255.x
        error answer, an answer outside 127/8, a SERVFAIL and no answer at
        all do not match.
        """
        table = self.make_table(("BLOCKED_LIST", "BLOCKED", ("dnslist[bl.example]",)))
        for address in ("192.0.2.20", "2001:db8::20"):
            verdict = await table.lookup(address)
            self.assertEqual(verdict.sender_group, "BLOCKED_LIST", address)
            self.assertEqual(verdict.matched, "dnslist[bl.example]")
            self.assertEqual(verdict.policy.rule, AccessRule.REJECT)
        for address in ("192.0.2.99", "192.0.2.21", "192.0.2.22", "192.0.2.23", "192.0.2.24"):
            verdict = await table.lookup(address)
            self.assertEqual(verdict.sender_group, "ALL", address)
        self.flushLoggedErrors(_ServFail)


@implementer(IResolver)
class SilentResolver(ResolverBase):
    """
    A resolver that never answers and ignores the timeouts it is given,
    as a broken plug-in resolver might.
    """

    def _lookup(self, name: bytes, cls: int, type: int, timeout: object = None) -> Deferred[Any]:
        return Deferred()


class HangingResolverTests(SynchronousTestCase):
    """
    The table bounds lookups itself, whatever the resolver does.
    """

    def test_gives_up(self) -> None:
        """
        With a resolver that never answers, the lookup still finishes once
        the timeout (and a little grace) has passed, and the host-name and
        DNS list entries do not match.
        """
        clock = Clock()
        table = HostAccessTable(
            make_listener(
                ("WHITELIST", "TRUSTED", (".partner.example",)),
                ("BLOCKED_LIST", "BLOCKED", ("dnslist[bl.example]",)),
                ("ALL", "ACCEPTED", ("ALL",)),
            ),
            resolver=SilentResolver(),
            clock=clock,
            timeout=10,
        )
        d = table.lookup("192.0.2.10")
        for _ in range(10):
            clock.advance(5)
        verdict = self.successResultOf(d)
        self.assertEqual(verdict.sender_group, "ALL")
