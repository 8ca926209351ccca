"""
The listeners' write-through transport: replies leave in the turn that
wrote them, over real loopback sockets, with Twisted's buffering, flow
control and closing behind it unchanged.
"""

from __future__ import annotations

import socket
import ssl
import threading
from io import BytesIO
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.protocols.basic import FileSender
from twisted.trial.unittest import TestCase

from esa_tls.inbound.transport import (
    WriteThroughEndpoint,
    WriteThroughServer,
    WriteThroughTLSFactory,
)
from esa_tls.testing import self_signed
from tests.support import in_thread

ISSUED = self_signed(["transport.test"])

BIG = b"x" * (8 * 1024 * 1024)


class Talker(Protocol):
    """
    Says hello, answers each line, and on C{big} writes 8 MiB (more than
    a socket takes at once) followed by a last line and a close (on
    C{big-tls}, the last line and then the close); on C{starttls} answers
    C{go} and starts TLS; on C{hold} answers C{held} and then keeps the
    reactor in that turn until the client says it has the answer (or 5
    seconds pass), recording in C{in_turn} which.  Records, for each answer,
    whether the transport still waited to send something once it was
    written (Twisted's own write buffers the bytes for the next reactor
    iteration).
    """

    def connectionMade(self) -> None:
        self.factory.transports.append(self.transport)
        self.factory.left_waiting = []
        self.transport.write(b"hello\r\n")  # type: ignore[union-attr]

    def _say(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]
        # Once this read is handled (the TLS protocol sends its records
        # when the application's dataReceived returns), before the reactor
        # polls again: is the connection still waiting to send?
        transport = self.factory.transports[-1]

        def record() -> None:
            writers = IReactorFDSet(reactor).getWriters()
            self.factory.left_waiting.append(transport in writers)

        reactor.callLater(0, record)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        for line in data.split(b"\r\n"):
            if line == b"big":
                self.transport.write(BIG)  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]
                self.transport.write(b"bye\r\n")  # type: ignore[union-attr]
            elif line == b"file":
                # A pull producer: resumed by the transport each time what
                # it wrote has left.
                sending = FileSender().beginFileTransfer(BytesIO(BIG), self.transport)
                sending.addCallback(lambda _: self.transport.write(b"done\r\n"))  # type: ignore[union-attr]
                sending.addCallback(lambda _: self.transport.loseConnection())  # type: ignore[union-attr]
            elif line == b"big-tls":
                # Twisted's TLS drops what is written after loseConnection
                # (the session writes its last reply first under TLS).
                self.transport.write(BIG)  # type: ignore[union-attr]
                self.transport.write(b"bye\r\n")  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]
            elif line == b"hold":
                self.transport.write(b"held\r\n")  # type: ignore[union-attr]
                self.factory.in_turn.append(self.factory.client_has_it.wait(5))
            elif line == b"starttls":
                self._say(b"go\r\n")
                certificate = PrivateCertificate.loadPEM(ISSUED.cert_pem + ISSUED.key_pem)
                self.transport.startTLS(certificate.options())  # type: ignore[union-attr]
            elif line:
                self._say(b"echo " + line + b"\r\n")


