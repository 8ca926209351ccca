"""
Who may send a PROXY header (C{proxy_trusted}): a client that reaches a
C{proxy_protocol} listener directly must not be able to name itself a
RELAYLIST address (an open relay).  Only connections from the trusted
proxies (by default this host's loopback addresses) are read; any other is
closed as soon as it is made, with a log line saying what to change.

The clients here connect from 127.0.0.2 or 127.0.0.5 (Linux routes all of
127/8 to the loopback interface) to a listener that trusts 127.0.0.1 only.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from esa_tls.config.model import DEFAULT_PROXY_TRUSTED
from esa_tls.inbound.proxy import ProxyProtocolFactory, TrustedProxies
from tests.support import Gateway, Raw, free_port, in_thread
from tests.test_proxy_protocol import v1

RELAY_HAT = """
[listeners.InboundMail]
type = "public"
interface = "Loopback"
port = 2525
rat = ["example.com"]
{extra}

[[listeners.InboundMail.hat]]
group = "RELAYLIST"
policy = "RELAYED"
senders = ["10.1.2.3", "2001:db8::5"]

[listeners.InboundMail.policies.RELAYED]
rule = "RELAY"
"""

#: What a client that bypassed the proxy sends: a header claiming a
#: RELAYLIST address, and a relay attempt pipelined behind it.
FORGED = (
    v1("10.1.2.3") + b"EHLO spoof\r\nMAIL FROM:<a@spoof.test>\r\nRCPT TO:<victim@outside.test>\r\n"
)

RELAY = [
    b"EHLO client.test\r\n",
    b"MAIL FROM:<a@client.test>\r\n",
    b"RCPT TO:<victim@outside.test>\r\n",
]


def networks(*texts: str) -> TrustedProxies:
    return TrustedProxies(tuple(ipaddress.ip_network(t) for t in texts))


def rejected(port: int, source: str, data: bytes, host: str = "127.0.0.1") -> bytes:
    """
    Connect from C{source}, send C{data} (if the connection is still
    there), and return everything the gateway sends before it closes.

    A connection the gateway closes at once may be reset before the client
    has even seen it made: that too is nothing received.
    """
    try:
        sock = socket.create_connection((host, port), timeout=10, source_address=(source, 0))
    except ConnectionResetError:
        return b""
    received = b""
    with sock:
        try:
            sock.sendall(data)
        except OSError:
            pass
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return received


def closed_at_once(port: int, source: str) -> float:
    """
    Connect from C{source}, send nothing, and return how long the gateway
    took to close the connection (nothing must come before it does).
    """
    started = time.monotonic()
    received = rejected(port, source, b"")
    assert received == b"", received
    return time.monotonic() - started


def converse(
    port: int, source: str, header: bytes, commands: list[bytes], host: str = "127.0.0.1"
) -> list[bytes]:
    """
    Connect from C{source}, send the header, and return the banner and the
    reply to each command.
    """
    raw = Raw(port, host=host, source=source)
    try:
        raw.send(header)
        return [raw.reply()] + [raw.chat(command) for command in commands]
    finally:
        raw.close()


def log_events(case: TestCase) -> list[dict[str, Any]]:
    """
    Every log event from now until the test ends.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events]


#: The log line of a connection refused for not coming from a proxy.
REFUSED = (
    "PROXY protocol: listener InboundMail: refusing 127.0.0.2: not a trusted proxy "
    "(add its address to proxy_trusted if it is one)"
)


