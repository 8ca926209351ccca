# -*- test-case-name: tests.test_inbound_transport -*-
"""
Listeners whose TCP transports send a reply in the turn that wrote it.

Twisted's TCP transport never writes in the caller's turn: C{write}
buffers, asks epoll to report the socket writable (an C{epoll_ctl}), and
the next reactor iteration sends and stops asking (a second
C{epoll_ctl}).  For an SMTP server, whose every reply is small and goes
to a socket with room for it, that is two system calls and a whole
reactor iteration of latency per reply: 8 of the 12 C{epoll_ctl} calls of
a session (C{strace}), and under load each reply waits for every other
event of the iteration before it leaves.

L{WriteThroughServer} sends at once when nothing is queued ahead of the
data, and hands whatever the socket did not take to Twisted's own
buffering, so that ordering, flow control (the session is a producer;
a pull producer's writes take Twisted's path, the only one that asks it
for more), closing and errors work exactly as before.  After STARTTLS the session's
writes go through the TLS protocol, and the records it makes (handshake
flights, replies) are sent the same way: Twisted's C{startTLS} would send
them through C{FileDescriptor.write}, one reactor iteration late.

Under TLS (STARTTLS, or an implicit-TLS listener through
L{WriteThroughTLSFactory}) the session's writes skip Twisted's
C{BufferingTLSTransport}, which holds every write for a C{callLater(0)}
so that many small writes make one record: the session already writes
the replies of one read as one write, so that buffering only cost each
reply a timed call and a reactor iteration.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

_start_tls: Callable[[Any, Any, bool, type], None] | None
try:
    from twisted.internet._newtls import startTLS as _start_tls
except ImportError:  # pragma: no cover (a Twisted that moved it)
    _start_tls = None

__all__ = ["WriteThroughEndpoint", "WriteThroughServer", "WriteThroughTLSFactory"]


def _send_at_once(
    connection: tcp.Server, data: bytes, queue: Callable[[tcp.Server, bytes], None]
) -> None:
    """
    Send C{data} on C{connection}'s socket now if nothing is queued ahead
    of it, and C{queue} (a buffered Twisted write) whatever is left.

    FileDescriptor's buffers are Twisted's own attributes: should a release
    rename them, the missing one counts as data queued ahead, and every
    write takes Twisted's path (slower, never reordered).
    """
    if (
        not connection.connected
        or connection.disconnecting
        # A pull producer (FileSender) is asked for more only by Twisted's
        # own write path, once what it wrote has left.
        or (connection.producer is not None and not connection.streamingProducer)
        or getattr(connection, "dataBuffer", True)
        or getattr(connection, "_tempDataBuffer", True)
        or not isinstance(data, bytes)
    ):
        queue(connection, data)
        return
    try:
        sent = connection.socket.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        # Let Twisted's write path meet the error and end the connection
        # the way it always does.
        queue(connection, data)
        return
    if sent < len(data):
        queue(connection, data[sent:])


class _SendTLSRecordsAtOnce(FileDescriptor):
    """
    What the TLS protocol writes its records through after STARTTLS (the
    C{bypass} of L{twisted.internet._newtls.startTLS}, whose methods are
    called with the connection as C{self}): Twisted's own, except that a
    record is sent at once when it can be.
    """

    def write(self, data: bytes) -> None:
        _send_at_once(cast(tcp.Server, self), data, FileDescriptor.write)


class WriteThroughServer(tcp.Server):
    """
    A server-side TCP transport that sends in the writer's turn when it can.

    Nagle's algorithm is off: a reply written at once must not wait for the
    client to acknowledge the previous one (up to its 40 ms delayed ACK),
    which is what Twisted's one-write-per-iteration buffering used to hide.
    The session writes each batch of replies once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP after all (a test's socket pair)
            pass

    def write(self, data: bytes) -> None:
        if self.TLS:
            # Into the TLS protocol, which sends its records through
            # _SendTLSRecordsAtOnce; past its write buffering, when it is
            # the TLS protocol we know.
            if not self.connected:
                return
            if isinstance(self.protocol, TLSMemoryBIOProtocol):
                TLSMemoryBIOProtocol.write(self.protocol, data)
            else:  # pragma: no cover (a Twisted whose startTLS changed)
                super().write(data)
        else:
            _send_at_once(self, data, tcp.Server.write)

    def writeSequence(self, iovec: Any) -> None:
        if self.TLS:
            self.write(b"".join(iovec))
        else:
            super().writeSequence(iovec)

    def startTLS(self, ctx: Any, normal: bool = True) -> None:
        # _newtls is Twisted's private module: should it move, STARTTLS
        # keeps Twisted's own (later) sending.
        if _start_tls is None:
            super().startTLS(ctx, normal)
        else:
            _start_tls(self, ctx, normal, _SendTLSRecordsAtOnce)


class WriteThroughTLSFactory(TLSMemoryBIOFactory):
    """
    Implicit TLS whose records of a write are made and sent in the writer's
    turn: Twisted's L{TLSMemoryBIOProtocol} without the per-write
    C{callLater(0)} of its default C{BufferingTLSTransport}.
    """

    protocol = TLSMemoryBIOProtocol


@implementer(IStreamServerEndpoint)
class WriteThroughEndpoint:
    """
    Wraps a server endpoint so that the TCP port it listens on makes
    L{WriteThroughServer} transports; any other kind of port is left as it
    is.
    """

    def __init__(self, wrapped: IStreamServerEndpoint) -> None:
        self._wrapped = wrapped

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        def adopt(port: Any) -> Any:
            if isinstance(port, tcp.Port) and port.transport is tcp.Server:
                port.transport = WriteThroughServer
            return port

        d: Deferred[IListeningPort] = self._wrapped.listen(factory)
        return d.addCallback(adopt)
