# -*- test-case-name: tests.test_workers_process -*-
"""
All cores: C{twistd -n esa-tls --workers N} runs N reactor processes that
share the listening sockets, the spool, and the connection limits.

One Python process runs one reactor on one core.  A gateway on a machine
with several cores therefore runs several processes, and the questions are
how they share the work and how they keep the limits an administrator set
for I{the gateway}, not for each process:

  - B{Sockets.}  The C{twistd} process (worker 0) binds every listener
    itself, before anything else, and hands the listening descriptors to
    workers 1..N-1, which it starts as child processes
    (C{python -m esa_tls.worker}); each worker, the parent included,
    adopts them with C{reactor.adoptStreamPort}.  The kernel gives each new
    connection to whichever process accepts first: a busy worker accepts
    less.  (C{SO_REUSEPORT} would hash connections to workers regardless
    of how busy they are, and drop the connections queued on a worker that
    dies.)
  - B{Spool.}  One spool directory: L{esa_tls.spool.DurableSpool} and
    L{esa_tls.ids.IdAllocator} are already safe for several processes.
  - B{Limits.}  A listener's Max Concurrency and each policy's concurrent
    connections per IP are counted in one small table in shared memory
    (L{SharedLimits}), changed under a POSIX record lock: every check is
    exact across workers, costs two system calls, and needs no round trip
    to a coordinator, so the session code stays synchronous.  A session
    takes the lock once when accepted (listener slot and address
    together) and once when it ends (L{SharedListenerFactory}).  Each worker
    counts in its own column, so that when a worker dies its connections
    (which died with it) are subtracted by clearing its column, and nothing
    leaks.  The per-address tables are made at start for a Max Concurrency
    of at least L{TABLE_CONCURRENCY_FLOOR}; a reload that raises a
    listener's beyond its table says so, and a restart applies it.
  - B{Signals.}  SIGTERM stops the parent, which stops every worker
    (each says 421 to its sessions and finishes its commits) before it
    exits; SIGHUP is forwarded, so each worker reloads the configuration.
    A listener a reload removed is closed by each process at its own
    reload (the parent's socket included, and no worker started later is
    given it), so its port closes once all have reloaded; a worker started
    again after a reload that added a listener does not serve it either,
    until the restart every process needs for it.  A worker that exits
    because the file does not load is started again at the parent's next
    reload that is not refused, not over and over meanwhile.
    A worker whose parent dies is killed by the kernel
    (C{PR_SET_PDEATHSIG}), or sees its standard input close, so that a
    killed gateway leaves no orphan holding the ports.
  - B{Logs.}  Workers send their log events to the parent as JSON lines on
    their standard output; the parent logs them under C{worker N}.  Mail log
    lines are the exception: every worker appends them to C{mail.log}
    itself, one C{write} per reactor turn (L{esa_tls.maillog.MailLogFile}).

C{--workers 1} (and library use) bypasses all of this: the gateway is
exactly the single process it always was.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import fcntl
import ipaddress
import mmap
import os
import signal
import socket
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import lru_cache
from typing import IO, Any

from attrs import frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    eventAsJSON,
    eventFromJSON,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from esa_tls.config.model import GatewayConfig, Listener, WorkerCPUAffinity
from esa_tls.inbound.limits import ConnectionCounter, RecipientRateLimiter
from esa_tls.inbound.listener import Busy, ListenerFactory
from esa_tls.inbound.session import InboundSession, counts_connection
from esa_tls.maillog import is_maillog_event

__all__ = [
    "AdoptedEndpoint",
    "SharedConnectionCounter",
    "SharedLimits",
    "SharedListenerFactory",
    "SharedRecipientRates",
    "WorkerPool",
    "WorkerRole",
    "bind_listeners",
    "cpu_plan",
    "default_workers",
    "pin_to_cpu",
]

log = Logger()


def default_workers() -> int:
    """
    The number of cores this process may run on.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cpu_plan(
    workers: int, setting: WorkerCPUAffinity, allowed: Collection[int] | None = None
) -> tuple[int, ...]:
    """
    The CPU each process of a gateway of C{workers} processes keeps to
    (index 0: the parent), under C{[system] worker_cpu_affinity}.

    @param allowed: the CPUs the gateway may run on; by default this
        process's affinity (what C{taskset} or a container left it).
    @return: one CPU per process, or C{()} for none pinned: C{off}, one
        process, or more processes than CPUs (two reactors on one CPU
        would only take turns; the scheduler does better there).
    """
    if setting is WorkerCPUAffinity.OFF or workers < 2:
        return ()
    if allowed is None:
        try:
            allowed = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            return ()
    cpus = sorted(allowed)
    if len(cpus) < workers:
        return ()
    return tuple(cpus[:workers])


def pin_to_cpu(cpu: int) -> bool:
    """
    Keep this process on C{cpu}: every thread it has, and so every thread
    they start from now on.  Called before the reactor runs.  A refusal
    (no such call here, a seccomp profile) is logged and changes nothing.

    @return: whether the process is now kept on C{cpu}.
    """
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    try:
        for tid in threads:
            try:
                os.sched_setaffinity(tid, {cpu})
            except ProcessLookupError:  # a thread that has just ended
                pass
    except (AttributeError, OSError) as e:
        log.warn("could not keep this process on CPU {cpu}: {error}", cpu=cpu, error=e)
        return False
    return True


# -- the shared table ------------------------------------------------------------

#: The descriptor on which a worker tells its parent the MIDs it committed.
_ANNOUNCE_FD = 4

_MAGIC = b"ESAWRK02"
_HEADER = struct.Struct("<8sIIQI4x")
_DIRECTORY_ENTRY = struct.Struct("<64sQI4x")
_EMPTY_KEY = b"\x00" * 16


