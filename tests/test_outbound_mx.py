"""
Tests for L{esa_tls.outbound.mx}: delivery routes resolved against a real
C{twisted.names} DNS server on loopback.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase, TestCase

from esa_tls.config.model import GatewayConfig, SystemSettings
from esa_tls.outbound.mx import (
    HostSource,
    MXResolver,
    RouteError,
    find_route,
    parse_route_host,
    resolver_from_config,
)
from tests.peers.dns import start_dns_server

#: Fast retries: the test server answers at once or not at all.
FAST = (1,)

RECORDS: dict[str, list[Any]] = {
    "multi.example": [
        dns.Record_MX(20, b"mx-c.multi.example"),
        dns.Record_MX(10, b"mx-a.multi.example"),
        dns.Record_MX(10, b"mx-b.multi.example"),
        dns.Record_MX(30, b"gone.multi.example"),
    ],
    "mx-a.multi.example": [dns.Record_A("127.0.0.10")],
    "mx-b.multi.example": [dns.Record_A("127.0.0.11"), dns.Record_AAAA("::1")],
    "mx-c.multi.example": [dns.Record_A("127.0.0.12")],
    "nullmx.example": [dns.Record_MX(0, b"")],
    "nomx.example": [dns.Record_A("127.0.0.20"), dns.Record_TXT(b"v=spf1 -all")],
    "v6only.example": [dns.Record_MX(10, b"mx.v6only.example")],
    "mx.v6only.example": [dns.Record_AAAA("::1")],
    "empty.example": [dns.Record_TXT(b"nothing here")],
    "lame.example": [dns.Record_MX(10, b"mx.broken.example")],
    "dangling.example": [dns.Record_MX(10, b"nowhere.example")],
    "routehost.example": [dns.Record_A("127.0.0.30")],
    "garbled.example": [dns.Record_MX(10, b"\xffmx.garbled.example")],
    "halfgarbled.example": [
        dns.Record_MX(5, b"mx\xe9.halfgarbled.example"),
        dns.Record_MX(10, b"mx.halfgarbled.example"),
    ],
    "mx.halfgarbled.example": [dns.Record_A("127.0.0.40")],
    "alias.example": [dns.Record_CNAME(b"alias2.example")],
    "alias2.example": [dns.Record_CNAME(b"multi.example")],
    "hostalias.example": [dns.Record_CNAME(b"nomx.example")],
    "loop1.example": [dns.Record_CNAME(b"loop2.example")],
    "loop2.example": [dns.Record_CNAME(b"loop1.example")],
    "literal.example": [dns.Record_MX(10, b"127.0.0.50")],
    "halfliteral.example": [
        dns.Record_MX(5, b"127.0.0.51"),
        dns.Record_MX(10, b"mx.halfliteral.example"),
    ],
    "mx.halfliteral.example": [dns.Record_A("127.0.0.52")],
}


class MXResolutionTests(TestCase):
    """
    L{MXResolver.resolve} against a real DNS server.
    """

    def setUp(self) -> None:
        self.server = start_dns_server(
            self, RECORDS, servfail={"servfail.example", "mx.broken.example"}
        )
        self.mx = MXResolver(self.server.resolver(), timeout=FAST, rng=random.Random(1))

    async def test_preference_order(self) -> None:
        """
        All MX hosts come back, lowest preference first, each with its A
        and AAAA addresses (IPv4 first); an exchanger with no address is
        skipped and reported.
        """
        route = await self.mx.resolve("multi.example", port=2525)
        self.assertEqual([h.preference for h in route.hosts], [10, 10, 20])
        self.assertEqual(
            {h.name for h in route.hosts[:2]}, {"mx-a.multi.example", "mx-b.multi.example"}
        )
        self.assertEqual(route.hosts[2].name, "mx-c.multi.example")
        by_name = {h.name: h for h in route.hosts}
        self.assertEqual(by_name["mx-b.multi.example"].addresses, ("127.0.0.11", "::1"))
        self.assertEqual({h.port for h in route.hosts}, {2525})
        self.assertEqual({h.source for h in route.hosts}, {HostSource.MX})
        self.assertEqual([name for name, _ in route.skipped], ["gone.multi.example"])

    async def test_equal_preferences_shuffled(self) -> None:
        """
        Hosts of equal preference come in both orders over repeated
        resolutions, so load spreads between them.
        """
        firsts = set()
        for seed in range(12):
            self.mx.rng = random.Random(seed)
            route = await self.mx.resolve("multi.example")
            firsts.add(route.hosts[0].name)
            self.assertEqual(route.hosts[2].name, "mx-c.multi.example")
        self.assertEqual(firsts, {"mx-a.multi.example", "mx-b.multi.example"})

    async def test_never_any(self) -> None:
        """
        Only MX, A and AAAA questions are asked: never C{ANY} (RFC 8482).
        """
        await self.mx.resolve("multi.example")
        await self.mx.resolve("nomx.example")
        self.assertTrue(self.server.queries)
        self.assertEqual({qtype for _, qtype in self.server.queries}, {dns.MX, dns.A, dns.AAAA})

    async def test_null_mx(self) -> None:
        """
        A null MX (RFC 7505) is a permanent failure with 556 5.1.10.
        """
        with self.assertRaises(RouteError) as caught:
            await self.mx.resolve("nullmx.example")
        self.assertTrue(caught.exception.permanent)
        self.assertEqual((caught.exception.code, caught.exception.status), (556, "5.1.10"))

    async def test_implicit_mx(self) -> None:
        """
        A domain that exists without MX records is its own mail exchanger.
        """
        route = await self.mx.resolve("nomx.example")
        self.assertEqual(len(route.hosts), 1)
        self.assertEqual(route.hosts[0].name, "nomx.example")
        self.assertEqual(route.hosts[0].addresses, ("127.0.0.20",))
        self.assertEqual(route.hosts[0].source, HostSource.IMPLICIT_MX)

    async def test_nxdomain_no_implicit_mx(self) -> None:
        """
        NXDOMAIN is permanent and never falls back to an address lookup of
        the domain.
        """
        with self.assertRaises(RouteError) as caught:
            await self.mx.resolve("missing.example")
        self.assertTrue(caught.exception.permanent)
        self.assertEqual(caught.exception.status, "5.1.2")
        self.assertEqual(self.server.queries, [("missing.example", dns.MX)])

    async def test_non_ascii_exchange(self) -> None:
        """
        An MX whose exchange name is not ASCII (hostile or broken DNS data)
        is no host: passed over for the domain's other exchangers, and, as
        the only one, a permanent failure naming it.  Before, its decoding
        error escaped the delivery attempt, which then recorded nothing:
        the message was tried again at every scan, with a traceback, and
        never bounced.  Nor does it count as "no MX" (implicit MX).
        """
        route = await self.mx.resolve("halfgarbled.example")
        self.assertEqual([h.name for h in route.hosts], ["mx.halfgarbled.example"])
        self.assertEqual(len(route.skipped), 1)
        self.assertIn("not ASCII", route.skipped[0][1])
        with self.assertRaises(RouteError) as caught:
            await self.mx.resolve("garbled.example")
        self.assertTrue(caught.exception.permanent)
        self.assertIn("not ASCII", str(caught.exception))
        self.assertNotIn(("garbled.example", dns.A), self.server.queries)

    async def test_cname_chain(self) -> None:
        """
        A domain that is an alias (here of an alias) is delivered as its
        target would be (RFC 5321 section 5.1), even when the server
        answers the MX question with the CNAME alone, as an authoritative
        server does: that is no "no MX" answer, which sent the mail to the
        target's address record (implicit MX) instead of its MX hosts, or
        bounced it when it had none.  An alias of a host without MX still
        gets the implicit MX; a CNAME loop is a temporary DNS failure.
        """
        route = await self.mx.resolve("alias.example")
        self.assertEqual([h.preference for h in route.hosts], [10, 10, 20])
        self.assertEqual(route.hosts[2].name, "mx-c.multi.example")
        self.assertEqual(route.hosts[2].source, HostSource.MX)
        route = await self.mx.resolve("hostalias.example")
        self.assertEqual([h.name for h in route.hosts], ["hostalias.example"])
        self.assertEqual(route.hosts[0].addresses, ("127.0.0.20",))
        self.assertEqual(route.hosts[0].source, HostSource.IMPLICIT_MX)
        with self.assertRaises(RouteError) as caught:
            await self.mx.resolve("loop1.example")
        self.assertFalse(caught.exception.permanent)
        self.assertIn("CNAME", str(caught.exception))

    async def test_ip_literal_exchange(self) -> None:
        """
        An MX whose exchange is an IP address (C{10 127.0.0.50}) names no
        host (RFC 5321 section 5.1 wants a domain name there): it is
        passed over as Postfix and Exim do, never connected to at that
        address, which DNS data alone would otherwise turn into any
        address, loopback and private networks included.  As the only
        exchanger it is a permanent failure naming it.
        """
        route = await self.mx.resolve("halfliteral.example")
        self.assertEqual([h.name for h in route.hosts], ["mx.halfliteral.example"])
        self.assertEqual(route.hosts[0].addresses, ("127.0.0.52",))
        self.assertEqual(len(route.skipped), 1)
        self.assertIn("IP address", route.skipped[0][1])
        with self.assertRaises(RouteError) as caught:
            await self.mx.resolve("literal.example")
        self.assertTrue(caught.exception.permanent)
        self.assertIn("127.0.0.50", str(caught.exception))
        self.assertIn("IP address", str(caught.exception))
        self.assertNotIn(("literal.example", dns.A), self.server.queries)

    async def test_exists_without_mx_or_address(self) -> None:
        """
        A domain with neither MX nor address records bounces.
        """
        with self.assertRaises(RouteError) as caught:
            await self.mx.resolve("empty.example")
        self.assertTrue(caught.exception.permanent)

    async def test_aaaa_only(self) -> None:
        """
        An exchanger with only an AAAA record is used at its IPv6 address.
        """
        route = await self.mx.resolve("v6only.example")
        self.assertEqual(route.hosts[0].addresses, ("::1",))

    async def test_servfail_is_temporary(self) -> None:
        """
        SERVFAIL on the MX query defers (4.4.3), it never bounces.
        """
        with self.assertRaises(RouteError) as caught:
            await self.mx.resolve("servfail.example")
        self.assertFalse(caught.exception.permanent)
        self.assertEqual(caught.exception.status, "4.4.3")
        self.assertIn("SERVFAIL", str(caught.exception))

    async def test_servfail_on_exchanger_is_temporary(self) -> None:
        """
        When the only exchanger's address lookups SERVFAIL, the message is
        deferred, not bounced.
        """
        with self.assertRaises(RouteError) as caught:
            await self.mx.resolve("lame.example")
        self.assertFalse(caught.exception.permanent)

    async def test_exchanger_nxdomain_is_permanent(self) -> None:
        """
        When the only exchanger does not exist, the message bounces (5.4.4).
        """
        with self.assertRaises(RouteError) as caught:
            await self.mx.resolve("dangling.example")
        self.assertTrue(caught.exception.permanent)
        self.assertEqual(caught.exception.status, "5.4.4")

    async def test_timeout_is_temporary(self) -> None:
        """
        A DNS server that never answers gives a temporary failure.
        """
        from twisted.internet import reactor

        silent = reactor.listenUDP(0, _Silent(), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(silent.stopListening)
        from twisted.names.client import Resolver

        mx = MXResolver(
            Resolver(servers=[("127.0.0.1", silent.getHost().port)], reactor=reactor),
            timeout=(1,),
        )
        with self.assertRaises(RouteError) as caught:
            await mx.resolve("multi.example")
        self.assertFalse(caught.exception.permanent)

    async def test_route_overrides_mx(self) -> None:
        """
        An C{[smtp_routes]} entry replaces the MX lookup: its hosts are
        used in the written order, names resolved for addresses only.
        """
        routes = {"multi.example": ["routehost.example:2626", "127.0.0.5", "[::1]:2727"]}
        route = await self.mx.resolve("multi.example", routes)
        self.assertTrue(route.via_smtp_route)
        self.assertEqual(
            [(h.name, h.port, h.addresses) for h in route.hosts],
            [
                ("routehost.example", 2626, ("127.0.0.30",)),
                ("127.0.0.5", 25, ("127.0.0.5",)),
                ("::1", 2727, ("::1",)),
            ],
        )
        self.assertEqual({h.source for h in route.hosts}, {HostSource.ROUTE})
        self.assertNotIn(("multi.example", dns.MX), self.server.queries)
        self.assertIsNone(route.hosts[1].server_name)
        self.assertEqual(route.hosts[0].server_name, "routehost.example")


class _Silent:
    """
    A UDP protocol that reads and never answers.
    """

    def makeConnection(self, transport: object) -> None:
        pass

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def datagramReceived(self, data: bytes, addr: object) -> None:
        pass


class RouteSyntaxTests(SynchronousTestCase):
    """
    Parsing and matching of C{[smtp_routes]}.
    """

    def test_host_forms(self) -> None:
        """
        Route hosts may carry a port; IPv6 literals use brackets for one.
        """
        self.assertEqual(parse_route_host("mx.example"), ("mx.example", 25))
        self.assertEqual(parse_route_host("MX.Example.:2626"), ("mx.example", 2626))
        self.assertEqual(parse_route_host("127.0.0.1:2626"), ("127.0.0.1", 2626))
        self.assertEqual(parse_route_host("[::1]:2626"), ("::1", 2626))
        self.assertEqual(parse_route_host("2001:db8::1"), ("2001:db8::1", 25))
        for bad in ["", ":25", "mx.example:0", "mx.example:x", "[::1", "[::1]x"]:
            self.assertRaises(ValueError, parse_route_host, bad)

    def test_matching(self) -> None:
        """
        An exact entry wins over a C{.parent} entry, which matches only
        subdomains; C{ALL} catches the rest.
        """
        routes = {"a.example": ["h1"], ".a.example": ["h2"], "ALL": ["h3"]}
        self.assertEqual(find_route(routes, "A.Example"), ["h1"])
        self.assertEqual(find_route(routes, "x.y.a.example"), ["h2"])
        self.assertEqual(find_route(routes, "b.example"), ["h3"])
        self.assertIsNone(find_route({"a.example": ["h1"]}, "b.example"))

    def test_resolver_from_config(self) -> None:
        """
        C{[system] resolvers} entries become the servers of the resolver.
        """
        config = GatewayConfig(
            system=SystemSettings(hostname="gw.example", resolvers=("127.0.0.1:5353", "::1"))
        )
        chain = resolver_from_config(config)
        self.assertEqual(chain.resolvers[0].servers, [("127.0.0.1", 5353), ("::1", 53)])
