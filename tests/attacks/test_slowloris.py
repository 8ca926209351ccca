"""
Slowloris: a client that sends one byte every few seconds, so that no idle
timeout ever fires, in every phase (command line, DATA, TLS handshake).
The session timers run on a test clock; the total connection time limit
(or, where no SMTP byte arrives, the idle timeout) closes the connection
and gives its slot back.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from esa_tls.testing import CertificateAuthority
from tests.attacks.support import SegmentTLS, open_transaction, receive_all
from tests.support import Gateway, Raw, in_thread
from tests.test_inbound_tls import listener

#: Idle 60 s, total 600 s (so 421 at 480 s), and no unsuccessful-injection
#: limit in the way.
TIMERS = "[listener_settings]\nidle_timeout = 60\ntotal_time_limit = 600\nunsuccessful_timeout = 100000\n"
TIME_LIMIT = b"421 Exceeded allowable connection time, disconnecting.\r\n"
#: Seconds of the test clock between two bytes.
STEP = 5


def connect(port: int) -> Raw:
    raw = Raw(port)
    raw.reply()
    return raw


class SlowlorisTests(TestCase):
    @inlineCallbacks
    def dribble(self, gw: Gateway, raw: Raw, data: bytes, seconds: int) -> Any:
        """
        Send C{data} one byte per L{STEP} seconds of the test clock, for
        C{seconds} in all; each byte is seen by the session before the
        clock moves on.
        """
        (session,) = list[Any](gw.factory.sessions)
        for index in range(seconds // STEP):
            before = session._received
            yield in_thread(raw.send, data[index % len(data) : index % len(data) + 1])
            while session._received == before:
                yield deferLater(reactor, 0.001, lambda: None)
            gw.clock.advance(STEP)

    def count_bytes(self, gw: Gateway) -> None:
        """
        Count what each session receives, so that the test knows a byte has
        arrived before it moves the clock (the assertion is on the replies).
        """
        original = gw.factory.buildProtocol

        def build(addr: Any) -> Any:
            session: Any = original(addr)
            session._received = 0
            received = session.dataReceived

            def data_received(data: bytes) -> None:
                session._received += len(data)
                received(data)

            session.dataReceived = data_received
            return session

        gw.factory.buildProtocol = build  # type: ignore[method-assign]

    @inlineCallbacks
    def test_commandLine(self) -> Any:
        """
        One byte of a command line every 5 s keeps the idle timer (60 s)
        from firing, but at 80% of the total limit the ESA's 421 comes and
        the connection closes; the partial command is never run.
        """
        gw = Gateway(self, clock=True, extra_base=TIMERS)
        self.count_bytes(gw)
        raw = yield in_thread(connect, gw.port)
        self.addCleanup(raw.close)
        yield self.dribble(gw, raw, b"MAIL FROM:<" + b"a" * 100, 475)
        gw.clock.advance(STEP)
        rest = yield in_thread(receive_all, raw)
        self.assertEqual(rest, TIME_LIMIT)
        self.assertEqual(gw.factory.sessions, set())

    @inlineCallbacks
    def test_data(self) -> Any:
        """
        A body sent one byte every 5 s gets past the 80% mark (a message in
        progress may finish) but not past the total limit: 421, the
        connection closes and nothing is stored.
        """
        gw = Gateway(self, clock=True, extra_base=TIMERS)
        self.count_bytes(gw)
        raw = yield in_thread(open_transaction, gw.port)
        self.addCleanup(raw.close)
        yield self.dribble(gw, raw, b"Subject: slow\r\n\r\nbody line\r\n", 595)
        gw.clock.advance(STEP)
        rest = yield in_thread(receive_all, raw)
        self.assertEqual(rest, TIME_LIMIT)
        self.assertEqual(gw.queued(), [])

    @inlineCallbacks
    def test_tlsHandshake(self) -> Any:
        """
        A ClientHello sent one byte every 5 s never reaches the SMTP layer,
        so the idle timeout ends the connection: no handshake, no reply in
        the clear, and the slot is given back (with the linger, even though
        the client never reads the 421 the TLS layer holds for it).
        """
        ca = CertificateAuthority.generate()
        directory = os.path.abspath(self.mktemp())
        cert, key, chain = ca.issue(["mx.test.example"]).write(directory)
        certificates = f'[certificates.MX]\ncert = "{cert}"\nkey = "{key}"\nchain = "{chain}"\n'
        gw = Gateway(self, listener("preferred"), clock=True, extra_base=certificates + TIMERS)
        raw = yield in_thread(connect, gw.port)
        self.addCleanup(raw.close)
        ready = yield in_thread(raw.chat, b"STARTTLS\r\n")
        self.assertEqual(ready, b"220 2.0.0 Ready to start TLS\r\n")
        hello = SegmentTLS(raw).client_hello()
        for index in range(10):
            yield in_thread(raw.send, hello[index : index + 1])
            yield deferLater(reactor, 0.005, lambda: None)
            gw.clock.advance(STEP)
        self.assertEqual(len(gw.factory.sessions), 1)
        gw.clock.advance(60)
        gw.clock.advance(30)
        rest = yield in_thread(receive_all, raw)
        self.assertNotIn(b"421", rest)
        self.assertEqual(gw.factory.sessions, set())
        self.assertEqual(gw.factory.connections.count("127.0.0.1"), 0)
