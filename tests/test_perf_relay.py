"""
Performance properties of the relay path (issue 7) that can be asserted
without timing anything: the queue manager's work per message must not
grow with the queue.  The throughput itself is measured by hand with
C{bench/run --only relay} (see C{bench/README.md}).
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from esa_tls.config.model import (
    DestinationControl,
    DestinationTLS,
    GatewayConfig,
    SystemSettings,
)
from esa_tls.outbound.client import Timeouts
from esa_tls.outbound.queue import QueueManager
from esa_tls.spool import DurableSpool
from esa_tls.spool.values import QueuedMessage
from esa_tls.values import Envelope
from tests.peers.hostile import Script, start_hostile_server


class CountingSpool(DurableSpool):
    """
    The real spool, counting how often the whole queue is read.
    """

    full_reads = 0

    def queued(self) -> list[QueuedMessage]:
        self.full_reads += 1
        return super().queued()


class QueueScanTests(TestCase):
    """
    Deliveries held back by a concurrency limit start as slots free up,
    without reading the whole queue again.
    """

    async def test_no_rescan_per_delivery(self) -> None:
        """
        Thirty queued messages and twenty more arriving, to a domain
        allowed one delivery at a time: all fifty are delivered, once,
        and the whole queue was read only by the start-up scan (a rescan
        per delivery made each delivery cost as much as the queue was
        long: quadratic in a backlog).
        """
        server = start_hostile_server(self, Script())
        data_dir = os.path.abspath(self.mktemp())
        spool = CountingSpool(os.path.abspath(self.mktemp()), reactor)
        self.addCleanup(spool.close)
        config = GatewayConfig(
            system=SystemSettings(hostname="gw.test", data_dir=data_dir),
            destinations={
                "default": DestinationControl("default", DestinationTLS.NO, max_host_concurrency=1)
            },
            smtp_routes={"partner.example": (f"127.0.0.1:{server.port}",)},
        )
        for i in range(30):
            await _inject(spool, f"early {i}")
        manager = QueueManager(
            reactor,
            spool,
            config,
            None,
            dcid_allocator=itertools.count(1).__next__,
            timeouts=Timeouts.uniform(10),
            scan_interval=3600,
        )
        manager.startService()
        self.addCleanup(manager.stopService)
        for i in range(20):
            await _inject(spool, f"late {i}")
        deadline = time.monotonic() + 30
        while len(server.capture.messages) < 50 and time.monotonic() < deadline:
            await deferLater(reactor, 0.02, lambda: None)
        subjects = sorted(body.split(b"\r\n", 1)[0] for _, _, body in server.capture.messages)
        expected = [f"Subject: early {i}".encode() for i in range(30)]
        expected += [f"Subject: late {i}".encode() for i in range(20)]
        self.assertEqual(subjects, sorted(expected))
        self.assertEqual(server.capture.max_open, 1)
        self.assertEqual(spool.full_reads, 1)


async def _inject(spool: DurableSpool, subject: str) -> Any:
    envelope = Envelope(
        mail_from="a@sender.example",
        rcpt_to=("x@partner.example",),
        helo="client.example",
        peer_ip="127.0.0.1",
        listener="InboundMail",
        icid=1,
        received_at=time.time(),
    )
    message = spool.new_message(envelope)
    message.write(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
    return await message.commit()
