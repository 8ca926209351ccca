# -*- test-case-name: tests.test_spool_store -*-
"""
Group commit: many durable changes, one thread job, one sync per phase.

Making one message durable costs an fsync of its file and an fsync of the
queue directory, each a few milliseconds of waiting for the disk.  Twenty
sessions finishing DATA at the same moment would pay that twenty times in a
row.  Instead every change requested during one reactor turn is collected
into a batch, and one job in the reactor's thread pool writes every file of
the batch, syncs their data, renames them, and then syncs each directory
involved once.  No change is reported durable before the directory sync
that covers it has returned, and the reactor thread never waits for the
disk.  With C{spool_sync = "filesystem"} (L{esa_tls.spool.fs}) each of the
two syncs is one C{syncfs} call however large the batch.

One batch runs at a time, and batches run in the order they were
requested; so do the steps inside a batch.  That keeps changes to the same
file (two updates of a message's recipient states, then its removal) in
the order the caller made them; and while a batch waits for the disk, the
next one fills up, which is what makes the commit cheaper under load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from esa_tls.spool.fs import FileSystem

__all__ = ["DurableStep", "Executor", "GroupCommitter"]

_T = TypeVar("_T")


class Executor(Protocol):
    """
    Runs a blocking callable away from the reactor thread; the default is
    the reactor's thread pool.  The returned L{Deferred} must fire on the
    reactor thread.
    """

    def __call__(self, f: Callable[[], _T], /) -> Deferred[_T]: ...


class DurableStep(Protocol):
    """
    One change to make durable, in phases that the batch runs for all its
    steps at once, so that one sync can cover every step of a phase: write
    each file, sync the files' data, publish each file (rename it into
    place, or unlink), sync the directories.  A name never points at data
    that is not yet on stable storage.

    @ivar directory: the directory whose sync makes the change durable.
    """

    directory: str

    def write(self, fs: FileSystem) -> int | None:
        """
        In the thread: write the new file and keep it open.  Raising fails
        this step only; the step must then have cleaned up after itself.

        @return: the descriptor of the file whose data must be durable
            before L{publish}, or C{None} if there is none (a removal).
        """

    def abandon(self, fs: FileSystem) -> None:
        """
        In the thread: the data sync after L{write} failed; close and remove
        what L{write} made.
        """

    def publish(self, fs: FileSystem) -> None:
        """
        In the thread, once the data is durable: close the file and rename it
        into place, or unlink.  Raising fails this step only; the step must
        then have cleaned up after itself.
        """

    def undo(self, fs: FileSystem) -> None:
        """
        In the thread: the directory sync failed after L{publish} succeeded;
        take the change back as far as possible, so that nothing the caller
        is told failed is acted on later.
        """

    def finish(self, fs: FileSystem) -> None:
        """
        In the thread, after the directory sync: tidying up that needs no
        durability.  Errors are logged and otherwise ignored.
        """


class _BatchResult:
    """
    What a batch job reports back to the reactor thread.
    """

    def __init__(self) -> None:
        self.failures: dict[int, Failure] = {}
        self.finish_failures: list[Failure] = []


class GroupCommitter:
    """
    Collects L{DurableStep}s and makes each reactor turn's worth durable in
    one thread job.

    @ivar jobs: how many thread jobs have been started (for tests and
        benchmarks: N commits in one turn cost one job).
    """

    log = Logger()

    def __init__(self, reactor: IReactorTime, executor: Executor, fs: FileSystem) -> None:
        self._reactor = reactor
        self._executor = executor
        self._fs = fs
        self._pending: list[tuple[DurableStep, Deferred[None]]] = []
        self._scheduled: IDelayedCall | None = None
        self._running = False
        self._idle_waiters: list[Deferred[None]] = []
        self.jobs = 0

    def submit(self, step: DurableStep) -> Deferred[None]:
        """
        Make C{step} durable together with every other step submitted in
        this reactor turn.

        @return: a L{Deferred} firing with C{None} once the change is on
            stable storage, or failing with the L{OSError} (or other
            exception) that prevented it.
        """
        d: Deferred[None] = Deferred()
        self._pending.append((step, d))
        self._schedule()
        return d

    def drain(self) -> Deferred[None]:
        """
        @return: a L{Deferred} firing once every step submitted so far has
            been attempted.
        """
        if not self._running and not self._pending:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d

    def _schedule(self) -> None:
        # callLater(0) runs after the current turn: every step submitted
        # until then joins the batch.
        if self._scheduled is None and not self._running and self._pending:
            self._scheduled = self._reactor.callLater(0, self._start)

    def _start(self) -> None:
        self._scheduled = None
        batch, self._pending = self._pending, []
        self._running = True
        self.jobs += 1
        steps = [step for step, _ in batch]
        try:
            d = self._executor(lambda: self._run(steps))
        except BaseException:
            d = fail(Failure())
        d.addBoth(self._done, batch)

    def _run(self, steps: list[DurableStep]) -> _BatchResult:
        """
        The thread job: write every step's file, sync their data, publish
        them, sync each directory, undo the steps of a directory whose sync
        failed, finish the rest.  L{FileSystem.sync_files} and
        L{FileSystem.sync_directories} decide how many system calls a sync
        of the whole batch costs.
        """
        fs = self._fs
        result = _BatchResult()
        written: list[tuple[int, int]] = []
        for index, step in enumerate(steps):
            try:
                fd = step.write(fs)
            except BaseException:
                result.failures[index] = Failure()
            else:
                if fd is not None:
                    written.append((index, fd))
        if written:
            errors = fs.sync_files([fd for _, fd in written])
            for (index, _), error in zip(written, errors, strict=True):
                if error is not None:
                    result.failures[index] = Failure(error)
                    try:
                        steps[index].abandon(fs)
                    except BaseException:
                        result.finish_failures.append(Failure())
        directories: dict[str, None] = {}
        for index, step in enumerate(steps):
            if index in result.failures:
                continue
            try:
                step.publish(fs)
            except BaseException:
                result.failures[index] = Failure()
            else:
                directories[step.directory] = None
        if directories:
            names = list(directories)
            for directory, error in zip(names, fs.sync_directories(names), strict=True):
                if error is None:
                    continue
                failure = Failure(error)
                for index, step in enumerate(steps):
                    if step.directory == directory and index not in result.failures:
                        result.failures[index] = failure
                        try:
                            step.undo(fs)
                        except BaseException:
                            result.finish_failures.append(Failure())
        for index, step in enumerate(steps):
            if index not in result.failures:
                try:
                    step.finish(fs)
                except BaseException:
                    result.finish_failures.append(Failure())
        return result

    def _done(
        self, outcome: _BatchResult | Failure, batch: list[tuple[DurableStep, Deferred[None]]]
    ) -> None:
        self._running = False
        if isinstance(outcome, Failure):
            # The job itself could not run (thread pool stopped): nothing
            # of the batch is known to be durable.
            for _, d in batch:
                d.errback(outcome)
        else:
            for failure in outcome.finish_failures:
                self.log.failure("Spool clean-up failed (harmless)", failure)
            for index, (_, d) in enumerate(batch):
                if index in outcome.failures:
                    d.errback(outcome.failures[index])
                else:
                    d.callback(None)
        self._schedule()
        if not self._running and not self._pending and self._scheduled is None:
            waiters, self._idle_waiters = self._idle_waiters, []
            for w in waiters:
                w.callback(None)
