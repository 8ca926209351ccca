"""
A reload (SIGHUP, or the file watcher) runs the new configuration, or says
which settings need a restart and keeps the old value for those alone:
SMTP AUTH, host names and TLS settings are applied to new connections, a
removed listener stops listening, and nothing a reload cannot apply is
ignored in silence.

Each test runs a whole L{GatewayService} in this process on loopback
ports, rewrites its configuration file and calls L{GatewayService.reload}
(what SIGHUP and the watcher call).
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher
from twisted.names.client import Resolver
from twisted.trial.unittest import TestCase

from esa_tls.config.load import load_config_with_warnings
from esa_tls.inbound.auth import hash_password
from esa_tls.service import GatewayService
from tests.support import Raw, free_port, in_thread, wait_until

PLAIN_ALICE = b"AUTH PLAIN " + base64.b64encode(b"\x00alice\x00s3cret") + b"\r\n"
PLAIN_BOB = b"AUTH PLAIN " + base64.b64encode(b"\x00bob\x00hunter2") + b"\r\n"

SYSTEM = """[system]
hostname = "mx.test.example"
data_dir = "{data_dir}"
"""

INBOUND = """
[interfaces.Loopback]
address = "127.0.0.1/8"

[listeners.InboundMail]
type = "public"
interface = "Loopback"
port = {port}
rat = ["example.com"]

[listeners.InboundMail.policies.default]
smtp_auth = "allow"
smtp_auth_requires_tls = false
"""

RELAY = """
[listeners.Relay]
type = "private"
interface = "Loopback"
port = {port}