class TrustedProxiesTests(SynchronousTestCase):
    """
    L{TrustedProxies.admits}: the real peer address against the list.
    """

    def test_default(self) -> None:
        """
        By default only this host's loopback addresses are proxies: HAProxy
        on the same host works without configuration, nothing else does.
        """
        trusted = TrustedProxies()
        self.assertEqual(trusted.networks, DEFAULT_PROXY_TRUSTED)
        for host in ("127.0.0.1", "127.1.2.3", "::ffff:127.0.0.1"):
            self.assertTrue(trusted.admits(IPv4Address("TCP", host, 1)), host)
        self.assertTrue(trusted.admits(IPv6Address("TCP", "::1", 1)))
        for host in ("192.0.2.1", "10.1.2.3", "128.0.0.1"):
            self.assertFalse(trusted.admits(IPv4Address("TCP", host, 1)), host)
        for host in ("::2", "2001:db8::1", "::ffff:192.0.2.1"):
            self.assertFalse(trusted.admits(IPv6Address("TCP", host, 1)), host)

    def test_networks(self) -> None:
        """
        Addresses and CIDR networks, IPv4 and IPv6; an IPv4 peer of a
        dual-stack socket (IPv4-mapped) matches IPv4 entries; a zone is
        ignored; a peer that has no IP address is never trusted.
        """
        trusted = networks("10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "fe80::1")
        for host in ("10.9.9.9", "192.0.2.7"):
            self.assertTrue(trusted.admits(IPv4Address("TCP", host, 1)), host)
        for host in ("2001:db8:ffff::1", "::ffff:10.1.1.1", "fe80::1%eth0"):
            self.assertTrue(trusted.admits(IPv6Address("TCP", host, 1)), host)
        for host in ("11.0.0.1", "192.0.2.8", "127.0.0.1"):
            self.assertFalse(trusted.admits(IPv4Address("TCP", host, 1)), host)
        for host in ("2001:db9::1", "::1", "fe80::2"):
            self.assertFalse(trusted.admits(IPv6Address("TCP", host, 1)), host)
        self.assertFalse(trusted.admits(UNIXAddress("/tmp/socket")))
        self.assertFalse(TrustedProxies(()).admits(IPv4Address("TCP", "10.0.0.1", 1)))


class ForgedHeaderTests(TestCase):
    """
    A real listener behind a L{ProxyProtocolFactory} that trusts 127.0.0.1
    only, over real loopback sockets.
    """

    def proxied(self, trusted: TrustedProxies, interface: str = "127.0.0.1") -> tuple[Gateway, int]:
        gateway = Gateway(self, RELAY_HAT.format(extra=""))
        factory = ProxyProtocolFactory(
            gateway.factory, reactor, timeout=5.0, trusted=trusted, listener="InboundMail"
        )
        port = reactor.listenTCP(0, factory, interface=interface)
        self.addCleanup(port.stopListening)
        return gateway, port.getHost().port

    @inlineCallbacks
    def test_forgedHeaderRefused(self) -> Any:
        """
        A client on 127.0.0.2 that claims a RELAYLIST address gets not a
        byte: no banner, no session, nothing relayed, and the log names the
        listener, the peer and the key to change.
        """
        events = log_events(self)
        gateway, port = self.proxied(networks("127.0.0.1"))
        self.assertEqual((yield in_thread(rejected, port, "127.0.0.2", FORGED)), b"")
        self.assertEqual(gateway.lines, [])
        self.assertEqual(gateway.factory.sessions, set())
        self.assertEqual(gateway.queued(), [])
        self.assertIn(REFUSED, texts(events))

    @inlineCallbacks
    def test_refusedBeforeReading(self) -> Any:
        """
        An untrusted connection is closed as soon as it is made, not when
        it has sent something, nor when the 5 second header timeout ends.
        """
        gateway, port = self.proxied(networks("127.0.0.1"))
        self.assertLess((yield in_thread(closed_at_once, port, "127.0.0.2")), 2.0)
        self.assertEqual(gateway.lines, [])

    @inlineCallbacks
    def test_trustedPeerHonoured(self) -> Any:
        """
        The same header from the trusted proxy is believed: the HAT sees
        the address it names, RELAYLIST, and the recipient is relayed.
        """
        gateway, port = self.proxied(networks("127.0.0.1"))
        replies = yield in_thread(converse, port, "127.0.0.1", v1("10.1.2.3"), RELAY)
        self.assertEqual(replies[0][:4], b"220 ", replies)
        self.assertEqual(replies[3][:4], b"250 ", replies)
        self.assertTrue(any("address 10.1.2.3 " in line for line in gateway.lines), gateway.lines)
        self.assertFalse(any("address 127.0.0.1" in line for line in gateway.lines))

    @inlineCallbacks
    def test_cidr(self) -> Any:
        """
        A network entry trusts every address in it and no other.
        """
        gateway, port = self.proxied(networks("127.0.0.0/30"))
        replies = yield in_thread(converse, port, "127.0.0.2", v1("10.1.2.3"), RELAY)
        self.assertEqual(replies[3][:4], b"250 ", replies)
        self.assertEqual((yield in_thread(rejected, port, "127.0.0.5", FORGED)), b"")
        sessions = [line for line in gateway.lines if " address " in line]
        self.assertEqual(len(sessions), 1, gateway.lines)
        self.assertIn("address 10.1.2.3 ", sessions[0])

    @inlineCallbacks
    def test_ipv6(self) -> Any:
        """
        An IPv6 proxy is trusted by an IPv6 entry (address or network),
        and not by IPv4 entries.
        """
        try:
            socket.socket(socket.AF_INET6).close()
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", 0))
        except OSError:
            raise SkipTest("no IPv6 loopback") from None
        for trusted in (networks("::1"), networks("::/127")):
            gateway, port = self.proxied(trusted, interface="::1")
            replies = yield in_thread(converse, port, "::1", v1("2001:db8::5"), RELAY, host="::1")
            self.assertEqual(replies[3][:4], b"250 ", replies)
            self.assertTrue(any("address 2001:db8::5 " in line for line in gateway.lines))
        gateway, port = self.proxied(networks("127.0.0.0/8"), interface="::1")
        self.assertEqual((yield in_thread(rejected, port, "::1", FORGED, host="::1")), b"")
        self.assertEqual(gateway.lines, [])


class ServiceTests(TestCase):
    """
    C{proxy_trusted} in a configuration file, through L{GatewayService}
    (which every worker of a multi-worker gateway builds too), and its
    reload.
    """

    def service(self, extra: str) -> Any:
        from twisted.names.client import Resolver

        from esa_tls.config.load import load_config_with_warnings
        from esa_tls.service import GatewayService

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.port = free_port()
        self.path = os.path.join(directory, "gateway.toml")
        self.head = (
            f'[system]\nhostname = "mx.test.example"\ndata_dir = "{directory}/var"\n'
            '[interfaces.Loopback]\naddress = "127.0.0.1/8"\n'
        )
        self.write(extra)
        service = GatewayService(
            load_config_with_warnings(self.path), resolver=Resolver(servers=[("127.0.0.1", 53)])
        )
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def write(self, extra: str) -> None:
        with open(self.path, "w") as f:
            f.write(
                self.head
                + RELAY_HAT.format(extra=extra).replace("port = 2525", f"port = {self.port}")
            )

    @inlineCallbacks
    def test_configuredTrust(self) -> Any:
        """
        With C{proxy_trusted = ["127.0.0.1"]} the forged header from
        127.0.0.2 gets nothing; the proxy's is honoured.
        """
        events = log_events(self)
        self.service('proxy_protocol = true\nproxy_trusted = ["127.0.0.1"]')
        self.assertEqual((yield in_thread(rejected, self.port, "127.0.0.2", FORGED)), b"")
        self.assertIn(REFUSED, texts(events))
        replies = yield in_thread(converse, self.port, "127.0.0.1", v1("10.1.2.3"), RELAY)
        self.assertEqual(replies[3][:4], b"250 ", replies)

    @inlineCallbacks
    def test_default(self) -> Any:
        """
        Without the key, the loopback network is trusted, and only it.
        """
        service = self.service("proxy_protocol = true")
        self.assertEqual(service.proxies["InboundMail"].trusted, TrustedProxies())
        replies = yield in_thread(converse, self.port, "127.0.0.2", v1("10.1.2.3"), RELAY)
        self.assertEqual(replies[3][:4], b"250 ", replies)

    @inlineCallbacks
    def test_reload(self) -> Any:
        """
        A reload applies a new C{proxy_trusted} to the next connections;
        turning C{proxy_protocol} off needs a restart, and says so (until
        the restart), leaving the trusted list as it was.
        """
        service = self.service('proxy_protocol = true\nproxy_trusted = ["127.0.0.1"]')
        self.write('proxy_protocol = true\nproxy_trusted = ["127.0.0.2"]')
        self.assertEqual(service.reload(), [])
        replies = yield in_thread(converse, self.port, "127.0.0.2", v1("10.1.2.3"), RELAY)
        self.assertEqual(replies[3][:4], b"250 ", replies)
        self.assertEqual((yield in_thread(rejected, self.port, "127.0.0.1", FORGED)), b"")
        self.write("proxy_protocol = false")
        restart = ["listener InboundMail: proxy_protocol changed; restart to apply"]
        self.assertEqual(service.reload(), restart)
        self.assertEqual(service.reload(), restart)
        self.assertEqual((yield in_thread(rejected, self.port, "127.0.0.1", FORGED)), b"")
