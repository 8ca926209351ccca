"""
The TLS-failure alert end to end, as the seed describes it: delivery to a
domain that requires TLS fails (no STARTTLS; a certificate for another
name under C{required-verify}), the alert is queued as mail through our
own spool and delivered by our own delivery client to a test SMTP sink,
for the subscribed recipient only, naming the domain and the cause; it is
not repeated within the merge interval; and once the peer is fixed, a
recovery notice follows the same way.  The TLS report counts the same
connections.
"""

from __future__ import annotations

import email
import email.policy
import itertools
import json
import os
from collections.abc import Sequence
from io import BytesIO
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from esa_tls.alerts import AlertDispatcher
from esa_tls.alerts.loghook import LogAlertHook, alert_log_path
from esa_tls.alerts.mailhook import MailAlertHook
from esa_tls.config.model import (
    AlertRecipient,
    AlertSettings,
    DestinationControl,
    DestinationTLS,
    GatewayConfig,
    SystemSettings,
)
from esa_tls.interfaces import IAlertHook
from esa_tls.outbound.attempt import deliver_message
from esa_tls.outbound.result import DeliveryResult, RecipientStatus
from esa_tls.report import Direction, TLSCounters
from esa_tls.report.delivery import record_delivery
from esa_tls.spool import DurableSpool
from esa_tls.testing import CertificateAuthority
from tests.peers.hostile import HostileServer, Script, start_hostile_server

CA = CertificateAuthority.generate()
GOOD = CA.issue(["partner.example"])
WRONG_NAME = CA.issue(["elsewhere.example"])

BODY = b"Subject: invoice\r\nFrom: sender@gw.test\r\n\r\nConfidential.\r\n"

SETTINGS = AlertSettings(
    tls_failure_alert=True,
    recipients=(
        AlertRecipient("admin@alerts.example", ("warning", "info"), ("system",)),
        AlertRecipient("noc@alerts.example", ("critical",), ("system", "hardware")),
        AlertRecipient("hw@alerts.example", ("warning",), ("hardware",)),
    ),
)


