"""
L{IdAllocator} never hands out a number twice: not after a restart, not
across processes sharing the counter file, not after a crash.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from esa_tls.ids import IdAllocator

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = """
import sys
from esa_tls.ids import IdAllocator
allocator = IdAllocator(sys.argv[1], block=int(sys.argv[2]))
sys.stdin.readline()  # start together
for _ in range(int(sys.argv[3])):
    print(allocator.next())
"""


class IdAllocatorTests(SynchronousTestCase):
    def counter(self) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        return os.path.join(directory, "mid.counter")

    def test_increasing(self) -> None:
        """
        Numbers start at C{start} and increase by one within a process.
        """
        allocator = IdAllocator(self.counter(), block=3)
        self.assertEqual([allocator.next() for _ in range(7)], [1, 2, 3, 4, 5, 6, 7])

    def test_highWaterMarkOnDisk(self) -> None:
        """
        Before a number of a block is handed out, the counter file already
        holds the end of that block.
        """
        path = self.counter()
        allocator = IdAllocator(path, block=10)
        allocator.next()
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"11\n")

    def test_restartSkipsReservedBlock(self) -> None:
        """
        A new allocator on the same file (a restart, also after a crash)
        continues above everything the old one could have handed out.
        """
        path = self.counter()
        old = IdAllocator(path, block=100)
        seen = [old.next() for _ in range(5)]
        new = IdAllocator(path, block=100)
        self.assertGreater(new.next(), 100)
        self.assertEqual(seen, [1, 2, 3, 4, 5])

    def test_advancePast(self) -> None:
        """
        After C{advance_past(n)}, every number handed out is above C{n}.
        """
        allocator = IdAllocator(self.counter(), block=5)
        allocator.next()
        allocator.advance_past(500)
        self.assertEqual(allocator.next(), 501)
        allocator.advance_past(3)
        self.assertEqual(allocator.next(), 502)

    def test_corruptCounterRefused(self) -> None:
        """
        A counter file that does not hold a number is an error, not a reason
        to start again from 1.
        """
        path = self.counter()
        with open(path, "wb") as f:
            f.write(b"\x00\x00garbage")
        allocator = IdAllocator(path)
        self.assertRaises(ValueError, allocator.next)

    def test_processesShareCounter(self) -> None:
        """
        Three processes taking numbers from the same counter file at the same
        time, in small blocks, never get the same number.
        """
        path = self.counter()
        env = dict(os.environ, PYTHONPATH=_ROOT)
        children = [
            subprocess.Popen(
                [sys.executable, "-c", _CHILD, path, "7", "300"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
            for _ in range(3)
        ]
        outputs = []
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.close()
        for child in children:
            assert child.stdout is not None
            out = child.stdout.read()
            child.stdout.close()
            self.assertEqual(child.wait(timeout=60), 0)
            outputs.append([int(line) for line in out.split()])
        numbers = [n for output in outputs for n in output]
        self.assertEqual(len(numbers), 900)
        self.assertEqual(len(set(numbers)), 900)
        for output in outputs:
            self.assertEqual(output, sorted(output))
        self.assertGreater(IdAllocator(path).next(), max(numbers))
