# -*- test-case-name: tests.test_spool_store -*-
"""
The few file system operations the spool's guarantees rest on, gathered in
one replaceable object.

A test cannot fill a real disk, pull a cable or count the fsyncs the kernel
did; it can hand the spool a L{FileSystem} whose methods fail, count or
report a nearly full disk, and then watch what the spool and its peers do.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, TypeVar

__all__ = ["FileSystem", "WholeFileSystemSync", "syncfs_unsupported"]

_SYNC_FILE_RANGE_WRITE = 2


def _libc_sync_file_range() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _libc_sync_file_range()

_T = TypeVar("_T")


def _owner_only(path: str, flags: int) -> int:
    """
    Open C{path} as L{open}'s C{opener} would, creating it readable and
    writable by its owner only: spool files hold other people's mail.
    """
    return os.open(path, flags | os.O_CLOEXEC, 0o600)


def _each(sync: Callable[[_T], None], items: Sequence[_T]) -> list[BaseException | None]:
    """
    Sync every item, each whatever became of the others: C{None} for each
    that succeeded, the exception for each that did not.
    """
    results: list[BaseException | None] = []
    for item in items:
        try:
            sync(item)
        except Exception as e:
            results.append(e)
        else:
            results.append(None)
    return results


class FileSystem:
    """
    The real file system.  Subclass and override to inject faults.
    """

    #: Buffer size of message files: big enough that a typical message
    #: reaches the kernel in one or two C{write} calls.
    buffer_size = 64 * 1024

    def open_for_writing(self, path: str) -> BinaryIO:
        """
        Create C{path}, which must not exist, readable by its owner only,
        and open it for buffered writing (a large message, received a
        chunk at a time).
        """
        return open(path, "xb", buffering=self.buffer_size, opener=_owner_only)

    def create(self, path: str, data: bytes) -> int:
        """
        Create C{path}, which must not exist, readable by its owner only,
        and write all of C{data} to it; on failure nothing is left behind.

        Plain system calls rather than a buffered file object, which costs
        two more (the C{fstat} of C{open}, a separate flush): this runs in
        the commit's thread, where after each system call the thread waits
        its turn for the interpreter lock with the busy reactor.

        @return: the open descriptor, for the caller to sync and close.
        """
        fd = _owner_only(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[written:]
        except BaseException:
            os.close(fd)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            raise
        return fd

    def fsync(self, fd: int) -> None:
        """
        Wait until the data and metadata of the open file C{fd} are on
        stable storage.  Runs in a thread, never on the reactor.
        """
        os.fsync(fd)

    def fsync_directory(self, path: str) -> None:
        """
        Wait until the entries of directory C{path} (names created, renamed
        or removed) are on stable storage.  Runs in a thread, never on the
        reactor.
        """
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def start_writeback(self, fd: int) -> None:
        """
        Ask the kernel to start writing the open file C{fd} to disk, without
        waiting and without any promise (Linux C{sync_file_range} with
        C{SYNC_FILE_RANGE_WRITE}; nothing elsewhere).  Errors are left for
        the C{fsync} that follows to report.
        """
        if _sync_file_range is not None:
            _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)

    def sync_files(self, fds: Sequence[int]) -> list[BaseException | None]:
        """
        Make the data and metadata of each open file durable.  Runs in a
        thread, never on the reactor.

        The write-back of every file is started first, so that the disk
        gets them as one burst and the first C{fsync}'s journal commit
        covers the block allocations of all of them; the later C{fsync}s
        then mostly find their work done: 11% more commits per second with
        the spool alone (C{bench/README.md}).

        @return: for each descriptor, C{None} or the exception that stopped
            its sync (the others' syncs are still attempted).
        """
        if len(fds) > 1:
            for fd in fds:
                self.start_writeback(fd)
        return _each(self.fsync, fds)

    def sync_directories(self, paths: Sequence[str]) -> list[BaseException | None]:
        """
        Make the entries of each directory durable, as L{sync_files}.
        """
        return _each(self.fsync_directory, paths)

    def replace(self, source: str, destination: str) -> None:
        """
        Atomically give file C{source} the name C{destination}.
        """
        os.replace(source, destination)

    def close(self) -> None:
        """
        The spool is closed: release what this object holds.
        """

    #: Seconds an answer of L{free_bytes} is reused.  Sessions ask at every
    #: MAIL FROM, on the reactor thread, and a C{statvfs} per message was 2%
    #: of the reactor under load; a quarter of a second of mail is far below
    #: any sensible C{min_free_bytes}.
    free_bytes_ttl = 0.25

    def free_bytes(self, path: str) -> int:
        """
        @return: the bytes an unprivileged process may still write on the
            file system holding C{path}, as L{query_free_bytes} said at most
            L{free_bytes_ttl} seconds ago.
        """
        now = time.monotonic()
        cache: dict[str, tuple[float, int]] = self.__dict__.setdefault("_free_bytes_cache", {})
        cached = cache.get(path)
        if cached is not None and now - cached[0] < self.free_bytes_ttl:
            return cached[1]
        free = self.query_free_bytes(path)
        cache[path] = (now, free)
        return free

    def query_free_bytes(self, path: str) -> int:
        """
        Ask the file system holding C{path} how many bytes an unprivileged
        process may still write there.
        """
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize


def syncfs_unsupported(system: str | None = None, release: str | None = None) -> str | None:
    """
    Why C{syncfs} cannot be trusted here, or C{None} if it can.

    Linux before 5.8 returns success from C{syncfs} even when writing a
    file back failed, so a lost write would be acknowledged with 250.
    """
    if system is None or release is None:
        uname = os.uname()
        system, release = uname.sysname, uname.release
    if system != "Linux":
        return f"syncfs is a Linux system call; this is {system}"
    try:
        major, minor = (int(part) for part in release.split(".")[:2])
    except ValueError:
        return f"cannot read the Linux version from {release!r}"
    if (major, minor) < (5, 8):
        return f"Linux {release} does not report write-back errors to syncfs (5.8 does)"
    return None


class WholeFileSystemSync(FileSystem):
    """
    C{spool_sync = "filesystem"}: one C{syncfs(2)} makes a whole batch
    durable, where L{FileSystem} makes one C{fsync} per file.

    Under load each C{fsync} waits its turn for a journal commit, and a
    batch of fifteen messages paid fifteen of them (issue 7: the commit's
    thread job took 7 ms at the median, 3.5 ms with C{syncfs}).  The price
    is that C{syncfs} also writes back everything else dirty on the same
    file system: worth it only when the spool has a file system of its
    own, which is why it is not the default.

    One descriptor of the spool directory is kept open for the life of the
    spool: the kernel reports a write-back error to C{syncfs} once per open
    descriptor, counting from when it was opened, so a descriptor opened
    per call would miss the errors that happened between two calls.
    """

    def __init__(self, directory: str) -> None:
        why = syncfs_unsupported()
        if why is not None:
            raise OSError(f'spool_sync = "filesystem": {why}')
        self._fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._syncfs = ctypes.CDLL(None, use_errno=True).syncfs

    def syncfs(self) -> None:
        """
        Write back and commit the spool's whole file system.
        """
        if self._syncfs(self._fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"syncfs: {os.strerror(code)}")

    def _all(self, count: int) -> list[BaseException | None]:
        try:
            self.syncfs()
        except Exception as e:
            return [e] * count
        return [None] * count

    def sync_files(self, fds: Sequence[int]) -> list[BaseException | None]:
        return self._all(len(fds))

    def sync_directories(self, paths: Sequence[str]) -> list[BaseException | None]:
        return self._all(len(paths))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
