"""
Tests for L{esa_tls.hat.syntax}: every ESA sender entry form, valid and
invalid, and what addresses each one matches.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from esa_tls.hat.syntax import (
    AllSenders,
    DNSList,
    DomainSuffix,
    HostName,
    IPRange,
    IPv6GroupRange,
    NetworkOwner,
    NoReputation,
    ReputationRange,
    SenderSyntaxError,
    parse_sender,
)

#: (entry, addresses it matches, addresses it does not match)
ADDRESS_FORMS: list[tuple[str, list[str], list[str]]] = [
    ("10.1.1.1", ["10.1.1.1"], ["10.1.1.2", "10.1.1.0", "::ffff:10.1.1.1"]),
    ("10.1.1.", ["10.1.1.0", "10.1.1.255"], ["10.1.2.0", "10.1.0.255"]),
    ("10.1.1", ["10.1.1.0", "10.1.1.255"], ["10.1.2.0"]),
    ("10.1.", ["10.1.0.0", "10.1.255.255"], ["10.2.0.0", "10.0.255.255"]),
    ("10.1", ["10.1.0.0", "10.1.255.255"], ["10.2.0.0"]),
    ("10.", ["10.0.0.0", "10.255.255.255"], ["11.0.0.0", "9.255.255.255"]),
    ("10", ["10.0.0.0", "10.255.255.255"], ["11.0.0.0"]),
    ("10.1.1.1-50", ["10.1.1.1", "10.1.1.25", "10.1.1.50"], ["10.1.1.0", "10.1.1.51"]),
    ("10.1.1-5.", ["10.1.1.0", "10.1.3.7", "10.1.5.255"], ["10.1.0.255", "10.1.6.0"]),
    ("10.1.1-5", ["10.1.1.0", "10.1.5.255"], ["10.1.6.0"]),
    ("10.2-4.", ["10.2.0.0", "10.4.255.255"], ["10.1.255.255", "10.5.0.0"]),
    ("10.2-4", ["10.3.9.9"], ["10.5.0.0"]),
    ("10-11.", ["10.0.0.0", "11.255.255.255"], ["9.255.255.255", "12.0.0.0"]),
    ("10-11", ["11.1.1.1"], ["12.0.0.0"]),
    ("192.168.0.0/16", ["192.168.0.0", "192.168.255.255"], ["192.169.0.0"]),
    ("10/8", ["10.9.9.9"], ["11.0.0.0"]),
    ("10.1/16", ["10.1.200.1"], ["10.2.0.0"]),
    ("10.1.1/24", ["10.1.1.77"], ["10.1.2.1"]),
    ("0.0.0.0/0", ["1.2.3.4", "255.255.255.255"], ["::1"]),
    ("2001:db8::1", ["2001:db8::1", "2001:0db8:0:0:0:0:0:0001"], ["2001:db8::2", "10.0.0.1"]),
    ("2001:DB8:0:0:0:0:0:1", ["2001:db8::1"], ["2001:db8::2"]),
    ("2001:db8::", ["2001:db8::"], ["2001:db8::1"]),
    ("2001:db8::/32", ["2001:db8::", "2001:db8:ffff::1"], ["2001:db9::"]),
    ("2001:db8::10-2001:db8::20", ["2001:db8::10", "2001:db8::20"], ["2001:db8::21"]),
    ("2001:db8::1-ff", ["2001:db8::1", "2001:db8::ff"], ["2001:db8::100", "2001:db8::"]),
    (
        "2001:db8:0:1-5:0:0:0:1",
        ["2001:db8:0:1::1", "2001:db8:0:5::1"],
        ["2001:db8:0:6::1", "2001:db8:0:3::2", "2001:db8:0:0::1"],
    ),
    ("ALL", ["1.2.3.4", "::1"], []),
    ("all", ["1.2.3.4"], []),
]


#: (entry, the value parse_sender must return)
OTHER_FORMS = [
    ("mail.partner.example", HostName("mail.partner.example", "mail.partner.example")),
    ("MAIL.Partner.Example.", HostName("MAIL.Partner.Example.", "mail.partner.example")),
    ("xn--bcher-kva.example", HostName("xn--bcher-kva.example", "xn--bcher-kva.example")),
    ("1.2.3.4.example", HostName("1.2.3.4.example", "1.2.3.4.example")),
    (".partner.example", DomainSuffix(".partner.example", "partner.example")),
    (".example", DomainSuffix(".example", "example")),
    ("dnslist[bl.example]", DNSList("dnslist[bl.example]", "bl.example")),
    ("DNSLIST[BL.Example]", DNSList("DNSLIST[BL.Example]", "bl.example")),
    ("SBRS[-10:-3.5]", ReputationRange("SBRS[-10:-3.5]", -10.0, -3.5)),
    ("sbrs[ 0 : 10 ]", ReputationRange("sbrs[ 0 : 10 ]", 0.0, 10.0)),
    ("SBRS[none]", NoReputation("SBRS[none]")),
    ("sbrs[NONE]", NoReputation("sbrs[NONE]")),
    ("SBO:12345", NetworkOwner("SBO:12345", 12345)),
    ("  ALL\t", AllSenders("ALL")),
]

#: (entry, a phrase the error must contain)
INVALID = [
    ("", "empty"),
    ("   ", "empty"),
    ("10.1.1.256", "octet 256 is out of range"),
    ("10.1.1.1-300", "octet 300 is out of range"),
    ("10.1.1.1.1", "at most four octets"),
    ("1.2.3.4.", "no trailing dot"),
    ("10..1.1", "not an octet"),
    ("010.1.1.1", "leading zero"),
    ("10.1.1.50-1", "above its end"),
    ("10.1-5.1.1", "only in the last octet"),
    ("10.1.1.1-2-3", "one '-'"),
    ("10.1.1.1-10.1.1.9", "at most four octets"),
    ("1.2.3.4/33", "prefix length 33 is above 32"),
    ("1.2.3.4/", "not a number"),
    ("1.2.3.4/08", "not a number"),
    ("10.1.1.1/16", "did you mean 10.1.0.0/16"),
    ("10.1.1-5/24", "cannot hold a range"),
    ("2001:db8::/129", "above 128"),
    ("2001:db8::1/32", "did you mean 2001:db8::/32"),
    ("2001:db8::g", "not an IPv6 address"),
    ("2001:db8:::1", "not an IPv6 address"),
    ("fe80::1%eth0", "scoped"),
    ("2001:db8::ff-1", "above its end"),
    ("2001:db8::2-2001:db8::1", "above its end"),
    ("host..example", "empty label"),
    ("-host.example", "label"),
    ("host-.example", "label"),
    ("ho_st.example", "label"),
    ("localhost", "fully qualified"),
    ("host.123", "all digits"),
    ("a" * 64 + ".example", "label"),
    (("a" * 60 + ".") * 5 + "example", "longer than 253"),
    ("..example", "empty label"),
    (".", "empty"),
    ("bücher.example", "ASCII"),
    ("dnslist[]", "zone is empty"),
    ("dnslist[bl.example", "expected dnslist"),
    ("dnslist[bl..example]", "empty label"),
    ("SBRS[5:1]", "low end is above"),
    ("SBRS[-11:0]", "from -10 to 10"),
    ("SBRS[0:10.5]", "from -10 to 10"),
    ("SBRS[a:1]", "not a number"),
    ("SBRS[1]", "expected SBRS"),
    ("SBRS[nan:1]", "not a number"),
    ("SBRS[0:1", "expected SBRS"),
    ("SBO:", "network owner"),
    ("SBO:-1", "network owner"),
    ("10.1.1.1 # office", "whitespace"),
    ("mail.example REJECT", "whitespace"),
    ("*.example", "label"),
]


class ParseAddressFormsTests(SynchronousTestCase):
    """
    Address entries match exactly the addresses the ESA documents for them.
    """

    def test_address_forms(self) -> None:
        """
        Each full, partial, ranged and CIDR IPv4 form and each IPv6 form
        matches the addresses inside it and none outside, without DNS.
        """
        for entry, inside, outside in ADDRESS_FORMS:
            sender = parse_sender(entry)
            self.assertFalse(sender.needs_dns, entry)
            self.assertEqual(sender.text, entry.strip(), entry)
            for address in inside:
                self.assertTrue(sender.matches_address(ip_address(address)), (entry, address))
            for address in outside:
                self.assertFalse(sender.matches_address(ip_address(address)), (entry, address))

    def test_ipv6_group_range_kind(self) -> None:
        """
        A range in an inner IPv6 group is not a contiguous block: it leaves
        the later groups fixed.
        """
        sender = parse_sender("2001:db8:0:1-5:0:0:0:1")
        self.assertIsInstance(sender, IPv6GroupRange)
        self.assertEqual(
            sender, IPv6GroupRange(sender.text, IPv6Address("2001:db8:0:1::1"), 3, 1, 5)
        )

    def test_other_forms(self) -> None:
        """
        Host names, partial host names, DNS lists, SBRS, SBO and ALL parse
        to the values that say what they mean, with case and a trailing
        dot normalised and keywords case-insensitive.
        """
        for entry, expected in OTHER_FORMS:
            self.assertEqual(parse_sender(entry), expected, entry)

    def test_dns_and_reputation_needs(self) -> None:
        """
        Host-name and DNS list entries need DNS; SBRS and SBO need a
        reputation source; none of them matches on an address alone.
        """
        for entry in ("mail.partner.example", ".partner.example", "dnslist[bl.example]"):
            sender = parse_sender(entry)
            self.assertTrue(sender.needs_dns, entry)
            self.assertFalse(sender.needs_reputation, entry)
            self.assertFalse(sender.matches_address(IPv4Address("192.0.2.1")), entry)
        for entry in ("SBRS[-10:10]", "SBRS[none]", "SBO:1"):
            sender = parse_sender(entry)
            self.assertFalse(sender.needs_dns, entry)
            self.assertTrue(sender.needs_reputation, entry)
            self.assertFalse(sender.matches_address(IPv4Address("192.0.2.1")), entry)

    def test_host_name_matching(self) -> None:
        """
        A full name matches only itself; a partial name matches names at any
        depth below its domain but not the domain itself nor a look-alike.
        """
        host = parse_sender("mail.partner.example")
        assert isinstance(host, HostName)
        self.assertTrue(host.matches_name("mail.partner.example"))
        self.assertFalse(host.matches_name("xmail.partner.example"))
        suffix = parse_sender(".partner.example")
        assert isinstance(suffix, DomainSuffix)
        self.assertTrue(suffix.matches_name("mx.partner.example"))
        self.assertTrue(suffix.matches_name("a.b.partner.example"))
        self.assertFalse(suffix.matches_name("partner.example"))
        self.assertFalse(suffix.matches_name("evilpartner.example"))

    def test_reputation_matching(self) -> None:
        """
        SBRS ranges are inclusive; SBRS[none] matches only a missing score.
        """
        sbrs = parse_sender("SBRS[-10:-3]")
        assert isinstance(sbrs, ReputationRange)
        self.assertTrue(sbrs.matches_score(-10.0))
        self.assertTrue(sbrs.matches_score(-3.0))
        self.assertFalse(sbrs.matches_score(-2.9))
        self.assertFalse(sbrs.matches_score(None))
        none = parse_sender("SBRS[none]")
        assert isinstance(none, NoReputation)
        self.assertTrue(none.matches_score(None))
        self.assertFalse(none.matches_score(0.0))

    def test_dnslist_query_names(self) -> None:
        """
        The DNS list query name is the reversed octets (IPv4) or nibbles
        (IPv6) of the address under the zone, as RFC 5782 specifies.
        """
        sender = parse_sender("dnslist[bl.example]")
        assert isinstance(sender, DNSList)
        self.assertEqual(sender.query_name(IPv4Address("192.0.2.99")), "99.2.0.192.bl.example")
        self.assertEqual(
            sender.query_name(IPv6Address("2001:db8:1:2:3:4:567:89ab")),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.example",
        )


class RejectTests(SynchronousTestCase):
    """
    Anything that is not ESA syntax is refused with a reason.
    """

    def test_invalid_entries(self) -> None:
        """
        Each malformed entry raises L{SenderSyntaxError}, a L{ValueError},
        whose message quotes the entry and says what is wrong.
        """
        for entry, phrase in INVALID:
            with self.assertRaises(SenderSyntaxError, msg=entry) as caught:
                parse_sender(entry)
            message = str(caught.exception)
            self.assertIn(phrase, message, f"{entry!r}: {message}")
            self.assertIn(repr(entry.strip()) if entry.strip() else "''", message)
            self.assertIsInstance(caught.exception, ValueError)

    def test_message_shape(self) -> None:
        """
        The message is one short sentence naming the kind of entry, the
        entry and the fault, ready to follow a file name and key path.
        """
        with self.assertRaises(SenderSyntaxError) as caught:
            parse_sender("10.1.1.1-300")
        self.assertEqual(
            str(caught.exception), "bad IPv4 range '10.1.1.1-300': octet 300 is out of range"
        )
        self.assertEqual(caught.exception.entry, "10.1.1.1-300")
        self.assertEqual(caught.exception.reason, "octet 300 is out of range")


ipv4 = st.integers(0, 2**32 - 1).map(IPv4Address)
ipv6 = st.integers(0, 2**128 - 1).map(IPv6Address)


class PropertyTests(SynchronousTestCase):
    """
    Properties over all addresses and blocks, checked against the standard
    library's L{ipaddress}.  No per-example deadline: a loaded CI machine
    must not turn slowness into a failure.
    """

    @settings(deadline=None)
    @given(ipv4)
    def test_ipv4_round_trip(self, address: IPv4Address) -> None:
        """
        Any IPv4 address written out parses to exactly that address.
        """
        sender = parse_sender(str(address))
        self.assertEqual(sender, IPRange(str(address), address, address))

    @settings(deadline=None)
    @given(ipv6)
    def test_ipv6_round_trip(self, address: IPv6Address) -> None:
        """
        Any IPv6 address, compressed or written out in full, parses to
        exactly that address.
        """
        for text in (str(address), address.exploded):
            self.assertEqual(parse_sender(text), IPRange(text, address, address))

    @settings(deadline=None)
    @given(ipv4, st.integers(0, 32), ipv4)
    def test_ipv4_cidr(self, base: IPv4Address, prefix: int, probe: IPv4Address) -> None:
        """
        A /n IPv4 block round-trips and matches exactly the addresses
        L{ipaddress.ip_network} puts in it.
        """
        network = IPv4Network((base, prefix), strict=False)
        sender = parse_sender(str(network))
        assert isinstance(sender, IPRange)
        self.assertEqual((sender.first, sender.last), (network[0], network[-1]))
        for address in (probe, network[0], network[-1]):
            self.assertEqual(sender.matches_address(address), address in network)

    @settings(deadline=None)
    @given(ipv6, st.integers(0, 128), ipv6)
    def test_ipv6_cidr(self, base: IPv6Address, prefix: int, probe: IPv6Address) -> None:
        """
        A /n IPv6 block matches exactly the addresses L{ipaddress.ip_network}
        puts in it.
        """
        network = IPv6Network((base, prefix), strict=False)
        sender = parse_sender(str(network))
        for address in (probe, network[0], network[-1]):
            self.assertEqual(sender.matches_address(address), address in network)

    @settings(deadline=None)
    @given(ipv4, st.integers(1, 3), ipv4)
    def test_partial_ipv4(self, base: IPv4Address, octets: int, probe: IPv4Address) -> None:
        """
        A partial address of k octets, with or without the trailing dot,
        is the /8k block and matches the same addresses as that block.
        """
        given_octets = str(base).split(".")[:octets]
        network = IPv4Network((".".join([*given_octets, *["0"] * (4 - octets)]), 8 * octets))
        for text in (".".join(given_octets), ".".join(given_octets) + "."):
            sender = parse_sender(text)
            self.assertEqual(sender.matches_address(probe), probe in network, text)
            self.assertTrue(sender.matches_address(base), text)

    @settings(deadline=None)
    @given(ipv4, st.integers(0, 255), st.integers(0, 255), ipv4)
    def test_last_octet_range(self, base: IPv4Address, a: int, b: int, probe: IPv4Address) -> None:
        """
        C{a.b.c.x-y} matches the addresses of C{a.b.c} whose last octet is
        from x to y.
        """
        low, high = min(a, b), max(a, b)
        prefix = ".".join(str(base).split(".")[:3])
        sender = parse_sender(f"{prefix}.{low}-{high}")
        inside = (
            str(probe).startswith(prefix + ".") and low <= int(str(probe).split(".")[3]) <= high
        )
        self.assertEqual(sender.matches_address(probe), inside)
