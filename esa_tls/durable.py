# -*- test-case-name: tests.test_durable -*-
"""
Small files that must survive a crash whole: the ID counters, the TLS report
buckets, the configuration written by C{commit}.

The message spool has its own batched machinery (L{esa_tls.spool}); these
are the one-file-at-a-time writes, all done the same way so that one
reading of this module is enough to trust every one of them.  They block
(fsync): callers run them where blocking is acceptable (start-up, a thread,
a command-line tool).
"""

from __future__ import annotations

import os
import tempfile


def fsync_directory(path: str) -> None:
    """
    Make a rename, a new name or an unlink in directory C{path} durable:
    until the directory itself is synced, a crash may forget the entry even
    though the file's data is on disk.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(
    path: str, data: bytes, mode: int = 0o644, owner: tuple[int, int] | None = None
) -> None:
    """
    Replace C{path} with C{data} so that a crash leaves either the old file
    or the new one: write a temporary file in the same directory, fsync it,
    rename it over C{path}, fsync the directory.  The file has C{mode} from
    the start, so a key is never readable by others, even for a moment.
    The directory is created if missing.

    @param owner: the user and group to give the file (those of the file it
        replaces, say), as far as this process may: root gives both; another
        user keeps the group if it is one of theirs.  C{None}: the process's.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
    )
    try:
        if owner is not None:
            _give(fd, *owner)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    fsync_directory(directory)


def _give(fd: int, uid: int, gid: int) -> None:
    """
    Give the file C{fd} to C{uid} and C{gid}, or to C{gid} alone when only
    root may change the owner, or leave it when neither is allowed.
    """
    for want in ((uid, gid), (-1, gid)):
        try:
            os.fchown(fd, *want)
            return
        except PermissionError:
            continue
