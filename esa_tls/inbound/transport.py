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
buffering, so that ordering, flow control (the session is a producer),
closing and errors work exactly as before.  A connection that has started
TLS keeps Twisted's path: its writes go through the TLS protocol.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from zope.interface import implementer

__all__ = ["WriteThroughEndpoint", "WriteThroughServer"]


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
        # FileDescriptor's buffers are Twisted's own attributes: should a
        # release rename them, the missing one counts as data queued ahead,
        # and every write takes Twisted's path (slower, never reordered).
        if (
            self.TLS
            or not self.connected
            or self.disconnecting
            or getattr(self, "dataBuffer", True)
            or getattr(self, "_tempDataBuffer", True)
            or not isinstance(data, bytes)
        ):
            super().write(data)
            return
        try:
            sent = self.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # Let Twisted's write path meet the error and end the
            # connection the way it always does.
            super().write(data)
            return
        if sent < len(data):
            super().write(data[sent:])


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
