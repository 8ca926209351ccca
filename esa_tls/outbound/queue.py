# -*- test-case-name: tests.test_outbound_queue -*-
"""
The queue manager: works the durable spool until every recipient is
delivered or bounced.

What it guarantees, with the spool's help:

  - B{nothing lost}: it reads the spool at start-up, so messages accepted
    before a crash or a restart are delivered; a recipient's state changes
    only through C{DurableSpool.update_recipients}, which is durable before
    the manager goes on;
  - B{nothing sent twice} that was recorded as delivered: only pending
    (queued or deferred) recipients are ever tried.  The one window that
    remains is the classic one of every MTA (RFC 5321 section 6.1): a
    crash after the next hop's C{250} and before the state is on disk
    sends that recipient again;
  - B{per-destination limits} from Destination Controls: at most
    C{max_host_concurrency} deliveries to a domain at once, and at most
    C{recipient_limit} recipients per C{recipient_minutes}.  While the
    service runs, a session is kept after its message for the next one of
    the same destination (L{esa_tls.outbound.reuse}: same TLS plan only,
    at most C{max_messages_per_connection} messages, RSET in between);
  - B{cost that does not grow with the queue}: new messages start at once
    (the spool announces them); a message held back by a domain's
    concurrency limit waits in that domain's line and starts when one of
    the domain's deliveries ends.  Only the periodic scan (every
    C{scan_interval}, for retries that came due) reads the whole queue;
  - B{the C{/dev/null} route} (L{esa_tls.outbound.discard}): recipients
    of a domain routed there are marked delivered without a connection;
  - B{retries} with exponential backoff (first 5 minutes, then doubling,
    at most an hour apart), until the message is 5 days old: then the
    recipient bounces;
  - B{bounces} (RFC 3464 DSNs) to the sender for recipients that failed
    for good, put into the spool like any message and delivered by this
    same manager; never for a message from the null sender.  The
    deliveries of a message to its several domains, which run together,
    make one DSN, when the last of them ends.  The DSN is made durable
    I{before} the recipients are marked bounced, so a crash can repeat a
    DSN but never lose one.

C{esa-tls delivernow [DOMAIN]} talks to a running manager through a
request file in C{data_dir/delivernow/} (see L{request_delivery_now}),
which the manager checks every second.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from attrs import evolve, frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from esa_tls.config.model import DestinationControl, GatewayConfig
from esa_tls.interfaces import StoreError
from esa_tls.maillog import MailLog
from esa_tls.outbound.attempt import deliver_message
from esa_tls.outbound.client import Timeouts
from esa_tls.outbound.discard import is_discard_route
from esa_tls.outbound.dsn import FailedRecipient, build_dsn, header_section, status_of
from esa_tls.outbound.mx import SMTP_PORT, MXResolver, find_route, normalize_name
from esa_tls.outbound.policy import destination_for
from esa_tls.outbound.result import DeliveryResult, RecipientStatus, TLSFailureEvent
from esa_tls.outbound.reuse import SessionPool
from esa_tls.spool.values import (
    BOUNCED,
    DEFERRED,
    DELIVERED,
    FINAL_STATUSES,
    QueuedMessage,
    RecipientState,
)
from esa_tls.values import Envelope

log = Logger()

__all__ = ["QueueManager", "RetryPolicy", "delivernow_directory", "request_delivery_now"]


@frozen
class RetryPolicy:
    """
    When to try a deferred recipient again, and when to give up.

    @ivar first: seconds before the first retry.
    @ivar maximum: the longest wait between two attempts.
    @ivar give_up: seconds after the message arrived after which a
        recipient that is still deferred bounces.
    """

    first: float = 300.0
    maximum: float = 3600.0
    give_up: float = 5 * 86400.0

    def delay(self, attempts: int) -> float:
        """
        The wait after the C{attempts}-th failed attempt: C{first},
        doubling each time, at most C{maximum}.

        The doubling stops once it reaches C{maximum}: C{2 ** n} for the
        thousand-odd attempts C{delivernow} can pile up is too large a
        float, and the error would leave the delivery unrecorded.
        """
        delay = self.first
        for _ in range(max(attempts - 1, 0)):
            if delay >= self.maximum:
                break
            delay *= 2
        return float(min(delay, self.maximum))


def delivernow_directory(config: GatewayConfig) -> str:
    """
    Where C{esa-tls delivernow} leaves its requests.
    """
    return os.path.join(config.system.data_dir, "delivernow")


#: What a delivernow request may name: a recipient domain as the queue
#: keeps it (a DNS name, or an address literal in brackets), printable and
#: without spaces; never empty, which must not read as "all".
_REQUEST_DOMAIN = re.compile(r"[!-~]+")


def request_delivery_now(config: GatewayConfig, domain: str | None = None) -> str:
    """
    Ask the running gateway to retry now every deferred recipient (of
    C{domain} only, when given).  Blocking: for the command-line tool.

    @return: the request file written.
    @raise ValueError: C{domain} is not a domain name (or address literal).
    """
    target = "ALL"
    if domain is not None:
        target = normalize_name(domain)
        if not _REQUEST_DOMAIN.fullmatch(target):
            raise ValueError(f"{domain!r} is not a domain name")
    directory = delivernow_directory(config)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{uuid.uuid4().hex}.request")
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(target + "\n")
    os.rename(temporary, path)
    return path


def _domain_of(address: str) -> str:
    return normalize_name(address.rpartition("@")[2])


@frozen
class _Failure:
    """
    A recipient that failed for good in a delivery, waiting for its DSN.

    @ivar report: what the DSN says of it.
    @ivar state: its new (bounced) state, recorded once the DSN is spooled.
    @ivar gave_up: the reason, when it bounced for its age (for the log).
    """

    report: FailedRecipient
    state: RecipientState
    gave_up: str | None = None


class QueueManager(Service):
    """
    Delivers what the spool holds.

    @ivar in_flight: the C{(mid, domain)} deliveries running now.
    """

    def __init__(
        self,
        reactor: Any,
        spool: Any,
        config: GatewayConfig,
        resolver: Any,
        *,
        dcid_allocator: Callable[[], int],
        maillog: MailLog | None = None,
        on_tls_failure: Callable[[TLSFailureEvent], object] | None = None,
        on_result: Callable[[DeliveryResult], object] | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        scan_interval: float = 30.0,
        port: int = SMTP_PORT,
        trust_system: bool = True,
        mx_resolver: MXResolver | None = None,
        clock: Any = None,
    ) -> None:
        """
        @param reactor: for connections (and time, unless C{clock}).
        @param spool: the L{esa_tls.spool.DurableSpool} (or anything with
            its queue-side methods and C{new_message}).
        @param config: the configuration (Destination Controls, routes,
            host name, data directory).
        @param resolver: the C{IResolver} for MX, A and AAAA.
        @param on_tls_failure: see L{deliver_message}; the alert
            dispatcher's entry point.
        @param on_result: called with every L{DeliveryResult} (the TLS
            report's C{record_delivery}); its errors are logged.
        @param scan_interval: how often the whole spool is scanned for
            recipients whose retry time has come.
        @param port: the SMTP port of mail exchangers (tests change it).
        @param clock: the time source for retries and limits.
        """
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.spool = spool
        self._controls: dict[str, DestinationControl] = {}
        self._discards: dict[str, bool] = {}
        self._pool: SessionPool | None = None
        self.config = config
        self.resolver = resolver
        self.dcid_allocator = dcid_allocator
        self.maillog = maillog
        self.on_tls_failure = on_tls_failure
        self.on_result = on_result
        self.retry = retry or RetryPolicy()
        self.timeouts = timeouts
        self.scan_interval = scan_interval
        self.port = port
        self.trust_system = trust_system
        self.mx_resolver = mx_resolver or MXResolver(resolver, clock=self.clock)
        self.in_flight: dict[tuple[int, str], Deferred[None]] = {}
        self._active: dict[str, int] = defaultdict(int)
        self._sent: dict[str, deque[tuple[float, int]]] = defaultdict(deque)
        self._loops: list[LoopingCall] = []
        # Each domain's line of messages held back by its limits, in order:
        # whether the message was asked for by delivernow (so that it is
        # still tried before its retry time when its turn comes).
        self._waiting: dict[str, dict[int, bool]] = defaultdict(dict)
        self._wake_domains: set[str] = set()
        self._wake_call: Any = None
        # What deliveries learned but the spool could not record (disk
        # full, an I/O error), by MID.  Such a message is not delivered
        # again while it is here: its states on disk are the old ones, and
        # would send it again, at every scan, to recipients who have it.
        # Each scan tries to record them again.
        self._unrecorded: dict[int, dict[int, RecipientState]] = {}
        # MIDs whose held states a scan is writing again.
        self._rerecording: set[int] = set()
        # How many deliveries of each message are sending now, and the
        # failures of those that ended while others were still sending:
        # the last one to end makes one DSN for them all.  Their durable
        # states are the old ones until then (a crash tries them again,
        # and bounces them then: a bounce may repeat, never be lost), and
        # no scan tries them meanwhile.
        self._sending: dict[int, int] = {}
        self._held_failures: dict[int, list[_Failure]] = {}
        # The RIDs of held failures that the last delivery took for its
        # DSN: neither held nor in flight any more, and still pending on
        # disk until their bounced states are recorded, when no scan or
        # delivernow may try them either.
        self._bouncing: dict[int, set[int]] = {}

    @property
    def config(self) -> GatewayConfig:
        """
        The configuration; setting it (a reload) forgets what was looked up
        in the old one.
        """
        return self._config

    @config.setter
    def config(self, config: GatewayConfig) -> None:
        self._config = config
        self._controls.clear()
        self._discards.clear()
        if self._pool is not None:
            # Sessions opened under the old settings (trust anchors, TLS
            # levels) must not carry mail under the new ones.
            self._pool.close()
            self._pool = SessionPool(self.reactor, maillog=self.maillog)

    def _control(self, domain: str) -> DestinationControl:
        """
        L{destination_for}, remembered per domain: it normalizes the whole
        Destination Controls table on each call, and every message asks.
        """
        control = self._controls.get(domain)
        if control is None:
            control = self._controls[domain] = destination_for(self._config, domain)
        return control

    def _discarded(self, domain: str) -> bool:
        """
        Whether C{domain}'s SMTP route is C{/dev/null}, remembered per domain.
        """
        discarded = self._discards.get(domain)
        if discarded is None:
            route = find_route(self._config.smtp_routes, domain)
            discarded = self._discards[domain] = is_discard_route(route)
        return discarded

    # -- service --------------------------------------------------------

    def startService(self) -> None:
        """
        Scan the spool now (mail from before a restart included), on new
        messages, and every C{scan_interval}.
        """
        super().startService()
        self._pool = SessionPool(self.reactor, maillog=self.maillog)
        self.spool.subscribe(self._committed)
        scan = LoopingCall(self._scan_logged)
        scan.clock = self.clock
        scan.start(self.scan_interval, now=True)
        requests = LoopingCall(self._check_requests)
        requests.clock = self.clock
        requests.start(1.0, now=False)
        self._loops = [scan, requests]

    def stopService(self) -> Deferred[None]:
        """
        Stop scanning and wait for the deliveries under way.
        """
        super().stopService()
        if self._wake_call is not None and self._wake_call.active():
            self._wake_call.cancel()
        self._wake_call = None
        self._wake_domains.clear()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []

        def close_sessions(_: object) -> Deferred[None]:
            pool, self._pool = self._pool, None
            return pool.close() if pool is not None else succeed(None)

        return DeferredList(list(self.in_flight.values())).addCallback(close_sessions)

    def _committed(self, mid: int) -> None:
        """
        A new message is durable: start on it at once.
        """
        if not self.running:
            return
        try:
            message = self.spool.get(mid)
        except KeyError:
            return
        for d in self._schedule(message, self.clock.seconds()):
            d.addErrback(lambda f: log.failure("Delivery of new MID {mid} failed", f, mid=mid))

    @staticmethod
    def _log_failure(failure: Any, mid: int) -> None:
        log.failure("Delivery of MID {mid} failed", failure, mid=mid)

    def _scan_logged(self) -> None:
        # maybeDeferred: an exception raised by the scan itself (the queue
        # could not be listed: out of descriptors, an I/O error) is logged
        # like any other failure.  Raised from here, it would stop the
        # LoopingCall for the life of the process: no retry would ever
        # come due again.
        maybeDeferred(self.run_once).addErrback(
            lambda f: log.failure(
                "Queue scan failed; next scan in {interval} s", f, interval=self.scan_interval
            )
        )

    def _slot_free(self, domain: str) -> None:
        """
        A delivery to C{domain} ended, so one of its concurrency slots is
        free: start the messages waiting for one (once per reactor turn,
        however many deliveries end in it).  Only that domain's line is
        looked at, never the whole queue: the cost of a delivery must not
        grow with the queue.
        """
        if not self.running or not self._waiting.get(domain):
            return
        self._wake_domains.add(domain)
        if self._wake_call is None:
            self._wake_call = self.reactor.callLater(0, self._wake)

    def _wake(self) -> None:
        self._wake_call = None
        domains, self._wake_domains = self._wake_domains, set()
        now = self.clock.seconds()
        for domain in domains:
            waiting = self._waiting.get(domain)
            while waiting and self._allowed(domain, 1, now) > 0:
                mid, forced = next(iter(waiting.items()))
                del waiting[mid]
                try:
                    message = self.spool.get(mid)
                except KeyError:
                    continue
                for d in self._schedule(message, now, domain if forced else False):
                    d.addErrback(self._log_failure, mid)
            if not waiting:
                self._waiting.pop(domain, None)

    # -- delivernow -------------------------------------------------------

    def _check_requests(self) -> None:
        directory = delivernow_directory(self.config)
        try:
            names = [n for n in os.listdir(directory) if n.endswith(".request")]
        except FileNotFoundError:
            return
        except OSError as e:
            # Out of descriptors, say: raised, it would end these checks
            # for the life of the process.
            log.error("delivernow: cannot read {directory}: {error}", directory=directory, error=e)
            return
        for name in names:
            path = os.path.join(directory, name)
            try:
                with open(path, encoding="utf-8") as f:
                    target = f.read().strip()
                os.unlink(path)
            except OSError:
                continue
            if target == "ALL":
                self.deliver_now(None)
            elif _REQUEST_DOMAIN.fullmatch(target):
                self.deliver_now(target)
            else:
                log.warn("delivernow: ignored a request for {target!r}", target=target)

    def deliver_now(self, domain: str | None = None) -> Deferred[None]:
        """
        Retry now every deferred recipient (of C{domain} only, when given),
        ignoring their retry times, as ESA C{delivernow} does; resets the
        recipient-rate counters of the domains concerned.
        """
        domain = normalize_name(domain) if domain else None
        if domain is None:
            self._sent.clear()
        else:
            self._sent.pop(domain, None)
        log.info("delivernow: {target}", target=domain or "all domains")
        return self.run_once(force=domain or True)

    # -- scanning ---------------------------------------------------------

    def run_once(self, force: str | bool = False) -> Deferred[None]:
        """
        One pass over the spool: start every delivery that is due and
        allowed by the limits.

        @param force: C{True} to ignore retry times, or a domain to ignore
            them for that domain only.
        @return: a L{Deferred} firing once the deliveries started by this
            pass are finished and recorded.
        """
        now = self.clock.seconds()
        started: list[Deferred[None]] = []
        for message in self.spool.queued():
            started.extend(self._schedule(message, now, force))
        return DeferredList(started).addCallback(lambda _: None)

    def _schedule(
        self, message: QueuedMessage, now: float, force: str | bool = False
    ) -> list[Deferred[None]]:
        """
        Start the deliveries of one message that are due and allowed.
        """
        if message.mid in self._unrecorded or message.mid in self._rerecording:
            if message.mid in self._rerecording or any(
                mid == message.mid for mid, _ in self.in_flight
            ):
                return []
            return [Deferred.fromCoroutine(self._record_again(message.mid))]
        if not message.pending:
            return [self._finish(message)]
        pending = message.pending
        held = self._held_failures.get(message.mid, [])
        bouncing = self._bouncing.get(message.mid, set())
        if held or bouncing:
            # Failed in a delivery that ended while another of the message
            # was still sending: the DSN comes (or is being spooled) when
            # that one ends.
            rids = {failure.state.rid for failure in held} | bouncing
            pending = tuple(s for s in pending if s.rid not in rids)
        by_domain: dict[str, list[RecipientState]] = defaultdict(list)
        for state in pending:
            domain = _domain_of(state.address)
            if (
                force is True
                or force == domain
                or state.next_attempt <= now
                # Further off than the longest wait: set while the clock
                # was wrong (and since put right), not by the schedule.
                or state.next_attempt > now + self.retry.maximum
                # delivernow asked for it, and a limit held it back since.
                or self._waiting.get(domain, {}).get(message.mid, False)
            ):
                by_domain[domain].append(state)
        started = []
        for domain, states in by_domain.items():
            if (message.mid, domain) in self.in_flight:
                if force in (True, domain):
                    # delivernow while a delivery of this message is under
                    # way: should that one defer, the message is tried
                    # again when it ends (its slot wakes the line), not
                    # at the retry time it sets.
                    self._waiting[domain][message.mid] = True
                continue
            if self._discarded(domain):
                started.append(self._start(message, domain, states, now, drop=True))
                continue
            allowed = self._allowed(domain, len(states), now)
            line = self._waiting.get(domain)
            forced = (line is not None and line.get(message.mid, False)) or force in (True, domain)
            if allowed > 0:
                started.append(self._start(message, domain, states[:allowed], now))
            if allowed < len(states):
                # The rest's turn comes when one of the domain's deliveries
                # ends (or, for a rate limit, at a later scan), with
                # delivernow's word kept for them; a message already in
                # the line keeps its place.
                self._waiting[domain][message.mid] = forced
            elif line is not None:
                line.pop(message.mid, None)
        return started

    def _allowed(self, domain: str, wanted: int, now: float) -> int:
        """
        How many of C{wanted} recipients of C{domain} may be tried now.
        """
        control = self._control(domain)
        if (
            control.max_host_concurrency > 0
            and self._active[domain] >= control.max_host_concurrency
        ):
            return 0
        if control.recipient_limit <= 0:
            return wanted
        window = control.recipient_minutes * 60.0
        sent = self._sent[domain]
        while sent and sent[0][0] <= now - window:
            sent.popleft()
        used = sum(count for _, count in sent)
        return min(wanted, control.recipient_limit - used)

    def _start(
        self,
        message: QueuedMessage,
        domain: str,
        states: list[RecipientState],
        now: float,
        drop: bool = False,
    ) -> Deferred[None]:
        """
        Run one delivery (or, with C{drop}, the C{/dev/null} route's
        non-delivery, which takes no connection and counts against no
        limit), tracked in L{in_flight}.
        """
        if drop:
            d = Deferred.fromCoroutine(self._drop(message, domain, states))
        else:
            self._active[domain] += 1
            self._sent[domain].append((now, len(states)))
            d = Deferred.fromCoroutine(self._deliver(message, domain, states))

        def done(result: object) -> object:
            self.in_flight.pop((message.mid, domain), None)
            if not drop:
                self._active[domain] -= 1
                self._slot_free(domain)
            return result

        d.addBoth(done)
        d.addErrback(
            lambda f: log.failure(
                "{what} MID {mid} for {domain} failed",
                f,
                what="Dropping" if drop else "Delivery of",
                mid=message.mid,
                domain=domain,
            )
        )
        self.in_flight[(message.mid, domain)] = d
        return d

    # -- one delivery -------------------------------------------------------

    async def _deliver(
        self, message: QueuedMessage, domain: str, states: list[RecipientState]
    ) -> None:
        envelope = message.envelope
        mid = message.mid
        # Counted before the first await: the deliveries of a message to
        # its several domains start together, in one _schedule.
        self._sending[mid] = self._sending.get(mid, 0) + 1
        try:
            body = self.spool.open_body(mid)
            try:
                result = await deliver_message(
                    self.reactor,
                    self.resolver,
                    self.config,
                    domain,
                    envelope.mail_from,
                    [(s.rid, s.address) for s in states],
                    body,
                    dcid_allocator=self.dcid_allocator,
                    maillog=self.maillog,
                    mid=mid,
                    on_tls_failure=self.on_tls_failure,
                    timeouts=self.timeouts,
                    port=self.port,
                    trust_system=self.trust_system,
                    mx_resolver=self.mx_resolver,
                    pool=self._pool,
                    current_config=lambda: self._config,
                )
            finally:
                body.close()
        except BaseException:
            self._sent_off(mid, failed=True)
            raise
        others = self._sent_off(mid)
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception:
                log.failure("Delivery result callback failed")
        now = self.clock.seconds()
        arrived = self._arrival(message)
        by_rid = {s.rid: s for s in states}
        new_states: dict[int, RecipientState] = {}
        failures: list[_Failure] = []
        for outcome in result.recipients:
            old = by_rid[outcome.rid]
            attempts = old.attempts + 1
            text = f"{outcome.code} {outcome.text}"
            if outcome.status is RecipientStatus.DELIVERED:
                new_states[old.rid] = evolve(
                    old, status=DELIVERED, attempts=attempts, last_error=""
                )
            elif outcome.status is RecipientStatus.BOUNCED:
                report = FailedRecipient(
                    old.address, text, status_of(outcome.text, outcome.code), remote=True
                )
                failures.append(
                    _Failure(
                        report, evolve(old, status=BOUNCED, attempts=attempts, last_error=text)
                    )
                )
            elif now - arrived >= self.retry.give_up:
                reason = f"gave up after {attempts} attempts: {text}"
                report = FailedRecipient(old.address, reason, "4.4.7", remote=False)
                new = evolve(old, status=BOUNCED, attempts=attempts, last_error=reason)
                failures.append(_Failure(report, new, gave_up=reason))
            else:
                new_states[old.rid] = evolve(
                    old,
                    status=DEFERRED,
                    attempts=attempts,
                    next_attempt=now + self.retry.delay(attempts),
                    last_error=text,
                )
        if others:
            # Another delivery of this message is still sending: its
            # failures and these go to the sender in one DSN when the last
            # one ends.  What else this one learned is recorded now.
            if failures:
                self._held_failures.setdefault(mid, []).extend(failures)
            if new_states:
                await self._record(mid, new_states)
            return
        held = self._held_failures.pop(mid, [])
        held_rids = {failure.state.rid for failure in held}
        bouncing = self._bouncing.setdefault(mid, set())
        bouncing |= held_rids
        try:
            await self._bounce_and_record(message, new_states, held + failures, arrived)
        finally:
            bouncing -= held_rids
            if not bouncing and self._bouncing.get(mid) is bouncing:
                del self._bouncing[mid]

    def _sent_off(self, mid: int, failed: bool = False) -> int:
        """
        A delivery of message C{mid} has stopped sending.

        @param failed: it failed without a result.  If it was the last,
            the failures held for its DSN are let go: their states on disk
            are the old ones, so they are tried again (and bounced then).
        @return: how many deliveries of the message are still sending.
        """
        others = self._sending[mid] - 1
        if others:
            self._sending[mid] = others
            return others
        del self._sending[mid]
        if failed:
            held = self._held_failures.pop(mid, [])
            if held:
                log.warn(
                    "MID {mid}: {n} failed recipient(s) not bounced yet; tried again",
                    mid=mid,
                    n=len(held),
                )
        return 0

    async def _bounce_and_record(
        self,
        message: QueuedMessage,
        new_states: dict[int, RecipientState],
        failures: list[_Failure],
        arrived: float,
    ) -> None:
        """
        Spool one DSN for C{failures}, then record their bounced states with
        C{new_states}: the DSN is durable first, so a crash can repeat it
        but never lose it.
        """
        new_states = {**new_states, **{f.state.rid: f.state for f in failures}}
        gave_up = [(f.state.rid, f.gave_up) for f in failures if f.gave_up is not None]
        if failures:
            try:
                await self._bounce(message, [f.report for f in failures], arrived)
            except (StoreError, OSError) as e:
                # Postfix's "bounce or trace service failure": the failed
                # recipients are deferred (tried again after their backoff,
                # and bounced then), while what else this delivery
                # learned, above all who has the message now, is still
                # recorded; otherwise every scan would send it to them again.
                log.error(
                    "MID {mid}: bounce for {n} recipient(s) not spooled ({error}); deferring them",
                    mid=message.mid,
                    n=len(failures),
                    error=e,
                )
                now = self.clock.seconds()
                failed_rids = [f.state.rid for f in failures]
                for rid in failed_rids:
                    state = new_states[rid]
                    new_states[rid] = evolve(
                        state,
                        status=DEFERRED,
                        next_attempt=now + self.retry.delay(state.attempts),
                        last_error=f"{state.last_error} (its bounce was not spooled: {e})",
                    )
                gave_up = []
                if self.maillog is not None:
                    self.maillog.deferred(
                        message.mid, failed_rids, f"its bounce was not spooled: {e}"
                    )
        if self.maillog is not None:
            for rid, reason in gave_up:
                self.maillog.bounced(message.mid, [rid], reason)
        await self._record(message.mid, new_states)

    async def _record(self, mid: int, new_states: dict[int, RecipientState]) -> None:
        """
        Make the new recipient states durable, and forget the message once
        every recipient is delivered or bounced.

        When these states finish the message, its removal alone records
        them (one durable step instead of two).  States the spool could not
        record are held (L{_unrecorded}) and written again at each scan,
        the message not delivered meanwhile; only a crash before they are
        written sends those recipients the message again.
        """
        new_states = {**self._unrecorded.pop(mid, {}), **new_states}
        try:
            current = self.spool.get(mid)
            finished = all(
                new_states[s.rid].status in FINAL_STATUSES
                if s.rid in new_states
                else s.status in FINAL_STATUSES
                for s in current.recipients
            )
            if finished:
                await self.spool.remove(mid)
            else:
                await self.spool.update_recipients(mid, new_states)
        except StoreError as e:
            # Held, not forgotten: see _unrecorded.
            self._unrecorded[mid] = {**new_states, **self._unrecorded.get(mid, {})}
            log.error(
                "MID {mid}: recipient states not recorded ({error}); the message waits"
                " until they are",
                mid=mid,
                error=e,
            )

    async def _record_again(self, mid: int) -> None:
        self._rerecording.add(mid)
        try:
            await self._record(mid, {})
        except KeyError:
            # The message has left the queue meanwhile (removed by an
            # administrator): nothing is left to record.
            self._unrecorded.pop(mid, None)
        finally:
            self._rerecording.discard(mid)

    async def _drop(
        self, message: QueuedMessage, domain: str, states: list[RecipientState]
    ) -> None:
        """
        C{domain} is routed to C{/dev/null}: its recipients count as
        delivered, without a connection, as the ESA drops such mail.
        """
        new_states = {
            s.rid: evolve(s, status=DELIVERED, attempts=s.attempts + 1, last_error="")
            for s in states
        }
        if self.maillog is not None:
            self.maillog.dropped(message.mid, sorted(new_states))
        await self._record(message.mid, new_states)

    def _arrival(self, message: QueuedMessage) -> float:
        if message.envelope.received_at > 0:
            return message.envelope.received_at
        try:
            return os.stat(self.spool.message_path(message.mid)).st_mtime
        except (OSError, AttributeError):
            return float(self.clock.seconds())

    def _finish(self, message: QueuedMessage) -> Deferred[None]:
        """
        Every recipient is delivered or bounced: forget the message.
        """
        if any(s.status not in FINAL_STATUSES for s in message.recipients):
            return succeed(None)
        d: Deferred[None] = self.spool.remove(message.mid)
        return d

    async def _bounce(
        self, message: QueuedMessage, failed: list[FailedRecipient], arrived: float
    ) -> None:
        """
        Put a DSN for C{failed} into the spool, unless the message came
        from the null sender.
        """
        sender = message.envelope.mail_from
        if not sender:
            log.info("MID {mid}: no bounce for a message from the null sender", mid=message.mid)
            return
        body = self.spool.open_body(message.mid)
        try:
            headers = header_section(body.read(65536))
        finally:
            body.close()
        dsn = build_dsn(
            reporting_mta=self.config.system.hostname,
            sender=sender,
            failed=failed,
            original_headers=headers,
            arrival_date=arrived,
            now=time.time(),
            original_mid=message.mid,
        )
        envelope = Envelope(
            mail_from="",
            rcpt_to=(sender,),
            helo=self.config.system.hostname,
            peer_ip="127.0.0.1",
            listener="(bounce)",
            icid=0,
            received_at=self.clock.seconds(),
        )
        incoming = self.spool.new_message(envelope)
        incoming.write(dsn)
        mid = await incoming.commit()
        if self.maillog is not None:
            # The bounce's own story, as for a message received, so that
            # the lines of its delivery belong to a MID the log introduced.
            maillog = self.maillog
            maillog.start_mid(mid, 0)
            maillog.bounce_generated(mid, message.mid)
            maillog.mail_from(mid, 0, "")
            maillog.rcpt_to(mid, 0, 0, sender)
            maillog.ready(mid, len(dsn), "")
            maillog.queued(mid)
        log.info(
            "MID {mid}: bounce MID {dsn} for {n} recipient(s)",
            mid=message.mid,
            dsn=mid,
            n=len(failed),
        )