@lru_cache(maxsize=4096)
def _address_key(ip: str) -> bytes:
    """
    Sixteen octets naming a peer: the IPv6 address, or the IPv4-mapped one,
    so that C{192.0.2.1} and C{::ffff:192.0.2.1} are one peer.  Anything
    else (an empty string for a UNIX socket) gets a digest, never the empty
    key.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return b"\xff" + zlib.crc32(ip.encode("utf-8", "replace")).to_bytes(4, "big") + b"\xff" * 11
    if isinstance(address, ipaddress.IPv4Address):
        return b"\x00" * 10 + b"\xff\xff" + address.packed
    return address.packed if address.packed != _EMPTY_KEY else b"\x00" * 15 + b"\x01"


#: The Max Concurrency every listener's per-IP table is sized for at least,
#: so that a reload can raise a listener's (the ESA's default is 50) up to
#: the seed's 1000 without a restart.  The table lives in a sparse file:
#: only the pages holding addresses in use take memory.
TABLE_CONCURRENCY_FLOOR = 1000


def _table_slots(max_concurrency: int) -> int:
    """
    Slots for a listener's per-IP table: a power of two with room to spare.
    The addresses counted at once can never outnumber the connections the
    listener holds, so the table cannot fill while the listener's Max
    Concurrency is at most L{SharedConnectionCounter.capacity}: the larger
    of what it was at start and L{TABLE_CONCURRENCY_FLOOR}.
    """
    wanted = 2 * max(max_concurrency, TABLE_CONCURRENCY_FLOOR) + 1
    slots = 1
    while slots < wanted:
        slots *= 2
    return slots


class SharedLimits:
    """
    The connection counts of every listener, in a file mapped by every
    worker.

    Layout: a header (magic, workers, listeners, where the rates table
    is), a directory of listeners (name, offset, slots), per listener a
    region: a lock byte, one connection total per worker, then an
    open-addressing table of C{slots} entries, each an address key, a used
    flag and one count per worker; and last the recipients-per-hour table
    (L{SharedRecipientRates}).  All changes to a region happen under a POSIX record lock on
    its first byte; POSIX locks belong to processes, so the same inherited
    file locks correctly between them.

    @ivar workers: the number of worker columns.
    @ivar index: the column this process counts in.
    """

    def __init__(self, file: IO[bytes], index: int) -> None:
        """
        Map an existing table (see L{create}); C{file} stays open for as
        long as the table is used.
        """
        self._file = file
        self._fd = file.fileno()
        size = os.fstat(self._fd).st_size
        self._map = mmap.mmap(self._fd, size)
        magic, workers, count, rates, rate_slots = _HEADER.unpack_from(self._map, 0)
        if magic != _MAGIC:
            raise ValueError("not a shared limits table")
        if not 0 <= index < workers:
            raise ValueError(f"worker index {index} out of range 0-{workers - 1}")
        self.workers = workers
        self.index = index
        self._listeners: dict[str, SharedConnectionCounter] = {}
        for n in range(count):
            raw, offset, slots = _DIRECTORY_ENTRY.unpack_from(
                self._map, _HEADER.size + n * _DIRECTORY_ENTRY.size
            )
            name = raw.rstrip(b"\x00").decode("utf-8")
            self._listeners[name] = SharedConnectionCounter(self, offset, slots)
        self.rates = SharedRecipientRates(self, rates, rate_slots)

    @classmethod
    def create(
        cls, listeners: Mapping[str, int], workers: int, rate_slots: int = 16384
    ) -> SharedLimits:
        """
        Make a new, zeroed table in an anonymous file, for the parent
        (worker 0).

        @param listeners: each listener's name and Max Concurrency.
        @param workers: how many workers will count in it.
        @param rate_slots: how many sending addresses the recipients-per-hour
            table remembers at once (a power of two); see
            L{SharedRecipientRates}.
        """
        if workers < 1:
            raise ValueError("at least one worker")
        layout: list[tuple[bytes, int, int]] = []
        offset = _HEADER.size + len(listeners) * _DIRECTORY_ENTRY.size
        for name, max_concurrency in sorted(listeners.items()):
            encoded = name.encode("utf-8")
            if len(encoded) > 64:
                raise ValueError(f"listener name too long for the shared table: {name!r}")
            offset = (offset + 63) // 64 * 64
            slots = _table_slots(max_concurrency)
            layout.append((encoded, offset, slots))
            offset += SharedConnectionCounter.region_size(workers, slots)
        if rate_slots < 1 or rate_slots & (rate_slots - 1):
            raise ValueError("rate_slots must be a power of two")
        rates = (offset + 63) // 64 * 64
        offset = rates + SharedRecipientRates.region_size(rate_slots)
        file = tempfile.TemporaryFile()
        # Sparse: pages of the table are only allocated once touched.
        file.truncate(max(offset, mmap.PAGESIZE))
        header = bytearray(_HEADER.pack(_MAGIC, workers, len(layout), rates, rate_slots))
        for encoded, region, slots in layout:
            header += _DIRECTORY_ENTRY.pack(encoded, region, slots)
        file.write(bytes(header))
        file.flush()
        return cls(file, 0)

    @classmethod
    def attach(cls, fd: int, index: int) -> SharedLimits:
        """
        Map the table a worker inherited as descriptor C{fd}.
        """
        return cls(os.fdopen(fd, "r+b", buffering=0), index)

    def fileno(self) -> int:
        return self._fd

    def listener(self, name: str) -> SharedConnectionCounter | None:
        """
        The counters of listener C{name}, or C{None} for a listener added
        since the table was made (it then counts in its own process only,
        until the restart that adding a listener needs anyway).
        """
        return self._listeners.get(name)

    def clear_worker(self, index: int) -> None:
        """
        Forget every connection counted by worker C{index}: it has exited,
        and its connections with it.
        """
        for counter in self._listeners.values():
            counter.clear_column(index)

    def lock(self, offset: int) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, offset)

    def unlock(self, offset: int) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, offset)

    @property
    def buffer(self) -> mmap.mmap:
        return self._map

    def close(self) -> None:
        self._map.close()
        self._file.close()


class SharedConnectionCounter(ConnectionCounter):
    """
    One listener's connections, counted across workers: the listener-wide
    total for its Max Concurrency, and the per-address counts for each
    policy's concurrent connections per IP.  It has the methods of
    L{esa_tls.inbound.limits.ConnectionCounter}, so a L{ListenerFactory}
    takes it as its C{connections}.
    """

    def __init__(self, table: SharedLimits, offset: int, slots: int) -> None:
        super().__init__()
        self._table = table
        self._offset = offset
        self._slots = slots
        workers = table.workers
        self._totals = struct.Struct(f"<{workers}i")
        self._entry = struct.Struct(f"<16sI{workers}i")
        self._counts = struct.Struct(f"<{workers}i")
        self._totals_at = offset + 8
        self._slots_at = self.slots_offset(offset, workers)
        self._column = table.index

    @property
    def capacity(self) -> int:
        """
        The highest Max Concurrency whose per-IP counts this table always
        has room for (half its slots: open addressing needs the spare).
        """
        return (self._slots - 1) // 2

    @staticmethod
    def slots_offset(offset: int, workers: int) -> int:
        return offset + (8 + 4 * workers + 7) // 8 * 8

    @classmethod
    def region_size(cls, workers: int, slots: int) -> int:
        entry = struct.calcsize(f"<16sI{workers}i")
        return cls.slots_offset(0, workers) + slots * entry

    # -- the listener total ----------------------------------------------------

    def acquire_slot(self, limit: int) -> bool:
        """
        Count one more connection to the listener unless C{limit}
        (non-positive: unlimited) connections are open in all workers.
        """
        self._table.lock(self._offset)
        try:
            return self._acquire_slot(limit)
        finally:
            self._table.unlock(self._offset)

    def release_slot(self) -> None:
        self._table.lock(self._offset)
        try:
            self._release_slot()
        finally:
            self._table.unlock(self._offset)

    def admit(self, slot_limit: int, ip: str, limit: int) -> tuple[bool, bool]:
        """
        L{acquire_slot} and, if the listener has room, L{acquire} for
        C{ip}, in one locked section: a connection whose host the HAT
        places at once costs one lock instead of two.

        @return: whether the slot was counted, and whether C{ip} was
            (C{False} when the slot was not).
        """
        key = _address_key(ip)
        self._table.lock(self._offset)
        try:
            if not self._acquire_slot(slot_limit):
                return False, False
            return True, self._acquire(key, ip, limit)
        finally:
            self._table.unlock(self._offset)

    def release_connection(self, ip: str | None) -> None:
        """
        L{release_slot} and, unless C{ip} is C{None}, L{release} for
        C{ip}, in one locked section: what a closing session gives back.
        """
        key = None if ip is None else _address_key(ip)
        self._table.lock(self._offset)
        try:
            self._release_slot()
            if key is not None:
                self._release(key)
        finally:
            self._table.unlock(self._offset)

    def _acquire_slot(self, limit: int) -> bool:
        buffer = self._table.buffer
        totals = list(self._totals.unpack_from(buffer, self._totals_at))
        if limit > 0 and sum(totals) >= limit:
            return False
        totals[self._column] += 1
        self._totals.pack_into(buffer, self._totals_at, *totals)
        return True

    def _release_slot(self) -> None:
        buffer = self._table.buffer
        totals = list(self._totals.unpack_from(buffer, self._totals_at))
        totals[self._column] = max(0, totals[self._column] - 1)
        self._totals.pack_into(buffer, self._totals_at, *totals)

    def total(self) -> int:
        return sum(self._totals.unpack_from(self._table.buffer, self._totals_at))

    # -- per address (the ConnectionCounter interface) --------------------------

    def _home(self, key: bytes) -> int:
        return zlib.crc32(key) & (self._slots - 1)

    def _at(self, slot: int) -> int:
        return self._slots_at + slot * self._entry.size

    def _find(self, key: bytes) -> tuple[int, bool]:
        """
        @return: the slot holding C{key} and C{True}, or the empty slot
            where it would go and C{False}; C{(-1, False)} when the table is
            full without it.
        """
        buffer = self._table.buffer
        slot = self._home(key)
        for _ in range(self._slots):
            at = self._at(slot)
            used = buffer[at + 16 : at + 20] != b"\x00\x00\x00\x00"
            if not used:
                return slot, False
            if buffer[at : at + 16] == key:
                return slot, True
            slot = (slot + 1) & (self._slots - 1)
        return -1, False

    def acquire(self, ip: str, limit: int) -> bool:
        """
        Count one more connection from C{ip}, unless that would exceed
        C{limit} (non-positive: unlimited) in all workers together.
        """
        key = _address_key(ip)
        self._table.lock(self._offset)
        try:
            return self._acquire(key, ip, limit)
        finally:
            self._table.unlock(self._offset)

    def release(self, ip: str) -> None:
        key = _address_key(ip)
        self._table.lock(self._offset)
        try:
            self._release(key)
        finally:
            self._table.unlock(self._offset)

    def _acquire(self, key: bytes, ip: str, limit: int) -> bool:
        buffer = self._table.buffer
        slot, found = self._find(key)
        if slot < 0:
            # Only after a reload raised Max Concurrency past the table's
            # capacity (said at the reload): the listener's own limit
            # still holds.
            log.warn("shared connection table full; not counting {ip}", ip=ip)
            return True
        at = self._at(slot)
        if found:
            entry = list(self._entry.unpack_from(buffer, at))
            counts = entry[2:]
            if limit > 0 and sum(counts) >= limit:
                return False
        else:
            entry = [key, 1] + [0] * self._table.workers
        entry[2 + self._column] += 1
        self._entry.pack_into(buffer, at, *entry)
        return True

    def _release(self, key: bytes) -> None:
        buffer = self._table.buffer
        slot, found = self._find(key)
        if not found:
            return
        at = self._at(slot)
        entry = list(self._entry.unpack_from(buffer, at))
        entry[2 + self._column] = max(0, entry[2 + self._column] - 1)
        if any(entry[2:]):
            self._entry.pack_into(buffer, at, *entry)
        else:
            self._delete(slot)

    def count(self, ip: str) -> int:
        key = _address_key(ip)
        self._table.lock(self._offset)
        try:
            slot, found = self._find(key)
            if not found:
                return 0
            return sum(self._entry.unpack_from(self._table.buffer, self._at(slot))[2:])
        finally:
            self._table.unlock(self._offset)

    def _delete(self, slot: int) -> None:
        """
        Empty C{slot} and move later entries of its probe run back, so that
        every key stays reachable from its home slot without tombstones
        (Knuth's algorithm R for linear probing).
        """
        buffer = self._table.buffer
        size = self._entry.size
        mask = self._slots - 1
        hole = slot
        probe = slot
        while True:
            probe = (probe + 1) & mask
            at = self._at(probe)
            if buffer[at + 16 : at + 20] == b"\x00\x00\x00\x00":
                break
            home = self._home(bytes(buffer[at : at + 16]))
            # The entry may move into the hole unless its home lies
            # cyclically in (hole, probe].
            if hole <= probe:
                stays = hole < home <= probe
            else:
                stays = home > hole or home <= probe
            if stays:
                continue
            buffer[self._at(hole) : self._at(hole) + size] = buffer[at : at + size]
            hole = probe
        at = self._at(hole)
        buffer[at : at + size] = b"\x00" * size

    def clear_column(self, column: int) -> None:
        """
        Drop worker C{column}'s counts (see L{SharedLimits.clear_worker}).
        """
        buffer = self._table.buffer
        self._table.lock(self._offset)
        try:
            totals = list(self._totals.unpack_from(buffer, self._totals_at))
            totals[column] = 0
            self._totals.pack_into(buffer, self._totals_at, *totals)
            keep = []
            for slot in range(self._slots):
                at = self._at(slot)
                entry = list(self._entry.unpack_from(buffer, at))
                if not entry[1]:
                    continue
                entry[2 + column] = 0
                if any(entry[2:]):
                    keep.append(entry)
            size = self._entry.size
            buffer[self._slots_at : self._slots_at + self._slots * size] = (
                b"\x00" * self._slots * size
            )
            for entry in keep:
                slot, _ = self._find(entry[0])
                self._entry.pack_into(buffer, self._at(slot), *entry)
        finally:
            self._table.unlock(self._offset)


class SharedRecipientRates(RecipientRateLimiter):
    """
    Recipients accepted per sending address over the last hour, counted
    across workers: the ESA's Max. Recipients Per Hour is per remote host
    for the whole gateway (reference 3.2), so a client must not get N times
    its allowance by landing on N workers.  It has the methods of
    L{esa_tls.inbound.limits.RecipientRateLimiter}.

    Each entry is an address key, the second of its last change, and sixty
    one-minute buckets (minute, count), so an entry answers for the sliding
    hour on its own and stale buckets need no clean-up.  The table has a
    fixed number of entries: an address is looked for within a short probe
    window from its home slot, and a new address takes the first free or
    expired slot there, or else the one changed least recently.  Only an
    address idle for longer than every other one in its window can thus be
    forgotten, and only when more addresses than the table holds sent mail
    within the hour.
    """

    #: Slots an address may be found in, from its home slot on.
    WINDOW = 32
    _ENTRY = struct.Struct("<16sI120I")

    def __init__(self, table: SharedLimits, offset: int, slots: int, clock: Any = None) -> None:
        super().__init__(clock)
        self._table = table
        self._offset = offset
        self._slots = slots
        self._clock = clock

    @classmethod
    def region_size(cls, slots: int) -> int:
        return 8 + slots * cls._ENTRY.size

    def _now(self) -> int:
        return int(self._clock.seconds() if self._clock is not None else time.time())

    def _at(self, slot: int) -> int:
        return self._offset + 8 + slot * self._ENTRY.size

    def _find(self, key: bytes, now: int, create: bool) -> tuple[int, list[Any] | None]:
        # list[Any]: [key, last change (s), minute0, count0, ... minute59, count59]
        """
        @return: the slot of C{key} and its entry; or, with C{create}, the
            slot a new entry for it goes to and C{None}; or C{(-1, None)}.
        """
        buffer = self._table.buffer
        home = zlib.crc32(key) & (self._slots - 1)
        choice, choice_age = -1, -1
        for step in range(min(self.WINDOW, self._slots)):
            slot = (home + step) & (self._slots - 1)
            at = self._at(slot)
            stored = buffer[at : at + 16]
            last = struct.unpack_from("<I", buffer, at + 16)[0]
            if stored == key and last:
                return slot, list(self._ENTRY.unpack_from(buffer, at))
            if create:
                age = now - last if last else 1 << 32
                if age >= 3600:
                    age = 1 << 32  # free or expired: as good as empty
                if age > choice_age:
                    choice, choice_age = slot, age
        return choice, None

    def _count(self, entry: list[Any], minute: int) -> int:
        buckets = entry[2:]
        return sum(buckets[2 * i + 1] for i in range(60) if minute - 60 < buckets[2 * i] <= minute)

    def count(self, ip: str) -> int:
        key = _address_key(ip)
        now = self._now()
        self._table.lock(self._offset)
        try:
            _, entry = self._find(key, now, False)
            return 0 if entry is None else self._count(entry, now // 60)
        finally:
            self._table.unlock(self._offset)

    def try_add(self, ip: str, limit: int) -> bool:
        """
        Count one recipient for C{ip} unless the hour's C{limit} is reached
        in all workers together (negative: no limit, but still counted).
        """
        key = _address_key(ip)
        now = self._now()
        minute = now // 60
        self._table.lock(self._offset)
        try:
            slot, entry = self._find(key, now, True)
            if entry is None:
                if slot < 0:
                    return True
                entry = [key, now, *([0] * 120)]
            elif limit >= 0 and self._count(entry, minute) >= limit:
                return False
            index = 2 + 2 * (minute % 60)
            if entry[index] != minute:
                entry[index], entry[index + 1] = minute, 0
            entry[index + 1] += 1
            entry[1] = now
            self._ENTRY.pack_into(self._table.buffer, self._at(slot), *entry)
            return True
        finally:
            self._table.unlock(self._offset)


class SharedListenerFactory(ListenerFactory):
    """
    A L{ListenerFactory} whose Max Concurrency counts the sessions of all
    workers, and whose per-IP counts are shared too.

    Every change to the shared counts takes a lock (two system calls, and
    a wait when another worker holds it), so a session takes it twice, not
    four times: when the HAT can place the host from its address alone (it
    usually can), the connection is counted against the listener and its
    address together as it is accepted, and the session finds its per-IP
    answer waiting in L{admit}; when it ends, both counts go back together
    in L{session_closed}.
    """

    shared: SharedConnectionCounter

    def share(self, counter: SharedConnectionCounter) -> None:
        self.shared = counter
        self.connections = counter
        self._holding: set[InboundSession] = set()
        # Per-IP answers given at accept time, not yet taken by their
        # session: the address, the limit it was counted against, and
        # whether it was counted.
        self._admitted: dict[InboundSession, tuple[str, int, bool]] = {}

    def _address_limit(self, ip: str | None) -> int | None:
        """
        The per-IP limit a session from C{ip} will be counted against as
        soon as it starts, when the HAT can tell from the address alone;
        else C{None}.
        """
        if not ip:
            return None
        verdict = self.classify_now(ip)
        if verdict is None or not counts_connection(verdict.policy, self.settings.reject_at_rcpt):
            return None
        return verdict.policy.max_concurrency

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        ip: str | None = getattr(addr, "host", None)
        limit = self._address_limit(ip)
        if ip is None or limit is None:
            admitted: bool | None = None
            room = self.shared.acquire_slot(self.config.max_concurrency)
        else:
            room, admitted = self.shared.admit(self.config.max_concurrency, ip, limit)
        if not room:
            # At the listener's Max Concurrency in all workers together.
            busy = Busy()
            busy.factory = self
            return busy
        protocol = super().buildProtocol(addr)
        if isinstance(protocol, InboundSession):
            self._holding.add(protocol)
            if ip is not None and limit is not None and admitted is not None:
                self._admitted[protocol] = (ip, limit, admitted)
        else:
            self.shared.release_connection(ip if admitted else None)
        return protocol

    def admit(self, session: InboundSession, ip: str, limit: int) -> bool:
        early = self._admitted.pop(session, None)
        if early is not None:
            early_ip, early_limit, counted = early
            if early_ip == ip and early_limit == limit:
                return counted
            # Not the address or policy the session ended up with (a
            # PROXY header, a reload in between): count it afresh.
            if counted:
                self.shared.release(early_ip)
        return super().admit(session, ip, limit)

    def session_closed(self, session: InboundSession, counted_ip: str | None = None) -> None:
        if session in self._holding:
            self._holding.discard(session)
            early = self._admitted.pop(session, None)
            if early is not None and early[2]:
                # Counted at accept time, never taken by the session.
                if counted_ip is not None:
                    self.shared.release(counted_ip)
                counted_ip = early[0]
            self.shared.release_connection(counted_ip)
            counted_ip = None
        super().session_closed(session, counted_ip)


# -- sockets -------------------------------------------------------------------------------


def _family(listener: Listener) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in listener.interface.ip else socket.AF_INET


def listen_error_text(error: BaseException) -> str:
    """
    Why a port could not be opened, for an administrator: the system's
    reason (C{Address already in use}), with a hint for a privileged port.

    @param error: an C{OSError}, or Twisted's C{CannotListenError} around one.
    """
    cause = getattr(error, "socketError", None) or error
    text = str(getattr(cause, "strerror", None) or cause)
    number = getattr(cause, "errno", None)
    if number == errno.EACCES:
        text += " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    elif number == errno.EADDRNOTAVAIL:
        text += " (the interface address is not one of this machine's)"
    return text


def bind_listeners(config: GatewayConfig) -> dict[str, socket.socket]:
    """
    Bind and listen on every listener's address, as Twisted's own TCP port
    would (C{SO_REUSEADDR}, backlog C{tcp_queue}), so that the sockets
    exist before any worker does.

    @raise OSError: an address could not be bound; nothing stays bound.  Its
        C{strerror} names the listener, its address and the reason.
    """
    bound: dict[str, socket.socket] = {}
    try:
        for listener in config.listeners.values():
            family = _family(listener)
            sock = socket.socket(family, socket.SOCK_STREAM)
            bound[listener.name] = sock
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((listener.interface.ip, listener.port))
                sock.listen(listener.tcp_queue)
            except OSError as e:
                raise OSError(
                    e.errno,
                    f"listener {listener.name} on {listener.interface.ip} port "
                    f"{listener.port}: {listen_error_text(e)}",
                ) from e
            sock.setblocking(False)
    except BaseException:
        for sock in bound.values():
            sock.close()
        raise
    return bound


@implementer(IStreamServerEndpoint)
@frozen
class AdoptedEndpoint:
    """
    A server endpoint over a socket that is already listening (bound by the
    parent): L{twisted.application.internet.StreamServerEndpointService}
    listens through it as through any endpoint.
    """

    reactor: Any
    fd: int
    family: socket.AddressFamily

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        port: IListeningPort = self.reactor.adoptStreamPort(self.fd, self.family, factory)
        return succeed(port)


@frozen
class WorkerRole:
    """
    What a gateway process is within a multi-worker gateway.

    @ivar index: 0 for the parent (the C{twistd} process), 1..N-1 for the
        workers it starts.
    @ivar workers: N.
    @ivar sockets: each listener's listening descriptor, by name.
    @ivar families: each listener's address family, by name.
    @ivar limits: the shared connection table.
    @ivar cpus: the CPU each process keeps to, by index (L{cpu_plan});
        empty when none is pinned.
    """

    index: int
    workers: int
    sockets: dict[str, int]
    families: Mapping[str, socket.AddressFamily]
    limits: SharedLimits
    cpus: tuple[int, ...] = ()

    @property
    def primary(self) -> bool:
        """
        Whether this process does the gateway's singular jobs (certificate
        alerts, the admin page, delivery): the parent.
        """
        return self.index == 0

    def endpoint(self, reactor: Any, name: str) -> AdoptedEndpoint | None:
        fd = self.sockets.get(name)
        if fd is None:
            return None
        return AdoptedEndpoint(reactor, fd, self.families[name])

    def counter(self, name: str) -> SharedConnectionCounter | None:
        return self.limits.listener(name)

    def release(self, name: str) -> int | None:
        """
        Forget listener C{name}'s listening descriptor (a reload removed
        the listener), so that no worker started from now on is given it.

        @return: the descriptor, for the caller to close; C{None}: none.
        """
        return self.sockets.pop(name, None)

    def rates(self, clock: Any) -> SharedRecipientRates:
        """
        The gateway-wide recipients-per-hour counter, on C{clock}.
        """
        shared = self.limits.rates
        return SharedRecipientRates(shared._table, shared._offset, shared._slots, clock)


# -- the parent's side -----------------------------------------------------------


class _WorkerProtocol(ProcessProtocol):
    """
    One worker as its parent sees it: its log events come in on its
    standard output, and its end is reported to the pool.
    """

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self._out = b""
        self._err = b""
        self._announced = b""
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != _ANNOUNCE_FD:
            super().childDataReceived(childFD, data)
            return
        self._announced += data
        *lines, self._announced = self._announced.split(b"\n")
        for line in lines:
            # A MID is at most twenty digits (a 64-bit counter); anything
            # else on the pipe is passed over, never allowed to raise
            # here, which would close the pipe for the worker's lifetime.
            if line.isdigit() and len(line) <= 20:
                self.pool.announce(int(line))

    def outReceived(self, data: bytes) -> None:
        self._out += data
        *lines, self._out = self._out.split(b"\n")
        for line in lines:
            self._event(line)

    def errReceived(self, data: bytes) -> None:
        self._err += data
        *lines, self._err = self._err.split(b"\n")
        for line in lines:
            if line.strip():
                log.warn(
                    "worker {index}: {line}",
                    index=self.index,
                    line=line.decode("utf-8", "replace"),
                )

    def _event(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            event = eventFromJSON(line.decode("utf-8", "replace"))
        except Exception:
            # Not JSON, or JSON naming a class Twisted does not know: an
            # exception here would close the pipe, and every later event
            # of the worker would be lost.
            event = None
        if not (
            isinstance(event, dict)
            and event.get("log_level") in _LEVELS
            and isinstance(event.get("log_time"), (int, float))
        ):
            # Not an event the observers can take.
            log.info("worker {index}: {line}", index=self.index, line=line.decode(errors="replace"))
            return
        event["log_system"] = f"worker {self.index}"
        globalLogPublisher(event)

    def processEnded(self, reason: Failure) -> None:
        if self._out:
            self._event(self._out)
        self.pool.ended(self, reason)
        self.ended.callback(None)


#: Compared by equality, not hashed: a garbled level may be a list.
_LEVELS = tuple(LogLevel.iterconstants())

#: The exit status of a worker whose configuration did not load.
_CONFIG_ERROR = 2


def _exit_code(reason: Failure) -> int | None:
    code = getattr(reason.value, "exitCode", None)
    return code if isinstance(code, int) else None


class WorkerPool(Service):
    """
    Starts, restarts, signals and stops workers 1..N-1 (the parent is
    worker 0 and serves too).

    @ivar processes: the running workers' process transports, by index.
    """

    #: Seconds before a worker that exited is started again.
    restart_delay = 1.0
    #: Seconds a stopping worker gets before it is killed.
    stop_timeout = 30.0

    def __init__(
        self,
        reactor: Any,
        role: WorkerRole,
        config_path: str | None,
        executable: str = sys.executable,
        sockets: Sequence[socket.socket] = (),
        announce: Callable[[int], None] = lambda mid: None,
    ) -> None:
        """
        @param role: the parent's L{WorkerRole} (index 0).
        @param config_path: the configuration file the workers load (C{None}:
            the embedded default).
        @param sockets: the listening sockets the parent bound; closed when
            the pool stops, so that the ports close with the last worker.
        @param announce: called with the MID of each message a worker
            committed (the parent's L{esa_tls.spool.DurableSpool.announce},
            so that its delivery engine starts on it at once).
        """
        self.reactor = reactor
        self.announce = announce
        self._sockets = list(sockets)
        self.role = role
        self.config_path = os.path.abspath(config_path) if config_path else None
        #: Where workers run: the directory the gateway started in, not
        #: the one C{twistd --rundir} moves the parent to afterwards, so
        #: that a relative C{data_dir} (the embedded default's C{var})
        #: names the parent's spool, counters and logs in every worker.
        self.directory = os.getcwd()
        self.executable = executable
        self.processes: dict[int, Any] = {}
        self._protocols: dict[int, _WorkerProtocol] = {}
        self._restarts: dict[int, Any] = {}
        # Workers that exited because the file did not load: started again
        # at the next reload that succeeds (L{reloaded}), not in a loop.
        self._unconfigured: set[int] = set()
        self._previous_sighup: Any = None

    def command(self, index: int) -> tuple[list[str], dict[int, int | str]]:
        """
        The command line and descriptor map of worker C{index}.
        """
        args = [
            self.executable,
            "-m",
            "esa_tls.worker",
            "--worker",
            str(index),
            "--workers",
            str(self.role.workers),
            "--parent",
            str(os.getpid()),
            "--limits",
            "3",
        ]
        fds: dict[int, int | str] = {
            0: "w",
            1: "r",
            2: "r",
            3: self.role.limits.fileno(),
            _ANNOUNCE_FD: "r",
        }
        target = _ANNOUNCE_FD + 1
        for name, fd in sorted(self.role.sockets.items()):
            fds[target] = fd
            family = "6" if self.role.families[name] == socket.AF_INET6 else "4"
            args += ["--listen", f"{target}:{family}:{name}"]
            target += 1
        if self.config_path is not None:
            args += ["--config", self.config_path]
        if self.role.cpus:
            args += ["--cpu", str(self.role.cpus[index])]
        return args, fds

    def startService(self) -> None:
        super().startService()
        try:
            self._previous_sighup = signal.getsignal(signal.SIGHUP)
            signal.signal(signal.SIGHUP, self._sighup)
        except ValueError:  # not the main thread (tests)
            self._previous_sighup = None
        for index in range(1, self.role.workers):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        args, fds = self.command(index)
        protocol = _WorkerProtocol(self, index)
        self._protocols[index] = protocol
        self.processes[index] = self.reactor.spawnProcess(
            protocol,
            self.executable,
            args,
            env=dict(os.environ),
            path=self.directory,
            childFDs=fds,
        )
        log.info("started worker {index} (pid {pid})", index=index, pid=self.processes[index].pid)

    def release(self, name: str) -> None:
        """
        Close the parent's socket of listener C{name}, which a reload
        removed, and start no worker with it.  The port closes once every
        worker has closed its own descriptor too, at its own reload.
        """
        fd = self.role.release(name)
        for sock in self._sockets:
            if fd is not None and sock.fileno() == fd:
                self._sockets.remove(sock)
                sock.close()
                return

    def _sighup(self, signum: int, frame: object) -> None:
        previous = self._previous_sighup
        if callable(previous):
            previous(signum, frame)
        self.reactor.callFromThread(self.signal_all, "HUP")

    def signal_all(self, name: str) -> None:
        """
        Send signal C{name} (C{"HUP"}, C{"TERM"}...) to every worker.
        """
        for process in list(self.processes.values()):
            try:
                process.signalProcess(name)
            except (OSError, Exception):
                pass

    def ended(self, protocol: _WorkerProtocol, reason: Failure) -> None:
        index = protocol.index
        if self._protocols.get(index) is not protocol:
            return
        del self._protocols[index]
        self.processes.pop(index, None)
        # Its connections died with it: take them out of the counts.
        self.role.limits.clear_worker(index)
        if self.running and _exit_code(reason) == _CONFIG_ERROR:
            # It would load the same file again, and fail again.
            self._unconfigured.add(index)
            log.error(
                "worker {index} cannot start: configuration error; "
                "it starts again at the next reload",
                index=index,
            )
        elif self.running:
            log.error(
                "worker {index} exited ({reason}); starting it again",
                index=index,
                reason=reason.getErrorMessage(),
            )
            self._restarts[index] = self.reactor.callLater(self.restart_delay, self._spawn, index)
        else:
            log.info(
                "worker {index} stopped ({reason})", index=index, reason=reason.getErrorMessage()
            )

    def reloaded(self) -> None:
        """
        The parent loaded the file (a reload that was not refused): start
        the workers that could not load it before.  After a delay, as any
        restart: the SIGHUP that may have caused this reload is being
        passed on to the workers, and must not find one still starting.
        """
        for index in sorted(self._unconfigured):
            if self.running and index not in self._restarts:
                self._restarts[index] = self.reactor.callLater(
                    self.restart_delay, self._spawn, index
                )
        self._unconfigured.clear()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._previous_sighup is not None:
            try:
                signal.signal(signal.SIGHUP, self._previous_sighup)
            except ValueError:
                pass
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts = {}
        waits = [p.ended for p in self._protocols.values()]
        self.signal_all("TERM")
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        if not waits:
            return succeed(None)
        killer = self.reactor.callLater(self.stop_timeout, self.signal_all, "KILL")
        done = DeferredList(waits)

        def stopped(result: object) -> object:
            if killer.active():
                killer.cancel()
            return result

        return done.addBoth(stopped)


def multi_worker_gateway(config_path: str | None, workers: int, reactor: Any = None) -> Any:
    """
    The parent of a gateway of C{workers} processes: bind every listener,
    make the shared table, and return the parent's L{GatewayService} with
    the L{WorkerPool} that starts the others as its child service.

    @raise esa_tls.config.errors.ConfigError: the configuration is not valid.
    @raise OSError: a listener's address could not be bound.
    """
    from esa_tls.config.load import load_config_with_warnings
    from esa_tls.service import GatewayService

    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    loaded = load_config_with_warnings(config_path)
    config = loaded.config
    # Before anything starts a thread: the threads inherit the CPU.
    cpus = cpu_plan(workers, config.system.worker_cpu_affinity)
    if cpus and pin_to_cpu(cpus[0]):
        log.info(
            "processes 0-{last} kept on CPUs {cpus} ([system] worker_cpu_affinity = auto)",
            last=workers - 1,
            cpus=", ".join(str(cpu) for cpu in cpus),
        )
    else:
        cpus = ()
    bound = bind_listeners(config)
    limits = SharedLimits.create(
        {name: listener.max_concurrency for name, listener in config.listeners.items()}, workers
    )
    role = WorkerRole(
        index=0,
        workers=workers,
        sockets={name: sock.fileno() for name, sock in bound.items()},
        families={name: _family(listener) for name, listener in config.listeners.items()},
        limits=limits,
        cpus=cpus,
    )
    service = GatewayService(loaded, reactor, worker=role)
    pool = WorkerPool(
        reactor,
        role,
        config_path,
        sockets=list(bound.values()),
        announce=service.spool.announce,
    )
    # With a space, which a listener's name cannot have: the listeners are
    # services of the gateway named as in the file, and two services may
    # not share a name.
    pool.setName("worker pool")
    pool.setServiceParent(service)
    return service


# -- the worker's side ----------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """
    Have the kernel kill this process when its parent dies: a parent killed
    with SIGKILL must not leave workers holding the listening sockets.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        # The parent died before the request took effect.
        os.kill(os.getpid(), signal.SIGKILL)


