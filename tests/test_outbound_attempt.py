"""
Tests for L{esa_tls.outbound.attempt.deliver_message}: DNS outcomes turned
into recipient outcomes, IPv6 delivery, and the mail log of bounces and
deferrals.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
from io import BytesIO
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.names import dns
from twisted.trial.unittest import SkipTest, TestCase

from esa_tls.config.model import (
    GatewayConfig,
    Interface,
    Listener,
    ListenerType,
    SystemSettings,
)
from esa_tls.maillog import MailLog, MailLogCollector
from esa_tls.outbound.attempt import address_problem, deliver_message
from esa_tls.outbound.client import Timeouts
from esa_tls.outbound.mx import MXResolver
from esa_tls.outbound.result import DeliveryResult, RecipientStatus
from tests.peers.dns import start_dns_server
from tests.peers.hostile import HostileServer, Script, start_hostile_server

CONFIG = GatewayConfig(system=SystemSettings(hostname="gw.test"))


class DeliverThroughDNSTests(TestCase):
    """
    Delivery that starts with a real DNS lookup.
    """

    def setUp(self) -> None:
        self.server = start_hostile_server(self, Script(), interface="::1")
        self.dns = start_dns_server(
            self,
            {
                "v6.example": [dns.Record_MX(10, b"mx.v6.example")],
                "mx.v6.example": [dns.Record_AAAA("::1")],
                "nullmx.example": [dns.Record_MX(0, b"")],
            },
            servfail={"broken.example"},
        )
        self.collector = MailLogCollector()

    async def deliver(self, domain: str) -> DeliveryResult:
        return await deliver_message(
            reactor,
            None,
            CONFIG,
            domain,
            "sender@gw.test",
            [(1, f"a@{domain}"), (2, f"b@{domain}")],
            BytesIO(b"Subject: x\r\n\r\nx\r\n"),
            dcid_allocator=itertools.count(1).__next__,
            maillog=MailLog(observer=self.collector),
            mid=9,
            timeouts=Timeouts.uniform(5),
            port=self.server.port,
            mx_resolver=MXResolver(self.dns.resolver(), timeout=(1,)),
        )

    async def test_aaaa_only_mx(self) -> None:
        """
        An MX with only an AAAA record gets the mail over IPv6.
        """
        result = await self.deliver("v6.example")
        self.assertEqual([r.status for r in result.recipients], [RecipientStatus.DELIVERED] * 2)
        self.assertEqual(result.address, "::1")
        self.assertEqual(len(self.server.capture.messages), 1)

    async def test_null_mx_bounces(self) -> None:
        """
        A null MX bounces every recipient at once, with 556 5.1.10, and the
        mail log says so.
        """
        result = await self.deliver("nullmx.example")
        self.assertEqual([r.status for r in result.recipients], [RecipientStatus.BOUNCED] * 2)
        self.assertEqual(result.recipients[0].code, 556)
        self.assertTrue(result.recipients[0].text.startswith("5.1.10"))
        self.assertEqual(len(self.collector.lines), 1)
        self.assertTrue(self.collector.lines[0].startswith("MID 9 RID [1, 2] bounced: 556 5.1.10"))

    async def test_servfail_defers(self) -> None:
        """
        SERVFAIL defers every recipient (4.4.3); nothing is attempted.
        """
        result = await self.deliver("broken.example")
        self.assertEqual([r.status for r in result.recipients], [RecipientStatus.DEFERRED] * 2)
        self.assertTrue(result.recipients[0].text.startswith("4.4.3"))
        self.assertIsNone(result.dcid)
        self.assertTrue(self.collector.lines[0].startswith("MID 9 RID [1, 2] deferred: 451 4.4.3"))


class _LoopbackDelivery(TestCase):
    """
    Delivers one message for C{a@DOMAIN} with C{self.config}, through the
    test DNS server C{self.dns}, to hosts at C{self.server}'s port.
    """

    server: HostileServer
    dns: Any
    config: GatewayConfig

    async def deliver(self, domain: str, config: GatewayConfig | None = None) -> DeliveryResult:
        return await deliver_message(
            reactor,
            None,
            config or self.config,
            domain,
            "sender@gw.test",
            [(1, f"a@{domain}")],
            BytesIO(b"Subject: x\r\n\r\nx\r\n"),
            dcid_allocator=itertools.count(1).__next__,
            mid=9,
            timeouts=Timeouts.uniform(5),
            port=self.server.port,
            mx_resolver=MXResolver(self.dns.resolver(), timeout=(1,)),
        )


class SelfAsMXTests(_LoopbackDelivery):
    """
    RFC 5321 section 5.1: a gateway that finds itself among a domain's mail
    exchangers uses only those preferred to it.  Here the capturing
    server's address and port are the gateway's own listener's, so that
    whatever reaches it is mail the gateway sent to itself.
    """

    def setUp(self) -> None:
        self.server = start_hostile_server(self, Script())
        self.dns = start_dns_server(
            self,
            {
                # This gateway is the backup MX; the primary is down (nothing
                # listens on 127.0.0.2).
                "backup.example": [
                    dns.Record_MX(10, b"primary.backup.example"),
                    dns.Record_MX(20, b"gw.backup.example"),
                ],
                "primary.backup.example": [dns.Record_A("127.0.0.2")],
                "gw.backup.example": [dns.Record_A("127.0.0.1")],
                # This gateway is the only MX, under another name.
                "only.example": [dns.Record_MX(10, b"mail.only.example")],
                "mail.only.example": [dns.Record_A("127.0.0.1")],
                # No MX: the domain's own address (implicit MX) is ours.
                "implicit.example": [dns.Record_A("127.0.0.1")],
                # Our address in its IPv4-mapped IPv6 form, which an IPv6
                # socket connects to at the IPv4 address.
                "mapped.example": [dns.Record_MX(10, b"mail.mapped.example")],
                "mail.mapped.example": [dns.Record_AAAA("::ffff:127.0.0.1")],
            },
        )
        loopback = Interface("Loopback", ipaddress.ip_interface("127.0.0.1/8"))
        self.config = GatewayConfig(
            system=SystemSettings(hostname="gw.test"),
            interfaces={"Loopback": loopback},
            listeners={
                "InboundMail": Listener(
                    "InboundMail", ListenerType.PUBLIC, loopback, self.server.port
                )
            },
        )

    async def test_backup_mx_defers(self) -> None:
        """
        As the backup MX of a domain whose primary is down, the gateway
        keeps the mail (deferred) instead of sending it to itself, where it
        went round, a copy through the spool each time, until the hop
        count refused it and the sender got a bounce.
        """
        result = await self.deliver("backup.example")
        [outcome] = result.recipients
        self.assertEqual(outcome.status, RecipientStatus.DEFERRED)
        self.assertIn("127.0.0.2", outcome.text)
        self.assertEqual(self.server.capture.commands, [])

    async def test_best_mx_loops(self) -> None:
        """
        As the best (or only) MX, or the implicit MX, of a domain it has
        no route for, the gateway bounces at once with Postfix's "mail for
        ... loops back to myself" (554 5.4.6), connecting to nothing.
        """
        for domain in ("only.example", "implicit.example", "mapped.example"):
            result = await self.deliver(domain)
            [outcome] = result.recipients
            self.assertEqual(outcome.status, RecipientStatus.BOUNCED, domain)
            self.assertEqual(outcome.code, 554)
            self.assertEqual(outcome.text, f"5.4.6 mail for {domain} loops back to myself")
        self.assertEqual(self.server.capture.commands, [])

    async def test_other_port_is_not_self(self) -> None:
        """
        Our address at another port is another MTA (a content filter on
        the same machine): it is delivered to.
        """
        self.config = attrs.evolve(
            self.config,
            listeners={
                "InboundMail": attrs.evolve(
                    self.config.listeners["InboundMail"], port=self.server.port + 1
                )
            },
        )
        result = await self.deliver("only.example")
        self.assertEqual([r.status for r in result.recipients], [RecipientStatus.DELIVERED])


class AddressLiteralTests(_LoopbackDelivery):
    """
    A recipient at an address literal (C{a@[127.0.0.1]}, which the listeners
    take from a client allowed to relay) is delivered to that address with
    no lookup, as RFC 5321 section 5.1 says and Postfix does; it used to go
    to DNS as a name and bounce as "not found".
    """

    def setUp(self) -> None:
        self.server = start_hostile_server(self, Script())
        # A DNS server that knows nothing: any question would fail.
        self.dns = start_dns_server(self, {})
        loopback = Interface("Loopback", ipaddress.ip_interface("127.0.0.1/8"))
        self.config = GatewayConfig(
            system=SystemSettings(hostname="gw.test"),
            interfaces={"Loopback": loopback},
            listeners={"InboundMail": Listener("InboundMail", ListenerType.PUBLIC, loopback, 2525)},
        )

    async def test_delivered_to_the_address(self) -> None:
        """
        The mail reaches the server at the literal's address, with no DNS
        question asked.
        """
        result = await self.deliver("[127.0.0.1]")
        [outcome] = result.recipients
        self.assertEqual(outcome.status, RecipientStatus.DELIVERED, outcome.text)
        self.assertIn((False, b"RCPT TO:<a@[127.0.0.1]>"), self.server.capture.commands)
        self.assertEqual(result.address, "127.0.0.1")
        self.assertEqual(self.dns.queries, [])

    async def test_no_host(self) -> None:
        """
        An address that names no single host bounces at once, saying so.
        """
        for domain in ("[0.0.0.0]", "[224.0.0.1]", "[255.255.255.255]", "[IPv6:ff02::1]"):
            result = await self.deliver(domain)
            [outcome] = result.recipients
            self.assertEqual(outcome.status, RecipientStatus.BOUNCED, domain)
            self.assertEqual(outcome.code, 550, domain)
            self.assertIn("names no host", outcome.text)
        self.assertEqual(self.server.capture.commands, [])

    async def test_self(self) -> None:
        """
        A literal that is this gateway (its listener's address and port)
        bounces as a loop, connecting to nothing.
        """
        listener = self.config.listeners["InboundMail"]
        config = attrs.evolve(
            self.config,
            listeners={"InboundMail": attrs.evolve(listener, port=self.server.port)},
        )
        result = await self.deliver("[127.0.0.1]", config)
        [outcome] = result.recipients
        self.assertEqual(outcome.status, RecipientStatus.BOUNCED)
        self.assertEqual(outcome.text, "5.4.6 mail for [127.0.0.1] loops back to myself")
        self.assertEqual(self.server.capture.commands, [])


def machine_address() -> str:
    """
    An address of this machine's that is not a loopback one: the source it
    would send from to a documentation address (a UDP connect sends nothing).
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("198.51.100.1", 9))
            address: str = probe.getsockname()[0]
    except OSError:
        raise SkipTest("no route off this machine: no address of its own to try") from None
    if ipaddress.ip_address(address).is_loopback:
        raise SkipTest("this machine has only loopback addresses")
    return address


