"""
The durable spool takes messages the way the C{IMessageStore} contract
says: a commit fires only once the message is whole in C{queue/} and
synced, failures are transient L{StoreError}s that leave nothing behind,
and a start after a crash leaves only complete messages.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar, cast

from attrs import evolve
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface.verify import verifyObject

from esa_tls.ids import IdAllocator
from esa_tls.interfaces import IIncomingMessage, IMessageStore, StoreError
from esa_tls.spool import DurableSpool, FileSystem, IncomingMessage
from esa_tls.spool.fileformat import (
    SIZE_FIELD_OFFSET,
    encode_message_header,
    encode_size_field,
)
from esa_tls.spool.fs import WholeFileSystemSync, syncfs_unsupported
from esa_tls.spool.values import DELIVERED, RecipientState
from esa_tls.values import Envelope, TLSInfo

_T = TypeVar("_T")

ENVELOPE = Envelope(
    mail_from="alice@sender.example",
    rcpt_to=("bob@example.com", "carol@example.com"),
    helo="client.sender.example",
    peer_ip="127.0.0.1",
    listener="InboundMail",
    icid=5,
    sender_group="WHITELIST",
    policy="TRUSTED",
    tls=TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
    received_at=1795877068.5,
)

BODY = b"Received: from client.sender.example\r\nSubject: hi\r\n\r\nHello\r\n.. dotted\r\n"


def _path_of(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


class CountingFileSystem(FileSystem):
    """
    The real file system, counting the syncs the spool asks for and failing
    those it is told to.
    """

    def __init__(self) -> None:
        self.file_syncs: list[str] = []
        self.directory_syncs: list[str] = []
        self.fail_file_sync: Callable[[str], bool] = lambda path: False
        self.fail_directory_sync = False
        self.lock = threading.Lock()

    def fsync(self, fd: int) -> None:
        path = _path_of(fd)
        with self.lock:
            self.file_syncs.append(path)
        if self.fail_file_sync(path):
            raise OSError(errno.EIO, "injected I/O error")
        super().fsync(fd)

    def fsync_directory(self, path: str) -> None:
        with self.lock:
            self.directory_syncs.append(path)
        if self.fail_directory_sync:
            raise OSError(errno.EIO, "injected I/O error")
        super().fsync_directory(path)


class FullDiskFileSystem(FileSystem):
    """
    Message files go to C{/dev/full}: every write that reaches the kernel
    fails with a real C{ENOSPC}.
    """

    buffer_size = 4096

    def open_for_writing(self, path: str) -> BinaryIO:
        return open("/dev/full", "wb", buffering=self.buffer_size)

    def create(self, path: str, data: bytes) -> int:
        fd = os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        raise AssertionError("/dev/full took a write")


class CountingExecutor:
    """
    Runs jobs in the reactor's thread pool, counting them.
    """

    def __init__(self) -> None:
        self.jobs = 0

    def __call__(self, f: Callable[[], _T]) -> Deferred[_T]:
        self.jobs += 1
        return deferToThread(f)


def _queue_files(directory: str) -> list[str]:
    return sorted(os.listdir(os.path.join(directory, "queue")))


def _tmp_files(directory: str) -> list[str]:
    found = []
    for root, _, files in os.walk(os.path.join(directory, "tmp")):
        found += [os.path.join(root, f) for f in files if not f.endswith(".lock")]
    return found


def _complete(mid: int) -> bytes:
    """
    The file of a committed message C{mid} holding L{BODY}.
    """
    header = encode_message_header(mid, ENVELOPE)
    size = encode_size_field(len(BODY))
    return header[:SIZE_FIELD_OFFSET] + size + header[SIZE_FIELD_OFFSET + len(size) :] + BODY


def _without_file_permission_override(case: TestCase, script: str, *args: str) -> Any:
    """
    Run Python C{script} in a process that file permissions apply to: this
    one's, or, for root, one without C{CAP_DAC_OVERRIDE} and
    C{CAP_DAC_READ_SEARCH}.

    @return: what the script printed, as JSON.
    """
    command = [sys.executable, "-c", script, *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise SkipTest("root, and no setpriv to drop CAP_DAC_OVERRIDE")
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *command]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    done = subprocess.run(command, capture_output=True, timeout=60, check=False, env=env)
    case.assertEqual(done.returncode, 0, done.stderr.decode(errors="replace"))
    return json.loads(done.stdout)


def _immutable(case: TestCase, path: str) -> None:
    """
    Make directory C{path} immutable (nothing may be added to or removed
    from it, even by root) until the test ends.
    """
    try:
        subprocess.run(["chattr", "+i", path], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise SkipTest(f"cannot make {path} immutable: {e}") from None
    case.addCleanup(subprocess.run, ["chattr", "-i", path], check=False)


class FIFOWatch:
    """
    Makes FIFOs where the spool expects files, and frees a reader that
    blocks opening one (after C{patience} seconds) so that a spool that
    does so fails the test instead of hanging it.
    """

    def __init__(self, patience: float = 5.0) -> None:
        self.patience = patience
        self.blocked: list[str] = []
        self._timers: list[threading.Timer] = []

    def make(self, path: str) -> None:
        os.mkfifo(path)
        timer = threading.Timer(self.patience, self._free, (path,))
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def _free(self, path: str) -> None:
        try:
            # Succeeds only if a reader is waiting in open().
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return
        self.blocked.append(path)
        os.close(fd)

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()


class SpoolTestMixin:
    """
    Builds spools in a fresh directory and closes them after the test.
    """

    mktemp: Callable[[], str]
    addCleanup: Callable[..., None]

    def make_spool(self, directory: str | None = None, **kwargs: Any) -> DurableSpool:
        if directory is None:
            directory = self.mktemp()
        spool = DurableSpool(directory, IReactorTime(reactor), **kwargs)
        self.addCleanup(spool.close)
        return spool

    def written(self, spool: DurableSpool, count: int) -> list[IncomingMessage]:
        """
        C{count} messages started in C{spool}, each holding L{BODY}, not yet
        committed.
        """
        messages = [spool.new_message(ENVELOPE) for _ in range(count)]
        for m in messages:
            m.write(BODY)
        return messages

    def capture_log(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return events


class CommitTests(SpoolTestMixin, TestCase):
    def test_interfaces(self) -> None:
        """
        The spool and its messages provide the store interfaces.
        """
        spool = self.make_spool()
        self.assertTrue(verifyObject(IMessageStore, spool))
        message = spool.new_message(ENVELOPE)
        self.assertTrue(verifyObject(IIncomingMessage, message))
        message.abort()

    @inlineCallbacks
    def test_commitStoresEnvelopeAndBytes(self) -> Any:
        """
        The MID the commit fires with names a file in C{queue/} holding the
        envelope and exactly the bytes written, and C{open_body} yields
        those bytes without the spool's header.
        """
        spool = self.make_spool()
        message = spool.new_message(ENVELOPE)
        for i in range(0, len(BODY), 7):
            message.write(BODY[i : i + 7])
        mid = yield message.commit()
        self.assertEqual(mid, message.mid)
        self.assertEqual(_queue_files(spool.directory), [f"{mid}.msg"])
        with open(spool.message_path(mid), "rb") as f:
            raw = f.read()
        header = encode_message_header(mid, ENVELOPE)
        self.assertTrue(raw.endswith(b"\n" + BODY))
        self.assertEqual(len(raw), len(header) + len(BODY))
        with spool.open_body(mid) as f:
            self.assertEqual(f.read(), BODY)
        [queued] = spool.queued()
        self.assertEqual(queued.envelope, ENVELOPE)
        self.assertEqual(queued.body_size, len(BODY))
        self.assertEqual(_tmp_files(spool.directory), [])

    @inlineCallbacks
    def test_ownerOnly(self) -> Any:
        """
        The spool's directories and files are its owner's alone: a message
        received in memory, one received into a file, and a recipient state
        file are all created with mode 0600, in directories made 0700.
        """
        spool = self.make_spool(memory_limit=1024)
        small = spool.new_message(ENVELOPE)
        small.write(BODY)
        large = spool.new_message(ENVELOPE)
        large.write(b"x" * 4096)
        small_mid = yield small.commit()
        large_mid = yield large.commit()
        yield spool.update_recipients(
            small_mid, {0: RecipientState(0, "bob@example.com", DELIVERED, 1, 0.0, "")}
        )
        state = os.path.join(spool.directory, "state")
        files = [spool.message_path(small_mid), spool.message_path(large_mid)]
        files += [os.path.join(state, name) for name in os.listdir(state)]
        self.assertEqual(len(files), 3)
        for path in files:
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
        for name in ("queue", "state", "corrupt", "tmp"):
            path = os.path.join(spool.directory, name)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o700, path)

    @inlineCallbacks
    def test_committedMessageSurvivesRestart(self) -> Any:
        """
        A new spool on the same directory finds the committed message with
        its envelope and bytes.
        """
        directory = self.mktemp()
        spool = self.make_spool(directory)
        message = spool.new_message(ENVELOPE)
        message.write(BODY)
        mid = yield message.commit()
        yield spool.close()
        again = self.make_spool(directory)
        [queued] = again.queued()
        self.assertEqual((queued.mid, queued.envelope), (mid, ENVELOPE))
        with again.open_body(mid) as f:
            self.assertEqual(f.read(), BODY)

    @inlineCallbacks
    def test_midsDistinctAndIncreasing(self) -> Any:
        """
        Every message gets its own MID, also across a restart.
        """
        directory = self.mktemp()
        spool = self.make_spool(directory)
        first = []
        for _ in range(3):
            m = spool.new_message(ENVELOPE)
            first.append((yield m.commit()))
        yield spool.close()
        again = self.make_spool(directory)
        later = yield again.new_message(ENVELOPE).commit()
        self.assertEqual(len(set(first)), 3)
        self.assertGreater(later, max(first))

    def test_abortLeavesNothing(self) -> None:
        """
        An aborted message leaves no file anywhere in the spool, and a
        commit after the abort fails.
        """
        spool = self.make_spool()
        message = spool.new_message(ENVELOPE)
        message.write(BODY)
        message.abort()
        self.assertEqual(_queue_files(spool.directory), [])
        self.assertEqual(_tmp_files(spool.directory), [])
        self.failureResultOf(message.commit(), StoreError)
        self.assertEqual(spool.queued(), [])

    @inlineCallbacks
    def test_commitWaitsForDirectorySync(self) -> Any:
        """
        The commit does not fire (the session does not say 250) while the
        sync of C{queue/} is still running, and fires once it returned.
        """
        entered = threading.Event()
        release = threading.Event()

        class SlowFileSystem(FileSystem):
            def fsync_directory(self, path: str) -> None:
                entered.set()
                release.wait(30)
                super().fsync_directory(path)

        spool = self.make_spool(filesystem=SlowFileSystem())
        message = spool.new_message(ENVELOPE)
        message.write(BODY)
        d = message.commit()
        fired: list[int] = []
        d.addCallback(fired.append)
        yield deferToThread(entered.wait, 30)
        # Let the reactor run a few turns while the sync is blocked.
        for _ in range(5):
            yield deferToThread(lambda: None)
        self.assertEqual(fired, [])
        release.set()
        yield d
        self.assertEqual(fired, [message.mid])


class GroupCommitTests(SpoolTestMixin, TestCase):
    @inlineCallbacks
    def test_oneJobPerTurn(self) -> Any:
        """
        Twenty commits requested in the same reactor turn are made durable
        by one thread job with one sync of C{queue/}, and each fires with
        its own MID.
        """
        fs = CountingFileSystem()
        executor = CountingExecutor()
        spool = self.make_spool(filesystem=fs, executor=executor)
        messages = []
        for i in range(20):
            m = spool.new_message(ENVELOPE)
            m.write(BODY + b"%d\r\n" % (i,))
            messages.append(m)
        mids = yield gatherResults([m.commit() for m in messages])
        self.assertEqual(executor.jobs, 1)
        self.assertEqual(fs.directory_syncs, [os.path.join(spool.directory, "queue")])
        self.assertEqual(len(fs.file_syncs), 20)
        self.assertEqual(sorted(mids), sorted(m.mid for m in messages))
        self.assertEqual(len(set(mids)), 20)
        self.assertEqual(len(_queue_files(spool.directory)), 20)

    @inlineCallbacks
    def test_noNameBeforeDataDurable(self) -> Any:
        """
        While the batch's files are being synced, none of them has its name
        in C{queue/} yet: a crash then leaves only temporary files.
        """
        seen: list[list[str]] = []

        class Watching(CountingFileSystem):
            def fsync(self, fd: int) -> None:
                seen.append(sorted(os.listdir(os.path.join(spool.directory, "queue"))))
                super().fsync(fd)

        spool = self.make_spool(filesystem=Watching())
        messages = self.written(spool, 5)
        yield gatherResults([m.commit() for m in messages])
        self.assertEqual(seen, [[]] * 5)
        self.assertEqual(len(_queue_files(spool.directory)), 5)

    @inlineCallbacks
    def test_writebackStartedForWholeBatch(self) -> Any:
        """
        The write-back of every file of a batch is started before the first
        C{fsync} waits, so that the disk sees them together; a batch of one
        goes straight to its C{fsync}.
        """
        events: list[tuple[str, str]] = []

        class Recording(FileSystem):
            def start_writeback(self, fd: int) -> None:
                events.append(("start", _path_of(fd)))
                super().start_writeback(fd)

            def fsync(self, fd: int) -> None:
                events.append(("fsync", _path_of(fd)))
                super().fsync(fd)

        spool = self.make_spool(filesystem=Recording())
        messages = self.written(spool, 4)
        yield gatherResults([m.commit() for m in messages])
        kinds = [kind for kind, _ in events]
        self.assertEqual(kinds, ["start"] * 4 + ["fsync"] * 4)
        self.assertEqual([p for _, p in events[:4]], [p for _, p in events[4:]])
        del events[:]
        lone = spool.new_message(ENVELOPE)
        lone.write(BODY)
        yield lone.commit()
        self.assertEqual([kind for kind, _ in events], ["fsync"])

    @inlineCallbacks
    def test_laterTurnsJoinNextBatch(self) -> Any:
        """
        Commits requested while a batch is being synced wait for it to end
        and are then synced together in the next single job.
        """
        entered = threading.Event()
        release = threading.Event()

        class SlowFileSystem(CountingFileSystem):
            def fsync_directory(self, path: str) -> None:
                entered.set()
                release.wait(30)
                super().fsync_directory(path)

        fs = SlowFileSystem()
        executor = CountingExecutor()
        spool = self.make_spool(filesystem=fs, executor=executor)
        first = spool.new_message(ENVELOPE).commit()
        yield deferToThread(entered.wait, 30)
        later = []
        for _ in range(3):
            later.append(spool.new_message(ENVELOPE).commit())
            yield deferToThread(lambda: None)  # a different reactor turn each
        release.set()
        yield gatherResults([first, *later])
        self.assertEqual(executor.jobs, 2)
        self.assertEqual(len(fs.directory_syncs), 2)

    @inlineCallbacks
    def test_failureFailsOnlyAffectedCommit(self) -> Any:
        """
        When the file sync of one message of a batch fails, that commit fails
        with a transient L{StoreError} and its file is nowhere in the spool;
        the others of the batch are committed.
        """
        fs = CountingFileSystem()
        spool = self.make_spool(filesystem=fs)
        messages = [spool.new_message(ENVELOPE) for _ in range(3)]
        bad = messages[1]
        fs.fail_file_sync = lambda path: path.endswith(f"/{bad.mid}.msg")
        results = yield gatherResults([m.commit().addErrback(lambda f: f.value) for m in messages])
        self.assertEqual(results[0], messages[0].mid)
        self.assertEqual(results[2], messages[2].mid)
        self.assertIsInstance(results[1], StoreError)
        self.assertTrue(results[1].transient)
        self.assertEqual(
            _queue_files(spool.directory),
            sorted([f"{messages[0].mid}.msg", f"{messages[2].mid}.msg"]),
        )
        self.assertEqual(_tmp_files(spool.directory), [])
        self.flushLoggedErrors(OSError)

    @inlineCallbacks
    def test_directorySyncFailureFailsBatch(self) -> Any:
        """
        When the sync of C{queue/} fails, no commit of the batch succeeds and
        none of their messages stays in the queue (the sessions answer 4xx,
        so delivering them would duplicate mail).
        """
        fs = CountingFileSystem()
        fs.fail_directory_sync = True
        spool = self.make_spool(filesystem=fs)
        messages = self.written(spool, 2)
        results = yield gatherResults([m.commit().addErrback(lambda f: f.value) for m in messages])
        for r in results:
            self.assertIsInstance(r, StoreError)
            self.assertTrue(r.transient)
        self.assertEqual(_queue_files(spool.directory), [])
        self.assertEqual(spool.queued(), [])
        self.flushLoggedErrors(OSError)


class RecordingSyncfs(WholeFileSystemSync):
    """
    The real C{syncfs}, recording what C{queue/} held at each call and
    failing the calls it is told to.
    """

    def __init__(self, directory: str, fail: Callable[[int], bool] = lambda n: False) -> None:
        os.makedirs(directory, exist_ok=True)
        super().__init__(directory)
        self.queue = os.path.join(directory, "queue")
        self.calls: list[list[str]] = []
        self.fsyncs = 0
        self.fail = fail

    def syncfs(self) -> None:
        self.calls.append(sorted(os.listdir(self.queue)))
        if self.fail(len(self.calls)):
            raise OSError(errno.EIO, "injected I/O error")
        super().syncfs()

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        super().fsync(fd)

    def fsync_directory(self, path: str) -> None:
        self.fsyncs += 1
        super().fsync_directory(path)


class WholeFileSystemSyncTests(SpoolTestMixin, TestCase):
    """
    C{spool_sync = "filesystem"}: a batch costs two C{syncfs} calls however
    many messages it holds, with the same guarantees as one C{fsync} per
    file.
    """

    def setUp(self) -> None:
        why = syncfs_unsupported()
        if why is not None:
            raise SkipTest(why)

    def commit_batch(self, spool: DurableSpool, count: int) -> Deferred[list[Any]]:
        messages = []
        for i in range(count):
            m = spool.new_message(ENVELOPE)
            m.write(BODY + b"%d\r\n" % (i,))
            messages.append(m)
        return gatherResults([m.commit().addErrback(lambda f: f.value) for m in messages])

    @inlineCallbacks
    def test_twoSyncsPerBatch(self) -> Any:
        """
        Twenty commits of one turn cost one C{syncfs} for their data, made
        before any of them has its name in C{queue/}, and one for the
        names; no C{fsync} at all.
        """
        directory = self.mktemp()
        fs = RecordingSyncfs(directory)
        spool = self.make_spool(directory, filesystem=fs)
        mids = yield self.commit_batch(spool, 20)
        self.assertEqual(len(set(mids)), 20)
        self.assertEqual(len(fs.calls), 2)
        self.assertEqual(fs.calls[0], [])
        self.assertEqual(fs.calls[1], sorted(f"{mid}.msg" for mid in mids))
        self.assertEqual(fs.fsyncs, 0)
        self.assertEqual(_queue_files(directory), sorted(f"{mid}.msg" for mid in mids))
        self.assertEqual(_tmp_files(directory), [])

    @inlineCallbacks
    def test_dataSyncFailureFailsBatch(self) -> Any:
        """
        When the data C{syncfs} fails, nobody can tell which file was not
        written back: every commit of the batch fails with a transient
        L{StoreError}, and none of their files is left anywhere.
        """
        directory = self.mktemp()
        fs = RecordingSyncfs(directory, fail=lambda n: n == 1)
        spool = self.make_spool(directory, filesystem=fs)
        results = yield self.commit_batch(spool, 3)
        for r in results:
            self.assertIsInstance(r, StoreError)
            self.assertTrue(r.transient)
        self.assertEqual(len(fs.calls), 1)
        self.assertEqual(_queue_files(directory), [])
        self.assertEqual(_tmp_files(directory), [])
        self.flushLoggedErrors(OSError)

    @inlineCallbacks
    def test_directorySyncFailureFailsBatch(self) -> Any:
        """
        When the C{syncfs} of the names fails, the batch's files are taken
        back out of C{queue/} and every commit fails; the next batch
        commits normally.
        """
        directory = self.mktemp()
        fs = RecordingSyncfs(directory, fail=lambda n: n == 2)
        spool = self.make_spool(directory, filesystem=fs)
        results = yield self.commit_batch(spool, 3)
        for r in results:
            self.assertIsInstance(r, StoreError)
        self.assertEqual(_queue_files(directory), [])
        self.assertEqual(spool.queued(), [])
        [mid] = yield self.commit_batch(spool, 1)
        self.assertEqual(_queue_files(directory), [f"{mid}.msg"])
        self.flushLoggedErrors(OSError)

    def test_oldKernelsRefused(self) -> None:
        """
        C{syncfs} is trusted only where the kernel reports write-back
        errors to it (Linux 5.8 and later).
        """
        self.assertIsNone(syncfs_unsupported("Linux", "6.1.0-13-amd64"))
        self.assertIsNone(syncfs_unsupported("Linux", "5.8.0"))
        self.assertIn("5.8", syncfs_unsupported("Linux", "5.4.0-150-generic") or "")
        self.assertIn("Linux", syncfs_unsupported("FreeBSD", "14.0") or "")


class WriteErrorTests(SpoolTestMixin, TestCase):
    def test_writeErrorIsTransient(self) -> None:
        """
        A write that the kernel refuses (a real C{ENOSPC} from C{/dev/full})
        raises a transient L{StoreError}; the message cannot be committed and
        nothing reaches C{queue/}.
        """
        spool = self.make_spool(filesystem=FullDiskFileSystem())
        message = spool.new_message(ENVELOPE)
        with self.assertRaises(StoreError) as caught:
            message.write(b"x" * 100_000)
        self.assertTrue(caught.exception.transient)
        self.assertIn("No space left on device", str(caught.exception))
        self.failureResultOf(message.commit(), StoreError)
        self.assertEqual(_queue_files(spool.directory), [])

    def test_errorAtCommitIsTransient(self) -> None:
        """
        Bytes still buffered when the disk turns out full make the commit
        fail with a transient L{StoreError}, never fire with a MID.
        """
        spool = self.make_spool(filesystem=FullDiskFileSystem())
        message = spool.new_message(ENVELOPE)
        message.write(BODY)
        failure = self.failureResultOf(message.commit(), StoreError)
        self.assertTrue(failure.value.transient)
        self.assertEqual(_queue_files(spool.directory), [])

    def test_noMidWithoutDurableCounter(self) -> None:
        """
        When the MID counter cannot be reserved, starting a message raises
        a transient L{StoreError} rather than risk a duplicate MID.
        """
        counters = self.mktemp()
        os.makedirs(counters)
        allocator = IdAllocator(os.path.join(counters, "mid.counter"), block=1)
        spool = self.make_spool(mid_allocator=allocator)
        spool.new_message(ENVELOPE).abort()  # uses up the reserved block
        for name in os.listdir(counters):
            os.unlink(os.path.join(counters, name))
        os.rmdir(counters)
        with self.assertRaises(StoreError) as caught:
            spool.new_message(ENVELOPE)
        self.assertTrue(caught.exception.transient)


class SpaceTests(SpoolTestMixin, TestCase):
    def test_hasSpace(self) -> None:
        """
        C{has_space} is false once the message would leave less than
        C{min_free_bytes} free.
        """
        free = [100 * 1024 * 1024]
        spool = self.make_spool(min_free_bytes=64 * 1024 * 1024, free_bytes=lambda: free[0])
        self.assertTrue(spool.has_space(10 * 1024 * 1024))
        self.assertTrue(spool.has_space(36 * 1024 * 1024))
        self.assertFalse(spool.has_space(36 * 1024 * 1024 + 1))
        free[0] = 60 * 1024 * 1024
        self.assertFalse(spool.has_space(0))

    def test_hasSpaceAsksFileSystem(self) -> None:
        """
        By default the free space of the spool's real file system counts.
        """
        spool = self.make_spool(min_free_bytes=0)
        self.assertTrue(spool.has_space(0))
        self.assertFalse(spool.has_space(2**62))

    def test_freeSpaceAnswerReused(self) -> None:
        """
        The file system is asked at most once per C{free_bytes_ttl} however
        many sessions ask the spool, and asked again once that has passed.
        """
        queries: list[str] = []

        class Counting(FileSystem):
            def query_free_bytes(self, path: str) -> int:
                queries.append(path)
                return super().query_free_bytes(path)

        fs = Counting()
        fs.free_bytes_ttl = 3600
        spool = self.make_spool(min_free_bytes=0, filesystem=fs)
        for _ in range(50):
            self.assertTrue(spool.has_space(0))
        self.assertEqual(queries, [spool.directory])
        fs.free_bytes_ttl = 0
        self.assertTrue(spool.has_space(0))
        self.assertEqual(len(queries), 2)


class RecoveryTests(SpoolTestMixin, TestCase):
    def test_deadProcessLeftoversRemoved(self) -> None:
        """
        Temporary files of a spool whose process is gone (its lock is free)
        are removed at start: a half-received message is never delivered.
        """
        directory = self.mktemp()
        tmp = os.path.join(directory, "tmp")
        os.makedirs(os.path.join(tmp, "deadbeef"))
        with open(os.path.join(tmp, "deadbeef.lock"), "wb"):
            pass
        with open(os.path.join(tmp, "deadbeef", "17.msg"), "wb") as f:
            f.write(encode_message_header(17, ENVELOPE) + b"half a mess")
        os.makedirs(os.path.join(tmp, "orphan"))
        with open(os.path.join(tmp, "orphan", "18.msg"), "wb") as f:
            f.write(b"x")
        spool = self.make_spool(directory)
        self.assertEqual(_tmp_files(directory), [])
        self.assertFalse(os.path.exists(os.path.join(tmp, "deadbeef.lock")))
        self.assertEqual(spool.queued(), [])

    @inlineCallbacks
    def test_liveSpoolLeftAlone(self) -> Any:
        """
        A second spool starting on the same directory (another worker
        process) leaves the first one's message in progress alone, and the
        first can still commit it.
        """
        directory = self.mktemp()
        first = self.make_spool(directory)
        message = first.new_message(ENVELOPE)
        message.write(BODY)
        second = self.make_spool(directory)
        mid = yield message.commit()
        self.assertEqual([q.mid for q in second.queued()], [mid])

    def test_lockHeldByOtherProcessRespected(self) -> None:
        """
        A temporary directory whose lock is held is not swept.
        """
        directory = self.mktemp()
        tmp = os.path.join(directory, "tmp")
        os.makedirs(os.path.join(tmp, "alive"))
        fd = os.open(os.path.join(tmp, "alive.lock"), os.O_RDWR | os.O_CREAT)
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with open(os.path.join(tmp, "alive", "3.msg"), "wb") as f:
            f.write(b"in progress")
        self.make_spool(directory)
        self.assertEqual(_tmp_files(directory), [os.path.join(tmp, "alive", "3.msg")])

    def test_corruptFilesQuarantined(self) -> None:
        """
        Queue files that are not valid spool files (garbage, a truncated
        body, a header naming another MID, a bad name) are moved to
        C{corrupt/} with an error log line, never listed for delivery, and
        their MIDs are never handed out again.
        """
        directory = self.mktemp()
        queue = os.path.join(directory, "queue")
        os.makedirs(queue)

        def header(mid: int, size: int) -> bytes:
            h = encode_message_header(mid, ENVELOPE)
            offset = h.index(b'"body_size":') + len(b'"body_size":')
            return h[:offset] + encode_size_field(size) + h[offset + 20 :]

        files = {
            "40.msg": b"garbage\n",
            "41.msg": header(41, 100) + b"too short",
            "42.msg": header(7, 3) + b"abc",
            "notes.txt": b"hello",
            "5000.msg": b'{"format":"esa_tls-spool","version":99}\n',
            # A header line that never ends, longer than the first read.
            "44.msg": b'{"format":"esa_tls-spool","version":1,' + b" " * 20000,
        }
        for name, data in files.items():
            with open(os.path.join(queue, name), "wb") as f:
                f.write(data)
        good = header(43, len(BODY)) + BODY
        with open(os.path.join(queue, "43.msg"), "wb") as f:
            f.write(good)
        events = self.capture_log()
        spool = self.make_spool(directory)
        self.assertEqual([q.mid for q in spool.queued()], [43])
        self.assertEqual(sorted(os.listdir(os.path.join(directory, "corrupt"))), sorted(files))
        quarantined = [e for e in events if "quarantined" in e.get("log_format", "")]
        self.assertEqual(len(quarantined), len(files))
        self.assertGreater(spool.new_message(ENVELOPE).mid, 5000)

    def test_oddEntriesSetAside(self) -> None:
        """
        What an operator or a restore may leave in the spool's directories
        that is not a file the spool wrote (a directory, a FIFO, a symbolic
        link loop where a message or a state file would be; a directory
        where a lock file would be) neither stops nor blocks start-up: each
        is moved to C{corrupt/} with an error naming it, or left alone in
        C{tmp/}, and the messages beside it are delivered.
        """
        directory = self.mktemp()
        queue = os.path.join(directory, "queue")
        state = os.path.join(directory, "state")
        tmp = os.path.join(directory, "tmp")
        for d in (queue, state, tmp):
            os.makedirs(d)
        fifos = FIFOWatch()
        self.addCleanup(fifos.stop)
        os.mkdir(os.path.join(queue, "50.msg"))
        fifos.make(os.path.join(queue, "51.msg"))
        os.symlink("52.msg", os.path.join(queue, "52.msg"))
        os.mkdir(os.path.join(state, "53.json"))
        os.mkdir(os.path.join(state, "lost+found"))
        os.mkdir(os.path.join(tmp, "odd.lock"))
        # A good message whose state file is a FIFO: its delivery state is
        # unknown, so both are kept for an operator.
        with open(os.path.join(queue, "54.msg"), "wb") as f:
            f.write(_complete(54))
        fifos.make(os.path.join(state, "54.json"))
        with open(os.path.join(queue, "55.msg"), "wb") as f:
            f.write(_complete(55))
        events = self.capture_log()
        spool = self.make_spool(directory)
        self.assertEqual(fifos.blocked, [])
        self.assertEqual([q.mid for q in spool.queued()], [55])
        with spool.open_body(55) as f:
            self.assertEqual(f.read(), BODY)
        set_aside = ["50.msg", "51.msg", "52.msg", "53.json", "54.json", "54.msg", "lost+found"]
        self.assertEqual(sorted(os.listdir(os.path.join(directory, "corrupt"))), set_aside)
        quarantined = [e for e in events if "quarantined" in e.get("log_format", "")]
        self.assertEqual(sorted(os.path.basename(e["path"]) for e in quarantined), set_aside)
        self.assertGreater(spool.new_message(ENVELOPE).mid, 55)

    def test_oddEntryAppearsWhileRunning(self) -> None:
        """
        A directory or a FIFO that appears in C{queue/} while the gateway
        runs is set aside by the next scan, which lists the other messages
        as before.
        """
        spool = self.make_spool()
        queue = os.path.join(spool.directory, "queue")
        with open(os.path.join(queue, "60.msg"), "wb") as f:
            f.write(_complete(60))
        os.mkdir(os.path.join(queue, "61.msg"))
        fifos = FIFOWatch()
        self.addCleanup(fifos.stop)
        fifos.make(os.path.join(queue, "62.msg"))
        self.assertEqual([q.mid for q in spool.queued()], [60])
        self.assertEqual(fifos.blocked, [])
        self.assertEqual(
            sorted(os.listdir(os.path.join(spool.directory, "corrupt"))), ["61.msg", "62.msg"]
        )

    def test_namesNeverFoundSetAside(self) -> None:
        """
        A message file whose name is not the one the spool gives its MID
        (C{0090.msg} for MID 90), and a symbolic link to nothing, are set
        aside in C{corrupt/} with an error, not passed over in silence at
        every scan while the message is never delivered.
        """
        directory = self.mktemp()
        queue = os.path.join(directory, "queue")
        os.makedirs(queue)
        with open(os.path.join(queue, "0090.msg"), "wb") as f:
            f.write(_complete(90))
        os.symlink(os.path.join(directory, "gone"), os.path.join(queue, "91.msg"))
        events = self.capture_log()
        spool = self.make_spool(directory)
        self.assertEqual(spool.queued(), [])
        self.assertEqual(_queue_files(directory), [])
        set_aside = ["0090.msg", "91.msg"]
        self.assertEqual(sorted(os.listdir(os.path.join(directory, "corrupt"))), set_aside)
        quarantined = [e for e in events if "quarantined" in e.get("log_format", "")]
        self.assertEqual(sorted(os.path.basename(e["path"]) for e in quarantined), set_aside)
        self.assertGreater(spool.new_message(ENVELOPE).mid, 91)

    def test_unreadableMessageLeftInQueue(self) -> None:
        """
        A message file the gateway may not read (its mode or owner wrong
        after a restore) neither stops start-up nor is quarantined (the
        message may be fine): the error names it, once however many scans
        find it, the other messages are listed, and once it can be read
        it is listed too.
        """
        directory = self.mktemp()
        queue = os.path.join(directory, "queue")
        os.makedirs(queue)
        for mid in (70, 71):
            with open(os.path.join(queue, f"{mid}.msg"), "wb") as f:
                f.write(_complete(mid))
        os.chmod(os.path.join(queue, "70.msg"), 0)
        seen = _without_file_permission_override(
            self,
            "import json, os, sys\n"
            "from twisted.internet import reactor\n"
            "from twisted.logger import formatEvent, globalLogPublisher\n"
            "from esa_tls.spool import DurableSpool\n"
            "said = []\n"
            "globalLogPublisher.addObserver(lambda e: said.append(formatEvent(e)))\n"
            "spool = DurableSpool(sys.argv[1], reactor)\n"
            "queued = [[q.mid for q in spool.queued()] for _ in range(3)]\n"
            "corrupt = os.listdir(os.path.join(sys.argv[1], 'corrupt'))\n"
            "print(json.dumps({'queued': queued, 'corrupt': corrupt, 'said': said}))\n",
            directory,
        )
        self.assertEqual(seen["queued"], [[71]] * 3)
        self.assertEqual(seen["corrupt"], [])
        about = [line for line in seen["said"] if "70.msg" in line]
        self.assertEqual(len(about), 1, seen["said"])
        self.assertIn("Permission denied", about[0])
        os.chmod(os.path.join(queue, "70.msg"), 0o600)
        spool = self.make_spool(directory)
        self.assertEqual([q.mid for q in spool.queued()], [70, 71])
        with spool.open_body(70) as f:
            self.assertEqual(f.read(), BODY)

    def test_quarantineRefused(self) -> None:
        """
        A malformed message that cannot be moved to C{corrupt/} (here an
        immutable directory) does not stop start-up: it stays where it is,
        is said in the log, and is not delivered.
        """
        directory = self.mktemp()
        queue = os.path.join(directory, "queue")
        corrupt = os.path.join(directory, "corrupt")
        os.makedirs(queue)
        os.makedirs(corrupt)
        with open(os.path.join(queue, "80.msg"), "wb") as f:
            f.write(b"garbage\n")
        with open(os.path.join(queue, "81.msg"), "wb") as f:
            f.write(_complete(81))
        _immutable(self, corrupt)
        events = self.capture_log()
        spool = self.make_spool(directory)
        self.assertEqual([q.mid for q in spool.queued()], [81])
        self.assertEqual(_queue_files(directory), ["80.msg", "81.msg"])
        refused = [e for e in events if "could not be moved" in e.get("log_format", "")]
        self.assertTrue(refused)
        self.assertEqual(refused[0]["path"], os.path.join(os.path.abspath(queue), "80.msg"))

    @inlineCallbacks
    def test_largeHeader(self) -> Any:
        """
        A message whose header (its envelope) is longer than the spool's
        first read of a file, with a thousand recipients, is found again
        whole by a new spool on the same directory.
        """
        directory = self.mktemp()
        envelope = evolve(ENVELOPE, rcpt_to=tuple(f"user{n}@example.com" for n in range(1000)))
        spool = self.make_spool(directory)
        message = spool.new_message(envelope)
        message.write(BODY)
        mid = yield message.commit()
        yield spool.close()
        self.assertGreater(len(encode_message_header(mid, envelope)), 16384)
        again = self.make_spool(directory)
        [queued] = again.queued()
        self.assertEqual(queued.envelope, envelope)
        self.assertEqual(len(queued.recipients), 1000)
        with again.open_body(mid) as f:
            self.assertEqual(f.read(), BODY)

    def test_orphanStateRemoved(self) -> None:
        """
        A state file without its message (a removal interrupted after the
        message was unlinked) is removed at start.
        """
        directory = self.mktemp()
        os.makedirs(os.path.join(directory, "state"))
        orphan = os.path.join(directory, "state", "9.json")
        with open(orphan, "wb") as f:
            f.write(b"{}")
        self.make_spool(directory)
        self.assertFalse(os.path.exists(orphan))

    @inlineCallbacks
    def test_closeDiscardsOpenMessages(self) -> Any:
        """
        Closing the spool discards messages still being received and
        removes its own temporary directory.
        """
        spool = self.make_spool()
        message = spool.new_message(ENVELOPE)
        message.write(BODY)
        yield spool.close()
        self.assertEqual(_tmp_files(spool.directory), [])
        self.assertEqual(os.listdir(os.path.join(spool.directory, "tmp")), [])
        self.assertEqual(_queue_files(spool.directory), [])


# The reactor provides the thread pool the default executor uses.
assert IReactorThreads.providedBy(reactor)
