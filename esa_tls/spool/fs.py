# -*- test-case-name: tests.test_spool_store -*-
"""
The few file system operations the spool's guarantees rest on, gathered in
one replaceable object.

A test cannot fill a real disk, pull a cable or count the fsyncs the kernel
did; it can hand the spool a L{FileSystem} whose methods fail, count or
report a nearly full disk, and then watch what the spool and its peers do.
"""

from __future__ import annotations

import os
from typing import BinaryIO

__all__ = ["FileSystem"]


class FileSystem:
    """
    The real file system.  Subclass and override to inject faults.
    """

    #: Buffer size of message files: big enough that a typical message
    #: reaches the kernel in one or two C{write} calls.
    buffer_size = 64 * 1024

    def open_for_writing(self, path: str) -> BinaryIO:
        """
        Create C{path}, which must not exist, and open it for buffered
        writing.
        """
        return open(path, "xb", buffering=self.buffer_size)

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

    def replace(self, source: str, destination: str) -> None:
        """
        Atomically give file C{source} the name C{destination}.
        """
        os.replace(source, destination)

    def free_bytes(self, path: str) -> int:
        """
        @return: the bytes an unprivileged process may still write on the
            file system holding C{path}.
        """
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize
