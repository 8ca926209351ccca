"""
Crash safety of the spool with real processes: a child process receives,
commits, updates and removes messages under a real reactor and is killed
with C{SIGKILL} at random moments; after each restart every message it
reported committed is in the queue whole and byte-exact, nothing
half-written is anywhere, recorded recipient states hold and removed
messages stay removed.

Run as a program (C{python -m tests.test_spool_crash DIRECTORY}), this
module is that child.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.internet.interfaces import IReactorTime
from twisted.trial.unittest import TestCase

from esa_tls.spool import DELIVERED, DurableSpool, RecipientState
from esa_tls.values import Envelope

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


#: The envelope of every message the child receives (its MID is not known
#: before the spool gives it; the body names it).
ENVELOPE = Envelope(
    mail_from="sender@example.org",
    rcpt_to=("first@example.com", "second@example.com"),
    helo="child.example.org",
    peer_ip="127.0.0.1",
    listener="InboundMail",
    icid=1,
    received_at=1795877068.0,
)


def body_for(mid: int) -> bytes:
    """
    The message bytes the child writes for message C{mid}: up to 150 KiB,
    so that a kill often lands in the middle of one.
    """
    rng = random.Random(mid)
    return b"Subject: message %d\r\n\r\n" % (mid,) + rng.randbytes(rng.randrange(0, 150_000))


def child(directory: str) -> None:
    """
    Receive messages forever, eight at a time, writing each in chunks over
    several reactor turns.  Prints C{C mid} once a commit fired, C{D mid}
    once recipient 0 was recorded delivered, C{R mid} once a message was
    removed.
    """
    spool = DurableSpool(directory, IReactorTime(reactor))

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def committed(mid: int) -> None:
        say(f"C {mid}")
        if mid % 3 == 0:
            done = RecipientState(0, ENVELOPE.rcpt_to[0], DELIVERED, 1, 0.0, "")
            spool.update_recipients(mid, {0: done}).addCallback(lambda _: say(f"D {mid}"))
        elif mid % 5 == 0:
            states = {
                rid: RecipientState(rid, address, DELIVERED, 1, 0.0, "")
                for rid, address in enumerate(ENVELOPE.rcpt_to)
            }
            d = spool.update_recipients(mid, states)
            d.addCallback(lambda _: spool.remove(mid))
            d.addCallback(lambda _: say(f"R {mid}"))

    def receive() -> None:
        message = spool.new_message(ENVELOPE)
        body = body_for(message.mid)

        def write(offset: int) -> None:
            if offset < len(body):
                message.write(body[offset : offset + 16384])
                reactor.callLater(0, write, offset + 16384)
            else:
                message.commit().addCallback(committed).addBoth(lambda _: receive())

        write(0)

    for _ in range(8):
        reactor.callWhenRunning(receive)
    reactor.run()


class CrashTests(TestCase):
    def read_lines(self, proc: subprocess.Popen[bytes], until: int) -> list[str]:
        """
        Read C{proc}'s output until it has reported C{until} commits.
        """
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        data = b""
        deadline = time.monotonic() + 60
        while data.count(b"C ") < until:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or proc.poll() is not None:
                proc.kill()
                self.fail(f"child stopped reporting commits: {data[-500:]!r}")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                data += os.read(fd, 65536)
        return data.decode("ascii").split("\n")

    @staticmethod
    def temporary_files(directory: str) -> list[str]:
        return [
            name
            for root, _, files in os.walk(os.path.join(directory, "tmp"))
            for name in files
            if not name.endswith(".lock")
        ]

    def test_killedAtRandom(self) -> None:
        """
        Six times, a child committing messages in a loop is killed with
        C{SIGKILL} after a random number of commits plus a random delay.
        Afterwards every message it reported committed is in the queue with
        its exact envelope and bytes, every message in the queue is whole,
        no MID was given twice, recorded deliveries and removals survived,
        and nothing is quarantined or left in temporary directories.
        """
        directory = self.mktemp()
        rng = random.Random()
        env = dict(os.environ, PYTHONPATH=_ROOT)
        committed: list[int] = []
        delivered: set[int] = set()
        removed: set[int] = set()
        interrupted = 0
        for _ in range(6):
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.test_spool_crash", directory],
                stdout=subprocess.PIPE,
                env=env,
            )
            try:
                lines = self.read_lines(proc, rng.randrange(3, 30))
                time.sleep(rng.uniform(0, 0.03))
            finally:
                proc.send_signal(signal.SIGKILL)
                assert proc.stdout is not None
                rest = proc.stdout.read().decode("ascii")
                proc.stdout.close()
                proc.wait()
            interrupted += len(self.temporary_files(directory))
            text = "\n".join(lines) + rest
            complete = text.split("\n")[:-1]  # drop a line cut by the kill
            for line in complete:
                if not line:
                    continue
                kind, number = line.split()
                {"C": committed.append, "D": delivered.add, "R": removed.add}[kind](int(number))
        self.assertEqual(len(committed), len(set(committed)), "a MID was handed out twice")
        spool = DurableSpool(directory, IReactorTime(reactor))
        self.addCleanup(spool.close)
        queued = {q.mid: q for q in spool.queued()}
        for mid in committed:
            if mid in removed:
                self.assertNotIn(mid, queued, f"removed MID {mid} is back")
            elif mid % 5 != 0 or mid % 3 == 0:
                # (A message that was being removed may be gone.)
                self.assertIn(mid, queued, f"committed MID {mid} is lost")
        for mid, q in queued.items():
            self.assertEqual(q.envelope, ENVELOPE)
            with spool.open_body(mid) as f:
                self.assertTrue(f.read() == body_for(mid), f"MID {mid} differs")
        for mid in delivered:
            self.assertEqual(queued[mid].recipients[0].status, DELIVERED)
            self.assertEqual([r.rid for r in queued[mid].pending], [1])
        self.assertEqual(os.listdir(os.path.join(directory, "corrupt")), [])
        self.assertEqual(self.temporary_files(directory), [])
        self.assertGreater(len(committed), 6)
        # The kills did land while messages were half-written.
        self.assertGreater(interrupted, 0)


if __name__ == "__main__":
    child(sys.argv[1])