[[listeners.Relay.hat]]
group = "RELAYLIST"
policy = "RELAYED"
senders = ["127.0.0.0/8"]
"""

ROUTES = """
# Nothing leaves this machine: deliveries are deferred.
[smtp_routes]
ALL = ["127.0.0.1:9"]
"""


class ReloadingGateway:
    """
    A L{GatewayService} from a configuration file, started; L{rewrite}
    changes the file and reloads.
    """

    def __init__(
        self, case: TestCase, text: str, resolver: Any = "inject", relative: bool = False
    ) -> None:
        """
        @param relative: load the file by a name relative to its directory,
            from that directory, and go back to the test's own directory
            once the service is made, as C{twistd --rundir} does after
            C{twistd -n esa-tls --config gateway.toml} made it.
        """
        self.directory = os.path.abspath(case.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "gateway.toml")
        self.text = text.replace("{data_dir}", os.path.join(self.directory, "var"))
        with open(self.path, "w") as f:
            f.write(self.text)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        started_in = os.getcwd()
        if relative:
            os.chdir(self.directory)
        try:
            self.service = GatewayService(
                load_config_with_warnings("gateway.toml" if relative else self.path),
                resolver=Resolver(servers=[("127.0.0.1", 53)]) if resolver == "inject" else None,
                watch_interval=0,
            )
        finally:
            os.chdir(started_in)
        self.service.startService()
        case.addCleanup(self.service.stopService)

    def users(self, name: str, *lines: str) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        return path

    def rewrite(self, old: str, new: str) -> list[str]:
        """
        Replace C{old} (which must be there) with C{new} in the file, and
        reload.

        @return: what L{GatewayService.reload} returned.
        """
        assert old in self.text, old
        self.text = self.text.replace(old, new, 1)
        with open(self.path, "w") as f:
            f.write(self.text)
        return self.service.reload()

    def log(self) -> list[str]:
        return [formatEvent(e) for e in self.events]


def converse(port: int, commands: list[bytes]) -> list[bytes]:
    """
    The greeting and one reply per command.
    """
    raw = Raw(port)
    try:
        return [raw.reply()] + [raw.chat(c) for c in commands]
    finally:
        raw.close()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


RELAY_SESSION = [
    b"EHLO c\r\n",
    b"MAIL FROM:<a@b.test>\r\n",
    b"RCPT TO:<friend@elsewhere.test>\r\n",
]


class AuthReloadTests(TestCase):
    def gateway(self) -> tuple[ReloadingGateway, int]:
        port = free_port()
        text = SYSTEM + 'smtp_auth_users = "{users}"\n' + INBOUND.format(port=port) + ROUTES
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        users = os.path.join(directory, "users")
        with open(users, "w") as f:
            f.write(f"alice:{hash_password('s3cret')}\n")
        return ReloadingGateway(self, text.replace("{users}", users)), port

    @inlineCallbacks
    def test_authRemoved(self) -> Any:
        """
        Removing C{[system] smtp_auth_users} takes AUTH away from new
        sessions: it is no longer offered or accepted, and a client that
        used to authenticate may no longer relay.
        """
        gw, port = self.gateway()
        before = yield in_thread(converse, port, [b"EHLO c\r\n", PLAIN_ALICE, *RELAY_SESSION[1:]])
        self.assertRegex(before[1], rb"250[ -]AUTH PLAIN LOGIN\r\n")
        self.assertEqual(before[2], b"235 2.7.0 Authentication successful\r\n")
        self.assertEqual(before[4], b"250 2.1.5 Ok\r\n")

        users_line = next(line for line in gw.text.splitlines() if "smtp_auth_users" in line)
        self.assertEqual(gw.rewrite(users_line + "\n", ""), [])
        after = yield in_thread(converse, port, [b"EHLO c\r\n", PLAIN_ALICE, *RELAY_SESSION[1:]])
        self.assertNotIn(b"AUTH", after[1])
        self.assertEqual(after[2], b"502 5.5.1 AUTH not available\r\n")
        self.assertTrue(after[4].startswith(b"550 5.7.1 "), after[4])
        self.assertIn("reload: system: smtp_auth_users changed; applied", gw.log())

    @inlineCallbacks
    def test_authFileReplaced(self) -> Any:
        """
        C{smtp_auth_users} naming another file: new sessions are checked
        against that file only.
        """
        gw, port = self.gateway()
        other = gw.users("others", f"bob:{hash_password('hunter2')}")
        users_line = next(line for line in gw.text.splitlines() if "smtp_auth_users" in line)
        self.assertEqual(gw.rewrite(users_line, f'smtp_auth_users = "{other}"'), [])
        replies = yield in_thread(converse, port, [b"EHLO c\r\n", PLAIN_ALICE, PLAIN_BOB])
        self.assertEqual(replies[2], b"535 5.7.8 Authentication credentials invalid\r\n")
        self.assertEqual(replies[3], b"235 2.7.0 Authentication successful\r\n")

    @inlineCallbacks
    def test_authRemovedDuringExchange(self) -> Any:
        """
        A session half-way through AUTH LOGIN when AUTH is taken away is
        told AUTH is not available, and is not authenticated.
        """
        gw, port = self.gateway()
        raw = yield in_thread(Raw, port)
        self.addCleanup(raw.close)
        yield in_thread(raw.reply)
        yield in_thread(raw.chat, b"EHLO c\r\n")
        self.assertEqual((yield in_thread(raw.chat, b"AUTH LOGIN\r\n")), b"334 VXNlcm5hbWU6\r\n")
        user = base64.b64encode(b"alice") + b"\r\n"
        self.assertEqual((yield in_thread(raw.chat, user)), b"334 UGFzc3dvcmQ6\r\n")
        users_line = next(line for line in gw.text.splitlines() if "smtp_auth_users" in line)
        gw.rewrite(users_line + "\n", "")
        password = base64.b64encode(b"s3cret") + b"\r\n"
        self.assertEqual((yield in_thread(raw.chat, password)), b"502 5.5.1 AUTH not available\r\n")
        self.assertEqual(
            (yield in_thread(raw.chat, b"MAIL FROM:<a@b.test>\r\n")), b"250 2.1.0 Ok\r\n"
        )
        reply = yield in_thread(raw.chat, b"RCPT TO:<friend@elsewhere.test>\r\n")
        self.assertTrue(reply.startswith(b"550 5.7.1 "), reply)


class ListenerReloadTests(TestCase):
    @inlineCallbacks
    def test_listenerRemoved(self) -> Any:
        """
        A listener removed from the file stops listening (its port is
        closed, so nothing relays through it any more) and the log says so;
        a session it had open may finish.
        """
        port, relay_port = free_port(), free_port()
        relay = RELAY.format(port=relay_port)
        gw = ReloadingGateway(self, SYSTEM + INBOUND.format(port=port) + relay + ROUTES)
        replies = yield in_thread(converse, relay_port, RELAY_SESSION)
        self.assertEqual(replies[3], b"250 2.1.5 Ok\r\n")
        raw = yield in_thread(Raw, relay_port)
        self.addCleanup(raw.close)
        yield in_thread(raw.reply)

        self.assertEqual(gw.rewrite(relay, ""), [])
        self.assertTrue((yield in_thread(wait_until, lambda: refused(relay_port), 10)))
        self.assertIn(
            f"reload: listener Relay: removed; stopped listening on 127.0.0.1 port {relay_port}",
            gw.log(),
        )
        # The session already open goes on; the other listener serves.
        self.assertTrue((yield in_thread(raw.chat, b"EHLO c\r\n")).startswith(b"250-"))
        replies = yield in_thread(converse, port, RELAY_SESSION)
        self.assertTrue(replies[3].startswith(b"550 5.7.1 "), replies[3])
        # Another reload neither starts it again nor says it again.
        self.assertEqual(gw.service.reload(), [])
        self.assertEqual(sum("listener Relay: removed" in line for line in gw.log()), 1)
        self.assertTrue(refused(relay_port))

    @inlineCallbacks
    def test_relativeFileAfterChangingDirectory(self) -> Any:
        """
        A gateway started with a relative C{--config} reloads that file
        after the process changed directory (C{twistd --rundir}): a reload
        making TLS Required applies, where it used to be refused because
        the name no longer named a file (C{gateway.toml: cannot read}).
        """
        port = free_port()
        gw = ReloadingGateway(self, SYSTEM + INBOUND.format(port=port) + ROUTES, relative=True)
        self.assertEqual(
            gw.rewrite('smtp_auth = "allow"', 'smtp_auth = "allow"\ntls = "required"'), []
        )
        replies = yield in_thread(converse, port, RELAY_SESSION[:2])
        self.assertEqual(replies[2], b"530 5.7.0 Must issue a STARTTLS command first\r\n")

    @inlineCallbacks
    def test_listenerAdded(self) -> Any:
        """
        A listener added to the file is not started until a restart, and
        each reload says so.
        """
        port, relay_port = free_port(), free_port()
        gw = ReloadingGateway(self, SYSTEM + INBOUND.format(port=port) + ROUTES)
        relay = RELAY.format(port=relay_port)
        added = "listener Relay: added; restart to apply"
        self.assertEqual(gw.rewrite("\n[smtp_routes]", relay + "\n[smtp_routes]"), [added])
        self.assertIn(f"reload: {added}", gw.log())
        self.assertTrue((yield in_thread(refused, relay_port)))
        self.assertEqual(gw.service.reload(), [added])

    @inlineCallbacks
    def test_hostnames(self) -> Any:
        """
        A new C{[system] hostname} is in the next banner and EHLO reply; a
        listener's own C{hostname}, added by a reload, wins over it.
        """
        port = free_port()
        gw = ReloadingGateway(self, SYSTEM + INBOUND.format(port=port) + ROUTES)
        replies = yield in_thread(converse, port, [b"EHLO c\r\n"])
        self.assertEqual(replies[0], b"220 mx.test.example ESMTP\r\n")

        self.assertEqual(gw.rewrite('"mx.test.example"', '"mx2.test.example"'), [])
        replies = yield in_thread(converse, port, [b"EHLO c\r\n"])
        self.assertEqual(replies[0], b"220 mx2.test.example ESMTP\r\n")
        self.assertTrue(replies[1].startswith(b"250-mx2.test.example"), replies[1])
        self.assertIn("reload: system: hostname changed; applied", gw.log())

        gw.rewrite(
            'rat = ["example.com"]\n', 'rat = ["example.com"]\nhostname = "in.test.example"\n'
        )
        replies = yield in_thread(converse, port, [b"EHLO c\r\n"])
        self.assertEqual(replies[0], b"220 in.test.example ESMTP\r\n")
        self.assertIn("reload: listener InboundMail: hostname changed; applied", gw.log())

    @inlineCallbacks
    def test_listenerSettings(self) -> Any:
        """
        C{[listener_settings]} applies to the next session.
        """
        port = free_port()
        gw = ReloadingGateway(self, SYSTEM + INBOUND.format(port=port) + ROUTES)
        gw.rewrite("\n[smtp_routes]", "\n[listener_settings]\nbad_command_limit = 1\n[smtp_routes]")
        replies = yield in_thread(converse, port, [b"EHLO c\r\n", b"BOGUS\r\n"])
        self.assertTrue(replies[2].startswith(b"421 "), replies[2])
        self.assertIn("reload: listener_settings changed; applied", gw.log())

    @inlineCallbacks
    def test_restartOnly(self) -> Any:
        """
        What only a restart can change is said, one line per setting, and
        its old value stays in force (the listener still speaks plain SMTP
        on its old port) while the rest of the same reload is applied; the
        next reload says it again.
        """
        port, new_port = free_port(), free_port()
        gw = ReloadingGateway(self, SYSTEM + INBOUND.format(port=port) + ROUTES)
        expected = [
            "system: data_dir changed; restart to apply",
            "admin: listen changed; restart to apply",
            "listener InboundMail: port changed; restart to apply",
            "listener InboundMail: protocol changed; restart to apply",
            "listener InboundMail: tcp_queue changed; restart to apply",
            "listener InboundMail: proxy_protocol changed; restart to apply",
        ]
        gw.rewrite("/var", "/elsewhere")
        gw.rewrite(
            "\n[smtp_routes]", '\n[admin]\nlisten = "tcp:0:interface=127.0.0.1"\n[smtp_routes]'
        )
        problems = gw.rewrite(
            f'port = {port}\nrat = ["example.com"]\n',
            f'port = {new_port}\nrat = ["example.com", "example.org"]\nprotocol = "SMTPS"\n'
            "tcp_queue = 7\nproxy_protocol = true\n",
        )
        self.assertEqual(sorted(problems), sorted(expected))
        for line in expected:
            self.assertIn(f"reload: {line}", gw.log())
        self.assertIn("reload: listener InboundMail: rat changed; applied", gw.log())
        replies = yield in_thread(
            converse,
            port,
            [b"EHLO c\r\n", b"MAIL FROM:<a@b.test>\r\n", b"RCPT TO:<u@example.org>\r\n"],
        )
        self.assertEqual(replies[0], b"220 mx.test.example ESMTP\r\n")
        self.assertEqual(replies[3], b"250 2.1.5 Ok\r\n")
        self.assertTrue((yield in_thread(refused, new_port)))
        self.assertEqual(sorted(gw.service.reload()), sorted(expected))

    @inlineCallbacks
    def test_implicitTLSSettings(self) -> Any:
        """
        An implicit TLS (SMTPS) listener's TLS protocols changed by a reload
        apply to the next handshake, as they do at the next STARTTLS.
        """
        port = free_port()
        text = SYSTEM + INBOUND.format(port=port) + ROUTES
        text = text.replace(
            'rat = ["example.com"]\n', 'rat = ["example.com"]\nprotocol = "SMTPS"\n'
        )
        gw = ReloadingGateway(self, text)

        def greeting() -> bytes:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                with context.wrap_socket(s) as tls:
                    return tls.recv(1000)

        self.assertEqual((yield in_thread(greeting)), b"220 mx.test.example ESMTP\r\n")
        self.assertEqual(
            gw.rewrite('protocol = "SMTPS"\n', 'protocol = "SMTPS"\ntls_protocols = ["TLSv1.3"]\n'),
            [],
        )
        yield self.assertFailure(in_thread(greeting), ssl.SSLError)
        self.assertIn("reload: listener InboundMail: tls_protocols changed; applied", gw.log())

    def test_resolvers(self) -> None:
        """
        New C{[system] resolvers} are asked from then on, by the HAT and by
        deliveries alike.
        """
        port = free_port()
        text = SYSTEM + 'resolvers = ["127.0.0.1:5300"]\n' + INBOUND.format(port=port) + ROUTES
        gw = ReloadingGateway(self, text, resolver=None)
        first = gw.service.resolver
        self.assertEqual(gw.rewrite("127.0.0.1:5300", "127.0.0.2:5301"), [])
        resolver = gw.service.resolver
        self.assertIsNot(resolver, first)
        self.assertEqual(resolver.resolvers[0].servers, [("127.0.0.2", 5301)])
        assert gw.service.queue is not None
        self.assertIs(gw.service.queue.resolver, resolver)
        self.assertIs(gw.service.queue.mx_resolver.resolver, resolver)
        hat: Any = gw.service.factories["InboundMail"].hat
        self.assertIs(hat._resolver, resolver)
        self.assertIn("reload: system: resolvers changed; applied", gw.log())
