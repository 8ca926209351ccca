"""
Tests for C{esa-tls showrecipients} and C{esa-tls delivernow}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from io import StringIO

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from esa_tls.cli import delivernow, showrecipients
from esa_tls.cli.main import CommandContext
from esa_tls.config.model import GatewayConfig
from esa_tls.outbound.client import Timeouts
from esa_tls.outbound.queue import QueueManager, delivernow_directory
from esa_tls.spool import DurableSpool
from esa_tls.values import Envelope
from tests.peers.hostile import Script, start_hostile_server
from tests.test_spool_store import FIFOWatch

#: A listener, which every configuration file needs.
LISTENER = (
    '[interfaces.Loopback]\naddress = "127.0.0.1/8"\n'
    '[listeners.InboundMail]\ntype = "public"\ninterface = "Loopback"\nport = 2525\n'
    'rat = ["example.com"]\n'
)


async def queue_message(spool: DurableSpool, rcpt_to: tuple[str, ...], data: bytes) -> int:
    """
    Commit a message from alice@gw.test to C{rcpt_to} into C{spool}, as
    a listener would; its MID.
    """
    message = spool.new_message(
        Envelope(
            mail_from="alice@gw.test",
            rcpt_to=rcpt_to,
            helo="client",
            peer_ip="127.0.0.1",
            listener="InboundMail",
            icid=1,
            received_at=time.time(),
        )
    )
    message.write(data)
    return await message.commit()


class QueueCommandTests(TestCase):
    """
    The commands read and poke the queue of a gateway's data directory.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.config_path = os.path.join(self.directory, "gateway.toml")
        self.server = start_hostile_server(
            self, Script(rcpt_replies={"busy@partner.example": b"450 4.2.1 Mailbox busy"})
        )
        with open(self.config_path, "w") as f:
            f.write(
                LISTENER + "[system]\n"
                'hostname = "gw.test"\n'
                f'data_dir = "{self.directory}/var"\n'
                '[destinations.default]\ntls = "no"\n'
                "[smtp_routes]\n"
                f'"partner.example" = ["127.0.0.1:{self.server.port}"]\n'
            )
        self.out = StringIO()
        self.context = CommandContext(self.config_path, self.out, StringIO())

    def queue(self, config: GatewayConfig) -> tuple[DurableSpool, QueueManager]:
        """
        The spool of C{config}'s data directory and a queue manager on it,
        as the running gateway has them.
        """
        spool = DurableSpool(os.path.join(config.system.data_dir, "spool"), reactor)
        self.addCleanup(spool.close)
        manager = QueueManager(
            reactor,
            spool,
            config,
            None,
            dcid_allocator=itertools.count(1).__next__,
            timeouts=Timeouts.uniform(5),
        )
        return spool, manager

    async def test_showrecipients(self) -> None:
        """
        Pending recipients are listed under their message with attempts,
        state, next try and last error; delivered ones are not.
        """
        config = self.context.load_config()
        spool, manager = self.queue(config)
        mid = await queue_message(
            spool,
            ("ok@partner.example", "busy@partner.example", "new@other.example"),
            b"Subject: Quarterly figures\r\n\r\nbody\r\n",
        )
        await manager.run_once()
        status = showrecipients.run(
            argparse.Namespace(domain=None, sender=None, json=False), self.context
        )
        self.assertEqual(status, 0)
        text = self.out.getvalue()
        self.assertRegex(text, rf"(?m)^{mid}\s+\d+\s+alice@gw.test\s+Quarterly figures$")
        self.assertRegex(text, r"(?m)^\[1\]\s+\[1\]\s+busy@partner.example\s+deferred, next try ")
        self.assertIn("last error: 450 4.2.1 Mailbox busy", text)
        self.assertNotIn("ok@partner.example", text)
        self.assertIn("1 message(s), 2 recipient(s) pending.", text)
        listed = showrecipients.read_queue(os.path.join(config.system.data_dir, "spool"))
        self.assertEqual(
            [r["address"] for r in listed[0]["recipients"]],
            [
                "busy@partner.example",
                "new@other.example",
            ],
        )

    async def test_showrecipients_escapes_control_characters(self) -> None:
        """
        What strangers wrote (a sender's Subject, raw or as an encoded
        word; a remote server's reply, kept as the last error) reaches the
        administrator's terminal with its control characters escaped: an
        ESC would otherwise drive the terminal (retitle it, clear it, hide
        lines, answer back).
        """
        self.server.script.rcpt_replies = {
            "busy@partner.example": b"450 4.2.1 Mailbox busy\x1b]0;owned\x07\x1b[2J"
        }
        config = self.context.load_config()
        spool, manager = self.queue(config)
        await queue_message(
            spool,
            ("busy@partner.example",),
            b"Subject: Hi \x1b[8m=?utf-8?q?there=1B[2J?=\r\n\r\nbody\r\n",
        )
        await manager.run_once()
        showrecipients.run(argparse.Namespace(domain=None, sender=None, json=False), self.context)
        text = self.out.getvalue()
        self.assertEqual([c for c in text if not c.isprintable() and c != "\n"], [])
        self.assertIn("Hi \\x1b[8mthere\\x1b[2J", text)
        self.assertIn("last error: 450 4.2.1 Mailbox busy\\x1b]0;owned\\x07\\x1b[2J", text)

    async def test_showrecipients_unreadable(self) -> None:
        """
        A queued message whose file or recipient states cannot be read is
        not listed, and not hidden either: a warning on stderr names it,
        while the listing (and its JSON) stays as scripts read it.
        """
        config = self.context.load_config()
        spool, _ = self.queue(config)
        mids = [
            await queue_message(spool, ("new@partner.example",), b"Subject: x\r\n\r\nbody\r\n")
            for _ in range(3)
        ]
        directory = os.path.join(config.system.data_dir, "spool")
        with open(os.path.join(directory, "queue", f"{mids[0]}.msg"), "r+b") as f:
            f.write(b"garbage")
        with open(os.path.join(directory, "state", f"{mids[1]}.json"), "wb") as f:
            f.write(b"{not json")
        err = StringIO()
        context = CommandContext(self.config_path, self.out, err)
        showrecipients.run(argparse.Namespace(domain=None, sender=None, json=True), context)
        self.assertEqual([m["mid"] for m in json.loads(self.out.getvalue())], [mids[2]])
        self.assertEqual(
            err.getvalue(),
            f"warning: 2 queued message(s) could not be read (MID {mids[0]}, {mids[1]}) and "
            "are not listed; the gateway moves such files to spool/corrupt/ and logs why\n",
        )

    async def test_showrecipients_fifo(self) -> None:
        """
        A FIFO where a message or state file should be (left by an
        operator or a restore; the gateway quarantines it) is an unreadable
        message, never a command that waits for ever for a writer.
        """
        config = self.context.load_config()
        spool, _ = self.queue(config)
        mids = [
            await queue_message(spool, ("new@partner.example",), b"Subject: x\r\n\r\nbody\r\n")
            for _ in range(2)
        ]
        directory = os.path.join(config.system.data_dir, "spool")
        watch = FIFOWatch(patience=1.0)
        self.addCleanup(watch.stop)
        # One at a time: the watch frees one reader per FIFO, once.
        for path, listed in (
            (os.path.join(directory, "queue", f"{mids[1] + 1}.msg"), mids),
            (os.path.join(directory, "state", f"{mids[0]}.json"), mids[1:]),
        ):
            watch.make(path)
            out, err = StringIO(), StringIO()
            context = CommandContext(self.config_path, out, err)
            showrecipients.run(argparse.Namespace(domain=None, sender=None, json=True), context)
            self.assertEqual(watch.blocked, [])
            self.assertEqual([m["mid"] for m in json.loads(out.getvalue())], listed)
            self.assertIn("could not be read", err.getvalue())

    def test_showrecipients_empty(self) -> None:
        """
        An empty queue says so.
        """
        showrecipients.run(argparse.Namespace(domain=None, sender=None, json=True), self.context)
        self.assertEqual(self.out.getvalue(), "[]\n")

    def test_delivernow(self) -> None:
        """
        C{delivernow DOMAIN} leaves a request the running gateway picks up.
        """
        status = delivernow.run(argparse.Namespace(domain="partner.example"), self.context)
        self.assertEqual(status, 0)
        config = self.context.load_config()
        [name] = os.listdir(delivernow_directory(config))
        with open(os.path.join(delivernow_directory(config), name)) as f:
            self.assertEqual(f.read(), "partner.example\n")
        self.assertIn("Delivery now requested for partner.example.", self.out.getvalue())

    def test_delivernow_not_a_domain(self) -> None:
        """
        A DOMAIN that is not one (C{..}, spaces, a line break) is refused
        with status 2 and writes no request, which the gateway would
        otherwise read as all domains; a request file saying nothing is
        ignored by the gateway.
        """
        err = StringIO()
        context = CommandContext(self.config_path, self.out, err)
        for domain in ("..", "foo bar", "a\nb", " "):
            status = delivernow.run(argparse.Namespace(domain=domain), context)
            self.assertEqual(status, 2, domain)
        self.assertIn("esa-tls delivernow: '..' is not a domain name", err.getvalue())
        config = context.load_config()
        self.assertFalse(os.path.exists(delivernow_directory(config)))
        self.assertEqual(self.out.getvalue(), "")
        os.makedirs(delivernow_directory(config))
        with open(os.path.join(delivernow_directory(config), "x.request"), "w") as f:
            f.write("\n")
        _, manager = self.queue(config)
        asked: list[object] = []
        self.patch(manager, "deliver_now", asked.append)
        manager._check_requests()
        self.assertEqual(asked, [])
        self.assertEqual(os.listdir(delivernow_directory(config)), [])