class AlertMailTests(TestCase):
    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.ca_file = os.path.join(self.data_dir, "ca.pem")
        with open(self.ca_file, "wb") as f:
            f.write(CA.cert_pem)
        self.spool = DurableSpool(os.path.join(self.data_dir, "spool"), IReactorTime(reactor))
        self.addCleanup(self.spool.close)
        # The merge interval runs on its own clock: the test decides when
        # fifteen minutes have passed.
        self.clock = Clock()
        self.dispatcher = AlertDispatcher(
            SETTINGS,
            [
                MailAlertHook(self.spool, "gw.test"),
                LogAlertHook(alert_log_path(self.data_dir)),
            ],
            self.clock,
        )
        self.counters = TLSCounters(os.path.join(self.data_dir, "reports"), reactor)
        self.dcids = itertools.count(1)
        self.sink = start_hostile_server(self, Script())

    async def deliver(
        self,
        domain: str,
        level: DestinationTLS,
        server: HostileServer | Sequence[HostileServer],
        recipients: Sequence[tuple[int, str]],
        body: bytes = BODY,
        mail_from: str = "sender@gw.test",
        mid: int = 7,
    ) -> DeliveryResult:
        """
        One delivery attempt, wired as the gateway wires it: failures to
        the dispatcher as they happen, the result to the report and the
        recovery check.  Several servers are the domain's hosts, tried in
        order.
        """
        servers = [server] if isinstance(server, HostileServer) else server
        config = GatewayConfig(
            system=SystemSettings(hostname="gw.test"),
            destinations={
                domain: DestinationControl(domain=domain, tls=level, ca_file=self.ca_file)
            },
            smtp_routes={domain: tuple(f"127.0.0.1:{s.port}" for s in servers)},
        )
        result = await deliver_message(
            reactor,
            None,
            config,
            domain,
            mail_from,
            recipients,
            BytesIO(body),
            dcid_allocator=self.dcids.__next__,
            mid=mid,
            on_tls_failure=self.dispatcher.on_tls_failure,
            trust_system=False,
        )
        record_delivery(result, self.counters, self.dispatcher)
        await self.dispatcher.idle()
        return result

    async def send_queued_alerts(self) -> list[email.message.EmailMessage]:
        """
        Deliver the alert mail in the spool to the sink (the alert
        recipients' server), as the queue runner would, and return what the
        sink received.
        """
        before = len(self.sink.capture.messages)
        for queued in self.spool.queued():
            with self.spool.open_body(queued.mid) as f:
                body = f.read()
            recipients = [(r.rid, r.address) for r in queued.pending]
            result = await self.deliver(
                "alerts.example",
                DestinationTLS.NO,
                self.sink,
                recipients,
                body=body,
                mail_from=queued.envelope.mail_from,
                mid=queued.mid,
            )
            self.assertEqual(
                [r.status for r in result.recipients], [RecipientStatus.DELIVERED] * len(recipients)
            )
            await self.spool.remove(queued.mid)
        received = []
        for mail_from, rcpts, data in self.sink.capture.messages[before:]:
            self.assertEqual(mail_from, b"alert@gw.test")
            self.assertEqual(rcpts, [b"admin@alerts.example"])
            message = email.message_from_bytes(data, policy=email.policy.default)
            assert isinstance(message, email.message.EmailMessage)
            received.append(message)
        return received

    async def scenario(
        self, level: DestinationTLS, broken: Script, cause: str, fixed: Script
    ) -> None:
        partner = start_hostile_server(self, broken)
        rcpt = [(1, "buyer@partner.example")]

        result = await self.deliver("partner.example", level, partner, rcpt)
        self.assertEqual(result.deferred[0].rid, 1)
        self.assertEqual(partner.capture.messages, [])
        (alert,) = await self.send_queued_alerts()
        self.assertEqual(
            alert["Subject"],
            "Warning <System> esa_tls: TLS failure for destination domain partner.example",
        )
        self.assertEqual(alert["To"], "admin@alerts.example")
        self.assertEqual(alert["Auto-Submitted"], "auto-generated")
        text = alert.get_content()
        self.assertIn("The TLS connection to partner.example failed.", text)
        self.assertIn(f"Failure: {cause} (RFC 8460 result type)", text)
        self.assertIn("Messages: MID 7", text)

        # Within the merge interval: no second alert.
        await self.deliver("partner.example", level, partner, rcpt, mid=8)
        self.assertEqual(self.spool.queued(), [])
        self.assertEqual(await self.send_queued_alerts(), [])

        # Once the interval is over, the folded failure is told, with its
        # count.
        self.clock.advance(15 * 60)
        await self.dispatcher.idle()
        (merged,) = await self.send_queued_alerts()
        self.assertIn("Messages: MID 8", merged.get_content())
        self.assertIn("Failures: 1,", merged.get_content())

        # The peer is fixed: the message goes, and a recovery notice
        # follows.
        partner_fixed = start_hostile_server(self, fixed)
        result = await self.deliver("partner.example", level, partner_fixed, rcpt, mid=9)
        self.assertEqual(len(result.delivered), 1)
        self.assertEqual(len(partner_fixed.capture.messages), 1)
        (notice,) = await self.send_queued_alerts()
        self.assertEqual(
            notice["Subject"],
            "Info <System> esa_tls: TLS recovered for destination domain partner.example",
        )
        self.assertIn("TLS failures in all: 2", notice.get_content())

        # The report counts the same story.
        report = await self.counters.report(3600)
        (row,) = [r for r in report.outgoing if r.domain == "partner.example"]
        self.assertEqual((row.counts.required_failure, row.counts.required_success), (2, 1))
        self.assertEqual(row.counts.encrypted_messages, 1)
        self.assertEqual(report.total(Direction.OUTGOING).unencrypted, 3)

        # And the log hook kept every alert.
        with open(alert_log_path(self.data_dir)) as f:
            kinds = [line.split('"kind":"', 1)[1].split('"', 1)[0] for line in f]
        self.assertEqual(kinds, ["tls-failure", "tls-failure", "tls-recovered"])

    async def test_starttlsNotOffered(self) -> None:
        """
        C{required} to a server that does not offer STARTTLS: the alert
        names the domain and C{starttls-not-supported}; a server with
        STARTTLS fixes it.
        """
        await self.scenario(
            DestinationTLS.REQUIRED,
            Script(),
            "starttls-not-supported",
            Script(certificate=GOOD),
        )

    async def test_badCertificate(self) -> None:
        """
        C{required-verify} to a server whose certificate names another
        host: the alert says C{certificate-host-mismatch}; the right
        certificate fixes it.
        """
        await self.scenario(
            DestinationTLS.REQUIRED_VERIFY,
            Script(certificate=WRONG_NAME),
            "certificate-host-mismatch",
            Script(certificate=GOOD),
        )

    async def test_oneHostStillFailing(self) -> None:
        """
        C{required} to a domain whose first host does not offer STARTTLS
        and whose second one does: each message gets through the second
        host, but the first host's failure goes on.  That is one incident:
        one alert, the later failures merged into the next one, and no
        recovery notice while a host still fails (before, each message
        raised an alert and, at once, a recovery notice that ended the
        incident, so the merge never held and every message alerted twice).
        """
        plain = start_hostile_server(self, Script())
        good = start_hostile_server(self, Script(certificate=GOOD))
        rcpt = [(1, "buyer@partner.example")]
        for mid in (7, 8, 9):
            result = await self.deliver(
                "partner.example", DestinationTLS.REQUIRED, [plain, good], rcpt, mid=mid
            )
            self.assertEqual(len(result.delivered), 1)
        self.assertEqual(len(good.capture.messages), 3)
        self.assertEqual(plain.capture.messages, [])
        (alert,) = await self.send_queued_alerts()
        self.assertIn("TLS failure for destination domain partner.example", alert["Subject"])
        self.clock.advance(15 * 60)
        await self.dispatcher.idle()
        (merged,) = await self.send_queued_alerts()
        self.assertIn("Failures: 2,", merged.get_content())
        self.assertIn("Messages: MID 8, 9", merged.get_content())

        # The first host is fixed: the next message meets no failure, and
        # the notice ends the incident.
        plain_fixed = start_hostile_server(self, Script(certificate=GOOD))
        await self.deliver(
            "partner.example", DestinationTLS.REQUIRED, [plain_fixed, good], rcpt, mid=10
        )
        (notice,) = await self.send_queued_alerts()
        self.assertIn("TLS recovered for destination domain partner.example", notice["Subject"])
        self.assertIn("TLS failures in all: 3", notice.get_content())

    async def test_serverTextCannotForgeLines(self) -> None:
        """
        The server's refusal of STARTTLS is in the alert, but its bare
        CRs, escape sequences and Unicode line separators cannot make lines
        of their own (a forged C{Hosts:} line, say) in the alert mail or
        in the log: they are shown escaped, on the C{Detail:} line.
        """
        partner = start_hostile_server(
            self,
            Script(
                ehlo_keywords=(b"STARTTLS",),
                starttls_reply=(
                    b"454 4.7.0 no\rHosts: forged.example\x1b[2J\xe2\x80\xa8Failure: none"
                    b"\xc2\x85Recovered"
                ),
            ),
        )
        await self.deliver(
            "partner.example", DestinationTLS.REQUIRED, partner, [(1, "buyer@partner.example")]
        )
        (alert,) = await self.send_queued_alerts()
        lines = alert.get_content().splitlines()
        forged = [line for line in lines if "forged" in line]
        self.assertEqual(len(forged), 2)  # "Detail:", and "detail:" under "Details:"
        for line in forged:
            self.assertIn("etail: STARTTLS refused: 454 4.7.0 no", line)
        self.assertNotIn("\x1b", alert.get_content())
        self.assertFalse([line for line in lines if line.startswith(("Failure: none", "Recov"))])
        with open(alert_log_path(self.data_dir), encoding="utf-8") as f:
            (record,) = f.read().splitlines()
        self.assertNotIn("\x1b", json.loads(record)["body"])

    async def retry_alert_mail(self, level: DestinationTLS) -> None:
        """
        The queue runner's retry of every queued alert mail, to the alert
        recipients' domain under C{level}: what stays queued stays.
        """
        for queued in self.spool.queued():
            with self.spool.open_body(queued.mid) as f:
                body = f.read()
            result = await self.deliver(
                "alerts.example",
                level,
                self.sink,
                [(r.rid, r.address) for r in queued.pending],
                body=body,
                mail_from=queued.envelope.mail_from,
                mid=queued.mid,
            )
            if result.delivered:
                await self.spool.remove(queued.mid)

    async def test_alertMailDoesNotFeedItself(self) -> None:
        """
        The alert recipients' own domain requires TLS and its server offers
        none: the alert mail stays queued (never sent in the clear) and its
        retries fail TLS for that domain.  Those failures, of alert mail
        only, are alerted (the log has them) but raise no alert mail of
        their own: before, each merge interval queued one more alert mail
        about the recipients' domain to the recipients' domain, whose
        retries raised the next one, for as long as the outage lasted.
        """
        partner = start_hostile_server(self, Script())
        await self.deliver(
            "partner.example", DestinationTLS.REQUIRED, partner, [(1, "buyer@partner.example")]
        )
        (first,) = self.spool.queued()
        for _ in range(4):
            await self.retry_alert_mail(DestinationTLS.REQUIRED)
            self.clock.advance(15 * 60)
            await self.dispatcher.idle()
        self.assertEqual([q.mid for q in self.spool.queued()], [first.mid])
        self.assertEqual(self.sink.capture.messages, [])
        with open(alert_log_path(self.data_dir)) as f:
            domains = [json.loads(line)["fields"]["domain"] for line in f]
        self.assertEqual(domains[0], "partner.example")
        self.assertIn("alerts.example", domains)

    async def test_alertMailToOneBrokenHost(self) -> None:
        """
        The recipients' domain has a host without STARTTLS before a good
        one: each alert mail gets through the second host, but its
        attempt fails TLS on the first.  No alert mail follows from that
        alone (before, each one raised the next, one per merge interval,
        for ever, with no other mail at all).
        """
        plain = start_hostile_server(self, Script())
        good = start_hostile_server(self, Script(certificate=GOOD))
        partner = start_hostile_server(self, Script())
        await self.deliver(
            "partner.example", DestinationTLS.REQUIRED, partner, [(1, "buyer@partner.example")]
        )
        self.sink = good
        for _ in range(4):
            for queued in self.spool.queued():
                with self.spool.open_body(queued.mid) as f:
                    body = f.read()
                result = await self.deliver(
                    "alerts.example",
                    DestinationTLS.REQUIRED,
                    [plain, good],
                    [(r.rid, r.address) for r in queued.pending],
                    body=body,
                    mail_from=queued.envelope.mail_from,
                    mid=queued.mid,
                )
                self.assertEqual(len(result.delivered), 1)
                await self.spool.remove(queued.mid)
            self.clock.advance(15 * 60)
            await self.dispatcher.idle()
        self.assertEqual(len(good.capture.messages), 1)
        self.assertEqual(self.spool.queued(), [])

    async def test_switchOff(self) -> None:
        """
        With C{tls_failure_alert = false}, the failure is deferred as
        before but no alert mail is queued.
        """
        self.dispatcher.settings = AlertSettings(False, SETTINGS.recipients)
        partner = start_hostile_server(self, Script())
        await self.deliver(
            "partner.example", DestinationTLS.REQUIRED, partner, [(1, "b@partner.example")]
        )
        self.assertEqual(self.spool.queued(), [])

    async def test_failingHookDoesNotDelayDelivery(self) -> None:
        """
        A hook that never answers does not hold up the delivery attempt
        that raised the alert: the result is there while the hook still
        hangs.
        """

        @implementer(IAlertHook)
        class Hang:
            def alert(self, alert: object) -> Deferred[None]:
                return Deferred()

        log = LogAlertHook(alert_log_path(self.data_dir))
        self.dispatcher.hooks = [Hang(), log]
        partner = start_hostile_server(self, Script())
        config = GatewayConfig(
            system=SystemSettings(hostname="gw.test"),
            destinations={
                "partner.example": DestinationControl(
                    domain="partner.example", tls=DestinationTLS.REQUIRED
                )
            },
            smtp_routes={"partner.example": (f"127.0.0.1:{partner.port}",)},
        )
        result: Any = await deliver_message(
            reactor,
            None,
            config,
            "partner.example",
            "s@gw.test",
            [(1, "b@partner.example")],
            BytesIO(BODY),
            dcid_allocator=self.dcids.__next__,
            on_tls_failure=self.dispatcher.on_tls_failure,
            trust_system=False,
        )
        self.assertTrue(result.tls_required_failure)
        idle = self.dispatcher.idle()
        self.assertNoResult(idle)
        self.clock.advance(self.dispatcher.hook_timeout)
        await idle
        self.assertEqual(len(self.flushLoggedErrors(TimeoutError)), 1)
        self.assertEqual(self.dispatcher.hook_failures["Hang"], 1)
        # The hook after the hanging one got the alert at once.
        with open(log.path) as f:
            self.assertIn('"kind":"tls-failure"', f.read())
