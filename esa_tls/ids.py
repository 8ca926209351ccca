# -*- test-case-name: tests.test_ids -*-
"""
Identifiers that must never repeat: message IDs (MIDs), incoming and
delivery connection IDs (ICIDs, DCIDs).

The mail log, the C{Received:} header and the queue all name messages and
connections by these numbers, and an operator greps for them weeks later: a
number handed out twice after a crash, or by two worker processes sharing
one data directory, would join two unrelated messages in every trace.  So
numbers are taken from blocks reserved durably on disk, under a file lock
that all processes using the same counter file share.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable

from esa_tls.durable import write_atomically

__all__ = ["IdAllocator"]


class IdAllocator:
    """
    Hands out increasing integers, unique across restarts and across every
    process that uses the same counter file.

    The counter file holds the high-water mark: the first number no process
    has reserved yet.  A process reserves C{block} numbers at a time by
    moving the mark forward, and writes the new mark durably (temporary
    file, fsync, rename, directory fsync) before it hands out the first
    number of the block.  A crash therefore loses at most the unused rest
    of a block, and never hands out a number twice.  Numbers from one
    process increase; numbers from several processes interleave.

    Reserving runs synchronously, on whatever thread calls L{next}, even
    the reactor's.  That is a deliberate trade: it happens once every
    C{block} numbers (a few milliseconds of fsync per thousand messages at
    the default), whereas an asynchronous C{next} would force every caller,
    at every connection and message, to wait on a L{Deferred} for a number
    that is almost always already in memory.  Callers with a very slow disk
    can raise C{block}.

    Not thread-safe: use one allocator from one thread (the reactor's).

    @ivar path: the counter file.
    @ivar block: how many numbers one reservation takes.
    """

    def __init__(self, path: str, block: int = 1000, start: int = 1) -> None:
        """
        @param path: the counter file; its directory must exist.  A lock
            file C{path + ".lock"} is created beside it.
        @param block: numbers reserved per trip to the disk (at least 1).
        @param start: the first number ever handed out, when the counter
            file does not exist yet.
        """
        if block < 1:
            raise ValueError("block must be at least 1")
        self.path = path
        self.block = block
        self._start = start
        self._next = 0
        self._limit = 0

    def next(self) -> int:
        """
        @return: a number never returned before by any allocator on this
            counter file.
        @raise OSError: the counter could not be reserved durably (the
            number would not be safe to use).
        @raise ValueError: the counter file holds garbage; refusing to guess
            protects every number handed out before.
        """
        if self._next >= self._limit:
            self._reserve(lambda mark: mark + self.block)
        value = self._next
        self._next += 1
        return value

    def advance_past(self, value: int) -> None:
        """
        Make sure every number handed out from now on is greater than
        C{value}.

        A store that finds names on disk (a queue file for MID 5012) calls
        this at start-up, so that a lost or restored counter file can never
        lead to a number that is already in use.
        """
        if self._next > value:
            return
        self._reserve(lambda mark: max(mark, value + 1) + self.block)

    def _reserve(self, new_mark: Callable[[int], int]) -> None:
        """
        Move the shared high-water mark under the lock and take the numbers
        between the old and the new mark for this allocator.

        @param new_mark: a callable from the first number this reservation
            may take to the new mark.
        """
        lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            mark = self._read_mark()
            first = max(mark, self._next)
            limit = new_mark(first)
            assert limit > first
            write_atomically(self.path, b"%d\n" % (limit,))
        finally:
            # Closing the descriptor releases the lock.
            os.close(lock_fd)
        if limit - first > self.block:
            # advance_past: skip straight to just above the value asked for.
            first = limit - self.block
        self._next = first
        self._limit = limit

    def _read_mark(self) -> int:
        """
        @return: the high-water mark in the counter file, or the start value
            when there is no counter file yet.
        """
        try:
            with open(self.path, "rb") as f:
                text = f.read()
        except FileNotFoundError:
            return self._start
        try:
            mark = int(text.strip())
        except ValueError:
            raise ValueError(f"{self.path}: counter file is corrupt: {text[:40]!r}") from None
        if mark < 0:
            raise ValueError(f"{self.path}: counter file is corrupt: {text[:40]!r}")
        return mark
