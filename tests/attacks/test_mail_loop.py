"""
Mail loops: a message that arrives with as many C{Received:} fields as a
loop leaves (RFC 5321 6.3: a threshold of at least 100) is refused at its
end with C{554 5.4.6}, however its header was cut into reads, so that a
routing mistake (a domain routed back to the gateway, two gateways routing
to each other) ends in one bounce instead of mail going round for ever.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from esa_tls.config.errors import ConfigError
from esa_tls.config.load import parse_config
from tests.attacks.support import open_transaction, stored_content
from tests.support import PUBLIC, Gateway, in_thread

TOO_MANY_HOPS = b"554 5.4.6 Too many hops\r\n"
NOOP_OK = b"250 2.0.0 Ok\r\n"


def received(count: int, name: bytes = b"Received") -> bytes:
    """
    C{count} folded C{Received:} fields, as relays write them.
    """
    return b"".join(
        name + b": from relay%d.test (relay%d.test [192.0.2.%d])\r\n"
        b"\tby next.test with ESMTP; Sun, 29 Nov 2026 05:00:00 +0000\r\n" % (i, i, i % 250)
        for i in range(count)
    )


def _send(port: int, message: bytes, piece: int = 0) -> list[bytes]:
    """
    Send C{message} as one DATA (in pieces of C{piece} octets when given)
    and return the reply to its end and to a NOOP after it.
    """
    raw = open_transaction(port)
    try:
        data = message + b".\r\n"
        step = piece or len(data)
        for start in range(0, len(data), step):
            raw.send(data[start : start + step])
        return [raw.reply(), raw.chat(b"NOOP\r\n")]
    finally:
        raw.close()


class HopCountTests(TestCase):
    @inlineCallbacks
    def test_threshold(self) -> Any:
        """
        99 C{Received:} fields are accepted and stored as sent; 100 are
        refused with C{554 5.4.6} and nothing is stored; the session goes
        on.
        """
        gw = Gateway(self)
        message = received(99) + b"Subject: far\r\n\r\nbody\r\n"
        replies = yield in_thread(_send, gw.port, message)
        self.assertTrue(replies[0].startswith(b"250 2.0.0 Ok: Message "), replies)
        (queued,) = gw.queued()
        self.assertEqual(stored_content(gw, queued.mid), message)
        replies = yield in_thread(_send, gw.port, received(100) + b"\r\nbody\r\n")
        self.assertEqual(replies, [TOO_MANY_HOPS, NOOP_OK])
        self.assertEqual(len(gw.queued()), 1)

    @inlineCallbacks
    def test_fieldNamesAnyCase(self) -> Any:
        """
        Field names are case-insensitive (RFC 5322): C{RECEIVED:} and
        C{received:} count as well.
        """
        gw = Gateway(self)
        message = received(50, b"RECEIVED") + received(50, b"received") + b"\r\nbody\r\n"
        replies = yield in_thread(_send, gw.port, message)
        self.assertEqual(replies, [TOO_MANY_HOPS, NOOP_OK])
        self.assertEqual(gw.queued(), [])

    @inlineCallbacks
    def test_stuffedAndObsoleteForms(self) -> Any:
        """
        A field sent dot-stuffed (C{.Received:}, stored as C{Received:})
        and the obsolete form with white space before the colon
        (C{Received :}, RFC 5322 4.5.3) count as well.
        """
        gw = Gateway(self)
        message = (
            received(40) + received(30, b".Received") + received(30, b"Received \t") + b"\r\nx\r\n"
        )
        replies = yield in_thread(_send, gw.port, message)
        self.assertEqual(replies, [TOO_MANY_HOPS, NOOP_OK])
        self.assertEqual(gw.queued(), [])

    @inlineCallbacks
    def test_headerInSmallReads(self) -> Any:
        """
        The count does not depend on how the header was cut into reads:
        100 fields sent seven octets at a time are refused, 99 accepted.
        """
        gw = Gateway(self)
        replies = yield in_thread(_send, gw.port, received(100) + b"\r\nbody\r\n", 7)
        self.assertEqual(replies, [TOO_MANY_HOPS, NOOP_OK])
        replies = yield in_thread(_send, gw.port, received(99) + b"\r\nbody\r\n", 7)
        self.assertTrue(replies[0].startswith(b"250 "), replies)
        self.assertEqual(len(gw.queued()), 1)

    @inlineCallbacks
    def test_bodyNotCounted(self) -> Any:
        """
        C{Received:} lines after the empty line that ends the header are
        text (a forwarded message quoted in the body), not hops; nor are
        continuation lines or names that only start the same way.
        """
        gw = Gateway(self)
        message = (
            received(60)
            + b"Received-SPF: pass\r\n" * 50
            + b"X-Note: x\r\n Received: folded\r\n" * 50
            + b"\r\n"
            + received(200)
        )
        replies = yield in_thread(_send, gw.port, message)
        self.assertTrue(replies[0].startswith(b"250 2.0.0 Ok: Message "), replies)
        (queued,) = gw.queued()
        self.assertEqual(stored_content(gw, queued.mid), message)

    @inlineCallbacks
    def test_configuredThreshold(self) -> Any:
        """
        C{[listener_settings] max_received_headers} sets the threshold.
        """
        gw = Gateway(self, "[listener_settings]\nmax_received_headers = 3\n" + PUBLIC)
        replies = yield in_thread(_send, gw.port, received(2) + b"\r\nbody\r\n")
        self.assertTrue(replies[0].startswith(b"250 "), replies)
        replies = yield in_thread(_send, gw.port, received(3) + b"\r\nbody\r\n")
        self.assertEqual(replies, [TOO_MANY_HOPS, NOOP_OK])
        self.assertEqual(len(gw.queued()), 1)


class ThresholdConfigTests(SynchronousTestCase):
    def test_outOfRange(self) -> None:
        """
        A threshold of 0 (every message refused) is a configuration fault
        naming the file, line and key.
        """
        text = "[listener_settings]\nmax_received_headers = 0\n"
        with self.assertRaises(ConfigError) as caught:
            parse_config(text, "site.toml")
        self.assertIn(
            "site.toml:2: listener_settings.max_received_headers: 0 is out of range 1-10000",
            str(caught.exception),
        )

    def test_default(self) -> None:
        """
        Without the key, RFC 5321's threshold of 100.
        """
        loopback = '[interfaces.Loopback]\naddress = "127.0.0.1/8"\n'
        config = parse_config(loopback + PUBLIC, "site.toml")
        self.assertEqual(config.listener_settings.max_received_headers, 100)
