# -*- test-case-name: tests.test_proxy_protocol -*-
"""
The PROXY protocol (HAProxy, versions 1 and 2) in front of a listener with
C{proxy_protocol = true}: the Host Access Table must judge the client that
connected to the load balancer, not the load balancer.

Twisted has a wrapper (C{twisted.protocols.haproxy}), but it connects the
wrapped protocol I{before} the header has arrived, so a session that
classifies its peer in C{connectionMade} would see the proxy's address; and
it gives up on a first read shorter than 16 octets, which TCP is free to
deliver.  L{ProxyProtocolFactory} instead reads the header first, with a
bound on its size and on the time it may take, and only then builds and
connects the session, giving it a transport whose C{getPeer} and
C{getHost} are the addresses the header names.  Everything else (writes,
flow control, C{startTLS}, the TLS handshake notification) passes straight
through, so STARTTLS works as on a direct connection.

A connection whose first bytes are not a valid header is closed without a
byte of reply: on a listener that expects the PROXY protocol, anything else
is a client that bypassed the load balancer, or not a load balancer at all,
and its claimed addresses cannot be trusted.

Nor can a I{valid} header from just anyone: a client that reaches the port
directly can write C{PROXY TCP4 10.1.2.3 ...} as easily as HAProxy can, and
become whatever sender group it likes (RELAYLIST: an open relay).  So, as
the PROXY protocol specification asks of a receiver (and as Exim's
C{hosts_proxy} and nginx's C{set_real_ip_from} do), only connections from
the listener's L{TrustedProxies} (C{proxy_trusted}, by default this host's
loopback addresses) may carry one; any other is closed as soon as it is
made, before a byte of it is read.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from attrs import frozen
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from esa_tls.config.model import DEFAULT_PROXY_TRUSTED

__all__ = [
    "HEADER_TIMEOUT",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyProtocolFactory",
    "TrustedProxies",
    "parse_header",
]

log = Logger()

#: Seconds a connection may take to send its PROXY header.  A load balancer
#: sends it with its first packet.
HEADER_TIMEOUT = 10.0

#: The version 1 header is a line of at most 107 octets (with its CRLF).
_V1_MAX = 107
_V1_PREFIX = b"PROXY "
_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: A version 2 header's address block and TLVs may be up to 65535 octets;
#: HAProxy sends a few dozen.  More than this is not a load balancer we
#: want to wait for.
_V2_MAX_LENGTH = 2048


class ProxyHeaderError(ValueError):
    """
    The bytes are not a valid PROXY protocol header.
    """


class ProxyHeader:
    """
    A parsed header.

    @ivar version: 1 or 2.
    @ivar source: the client's address as the load balancer saw it, or
        C{None} when the header says there is none (version 1 C{UNKNOWN},
        version 2 C{LOCAL}, a health check from the load balancer itself):
        the connection's own addresses are then the right ones.
    @ivar destination: the address the client connected to, or C{None}.
    @ivar length: the header's length in octets.
    """

    def __init__(
        self,
        version: int,
        source: IPv4Address | IPv6Address | None,
        destination: IPv4Address | IPv6Address | None,
        length: int,
    ) -> None:
        self.version = version
        self.source = source
        self.destination = destination
        self.length = length

    def __repr__(self) -> str:
        return f"<ProxyHeader v{self.version} {self.source} -> {self.destination}>"


def _address(host: str, port: int) -> IPv4Address | IPv6Address:
    """
    An address for C{host}, normalized: an IPv4-mapped IPv6 address is the
    IPv4 address it maps (so that IPv4 HAT entries match it), IPv6 is
    written in its compressed form.
    """
    parsed = ipaddress.ip_address(host)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    if isinstance(parsed, ipaddress.IPv4Address):
        return IPv4Address("TCP", str(parsed), port)
    return IPv6Address("TCP", str(parsed), port)


def _port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text.startswith(b"0")):
        raise ProxyHeaderError(f"bad port {text[:8]!r}")
    value = int(text)
    if value > 65535:
        raise ProxyHeaderError(f"bad port {value}")
    return value


def _parse_v1(line: bytes) -> tuple[IPv4Address | IPv6Address | None, ...]:
    """
    C{PROXY TCP4|TCP6 SRC DST SPORT DPORT} or C{PROXY UNKNOWN ...}.
    """
    fields = line.split(b" ")
    if fields[0] != b"PROXY" or len(fields) < 2:
        raise ProxyHeaderError("not a PROXY line")
    if fields[1] == b"UNKNOWN":
        return (None, None)
    if fields[1] not in (b"TCP4", b"TCP6") or len(fields) != 6:
        raise ProxyHeaderError(f"bad PROXY line {line[:40]!r}")
    if b"%" in fields[2] or b"%" in fields[3]:
        # Python's ipaddress takes an IPv6 zone ("fe80::1%eth0"), and any
        # byte but a space in it: a bare LF would reach the Received:
        # header, and "fe80::1%a", "%b", ... would be so many addresses
        # to the per-IP limits.  The specification's addresses have none.
        raise ProxyHeaderError(f"scoped address in {line[:60]!r}")
    try:
        source = ipaddress.ip_address(fields[2].decode("ascii"))
        destination = ipaddress.ip_address(fields[3].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError(f"bad address in {line[:60]!r}") from None
    want = 4 if fields[1] == b"TCP4" else 6
    if source.version != want or destination.version != want:
        raise ProxyHeaderError(f"address family does not match {fields[1]!r}")
    return (
        _address(str(source), _port(fields[4])),
        _address(str(destination), _port(fields[5])),
    )


def _parse_v2(header: bytes) -> tuple[IPv4Address | IPv6Address | None, ...]:
    version_command = header[12]
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"unsupported version {version_command >> 4}")
    command = version_command & 0x0F
    if command == 0:  # LOCAL: the load balancer's own connection
        return (None, None)
    if command != 1:
        raise ProxyHeaderError(f"unknown command {command}")
    family_protocol = header[13]
    body = header[16:]
    if family_protocol == 0x11:  # TCP over IPv4
        if len(body) < 12:
            raise ProxyHeaderError("short IPv4 address block")
        source, destination, sport, dport = struct.unpack("!4s4sHH", body[:12])
        return (
            _address(str(ipaddress.IPv4Address(source)), sport),
            _address(str(ipaddress.IPv4Address(destination)), dport),
        )
    if family_protocol == 0x21:  # TCP over IPv6
        if len(body) < 36:
            raise ProxyHeaderError("short IPv6 address block")
        source, destination, sport, dport = struct.unpack("!16s16sHH", body[:36])
        return (
            _address(str(ipaddress.IPv6Address(source)), sport),
            _address(str(ipaddress.IPv6Address(destination)), dport),
        )
    if family_protocol in (0x00, 0x31):
        # UNSPEC, or a client on a UNIX socket of the load balancer: a
        # local connection, with no address of its own to judge.
        return (None, None)
    raise ProxyHeaderError(f"unsupported address family/protocol 0x{family_protocol:02x}")


def parse_header(data: bytes) -> ProxyHeader | None:
    """
    Parse a PROXY header from the start of C{data}.

    @return: the header, or C{None} when C{data} is a valid beginning of a
        header but not yet a whole one.
    @raise ProxyHeaderError: C{data} cannot begin a valid header, or the
        header is invalid or too long.
    """
    if data[:12] == _V2_SIGNATURE[: len(data)] and len(data) < 12:
        return None
    if data.startswith(_V2_SIGNATURE):
        if len(data) < 16:
            return None
        (length,) = struct.unpack("!H", data[14:16])
        if length > _V2_MAX_LENGTH:
            raise ProxyHeaderError(f"version 2 header of {length} octets is too long")
        if len(data) < 16 + length:
            return None
        source, destination = _parse_v2(data[: 16 + length])
        return ProxyHeader(2, source, destination, 16 + length)
    if not data.startswith(_V1_PREFIX[: len(data)]) and not data.startswith(_V1_PREFIX):
        raise ProxyHeaderError("not a PROXY protocol header")
    end = data.find(b"\r\n", 0, _V1_MAX)
    if end < 0:
        if len(data) >= _V1_MAX:
            raise ProxyHeaderError("version 1 header too long")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyHeaderError("bare CR or LF in version 1 header")
        return None
    source, destination = _parse_v1(data[:end])
    return ProxyHeader(1, source, destination, end + 2)


@frozen
class TrustedProxies:
    """
    The peers whose connections may carry a PROXY header (a listener's
    C{proxy_trusted}).

    One immutable value, so that a reload replaces the whole list at once:
    a connection is judged by the old list or the new one, never a mix.

    @ivar networks: the trusted addresses and networks.
    """

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = DEFAULT_PROXY_TRUSTED

    def admits(self, peer: IAddress) -> bool:
        """
        Whether C{peer}, the real address a connection came from, is a
        trusted proxy.

        An IPv4-mapped IPv6 peer (an IPv4 client of a dual-stack socket) is
        judged as the IPv4 address it is, and an IPv6 zone is ignored, so
        that C{127.0.0.1} and C{fe80::1} entries mean what they say.  A
        peer without an IP address (a UNIX socket) is not trusted: nothing
        in the configuration can name it.
        """
        host = getattr(peer, "host", None)
        if not isinstance(host, str):
            return False
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


class _ProxiedTransport:
    """
    The transport a proxied session sees: the real connection, except that
    its peer and host are the addresses the PROXY header named.

    Attribute look-ups go to the real transport each time, so that what
    C{startTLS} adds to it (C{getHandle} of the TLS connection) is seen.
    """

    def __init__(self, transport: Any, peer: IAddress, host: IAddress) -> None:
        self._transport = transport
        self._peer = peer
        self._host = host
        directlyProvides(self, *providedBy(transport))

    def getPeer(self) -> IAddress:
        return self._peer

    def getHost(self) -> IAddress:
        return self._host

    def startTLS(self, *args: Any, **kwargs: Any) -> Any:
        result = self._transport.startTLS(*args, **kwargs)
        # The real transport now provides ISSLTransport: so do we.
        directlyProvides(self, *providedBy(self._transport))
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def __repr__(self) -> str:
        return f"<proxied {self._peer} via {self._transport!r}>"


@implementer(IHandshakeListener)
class _HeaderReader(Protocol):
    """
    Reads the PROXY header, then hands the connection to the listener's
    protocol and gets out of the way (but for passing data and events on).
    """

    factory: ProxyProtocolFactory

    def __init__(self) -> None:
        self._buffer = b""
        self._timer: IDelayedCall | None = None
        self.wrapped: IProtocol | None = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        peer = transport.getPeer()
        if not self.factory.trusted.admits(peer):
            # Not one of the proxies: whatever header it sends is a claim
            # anyone could make.  Nothing is read and nothing is answered.
            log.warn(
                "PROXY protocol: listener {listener}: refusing {peer}: not a trusted proxy "
                "(add its address to proxy_trusted if it is one)",
                listener=self.factory.listener,
                peer=getattr(peer, "host", peer),
            )
            self._refuse()
            return
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._timedOut)

    def _timedOut(self) -> None:
        self._timer = None
        log.info(
            "PROXY protocol: no header from {peer} within {timeout} seconds",
            peer=self.transport.getPeer() if self.transport else None,
            timeout=self.factory.timeout,
        )
        self._refuse()

    def _refuse(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.wrapped is not None:
            self.wrapped.dataReceived(data)
            return
        self._buffer += data
        try:
            header = parse_header(self._buffer)
        except ProxyHeaderError as e:
            log.info(
                "PROXY protocol: refusing {peer}: {problem}",
                peer=self.transport.getPeer() if self.transport else None,
                problem=str(e),
            )
            self._cancel_timer()
            self._buffer = b""
            self._refuse()
            return
        if header is None:
            return
        self._cancel_timer()
        rest, self._buffer = self._buffer[header.length :], b""
        self._connect(header, rest)

    def _connect(self, header: ProxyHeader, rest: bytes) -> None:
        transport: Any = self.transport
        peer = header.source if header.source is not None else transport.getPeer()
        host = header.destination if header.destination is not None else transport.getHost()
        protocol = self.factory.wrapped.buildProtocol(peer)
        if protocol is None:
            self._refuse()
            return
        self.wrapped = protocol
        protocol.makeConnection(_ProxiedTransport(transport, peer, host))  # type: ignore[arg-type]
        if rest and self.wrapped is not None:
            self.wrapped.dataReceived(rest)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def handshakeCompleted(self) -> None:
        """
        STARTTLS went through the real transport, whose TLS layer wraps this
        reader: tell the session.
        """
        if self.wrapped is not None and IHandshakeListener.providedBy(self.wrapped):
            self.wrapped.handshakeCompleted()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._cancel_timer()
        if self.wrapped is not None:
            self.wrapped.connectionLost(reason)  # type: ignore[arg-type]


class ProxyProtocolFactory(ServerFactory):
    """
    Wraps a listener's factory so that every connection must begin with a
    PROXY header, and the session is built for the address it names.

    @ivar wrapped: the listener's own factory.
    @ivar clock: runs the header timeout.
    @ivar timeout: seconds allowed for the header.
    @ivar trusted: the peers that may send the header; a connection from
        any other is closed at once.  Replaced whole by a reload, for the
        connections made from then on.
    @ivar listener: the listener's name, for the log.
    """

    def __init__(
        self,
        wrapped: IProtocolFactory,
        clock: IReactorTime,
        timeout: float = HEADER_TIMEOUT,
        trusted: TrustedProxies | None = None,
        listener: str = "",
    ) -> None:
        self.wrapped = wrapped
        self.clock = clock
        self.timeout = timeout
        self.trusted = trusted if trusted is not None else TrustedProxies()
        self.listener = listener or self.logPrefix()

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        reader = _HeaderReader()
        reader.factory = self
        return reader

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def logPrefix(self) -> str:
        wrapped = getattr(self.wrapped, "logPrefix", None)
        return f"PROXY {wrapped() if wrapped else self.wrapped.__class__.__name__}"
