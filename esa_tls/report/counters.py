# -*- test-case-name: tests.test_report_counters -*-
"""
The live TLS Connections counters of one gateway process.

The inbound session and the delivery engine call L{TLSCounters.incoming}
and L{TLSCounters.outgoing} once per connection, when it ends (or when
its TLS story is settled, with the messages it carried).  Both only add to
in-memory counts: no I/O, no waiting.  A periodic flush (every minute by
default, and when the service stops) writes the buckets that changed to
C{data_dir/reports/} from a thread, so the reactor never waits on an
fsync; see L{esa_tls.report.storage} for the files.  At start the
process's own buckets are read back, so its counts survive a restart;
counts not yet flushed when the process dies are lost (at most one flush
interval's worth).

Example, from the inbound side::

    counters.incoming("sender.example", "192.0.2.1", TLSMode.REQUIRED,
                      tls=True, messages=3)

and from the outbound side, with the effective Destination Controls
setting::

    counters.outgoing("partner.example", DestinationTLS.PREFERRED_VERIFY,
                      tls=False, messages=1)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from esa_tls.report.counts import COLUMNS, Direction, TLSCounts, connection_columns, level_of
from esa_tls.report.storage import (
    Key,
    ReportFormatError,
    bucket_path,
    decode_bucket,
    decode_totals,
    encode_bucket,
    encode_totals,
    list_buckets,
    read_buckets,
    read_totals,
    totals_path,
    valid_worker,
    write_atomically,
)
from esa_tls.report.table import TLSReport, build_report

__all__ = [
    "DEFAULT_BUCKET_SECONDS",
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_RETENTION",
    "MAX_TOTAL_DOMAINS",
    "OTHER_DOMAINS",
    "Executor",
    "TLSCounters",
]

log = Logger()

DEFAULT_BUCKET_SECONDS = 3600
DEFAULT_FLUSH_INTERVAL = 60.0
#: How long buckets are kept: 90 days, as the ESA keeps its reports.
DEFAULT_RETENTION = 90 * 86400.0

#: Runs a blocking callable away from the reactor thread; its Deferred
#: fires on the reactor thread.
Executor = Callable[[Callable[[], Any]], Deferred[Any]]


def _thread_executor(reactor: Any) -> Executor:
    from twisted.internet.threads import deferToThreadPool

    def execute(f: Callable[[], Any]) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), f)

    return execute


def _domain(domain: str | None) -> str:
    return (domain or "").strip().lower().rstrip(".")


_K = TypeVar("_K")


def _accumulate(rows: dict[_K, list[int]], key: _K, values: tuple[int, ...]) -> None:
    row = rows.get(key)
    if row is None:
        rows[key] = list(values)
    else:
        for index, value in enumerate(values):
            row[index] += value


def _values(rows: dict[_K, list[int]]) -> dict[_K, TLSCounts]:
    return {key: TLSCounts(*row) for key, row in rows.items()}


#: How many destination domains the running totals (and so C{/metrics})
#: follow one by one; the counts of domains first seen after that add to
#: the row of L{OTHER_DOMAINS}.  The hourly report buckets keep every
#: domain for the retention.
MAX_TOTAL_DOMAINS = 1000

#: The totals row, and C{/metrics} label, of the domains past
#: L{MAX_TOTAL_DOMAINS}.
OTHER_DOMAINS = "(other domains)"


class TLSCounters:
    """
    Counts connections and messages per direction, domain and (incoming)
    sender address, in time buckets.

    @ivar directory: where the files are (C{data_dir/reports}).
    @ivar worker: this process's name in file names.
    @ivar bucket_seconds: the length of a bucket (divides a day).
    @ivar retention: seconds buckets are kept.
    """

    def __init__(
        self,
        directory: str,
        clock: IReactorTime,
        *,
        worker: str = "0",
        bucket_seconds: int = DEFAULT_BUCKET_SECONDS,
        retention: float = DEFAULT_RETENTION,
        executor: Executor | None = None,
    ) -> None:
        """
        Read back this worker's buckets and totals (a blocking read at
        start-up, like the spool's recovery: build the counters before the
        gateway listens).

        @param clock: gives the time that picks the bucket.
        @param worker: must be letters, digits, C{_} or C{.}; each process
            sharing C{directory} needs its own.
        @param executor: runs the blocking writes; by default the thread
            pool of C{clock} (which must then be the reactor).
        """
        if not valid_worker(worker):
            raise ValueError(f"worker name {worker!r}: use letters, digits, _ and .")
        if bucket_seconds <= 0 or 86400 % bucket_seconds:
            raise ValueError("bucket_seconds must divide a day")
        self.directory = directory
        self.worker = worker
        self.bucket_seconds = bucket_seconds
        self.retention = retention
        self._clock = clock
        self._executor = executor if executor is not None else _thread_executor(clock)
        # Counted in place, one list of COLUMNS per row: a session's
        # accounting is two additions, and the frozen TLSCounts values
        # are only built when a report, /metrics or a flush asks.
        self._buckets: dict[int, dict[Key, list[int]]] = {}
        self._totals: dict[tuple[Direction, str], list[int]] = {}
        self._dirty: set[int] = set()
        self._totals_dirty = False
        self._lock = DeferredLock()
        self._swept: int | None = None
        self._load()

    # -- start-up --------------------------------------------------------------

    def _load(self) -> None:
        horizon = self._clock.seconds() - self.retention
        for bucket, worker, path in list_buckets(self.directory):
            if worker != self.worker or bucket + self.bucket_seconds <= horizon:
                continue
            try:
                with open(path, "rb") as f:
                    start, _, rows = decode_bucket(f.read())
            except (OSError, ReportFormatError) as e:
                log.warn("Skipping report file {path}: {problem}", path=path, problem=str(e))
                continue
            slot = self._slot(start)
            mine = self._buckets.setdefault(slot, {})
            for key, counts in rows.items():
                _accumulate(mine, key, counts.as_tuple())
        path = totals_path(self.directory, self.worker)
        try:
            with open(path, "rb") as f:
                self._totals = {
                    key: list(counts.as_tuple()) for key, counts in decode_totals(f.read()).items()
                }
        except FileNotFoundError:
            pass
        except (OSError, ReportFormatError) as e:
            log.warn("Skipping report file {path}: {problem}", path=path, problem=str(e))

    # -- counting --------------------------------------------------------------

    def _slot(self, when: float) -> int:
        return int(when // self.bucket_seconds) * self.bucket_seconds

    def add(self, direction: Direction, domain: str | None, ip: str, counts: TLSCounts) -> None:
        """
        Add C{counts} to the row C{(direction, domain, ip)} of the current
        bucket.  The domain is compared without case or trailing dot.
        """
        bucket, total = self._rows(direction, domain, ip)
        for index, value in enumerate(counts.as_tuple()):
            bucket[index] += value
            total[index] += value

    def _rows(
        self, direction: Direction, domain: str | None, ip: str
    ) -> tuple[list[int], list[int]]:
        """
        The row C{(direction, domain, ip)} of the current bucket and the
        totals row it adds to, made if new and marked as changed.
        """
        domain = _domain(domain)
        slot = self._slot(self._clock.seconds())
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = {}
        key: Key = (direction, domain, ip)
        row = bucket.get(key)
        if row is None:
            row = bucket[key] = [0] * len(COLUMNS)
        # The totals count incoming mail per direction only: sender domains
        # are unbounded, and /metrics must not grow with every spammer.
        # Destination domains are bounded too (mail relayed for spammers
        # goes to theirs): past MAX_TOTAL_DOMAINS, new ones add to one row.
        total_key = (direction, domain if direction is Direction.OUTGOING else "")
        total = self._totals.get(total_key)
        if total is None:
            if len(self._totals) >= MAX_TOTAL_DOMAINS:
                total_key = (direction, OTHER_DOMAINS)
                total = self._totals.get(total_key)
            if total is None:
                total = self._totals[total_key] = [0] * len(COLUMNS)
        self._dirty.add(slot)
        self._totals_dirty = True
        return row, total

    def _count(
        self,
        direction: Direction,
        domain: str | None,
        ip: str,
        level: object,
        tls: bool | None,
        messages: int,
    ) -> None:
        column, message_column = connection_columns(level_of(level), tls)
        bucket, total = self._rows(direction, domain, ip)
        bucket[column] += 1
        total[column] += 1
        bucket[message_column] += messages
        total[message_column] += messages

    def incoming(
        self,
        sender_domain: str | None,
        ip: str,
        level: object,
        tls: bool | None,
        messages: int = 0,
    ) -> None:
        """
        Count one incoming connection when it ends.

        @param sender_domain: the domain the row is filed under (the
            verified reverse DNS name's domain, or the envelope sender's
            domain: the caller's choice, consistently); C{None} or C{""}
            when unknown.
        @param ip: the client's address.
        @param level: the mail flow policy's L{TLSMode} (or a report
            L{Level} or its name).
        @param tls: C{True} if TLS was up, C{False} if a handshake failed,
            C{None} if the client never started TLS.  Under C{required}, no
            TLS at all counts as a required failure.
        @param messages: messages accepted on the connection.
        """
        self._count(Direction.INCOMING, sender_domain, ip, level, tls, messages)

    def outgoing(self, domain: str, level: object, tls: bool | None, messages: int = 0) -> None:
        """
        Count one delivery connection when it ends.

        @param domain: the destination domain.
        @param level: the effective L{DestinationTLS} (never C{default}).
        @param tls: C{True} if TLS was up, C{False} if it failed (including
            a required setting whose server did not offer STARTTLS),
            C{None} if it was not attempted (C{no}, or C{preferred} and
            STARTTLS not offered).
        @param messages: messages the next hop accepted on it.
        """
        self._count(Direction.OUTGOING, domain, "", level, tls, messages)

    # -- reading --------------------------------------------------------------

    def rows(self, since: float | None = None) -> list[tuple[int, int, Key, TLSCounts]]:
        """
        This process's rows, as L{esa_tls.report.storage.read_buckets}
        gives them, for buckets overlapping C{since} or later.
        """
        out: list[tuple[int, int, Key, TLSCounts]] = []
        for slot, bucket in self._buckets.items():
            if since is not None and slot + self.bucket_seconds <= since:
                continue
            out.extend((slot, self.bucket_seconds, key, TLSCounts(*c)) for key, c in bucket.items())
        return out

    def report(self, window: float, now: float | None = None) -> Deferred[TLSReport]:
        """
        The report for the last C{window} seconds: this process's counts
        from memory, those of other workers sharing the directory from
        their files (read in a thread).
        """
        end = self._clock.seconds() if now is None else now
        start = end - window
        mine = self.rows(start)
        d = self._executor(lambda: read_buckets(self.directory, start, exclude_worker=self.worker))
        return d.addCallback(
            lambda others: build_report([*mine, *others], start, end, self.bucket_seconds)
        )

    def totals(self) -> Deferred[dict[tuple[Direction, str], TLSCounts]]:
        """
        The counts since the data directory was made, by direction and
        (outgoing) destination domain, of every worker: what /metrics
        exposes.
        """
        mine = {key: TLSCounts(*row) for key, row in self._totals.items()}

        def merge(
            others: dict[tuple[Direction, str], TLSCounts],
        ) -> dict[tuple[Direction, str], TLSCounts]:
            for key, counts in mine.items():
                others[key] = others.get(key, TLSCounts()) + counts
            return others

        d = self._executor(lambda: read_totals(self.directory, exclude_worker=self.worker))
        return d.addCallback(merge)

    # -- persistence -----------------------------------------------------------

    def flush(self) -> Deferred[None]:
        """
        Write the buckets changed since the last flush, and the totals, in
        a thread; drop buckets older than the retention (from memory and
        disk).  Flushes never overlap.

        @return: a L{Deferred} firing when the files are durable; it fails
            if they could not be written (their changes then stay pending
            for the next flush).
        """
        return self._lock.run(self._flush)

    def _flush(self) -> Deferred[None]:
        now = self._clock.seconds()
        horizon = now - self.retention
        for slot in [s for s in self._buckets if s + self.bucket_seconds <= horizon]:
            del self._buckets[slot]
            self._dirty.discard(slot)
        dirty = sorted(self._dirty)
        writes = [
            (
                bucket_path(self.directory, slot, self.worker),
                encode_bucket(slot, self.bucket_seconds, self.worker, _values(self._buckets[slot])),
            )
            for slot in dirty
            if slot in self._buckets
        ]
        if self._totals_dirty:
            writes.append(
                (
                    totals_path(self.directory, self.worker),
                    encode_totals(self.worker, _values(self._totals)),
                )
            )
        self._dirty.clear()
        totals_dirty, self._totals_dirty = self._totals_dirty, False
        if not writes and not self._expired_on_disk(horizon):
            return succeed(None)

        def work() -> None:
            for path, data in writes:
                write_atomically(path, data)
            for bucket, worker, path in list_buckets(self.directory):
                if worker == self.worker and bucket + self.bucket_seconds <= horizon:
                    os.unlink(path)

        def failed(failure: Any) -> Any:
            self._dirty.update(s for s in dirty if s in self._buckets)
            self._totals_dirty = self._totals_dirty or totals_dirty
            log.failure("Could not write the TLS report counters", failure)
            return failure

        return self._executor(work).addErrback(failed)

    def _expired_on_disk(self, horizon: float) -> bool:
        """
        Whether a retention sweep is due: at most once per bucket.
        """
        slot = self._slot(horizon)
        due = self._swept != slot
        self._swept = slot
        return due

    def service(self, interval: float = DEFAULT_FLUSH_INTERVAL) -> Service:
        """
        A service that flushes every C{interval} seconds and once more when
        it stops (stopping waits for that flush).
        """
        return _FlushService(self, interval)


class _FlushService(TimerService):
    def __init__(self, counters: TLSCounters, interval: float) -> None:
        super().__init__(interval, self._tick)
        self.counters = counters
        self.clock = counters._clock

    def _tick(self) -> Deferred[None]:
        # A failed flush is logged and retried at the next tick.
        return self.counters.flush().addErrback(lambda _: None)

    def stopService(self) -> Deferred[None]:
        d: Deferred[Any] = maybeDeferred(TimerService.stopService, self)
        d.addCallback(lambda _: self.counters.flush())
        # A failed last flush is already logged; stopping goes on.
        return d.addErrback(lambda _: None)
