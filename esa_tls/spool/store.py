# -*- test-case-name: tests.test_spool_store -*-
"""
The durable spool: where the gateway keeps every message it has said 250
to, until each recipient is delivered or bounced.

Layout of the spool directory::

    queue/<mid>.msg     committed messages (header line + message bytes)
    state/<mid>.json    recipient states, once the first one changed
    corrupt/            files that failed validation, never delivered
    tmp/<token>.lock    one per live L{DurableSpool} (flock held)
    tmp/<token>/        its messages being received, and state files
                        being written
    mid.counter         the MID high-water mark (L{esa_tls.ids})

The guarantee is that of the C{IMessageStore} contract: a message is in
C{queue/} whole, or not at all.  It is written into its own temporary
directory, synced, renamed into C{queue/}, and C{queue/} is synced before
L{IncomingMessage.commit} fires; a crash before that leaves only a
temporary file, which the next start removes.

Several worker processes may share one spool directory (issue 7): each has
its own temporary directory, locked with C{flock} for as long as the
process lives; start-up removes only the temporary directories whose lock
is free, i.e. whose process is gone, even after C{SIGKILL}.  MIDs come from
one counter shared by all of them.  The queue side (L{DurableSpool.queued},
L{DurableSpool.update_recipients}, L{DurableSpool.remove}) is meant for
one delivery engine at a time.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

from attrs import define, field
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from esa_tls.ids import IdAllocator
from esa_tls.interfaces import IIncomingMessage, IMessageStore, StoreError
from esa_tls.spool.fileformat import (
    MAX_HEADER_LENGTH,
    SIZE_FIELD_OFFSET,
    MessageHeader,
    SpoolFormatError,
    decode_message_header,
    decode_recipient_states,
    encode_message_header,
    encode_recipient_states,
    encode_size_field,
)
from esa_tls.spool.fs import FileSystem
from esa_tls.spool.groupcommit import Executor, GroupCommitter
from esa_tls.spool.values import QueuedMessage, RecipientState
from esa_tls.values import Envelope

__all__ = ["DurableSpool", "IncomingMessage", "open_regular"]

_MiB = 1024 * 1024


def _store_error(failure: Failure, what: str) -> StoreError:
    """
    Turn whatever stopped a spool operation into the transient L{StoreError}
    the session answers with 451 4.3.0.
    """
    return StoreError(f"{what}: {failure.getErrorMessage()}", transient=True)


#: What the first read of a message file takes: a header with the
#: envelope of a message for a few dozen recipients.
_HEADER_READ = 8192


def open_regular(path: str) -> tuple[int, int]:
    """
    Open C{path} for reading if it is a regular file, as every file the
    spool writes is.  Anything else in its place (a directory, a FIFO, a
    socket, a symbolic link loop), left by an operator or a restore, is
    L{SpoolFormatError}, to be quarantined: read as a file it would stop
    start-up with an exception, or, a FIFO, block it for ever.

    @return: the open descriptor and the file's size.
    @raise FileNotFoundError: there is no such file.
    @raise SpoolFormatError: C{path} is not a regular file (a symbolic
        link to nothing included).
    @raise OSError: it is one, and could not be opened (permissions, too
        many open files): it may be fine, and is left where it is.
    """
    try:
        # Non-blocking: opening a FIFO for reading waits for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        if os.path.lexists(path):
            # There, but it leads nowhere: looked for again at every scan
            # and never found, it would be passed over in silence.
            raise SpoolFormatError("a symbolic link to nothing") from None
        raise
    except OSError as e:
        try:
            regular = stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            raise e from None
        if regular:
            raise
        raise SpoolFormatError(f"not a regular file ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpoolFormatError("not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def _read_header_line(path: str) -> tuple[bytes, int]:
    """
    The first line of message file C{path} (newline included; at most
    L{MAX_HEADER_LENGTH} octets) and the file's size, in three or four
    system calls: the parent of a multi-worker gateway reads the header of
    every message its workers commit.

    @raise FileNotFoundError: the file is gone.
    @raise SpoolFormatError: it is not a regular file.
    """
    fd, size = open_regular(path)
    try:
        head = os.pread(fd, min(size, _HEADER_READ), 0)
        end = head.find(b"\n")
        if end < 0 and len(head) < min(size, MAX_HEADER_LENGTH):
            head = os.pread(fd, min(size, MAX_HEADER_LENGTH), 0)
            end = head.find(b"\n")
    finally:
        os.close(fd)
    return (head[: end + 1] if end >= 0 else head), size


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _close_quietly(file: BinaryIO | None) -> None:
    if file is not None:
        try:
            file.close()
        except OSError:
            pass


@define
class _FileStep:
    """
    Put a new file in place durably: write it, sync it, rename it over
    C{final}; the batch then syncs C{directory}.
    """

    temporary: str
    final: str
    directory: str
    _fd: int | None = field(default=None, init=False)

    def _create(self, fs: FileSystem) -> int:
        """
        Write the whole file; on failure leave nothing open.

        @return: its open descriptor.
        """
        raise NotImplementedError

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def write(self, fs: FileSystem) -> int:
        try:
            self._fd = self._create(fs)
        except BaseException:
            _unlink_quietly(self.temporary)
            raise
        return self._fd

    def abandon(self, fs: FileSystem) -> None:
        try:
            self._close()
        except OSError:
            pass
        _unlink_quietly(self.temporary)

    def publish(self, fs: FileSystem) -> None:
        try:
            self._close()
            fs.replace(self.temporary, self.final)
        except BaseException:
            _unlink_quietly(self.temporary)
            raise

    def undo(self, fs: FileSystem) -> None:
        # A state file: the new state may or may not be on disk; the caller
        # is told it failed and will write it again.
        pass

    def finish(self, fs: FileSystem) -> None:
        pass


@define
class _CommitStep(_FileStep):
    """
    Make a message received into its file durable, and give it its name in
    C{queue/}.
    """

    received: BinaryIO

    def _create(self, fs: FileSystem) -> int:
        try:
            self.received.flush()
        except BaseException:
            _close_quietly(self.received)
            raise
        return self.received.fileno()

    def _close(self) -> None:
        # The file object owns the descriptor.
        self._fd = None
        self.received.close()

    def undo(self, fs: FileSystem) -> None:
        # The rename may or may not survive a crash now; the caller is told
        # the commit failed (451), so the message must not be delivered.
        _unlink_quietly(self.final)


@define
class _WriteStep(_FileStep):
    """
    Replace a small file (a message's recipient states) atomically.
    """

    data: bytes

    def _create(self, fs: FileSystem) -> int:
        return fs.create(self.temporary, self.data)


@define
class _CreateStep(_WriteStep):
    """
    Make a message held in memory durable: create its temporary file, write
    it, sync it, rename it into C{queue/}; the batch then syncs C{queue/}.
    All of it in the thread: creating a file takes the directory's lock and
    a journal handle, either of which can wait for a commit in progress.
    """

    def undo(self, fs: FileSystem) -> None:
        # As for _CommitStep: the caller is told the commit failed.
        _unlink_quietly(self.final)


@define
class _RemoveStep:
    """
    Forget a finished message: unlink it from C{queue/}, sync C{queue/},
    then unlink its state file (an orphan state file is harmless and
    removed at the next start, so that last unlink needs no sync).
    """

    message: str
    state: str
    directory: str

    def write(self, fs: FileSystem) -> None:
        return None

    def abandon(self, fs: FileSystem) -> None:
        pass

    def publish(self, fs: FileSystem) -> None:
        _unlink_quietly(self.message)

    def undo(self, fs: FileSystem) -> None:
        pass

    def finish(self, fs: FileSystem) -> None:
        _unlink_quietly(self.state)


@define
class _Entry:
    """
    What the spool knows about one committed message.
    """

    header: MessageHeader
    recipients: dict[int, RecipientState]


def _initial_states(envelope: Envelope) -> dict[int, RecipientState]:
    return {rid: RecipientState(rid=rid, address=a) for rid, a in enumerate(envelope.rcpt_to)}


@implementer(IIncomingMessage)
class IncomingMessage:
    """
    A message being received into a L{DurableSpool}.

    Bytes are written to the message's temporary file as they arrive, on
    the reactor thread: buffered writes land in the page cache and do not
    wait for the disk.  Only L{commit} waits, and it waits in a thread.

    With the spool's C{memory_limit}, a message starts in memory instead
    and has no file until it outgrows the limit; one that never does is
    written, synced and renamed by the commit's thread job, so that the
    reactor thread makes no file system call for it at all.

    @ivar mid: the message ID, assigned when the message starts (as on the
        ESA, whose C{Start MID} log line comes before DATA); a message that
        is aborted leaves its MID unused.
    @ivar envelope: the envelope given to L{DurableSpool.new_message}.
    @ivar header_length: the length of the spool's header line in the
        message file.
    """

    def __init__(
        self,
        spool: DurableSpool,
        mid: int,
        envelope: Envelope,
        path: str,
        file: BinaryIO | None,
        header_length: int,
        header: bytes = b"",
    ) -> None:
        """
        @param file: the open temporary file at C{path}, or C{None} to hold
            the message in memory (beginning with C{header}) until it
            outgrows the spool's C{memory_limit}.
        """
        self.mid = mid
        self.envelope = envelope
        self.header_length = header_length
        self._spool = spool
        self._path = path
        self._file = file
        self._chunks: list[bytes] | None = [header] if file is None else None
        self._held = len(header)
        self._size = 0
        self._state = "open"

    @property
    def size(self) -> int:
        """
        The number of message bytes written so far.
        """
        return self._size

    def write(self, data: bytes) -> None:
        """
        Append C{data}.

        @raise StoreError: (transient) the bytes could not be written (a
            full disk, an I/O error), or the message is no longer open.  The
            message is then discarded; a later L{commit} fails too.
        """
        if self._state != "open":
            raise StoreError(f"MID {self.mid} is not open for writing ({self._state})")
        if self._chunks is not None:
            self._chunks.append(data)
            self._held += len(data)
            self._size += len(data)
            if self._held > self._spool.memory_limit:
                self._spill()
            return
        assert self._file is not None
        try:
            self._file.write(data)
        except OSError as e:
            self._discard("failed")
            raise StoreError(f"MID {self.mid}: cannot write to the spool: {e}") from e
        self._size += len(data)

    def _spill(self) -> None:
        """
        The message outgrew memory: give it its file, with what it holds.
        """
        chunks, self._chunks = self._chunks, None
        assert chunks is not None
        try:
            self._file = self._spool._fs.open_for_writing(self._path)
        except OSError as e:
            self._discard("failed")
            raise StoreError(f"MID {self.mid}: cannot write to the spool: {e}") from e
        try:
            self._file.writelines(chunks)
        except OSError as e:
            self._discard("failed")
            raise StoreError(f"MID {self.mid}: cannot write to the spool: {e}") from e

    def commit(self) -> Deferred[int]:
        """
        Make the message durable, together with every other message
        committed in the same reactor turn.

        @return: a L{Deferred} firing with L{mid} once the message is in
            C{queue/} and that is on stable storage, or failing with a
            transient L{StoreError}; the message is then gone for good.
        """
        if self._state != "open":
            return fail(StoreError(f"MID {self.mid} cannot be committed ({self._state})"))
        if self._chunks is not None:
            chunks, self._chunks = self._chunks, None
            size = encode_size_field(self._size)
            header = chunks[0]
            chunks[0] = header[:SIZE_FIELD_OFFSET] + size + header[SIZE_FIELD_OFFSET + len(size) :]
            self._state = "committing"
            return self._spool._commit_memory(self, b"".join(chunks), self._path)
        assert self._file is not None
        try:
            self._file.flush()
            os.pwrite(self._file.fileno(), encode_size_field(self._size), SIZE_FIELD_OFFSET)
        except OSError as e:
            self._discard("failed")
            return fail(StoreError(f"MID {self.mid}: cannot write to the spool: {e}"))
        self._state = "committing"
        return self._spool._commit(self, self._file, self._path)

    def abort(self) -> None:
        """
        Discard the message.  Does nothing once L{commit} has been called:
        the commit's result decides.
        """
        if self._state == "open":
            self._discard("aborted")

    def _discard(self, state: str) -> None:
        self._state = state
        self._chunks = None
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                # Closing flushes; the write error is already being reported.
                pass
            _unlink_quietly(self._path)
        self._spool._forget(self)

    def _committed(self) -> None:
        self._state = "committed"


def _default_executor(reactor: IReactorTime) -> Executor:
    def execute(f: Callable[[], Any]) -> Deferred[Any]:
        return deferToThreadPool(
            IReactorFromThreads(reactor), IReactorThreads(reactor).getThreadPool(), f
        )

    return execute


@implementer(IMessageStore)
class DurableSpool:
    """
    The built-in L{IMessageStore}: a directory of message files, crash-safe
    and shared safely by several worker processes, with the queue-side API
    the delivery engine uses.

    Start-up work (L{recover}) runs synchronously in the constructor: build
    the spool before the gateway listens, not from inside a session.

    @ivar directory: the spool directory.
    @ivar min_free_bytes: L{has_space} keeps at least this much of the file
        system free.
    @ivar committer: the L{GroupCommitter} all durable changes go through.
    """

    log = Logger()

    def __init__(
        self,
        directory: str,
        reactor: IReactorTime,
        *,
        min_free_bytes: int = 64 * _MiB,
        mid_allocator: IdAllocator | None = None,
        free_bytes: Callable[[], int] | None = None,
        filesystem: FileSystem | None = None,
        executor: Executor | None = None,
        memory_limit: int = 0,
        receive_only: bool = False,
    ) -> None:
        """
        @param directory: the spool directory; created if missing.
        @param reactor: provides L{IReactorTime} (batches are cut at the end
            of a reactor turn) and, unless C{executor} is given,
            L{IReactorThreads} (fsyncs run in its thread pool).
        @param min_free_bytes: see L{has_space}.
        @param mid_allocator: where MIDs come from; by default an
            L{IdAllocator} on C{directory/mid.counter}.
        @param free_bytes: how many bytes are free on the spool's file
            system now; by default asked of the file system.  Tests use it
            to simulate a nearly full disk.
        @param filesystem: the file operations to use (tests inject faults).
        @param executor: runs the blocking batch job; by default the
            reactor's thread pool.
        @param memory_limit: messages up to this many octets (with their
            spool header) are kept in memory until they are committed, and
            their file is made by the commit's thread job (see
            L{IncomingMessage}); 0 (the default) gives every message its
            file at once.  The gateway uses this to keep file creation off
            the reactor thread; the cost is up to this much memory per
            message being received.
        @param receive_only: this process only receives (a worker of a
            multi-worker gateway; another process delivers): start-up does
            not read and index the whole queue, and committed messages are
            not kept in the in-memory index, which would otherwise grow
            with every message for as long as the worker lives.  The
            queue-side methods still work, reading from disk.
        """
        self.directory = os.path.abspath(directory)
        self.min_free_bytes = min_free_bytes
        self.memory_limit = memory_limit
        self.receive_only = receive_only
        self._fs = filesystem if filesystem is not None else FileSystem()
        self._free_bytes = free_bytes
        self._queue_dir = os.path.join(self.directory, "queue")
        self._state_dir = os.path.join(self.directory, "state")
        self._corrupt_dir = os.path.join(self.directory, "corrupt")
        self._tmp_root = os.path.join(self.directory, "tmp")
        # Owner only, like every file in it: the spool holds other people's
        # mail.  A directory that already exists keeps its mode (the
        # administrator's choice).
        for d in (self._queue_dir, self._state_dir, self._corrupt_dir, self._tmp_root):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self._mids = (
            mid_allocator
            if mid_allocator is not None
            else IdAllocator(os.path.join(self.directory, "mid.counter"))
        )
        self.committer = GroupCommitter(
            reactor,
            executor if executor is not None else _default_executor(reactor),
            self._fs,
        )
        self._entries: dict[int, _Entry] = {}
        self._open: dict[int, IncomingMessage] = {}
        self._committing: set[int] = set()
        self._removing: set[int] = set()
        self._subscribers: list[Callable[[int], None]] = []
        self._state_serial = 0
        # Messages whose files could not be read, and why (L{_unreadable}).
        self._unreadable_said: dict[int, str] = {}
        self._lock_fd, self._tmp_dir = self._claim_temporary_directory()
        self.recover()

    # -- start-up ---------------------------------------------------------

    def _claim_temporary_directory(self) -> tuple[int, str]:
        """
        Make this spool's own temporary directory and hold its lock.

        The lock file is locked under a name the sweep ignores and only
        then renamed to C{<token>.lock}, and the directory is made after
        that: so a sweep in another process never sees a live spool's
        directory without its lock held.
        """
        token = uuid.uuid4().hex
        staging = os.path.join(self._tmp_root, f".{token}.locking")
        fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(staging, os.path.join(self._tmp_root, f"{token}.lock"))
            path = os.path.join(self._tmp_root, token)
            os.mkdir(path, 0o700)
        except BaseException:
            os.close(fd)
            raise
        return fd, path

    def recover(self) -> None:
        """
        Clean up after a crash, synchronously: remove the temporary files of
        spools whose process is gone (half-received or half-committed
        messages: never acknowledged), quarantine in C{corrupt/} every
        queue or state file that fails validation (logged, never
        delivered), drop state files of finished messages, and make sure
        no MID on disk can be handed out again.
        """
        self._sweep_temporary()
        if self.receive_only:
            self._advance_past_names()
            return
        highest = 0
        mids: set[int] = set()
        for name in sorted(os.listdir(self._queue_dir)):
            path = os.path.join(self._queue_dir, name)
            mid = self._mid_of(name, ".msg")
            if mid is None:
                self._quarantine(path, "not a message file name")
                continue
            highest = max(highest, mid)
            if self._load(mid) is not None:
                mids.add(mid)
        for name in sorted(os.listdir(self._state_dir)):
            path = os.path.join(self._state_dir, name)
            mid = self._mid_of(name, ".json")
            if mid is None:
                self._quarantine(path, "not a state file name")
                continue
            highest = max(highest, mid)
            # A finished message's state (removal is: unlink message, sync,
            # unlink state).  Look again right before: a worker sharing the
            # spool may have committed the message after the queue was
            # listed.
            if mid not in mids and not os.path.exists(self.message_path(mid)):
                try:
                    _unlink_quietly(path)
                except OSError as e:
                    # A directory, say: not something this code wrote.
                    self._quarantine(path, f"cannot remove it: {e.strerror}")
        for name in os.listdir(self._corrupt_dir):
            digits = name.split(".", 1)[0]
            if digits.isdigit():
                highest = max(highest, int(digits))
        self._mids.advance_past(highest)

    def _advance_past_names(self) -> None:
        """
        Make sure no MID found on disk is handed out again, from the file
        names alone (the delivering process validates the files).
        """
        highest = 0
        for directory, suffix in (
            (self._queue_dir, ".msg"),
            (self._state_dir, ".json"),
            (self._corrupt_dir, None),
        ):
            for name in os.listdir(directory):
                digits = name.split(".", 1)[0]
                if (suffix is None or name.endswith(suffix)) and digits.isdigit():
                    highest = max(highest, int(digits))
        self._mids.advance_past(highest)

    def _sweep_temporary(self) -> None:
        own = os.path.basename(self._tmp_dir)
        names = set(os.listdir(self._tmp_root))
        for name in sorted(names):
            if not name.endswith(".lock"):
                continue
            token = name[: -len(".lock")]
            if token == own:
                continue
            path = os.path.join(self._tmp_root, name)
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            except OSError as e:
                # Not a lock file this code made (a directory, say): left
                # alone, and start-up goes on.
                self.log.warn("Spool: ignored {path}, not a lock file: {error}", path=path, error=e)
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live spool in another process
                leftover = os.path.join(self._tmp_root, token)
                if os.path.isdir(leftover):
                    count = len(os.listdir(leftover))
                    shutil.rmtree(leftover, ignore_errors=True)
                    if count:
                        self.log.info(
                            "Spool: removed {count} unfinished file(s) of a stopped process",
                            count=count,
                        )
                _unlink_quietly(path)
            finally:
                os.close(fd)
        # A directory without its lock file: left by a sweep that was itself
        # interrupted (live spools make the lock first).
        for name in os.listdir(self._tmp_root):
            path = os.path.join(self._tmp_root, name)
            if (
                name != own
                and not name.startswith(".")
                and os.path.isdir(path)
                and not os.path.exists(path + ".lock")
            ):
                shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def _mid_of(name: str, suffix: str) -> int | None:
        if not name.endswith(suffix):
            return None
        digits = name[: -len(suffix)]
        if not digits.isdigit() or not digits.isascii():
            return None
        mid = int(digits)
        # Only the name message_path() gives the MID: 0005.msg would be
        # listed as MID 5, looked for as 5.msg, and never found.
        return mid if str(mid) == digits else None

    def _quarantine(self, path: str, reason: str) -> None:
        """
        Move a file that failed validation to C{corrupt/}, where an operator
        can look at it; it is never delivered.
        """
        target = os.path.join(self._corrupt_dir, os.path.basename(path))
        if os.path.lexists(target):
            target = f"{target}.{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return  # another process quarantined it first
        except OSError as e:
            # It stays where it is, and is still not delivered: whoever
            # asked skips it.
            self.log.error(
                "Spool: malformed file {path} ({reason}) could not be moved to {target}"
                " ({error}); it is skipped, not delivered",
                path=path,
                target=target,
                reason=reason,
                error=e,
            )
            return
        self.log.error(
            "Spool: quarantined malformed file {path} as {target}: {reason}",
            path=path,
            target=target,
            reason=reason,
        )

    def _load(self, mid: int, states: bool = True) -> _Entry | None:
        """
        Read, validate and index committed message C{mid}; quarantine it
        (and its state file) when it fails validation.

        @param states: whether to look for a state file; C{False} only for
            a message another process has just committed (L{announce}):
            state files are written by this process alone, for messages it
            has loaded and so has in C{_entries}.
        @return: the entry, or C{None} if the message is not (or no
            longer) in the queue.
        """
        try:
            line, length = _read_header_line(self.message_path(mid))
            header = decode_message_header(line)
            if header.mid != mid:
                raise SpoolFormatError(f"file holds MID {header.mid}")
        except FileNotFoundError:
            return None
        except SpoolFormatError as e:
            self._quarantine_message(mid, str(e))
            return None
        except OSError as e:
            self._unreadable(mid, self.message_path(mid), e)
            return None
        if length != header.body_offset + header.body_size:
            self._quarantine_message(
                mid,
                f"{length - header.body_offset} message bytes, header says {header.body_size}",
            )
            return None
        recipients = _initial_states(header.envelope)
        try:
            data = self._read_state_file(mid) if states else None
        except SpoolFormatError as e:
            self._quarantine(self._state_path(mid), str(e))
            self._quarantine_message(mid, "its state file is malformed")
            return None
        except OSError as e:
            self._unreadable(mid, self._state_path(mid), e)
            return None
        self._unreadable_said.pop(mid, None)
        if data is not None:
            try:
                stored = decode_recipient_states(data, mid)
                if set(stored) != set(recipients) or any(
                    s.address != recipients[rid].address for rid, s in stored.items()
                ):
                    raise SpoolFormatError("state does not match the envelope's recipients")
            except SpoolFormatError as e:
                # Without a trustworthy state, delivering could send again
                # to recipients already delivered: keep both for an operator.
                self._quarantine(self._state_path(mid), str(e))
                self._quarantine_message(mid, "its state file is malformed")
                return None
            recipients = stored
        entry = _Entry(header, recipients)
        self._entries[mid] = entry
        return entry

    def _read_state_file(self, mid: int) -> bytes | None:
        """
        @return: the contents of message C{mid}'s state file, or C{None}
            if it has none (no recipient state recorded yet).
        """
        try:
            fd, _ = open_regular(self._state_path(mid))
        except FileNotFoundError:
            return None
        with open(fd, "rb") as f:
            return f.read()

    def _unreadable(self, mid: int, path: str, error: OSError) -> None:
        """
        A file of message C{mid} could not be read, for a reason that may
        not be the file's (its permissions, too many open files, an I/O
        error): the message is skipped, neither delivered nor quarantined,
        and tried again at the next scan.  Said once per message and
        reason, not at every scan.
        """
        self._entries.pop(mid, None)
        said = f"{path}: {error.strerror or error}"
        if self._unreadable_said.get(mid) == said:
            return
        self._unreadable_said[mid] = said
        self.log.error(
            "Spool: cannot read {path} ({error}); MID {mid} is left in the queue,"
            " not delivered until it can be read",
            path=path,
            error=error.strerror or error,
            mid=mid,
        )

    def _quarantine_message(self, mid: int, reason: str) -> None:
        self._entries.pop(mid, None)
        self._quarantine(self.message_path(mid), reason)

    # -- IMessageStore ----------------------------------------------------

    def has_space(self, size: int) -> bool:
        """
        Whether a message of C{size} bytes still leaves L{min_free_bytes}
        free on the spool's file system.  A failure to ask counts as no
        space (the session answers 452 4.3.1: try later).
        """
        try:
            free = (
                self._free_bytes()
                if self._free_bytes is not None
                else self._fs.free_bytes(self.directory)
            )
        except OSError:
            self.log.failure("Spool: cannot tell the free space")
            return False
        return free - max(size, 0) >= self.min_free_bytes

    def new_message(self, envelope: object) -> IncomingMessage:
        """
        Start receiving a message.

        @param envelope: an L{Envelope}.
        @raise StoreError: (transient) no MID could be reserved or the
            temporary file could not be created.
        """
        if not isinstance(envelope, Envelope):
            raise TypeError(f"not an Envelope: {envelope!r}")
        try:
            mid = self._mids.next()
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot start a message in the spool: {e}", transient=True) from e
        path = os.path.join(self._tmp_dir, f"{mid}.msg")
        header = encode_message_header(mid, envelope)
        if len(header) <= self.memory_limit:
            held = IncomingMessage(self, mid, envelope, path, None, len(header), header=header)
            self._open[mid] = held
            return held
        try:
            f = self._fs.open_for_writing(path)
        except OSError as e:
            raise StoreError(f"cannot start a message in the spool: {e}", transient=True) from e
        try:
            f.write(header)
        except OSError as e:
            f.close()
            _unlink_quietly(path)
            raise StoreError(f"cannot write to the spool: {e}", transient=True) from e
        message = IncomingMessage(self, mid, envelope, path, f, len(header))
        self._open[mid] = message
        return message

    def _forget(self, message: IncomingMessage) -> None:
        self._open.pop(message.mid, None)

    def _commit(self, message: IncomingMessage, file: BinaryIO, path: str) -> Deferred[int]:
        return self._submit_commit(
            message,
            _CommitStep(path, self.message_path(message.mid), self._queue_dir, received=file),
        )

    def _submit_commit(
        self, message: IncomingMessage, step: _CommitStep | _CreateStep
    ) -> Deferred[int]:
        mid = message.mid
        self._committing.add(mid)
        result: Deferred[int] = Deferred()

        def committed(_: None) -> None:
            self._committing.discard(mid)
            self._open.pop(mid, None)
            message._committed()
            if not self.receive_only:
                header = MessageHeader(mid, message.envelope, message.size, message.header_length)
                self._entries[mid] = _Entry(header, _initial_states(message.envelope))
            # The session's callbacks (the 250) first, then the queue.
            result.callback(mid)
            self._notify(mid)

        def failed(failure: Failure) -> None:
            self._committing.discard(mid)
            self._forget(message)
            message._state = "failed"
            self.log.failure("Spool: commit of MID {mid} failed", failure, mid=mid)
            result.errback(_store_error(failure, f"MID {mid} could not be made durable"))

        self.committer.submit(step).addCallbacks(committed, failed)
        return result

    def _commit_memory(self, message: IncomingMessage, data: bytes, path: str) -> Deferred[int]:
        return self._submit_commit(
            message,
            _CreateStep(path, self.message_path(message.mid), self._queue_dir, data=data),
        )

    def _notify(self, mid: int) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(mid)
            except Exception:
                self.log.failure("Spool subscriber {subscriber!r} failed", subscriber=subscriber)

    def announce(self, mid: int) -> None:
        """
        Tell the subscribers about message C{mid}, committed by another
        process sharing this spool (a worker of a multi-worker gateway), as
        if it had been committed here: the delivery engine starts on it at
        once instead of at its next scan of the queue.
        """
        if mid not in self._entries and mid not in self._removing:
            # Just committed elsewhere: no state file can exist yet.
            self._load(mid, states=False)
        self._notify(mid)

    # -- queue side ---------------------------------------------------------

    def subscribe(self, callback: Callable[[int], None]) -> None:
        """
        Call C{callback} with the MID of each message this spool commits,
        right after its commit is durable (and its L{Deferred} has fired).
        Messages committed by other processes sharing the directory are
        announced only when those processes say so (L{announce}); L{queued}
        finds them all.
        """
        self._subscribers.append(callback)

    def message_path(self, mid: int) -> str:
        """
        @return: the path of committed message C{mid}'s file (which begins
            with the spool's header line: use L{open_body} for the message).
        """
        return os.path.join(self._queue_dir, f"{mid}.msg")

    def _state_path(self, mid: int) -> str:
        return os.path.join(self._state_dir, f"{mid}.json")

    def _entry(self, mid: int) -> _Entry:
        entry = self._entries.get(mid)
        if entry is None and mid not in self._removing and mid not in self._committing:
            entry = self._load(mid)
        if entry is None:
            raise KeyError(mid)
        return entry

    def queued(self) -> list[QueuedMessage]:
        """
        Every committed message not yet removed, in MID order, with its
        recipient states as last requested through L{update_recipients}.

        Reads the queue directory (and the headers of messages it has not
        seen, such as those committed by other worker processes) on the
        calling thread: meant for start-up and for the queue manager's
        periodic scans, not for each message.
        """
        seen: set[int] = set()
        for name in os.listdir(self._queue_dir):
            mid = self._mid_of(name, ".msg")
            if mid is None or mid in self._removing or mid in self._committing:
                continue
            if mid in self._entries or self._load(mid) is not None:
                seen.add(mid)
        for mid in list(self._entries):
            if mid not in seen:
                del self._entries[mid]
        return [self._snapshot(mid, self._entries[mid]) for mid in sorted(seen)]

    def get(self, mid: int) -> QueuedMessage:
        """
        @return: committed message C{mid}.
        @raise KeyError: there is no such message in the queue.
        """
        return self._snapshot(mid, self._entry(mid))

    @staticmethod
    def _snapshot(mid: int, entry: _Entry) -> QueuedMessage:
        return QueuedMessage(
            mid=mid,
            envelope=entry.header.envelope,
            recipients=tuple(s for _, s in sorted(entry.recipients.items())),
            body_size=entry.header.body_size,
        )

    def open_body(self, mid: int) -> BinaryIO:
        """
        Open committed message C{mid} for reading, positioned at its first
        byte (after the spool's header line); it ends at the end of file.

        @raise KeyError: there is no such message in the queue.
        """
        entry = self._entry(mid)
        try:
            # Unbuffered: a delivery reads a whole small body in one call,
            # and a buffer would only add system calls (and a copy).
            f = open(self.message_path(mid), "rb", buffering=0)
        except FileNotFoundError:
            raise KeyError(mid) from None
        f.seek(entry.header.body_offset)
        return f

    def update_recipients(self, mid: int, states: Mapping[int, RecipientState]) -> Deferred[None]:
        """
        Record new states for some recipients of message C{mid}, durably.

        The message's whole recipient state is written as a new small file
        (temporary file, fsync, rename over C{state/<mid>.json}, directory
        fsync), batched with every other change of the same reactor turn.
        That was chosen over an append-only journal: a message's state
        stays in one self-contained file that is valid at every instant,
        with no journal to replay, compact or repair after a crash, and
        removing a message takes its state with it; the price, rewriting a
        few hundred bytes per recipient, is small beside the fsync both
        designs pay.

        L{queued} and L{get} show the new states at once.  If the returned
        L{Deferred} fails, the states on disk may be the old ones: the
        caller must not treat them as recorded (a recipient delivered but
        not recorded may be sent again after a crash; try again).

        @param states: new states by RID; each RID must be one of the
            message's, with the same address.
        @return: a L{Deferred} firing once the states are on stable
            storage, or failing with a transient L{StoreError}.
        @raise KeyError: there is no such message in the queue.
        @raise ValueError: a state does not fit the message.
        """
        entry = self._entry(mid)
        merged = dict(entry.recipients)
        for rid, state in states.items():
            if rid != state.rid or rid not in merged or merged[rid].address != state.address:
                raise ValueError(f"MID {mid}: {state!r} is not the state of RID {rid}")
            merged[rid] = state
        entry.recipients = merged
        self._state_serial += 1
        step = _WriteStep(
            os.path.join(self._tmp_dir, f"{mid}.json.{self._state_serial}"),
            self._state_path(mid),
            self._state_dir,
            data=encode_recipient_states(mid, merged),
        )

        def failed(failure: Failure) -> Failure:
            # Reload from disk next time rather than show states that may
            # not be durable.
            if self._entries.get(mid) is entry:
                del self._entries[mid]
            return Failure(_store_error(failure, f"MID {mid}: recipient states not recorded"))

        return self.committer.submit(step).addErrback(failed)

    def remove(self, mid: int) -> Deferred[None]:
        """
        Forget finished message C{mid} (every recipient delivered or
        bounced) durably: once the L{Deferred} fires, it is never found in
        the queue again.  L{queued} stops showing it at once.

        @return: a L{Deferred} firing once the removal is on stable storage,
            or failing with a transient L{StoreError} (the message then
            shows up again).
        """
        self._entries.pop(mid, None)
        self._removing.add(mid)
        step = _RemoveStep(self.message_path(mid), self._state_path(mid), self._queue_dir)

        def done(result: Failure | None) -> Failure | None:
            self._removing.discard(mid)
            if isinstance(result, Failure):
                return Failure(_store_error(result, f"MID {mid} could not be removed"))
            return None

        return self.committer.submit(step).addBoth(done)

    # -- shutting down -----------------------------------------------------

    def close(self) -> Deferred[None]:
        """
        Stop: discard messages still being received (never acknowledged),
        wait for the durable changes already requested, then remove this
        spool's temporary directory and release its lock.
        """
        for message in list(self._open.values()):
            message.abort()

        def release(_: None) -> None:
            if self._lock_fd < 0:
                return
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            _unlink_quietly(self._tmp_dir + ".lock")
            os.close(self._lock_fd)
            self._lock_fd = -1
            self._fs.close()

        return self.committer.drain().addCallback(release)
