# -*- test-case-name: tests.test_outbound_reuse -*-
"""
Delivery sessions kept open between messages, so that several queued
messages for the same destination go over one SMTP session.

Opening a connection costs more than the message on it: the TCP
handshake, the greeting, EHLO, often a TLS handshake, and QUIT, each a
round trip and a share of the reactor's time (the relay profile of
C{bench/RESULTS.md}).  Postfix keeps its sessions for the next message for
the same reason (C{smtp_connection_cache_*}).

The rules, so that reuse never weakens a guarantee:

  - B{same key, same checks}: a session is only given to a delivery for
    the same recipient domain, host name, address, port and TLS plan
    (L{esa_tls.outbound.policy.TLSPlan}) it was opened for.  Its TLS
    outcome, which the plan accepted before the first MAIL FROM, is the
    one every later message rides on; a session in the clear after a
    failed handshake is only reused by another clear fallback.
  - B{bounded}: at most C{max_messages_per_connection} messages per
    session (Destination Controls), and a session idle for
    L{SessionPool.idle_timeout} seconds is closed (QUIT).
  - B{nothing lost}: a kept session that fails before MAIL FROM (closed
    by the server meanwhile, RSET refused) is reported as such, and the
    caller opens a new connection; any other failure ends the session as
    it would end a new one.
  - B{concurrency}: a session is either carrying one delivery, which the
    queue manager counts against C{max_host_concurrency}, or idle here;
    a new connection for a domain is opened only when no idle session of
    its key exists, and idle sessions of the same domain under other keys
    are closed first, so the domain never has more sessions than
    deliveries running.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, DeferredList, succeed

from esa_tls.maillog import MailLog
from esa_tls.outbound.client import DeliveryClient
from esa_tls.outbound.policy import TLSPlan

__all__ = ["SessionKey", "SessionPool"]


@frozen
class SessionKey:
    """
    What a kept session may be reused for.
    """

    domain: str
    host: str
    address: str
    port: int
    plan: TLSPlan


class SessionPool:
    """
    Idle delivery sessions, by L{SessionKey}.

    A session belongs either to the delivery using it, which logs its
    C{DCID n close} if it ends then, or to the pool (idle, or being closed
    by the pool), which logs it.

    @ivar idle_timeout: seconds an idle session is kept.
    @ivar reused: how many messages went over a kept session.
    """

    def __init__(
        self, reactor: Any, *, idle_timeout: float = 2.0, maillog: MailLog | None = None
    ) -> None:
        """
        @param reactor: provides C{callLater} for the idle timers.
        @param maillog: where the C{DCID n close} lines of the sessions
            that end here go.
        """
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        self.maillog = maillog
        self.reused = 0
        self._idle: dict[SessionKey, list[DeliveryClient]] = {}
        self._timers: dict[DeliveryClient, Any] = {}
        self._keys: dict[DeliveryClient, SessionKey] = {}
        self._owned: dict[DeliveryClient, int] = {}
        self._watched: set[DeliveryClient] = set()
        self._closing = False

    def take(self, key: SessionKey) -> tuple[DeliveryClient, int] | None:
        """
        An idle session for C{key} (the most recently used) with its DCID,
        or C{None}; it now belongs to the caller.
        """
        idle = self._idle.get(key)
        while idle:
            client = idle.pop()
            self._unidle(client)
            dcid = self._owned.pop(client)
            if client.parked:
                if not idle:
                    self._idle.pop(key, None)
                self.reused += 1
                return client, dcid
            self._owned[client] = dcid  # ending: its close is logged here
        self._idle.pop(key, None)
        return None

    def make_room(self, key: SessionKey) -> None:
        """
        A new connection is about to be opened for C{key}: first close the
        idle sessions of the same domain under other keys.
        """
        for other in [k for k in self._idle if k.domain == key.domain and k != key]:
            for client in self._idle.pop(other):
                self._unidle(client)
                client.close_idle()

    def park(self, key: SessionKey, client: DeliveryClient, dcid: int, limit: int) -> bool:
        """
        Take C{client}, which just finished a transaction: keep it for the
        next message of C{key}, or close it when it has carried C{limit}
        messages or the pool is closing.

        @return: whether the session is kept.
        """
        if not client.parked:
            return False
        self._owned[client] = dcid
        if client not in self._watched:
            self._watched.add(client)
            client.closed.addCallback(self._ended, client)
        if self._closing or client.transactions >= max(limit, 1):
            client.close_idle()
            return False
        self._idle.setdefault(key, []).append(client)
        self._keys[client] = key
        self._timers[client] = self.reactor.callLater(self.idle_timeout, self._expire, client)
        return True

    def _unidle(self, client: DeliveryClient) -> None:
        timer = self._timers.pop(client, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._keys.pop(client, None)

    def _ended(self, _: object, client: DeliveryClient) -> None:
        """
        A session this pool has seen ended.
        """
        self._watched.discard(client)
        key = self._keys.get(client)
        if key is not None:
            self._forget_idle(key, client)
            self._unidle(client)
        dcid = self._owned.pop(client, None)
        if dcid is not None and self.maillog is not None:
            self.maillog.dcid_close(dcid)

    def _expire(self, client: DeliveryClient) -> None:
        self._timers.pop(client, None)
        key = self._keys.pop(client, None)
        if key is not None:
            self._forget_idle(key, client)
        client.close_idle()

    def _forget_idle(self, key: SessionKey, client: DeliveryClient) -> None:
        """
        C{client} is no longer waiting under C{key} for a transaction.
        """
        idle = self._idle.get(key, [])
        if client in idle:
            idle.remove(client)
        if not idle:
            self._idle.pop(key, None)

    def close(self, grace: float = 2.0) -> Deferred[None]:
        """
        Close every idle session (QUIT), and keep no more.

        @param grace: seconds a server gets to answer QUIT before its
            connection is aborted, so that stopping the gateway never
            waits on a peer that stopped reading.
        @return: a L{Deferred} firing once every session this pool is
            responsible for has ended.
        """
        self._closing = True
        for key in list(self._idle):
            for client in self._idle.pop(key):
                self._unidle(client)
                client.close_idle()
        left = [client for client in self._owned if not client.closed.called]
        if not left:
            return succeed(None)

        def abort() -> None:
            for client in left:
                transport: Any = client.transport
                if not client.closed.called and transport is not None:
                    transport.abortConnection()

        timer = self.reactor.callLater(grace, abort)

        def done(_: object) -> None:
            if timer.active():
                timer.cancel()

        return DeferredList([client.closed for client in left]).addCallback(done)
