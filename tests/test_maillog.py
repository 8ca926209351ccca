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

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogPublisher, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from esa_tls.config.model import AccessRule, MailFlowPolicy
from esa_tls.maillog import (
    MailLog,
    MailLogCollector,
    MailLogFile,
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


_LINE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d \d\d:\d\d:\d\d \d{4}"
    r" Info: (?P<text>.*)$"
)


def _texts(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[-1] == "", lines  # whole lines only
    texts = []
    for line in lines[:-1]:
        match = _LINE.match(line)
        assert match is not None, line
        texts.append(match.group("text"))
    return texts


class WriterTests(SynchronousTestCase):
    """
    L{MailLogFile}: the gateway's direct path from L{MailLog} to the file.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.path = mail_log_path(self.mktemp())
        self.file = MailLogFile(self.path, self.clock)
        self.file.open()
        self.addCleanup(self.file.close)
        self.log = MailLog(writer=self.file)

    def test_sameLinesAsEvents(self) -> None:
        """
        The lines written without events are, time stamps aside, exactly
        those the event path writes, escaping included.
        """
        collector = MailLogCollector()
        both = MailLog(collector, writer=self.file)
        both.new_icid(5, "Loopback", "127.0.0.1", "127.0.0.1", None, False)
        both.mail_from(7, 5, "x@y>\r\n{mid}")
        both.rcpt_to(7, 5, 0, "c@d")
        both.bounced(7, [2, 3], "550 {5.1.1} no")
        self.file.flush()
        self.assertEqual(_texts(self.path), collector.lines)
        self.assertEqual(len(collector.lines), 4)

    def test_oneWritePerTurn(self) -> None:
        """
        The lines of one reactor turn reach the file together, in the order
        they were logged, when the turn ends (before the reactor next
        polls, so before a reply written in the same turn leaves).
        """
        self.log.start_mid(7, 5)
        self.log.queued(7)
        self.assertEqual(_texts(self.path), [])
        self.clock.advance(0)
        self.assertEqual(_texts(self.path), ["Start MID 7 ICID 5", "MID 7 queued for delivery"])
        self.log.icid_close(5)
        self.clock.advance(0)
        self.assertEqual(_texts(self.path)[-1], "ICID 5 close")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closeWritesTheRest(self) -> None:
        """
        Stopping the gateway (closing the file) writes the lines of the last
        turn; lines logged after that are dropped, without error.
        """
        self.log.icid_close(5)
        self.file.close()
        self.assertEqual(_texts(self.path), ["ICID 5 close"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.log.icid_close(6)
        self.clock.advance(0)
        self.assertEqual(_texts(self.path), ["ICID 5 close"])

    def test_timeStamp(self) -> None:
        """
        Each line carries the local time it was logged, in C{asctime}
        form, even though the text is computed once per second.
        """
        self.file.line("first", when=1_800_000_000.2)
        self.file.line("second", when=1_800_000_000.9)
        self.file.line("third", when=1_800_000_001.0)
        self.file.flush()
        with open(self.path, encoding="utf-8") as f:
            stamps = [line.split(" Info: ")[0] for line in f.read().splitlines()]
        self.assertEqual(
            stamps,
            [
                time.asctime(time.localtime(t))
                for t in (1_800_000_000, 1_800_000_000, 1_800_000_001)
            ],
        )

    def test_sharedFile(self) -> None:
        """
        Several writers (the processes of a multi-worker gateway) append to
        one file; each batch lands whole, after what is already there.
        """
        other = MailLogFile(self.path, self.clock)
        other.open()
        self.addCleanup(other.close)
        second = MailLog(writer=other)
        self.log.start_mid(1, 1)
        second.start_mid(2, 2)
        self.log.queued(1)
        second.queued(2)
        self.clock.advance(0)
        self.assertEqual(
            _texts(self.path),
            [
                "Start MID 1 ICID 1",
                "MID 1 queued for delivery",
                "Start MID 2 ICID 2",
                "MID 2 queued for delivery",
            ],
        )

    def test_manyLinesInOneTurn(self) -> None:
        """
        A turn that logs very many lines does not hold them all: they are
        written in bounded batches, in order.
        """
        for mid in range(2000):
            self.log.queued(mid)
        self.assertGreater(len(_texts(self.path)), 0)
        self.clock.advance(0)
        self.assertEqual(
            _texts(self.path), [f"MID {mid} queued for delivery" for mid in range(2000)]
        )

    def test_nonASCII(self) -> None:
        """
        Non-ASCII text from a peer is written as UTF-8; what cannot be
        encoded is escaped, never an error.
        """
        self.log.mail_from(7, 5, "josé@exämple.test")
        self.file.line("lone \udc80 surrogate")
        self.file.flush()
        with open(self.path, "rb") as f:
            data = f.read()
        self.assertIn("From: <josé@exämple.test>".encode(), data)
        self.assertIn(b"lone \\udc80 surrogate", data)

    def test_noEventsWithoutObserver(self) -> None:
        """
        A L{MailLog} with only a writer publishes no events: nothing of the
        mail log reaches the global log (twistd.log).
        """
        collector = MailLogCollector()
        globalLogPublisher.addObserver(collector)
        self.addCleanup(globalLogPublisher.removeObserver, collector)
        self.log.queued(7)
        self.assertEqual(collector.events, [])