class _ParentWatch(Protocol):
    """
    Standard input is a pipe from the parent: its end means the parent is
    gone (the portable twin of C{PR_SET_PDEATHSIG}).

    @ivar stopping: the worker is stopping on its own (SIGTERM): the reactor
        closes standard input as it shuts down, which is no news of the
        parent, and must not cut short what the shutdown still does
        (closing sessions, the last report flush).
    """

    stopping = False

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.stopping:
            os.kill(os.getpid(), signal.SIGKILL)


@implementer(ILogObserver)
class _ToParent:
    """
    Sends log events to the parent as JSON lines, except mail log events,
    which this worker's own L{esa_tls.maillog.MailLogFile} writes.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        if is_maillog_event(event):
            return
        try:
            self._stream.write(eventAsJSON(event) + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass


class _Announcer:
    """
    Tells the parent, one line per MID on L{_ANNOUNCE_FD}, which messages
    this worker committed, so that the parent's delivery engine starts on
    them at once.  The MIDs of one reactor turn go in one write.
    """

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._pending: list[int] = []

    def __call__(self, mid: int) -> None:
        if not self._pending:
            self._reactor.callLater(0, self._flush)
        self._pending.append(mid)

    def _flush(self) -> None:
        data = b"".join(b"%d\n" % mid for mid in self._pending)
        self._pending = []
        try:
            os.write(self._fd, data)
        except OSError:
            # The parent is gone (and so, shortly, is this worker); its
            # queue scan finds the messages anyway.
            pass


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m esa_tls.worker")
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--limits", type=int, required=True)
    parser.add_argument("--listen", action="append", default=[])
    parser.add_argument("--config", default=None)
    parser.add_argument("--cpu", type=int, default=None)
    return parser.parse_args(argv)


def worker_main(argv: Sequence[str] | None = None, hangups: Sequence[int] = ()) -> int:
    """
    Run one worker: started by L{WorkerPool}, never by hand.

    @param hangups: a list the program's own SIGHUP handler adds to until
        the gateway service installs its handler (L{esa_tls.worker}): one
        that came by then may have missed a configuration the worker had
        already read, so the worker reloads once it runs.
    """
    args = _parse(sys.argv[1:] if argv is None else argv)
    _die_with_parent(args.parent)
    if args.cpu is not None:
        pin_to_cpu(args.cpu)

    from twisted.internet import reactor as _reactor
    from twisted.internet.stdio import StandardIO
    from twisted.logger import globalLogBeginner

    from esa_tls.config.errors import ConfigError
    from esa_tls.config.load import load_config_with_warnings
    from esa_tls.heap import freeze_startup_heap
    from esa_tls.service import GatewayService

    reactor: Any = _reactor
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", errors="replace")
    globalLogBeginner.beginLoggingTo([_ToParent(out)], redirectStandardIO=False)
    sockets: dict[str, int] = {}
    families: dict[str, socket.AddressFamily] = {}
    for item in args.listen:
        fd, family, name = item.split(":", 2)
        sockets[name] = int(fd)
        families[name] = socket.AF_INET6 if family == "6" else socket.AF_INET
    role = WorkerRole(
        index=args.worker,
        workers=args.workers,
        sockets=sockets,
        families=families,
        limits=SharedLimits.attach(args.limits, args.worker),
    )
    try:
        loaded = load_config_with_warnings(args.config)
        service = GatewayService(loaded, reactor, worker=role)
    except ConfigError as e:
        sys.stderr.write(f"configuration error\n{e}\n")
        return _CONFIG_ERROR
    service.spool.subscribe(_Announcer(reactor, _ANNOUNCE_FD))
    watch = _ParentWatch()
    StandardIO(  # type: ignore[call-arg]
        watch, stdin=0, stdout=os.open(os.devnull, os.O_WRONLY), reactor=reactor
    )

    def stopping() -> Deferred[Any]:
        watch.stopping = True
        result: Deferred[Any] = service.stopService()
        return result

    service.startService()
    if hangups:
        reactor.callWhenRunning(service.reload)
    reactor.addSystemEventTrigger("before", "shutdown", stopping)
    freeze_startup_heap()
    reactor.run()
    return 0
