"""
A full disk under a client: every way the spool can meet ENOSPC (a write,
the flush at commit, the fsync, a nearly full file system seen at MAIL)
gives the client a 4xx (451 4.3.0 or 452 4.3.1), never 250; nothing
half-written is queued, even after a restart; and as soon as space
returns, mail flows again on the same connection.
"""

from __future__ import annotations

import errno
import os
from typing import Any, BinaryIO

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from esa_tls.interfaces import StoreError
from esa_tls.spool import DurableSpool, FileSystem
from tests.attacks.support import hang_up
from tests.support import Gateway, Raw, in_thread

TRANSACTION = (
    b"MAIL FROM:<a@client.test>\r\nRCPT TO:<u@example.com>\r\nDATA\r\n",
    b"Subject: disk\r\n\r\n" + b"line of text\r\n" * 400 + b".\r\n",
)
NO_SPACE = b"452 4.3.1 Insufficient system storage\r\n"


class FillableDisk(FileSystem):
    """
    The real file system, until the test fills it: then message files go to
    C{/dev/full} (every write that reaches the kernel fails with a real
    ENOSPC), or fsync reports ENOSPC (as it does for delayed allocation),
    or the free space reported drops below the spool's reserve.
    """

    buffer_size = 4096

    def __init__(self) -> None:
        self.writes_fail = False
        self.fsync_fails = False
        self.free = 10 * 1024**3

    def open_for_writing(self, path: str) -> BinaryIO:
        if self.writes_fail:
            return open("/dev/full", "wb", buffering=self.buffer_size)
        return super().open_for_writing(path)

    def create(self, path: str, data: bytes) -> int:
        if self.writes_fail:
            # The real ENOSPC of a write, from /dev/full.
            fd = os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        return super().create(path, data)

    def fsync(self, fd: int) -> None:
        if self.fsync_fails:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().fsync(fd)

    def free_bytes(self, path: str) -> int:
        return self.free


def send(raw: Raw) -> list[bytes]:
    """
    One transaction, pipelined up to DATA: the replies to MAIL, RCPT, DATA
    and (after 354) the end of the message.
    """
    raw.send(TRANSACTION[0])
    replies = [raw.reply() for _ in range(3)]
    if replies[2].startswith(b"354"):
        replies.append(raw.chat(TRANSACTION[1]))
    return replies


def connect(port: int) -> Raw:
    raw = Raw(port)
    raw.reply()
    raw.chat(b"EHLO client.test\r\n")
    return raw


class DiskFullTests(TestCase):
    def spool(
        self, disk: FileSystem, memory_limit: int, directory: str | None = None
    ) -> DurableSpool:
        directory = directory or os.path.abspath(self.mktemp())
        spool = DurableSpool(directory, reactor, filesystem=disk, memory_limit=memory_limit)
        self.addCleanup(spool.close)
        return spool

    @inlineCallbacks
    def check(self, memory_limit: int) -> Any:
        disk = FillableDisk()
        spool = self.spool(disk, memory_limit)
        gw = Gateway(self, store=spool)
        raw = yield in_thread(connect, gw.port)
        self.addCleanup(hang_up, raw)

        disk.writes_fail = True
        for _ in range(3):
            replies = yield in_thread(send, raw)
            self.assertEqual(replies[:3], [b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n", replies[2]])
            self.assertTrue(replies[-1].startswith(b"451 4.3.0 "), replies)
        disk.writes_fail = False
        disk.fsync_fails = True
        replies = yield in_thread(send, raw)
        self.assertTrue(replies[-1].startswith(b"451 4.3.0 "), replies)
        disk.fsync_fails = False
        disk.free = 1024
        replies = yield in_thread(send, raw)
        self.assertEqual(replies[0], NO_SPACE)
        self.assertEqual(replies[2], b"503 5.5.1 Error: need MAIL command\r\n")

        # Space is back: the same connection gets its mail accepted.
        disk.free = 10 * 1024**3
        replies = yield in_thread(send, raw)
        self.assertTrue(replies[-1].startswith(b"250 2.0.0 Ok: Message "), replies)
        mid = int(replies[-1].split()[4])
        self.assertEqual([m.mid for m in spool.queued()], [mid])
        with spool.open_body(mid) as f:
            self.assertTrue(f.read().endswith(TRANSACTION[1][:-3]))
        # The spool logs each failed write or sync (the administrator must
        # hear of a full disk); the client only ever saw 4xx.
        self.flushLoggedErrors(OSError, StoreError)

        # After a restart only that message is there, and no temporary
        # file of the failed ones is left.
        yield spool.close()
        again = self.spool(FileSystem(), memory_limit, spool.directory)
        self.assertEqual([m.mid for m in again.queued()], [mid])
        leftovers = [
            name
            for _, _, names in os.walk(os.path.join(again.directory, "tmp"))
            for name in names
            if not name.endswith(".lock")
        ]
        self.assertEqual(leftovers, [])

    def test_messagesOnDisk(self) -> Any:
        """
        Messages written to their file as they arrive: ENOSPC on the writes
        (or at the commit's flush) and on fsync gives 451 4.3.0, a nearly
        full file system gives 452 4.3.1 at MAIL; never 250.  When space
        returns the next message is accepted, and it alone is queued,
        across a restart.
        """
        return self.check(memory_limit=0)

    def test_messagesInMemory(self) -> Any:
        """
        The same with messages held in memory until the commit writes them
        from a thread.
        """
        return self.check(memory_limit=1024 * 1024)
