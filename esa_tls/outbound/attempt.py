# -*- test-case-name: tests.test_outbound_attempt -*-
"""
One delivery attempt: one message, one destination domain, host by host.

L{deliver_message} finds the hosts (SMTP route or MX), applies the
domain's Destination Controls TLS setting to each connection, and returns
what became of each recipient.  It never retries later by itself: a
deferred recipient goes back to the queue, which owns the schedule.

Host by host: a host that cannot be reached, greets with an error, fails
before the transaction, answers MAIL FROM with 4xx, or cannot give the TLS
the setting requires, is passed over for the next one (each address of
each host in turn).  Once a host has answered for the recipients, its
answers are final for this attempt.  Under C{preferred} and
C{preferred-verify}, a TLS handshake that fails after the server's C{220}
is followed by a new connection to the same address in the clear.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import IO, Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from esa_tls.config.model import GatewayConfig
from esa_tls.maillog import MailLog
from esa_tls.outbound.client import DeliveryClient, SessionOutcome, Timeouts
from esa_tls.outbound.mx import (
    SMTP_PORT,
    LocalHost,
    MailHost,
    MailRoute,
    MXResolver,
    RouteError,
)
from esa_tls.outbound.policy import TLSPlan, destination_for, effective_tls, trust_anchors
from esa_tls.outbound.result import (
    DeliveryResult,
    Fallback,
    RecipientOutcome,
    RecipientStatus,
    TLSFailureEvent,
    TLSOutcome,
    TLSResultType,
)
from esa_tls.outbound.reuse import SessionKey, SessionPool
from esa_tls.outbound.tlscontext import InspectingClientTLS
from esa_tls.outbound.verify import verify_certificate_names

log = Logger()

Recipients = Sequence[tuple[int, str]]


#: Controls, space, DEL and angle brackets (one scan in C per address).
_UNSAFE_IN_ADDRESS = re.compile(r"[\x00-\x20<>\x7f]")

#: A quoted local part (RFC 5321 section 4.1.2 Quoted-string, as our
#: listeners accept it): spaces and angle brackets are legal inside the
#: quotes, controls and DEL are not, escaped or not.
_QUOTED_LOCAL = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"(?=@)')


def address_problem(address: str) -> str | None:
    """
    Why C{address} cannot be put in an SMTP command, or C{None}: control
    characters or angle brackets would let a stored address inject
    commands into the next hop.  A space or an angle bracket inside a
    quoted local part (C{"john doe"@example.com}) is legal SMTP: such a
    sender must get its bounces, such a recipient its mail.
    """
    if not address or "@" not in address:
        return "not a mailbox address"
    quoted = _QUOTED_LOCAL.match(address)
    rest = address[quoted.end() :] if quoted is not None else address
    if _UNSAFE_IN_ADDRESS.search(rest) is not None:
        return "address contains characters not allowed in SMTP"
    return None


def _permanent_answer(outcome: SessionOutcome) -> bool:
    """
    Whether the server gave a 5xx answer in the transaction (to MAIL FROM
    or a recipient): an answer for this message, not about the session.
    """
    if outcome.mail_reply is not None and 500 <= outcome.mail_reply[0] < 600:
        return True
    return any(500 <= code < 600 for _, code, _ in outcome.rcpt_replies)


def _status_for(code: int) -> RecipientStatus:
    if 200 <= code < 300:
        return RecipientStatus.DELIVERED
    if 500 <= code < 600:
        return RecipientStatus.BOUNCED
    return RecipientStatus.DEFERRED


def _interface_name(config: GatewayConfig, local_ip: str) -> str:
    for name, interface in config.interfaces.items():
        if interface.ip == local_ip:
            return name
    return local_ip


class _OneConnection(Factory):
    """
    C{connectProtocol}'s one-shot factory without its two log lines per
    connection ("Starting/Stopping factory"), which were a measurable share
    of a delivering reactor's time (bench/README.md).
    """

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._protocol


class _Attempt:
    """
    The state of one L{deliver_message} call.
    """

    def __init__(
        self,
        reactor: Any,
        resolver: Any,
        config: GatewayConfig,
        domain: str,
        mail_from: str,
        recipients: Recipients,
        body_file: IO[bytes],
        *,
        dcid_allocator: Callable[[], int],
        maillog: MailLog | None,
        mid: int | None,
        on_tls_failure: Callable[[TLSFailureEvent], object] | None,
        timeouts: Timeouts,
        port: int,
        trust_system: bool,
        mx_resolver: MXResolver | None,
        pool: SessionPool | None = None,
        current_config: Callable[[], GatewayConfig] | None = None,
    ) -> None:
        self.reactor = reactor
        self.current_config = current_config
        self.pool = pool
        self.config = config
        self.domain = domain.rstrip(".").lower()
        self.mail_from = mail_from
        self.recipients = list(recipients)
        self.body = body_file
        self.body_start = body_file.tell()
        self.dcid_allocator = dcid_allocator
        self.maillog = maillog
        self.mid = mid
        self.on_tls_failure = on_tls_failure
        self.timeouts = timeouts
        self.port = port
        self.trust_system = trust_system
        self.mx = mx_resolver or MXResolver(resolver)
        self.control = destination_for(config, self.domain)
        self.plan = TLSPlan.for_level(effective_tls(config, self.domain))
        self.tls_failures: list[TLSFailureEvent] = []
        self.last_error = "no host tried"
        #: The last host's TLS failure, kept when a later host fails
        #: otherwise.
        self.tls_error: str | None = None
        self.last: tuple[SessionOutcome, MailHost, str, int] | None = None
        # Whether the last transaction rode on a session kept from an
        # earlier message (one connection for the TLS report, not two).
        self.last_reused = False

    async def run(self) -> DeliveryResult:
        outcomes: dict[int, RecipientOutcome] = {}
        sendable: list[tuple[int, str]] = []
        for rid, address in self.recipients:
            problem = address_problem(address)
            if problem is not None:
                outcomes[rid] = RecipientOutcome(
                    rid, address, RecipientStatus.BOUNCED, 553, f"5.1.3 {problem}"
                )
            else:
                sendable.append((rid, address))
        if sendable:
            for outcome in await self._deliver(sendable):
                outcomes[outcome.rid] = outcome
        result = self._result(tuple(outcomes[rid] for rid, _ in self.recipients))
        self._log_result(result)
        return result

    async def _deliver(self, recipients: Recipients) -> list[RecipientOutcome]:
        try:
            route = await self.mx.resolve(
                self.domain,
                self.config.smtp_routes,
                port=self.port,
                local=LocalHost.from_config(self.config),
            )
        except RouteError as e:
            status = RecipientStatus.BOUNCED if e.permanent else RecipientStatus.DEFERRED
            self.last_error = str(e)
            return [
                RecipientOutcome(rid, a, status, e.code, f"{e.status} {e.text}")
                for rid, a in recipients
            ]
        for host in route.hosts:
            for address in host.addresses:
                outcome = await self._try(route, host, address, recipients)
                if outcome is not None:
                    return outcome
        return [
            RecipientOutcome(rid, a, RecipientStatus.DEFERRED, 451, self._deferral_text())
            for rid, a in recipients
        ]

    def _deferral_text(self) -> str:
        """
        Why no host took the mail: the last error, and the last TLS failure
        when a later host failed otherwise, so that a sender's bounce and
        the mail log say that a host was passed over for TLS (Postfix keeps
        only the last error, which would read as a plain outage).
        """
        if self.tls_error is None:
            return f"4.4.1 {self.last_error}"
        if self.last_error == self.tls_error:
            return f"4.7.5 {self.last_error}"
        return f"4.4.1 {self.last_error}; before that, {self.tls_error}"

    def _follow_config(self) -> None:
        """
        Take up the configuration in service now, if a reload replaced the
        one this attempt started with: every connection opened from here
        on runs under the domain's new Destination Controls row.  An
        attempt can outlast a reload by minutes (a host that keeps it
        waiting for its greeting), and a setting made stricter must not
        let it open a connection in the clear after the reload.  (The
        hosts stay those found at the start.)
        """
        if self.current_config is None:
            return
        config = self.current_config()
        if config is self.config:
            return
        self.config = config
        self.control = destination_for(config, self.domain)
        self.plan = TLSPlan.for_level(effective_tls(config, self.domain))

    async def _try(
        self, route: MailRoute, host: MailHost, address: str, recipients: Recipients
    ) -> list[RecipientOutcome] | None:
        """
        Deliver through one address of one host.

        @return: the recipients' outcomes, or C{None} to go on to the next
            address or host.
        """
        self._follow_config()
        plan = self.plan
        outcome, dcid = await self._session(route, host, address, recipients, plan, None)
        if outcome is None:
            return None
        if outcome.handshake_failed and not plan.require:
            self._follow_config()
            plan = self.plan
            if not plan.require:
                log.info(
                    "DCID {dcid}: TLS failed after 220 from {host}; reconnecting in the clear",
                    dcid=dcid,
                    host=host.name,
                )
                outcome, dcid = await self._session(
                    route, host, address, recipients, plan.in_the_clear(), Fallback.RECONNECTED
                )
                if outcome is None:
                    return None
        if outcome.tls_failure or (outcome.handshake_failed and plan.require):
            self._tls_failed(host, address, outcome, dcid, plan)
            return None
        if self._next_host(outcome):
            if outcome.failure is None and outcome.mail_reply is not None:
                code, text = outcome.mail_reply
                self.last_error = f"{host.name}[{address}]: MAIL FROM: {code} {text}"
            return None
        return self._outcomes(outcome, recipients)

    async def _session(
        self,
        route: MailRoute,
        host: MailHost,
        address: str,
        recipients: Recipients,
        plan: TLSPlan,
        fallback: Fallback | None,
    ) -> tuple[SessionOutcome | None, int]:
        key = None
        if self.pool is not None:
            key = SessionKey(self.domain, host.name, address, host.port, plan)
            kept = self.pool.take(key)
            if kept is not None:
                client, dcid = kept
                self.body.seek(self.body_start)
                outcome = await client.reuse(self.mail_from, recipients, self.body, mid=self.mid)
                if outcome.dot_sent or _permanent_answer(outcome):
                    ended = self._ended(client, key, outcome, host, address, dcid)
                    self.last_reused = True
                    return ended, dcid
                # Nothing sent and nothing final learnt on a kept session:
                # gone stale, RSET refused, or a server that limits the
                # messages per session.  A new connection decides, as if
                # the session had never been kept.
                if client.parked:
                    self.pool.park(key, client, dcid, 0)  # closes it
                elif self.maillog is not None:
                    self.maillog.dcid_close(dcid)
            self.pool.make_room(key)
        dcid = self.dcid_allocator()
        self.body.seek(self.body_start)
        ca_file = trust_anchors(self.config, self.domain)
        client = DeliveryClient(
            identity=self.config.system.hostname,
            mail_from=self.mail_from,
            recipients=recipients,
            body=self.body,
            plan=plan,
            tls_creator=lambda: InspectingClientTLS(
                host.server_name,
                ca_file=ca_file,
                trust_system=self.trust_system,
            ),
            name_check=lambda cert: verify_certificate_names(
                cert,
                self.domain,
                host.name,
                via_smtp_route=route.via_smtp_route,
                hosted=plan.hosted,
            ),
            timeouts=self.timeouts,
            maillog=self.maillog,
            dcid=dcid,
            mid=self.mid,
            fallback=fallback,
            call_later=self.reactor.callLater,
            reusable=key is not None,
        )
        endpoint_type = (
            TCP6ClientEndpoint if ipaddress.ip_address(address).version == 6 else TCP4ClientEndpoint
        )
        endpoint = endpoint_type(self.reactor, address, host.port, timeout=self.timeouts.connect)
        try:
            await endpoint.connect(_OneConnection(client))
        except Exception as e:
            self.last_error = f"connection to {host.name}[{address}]:{host.port} failed: {e}"
            log.info("{error}", error=self.last_error)
            return None, dcid
        if self.maillog is not None:
            local = client.transport.getHost() if client.transport is not None else None
            local_ip = getattr(local, "host", "")
            self.maillog.new_dcid(dcid, _interface_name(self.config, local_ip), address, host.port)
        outcome = await client.finished
        return self._ended(client, key, outcome, host, address, dcid), dcid

    def _ended(
        self,
        client: DeliveryClient,
        key: SessionKey | None,
        outcome: SessionOutcome,
        host: MailHost,
        address: str,
        dcid: int,
    ) -> SessionOutcome:
        """
        A transaction ended: hand a session that is still good to the pool
        (which then logs its close), or log the close of one that ended.
        """
        if self.pool is not None and key is not None and client.parked:
            self.pool.park(key, client, dcid, self.control.max_messages_per_connection)
        elif self.maillog is not None:
            self.maillog.dcid_close(dcid)
        self.last = (outcome, host, address, dcid)
        self.last_reused = False
        if outcome.failure is not None:
            self.last_error = f"{host.name}[{address}]: {outcome.failure}"
        return outcome

    def _tls_failed(
        self, host: MailHost, address: str, outcome: SessionOutcome, dcid: int, plan: TLSPlan
    ) -> None:
        event = TLSFailureEvent(
            domain=self.domain,
            level=plan.level,
            host=host.name,
            address=address,
            port=host.port,
            result_type=outcome.tls.failure or TLSResultType.VALIDATION_FAILURE,
            detail=outcome.tls.detail or outcome.failure or "TLS failed",
            mid=self.mid,
            dcid=dcid,
        )
        self.tls_failures.append(event)
        self.last_error = self.tls_error = (
            f"TLS required ({plan.level.value}) but {host.name}[{address}]: {event.detail}"
        )
        if self.on_tls_failure is not None:
            # An alert hook must never hold up mail: do not wait for it.
            maybeDeferred(self.on_tls_failure, event).addErrback(
                lambda f: log.failure("TLS failure callback failed", f)
            )

    def _next_host(self, outcome: SessionOutcome) -> bool:
        """
        Whether this host's answer should be ignored in favour of the next
        host: it failed before it said anything about the recipients.
        """
        if not outcome.mail_sent or outcome.mail_reply is None:
            return True
        if 400 <= outcome.mail_reply[0] < 500:
            return True
        return outcome.failure is not None and not outcome.rcpt_replies

    def _outcomes(self, outcome: SessionOutcome, recipients: Recipients) -> list[RecipientOutcome]:
        assert outcome.mail_reply is not None
        mail_code, mail_text = outcome.mail_reply
        if not 200 <= mail_code < 300:
            return [
                RecipientOutcome(
                    rid,
                    a,
                    _status_for(mail_code) if mail_code >= 400 else RecipientStatus.DEFERRED,
                    mail_code,
                    f"MAIL FROM: {mail_text}",
                )
                for rid, a in recipients
            ]
        results = []
        for index, (rid, address) in enumerate(recipients):
            if index >= len(outcome.rcpt_replies):
                results.append(
                    RecipientOutcome(
                        rid, address, RecipientStatus.DEFERRED, 451, f"4.4.2 {outcome.failure}"
                    )
                )
                continue
            _, code, text = outcome.rcpt_replies[index]
            if not 200 <= code < 300:
                status = _status_for(code) if code >= 400 else RecipientStatus.DEFERRED
                results.append(RecipientOutcome(rid, address, status, code, text))
            elif outcome.accepted:
                assert outcome.data_reply is not None
                results.append(
                    RecipientOutcome(rid, address, RecipientStatus.DELIVERED, *outcome.data_reply)
                )
            elif outcome.data_reply is not None and outcome.data_reply[0] >= 400:
                code, text = outcome.data_reply
                results.append(RecipientOutcome(rid, address, _status_for(code), code, text))
            else:
                results.append(
                    RecipientOutcome(
                        rid,
                        address,
                        RecipientStatus.DEFERRED,
                        451,
                        f"4.4.2 {outcome.failure or 'no reply to the end of data'}",
                    )
                )
        return results

    def _result(self, recipients: tuple[RecipientOutcome, ...]) -> DeliveryResult:
        tls: TLSOutcome | None = None
        host = address = None
        port = dcid = None
        if self.last is not None:
            outcome, mail_host, address, dcid = self.last
            tls, host, port = outcome.tls, mail_host.name, mail_host.port
        return DeliveryResult(
            domain=self.domain,
            mid=self.mid,
            recipients=recipients,
            tls=tls,
            host=host,
            address=address,
            port=port,
            dcid=dcid,
            reused=self.last is not None and self.last_reused,
            tls_required_failure=bool(self.tls_failures),
            tls_failures=tuple(self.tls_failures),
        )

    def _log_result(self, result: DeliveryResult) -> None:
        if self.maillog is None or self.mid is None:
            return
        for status, emit in (
            (RecipientStatus.DEFERRED, self.maillog.deferred),
            (RecipientStatus.BOUNCED, self.maillog.bounced),
        ):
            by_reason: dict[str, list[int]] = {}
            for r in result.with_status(status):
                by_reason.setdefault(f"{r.code} {r.text}", []).append(r.rid)
            for reason, rids in by_reason.items():
                emit(self.mid, rids, reason)


def deliver_message(
    reactor: Any,
    resolver: Any,
    config: GatewayConfig,
    domain: str,
    mail_from: str,
    recipients: Recipients,
    body_file: IO[bytes],
    *,
    dcid_allocator: Callable[[], int],
    maillog: MailLog | None = None,
    mid: int | None = None,
    on_tls_failure: Callable[[TLSFailureEvent], object] | None = None,
    timeouts: Timeouts | None = None,
    port: int = SMTP_PORT,
    trust_system: bool = True,
    mx_resolver: MXResolver | None = None,
    pool: SessionPool | None = None,
    current_config: Callable[[], GatewayConfig] | None = None,
) -> Deferred[DeliveryResult]:
    """
    Try once to deliver a message to the recipients of one domain.

    @param reactor: provides C{IReactorTCP} and C{IReactorTime}.
    @param resolver: an C{IResolver} for MX, A and AAAA lookups (see
        L{esa_tls.outbound.mx.resolver_from_config}).
    @param config: the gateway configuration: Destination Controls, SMTP
        routes and the EHLO name.
    @param domain: the recipient domain all C{recipients} share.
    @param mail_from: the envelope sender; C{""} for the null sender.
    @param recipients: C{(rid, address)} pairs.
    @param body_file: the message (CRLF line endings, not dot-stuffed),
        positioned at its start; read again for each connection.
    @param dcid_allocator: returns a new delivery connection ID per call
        (e.g. L{esa_tls.ids.IdAllocator.next}).
    @param maillog: where the ESA mail log lines go.
    @param mid: the message ID, for the log and the events.
    @param on_tls_failure: called with a L{TLSFailureEvent} each time a
        host cannot give the TLS the domain's setting requires (the alert
        system's entry point); not waited for, and its errors are logged.
    @param timeouts: per-command timeouts (RFC 5321 minimums by default).
    @param port: the port of hosts found through MX (routes carry theirs).
    @param trust_system: trust the platform CA store besides the
        destination's C{ca_file}.
    @param mx_resolver: a ready L{MXResolver} (to share a random source or
        DNS timeouts); built from C{resolver} if not given.
    @param pool: where sessions are kept between messages (see
        L{esa_tls.outbound.reuse}); without one, every attempt opens its
        own connections and closes them.
    @param current_config: returns the configuration in service (the
        queue manager's, which a reload replaces); each new connection of
        the attempt follows the Destination Controls it has then.  Without
        it, C{config} holds for the whole attempt.

    @return: a L{Deferred} firing with a L{DeliveryResult}; it does not
        fail for delivery problems, which are in the result.
    """
    attempt = _Attempt(
        reactor,
        resolver,
        config,
        domain,
        mail_from,
        recipients,
        body_file,
        dcid_allocator=dcid_allocator,
        maillog=maillog,
        mid=mid,
        on_tls_failure=on_tls_failure,
        timeouts=timeouts or Timeouts(),
        port=port,
        trust_system=trust_system,
        mx_resolver=mx_resolver,
        pool=pool,
        current_config=current_config,
    )
    return Deferred.fromCoroutine(attempt.run())