class SelfOnEveryAddressTests(_LoopbackDelivery):
    """
    A gateway whose listener is bound to every address (its interface is
    C{0.0.0.0/0}) takes mail at each of the machine's addresses, which its
    C{[interfaces]} need not name: an MX at any of them is the gateway.
    The capturing server listens on every address, as that listener does,
    so that what reaches it is mail the gateway sent to itself.
    """

    def setUp(self) -> None:
        address = machine_address()
        self.server = start_hostile_server(self, Script(), interface="0.0.0.0")
        self.dns = start_dns_server(
            self,
            {
                "only.example": [dns.Record_MX(10, b"mx.only.example")],
                "mx.only.example": [dns.Record_A(address)],
                # The address as an IPv4-mapped IPv6 one reaches it too.
                "mapped.example": [dns.Record_MX(10, b"mx.mapped.example")],
                "mx.mapped.example": [dns.Record_AAAA(f"::ffff:{address}")],
            },
        )
        every = Interface("All", ipaddress.ip_interface("0.0.0.0/0"))
        self.config = GatewayConfig(
            system=SystemSettings(hostname="gw.test"),
            interfaces={"All": every},
            listeners={
                "InboundMail": Listener("InboundMail", ListenerType.PUBLIC, every, self.server.port)
            },
        )

    async def test_machine_address_is_self(self) -> None:
        """
        The only MX at one of the machine's addresses loops back (554
        5.4.6, no connection made), where the gateway used to deliver the
        mail to itself until the hop count bounced it.
        """
        for domain in ("only.example", "mapped.example"):
            result = await self.deliver(domain)
            [outcome] = result.recipients
            self.assertEqual(outcome.status, RecipientStatus.BOUNCED, domain)
            self.assertEqual(outcome.text, f"5.4.6 mail for {domain} loops back to myself")
        self.assertEqual(self.server.capture.commands, [])


class AddressTests(TestCase):
    """
    Stored addresses that must not reach an SMTP command line.
    """

    def test_problems(self) -> None:
        """
        Line breaks, spaces, angle brackets and missing C{@} are refused;
        ordinary and international addresses pass, and so do spaces and
        angle brackets inside a quoted local part.
        """
        for bad in [
            "a@b\r\nRCPT TO:<c@d>",
            "a b@c",
            "a>@b",
            "nobody",
            "",
            '"a\r\nb"@c.example',
            '"a\\\r"@c.example',
            '"a b"@c.example d',
            '"a b"@c.example>',
            '"a b" x@c.example',
        ]:
            self.assertIsNotNone(address_problem(bad), bad)
        for good in [
            "a@b.example",
            "first.last+tag@x.example",
            "jos\u00e9@b.example",
            '"john doe"@b.example',
            '"a>b \\" c"@b.example',
        ]:
            self.assertIsNone(address_problem(good), good)
