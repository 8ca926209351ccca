"""
The listeners' write-through transport: replies leave in the turn that
wrote them, over real loopback sockets, with Twisted's buffering, flow
control and closing behind it unchanged.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from esa_tls.inbound.transport import WriteThroughEndpoint, WriteThroughServer
from tests.support import in_thread

BIG = b"x" * (8 * 1024 * 1024)


class Talker(Protocol):
    """
    Says hello, answers each line, and on C{big} writes 8 MiB (more than
    a socket takes at once) followed by a last line and a close.
    """

    def connectionMade(self) -> None:
        self.factory.transports.append(self.transport)
        self.transport.write(b"hello\r\n")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        for line in data.split(b"\r\n"):
            if line == b"big":
                self.transport.write(BIG)  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]
                self.transport.write(b"bye\r\n")  # type: ignore[union-attr]
            elif line:
                self.transport.write(b"echo " + line + b"\r\n")  # type: ignore[union-attr]


class WriteThroughTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        factory = Factory.forProtocol(Talker)
        factory.transports = []  # type: ignore[attr-defined]
        self.factory = factory
        endpoint = WriteThroughEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        self.port = yield endpoint.listen(factory)
        self.addCleanup(self.port.stopListening)

    def client(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port.getHost().port), timeout=10)
        self.addCleanup(sock.close)
        return sock

    @inlineCallbacks
    def test_repliesInOrderNagleOff(self) -> Any:
        """
        Accepted connections get the write-through transport with Nagle's
        algorithm off, and every reply arrives, in order.
        """

        def talk() -> bytes:
            sock = self.client()
            sock.sendall(b"a\r\nb\r\nc\r\n")
            data = b""
            while data.count(b"\r\n") < 4:
                data += sock.recv(4096)
            return data

        data = yield in_thread(talk)
        self.assertEqual(data, b"hello\r\necho a\r\necho b\r\necho c\r\n")
        [transport] = self.factory.transports  # type: ignore[attr-defined]
        self.assertIsInstance(transport, WriteThroughServer)
        self.assertEqual(
            transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0, True
        )

    @inlineCallbacks
    def test_bigWriteAndLastWordsBeforeClose(self) -> Any:
        """
        What the socket does not take at once is buffered and sent after
        it; a write made after C{loseConnection} still arrives, last,
        before the end of the stream.
        """

        def talk() -> bytes:
            sock = self.client()
            sock.sendall(b"big\r\n")
            chunks: list[bytes] = []
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)

        data = yield in_thread(talk)
        self.assertEqual(data, b"hello\r\n" + BIG + b"bye\r\n")

    def test_otherPortsLeftAlone(self) -> Deferred[None]:
        """
        An endpoint whose port is not a plain TCP port is wrapped without
        change.
        """

        class Fake:
            transport = object()

        class FakeEndpoint:
            def listen(self, factory: object) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                d.callback(Fake())
                return d

        d = WriteThroughEndpoint(FakeEndpoint()).listen(Factory())  # type: ignore[arg-type]

        def check(port: Any) -> None:
            self.assertIsNot(port.transport, WriteThroughServer)

        return d.addCallback(check)
