"""
Listeners behind HAProxy (C{proxy_protocol = true}): the PROXY header, in
version 1 or 2, names the client, and the Host Access Table, the mail log
and the C{Received:} header see that client, not the proxy.  A connection
without a valid header gets nothing; STARTTLS and implicit TLS work
through the proxy as on a direct connection.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase

from esa_tls.inbound.proxy import ProxyHeaderError, ProxyProtocolFactory, parse_header
from tests.support import Gateway, Raw, in_thread, wait_until

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(source: str, port: int = 40000) -> bytes:
    family = b"TCP6" if ":" in source else b"TCP4"
    destination = "::1" if ":" in source else "127.0.0.1"
    return b"PROXY %s %s %s %d 25\r\n" % (family, source.encode(), destination.encode(), port)


def v2(source: str, port: int = 40000, tlvs: bytes = b"", command: int = 1) -> bytes:
    if command == 0:
        return V2_SIGNATURE + b"\x20\x00\x00\x00"
    if ":" in source:
        family = 0x21
        block = socket.inet_pton(socket.AF_INET6, source) + socket.inet_pton(socket.AF_INET6, "::1")
    else:
        family = 0x11
        block = socket.inet_aton(source) + socket.inet_aton("127.0.0.1")
    block += struct.pack("!HH", port, 25) + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(block)) + block


class ParseTests(TestCase):
    def test_version1(self) -> None:
        """
        A version 1 line names the source and destination, IPv4 or IPv6;
        C{UNKNOWN} names none; the header's length covers its CRLF.
        """
        header = parse_header(v1("192.0.2.10", 1234) + b"EHLO x\r\n")
        assert header is not None
        self.assertEqual((header.version, header.length), (1, len(v1("192.0.2.10", 1234))))
        assert header.source is not None
        self.assertEqual((header.source.host, header.source.port), ("192.0.2.10", 1234))
        six = parse_header(v1("2001:db8::7"))
        assert six is not None and six.source is not None
        self.assertEqual(six.source.host, "2001:db8::7")
        unknown = parse_header(b"PROXY UNKNOWN\r\n")
        assert unknown is not None
        self.assertIsNone(unknown.source)

    def test_version2(self) -> None:
        """
        A version 2 header names IPv4 or IPv6 addresses (TLVs after them
        are skipped); C{LOCAL} (a health check) names none; an IPv4-mapped
        source is the IPv4 address, so IPv4 HAT entries match it.
        """
        data = v2("198.51.100.9", 555, tlvs=b"\x01\x00\x02h2")
        header = parse_header(data + b"EHLO")
        assert header is not None and header.source is not None
        self.assertEqual((header.version, header.length), (2, len(data)))
        self.assertEqual((header.source.host, header.source.port), ("198.51.100.9", 555))
        mapped = parse_header(v2("::ffff:192.0.2.44"))
        assert mapped is not None and mapped.source is not None
        self.assertEqual(mapped.source.host, "192.0.2.44")
        local = parse_header(v2("", command=0))
        assert local is not None
        self.assertIsNone(local.source)

    def test_partial(self) -> None:
        """
        Any proper prefix of a valid header is "not yet", however short:
        TCP may deliver the header a byte at a time.
        """
        for data in (v1("192.0.2.1"), v2("192.0.2.1"), v2("2001:db8::1")):
            for cut in range(len(data)):
                self.assertIsNone(parse_header(data[:cut]), (data, cut))

    def test_invalid(self) -> None:
        """
        Anything that cannot be a header is refused at once: SMTP from a
        client that bypassed the proxy, bad addresses or ports, a family
        that does not match, an over-long line or block, another version.
        """
        bad = [
            b"EHLO client.example\r\n",
            b"GET / HTTP/1.0\r\n",
            b"PROXY TCP4 192.0.2.1 127.0.0.1 70000 25\r\n",
            b"PROXY TCP4 192.0.2.1 127.0.0.1 040 25\r\n",
            b"PROXY TCP4 2001:db8::1 127.0.0.1 40 25\r\n",
            b"PROXY TCP4 not.an.ip 127.0.0.1 40 25\r\n",
            b"PROXY TCP4 192.0.2.1 127.0.0.1 40\r\n",
            b"PROXY UDP4 192.0.2.1 127.0.0.1 40 25\r\n",
            b"PROXY TCP4 192.0.2.1\n127.0.0.1 40 25\r\n",
            b"PROXY TCP6 fe80::1%eth0 ::1 40 25\r\n",
            b"PROXY TCP6 ::1 fe80::1%eth0 40 25\r\n",
            b"PROXY " + b"x" * 120,
            V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 5000) + b"\x00" * 20,
            V2_SIGNATURE + b"\x31\x11" + struct.pack("!H", 12) + b"\x00" * 12,
            V2_SIGNATURE + b"\x21\x12" + struct.pack("!H", 12) + b"\x00" * 12,
            V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 4) + b"\x00" * 4,
        ]
        for data in bad:
            with self.assertRaises(ProxyHeaderError, msg=repr(data)):
                parse_header(data)


HAT = """
[listeners.InboundMail]
type = "public"
interface = "Loopback"
port = 2525
rat = ["example.com"]
{extra}

