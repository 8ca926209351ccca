"""
The queue side of the spool, as the delivery engine uses it: committed
messages are announced and listed with per-recipient states, state changes
and removals are durable across a restart, and a delivered recipient never
comes back.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from esa_tls.interfaces import StoreError
from esa_tls.spool import BOUNCED, DEFERRED, DELIVERED, QUEUED, DurableSpool, RecipientState
from tests.test_spool_store import (
    BODY,
    ENVELOPE,
    CountingExecutor,
    CountingFileSystem,
    SpoolTestMixin,
)


class QueueTests(SpoolTestMixin, TestCase):
    @inlineCallbacks
    def commit(self, spool: DurableSpool, body: bytes = BODY) -> Any:
        message = spool.new_message(ENVELOPE)
        message.write(body)
        mid = yield message.commit()
        return mid

    @inlineCallbacks
    def test_subscribersHearOfCommits(self) -> Any:
        """
        A subscriber is called with each MID once its commit is durable,
        after the session's own callback.
        """
        spool = self.make_spool()
        order: list[object] = []
        spool.subscribe(lambda mid: order.append(("subscriber", mid)))
        message = spool.new_message(ENVELOPE)
        d = message.commit()
        d.addCallback(lambda mid: order.append(("session", mid)))
        yield d
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(order, [("session", message.mid), ("subscriber", message.mid)])

    @inlineCallbacks
    def test_failingSubscriberDoesNotBreakCommit(self) -> Any:
        """
        A subscriber that raises is logged; the commit still fires with the
        MID and later subscribers are still called.
        """
        spool = self.make_spool()
        heard: list[int] = []

        def broken(mid: int) -> None:
            raise ZeroDivisionError(mid)

        spool.subscribe(broken)
        spool.subscribe(heard.append)
        mid = yield self.commit(spool)
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(heard, [mid])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    @inlineCallbacks
    def test_initialRecipientStates(self) -> Any:
        """
        A fresh message lists every envelope recipient as queued, RIDs in
        envelope order.
        """
        spool = self.make_spool()
        mid = yield self.commit(spool)
        [queued] = spool.queued()
        self.assertEqual(queued.mid, mid)
        self.assertEqual(
            queued.recipients,
            (
                RecipientState(0, "bob@example.com", QUEUED, 0, 0.0, ""),
                RecipientState(1, "carol@example.com", QUEUED, 0, 0.0, ""),
            ),
        )
        self.assertEqual(queued.pending, queued.recipients)

    @inlineCallbacks
    def test_statesSurviveRestart(self) -> Any:
        """
        Recipient states recorded with C{update_recipients} are read back by
        a new spool on the same directory, and a delivered recipient is not
        among the pending ones.
        """
        directory = self.mktemp()
        spool = self.make_spool(directory)
        mid = yield self.commit(spool)
        delivered = RecipientState(0, "bob@example.com", DELIVERED, 1, 0.0, "")
        deferred = RecipientState(
            1, "carol@example.com", DEFERRED, 1, 1795877368.0, "451 4.3.0 try later"
        )
        yield spool.update_recipients(mid, {0: delivered})
        yield spool.update_recipients(mid, {1: deferred})
        self.assertEqual(spool.get(mid).recipients, (delivered, deferred))
        yield spool.close()
        again = self.make_spool(directory)
        [queued] = again.queued()
        self.assertEqual(queued.recipients, (delivered, deferred))
        self.assertEqual(queued.pending, (deferred,))

    @inlineCallbacks
    def test_updatesInOneTurnShareOneJob(self) -> Any:
        """
        State updates for several messages requested in the same turn are
        made durable by one thread job, and the last update of a message
        wins.
        """
        executor = CountingExecutor()
        directory = self.mktemp()
        spool = self.make_spool(directory, executor=executor)
        mids = yield gatherResults([self.commit(spool) for _ in range(3)])
        jobs = executor.jobs
        updates = []
        for mid in mids:
            updates.append(
                spool.update_recipients(
                    mid, {0: RecipientState(0, "bob@example.com", DEFERRED, 1, 5.0, "x")}
                )
            )
        updates.append(
            spool.update_recipients(
                mids[0], {0: RecipientState(0, "bob@example.com", BOUNCED, 2, 0.0, "550 no")}
            )
        )
        yield gatherResults(updates)
        self.assertEqual(executor.jobs, jobs + 1)
        yield spool.close()
        again = self.make_spool(directory)
        self.assertEqual(again.get(mids[0]).recipients[0].status, BOUNCED)
        self.assertEqual(again.get(mids[1]).recipients[0].status, DEFERRED)

    @inlineCallbacks
    def test_updateRejectsForeignRecipient(self) -> Any:
        """
        A state for a RID the message does not have, or with another
        address, is refused rather than stored.
        """
        spool = self.make_spool()
        mid = yield self.commit(spool)
        with self.assertRaises(ValueError):
            spool.update_recipients(mid, {5: RecipientState(5, "bob@example.com")})
        with self.assertRaises(ValueError):
            spool.update_recipients(mid, {0: RecipientState(0, "mallory@example.com")})
        with self.assertRaises(KeyError):
            spool.update_recipients(mid + 1000, {0: RecipientState(0, "bob@example.com")})

    @inlineCallbacks
    def test_removeIsDurable(self) -> Any:
        """
        A removed message is gone from C{queued()} at once, its files are
        gone, and a new spool does not find it.
        """
        directory = self.mktemp()
        spool = self.make_spool(directory)
        done = yield self.commit(spool)
        kept = yield self.commit(spool)
        yield spool.update_recipients(
            done, {0: RecipientState(0, "bob@example.com", DELIVERED, 1, 0.0, "")}
        )
        d = spool.remove(done)
        self.assertEqual([q.mid for q in spool.queued()], [kept])
        yield d
        self.assertFalse(os.path.exists(spool.message_path(done)))
        self.assertEqual(os.listdir(os.path.join(directory, "state")), [])
        yield spool.close()
        again = self.make_spool(directory)
        self.assertEqual([q.mid for q in again.queued()], [kept])
        with self.assertRaises(KeyError):
            again.open_body(done)

    @inlineCallbacks
    def test_corruptStateQuarantinesMessage(self) -> Any:
        """
        When a message's state file is damaged, the message is not
        delivered (its recipients might already have it): both go to
        C{corrupt/}.
        """
        directory = self.mktemp()
        spool = self.make_spool(directory)
        mid = yield self.commit(spool)
        yield spool.update_recipients(
            mid, {0: RecipientState(0, "bob@example.com", DELIVERED, 1, 0.0, "")}
        )
        yield spool.close()
        with open(os.path.join(directory, "state", f"{mid}.json"), "r+b") as f:
            f.truncate(20)
        again = self.make_spool(directory)
        self.assertEqual(again.queued(), [])
        self.assertEqual(
            sorted(os.listdir(os.path.join(directory, "corrupt"))), [f"{mid}.json", f"{mid}.msg"]
        )

    @inlineCallbacks
    def test_otherWorkersMessagesListed(self) -> Any:
        """
        Messages committed by another spool on the same directory (another
        worker process) show up in C{queued()}.
        """
        directory = self.mktemp()
        mine = self.make_spool(directory)
        theirs = self.make_spool(directory)
        a = yield self.commit(mine)
        b = yield self.commit(theirs, b"Subject: other\r\n\r\nbody\r\n")
        self.assertEqual([q.mid for q in mine.queued()], sorted([a, b]))
        with mine.open_body(b) as f:
            self.assertEqual(f.read(), b"Subject: other\r\n\r\nbody\r\n")

    @inlineCallbacks
    def test_failedUpdateIsReported(self) -> Any:
        """
        When a state update cannot be made durable, its L{Deferred} fails
        with a transient L{StoreError}, and the spool goes on showing the
        states that are on disk.
        """
        fs = CountingFileSystem()
        spool = self.make_spool(filesystem=fs)
        mid = yield self.commit(spool)
        fs.fail_file_sync = lambda path: ".json" in path
        d = spool.update_recipients(
            mid, {0: RecipientState(0, "bob@example.com", DELIVERED, 1, 0.0, "")}
        )
        error = yield self.assertFailure(d, StoreError)
        self.assertTrue(error.transient)
        self.assertEqual(spool.get(mid).recipients[0].status, QUEUED)
