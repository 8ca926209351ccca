"""
Pipelining and transaction stuffing: huge pipelined bursts are answered in
order with bounded memory, a client that never reads its replies cannot
make the gateway buffer without limit, and nothing after QUIT ever runs.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.attacks.support import conversation, receive_all, split_replies
from tests.support import PUBLIC, Gateway, Raw, in_thread

#: A listener whose policy allows one connection per IP, so that a slot
#: that is never given back shows as a refused second connection.
ONE_PER_IP = (
    PUBLIC
    + """
[listeners.InboundMail.policies.ONE]
rule = "ACCEPT"
max_concurrency = 1

[[listeners.InboundMail.hat]]
group = "LOOPBACK"
policy = "ONE"
senders = ["127.0.0.1"]
"""
)

_PAD = b"x" * 480
_NOOP = b"NOOP " + _PAD + b"\r\n"
_VRFY = b"VRFY " + _PAD + b"\r\n"
_NOOP_REPLY = b"250 2.0.0 Ok\r\n"
_VRFY_REPLY = b"252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\r\n"


def _burst(port: int, size: int) -> tuple[list[bytes], list[bytes]]:
    """
    Send C{size} bytes of pipelined commands, with a whole transaction
    (whose durable commit holds the session busy) at the start, while
    reading the replies on another thread.

    @return: the replies expected and the replies received.
    """
    raw = Raw(port, timeout=60)
    raw.reply()
    raw.chat(b"EHLO client.test\r\n")
    transaction = (
        b"MAIL FROM:<a@client.test>\r\nRCPT TO:<u@example.com>\r\nDATA\r\n"
        b"Subject: first\r\n\r\nbody\r\n.\r\n"
    )
    pair = _NOOP + _VRFY
    count = size // len(pair)
    tail = b"MAIL FROM:<b@client.test>\r\nRCPT TO:<v@example.com>\r\nDATA\r\n"
    payload = transaction + pair * count + tail
    expected = [b"250", b"250", b"354", b"250"] + [_NOOP_REPLY, _VRFY_REPLY] * count
    expected += [b"250", b"250", b"354"]
    sender = threading.Thread(target=raw.sock.sendall, args=(payload,))
    sender.start()
    replies = [raw.reply() for _ in expected]
    sender.join()
    replies.append(raw.chat(b"Subject: second\r\n\r\nafter the burst\r\n.\r\n"))
    expected.append(b"250")
    raw.close()
    return expected, replies


def _push_without_reading(port: int, limit: int) -> int:
    """
    Pipeline HELP (a short command with a long reply) without ever
    reading a reply, until the connection stops taking bytes or C{limit}
    bytes went out.

    @return: how many bytes the connection took.
    """
    sock = socket.socket()
    # Small client buffers, so that what the gateway holds dominates.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(10)
    banner = sock.recv(1024)
    assert banner.startswith(b"220"), banner
    sock.setblocking(False)
    chunk = b"HELP\r\n" * 2000
    sent = 0
    stalled_since: float | None = None
    try:
        while sent < limit:
            try:
                sent += sock.send(chunk)
                stalled_since = None
            except BlockingIOError:
                now = time.monotonic()
                if stalled_since is None:
                    stalled_since = now
                elif now - stalled_since > 0.5:
                    # Nothing taken for a while: the gateway stopped reading.
                    break
                time.sleep(0.005)
    finally:
        sock.close()
    return sent


class BurstTests(TestCase):
    @inlineCallbacks
    def test_tenMegabyteBurstAnsweredInOrder(self) -> Any:
        """
        A 10 MB pipelined burst, arriving while a message commit holds the
        session busy, gets exactly one reply per command in command order,
        and the session goes on to accept a message afterwards.
        """
        gw = Gateway(self)
        expected, replies = yield in_thread(_burst, gw.port, 10 * 1024 * 1024)
        self.assertEqual(len(replies), len(expected))
        for index, (want, got) in enumerate(zip(expected, replies, strict=True)):
            if len(want) == 3:
                self.assertEqual(got[:3], want, (index, got))
            else:
                self.assertEqual(got, want, index)
        self.assertEqual(len(gw.queued()), 2)
        self.assertEqual(self.flushLoggedErrors(), [])

    @inlineCallbacks
    def test_clientThatNeverReadsIsThrottled(self) -> Any:
        """
        A client that pipelines commands with long replies (HELP: 6 octets
        in, 150 out) and never reads them cannot make the gateway buffer
        replies without limit: once its replies back up, the gateway stops
        answering and reading, so the replies it holds stay under a
        megabyte.  (Without the throttle, 4 MB of HELP is 100 MB of
        replies held in memory.)
        """
        gw = Gateway(self)
        connections: list[Any] = []
        original = gw.factory.buildProtocol

        def build(addr: Any) -> Any:
            session = original(addr)
            connections.append(session)
            return session

        gw.factory.buildProtocol = build  # type: ignore[method-assign]
        yield in_thread(_push_without_reading, gw.port, 4 * 1024 * 1024)
        (session,) = connections
        self.assertLess(_held_for_client(session.transport), 1024 * 1024)
        # The gateway is still serving others meanwhile.
        replies = yield in_thread(conversation, gw.port, b"NOOP\r\n")
        self.assertEqual(replies[1], _NOOP_REPLY)


def _held_for_client(transport: Any) -> int:
    """
    Octets the gateway holds in memory for a client (Twisted's write buffer
    of a TCP transport: what the kernel would not take yet).
    """
    return int(len(transport.dataBuffer) - transport.offset + transport._tempDataLen)


class QuitTests(TestCase):
    @inlineCallbacks
    def test_nothingAfterQuitRuns(self) -> Any:
        """
        Commands pipelined behind QUIT, even a whole transaction, are never
        run: the only reply is 221, nothing is queued, nothing is logged
        for a message.
        """
        gw = Gateway(self)

        def talk() -> bytes:
            raw = Raw(gw.port)
            raw.reply()
            raw.chat(b"EHLO client.test\r\n")
            raw.send(
                b"MAIL FROM:<a@client.test>\r\nRCPT TO:<u@example.com>\r\nQUIT\r\n"
                b"DATA\r\nSubject: stuffed\r\n\r\nx\r\n.\r\n"
                b"MAIL FROM:<b@client.test>\r\nRCPT TO:<v@example.com>\r\nDATA\r\n"
                b"y\r\n.\r\n"
            )
            return receive_all(raw)

        data = yield in_thread(talk)
        self.assertEqual([r[:3] for r in split_replies(data)], [b"250", b"250", b"221"], data)
        self.assertEqual(gw.queued(), [])
        self.assertFalse([line for line in gw.lines if "MID" in line], gw.lines)

    @inlineCallbacks
    def test_quitInsideDataIsContent(self) -> Any:
        """
        A line C{QUIT} inside DATA is message content, not a command: the
        message is stored with it and the session stays open.
        """
        gw = Gateway(self)
        replies = yield in_thread(
            conversation,
            gw.port,
            b"EHLO client.test\r\n",
            b"MAIL FROM:<a@client.test>\r\n",
            b"RCPT TO:<u@example.com>\r\n",
            b"DATA\r\n",
            b"Subject: q\r\n\r\nQUIT\r\nRSET\r\n.\r\n",
            b"NOOP\r\n",
        )
        self.assertTrue(replies[5].startswith(b"250 2.0.0 Ok: Message "), replies[5])
        self.assertEqual(replies[6], _NOOP_REPLY)
        (queued,) = gw.queued()
        self.assertTrue(gw.body(queued.mid).endswith(b"\r\n\r\nQUIT\r\nRSET\r\n"))


class LingerTests(TestCase):
    @inlineCallbacks
    def test_closedClientThatNeverReadsIsDropped(self) -> Any:
        """
        When the gateway closes a session (here the idle timeout) whose
        client has stopped reading, the connection does not linger for ever
        waiting for the client to take the last replies: it is aborted after
        a grace period and its per-IP slot is given back.
        """
        gw = Gateway(self, ONE_PER_IP, clock=True)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        yield in_thread(sock.connect, ("127.0.0.1", gw.port))
        self.addCleanup(sock.close)

        def fill() -> None:
            sock.settimeout(10)
            assert sock.recv(1024).startswith(b"220")
            sock.setblocking(False)
            deadline = time.monotonic() + 30
            stalled = 0
            while time.monotonic() < deadline and stalled < 100:
                try:
                    sock.send(b"HELP\r\n" * 1000)
                    stalled = 0
                except BlockingIOError:
                    stalled += 1
                    time.sleep(0.01)

        yield in_thread(fill)
        # Idle timeout: the gateway says 421 and closes, but the client
        # reads nothing.
        gw.clock.advance(301)
        gw.clock.advance(60)
        refused = yield in_thread(conversation, gw.port, b"NOOP\r\n")
        self.assertEqual(refused[1], _NOOP_REPLY, refused)
