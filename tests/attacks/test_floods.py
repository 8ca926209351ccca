"""
Connection floods above the listener's Max Concurrency and the policy's
per-IP limit: the connections over the limit get 421, and once the flood
is gone every slot and every per-IP count is given back, including for
connections that left before the HAT answered and for those the HAT
turned away (REJECT, TCPREFUSE).  Clients from ever new addresses leave
no per-address state behind once its hour is over, and clients asking for
password checks as fast as they can do not hold up other clients' mail.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from esa_tls.inbound.auth import hash_password
from tests.attacks.support import hang_up, receive_all
from tests.support import PUBLIC, Gateway, Raw, in_thread, smtp_send

BUSY = b"421 4.3.2 Too many connections to this listener, try again later\r\n"
PER_IP = b"421 4.7.0 mx.test.example Too many concurrent connections from your address\r\n"


def listener(max_concurrency: int, per_ip: int, rule: str = "ACCEPT") -> str:
    return (
        PUBLIC
        + f"""max_concurrency = {max_concurrency}

[listeners.InboundMail.policies.LOCAL]
rule = "{rule}"
max_concurrency = {per_ip}

[[listeners.InboundMail.hat]]
group = "LOCAL"
policy = "LOCAL"
senders = ["127.0.0.1"]
"""
    )


def flood(port: int, count: int) -> tuple[list[Raw], list[bytes]]:
    """
    Open C{count} connections at once and read each one's first reply
    (C{b""} for one closed without a word).
    """
    connections = [Raw(port) for _ in range(count)]
    firsts = []
    for raw in connections:
        try:
            firsts.append(raw.reply())
        except OSError:
            firsts.append(b"")
    return connections, firsts


def close_all(connections: list[Raw]) -> None:
    for raw in connections:
        hang_up(raw)


def banners(port: int, count: int) -> list[bytes]:
    connections, firsts = flood(port, count)
    close_all(connections)
    return firsts


class FloodTests(TestCase):
    @inlineCallbacks
    def drained(self, gw: Gateway) -> Any:
        """
        Wait until the gateway has seen every connection close.
        """
        while gw.factory.sessions:
            yield deferLater(reactor, 0.01, lambda: None)

    def assertNoLeak(self, gw: Gateway) -> None:
        self.assertEqual(gw.factory.sessions, set())
        self.assertEqual(gw.factory.connections.count("127.0.0.1"), 0)

    @inlineCallbacks
    def test_listenerMaxConcurrency(self) -> Any:
        """
        Twenty simultaneous connections to a listener of Max Concurrency 3:
        three get the banner, the others 421 4.3.2.  After they leave, three
        new ones get the banner again, twice over.
        """
        gw = Gateway(self, listener(3, 100))
        connections, firsts = yield in_thread(flood, gw.port, 20)
        self.addCleanup(close_all, connections)
        self.assertEqual(sum(f.startswith(b"220 ") for f in firsts), 3, firsts)
        self.assertEqual(firsts.count(BUSY), 17, firsts)
        yield in_thread(close_all, connections)
        yield self.drained(gw)
        self.assertNoLeak(gw)
        for _ in range(2):
            again = yield in_thread(banners, gw.port, 3)
            self.assertTrue(all(f.startswith(b"220 ") for f in again), again)
            yield self.drained(gw)

    @inlineCallbacks
    def test_perIPLimit(self) -> Any:
        """
        Twenty simultaneous connections from one IP whose policy allows 2:
        two get the banner, the others 421 4.7.0; the per-IP count returns
        to zero when they leave and two new connections are welcome again.
        """
        gw = Gateway(self, listener(100, 2))
        connections, firsts = yield in_thread(flood, gw.port, 20)
        self.addCleanup(close_all, connections)
        self.assertEqual(sum(f.startswith(b"220 ") for f in firsts), 2, firsts)
        self.assertEqual(firsts.count(PER_IP), 18, firsts)
        yield in_thread(close_all, connections)
        yield self.drained(gw)
        self.assertNoLeak(gw)
        again = yield in_thread(banners, gw.port, 2)
        self.assertTrue(all(f.startswith(b"220 ") for f in again), again)

    @inlineCallbacks
    def test_goneBeforeTheHATAnswered(self) -> Any:
        """
        Connections that close while the HAT is still looking them up (a
        slow DNS) take no slot and no per-IP count when the answer finally
        comes: afterwards the policy's two connections are welcome.
        """
        gw = Gateway(self, listener(100, 2))
        pending: list[Deferred[Any]] = []
        classify_now, classify = gw.factory.classify_now, gw.factory.classify

        def slow(ip: str) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append(d)
            return d

        gw.factory.classify_now = lambda ip: None  # type: ignore[method-assign]
        gw.factory.classify = slow  # type: ignore[method-assign]
        connections = yield in_thread(lambda: [Raw(gw.port) for _ in range(10)])
        while len(pending) < 10:
            yield deferLater(reactor, 0.01, lambda: None)
        yield in_thread(close_all, connections)
        yield self.drained(gw)
        verdict = classify_now("127.0.0.1")
        for d in pending:
            d.callback(verdict)
        self.assertNoLeak(gw)
        gw.factory.classify_now = classify_now  # type: ignore[method-assign]
        gw.factory.classify = classify  # type: ignore[method-assign]
        again = yield in_thread(banners, gw.port, 2)
        self.assertTrue(all(f.startswith(b"220 ") for f in again), again)

    @inlineCallbacks
    def test_rejectAndTCPRefuse(self) -> Any:
        """
        Floods the HAT turns away leave nothing behind: forty REJECT
        connections to a listener of Max Concurrency 3 each get the reject
        banner (never the busy 421: their slots come back), and forty
        TCPREFUSE connections are each closed without a byte.
        """
        for rule, expected in (("REJECT", b"554 5.7.1 Access denied\r\n"), ("TCPREFUSE", b"")):
            gw = Gateway(self, listener(3, 1, rule))

            def serial(port: int) -> list[bytes]:
                out = []
                for _ in range(40):
                    try:
                        raw = Raw(port)
                    except OSError:
                        # TCPREFUSE's reset can beat connect() home.
                        out.append(b"")
                        continue
                    out.append(receive_all(raw))
                    hang_up(raw)
                return out

            firsts = yield in_thread(serial, gw.port)
            self.assertEqual(set(firsts), {expected}, rule)
            yield self.drained(gw)
            self.assertNoLeak(gw)


def recipient_from(port: int, source: str) -> bytes:
    """
    One accepted recipient from C{source} (an address of 127/8), then QUIT;
    the reply to RCPT.
    """
    raw = Raw(port, source=source)
    try:
        raw.reply()
        for command in (b"EHLO client.test\r\n", b"MAIL FROM:<a@client.test>\r\n"):
            raw.chat(command)
        reply = raw.chat(b"RCPT TO:<u@example.com>\r\n")
        raw.chat(b"QUIT\r\n")
        return reply
    finally:
        hang_up(raw)


class ManyAddressesTests(TestCase):
    @inlineCallbacks
    def test_recipientCountsForgottenAfterTheHour(self) -> Any:
        """
        Every accepted recipient is counted against its sender's address
        for the hour (Max. Recipients Per Hour, counted even when no limit
        is set); an address's count is forgotten once its hour is over,
        not kept for ever.  Otherwise a client coming from ever new
        addresses (an IPv6 /64 holds 2**64), or a year of ordinary
        senders, grows the gateway's memory without bound.
        """
        gw = Gateway(self, clock=True)
        sources = [f"127.0.{i // 200}.{i % 200 + 2}" for i in range(300)]

        def send_all() -> list[bytes]:
            return [recipient_from(gw.port, source) for source in sources]

        replies = yield in_thread(send_all)
        self.assertEqual(set(replies), {b"250 2.1.5 Ok\r\n"})
        while gw.factory.sessions:
            yield deferLater(reactor, 0.01, lambda: None)
        rates: Any = gw.factory.rates
        self.assertEqual(len(rates._buckets), len(sources))
        gw.clock.advance(3600 + 60)
        reply = yield in_thread(recipient_from, gw.port, "127.0.0.1")
        self.assertEqual(reply, b"250 2.1.5 Ok\r\n")
        self.assertEqual(list(rates._buckets), ["127.0.0.1"])
        # Those of the hour are still counted.
        self.assertEqual(rates.count("127.0.0.1"), 1)


AUTH_IN_THE_CLEAR = (
    PUBLIC
    + """
