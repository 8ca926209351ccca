"""
Tests for the answers L{esa_tls.outbound.mx.MXResolver} remembers: a queue
delivering to one domain must not ask the same DNS questions for every
message, and must ask again once the TTL says so.  Against a real DNS
server on loopback that records every question.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.names import dns
from twisted.trial.unittest import TestCase

from esa_tls.outbound.mx import MXResolver
from tests.peers.dns import start_dns_server


class AnswerCacheTests(TestCase):
    """
    MX, A and AAAA answers are remembered for their TTL.
    """

    def setUp(self) -> None:
        self.dns = start_dns_server(
            self,
            {
                "partner.example": [dns.Record_MX(10, b"mx.partner.example", ttl=60)],
                "mx.partner.example": [dns.Record_A("127.0.0.1", ttl=60)],
            },
        )
        self.clock = Clock()
        self.mx = MXResolver(self.dns.resolver(), clock=self.clock)

    def asked(self) -> list[tuple[str, int]]:
        return sorted(self.dns.queries)

    async def test_remembered_for_ttl(self) -> None:
        """
        Three routes in a row cost one MX, one A and one AAAA question;
        after the zone's negative TTL (1 s) only the empty AAAA answer is
        asked again; after the records' 60 s TTL, everything is.
        """
        for _ in range(3):
            route = await self.mx.resolve("partner.example")
            self.assertEqual([h.addresses for h in route.hosts], [("127.0.0.1",)])
        mx, a, aaaa = (
            ("partner.example", dns.MX),
            ("mx.partner.example", dns.A),
            (
                "mx.partner.example",
                dns.AAAA,
            ),
        )
        self.assertEqual(self.asked(), sorted([mx, a, aaaa]))
        self.clock.advance(2)
        await self.mx.resolve("partner.example")
        self.assertEqual(self.asked(), sorted([mx, a, aaaa, aaaa]))
        self.clock.advance(60)
        await self.mx.resolve("partner.example")
        self.assertEqual(self.asked(), sorted([mx, a, aaaa, aaaa, mx, a, aaaa]))

    async def test_without_clock_always_asks(self) -> None:
        """
        Without a clock (the default for direct callers such as
        C{tlsverify}), every route is looked up afresh.
        """
        mx = MXResolver(self.dns.resolver())
        await mx.resolve("partner.example")
        await mx.resolve("partner.example")
        self.assertEqual(len(self.dns.queries), 6)
