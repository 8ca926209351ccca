"""
Crash safety of the whole relay path: a C{twistd -n esa-tls} child that is
receiving and delivering at the same time is killed with SIGKILL at random
moments (during DATA, during the spool's fsync, during a delivery), then
restarted, again and again.  Afterwards every message a client saw C{250}
for has reached the destination, complete, and only once, unless the kill
fell in the one window no MTA can close: after the destination's C{250} and
before the gateway recorded it.  That window is bounded, and the test holds
the gateway to the bound: a second copy is forgiven only when the first one
was accepted by the destination moments before a kill.
"""

from __future__ import annotations

import os
import random
import signal
import smtplib
import threading
import time
from collections.abc import Iterator
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from esa_tls.spool import DurableSpool
from esa_tls.testing import CertificateAuthority
from tests.peers.hostile import Script, start_hostile_server
from tests.support import free_port, in_thread, wait_until
from tests.test_gateway import Child

#: Every message ends with this, so that a truncated copy is recognised.
TRAILER = b"line of the message body\r\n" * 100

#: How long after the destination's 250 a kill may still make the gateway
#: send that message again.  The gateway records a delivery as soon as the
#: reply arrives (one spool state write, fsync'd in a thread): well under a
#: second even on a loaded test machine.  A gateway that never recorded
#: deliveries, or recorded them late, would resend messages accepted long
#: before the kill, and fails.
REPLAY_WINDOW = 3.0

#: The sink stamps a message when this test's reactor reads its final dot,
#: which can be a moment after the gateway sent it and was killed: a kill
#: that short a time before the stamp left the gateway without the reply.
SINK_LAG = 1.0


def relay_config(data_dir: str, port: int, sink_port: int) -> str:
    return f"""
[system]
hostname = "gw.test.example"
data_dir = "{data_dir}"

[interfaces.Loopback]
address = "127.0.0.1/8"

[listeners.InboundMail]
type = "public"
interface = "Loopback"
port = {port}
rat = ["example.com"]

# Ten connections at most: the sink is one Python process with the
# default listen backlog, and a destination whose accept queue overflows
# leaves the sender waiting the RFC's five minutes for a greeting.
[destinations."example.com"]
tls = "preferred"
max_host_concurrency = 10

[smtp_routes]
"example.com" = ["127.0.0.1:{sink_port}"]
"""


class TimedList(list[Any]):
    """
    A list that remembers when each item was appended: the sink's capture
    of accepted messages, so that each copy has the time of its C{250}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: Any) -> None:
        self.times.append(time.monotonic())
        super().append(item)


def send(port: int, n: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as s:
        s.ehlo()
        s.mail("a@client.test")
        s.rcpt("u@example.com")
        code, reply = s.data(b"Subject: message %d\r\n\r\n" % n + TRAILER)
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)


def number_of(body: bytes) -> int:
    """
    The client's number for a delivered message, from its subject.
    """
    for line in body.split(b"\r\n"):
        if line.startswith(b"Subject: message "):
            return int(line.split()[-1])
    raise AssertionError(f"no subject in a delivered message: {body[:300]!r}")


class RelayCrashTests(TestCase):
    timeout = 240

    async def _relay_under_kills(self) -> None:
        ca = CertificateAuthority.generate()
        sink = start_hostile_server(self, Script(certificate=ca.issue(["sink.test"])))
        delivered = TimedList()
        sink.capture.messages = delivered

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        child = Child(self, directory, free_port())
        with open(child.config, "w") as f:
            f.write(relay_config(os.path.join(directory, "var"), child.port, sink.port))

        acknowledged: set[int] = set()
        attempted: set[int] = set()
        kills: list[float] = []
        rng = random.Random(os.getpid())
        counter: Iterator[int] = iter(range(10**6))
        lock = threading.Lock()

        def load_and_kill() -> None:
            stop = threading.Event()

            def client() -> None:
                while not stop.is_set():
                    with lock:
                        n = next(counter)
                        attempted.add(n)
                    try:
                        send(child.port, n)
                    except (OSError, smtplib.SMTPException):
                        continue
                    with lock:
                        acknowledged.add(n)

            threads = [threading.Thread(target=client) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.5, 2.0))
            kills.append(time.monotonic())
            child.kill(signal.SIGKILL)
            stop.set()
            for t in threads:
                t.join(30)

        rounds = 4
        for _ in range(rounds):
            await in_thread(child.start)
            await in_thread(load_and_kill)

        # The last start: no load, the gateway delivers what it holds.
        await in_thread(child.start)

        queue_dir = os.path.join(directory, "var", "spool", "queue")

        def all_delivered() -> bool:
            with lock:
                wanted = set(acknowledged)
            if not wanted <= {number_of(body) for _, _, body in list(delivered)}:
                return False
            # Committed messages whose 250 the kill kept from the client
            # are delivered too: wait until the queue is empty.
            return not any(name.endswith(".msg") for name in os.listdir(queue_dir))

        drained = await in_thread(wait_until, all_delivered, 60)
        # In a thread: the sink runs on this reactor, and a stopping
        # gateway finishes the delivery it is in.
        await in_thread(child.kill, signal.SIGTERM)

        self.assertTrue(acknowledged, "no message was acknowledged before the kills")
        self.assertTrue(delivered, "nothing reached the destination")
        self.assertTrue(
            any(at < kills[-1] for at in delivered.times),
            "no delivery happened while the gateway was being killed",
        )
        received = [number_of(body) for _, _, body in delivered]
        missing = acknowledged - set(received)
        self.assertTrue(drained, f"acknowledged but never delivered: {sorted(missing)}")

        # Nothing half-written, nothing invented.
        for _, recipients, body in delivered:
            self.assertEqual(recipients, [b"u@example.com"])
            self.assertTrue(body.endswith(TRAILER), body[-200:])
            self.assertIn(number_of(body), attempted)

        # Exactly once, except a copy whose first delivery a kill followed
        # within the replay window.
        first: dict[int, float] = {}
        for (_, _, body), at in zip(delivered, delivered.times, strict=True):
            n = number_of(body)
            if n not in first:
                first[n] = at
                continue
            forgiven = any(
                first[n] - SINK_LAG <= kill <= first[n] + REPLAY_WINDOW for kill in kills
            )
            self.assertTrue(
                forgiven,
                f"message {n} delivered twice, {at - first[n]:.2f} s apart, "
                "with no kill just after its first delivery; kills at "
                f"{[round(k - first[n], 2) for k in kills]} s from the first",
            )

        # Nothing is left behind in the spool.
        spool = DurableSpool(os.path.join(directory, "var", "spool"), reactor)
        self.addCleanup(spool.close)
        self.assertEqual([q.mid for q in spool.queued()], [])

    def test_killedWhileRelayingDeliversEachAcknowledgedMessage(self) -> Any:
        """
        SIGKILL at random moments while clients send and the gateway
        delivers, four times over: every message acknowledged with C{250}
        reaches the destination whole, and no message is delivered twice
        unless a kill came just after its first delivery.
        """
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(self._relay_under_kills())