[listeners.InboundMail.policies.default]
tls = "preferred"

[[listeners.InboundMail.hat]]
group = "BLOCKED_LIST"
policy = "BLOCKED"
senders = ["192.0.2.66", "2001:db8::66"]

[[listeners.InboundMail.hat]]
group = "ALL"
policy = "ACCEPTED"
senders = ["ALL"]
"""


class ProxiedListener:
    """
    A real listener (L{tests.support.Gateway}) behind a
    L{ProxyProtocolFactory} on its own loopback port.
    """

    def __init__(self, case: TestCase, extra: str = "", clock: Any = None) -> None:
        self.gateway = Gateway(case, HAT.format(extra=extra))
        served: Any = self.gateway.factory
        if self.gateway.listener.implicit_tls:
            creator = self.gateway.factory.tls_creator(self.gateway.listener.default_policy)
            served = TLSMemoryBIOFactory(creator, False, served)
        self.clock = clock if clock is not None else reactor
        self.factory = ProxyProtocolFactory(served, self.clock, timeout=5.0)
        self.port_object: Any = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        host: Any = self.port_object.getHost()
        self.port: int = host.port
        case.addCleanup(self.port_object.stopListening)


def converse(port: int, header: bytes, commands: list[bytes], split: bool = False) -> list[bytes]:
    """
    Send the header (a byte at a time if C{split}), then each command,
    returning the banner and each reply.
    """
    raw = Raw(port)
    try:
        if split:
            for b in header:
                raw.send(bytes([b]))
                time.sleep(0.001)
        else:
            raw.send(header)
        replies = [raw.reply()]
        for command in commands:
            replies.append(raw.chat(command))
        return replies
    finally:
        raw.close()


MESSAGE = [
    b"EHLO client.example\r\n",
    b"MAIL FROM:<a@client.example>\r\n",
    b"RCPT TO:<u@example.com>\r\n",
    b"DATA\r\n",
    b"Subject: proxied\r\n\r\nbody\r\n.\r\n",
    b"QUIT\r\n",
]


class ProxiedSessionTests(TestCase):
    @inlineCallbacks
    def test_hatJudgesProxiedClient(self) -> Any:
        """
        The real peer is 127.0.0.1 in every case; the HAT rejects the
        proxied address on its BLOCKED_LIST (v1 and v2, IPv4 and IPv6) and
        accepts another one, whose address the mail log and the
        C{Received:} header record.
        """
        proxied = ProxiedListener(self)
        for header in (v1("192.0.2.66"), v2("192.0.2.66"), v2("2001:db8::66")):
            [banner] = yield in_thread(converse, proxied.port, header, [])
            self.assertTrue(banner.startswith(b"554 "), (header, banner))
        replies = yield in_thread(converse, proxied.port, v2("198.51.100.7"), MESSAGE, True)
        self.assertTrue(replies[0].startswith(b"220 "), replies[0])
        self.assertTrue(replies[5].startswith(b"250 2.0.0 Ok: Message "), replies[5])
        mid = int(replies[5].split()[4])
        head = proxied.gateway.body(mid).split(b"\r\n\r\n")[0]
        self.assertIn(b" [198.51.100.7])", head)
        lines = proxied.gateway.lines
        self.assertTrue(
            any("address 198.51.100.7 reverse dns host" in line for line in lines), lines
        )
        self.assertTrue(any("address 192.0.2.66 reverse dns host" in line for line in lines))
        self.assertFalse(any("address 127.0.0.1" in line for line in lines), lines)

    @inlineCallbacks
    def test_ipv6ReceivedHeader(self) -> Any:
        """
        An IPv6 client's address in the C{Received:} header is an RFC 5321
        address literal, C{[IPv6:...]}; an IPv4 one is bare.
        """
        proxied = ProxiedListener(self)
        for source, literal in (
            ("2001:db8::7", b"[IPv6:2001:db8::7]"),
            ("192.0.2.7", b"[192.0.2.7]"),
        ):
            replies = yield in_thread(converse, proxied.port, v2(source), MESSAGE)
            self.assertTrue(replies[5].startswith(b"250 2.0.0 Ok: Message "), replies[5])
            head = proxied.gateway.body(int(replies[5].split()[4])).split(b"\r\n")[0]
            self.assertEqual(head, b"Received: from client.example (unknown " + literal + b")")

    @inlineCallbacks
    def test_localHeaderUsesConnection(self) -> Any:
        """
        A version 2 C{LOCAL} header (the proxy's own health check) and a
        version 1 C{UNKNOWN} are judged by the connection's own address.
        """
        proxied = ProxiedListener(self)
        for header in (v2("", command=0), b"PROXY UNKNOWN\r\n"):
            [banner] = yield in_thread(converse, proxied.port, header, [])
            self.assertTrue(banner.startswith(b"220 "), banner)
        self.assertTrue(any("address 127.0.0.1 " in line for line in proxied.gateway.lines))

    @inlineCallbacks
    def test_noHeaderNoReply(self) -> Any:
        """
        A client that speaks SMTP straight away, or sends a broken header,
        is disconnected without a byte: it did not come through the proxy.
        """
        proxied = ProxiedListener(self)

        def attempt(data: bytes) -> bytes:
            raw = Raw(proxied.port)
            try:
                raw.send(data)
                return raw.rest()
            finally:
                raw.close()

        for data in (b"EHLO client.example\r\n", b"PROXY TCP4 192.0.2.1 x 1 2\r\n"):
            self.assertEqual((yield in_thread(attempt, data)), b"")
        self.assertEqual(proxied.gateway.lines, [])

    @inlineCallbacks
    def test_scopedAddressRefused(self) -> Any:
        """
        A version 1 address with an IPv6 zone (which Python's C{ipaddress}
        would take, with any byte but a space in it) is refused like any
        other bad header: the zone's bare LF would have put a line of the
        sender's choosing in the C{Received:} header, and each zone would
        have been a new address to the per-IP limits.
        """
        proxied = ProxiedListener(self)
        header = b"PROXY TCP6 fe80::1%a\nX-Injected:yes ::1 40000 25\r\n"

        def attempt() -> bytes:
            raw = Raw(proxied.port)
            try:
                raw.send(header + b"".join(MESSAGE))
                return raw.rest()
            finally:
                raw.close()

        self.assertEqual((yield in_thread(attempt)), b"")
        self.assertEqual(proxied.gateway.lines, [])
        self.assertEqual(proxied.gateway.queued(), [])

    @inlineCallbacks
    def test_headerTimeout(self) -> Any:
        """
        A connection that sends no header is closed when the header
        timeout passes, and no session was ever made for it.
        """
        clock = Clock()
        proxied = ProxiedListener(self, clock=clock)
        raw = Raw(proxied.port)
        self.addCleanup(raw.close)
        yield in_thread(raw.send, b"PROXY TCP4 ")
        yield in_thread(wait_until, lambda: bool(clock.getDelayedCalls()), 10)
        clock.advance(5.0)
        self.assertEqual((yield in_thread(raw.rest)), b"")
        self.assertEqual(proxied.gateway.factory.sessions, set())

    @inlineCallbacks
    def test_headerAfterShutdown(self) -> Any:
        """
        A connection accepted before the gateway began to stop, whose
        header comes only after every session was told 421, is told 421
        too: not given a banner, a session the stop would wait for, and a
        spool that is closing.
        """
        clock = Clock()
        proxied = ProxiedListener(self, clock=clock)
        raw = Raw(proxied.port)
        self.addCleanup(raw.close)
        yield in_thread(raw.send, b"PROXY TCP4 ")
        yield in_thread(wait_until, lambda: bool(clock.getDelayedCalls()), 10)
        yield proxied.gateway.factory.shutdown()
        yield in_thread(raw.send, b"198.51.100.7 127.0.0.1 40000 25\r\n" + MESSAGE[0])
        self.assertEqual(
            (yield in_thread(raw.rest)),
            b"421 4.3.2 Service shutting down, closing transmission channel\r\n",
        )
        self.assertEqual(proxied.gateway.factory.sessions, set())
        self.assertEqual(proxied.gateway.lines, [])

    @inlineCallbacks
    def test_starttlsThroughProxy(self) -> Any:
        """
        STARTTLS works through the proxy: the handshake completes, the
        session logs TLS success for the proxied client, and the message
        is accepted over TLS.
        """
        proxied = ProxiedListener(self)

        def session() -> bytes:
            raw = Raw(proxied.port)
            try:
                raw.send(v1("203.0.113.5"))
                assert raw.reply().startswith(b"220 ")
                assert b"STARTTLS" in raw.chat(b"EHLO client.example\r\n")
                assert raw.chat(b"STARTTLS\r\n").startswith(b"220 ")
                raw.starttls()
                assert b"STARTTLS" not in raw.chat(b"EHLO client.example\r\n")
                for command in MESSAGE[1:4]:
                    raw.chat(command)
                return raw.chat(MESSAGE[4])
            finally:
                raw.close()

        reply = yield in_thread(session)
        self.assertTrue(reply.startswith(b"250 2.0.0 Ok"), reply)
        mid = int(reply.split()[4])
        head = proxied.gateway.body(mid).split(b"\r\n\r\n")[0]
        self.assertIn(b"[203.0.113.5]", head)
        self.assertIn(b"with ESMTPS", head)
        self.assertTrue(any("TLS success" in line for line in proxied.gateway.lines))

    @inlineCallbacks
    def test_implicitTLSThroughProxy(self) -> Any:
        """
        On an SMTPS listener the PROXY header comes first, in the clear,
        then the TLS handshake, as HAProxy sends it.
        """
        proxied = ProxiedListener(self, extra='protocol = "SMTPS"')

        def session() -> bytes:
            sock = socket.create_connection(("127.0.0.1", proxied.port), timeout=10)
            sock.sendall(v2("203.0.113.6"))
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            tls = context.wrap_socket(sock)
            try:
                f = tls.makefile("rb")
                return f.readline()
            finally:
                tls.close()

        banner = yield in_thread(session)
        self.assertTrue(banner.startswith(b"220 "), banner)
        self.assertTrue(any("address 203.0.113.6 " in line for line in proxied.gateway.lines))


class ServiceWiringTests(TestCase):
    @inlineCallbacks
    def test_configKey(self) -> Any:
        """
        C{proxy_protocol = true} on a listener makes the gateway service
        expect the header there: the HAT judges the proxied address.
        """
        from twisted.names.client import Resolver

        from esa_tls.config.load import load_config_with_warnings
        from esa_tls.service import GatewayService

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        path = os.path.join(directory, "gateway.toml")
        with open(path, "w") as f:
            f.write(
                f'[system]\nhostname = "mx.test.example"\ndata_dir = "{directory}/var"\n'
                '[interfaces.Loopback]\naddress = "127.0.0.1/8"\n'
                + HAT.format(extra="proxy_protocol = true").replace("port = 2525", f"port = {port}")
            )
        service = GatewayService(
            load_config_with_warnings(path), resolver=Resolver(servers=[("127.0.0.1", 53)])
        )
        service.startService()
        self.addCleanup(service.stopService)
        [blocked] = yield in_thread(converse, port, v1("192.0.2.66"), [])
        [accepted] = yield in_thread(converse, port, v1("192.0.2.67"), [])
        self.assertTrue(blocked.startswith(b"554 "), blocked)
        self.assertTrue(accepted.startswith(b"220 "), accepted)
