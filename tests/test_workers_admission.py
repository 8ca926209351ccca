"""
Two worker processes' listener factories over one shared table, each on a
real loopback port: Max Concurrency and the concurrent connections per IP
hold for the pair whichever factory accepted each connection, a session
counts its listener slot and its address together as it is accepted and
gives both back together when it ends (one lock each time), and nothing
stays counted after the clients leave.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from esa_tls.config.load import parse_config
from esa_tls.hat.table import HostAccessTable
from esa_tls.inbound.limits import RecipientRateLimiter
from esa_tls.maillog import MailLog
from esa_tls.spool import DurableSpool
from esa_tls.workers import SharedConnectionCounter, SharedLimits, SharedListenerFactory
from tests.support import BASE, in_thread, wait_until

CONFIG = """
[listeners.InboundMail]
type = "public"
interface = "Loopback"
port = 2525
rat = ["example.com"]
max_concurrency = 3

[listeners.InboundMail.policies.TWO]
rule = "ACCEPT"
max_concurrency = 2

[listeners.InboundMail.policies.SHUT]
rule = "REJECT"

[[listeners.InboundMail.hat]]
group = "REFUSED"
policy = "SHUT"
senders = ["127.0.0.9"]

[[listeners.InboundMail.hat]]
group = "HOSTS"
policy = "TWO"
senders = ["127.0.0.0/8"]
"""


class _Client:
    """
    A blocking client from a chosen loopback address: reads the greeting.
    """

    def __init__(self, source: str, port: int) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=10, source_address=(source, 0)
        )
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class _Worker:
    """
    One worker's listener factory on its own loopback port, counting in
    column C{index} of the shared table.
    """

    def __init__(self, testcase: TestCase, table: SharedLimits, spool: DurableSpool) -> None:
        data_dir = os.path.abspath(testcase.mktemp())
        os.makedirs(data_dir)
        config = parse_config(
            BASE.format(data_dir=data_dir, system_extra="") + CONFIG, "test.toml", data_dir
        )
        (listener,) = config.listeners.values()
        self.events: list[dict[str, Any]] = []
        observer: Any = self.events.append
        self.factory = SharedListenerFactory(
            listener,
            hostname="mx.test.example",
            settings=config.listener_settings,
            hat=HostAccessTable(listener, None, clock=reactor),
            store=spool,
            maillog=MailLog(observer=observer),
            clock=reactor,
            rates=RecipientRateLimiter(reactor),
        )
        counter = table.listener("InboundMail")
        assert counter is not None
        self.counter: SharedConnectionCounter = counter
        self.factory.share(counter)
        self.port_object: Any = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        host: Any = self.port_object.getHost()
        self.port: int = host.port
        testcase.addCleanup(self.stop)

    @inlineCallbacks
    def stop(self) -> Any:
        yield self.port_object.stopListening()
        yield self.factory.shutdown()


class AdmissionTests(TestCase):
    def setUp(self) -> None:
        self.parent = SharedLimits.create({"InboundMail": 3}, 2)
        self.child = SharedLimits.attach(os.dup(self.parent.fileno()), 1)
        self.addCleanup(self.parent.close)
        self.addCleanup(self.child.close)
        spool = DurableSpool(os.path.abspath(self.mktemp()), reactor)
        self.addCleanup(spool.close)
        self.a = _Worker(self, self.parent, spool)
        self.b = _Worker(self, self.child, spool)
        self.locks = 0
        for table in (self.parent, self.child):
            original = table.lock

            def counting(offset: int, original: Any = original) -> None:
                self.locks += 1
                original(offset)

            table.lock = counting  # type: ignore[method-assign]

    def counts(self) -> tuple[int, int, int]:
        """
        The listener total and the counts of 127.0.0.2 and 127.0.0.3, as
        the table holds them.
        """
        counter = self.a.counter
        return counter.total(), counter.count("127.0.0.2"), counter.count("127.0.0.3")

    def settled(self) -> Any:
        return in_thread(wait_until, lambda: self.counts() == (0, 0, 0))

    @inlineCallbacks
    def test_limitsAcrossWorkers(self) -> Any:
        """
        Two connections from one address fill its per-IP limit of 2 across
        both workers (the third gets 421 4.7.0 from either); three in all
        fill the listener's Max Concurrency of 3 (the fourth gets 421
        4.3.2); once the clients leave, every count is back to zero and the
        same connections are accepted again.
        """
        a, b = self.a.port, self.b.port

        def fill() -> list[bytes]:
            clients = [_Client("127.0.0.2", a), _Client("127.0.0.2", b)]
            third = _Client("127.0.0.2", b)
            clients.append(_Client("127.0.0.3", a))
            fourth = _Client("127.0.0.4", b)
            greetings = [c.greeting for c in clients] + [third.greeting, fourth.greeting]
            for c in [*clients, third, fourth]:
                c.close()
            return greetings

        for _ in range(2):
            greetings = yield in_thread(fill)
            self.assertEqual([g[:4] for g in greetings[:3]], [b"220 "] * 3, greetings)
            self.assertIn(b"Too many concurrent connections from your address", greetings[3])
            self.assertTrue(greetings[3].startswith(b"421 4.7.0 "), greetings[3])
            self.assertTrue(greetings[4].startswith(b"421 4.3.2 "), greetings[4])
            settled = yield self.settled()
            self.assertTrue(settled, self.counts())

    @inlineCallbacks
    def test_oneLockAtAcceptOneAtClose(self) -> Any:
        """
        A session whose host the HAT places from its address takes the
        shared lock once when accepted and once when it ends (its listener
        slot and its address counted, then released, together).
        """
        port = self.a.port

        def session() -> bytes:
            client = _Client("127.0.0.2", port)
            client.sock.sendall(b"QUIT\r\n")
            client.file.readline()
            client.close()
            return client.greeting

        greeting = yield in_thread(session)
        self.assertTrue(greeting.startswith(b"220 "), greeting)
        # total() reads without the lock; count() takes it.
        self.assertTrue((yield in_thread(wait_until, lambda: self.a.counter.total() == 0)))
        self.assertEqual(self.locks, 2)
        self.assertEqual(self.counts(), (0, 0, 0))

    @inlineCallbacks
    def test_rejectedHostHoldsNoAddressCount(self) -> Any:
        """
        A host under a REJECT policy gets the reject banner; it held a
        listener slot but never a per-IP count, and gives the slot back.
        """
        port = self.b.port

        def rejected() -> bytes:
            client = _Client("127.0.0.9", port)
            client.close()
            return client.greeting

        greeting = yield in_thread(rejected)
        self.assertTrue(greeting.startswith(b"554 "), greeting)
        self.assertTrue((yield in_thread(wait_until, lambda: self.a.counter.total() == 0)))
        self.assertEqual(self.a.counter.count("127.0.0.9"), 0)

    @inlineCallbacks
    def test_lateClassification(self) -> Any:
        """
        When the HAT cannot place a host as its connection is accepted (it
        needs DNS), the session counts its address once placed: the limits
        hold the same, and everything is released at the end.
        """
        for worker in (self.a, self.b):
            factory = worker.factory
            classify_now = factory.classify_now
            calls = {"n": 0}

            def late(ip: str, classify_now: Any = classify_now, calls: Any = calls) -> Any:
                # Unknown at accept time, known when the session asks.
                calls["n"] += 1
                return None if calls["n"] % 2 else classify_now(ip)

            factory.classify_now = late  # type: ignore[method-assign]
        a, b = self.a.port, self.b.port

        def fill() -> list[bytes]:
            clients = [_Client("127.0.0.3", a), _Client("127.0.0.3", b), _Client("127.0.0.3", a)]
            greetings = [c.greeting for c in clients]
            for c in clients:
                c.close()
            return greetings

        greetings = yield in_thread(fill)
        self.assertEqual([g[:4] for g in greetings[:2]], [b"220 "] * 2, greetings)
        self.assertTrue(greetings[2].startswith(b"421 4.7.0 "), greetings[2])
        settled = yield self.settled()
        self.assertTrue(settled, self.counts())