def wrap(sock: socket.socket) -> ssl.SSLSocket:
    """
    A TLS client on C{sock} that trusts the test's self-signed certificate.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context.wrap_socket(sock, server_hostname="transport.test")


class WriteThroughTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        factory = Factory.forProtocol(Talker)
        factory.transports = []  # type: ignore[attr-defined]
        factory.in_turn = []  # type: ignore[attr-defined]
        factory.client_has_it = threading.Event()  # type: ignore[attr-defined]
        self.factory = factory
        endpoint = WriteThroughEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        self.port = yield endpoint.listen(factory)
        self.addCleanup(self.port.stopListening)

    def client(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port.getHost().port), timeout=10)
        self.addCleanup(sock.close)
        return sock

    def starttls(self) -> ssl.SSLSocket:
        """
        In a thread: connect, read the hello, start TLS with C{starttls},
        and return the TLS socket.
        """
        sock = self.client()
        reader = sock.makefile("rb")
        assert reader.readline() == b"hello\r\n"
        sock.sendall(b"starttls\r\n")
        assert reader.readline() == b"go\r\n"
        return wrap(sock)

    def until_closed(self, command: bytes) -> bytes:
        """
        In a thread: connect, send C{command}, and return everything the
        server sends until it closes the connection.
        """
        sock = self.client()
        sock.sendall(command)
        chunks: list[bytes] = []
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

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

        data = yield in_thread(self.until_closed, b"big\r\n")
        self.assertEqual(data, b"hello\r\n" + BIG + b"bye\r\n")

    @inlineCallbacks
    def test_tlsRecordsSentAtOnce(self) -> Any:
        """
        After STARTTLS the TLS records of a reply are sent in the turn that
        wrote it, as clear replies are (nothing is left waiting for the
        socket to be writable), and a big write under TLS followed by a
        last line and C{loseConnection} arrives whole, in order, before
        the TLS close.
        """

        def talk() -> tuple[bytes, bytes]:
            tls = self.starttls()
            tls.sendall(b"a\r\nb\r\n")
            data = b""
            while data.count(b"\r\n") < 2:
                data += tls.recv(4096)
            tls.sendall(b"big-tls\r\n")
            chunks: list[bytes] = []
            while True:
                try:
                    chunk = tls.recv(1 << 16)
                except ssl.SSLZeroReturnError:
                    chunk = b""
                if not chunk:
                    return data, b"".join(chunks)
                chunks.append(chunk)

        echoed, rest = yield in_thread(talk)
        self.assertEqual(echoed, b"echo a\r\necho b\r\n")
        self.assertEqual(rest, BIG + b"bye\r\n")
        self.assertEqual(self.factory.left_waiting, [False, False, False])  # type: ignore[attr-defined]

    def hold(self, tls: ssl.SSLSocket | socket.socket) -> None:
        """
        In a thread: send C{hold}, and once its answer has arrived let the
        server's reactor go on.
        """
        tls.sendall(b"hold\r\n")
        data = b""
        while not data.endswith(b"held\r\n"):
            chunk = tls.recv(4096)
            if not chunk:
                break
            data += chunk
        self.factory.client_has_it.set()  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_tlsReplyLeavesInItsTurn(self) -> Any:
        """
        After STARTTLS a reply is encrypted and sent before the turn that
        wrote it ends: the client has it while the server's reactor is
        still held in that turn (Twisted's TLS transport would keep it for
        the next reactor iteration).
        """

        def talk() -> None:
            tls = self.starttls()
            self.hold(tls)

        yield in_thread(talk)
        self.assertEqual(self.factory.in_turn, [True])  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_implicitTLSReplyLeavesInItsTurn(self) -> Any:
        """
        On an implicit-TLS listener (L{WriteThroughTLSFactory}) too, a reply
        is sent before the turn that wrote it ends, and the hello written
        before the handshake finished arrives first.
        """
        certificate = PrivateCertificate.loadPEM(ISSUED.cert_pem + ISSUED.key_pem)
        factory = WriteThroughTLSFactory(certificate.options(), False, self.factory)
        endpoint = WriteThroughEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        port = yield endpoint.listen(factory)
        self.addCleanup(port.stopListening)

        def talk() -> bytes:
            sock = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10)
            self.addCleanup(sock.close)
            tls = wrap(sock)
            hello = tls.recv(4096)
            self.hold(tls)
            return hello

        hello = yield in_thread(talk)
        self.assertEqual(hello, b"hello\r\n")
        self.assertEqual(self.factory.in_turn, [True])  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_pullProducer(self) -> Any:
        """
        A file sent with C{FileSender} (a pull producer, which only the
        transport's own write path asks for more) arrives whole, followed
        by what is written after it.
        """

        data = yield in_thread(self.until_closed, b"file\r\n")
        self.assertEqual(data, b"hello\r\n" + BIG + b"done\r\n")

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
