"""
Tests for the C{/dev/null} SMTP route (L{esa_tls.outbound.discard}): the
configuration loader accepts it only alone, and the queue manager drops
the mail of such a domain, with its mail log line and no connection,
while other domains of the same message are delivered.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from esa_tls.config.errors import ConfigError
from esa_tls.config.load import parse_config
from esa_tls.config.model import DestinationControl, DestinationTLS, GatewayConfig, SystemSettings
from esa_tls.maillog import MailLog, MailLogCollector
from esa_tls.outbound.client import Timeouts
from esa_tls.outbound.mx import MXResolver, RouteError
from esa_tls.outbound.queue import QueueManager
from esa_tls.spool import DurableSpool
from esa_tls.values import Envelope
from tests.peers.hostile import Script, start_hostile_server

CONFIG = """\
[system]
hostname = "mail.example.com"

[interfaces.PublicNet]
address = "192.168.2.1/24"

[listeners.Inboundmail]
type = "public"
interface = "PublicNet"
port = 25
rat = ["example.com"]

[smtp_routes]
"""


class ConfigTests(SynchronousTestCase):
    """
    C{/dev/null} in C{[smtp_routes]}.
    """

    def test_accepted_alone(self) -> None:
        """
        C{"example.com" = ["/dev/null"]} is a valid route, kept as written,
        for a domain, a C{.parent} and C{ALL}.
        """
        config = parse_config(
            CONFIG
            + '"example.com" = ["/dev/null"]\n".test.example" = ["/dev/null"]\n'
            + 'ALL = ["/dev/null"]\n',
            "site.toml",
        )
        self.assertEqual(
            dict(config.smtp_routes),
            {
                "example.com": ("/dev/null",),
                ".test.example": ("/dev/null",),
                "ALL": ("/dev/null",),
            },
        )

    def test_not_with_other_hosts(self) -> None:
        """
        C{/dev/null} next to another host is a configuration error naming
        the file, the line and the key of the C{/dev/null} element.
        """
        text = CONFIG + '"example.com" = ["mx.example.com", "/dev/null"]\n'
        with self.assertRaises(ConfigError) as caught:
            parse_config(text, "site.toml")
        self.assertEqual(
            str(caught.exception).splitlines(),
            [
                'site.toml:14: smtp_routes."example.com"[1]: "/dev/null" drops the mail of '
                "the domain: it must be the only host of its route"
            ],
        )

    def test_mx_resolver_refuses(self) -> None:
        """
        Anything that asks for the hosts of a dropped domain (C{tlsverify})
        is told there are none, and why.
        """
        failure = self.failureResultOf(
            MXResolver(None).resolve("example.com", {"example.com": ("/dev/null",)}),
            RouteError,
        )
        self.assertIn("its SMTP route is /dev/null", str(failure.value))


class QueueTests(TestCase):
    """
    The queue manager drops the mail of a C{/dev/null} domain.
    """

    def setUp(self) -> None:
        self.server = start_hostile_server(self, Script())
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.spool = DurableSpool(os.path.abspath(self.mktemp()), reactor)
        self.addCleanup(self.spool.close)
        self.collector = MailLogCollector()
        self.clock = Clock()
        self.clock.advance(time.time())

    def manager(self, routes: dict[str, tuple[str, ...]], **kw: Any) -> QueueManager:
        config = GatewayConfig(
            system=SystemSettings(hostname="gw.test", data_dir=self.data_dir),
            destinations={"default": DestinationControl("default", DestinationTLS.NO)},
            smtp_routes=routes,
        )
        return QueueManager(
            reactor,
            self.spool,
            config,
            None,
            dcid_allocator=itertools.count(1).__next__,
            maillog=MailLog(self.collector),
            timeouts=Timeouts.uniform(10),
            clock=self.clock,
            **kw,
        )

    async def inject(self, rcpts: list[str]) -> int:
        envelope = Envelope(
            mail_from="a@sender.example",
            rcpt_to=tuple(rcpts),
            helo="client.example",
            peer_ip="127.0.0.1",
            listener="InboundMail",
            icid=1,
            received_at=time.time(),
        )
        message = self.spool.new_message(envelope)
        message.write(b"Subject: dropped\r\n\r\nbody\r\n")
        mid: int = await message.commit()
        return mid

    async def test_dropped_without_connection(self) -> None:
        """
        A message for a C{/dev/null} domain leaves the spool without any
        connection, and the mail log says C{MID n RID [0, 1] Response
        '/dev/null'}.
        """
        mid = await self.inject(["x@example.com", "y@example.com"])
        await self.manager({"example.com": ("/dev/null",)}).run_once()
        self.assertEqual(self.spool.queued(), [])
        self.assertEqual(self.server.capture.messages, [])
        self.assertEqual(self.server.capture.max_open, 0)
        self.assertEqual(self.collector.lines, [f"MID {mid} RID [0, 1] Response '/dev/null'"])

    async def test_other_domains_delivered(self) -> None:
        """
        In a message for two domains, the recipient of the C{/dev/null}
        domain (matched as C{.parent}) is dropped and the other one is
        delivered, once; then the message leaves the spool.
        """
        route = (f"127.0.0.1:{self.server.port}",)
        mid = await self.inject(["x@sub.example.com", "y@partner.example"])
        manager = self.manager({".example.com": ("/dev/null",), "partner.example": route})
        await manager.run_once()
        self.assertEqual(self.spool.queued(), [])
        [(_, rcpts, _)] = self.server.capture.messages
        self.assertEqual(rcpts, [b"y@partner.example"])
        self.assertIn(f"MID {mid} RID [0] Response '/dev/null'", self.collector.lines)

    async def test_running_manager_drops_new_mail(self) -> None:
        """
        A running manager drops a message as soon as it is committed: the
        inbound benchmarks rely on it, like Postfix's discard transport.
        """
        manager = self.manager({"ALL": ("/dev/null",)}, scan_interval=3600)
        manager.clock = reactor
        manager.startService()
        self.addCleanup(manager.stopService)
        await self.inject(["x@example.com"])
        while self.spool.queued():
            await _turn()
        self.assertEqual(self.server.capture.messages, [])


def _turn() -> Any:
    return deferLater(reactor, 0.01, lambda: None)
