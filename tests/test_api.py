"""
The library a developer imports: third-party implementations of the
pluggable interfaces, written against the public API only, plugged into
the documented factories and talked to over real loopback sockets.  What
the contracts in L{esa_tls.interfaces} promise holds for them, including
when the plug-in itself misbehaves.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

import esa_tls
from esa_tls.config.load import parse_config
from esa_tls.config.model import AccessRule, GatewayConfig, MailFlowPolicy, TLSMode
from esa_tls.inbound.listener import ListenerFactory
from esa_tls.inbound.tlspolicy import InboundTLSPolicy
from esa_tls.interfaces import (
    ICertificateStore,
    IHostAccessTable,
    IIncomingMessage,
    IMessageStore,
    ITLSPolicy,
)
from esa_tls.maillog import MailLog, MailLogCollector
from esa_tls.tls.server import TLSConfigurationError
from esa_tls.tls.store import CertificateStore
from esa_tls.values import HATVerdict
from tests.support import Raw, in_thread, wait_until

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


@implementer(IHostAccessTable)
class NeverAnswers:
    """
    A HAT whose answer never comes (a DNS server that does not reply).
    """

    def __init__(self) -> None:
        self.asked: list[Deferred[HATVerdict]] = []

    def lookup(self, address: str) -> object:
        d: Deferred[HATVerdict] = Deferred()
        self.asked.append(d)
        return d


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
    if kwargs.pop("tls", False):
        data_dir = os.path.abspath(testcase.mktemp())
        os.makedirs(data_dir)
        kwargs["certificates"] = CertificateStore(config, data_dir)
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
    def test_lookupRaisesMailLog(self) -> Any:
        """
        A connection the HAT failed to place is in the mail log whole: its
        C{New SMTP ICID} line (nothing known of its host), then its
        C{close}; the close alone named a connection never introduced.
        """
        collector = MailLogCollector()
        port = listen(self, hat=BrokenHAT(), store=MemoryStore(), maillog=MailLog(collector))

        def talk() -> bytes:
            client = Raw(port, timeout=5)
            try:
                return client.reply() + client.rest()
            finally:
                client.close()

        yield in_thread(talk)
        yield in_thread(wait_until, lambda: len(collector.lines) >= 2, 5)
        self.flushLoggedErrors(RuntimeError)
        [first, last] = collector.lines
        self.assertRegex(
            first,
            r"^New SMTP ICID (\d+) interface Loopback \(127\.0\.0\.1\) address 127\.0\.0\.1"
            r" reverse dns host unknown verified no$",
        )
        self.assertEqual(last, f"ICID {first.split()[3]} close")

    @inlineCallbacks
    def test_leftBeforeVerdictMailLog(self) -> Any:
        """
        A client that leaves while the HAT is still placing it (a slow DNS
        lookup) gets its C{New SMTP ICID} line before its C{close}.
        """
        collector = MailLogCollector()
        hat = NeverAnswers()
        port = listen(self, hat=hat, store=MemoryStore(), maillog=MailLog(collector))
        client = Raw(port, timeout=5)
        yield in_thread(wait_until, lambda: bool(hat.asked), 5)
        client.close()
        yield in_thread(wait_until, lambda: bool(collector.lines), 5)
        self.assertEqual(len(collector.lines), 2, collector.lines)
        self.assertTrue(collector.lines[0].startswith("New SMTP ICID "), collector.lines)
        self.assertEqual(collector.lines[1], f"ICID {collector.lines[0].split()[3]} close")

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


@implementer(IMessageStore)
class FaultyStore(MemoryStore):
    """
    A store with a bug of its own: C{fault} names the method that raises
    something other than L{StoreError}.
    """

    def __init__(self, fault: str) -> None:
        super().__init__()
        self.fault = fault

    def new_message(self, envelope: object) -> IIncomingMessage:
        if self.fault == "new_message":
            raise OSError("store unreachable")
        message = MemoryMessage(self, self.count + 1)
        self.count += 1
        if self.fault == "write":

            def write(data: bytes) -> None:
                if data.startswith(b"Received:"):
                    message.chunks.append(data)
                    return
                raise OSError("store unreachable")

            message.write = write  # type: ignore[method-assign]
        return message

    def has_space(self, size: int) -> bool:
        if self.fault == "has_space":
            raise OSError("store unreachable")
        return True


class MessageStorePluginTests(TestCase):
    """
    A store that raises something other than L{StoreError} gets the client
    a 4xx and the session goes on, as L{IMessageStore} says; before, the
    exception dropped the connection with no reply at all.
    """

    @inlineCallbacks
    def converse(self, fault: str) -> Any:
        self.store = FaultyStore(fault)
        port = listen(self, hat=AcceptAll(), store=self.store)

        def talk() -> list[bytes]:
            client = Raw(port, timeout=5)
            try:
                replies = [client.reply(), client.chat(b"HELO client.test\r\n")]
                replies.append(client.chat(b"MAIL FROM:<a@sender.test>\r\n"))
                if replies[-1].startswith(b"250"):
                    replies.append(client.chat(b"RCPT TO:<u@example.com>\r\n"))
                    replies.append(client.chat(b"DATA\r\n"))
                    if replies[-1].startswith(b"354"):
                        replies.append(client.chat(b"Subject: x\r\n\r\nhello\r\n.\r\n"))
                replies.append(client.chat(b"QUIT\r\n"))
                return replies
            finally:
                client.close()

        replies = yield in_thread(talk)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        return replies

    @inlineCallbacks
    def test_hasSpaceRaises(self) -> Any:
        """
        C{has_space} raising counts as no space: C{452 4.3.1}.
        """
        replies = yield self.converse("has_space")
        self.assertEqual(replies[2], b"452 4.3.1 Insufficient system storage\r\n")
        self.assertEqual(replies[-1], b"221 2.0.0 Bye\r\n")

    @inlineCallbacks
    def test_newMessageRaises(self) -> Any:
        """
        C{new_message} raising answers DATA with C{451 4.3.0}.
        """
        replies = yield self.converse("new_message")
        self.assertEqual(
            replies[4], b"451 4.3.0 Temporary error storing the message, try again later\r\n"
        )
        self.assertEqual(replies[-1], b"221 2.0.0 Bye\r\n")

    @inlineCallbacks
    def test_writeRaises(self) -> Any:
        """
        An C{IIncomingMessage.write} raising answers the end of DATA with
        C{451 4.3.0}, and nothing is committed.
        """
        replies = yield self.converse("write")
        self.assertEqual(replies[4], b"354 End data with <CR><LF>.<CR><LF>\r\n")
        self.assertEqual(
            replies[5], b"451 4.3.0 Temporary error storing the message, try again later\r\n"
        )
        self.assertEqual(replies[-1], b"221 2.0.0 Bye\r\n")
        self.assertEqual(self.store.committed, [])


@implementer(ITLSPolicy)
class TLSForEveryone:
    """
    A TLS policy of one's own: whatever the mail flow policy says, TLS
    before any mail, with its own words; AUTH never.
    """

    def __init__(self, policy: MailFlowPolicy, available: bool) -> None:
        self.available = available

    def offer_starttls(self, secure: bool) -> bool:
        return self.available and not secure

    def command_refusal(self, verb: bytes, secure: bool) -> tuple[int, bytes] | None:
        if secure or verb in (b"EHLO", b"NOOP", b"QUIT", b"STARTTLS"):
            return None
        return (530, b"5.7.0 This site wants STARTTLS first")

    def sender_refusal(self, mail_from: str, secure: bool) -> tuple[int, bytes] | None:
        return None if secure else (530, b"5.7.0 This site wants STARTTLS first")

    def offer_auth(self, secure: bool) -> bool:
        return False


class TLSPolicyPluginTests(TestCase):
    @inlineCallbacks
    def test_customPolicyRequiresTLS(self) -> Any:
        """
        An L{ITLSPolicy} of one's own, given to L{ListenerFactory} as
        C{tls_policy}, decides: on a listener whose mail flow policy has
        TLS off, it has STARTTLS offered, MAIL refused in the clear with
        its reply, and the message taken once TLS is up.
        """
        store = MemoryStore()
        port = listen(self, hat=AcceptAll(), store=store, tls=True, tls_policy=TLSForEveryone)

        def talk() -> list[bytes]:
            client = Raw(port, timeout=5)
            try:
                replies = [client.reply(), client.chat(b"EHLO client.test\r\n")]
                replies.append(client.chat(b"MAIL FROM:<a@sender.test>\r\n"))
                replies.append(client.chat(b"STARTTLS\r\n"))
                client.starttls()
                replies.append(client.chat(b"EHLO client.test\r\n"))
                for line in (
                    b"MAIL FROM:<a@sender.test>\r\n",
                    b"RCPT TO:<u@example.com>\r\n",
                    b"DATA\r\n",
                    b"Subject: tls\r\n\r\nhello\r\n.\r\n",
                    b"QUIT\r\n",
                ):
                    replies.append(client.chat(line))
                return replies
            finally:
                client.close()

        replies = yield in_thread(talk)
        self.assertTrue(replies[1].endswith(b"250 STARTTLS\r\n"), replies[1])
        self.assertEqual(replies[2], b"530 5.7.0 This site wants STARTTLS first\r\n")
        self.assertTrue(replies[3].startswith(b"220 "), replies[3])
        self.assertNotIn(b"STARTTLS", replies[4])
        self.assertEqual([r[:3] for r in replies[5:]], [b"250", b"250", b"354", b"250", b"221"])
        (message,) = store.committed
        self.assertIn(b"with ESMTPS", message)
        self.assertTrue(message.endswith(b"Subject: tls\r\n\r\nhello\r\n"))

    def test_builtInProvides(self) -> None:
        """
        The built-in policy, the default of C{tls_policy}, provides
        L{ITLSPolicy}, as does the one above.
        """
        policy = MailFlowPolicy(name="P")
        self.assertTrue(verifyObject(ITLSPolicy, InboundTLSPolicy.from_policy(policy, True)))
        self.assertTrue(verifyObject(ITLSPolicy, TLSForEveryone(policy, True)))


@implementer(IHostAccessTable)
class PreferTLS:
    """
    A HAT that places every host under a policy with Preferred TLS.
    """

    def lookup(self, address: str) -> object:
        policy = MailFlowPolicy(name="TLS", rule=AccessRule.ACCEPT, tls=TLSMode.PREFERRED)
        return succeed(HATVerdict("ALL", policy, address))


@implementer(ICertificateStore)
class NotIssuedYet:
    """
    A certificate store whose certificate has not been issued yet: it says
    so as the contract asks, with L{TLSConfigurationError}.
    """

    def names(self) -> list[str]:
        return ["Demo"]

    def server_creator(
        self,
        listener: object,
        client_ca: str | None = None,
        *,
        require_client_certificate: bool = False,
        verify_client_certificate: bool = False,
    ) -> object:
        raise TLSConfigurationError("the certificate has not been issued yet")

    def reload(self, config: GatewayConfig | None = None) -> list[str]:
        return []


class CertificateStorePluginTests(TestCase):
    def test_provides(self) -> None:
        """
        The built-in store and the one above provide L{ICertificateStore},
        C{reload}'s optional configuration included (the service passes
        one at each reload).
        """
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        store = CertificateStore(parse_config(CONFIG, "api.toml"), data_dir)
        self.assertTrue(verifyObject(ICertificateStore, store))
        self.assertTrue(verifyObject(ICertificateStore, NotIssuedYet()))

    @inlineCallbacks
    def test_certificateNotInService(self) -> Any:
        """
        A store that raises L{TLSConfigurationError} from
        C{server_creator} (its certificate is not in service) gets a
        Preferred session no STARTTLS offer and a C{454} to a STARTTLS
        sent anyway, and the session goes on in the clear.
        """
        port = listen(self, hat=PreferTLS(), store=MemoryStore(), certificates=NotIssuedYet())

        def talk() -> list[bytes]:
            client = Raw(port, timeout=5)
            try:
                replies = [client.reply(), client.chat(b"EHLO client.test\r\n")]
                replies.append(client.chat(b"STARTTLS\r\n"))
                replies.append(client.chat(b"MAIL FROM:<a@sender.test>\r\n"))
                return replies
            finally:
                client.close()

        replies = yield in_thread(talk)
        self.assertNotIn(b"STARTTLS", replies[1])
        self.assertEqual(replies[2], b"454 4.7.0 TLS not available due to temporary reason\r\n")
        self.assertEqual(replies[3], b"250 2.1.0 Ok\r\n")


class PublicNamesTests(TestCase):
    """
    C{esa_tls} itself names the public API, so that a developer need not
    know the module layout: C{from esa_tls import ListenerFactory, ...}.
    """

    def test_everyNameImports(self) -> None:
        """
        Every name in C{esa_tls.__all__} is the object of that name in the
        module it comes from, and the plug-in interfaces are among them.
        """
        public = dict(esa_tls._PUBLIC)
        self.assertEqual(sorted(esa_tls.__all__), sorted([*public, "__version__"]))
        for name, module in public.items():
            self.assertIs(getattr(esa_tls, name), getattr(importlib.import_module(module), name))
        interfaces = importlib.import_module("esa_tls.interfaces")
        declared = [n for n in vars(interfaces) if n.startswith("I") and n[1:2].isupper()]
        self.assertEqual([n for n in declared if n not in esa_tls.__all__], [])
        with self.assertRaises(AttributeError):
            esa_tls.NoSuchThing  # noqa: B018

    def test_importIsLight(self) -> None:
        """
        C{import esa_tls} (every gateway process and the CLI do it) still
        imports none of the library until a name is asked for.
        """
        probe = "import sys, esa_tls; print(sorted(m for m in sys.modules if 'esa_tls' in m))"
        done = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )
        self.assertEqual(done.stdout.strip(), "['esa_tls']")
