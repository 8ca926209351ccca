"""
The mail log says what the ESA's C{mail_logs} say, word for word, and the
file observer writes exactly those lines, in the ESA line format, to
C{mail.log}.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, cast

from twisted.logger import ILogObserver, Logger, LogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from esa_tls.config.model import AccessRule, MailFlowPolicy
from esa_tls.maillog import (
    MailLog,
    MailLogCollector,
    mail_log_observer,
    mail_log_path,
)
from esa_tls.values import HATVerdict, TLSInfo

TLS13 = TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384")


class LineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.collector = MailLogCollector()
        self.log = MailLog(self.collector)

    def assertLines(self, *expected: str) -> None:
        self.assertEqual(self.collector.lines, list(expected))

    def test_inboundConversation(self) -> None:
        """
        The lines of one accepted inbound message, in the ESA's words.
        """
        log = self.log
        log.new_icid(5, "Loopback", "127.0.0.1", "127.0.0.1", None, False)
        log.connection_verdict(
            5,
            HATVerdict(
                "WHITELIST", MailFlowPolicy("TRUSTED", rule=AccessRule.ACCEPT), matched="10.1.1.1"
            ),
        )
        log.icid_tls_success(5, TLS13)
        log.start_mid(7, 5)
        log.mail_from(7, 5, "a@b")
        log.rcpt_to(7, 5, 0, "c@d")
        log.rcpt_to(7, 5, 1, "e@f")
        log.message_id(7, "<1234@b>")
        log.ready(7, 1234, "a@b")
        log.queued(7)
        log.icid_close(5)
        self.assertLines(
            "New SMTP ICID 5 interface Loopback (127.0.0.1) address 127.0.0.1"
            " reverse dns host unknown verified no",
            "ICID 5 ACCEPT SG WHITELIST match 10.1.1.1 SBRS None",
            "ICID 5 TLS success protocol TLSv1.3 cipher TLS_AES_256_GCM_SHA384",
            "Start MID 7 ICID 5",
            "MID 7 ICID 5 From: <a@b>",
            "MID 7 ICID 5 RID 0 To: <c@d>",
            "MID 7 ICID 5 RID 1 To: <e@f>",
            "MID 7 Message-ID '<1234@b>'",
            "MID 7 ready 1234 bytes from <a@b>",
            "MID 7 queued for delivery",
            "ICID 5 close",
        )

    def test_verdicts(self) -> None:
        """
        REJECT, TCPREFUSE, a verified reverse name, no matching group and a
        reputation score read as on the ESA.
        """
        log = self.log
        log.new_icid(6, "PublicNet", "192.168.2.1", "10.0.0.9", "mx.partner.example", True)
        log.connection_verdict(
            6,
            HATVerdict(
                "BLOCKED_LIST",
                MailFlowPolicy("BLOCKED", rule=AccessRule.REJECT),
                matched="dnslist[bl.example]",
                sbrs=-7.5,
            ),
        )
        log.connection_verdict(
            6,
            HATVerdict(
                "SUSPECTLIST", MailFlowPolicy("REFUSE", rule=AccessRule.TCPREFUSE), matched="ALL"
            ),
        )
        log.connection_verdict(6, HATVerdict(None, MailFlowPolicy("ACCEPTED")))
        log.icid_tls_failed(6, "no shared cipher")
        self.assertLines(
            "New SMTP ICID 6 interface PublicNet (192.168.2.1) address 10.0.0.9"
            " reverse dns host mx.partner.example verified yes",
            "ICID 6 REJECT SG BLOCKED_LIST match dnslist[bl.example] SBRS -7.5",
            "ICID 6 TCPREFUSE SG SUSPECTLIST match ALL SBRS None",
            "ICID 6 ACCEPT SG None match SBRS None",
            "ICID 6 TLS failed: no shared cipher",
        )

    def test_outbound(self) -> None:
        """
        The delivery lines of issue 4, in the ESA's words.
        """
        log = self.log
        log.new_dcid(9, "127.0.0.1", "127.0.0.2", 25)
        log.dcid_starttls_not_supported(9)
        log.dcid_tls_success(9, TLS13, True)
        log.dcid_tls_success(9, TLS13, False)
        log.dcid_tls_failed(9, "verify error: certificate has expired")
        log.delivery_start(9, 7, [0, 1])
        log.message_done(9, 7, [0])
        log.deferred(7, [1], "451 4.3.0 try later")
        log.bounced(7, [2, 3], "550 5.1.1 no such user")
        log.dcid_close(9)
        self.assertLines(
            "New SMTP DCID 9 interface 127.0.0.1 address 127.0.0.2 port 25",
            "DCID 9 STARTTLS command not supported.",
            "DCID 9 TLS success protocol TLSv1.3 cipher TLS_AES_256_GCM_SHA384 verified yes",
            "DCID 9 TLS success protocol TLSv1.3 cipher TLS_AES_256_GCM_SHA384 verified no",
            "DCID 9 TLS failed: verify error: certificate has expired",
            "Delivery start DCID 9 MID 7 to RID [0, 1]",
            "Message done DCID 9 MID 7 to RID [0]",
            "MID 7 RID [1] deferred: 451 4.3.0 try later",
            "MID 7 RID [2, 3] bounced: 550 5.1.1 no such user",
            "DCID 9 close",
        )

    def test_structuredFields(self) -> None:
        """
        Events carry typed fields for programs besides the text.
        """
        self.log.delivery_start(9, 7, [0, 1])
        self.log.new_icid(5, "Loopback", "127.0.0.1", "127.0.0.1", None, False)
        first, second = self.collector.events
        self.assertEqual(first["log_namespace"], "esa_tls.maillog")
        self.assertEqual(
            (first["maillog_event"], first["dcid"], first["mid"], first["rids"]),
            ("delivery_start", 9, 7, [0, 1]),
        )
        self.assertIs(second["verified"], False)
        self.assertIsNone(second["reverse_dns"])

    def test_peerTextCannotForgeLines(self) -> None:
        """
        CR, LF and other control characters from a peer are escaped, so one
        event is always one line; braces are kept as they are.
        """
        self.log.mail_from(7, 5, "x@y>\r\nFri Nov 27 10:00:00 2026 Info: MID 1 queued")
        self.log.message_id(7, "<{mid}@b>")
        self.log.deferred(7, [0], "421 bye\x00\x1b[2J")
        self.assertLines(
            "MID 7 ICID 5 From: <x@y>\\x0d\\x0aFri Nov 27 10:00:00 2026 Info: MID 1 queued>",
            "MID 7 Message-ID '<{mid}@b>'",
            "MID 7 RID [0] deferred: 421 bye\\x00\\x1b[2J",
        )

    def test_collectorIgnoresOtherEvents(self) -> None:
        """
        Only mail log events are collected.
        """
        Logger(namespace="esa_tls.other", observer=self.collector).info("hello")
        Logger(namespace="esa_tls.maillog", observer=self.collector).info("not a line")
        self.assertLines()


class FileTests(SynchronousTestCase):
    def test_fileLines(self) -> None:
        """
        The observer creates C{data_dir/logs/mail.log} and appends each mail
        log event as C{<ctime date> Info: <text>}, and nothing else; each
        line is on disk as soon as it is logged, so C{tail -f} sees it.
        """
        data_dir = self.mktemp()
        path = mail_log_path(data_dir)
        self.assertEqual(path, os.path.join(data_dir, "logs", "mail.log"))
        observer = mail_log_observer(path)
        self.addCleanup(observer.close)
        self.assertTrue(verifyObject(ILogObserver, observer))
        publisher = LogPublisher()
        publisher.addObserver(observer)
        collector = MailLogCollector()
        publisher.addObserver(collector)
        log = MailLog(publisher)
        log.start_mid(7, 5)
        Logger(observer=publisher).info("unrelated {thing}", thing="event")
        with open(path, encoding="utf-8") as f:
            self.assertEqual(len(f.read().splitlines()), 1)  # already flushed
        log.queued(7)
        observer.close()
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 2)
        pattern = re.compile(
            r"^(?P<date>(Mon|Tue|Wed|Thu|Fri|Sat|Sun) "
            r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d \d\d:\d\d:\d\d \d{4})"
            r" Info: (?P<text>.*)$"
        )
        matches = [pattern.match(line) for line in lines]
        self.assertEqual(
            [m.group("text") if m else line for m, line in zip(matches, lines, strict=True)],
            ["Start MID 7 ICID 5", "MID 7 queued for delivery"],
        )
        self.assertEqual(
            [cast(Any, m).group("date") for m in matches],
            [time.asctime(time.localtime(e["log_time"])) for e in collector.events],
        )

    def test_appends(self) -> None:
        """
        A restarted gateway appends to the existing log.
        """
        path = os.path.join(self.mktemp(), "mail.log")
        for mid in (1, 2):
            observer = mail_log_observer(path)
            MailLog(observer).queued(mid)
            observer.close()
        with open(path, encoding="utf-8") as f:
            texts = [line.split(" Info: ", 1)[1] for line in f.read().splitlines()]
        self.assertEqual(texts, ["MID 1 queued for delivery", "MID 2 queued for delivery"])
