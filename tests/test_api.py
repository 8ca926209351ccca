"""
The library a developer imports: third-party implementations of the
pluggable interfaces, written against the public API only, plugged into
the documented factories and talked to over real loopback sockets.  What
the contracts in L{esa_tls.interfaces} promise holds for them, including
when the plug-in itself misbehaves.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from esa_tls.config.load import parse_config
from esa_tls.config.model import AccessRule, MailFlowPolicy
from esa_tls.inbound.listener import ListenerFactory
from esa_tls.interfaces import IHostAccessTable, IIncomingMessage, IMessageStore
from esa_tls.values import HATVerdict
from tests.support import Raw, in_thread

CONFIG = """
interfaces.Loopback.address = "127.0.0.1/8"
listeners.Custom = {type = "public", interface = "Loopback", port = 2525, rat = ["example.com"]}
"""

ACCEPT = MailFlowPolicy(name="LOCAL", rule=AccessRule.ACCEPT)


@implementer(IHostAccessTable)
class AcceptAll:
    """
    A HAT that places every host in one ACCEPT group.
    """

    def lookup(self, address: str) -> object:
        return succeed(HATVerdict("ALL", ACCEPT, address))


@implementer(IHostAccessTable)
class BrokenHAT:
    """
    A HAT whose database is down: it raises instead of returning a
    L{Deferred} (a bug of its own, which the gateway must survive).
    """

    def lookup(self, address: str) -> object:
        raise RuntimeError("HAT database unavailable")


@implementer(IHostAccessTable)
class QuickHATBroken(AcceptAll):
    """
    A HAT with the optional C{lookup_sync}, which raises.
    """

    def lookup_sync(self, address: str) -> HATVerdict | None:
        raise RuntimeError("cache corrupt")


@implementer(IIncomingMessage)
class MemoryMessage:
    def __init__(self, store: MemoryStore, mid: int) -> None:
        self.store = store
        self.mid = mid
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def commit(self) -> object:
        self.store.committed.append(b"".join(self.chunks))
        return succeed(self.mid)

    def abort(self) -> None:
        self.chunks = []


@implementer(IMessageStore)
class MemoryStore:
    """
    A message store that keeps messages in a list.
    """

    def __init__(self) -> None:
        self.committed: list[bytes] = []
        self.count = 0

    def new_message(self, envelope: object) -> IIncomingMessage:
        self.count += 1
        return MemoryMessage(self, self.count)

    def has_space(self, size: int) -> bool:
        return True


def listen(testcase: TestCase, **kwargs: Any) -> int:
    """
    A L{ListenerFactory} for L{CONFIG}'s listener with C{kwargs} (a
    C{hat} and a C{store} at least) on an ephemeral loopback port.

    @return: the port.
    """
    config = parse_config(CONFIG, "api.toml")
    factory = ListenerFactory(config.listeners["Custom"], clock=reactor, **kwargs)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testcase.addCleanup(factory.shutdown)
    testcase.addCleanup(port.stopListening)
    return int(port.getHost().port)


class HostAccessTablePluginTests(TestCase):
    @inlineCallbacks
    def test_lookupRaises(self) -> Any:
        """
        A HAT whose C{lookup} raises (instead of returning a L{Deferred})
        gets the client the same C{421 4.3.0} as one whose L{Deferred}
        fails, and the connection closes: without it the exception left the
        connection open with no banner until the idle timeout, once per
        connection, up to the listener's Max Concurrency.
        """
        port = listen(self, hat=BrokenHAT(), store=MemoryStore())

        def talk() -> tuple[bytes, bytes]:
            client = Raw(port, timeout=5)
            try:
                return client.reply(), client.rest()
            finally:
                client.close()

        banner, rest = yield in_thread(talk)
        self.assertTrue(banner.startswith(b"421 4.3.0 "), banner)
        self.assertEqual(rest, b"")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_lookupSyncRaises(self) -> Any:
        """
        A HAT whose optional C{lookup_sync} raises is asked again through
        C{lookup}, whose verdict the session follows.
        """
        port = listen(self, hat=QuickHATBroken(), store=MemoryStore())

        def talk() -> bytes:
            client = Raw(port, timeout=5)
            try:
                return client.reply()
            finally:
                client.close()

        banner = yield in_thread(talk)
        self.assertTrue(banner.startswith(b"220 "), banner)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
