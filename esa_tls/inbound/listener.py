# -*- test-case-name: tests.test_inbound_session -*-
"""
L{ListenerFactory}: the Twisted server factory behind one ESA listener.

It owns what outlives a session on that listener (the open sessions, the
per-IP connection counts) and hands each session the shared parts of the
gateway (HAT, store, certificates, mail log), so that a session needs no
globals and a test can build one with fakes of its own choosing.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from OpenSSL import SSL
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from esa_tls.config.model import Listener, ListenerSettings, MailFlowPolicy, TLSMode
from esa_tls.inbound.address import Mailbox
from esa_tls.inbound.limits import ConnectionCounter, RecipientRateLimiter
from esa_tls.inbound.session import InboundSession
from esa_tls.inbound.tlspolicy import InboundTLSPolicy
from esa_tls.interfaces import (
    ICertificateStore,
    IHostAccessTable,
    IListener,
    IMessageStore,
    ITLSPolicy,
)
from esa_tls.maillog import MailLog
from esa_tls.report.counters import TLSCounters
from esa_tls.summary import listener_summary
from esa_tls.tls.server import TLSConfigurationError
from esa_tls.values import HATVerdict

log = Logger()


class IdSource(TypingProtocol):
    def next(self) -> int: ...


class _Counter:
    """
    Connection IDs for a listener that has no shared, durable allocator.
    """

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        self._last += 1
        return self._last


#: How long a turned-away connection may take to read its 421 and go.
BUSY_LINGER = 10.0


class Busy(Protocol):
    """
    Says 421 and hangs up: the listener is at its Max Concurrency.

    The hang-up is a polite close, which waits for the 421 to be sent; on
    an SMTPS listener the 421 waits in the TLS layer for a handshake the
    client may never make, so without a deadline every such connection
    would stay open for ever, uncounted (the listener is full, after all):
    after L{BUSY_LINGER} seconds it is aborted.
    """

    factory: ListenerFactory
    _linger: IDelayedCall | None = None
    reply = b"421 4.3.2 Too many connections to this listener, try again later\r\n"

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(self.reply)
        transport.loseConnection()
        self._linger = self.factory.clock.callLater(BUSY_LINGER, transport.abortConnection)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None


class _Closed(Busy):
    """
    Says 421 and hangs up (as L{Busy} does): the listener was removed by a
    reload, and a connection accepted before still asks for a session (its
    PROXY header came after the reload).
    """

    reply = b"421 4.3.2 Service not available on this listener\r\n"


class _Stopping(Busy):
    """
    Says 421 and hangs up (as L{Busy} does): the gateway is stopping, and a
    connection accepted before its port closed asks for a session only now
    (its PROXY header came after the stop began).  A session started now
    would get its banner after every other was told 421, keep the stop
    waiting for it, and take a message for a spool that is closing.
    """

    reply = b"421 4.3.2 Service shutting down, closing transmission channel\r\n"


@implementer(IOpenSSLServerConnectionCreator)
class _ImplicitTLS:
    """
    What an implicit TLS (SMTPS) listener serves: asked of its factory at
    each connection, so that a reload's certificate, SNI, TLS protocols and
    ciphers and client certificate settings apply to the next handshake, as
    they do at the next STARTTLS.
    """

    def __init__(self, factory: ListenerFactory) -> None:
        self._factory = factory

    def serverConnectionForTLS(self, tlsProtocol: object) -> Any:
        factory = self._factory
        try:
            creator = factory.tls_creator(factory.config.default_policy)
        except TLSConfigurationError:
            # The certificate is not in service (expired at start-up): no
            # TLS until it is renewed.  A context without one fails the
            # handshake, which the session logs as a TLS failure.
            return SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        return creator.serverConnectionForTLS(tlsProtocol)


def _host_name(config: Listener, hostname: str) -> str:
    return config.hostname or hostname or socket.getfqdn()


@implementer(IListener)
class ListenerFactory(ServerFactory):
    """
    Builds L{InboundSession}s for one listener.

    @ivar sessions: the sessions open now, so that shutdown can say 421 to
        each of them.
    @ivar closed: the listener was removed by a reload: no new session.
    @ivar stopping: L{shutdown} was called: no new session either.
    """

    def __init__(
        self,
        config: Listener,
        *,
        hat: IHostAccessTable,
        store: IMessageStore,
        clock: IReactorTime,
        hostname: str = "",
        settings: ListenerSettings | None = None,
        maillog: MailLog | None = None,
        icids: IdSource | None = None,
        rates: RecipientRateLimiter | None = None,
        certificates: ICertificateStore | None = None,
        auth_checker: ICredentialsChecker | None = None,
        counters: TLSCounters | None = None,
        tls_policy: Callable[[MailFlowPolicy, bool], ITLSPolicy] | None = None,
    ) -> None:
        """
        @param hat: classifies each connecting host.
        @param store: where accepted messages go.
        @param clock: runs the session timers.
        @param hostname: the name in banners and C{Received:} headers
            (the listener's own C{hostname} wins; default: the machine's).
        @param settings: the global listener settings (default: the ESA's).
        @param maillog: where the ESA mail log lines go.
        @param icids: hands out connection IDs; a gateway shares one
            between listeners (and worker processes) so that they are unique.
        @param rates: the recipients-per-hour counter; shared by all
            listeners of a gateway, as on the ESA.
        @param certificates: what STARTTLS serves; without it TLS is off.
        @param auth_checker: checks SMTP AUTH user names and passwords;
            without it AUTH is not offered, whatever the policies say.
        @param counters: the TLS Connections report; each session is
            counted when it ends.
        @param tls_policy: makes each session's L{ITLSPolicy} from the
            mail flow policy the HAT placed it under and whether the
            listener can do TLS now (it has certificates in service);
            default: L{InboundTLSPolicy.from_policy}, the ESA's rules.
        """
        self.config = config
        self.name = config.name
        self.hostname = _host_name(config, hostname)
        self.settings = settings if settings is not None else ListenerSettings()
        self.hat = hat
        self.store = store
        self.maillog = maillog if maillog is not None else MailLog()
        self.clock = clock
        self.icids: IdSource = icids if icids is not None else _Counter()
        self.rates = rates if rates is not None else RecipientRateLimiter(clock)
        self.certificates = certificates
        self.auth_checker = auth_checker
        self.counters = counters
        self.tls_policy: Callable[[MailFlowPolicy, bool], ITLSPolicy] = (
            tls_policy if tls_policy is not None else InboundTLSPolicy.from_policy
        )
        self.connections = ConnectionCounter()
        self.sessions: set[InboundSession] = set()
        self._closing: list[Deferred[None]] = []
        self._creators: dict[tuple[str | None, bool] | None, tuple[Listener, Any]] = {}
        self.closed = False
        self.stopping = False

    def reconfigure(
        self,
        config: Listener,
        *,
        hat: IHostAccessTable,
        hostname: str,
        settings: ListenerSettings,
        auth_checker: ICredentialsChecker | None,
    ) -> None:
        """
        Give new sessions C{config} and the rest from now on (a reload);
        sessions in progress keep the policy the HAT gave them.  The
        parameters are those of the same names of L{__init__}.
        """
        self.config = config
        self.hostname = _host_name(config, hostname)
        self.settings = settings
        self.hat = hat
        self.auth_checker = auth_checker

    def close(self) -> None:
        """
        The listener was removed: every later connection gets a 421 and is
        closed; sessions in progress may finish.
        """
        self.closed = True

    @property
    def active_connections(self) -> int:
        return len(self.sessions)

    @property
    def tls_available(self) -> bool:
        """
        Whether STARTTLS can be offered now: the listener has certificates,
        and its own is in service (one expired at start-up is not, until it
        is renewed: the listener then offers no TLS rather than a handshake
        it cannot make).
        """
        if self.certificates is None:
            return False
        try:
            self.tls_creator(self.config.default_policy)
        except TLSConfigurationError:
            return False
        return True

    def summary(self) -> str:
        return listener_summary(self.config)

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        if self.stopping:
            stopping = _Stopping()
            stopping.factory = self
            return stopping
        if self.closed:
            closed = _Closed()
            closed.factory = self
            return closed
        if len(self.sessions) >= self.config.max_concurrency:
            busy = Busy()
            busy.factory = self
            return busy
        session = InboundSession(self, self.icids.next())
        self.sessions.add(session)
        return session

    def admit(self, session: InboundSession, ip: str, limit: int) -> bool:
        """
        Count C{session}'s connection from C{ip} against its policy's
        concurrent connections per IP, C{limit}, once the HAT has placed
        it (see L{ConnectionCounter.acquire}).

        @return: whether it was counted; a counted session hands its
            address back to L{session_closed}.
        """
        return self.connections.acquire(ip, limit)

    def session_closed(self, session: InboundSession, counted_ip: str | None = None) -> None:
        """
        C{session} has ended: forget it and count it in the TLS report.

        @param counted_ip: the address L{admit} counted for it, if any, to
            release.
        """
        if counted_ip is not None:
            self.connections.release(counted_ip)
        self.sessions.discard(session)
        verdict = session.verdict
        if self.counters is not None and session.counted:
            # Incoming rows are filed under the sender's verified host
            # domain (the ESA's "sender domain"), else its address.
            domain = None
            if verdict is not None and verdict.verified and verdict.reverse_dns:
                labels = verdict.reverse_dns.rstrip(".").lower().split(".")
                domain = ".".join(labels[1:] if len(labels) > 2 else labels)
            tls = False if session.tls_failed else (True if session.tls_info is not None else None)
            self.counters.incoming(
                domain, session.peer_ip, session.policy.tls, tls, session.messages_accepted
            )
        if not self.sessions:
            waiting, self._closing = self._closing, []
            for d in waiting:
                d.callback(None)

    def classify_now(self, ip: str) -> HATVerdict | None:
        """
        A verdict without waiting, when the HAT can give one from the
        address alone (so TCPREFUSE closes before any byte is read): from
        its optional C{lookup_sync} (see L{IHostAccessTable}).  One that
        raises is logged and asked again through L{classify}.
        """
        lookup_sync = getattr(self.hat, "lookup_sync", None)
        if lookup_sync is None:
            return None
        try:
            verdict: HATVerdict | None = lookup_sync(ip)
        except Exception:
            log.failure("Listener {listener}: HAT lookup_sync failed", listener=self.name)
            return None
        return verdict

    def classify(self, ip: str) -> Deferred[HATVerdict]:
        """
        The HAT's verdict on C{ip}.  The HAT may be someone else's code:
        one that raises (rather than returning a failed L{Deferred}) fails
        this L{Deferred}, which the session answers with a 421, instead of
        an exception that would leave the connection without a banner.
        """
        lookup: Any = self.hat.lookup
        d: Deferred[HATVerdict] = maybeDeferred(lookup, ip)
        return d

    def tls_creator(self, policy: MailFlowPolicy) -> Any:
        """
        What STARTTLS (or implicit TLS) under C{policy} serves.  The store
        gives the same creator for the same listener configuration; it is
        remembered here per configuration object, since the store's check
        compares whole listener values, at every STARTTLS otherwise.
        """
        assert self.certificates is not None
        if not policy.verify_client_certificate:
            key: tuple[str | None, bool] | None = None
        else:
            key = (policy.client_ca, policy.tls is TLSMode.REQUIRED)
        remembered = self._creators.get(key)
        if remembered is not None and remembered[0] is self.config:
            return remembered[1]
        if key is None:
            creator = self.certificates.server_creator(self.config)
        else:
            creator = self.certificates.server_creator(
                self.config,
                key[0],
                require_client_certificate=key[1],
                verify_client_certificate=True,
            )
        if len(self._creators) >= 64:
            self._creators.clear()
        self._creators[key] = (self.config, creator)
        return creator

    def implicit_tls_creator(self) -> Any:
        """
        The connection creator for C{TLSMemoryBIOFactory} on an implicit
        TLS listener: it serves what L{tls_creator} gives for the default
        policy of the configuration in force at each connection.

        A listener whose certificate is not in service (expired at
        start-up: no configuration fault) still starts, as a STARTTLS one
        does, and fails every handshake until the certificate is renewed.
        """
        try:
            self.tls_creator(self.config.default_policy)
        except TLSConfigurationError as e:
            log.error(
                "Listener {listener}: no TLS, so no connection, until its certificate "
                "is in service: {reason}",
                listener=self.config.name,
                reason=str(e),
            )
        return _ImplicitTLS(self)

    def rat_accepts(self, mailbox: Mailbox) -> bool:
        """
        Whether the Recipient Access Table takes mail for C{mailbox}.
        """
        return rat_accepts(self.config.rat, mailbox)

    def shutdown(self) -> Deferred[None]:
        """
        Say 421 to every open session and fire once all have closed; a
        session asked for from now on (a connection whose PROXY header
        comes only now) is told 421 at once.
        """
        self.stopping = True
        if not self.sessions:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closing.append(d)
        for session in list(self.sessions):
            session.shutdown()
        return d


def rat_accepts(rat: tuple[str, ...], mailbox: Mailbox) -> bool:
    """
    Match a recipient against RAT entries: C{example.com} (that domain),
    C{.example.com} (its subdomains), C{user@example.com} (one address) or
    C{user@} (that local part at any domain the other entries name, e.g.
    C{postmaster@} beside C{joe@example.org} takes C{postmaster@example.org}).
    Nothing else ever matches: a RAT can only narrow what is accepted, and
    C{user@} never reaches a domain the RAT does not name (the ESA's "that
    user at every domain" would relay).
    """
    domain = mailbox.domain.lower()
    local = mailbox.local.lower()
    full = f"{local}@{domain}"
    named = False
    any_domain = False
    for entry in rat:
        e = entry.lower()
        if e.endswith("@"):
            any_domain = any_domain or e == local + "@"
        elif "@" in e:
            if e == full:
                return True
            named = named or e.partition("@")[2] == domain
        elif e.startswith("."):
            if domain.endswith(e):
                return True
        elif domain == e:
            return True
    return any_domain and named