[listeners.InboundMail.policies.default]
smtp_auth = "allow"
"""
)
BAD_PLAIN = b"AUTH PLAIN AGFsaWNlAHdyb25n\r\n"


def ask_password_check(port: int, source: str) -> Raw:
    """
    A connection from C{source} that has sent AUTH and not read the reply.
    """
    raw = Raw(port, source=source)
    raw.reply()
    raw.chat(b"EHLO client.test\r\n")
    raw.send(BAD_PLAIN)
    return raw


def drain_pipe(path: str, stop: threading.Event) -> None:
    """
    Open and close the named pipe C{path} for writing until C{stop}: each
    time, the readers waiting to open it read an empty file.
    """
    while not stop.is_set():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:  # no reader yet
                raise
        else:
            os.close(fd)
        stop.wait(0.005)


def in_own_thread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """
    L{in_thread} on a thread of its own, not one of the reactor's pool:
    for a test whose point is that the pool's threads may all be taken.
    """
    d: Deferred[Any] = Deferred()

    def run() -> None:
        try:
            result = f(*args)
        except BaseException:
            reactor.callFromThread(d.errback, Failure())
        else:
            reactor.callFromThread(d.callback, result)

    threading.Thread(target=run, daemon=True).start()
    return d


class PasswordCheckFloodTests(TestCase):
    def gateway_with_alice(self) -> tuple[Gateway, str]:
        """
        A gateway offering AUTH in the clear, its password file naming
        alice (password C{s3cret}).

        @return: the gateway and the password file's path.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        users = os.path.join(directory, "users")
        with open(users, "w") as f:
            f.write(f"alice:{hash_password('s3cret')}\n")
        return Gateway(self, AUTH_IN_THE_CLEAR, users=users), users

    @inlineCallbacks
    def test_slowChecksDoNotHoldUpCommits(self) -> Any:
        """
        Password checks are slow by design (scrypt, 16 MiB and tens of
        milliseconds each) and any client may ask for as many as it likes:
        they must not take the threads that make messages durable, or a
        few clients sending AUTH back to back delay every other client's
        250 by seconds.  Here every check hangs (the password file has
        become a pipe nobody writes) while twelve clients wait for theirs;
        a message sent meanwhile still gets its 250, and the twelve their
        535 once the checks can go on.
        """
        gw, users = self.gateway_with_alice()
        os.remove(users)
        os.mkfifo(users)
        sources = [f"127.0.1.{i}" for i in range(2, 14)]
        waiting: list[Raw] = []
        stop = threading.Event()

        @inlineCallbacks
        def release() -> Any:
            # Let every check still waiting on the pipe end, whatever the
            # test's outcome: a thread blocked for ever would hang the
            # reactor's shutdown.
            stop.clear()
            drainer = in_own_thread(drain_pipe, users, stop)
            while any(session._busy for session in gw.factory.sessions):
                yield deferLater(reactor, 0.01, lambda: None)
            stop.set()
            yield drainer
            for raw in waiting:
                hang_up(raw)

        self.addCleanup(release)
        for source in sources:
            waiting.append((yield in_own_thread(ask_password_check, gw.port, source)))
        while sum(session._busy for session in gw.factory.sessions) < len(sources):
            yield deferLater(reactor, 0.01, lambda: None)
        refused = yield in_own_thread(
            smtp_send, gw.port, "a@client.test", ["u@example.com"], b"Subject: t\r\n\r\nx\r\n"
        )
        self.assertEqual(refused, {})
        self.assertEqual(len(gw.queued()), 1)
        drainer = in_own_thread(drain_pipe, users, stop)
        replies = yield in_own_thread(lambda: [raw.reply() for raw in waiting])
        stop.set()
        yield drainer
        self.assertEqual(set(replies), {b"535 5.7.8 Authentication credentials invalid\r\n"})

    @inlineCallbacks
    def test_checksForClientsGoneAreNotRun(self) -> Any:
        """
        A client that asks for a password check and hangs up at once costs
        no scrypt once it is gone: otherwise, the connection's place in the
        limits given back, clients could queue checks without bound (one
        per connection, as fast as they can connect), the gateway would
        burn its check threads on answers nobody waits for, and a real
        user's login would wait behind all of them.  Here every check is
        held until twelve clients have asked and gone; then only the two
        already on the check threads run, and a user's login after them.
        """
        gw, _ = self.gateway_with_alice()
        gate = threading.Event()
        self.addCleanup(gate.set)
        checks: list[bytes] = []
        scrypt = hashlib.scrypt

        def held(password: bytes, **kwargs: Any) -> bytes:
            checks.append(password)
            gate.wait(30)
            return scrypt(password, **kwargs)

        self.patch(hashlib, "scrypt", held)
        asked = []
        for i in range(2, 14):
            asked.append((yield in_own_thread(ask_password_check, gw.port, f"127.0.1.{i}")))
        while sum(session._busy for session in gw.factory.sessions) < len(asked):
            yield deferLater(reactor, 0.01, lambda: None)
        for raw in asked:
            hang_up(raw)
        while gw.factory.sessions:
            yield deferLater(reactor, 0.01, lambda: None)
        gate.set()
        good = b"AUTH PLAIN " + base64.b64encode(b"\x00alice\x00s3cret") + b"\r\n"

        def login() -> bytes:
            raw = Raw(gw.port, source="127.0.1.20")
            raw.reply()
            raw.chat(b"EHLO client.test\r\n")
            reply = raw.chat(good)
            hang_up(raw)
            return reply

        reply = yield in_own_thread(login)
        self.assertEqual(reply, b"235 2.7.0 Authentication successful\r\n")
        self.assertEqual(checks, [b"wrong", b"wrong", b"s3cret"])
