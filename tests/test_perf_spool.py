"""
The spool's in-memory path (C{memory_limit}), which the gateway uses so
that the reactor thread never creates a file: a small message has no file
at all until its commit's thread job writes, syncs and renames it; a large
one gets its file once it outgrows the limit.  Either way the guarantees
are those of the file path: nothing in C{queue/} before it is durable,
byte-exact contents, and nothing left behind by an abort or a failure.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Any, BinaryIO

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from esa_tls.interfaces import StoreError
from esa_tls.spool import DurableSpool
from esa_tls.spool.fs import FileSystem
from esa_tls.values import Envelope

ENVELOPE = Envelope(
    mail_from="sender@example.org",
    rcpt_to=("first@example.com",),
    helo="client.example.org",
    peer_ip="192.0.2.1",
    listener="InboundMail",
    icid=7,
    received_at=1795877068.0,
)

LIMIT = 16 * 1024


def _files(directory: str, sub: str) -> list[str]:
    return sorted(
        name
        for _, _, files in os.walk(os.path.join(directory, sub))
        for name in files
        if not name.endswith(".lock")
    )


class RecordingFileSystem(FileSystem):
    """
    The real file system, recording which thread creates files, and
    failing creation when told to.
    """

    def __init__(self) -> None:
        self.created_in: list[str] = []
        self.fail_create = False

    def open_for_writing(self, path: str) -> BinaryIO:
        self.created_in.append(threading.current_thread().name)
        if self.fail_create:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return super().open_for_writing(path)

    def create(self, path: str, data: bytes) -> int:
        self.created_in.append(threading.current_thread().name)
        if self.fail_create:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return super().create(path, data)


class MemoryPathTests(TestCase):
    def make_spool(self, **kwargs: Any) -> DurableSpool:
        spool = DurableSpool(self.mktemp(), reactor, memory_limit=LIMIT, **kwargs)
        self.addCleanup(spool.close)
        return spool

    @inlineCallbacks
    def test_smallMessageNeverTouchesTheReactorThread(self) -> Any:
        """
        A message under the limit has no file while it is received; its
        commit creates the file in a thread, and the result is the same
        file, read back byte for byte, after a restart too.
        """
        fs = RecordingFileSystem()
        spool = self.make_spool(filesystem=fs)
        body = b"Subject: small\r\n\r\n" + b"line\r\n" * 500
        message = spool.new_message(ENVELOPE)
        for i in range(0, len(body), 100):
            message.write(body[i : i + 100])
        self.assertEqual(_files(spool.directory, "tmp"), [])
        mid = yield message.commit()
        self.assertEqual(len(fs.created_in), 1)
        self.assertNotEqual(fs.created_in[0], threading.main_thread().name)
        self.assertEqual(_files(spool.directory, "queue"), [f"{mid}.msg"])
        self.assertEqual(_files(spool.directory, "tmp"), [])
        yield spool.close()
        again = DurableSpool(spool.directory, reactor)
        self.addCleanup(again.close)
        [queued] = again.queued()
        self.assertEqual(
            (queued.mid, queued.envelope, queued.body_size), (mid, ENVELOPE, len(body))
        )
        with again.open_body(mid) as f:
            self.assertEqual(f.read(), body)

    @inlineCallbacks
    def test_largeMessageSpills(self) -> Any:
        """
        A message that outgrows the limit gets its file at that moment and
        goes on as a file message; its bytes are intact.
        """
        spool = self.make_spool()
        body = os.urandom(3 * LIMIT)
        message = spool.new_message(ENVELOPE)
        message.write(body[: LIMIT // 2])
        self.assertEqual(_files(spool.directory, "tmp"), [])
        for i in range(LIMIT // 2, len(body), 4096):
            message.write(body[i : i + 4096])
        self.assertEqual(_files(spool.directory, "tmp"), [f"{message.mid}.msg"])
        mid = yield message.commit()
        with spool.open_body(mid) as f:
            self.assertEqual(f.read(), body)
        self.assertEqual(spool.get(mid).body_size, len(body))

    def test_abortLeavesNothing(self) -> None:
        """
        An aborted message, in memory or spilled, leaves no file and
        cannot be committed.
        """
        spool = self.make_spool()
        small = spool.new_message(ENVELOPE)
        small.write(b"x" * 100)
        large = spool.new_message(ENVELOPE)
        large.write(b"x" * (2 * LIMIT))
        small.abort()
        large.abort()
        self.assertEqual(_files(spool.directory, "tmp"), [])
        self.assertEqual(_files(spool.directory, "queue"), [])
        self.failureResultOf(small.commit(), StoreError)
        self.failureResultOf(large.commit(), StoreError)

    @inlineCallbacks
    def test_failureInThreadIsTransient(self) -> Any:
        """
        When the thread cannot create the file (a full disk), the commit
        fails with a transient error (451, never 250), and neither the
        queue nor the temporary directory keeps anything.
        """
        fs = RecordingFileSystem()
        spool = self.make_spool(filesystem=fs)
        fs.fail_create = True
        message = spool.new_message(ENVELOPE)
        message.write(b"Subject: x\r\n\r\nbody\r\n")
        error = yield message.commit().addCallbacks(lambda _: None, lambda f: f.value)
        self.assertIsInstance(error, StoreError)
        self.assertTrue(error.transient)
        self.assertEqual(_files(spool.directory, "queue"), [])
        self.assertEqual(_files(spool.directory, "tmp"), [])
        self.flushLoggedErrors(OSError)

    @inlineCallbacks
    def test_groupCommit(self) -> Any:
        """
        Messages committed in one reactor turn share one thread job, as on
        the file path, and each gets its own MID and bytes.
        """
        spool = self.make_spool()
        messages = [spool.new_message(ENVELOPE) for _ in range(10)]
        for n, message in enumerate(messages):
            message.write(b"Subject: %d\r\n\r\nbody\r\n" % n)
        jobs = spool.committer.jobs
        mids = yield gatherResults([m.commit() for m in messages])
        self.assertEqual(spool.committer.jobs - jobs, 1)
        self.assertEqual(len(set(mids)), 10)
        for n, mid in enumerate(mids):
            with spool.open_body(mid) as f:
                self.assertEqual(f.read(), b"Subject: %d\r\n\r\nbody\r\n" % n)


class ReceiveOnlyTests(TestCase):
    """
    A worker's spool (C{receive_only}): it receives into the shared spool
    but leaves the queue to the delivering process.
    """

    @inlineCallbacks
    def test_sharedQueue(self) -> Any:
        """
        A receive-only spool's messages are found by the delivering spool
        on the same directory; announcing one tells the delivering spool's
        subscribers, which can read it at once.
        """
        directory = self.mktemp()
        primary = DurableSpool(directory, reactor)
        self.addCleanup(primary.close)
        worker = DurableSpool(directory, reactor, receive_only=True, memory_limit=LIMIT)
        self.addCleanup(worker.close)
        heard: list[int] = []
        primary.subscribe(heard.append)
        message = worker.new_message(ENVELOPE)
        message.write(b"Subject: from a worker\r\n\r\nbody\r\n")
        mid = yield message.commit()
        self.assertEqual(heard, [])
        primary.announce(mid)
        self.assertEqual(heard, [mid])
        self.assertEqual(primary.get(mid).envelope, ENVELOPE)
        self.assertEqual([q.mid for q in worker.queued()], [mid])

    @inlineCallbacks
    def test_startUpLeavesQueueAlone(self) -> Any:
        """
        Starting a receive-only spool does not judge the queue (the
        delivering process quarantines what is malformed), yet never hands
        out a MID already on disk.
        """
        directory = self.mktemp()
        first = DurableSpool(directory, reactor)
        mid = yield first.new_message(ENVELOPE).commit()
        yield first.close()
        bogus = os.path.join(directory, "queue", f"{mid + 5000}.msg")
        with open(bogus, "wb") as f:
            f.write(b"not a spool file\n")
        worker = DurableSpool(directory, reactor, receive_only=True)
        self.addCleanup(worker.close)
        self.assertTrue(os.path.exists(bogus))
        self.assertEqual(_files(directory, "corrupt"), [])
        self.assertGreater(worker.new_message(ENVELOPE).mid, mid + 5000)
        self.flushLoggedErrors()
