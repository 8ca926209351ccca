"""
The table that keeps connection limits exact across worker processes: a
listener's Max Concurrency and each policy's concurrent connections per IP
hold for the gateway as a whole, whichever worker accepted each connection,
and a worker that dies takes its counts with it.
"""

from __future__ import annotations

import multiprocessing
import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from esa_tls.workers import SharedLimits, WorkerRole


def _pair(max_concurrency: int = 10, workers: int = 2) -> tuple[SharedLimits, SharedLimits]:
    parent = SharedLimits.create({"In": max_concurrency, "Out": 5}, workers)
    child = SharedLimits.attach(os.dup(parent.fileno()), 1)
    return parent, child


class SharedLimitsTests(TestCase):
    def setUp(self) -> None:
        self.parent, self.child = _pair()
        self.addCleanup(self.parent.close)
        self.addCleanup(self.child.close)

    def test_perAddressLimitAcrossWorkers(self) -> None:
        """
        Connections from one address count together whichever worker holds
        them: with a limit of 3, two in one worker and one in the other
        leave no room for a fourth in either.
        """
        a = self.parent.listener("In")
        b = self.child.listener("In")
        assert a is not None and b is not None
        self.assertTrue(a.acquire("192.0.2.1", 3))
        self.assertTrue(a.acquire("192.0.2.1", 3))
        self.assertTrue(b.acquire("192.0.2.1", 3))
        self.assertFalse(b.acquire("192.0.2.1", 3))
        self.assertFalse(a.acquire("192.0.2.1", 3))
        self.assertEqual(b.count("192.0.2.1"), 3)
        self.assertTrue(b.acquire("192.0.2.2", 3), "another address has its own count")
        a.release("192.0.2.1")
        self.assertTrue(b.acquire("192.0.2.1", 3))

    def test_roomForTheSeedsConcurrency(self) -> None:
        """
        However low a listener's Max Concurrency at start (10 here), its
        table counts a thousand addresses at once, so that a reload can
        raise it that far: each address is counted and held to its limit.
        """
        a = self.parent.listener("In")
        b = self.child.listener("In")
        assert a is not None and b is not None
        self.assertGreaterEqual(a.capacity, 1000)
        addresses = [f"2001:db8::{n:x}" for n in range(1000)]
        for ip in addresses:
            self.assertTrue(a.acquire(ip, 1), ip)
        for ip in addresses:
            self.assertFalse(b.acquire(ip, 1), ip)
        self.assertEqual(b.count(addresses[-1]), 1)

    def test_capacityFollowsLargerConcurrency(self) -> None:
        """
        A listener started with a Max Concurrency above the floor gets a
        table for it.
        """
        big = SharedLimits.create({"In": 3000}, 2)
        self.addCleanup(big.close)
        counter = big.listener("In")
        assert counter is not None
        self.assertGreaterEqual(counter.capacity, 3000)

    def test_mappedAddressesAreOnePeer(self) -> None:
        """
        An IPv4 peer seen as an IPv4-mapped IPv6 address (a dual-stack
        listener) is the same peer.
        """
        a = self.parent.listener("In")
        assert a is not None
        self.assertTrue(a.acquire("192.0.2.7", 2))
        self.assertTrue(a.acquire("::ffff:192.0.2.7", 2))
        self.assertFalse(a.acquire("192.0.2.7", 2))

    def test_listenerTotal(self) -> None:
        """
        The listener-wide count is the sum over workers; a non-positive
        limit means unlimited.
        """
        a = self.parent.listener("In")
        b = self.child.listener("In")
        assert a is not None and b is not None
        self.assertTrue(a.acquire_slot(2))
        self.assertTrue(b.acquire_slot(2))
        self.assertFalse(a.acquire_slot(2))
        self.assertEqual(a.total(), 2)
        b.release_slot()
        self.assertTrue(a.acquire_slot(2))
        self.assertTrue(a.acquire_slot(0))

    def test_admitAndReleaseTogether(self) -> None:
        """
        Counting a connection's listener slot and address in one step gives
        the answers the two separate steps give: no slot, no address count;
        a slot but an address at its limit, the slot alone; giving back
        releases what was counted, the address only when named.
        """
        a = self.parent.listener("In")
        b = self.child.listener("In")
        assert a is not None and b is not None
        self.assertEqual(a.admit(3, "192.0.2.1", 2), (True, True))
        self.assertEqual(b.admit(3, "192.0.2.1", 2), (True, True))
        self.assertEqual(a.admit(3, "192.0.2.1", 2), (True, False))
        self.assertEqual((a.total(), a.count("192.0.2.1")), (3, 2))
        self.assertEqual(b.admit(3, "192.0.2.2", 2), (False, False))
        self.assertEqual((a.total(), b.count("192.0.2.2")), (3, 0))
        a.release_connection(None)
        a.release_connection("192.0.2.1")
        self.assertEqual((a.total(), a.count("192.0.2.1")), (1, 1))
        b.release_connection("192.0.2.1")
        self.assertEqual((a.total(), a.count("192.0.2.1")), (0, 0))

    def test_listenersAreSeparate(self) -> None:
        """
        Each listener has its own counts, as each ESA listener has its own
        Max Concurrency.
        """
        a = self.parent.listener("In")
        out = self.child.listener("Out")
        assert a is not None and out is not None
        self.assertTrue(a.acquire("198.51.100.1", 1))
        self.assertTrue(out.acquire("198.51.100.1", 1))
        self.assertIsNone(self.parent.listener("Missing"))

    def test_deadWorkerForgotten(self) -> None:
        """
        When a worker dies its connections die with it: clearing its column
        frees the room they held, and keeps the other worker's counts.
        """
        a = self.parent.listener("In")
        b = self.child.listener("In")
        assert a is not None and b is not None
        self.assertTrue(a.acquire("192.0.2.1", 2))
        self.assertTrue(b.acquire("192.0.2.1", 2))
        self.assertTrue(b.acquire_slot(1))
        self.parent.clear_worker(1)
        self.assertEqual(a.count("192.0.2.1"), 1)
        self.assertEqual(a.total(), 0)
        self.assertTrue(a.acquire("192.0.2.1", 2))
        self.assertFalse(a.acquire("192.0.2.1", 2))

    def test_notATable(self) -> None:
        """
        A descriptor that is not a table is refused rather than trusted.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"\0" * 4096)
        with self.assertRaises(ValueError):
            SharedLimits.attach(os.open(path, os.O_RDWR), 0)


class SharedRatesTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.parent = SharedLimits.create({"In": 10}, 2, rate_slots=64)
        self.child = SharedLimits.attach(os.dup(self.parent.fileno()), 1)
        self.addCleanup(self.parent.close)
        self.addCleanup(self.child.close)
        role = WorkerRole(0, 2, {}, {}, self.parent)
        self.a = role.rates(self.clock)
        self.b = WorkerRole(1, 2, {}, {}, self.child).rates(self.clock)

    def test_hourAcrossWorkers(self) -> None:
        """
        Recipients per hour from one address count together in every
        worker; other addresses have their own allowance.
        """
        self.assertTrue(self.a.try_add("192.0.2.1", 3))
        self.assertTrue(self.b.try_add("192.0.2.1", 3))
        self.assertTrue(self.a.try_add("192.0.2.1", 3))
        self.assertFalse(self.b.try_add("192.0.2.1", 3))
        self.assertFalse(self.a.try_add("192.0.2.1", 3))
        self.assertEqual(self.b.count("192.0.2.1"), 3)
        self.assertTrue(self.b.try_add("192.0.2.2", 3))
        self.assertTrue(self.a.try_add("192.0.2.1", -1), "no limit: counted, never refused")
        self.assertEqual(self.a.count("192.0.2.1"), 4)

    def test_slidingHour(self) -> None:
        """
        A recipient stops counting an hour after it was accepted, minute by
        minute.
        """
        self.assertTrue(self.a.try_add("192.0.2.1", 2))
        self.clock.advance(30 * 60)
        self.assertTrue(self.b.try_add("192.0.2.1", 2))
        self.assertFalse(self.a.try_add("192.0.2.1", 2))
        self.clock.advance(31 * 60)
        self.assertEqual(self.a.count("192.0.2.1"), 1)
        self.assertTrue(self.a.try_add("192.0.2.1", 2))
        self.clock.advance(2 * 3600)
        self.assertEqual(self.b.count("192.0.2.1"), 0)

    def test_busyAddressesRemembered(self) -> None:
        """
        When more addresses send than the table holds, the ones forgotten
        are those idle longest; an address busy now keeps its count.
        """
        self.assertTrue(self.a.try_add("198.51.100.1", 1))
        for n in range(200):
            self.clock.advance(1)
            self.b.try_add(f"10.0.{n // 250}.{n % 250}", 5)
            self.a.try_add("198.51.100.1", -1)
        self.assertEqual(self.a.count("198.51.100.1"), 201)
        self.assertFalse(self.b.try_add("198.51.100.1", 100))


class TableModelTests(TestCase):
    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["acquire", "release"]),
                st.integers(0, 1),
                st.integers(0, 40),
            ),
            max_size=300,
        )
    )
    def test_behavesLikeADictionary(self, operations: list[tuple[str, int, int]]) -> None:
        """
        Any sequence of acquires and releases by two workers over many
        addresses (enough to collide and wrap around the small table)
        leaves every count exactly as a plain per-worker dictionary says.
        """
        parent, child = _pair(max_concurrency=20)
        try:
            counters = [parent.listener("In"), child.listener("In")]
            model: dict[tuple[str, int], int] = {}
            for op, worker, n in operations:
                ip = f"10.0.{n // 8}.{n}"
                counter = counters[worker]
                assert counter is not None
                held = model.get((ip, worker), 0)
                if op == "acquire":
                    total = sum(model.get((ip, w), 0) for w in (0, 1))
                    self.assertEqual(counter.acquire(ip, 3), total < 3)
                    if total < 3:
                        model[(ip, worker)] = held + 1
                elif held:
                    counter.release(ip)
                    model[(ip, worker)] = held - 1
            for n in range(41):
                ip = f"10.0.{n // 8}.{n}"
                expected = sum(model.get((ip, w), 0) for w in (0, 1))
                counter = counters[0]
                assert counter is not None
                self.assertEqual(counter.count(ip), expected, ip)
        finally:
            parent.close()
            child.close()


def _hammer(fd: int, index: int, rounds: int, seed: int, results: multiprocessing.Queue) -> None:
    """
    In a worker process: grab and release connections at random, reporting
    every moment the per-address count went past the limit.
    """
    table = SharedLimits.attach(fd, index)
    counter = table.listener("In")
    assert counter is not None
    rng = random.Random(seed)
    held: list[str] = []
    over = 0
    for _ in range(rounds):
        ip = f"203.0.113.{rng.randrange(4)}"
        if held and rng.random() < 0.5:
            counter.release(held.pop(rng.randrange(len(held))))
        elif counter.acquire(ip, 5):
            held.append(ip)
            if counter.count(ip) > 5:
                over += 1
    for ip in held:
        counter.release(ip)
    results.put(over)


class ProcessTests(TestCase):
    def test_exactUnderContention(self) -> None:
        """
        Four processes acquiring and releasing at once never push an
        address past its limit, and leave the table empty when they are
        done.
        """
        table = SharedLimits.create({"In": 100}, 4)
        self.addCleanup(table.close)
        context = multiprocessing.get_context("fork")
        results: multiprocessing.Queue = context.Queue()
        processes = [
            context.Process(target=_hammer, args=(table.fileno(), i, 3000, i, results))
            for i in range(4)
        ]
        for p in processes:
            p.start()
        overs = [results.get(timeout=60) for _ in processes]
        for p in processes:
            p.join(60)
        self.assertEqual(overs, [0, 0, 0, 0])
        counter = table.listener("In")
        assert counter is not None
        self.assertEqual([counter.count(f"203.0.113.{n}") for n in range(4)], [0, 0, 0, 0])
