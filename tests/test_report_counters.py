"""
The TLS Connections counters: a scripted mix of sessions gives the
expected report table; counts survive a restart and add up across worker
processes; windows select the right hours; old hours expire; flushing
happens off the reactor thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from esa_tls.config.model import DestinationTLS, TLSMode
from esa_tls.report import Direction, Level, TLSCounters, TLSCounts
from esa_tls.report.counters import MAX_TOTAL_DOMAINS, OTHER_DOMAINS
from esa_tls.report.counts import level_of
from esa_tls.report.storage import list_buckets, read_buckets
from esa_tls.report.table import TLSReport, render_json, render_text

HOUR = 3600
T0 = 1_800_000_000  # 2027-01-15 08:00:00 UTC, on an hour boundary


def inline(f: Callable[[], Any]) -> Deferred[Any]:
    """
    An executor that runs the blocking work at once (the tests' clock is
    not a reactor with a thread pool).
    """
    return maybeDeferred(f)


def scripted_mix(counters: TLSCounters) -> None:
    """
    A morning at a gateway: what the sessions and deliveries report.
    """
    # Incoming.
    counters.incoming("sender.example", "192.0.2.1", TLSMode.REQUIRED, True, messages=3)
    counters.incoming("sender.example", "192.0.2.1", TLSMode.REQUIRED, True, messages=2)
    counters.incoming("sender.example", "192.0.2.2", TLSMode.REQUIRED, None)
    counters.incoming("Sender.Example.", "192.0.2.2", TLSMode.PREFERRED, False, messages=1)
    counters.incoming("other.example", "198.51.100.7", TLSMode.PREFERRED, True, messages=4)
    counters.incoming("other.example", "198.51.100.7", TLSMode.PREFERRED, None, messages=2)
    counters.incoming(None, "203.0.113.9", TLSMode.OFF, None, messages=1)
    # Outgoing.
    counters.outgoing("partner.example", DestinationTLS.REQUIRED_VERIFY, False)
    counters.outgoing("partner.example", DestinationTLS.REQUIRED_VERIFY, False)
    counters.outgoing("partner.example", DestinationTLS.REQUIRED_VERIFY, True, messages=5)
    counters.outgoing("big.example", DestinationTLS.PREFERRED, True, messages=10)
    counters.outgoing("big.example", DestinationTLS.PREFERRED, None, messages=1)
    counters.outgoing("big.example", DestinationTLS.NO, None, messages=2)


EXPECTED = """\
TLS Connections, 2027-01-15 08:00 to 2027-01-15 08:30 UTC

Incoming (by sender domain)
DOMAIN            REQ-OK REQ-FAIL  PREF-OK PREF-FAIL ATTEMPTED UNENCRYPTED     TLS% ENC-MSGS
sender.example         2        1        0         1         4           0    100.0        5
other.example          0        0        1         0         1           1     50.0        4
(unknown)              0        0        0         0         0           1      0.0        0
TOTAL                  2        1        1         1         5           2     71.4        9

Outgoing (by destination domain)
DOMAIN            REQ-OK REQ-FAIL  PREF-OK PREF-FAIL ATTEMPTED UNENCRYPTED     TLS% ENC-MSGS
big.example            0        0        1         0         1           2     33.3       10
partner.example        1        2        0         0         3           0    100.0        5
TOTAL                  1        2        1         0         4           2     66.7       15
"""


class CountsTests(TestCase):
    def test_countingRules(self) -> None:
        """
        Each connection counts once, by level and TLS outcome; a preferred
        connection where TLS was not attempted is unencrypted; under
        required, no TLS at all is a failure; messages are encrypted only
        when TLS was up.
        """
        R, P, N = Level.REQUIRED, Level.PREFERRED, Level.NONE
        of = TLSCounts.of_connection
        self.assertEqual(of(R, True, 2), TLSCounts(required_success=1, encrypted_messages=2))
        self.assertEqual(of(R, False), TLSCounts(required_failure=1))
        self.assertEqual(of(R, None), TLSCounts(required_failure=1))
        self.assertEqual(of(P, True, 1), TLSCounts(preferred_success=1, encrypted_messages=1))
        self.assertEqual(of(P, False, 1), TLSCounts(preferred_failure=1, unencrypted_messages=1))
        self.assertEqual(of(P, None, 3), TLSCounts(unencrypted=1, unencrypted_messages=3))
        self.assertEqual(of(N, None, 1), TLSCounts(unencrypted=1, unencrypted_messages=1))

    def test_levels(self) -> None:
        """
        Inbound modes and outbound settings map to the report's levels;
        the -verify settings count with their base level; C{default} is
        refused (the caller must give the effective setting).
        """
        self.assertEqual(level_of(TLSMode.OFF), Level.NONE)
        self.assertEqual(level_of(TLSMode.REQUIRED), Level.REQUIRED)
        self.assertEqual(level_of(DestinationTLS.REQUIRED_VERIFY_HOSTED), Level.REQUIRED)
        self.assertEqual(level_of(DestinationTLS.PREFERRED_VERIFY), Level.PREFERRED)
        self.assertEqual(level_of(DestinationTLS.NO), Level.NONE)
        self.assertRaises(ValueError, level_of, DestinationTLS.DEFAULT)
        self.assertRaises(ValueError, level_of, DestinationTLS.DEFAULT)
        self.assertEqual(level_of("required"), Level.REQUIRED)
        self.assertEqual(level_of("off"), Level.NONE)
        self.assertEqual(level_of(Level.PREFERRED), Level.PREFERRED)

    def test_derived(self) -> None:
        """
        Attempted, connections and the TLS percentage are derived as in the
        ESA report.
        """
        counts = TLSCounts(1, 2, 3, 4, 10, 0, 0)
        self.assertEqual((counts.attempted, counts.connections), (10, 20))
        self.assertEqual(counts.tls_percent, 50.0)
        self.assertEqual(TLSCounts().tls_percent, 0.0)


class CountersTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.directory = os.path.abspath(self.mktemp())

    def counters(self, **kw: Any) -> TLSCounters:
        return TLSCounters(self.directory, self.clock, executor=inline, **kw)

    def report(self, counters: TLSCounters, window: float) -> TLSReport:
        return self.successResultOf(counters.report(window))

    def test_scriptedMix(self) -> None:
        """
        The scripted mix gives exactly the expected table: rows by domain
        (case and trailing dot folded), unknown senders together, most
        connections first, with totals.
        """
        counters = self.counters()
        scripted_mix(counters)
        self.clock.advance(30 * 60)
        self.assertEqual(render_text(self.report(counters, 30 * 60)), EXPECTED)

    def test_reportsAreSnapshots(self) -> None:
        """
        Counting goes on in place, but a report or totals already handed
        out keep the numbers they had: later connections do not change
        them.
        """
        counters = self.counters()
        counters.incoming("sender.example", "192.0.2.1", TLSMode.REQUIRED, True, messages=3)
        before = render_text(self.report(counters, HOUR))
        totals = self.successResultOf(counters.totals())
        counters.incoming("sender.example", "192.0.2.1", TLSMode.REQUIRED, True, messages=3)
        counters.add(Direction.INCOMING, "sender.example", "192.0.2.1", TLSCounts(unencrypted=1))
        self.assertEqual(totals[(Direction.INCOMING, "")], TLSCounts(1, 0, 0, 0, 0, 3, 0))
        self.assertNotEqual(render_text(self.report(counters, HOUR)), before)
        self.assertEqual(
            self.successResultOf(counters.totals())[(Direction.INCOMING, "")],
            TLSCounts(2, 0, 0, 0, 1, 6, 0),
        )

    def test_addEqualsIncoming(self) -> None:
        """
        Adding a connection's counts by hand files them exactly as counting
        the connection does.
        """
        by_hand, counted = self.counters(worker="a"), self.counters(worker="b")
        for level, tls, messages in [
            (TLSMode.REQUIRED, True, 2),
            (TLSMode.REQUIRED, None, 0),
            (TLSMode.PREFERRED, False, 1),
            (TLSMode.PREFERRED, None, 4),
            (TLSMode.OFF, None, 1),
        ]:
            counted.incoming("x.example", "192.0.2.9", level, tls, messages)
            by_hand.add(
                Direction.INCOMING,
                "x.example",
                "192.0.2.9",
                TLSCounts.of_connection(level_of(level), tls, messages),
            )
        self.assertEqual([row[2:] for row in by_hand.rows()], [row[2:] for row in counted.rows()])
        self.assertEqual(
            self.successResultOf(by_hand.totals()), self.successResultOf(counted.totals())
        )

    def test_byAddress(self) -> None:
        """
        Incoming rows can be split by sender address.
        """
        counters = self.counters()
        scripted_mix(counters)
        text = render_text(self.report(counters, HOUR), by_address=True)
        rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line}
        self.assertEqual(
            rows["sender.example[192.0.2.1]"], ["2", "0", "0", "0", "2", "0", "100.0", "5"]
        )
        self.assertEqual(
            rows["sender.example[192.0.2.2]"], ["0", "1", "0", "1", "2", "0", "100.0", "0"]
        )
        self.assertEqual(rows["(unknown)[203.0.113.9]"][5], "1")

    def test_restart(self) -> None:
        """
        Flushed counts are read back by a new process on the same
        directory, which goes on counting from them.
        """
        counters = self.counters()
        scripted_mix(counters)
        self.successResultOf(counters.flush())
        self.clock.advance(60)
        again = self.counters()
        again.outgoing("partner.example", DestinationTLS.REQUIRED, True, messages=1)
        report = self.report(again, HOUR)
        (partner,) = [r for r in report.outgoing if r.domain == "partner.example"]
        self.assertEqual(partner.counts.required_success, 2)
        self.assertEqual(partner.counts.encrypted_messages, 6)
        totals = self.successResultOf(again.totals())
        self.assertEqual(totals[(Direction.OUTGOING, "partner.example")].required_failure, 2)

    def test_unflushedLost(self) -> None:
        """
        Only flushed counts survive: a new process does not see what was
        counted after the last flush.
        """
        counters = self.counters()
        counters.outgoing("a.example", "required", True)
        self.successResultOf(counters.flush())
        counters.outgoing("a.example", "required", True)
        report = self.report(self.counters(), HOUR)
        self.assertEqual(report.outgoing[0].counts.required_success, 1)

    def test_workersAddUp(self) -> None:
        """
        Two worker processes sharing the data directory keep their own
        files; each one's report adds the other's flushed counts to its
        own, and neither overwrites the other.
        """
        one = self.counters(worker="1")
        two = self.counters(worker="2")
        one.outgoing("a.example", "required", True, messages=1)
        two.outgoing("a.example", "required", True, messages=2)
        self.successResultOf(one.flush())
        self.successResultOf(two.flush())
        two.outgoing("a.example", "required", False)
        report = self.report(two, HOUR)
        self.assertEqual(report.outgoing[0].counts, TLSCounts(2, 1, 0, 0, 0, 3, 0))
        self.assertEqual(len(list_buckets(self.directory)), 2)
        totals = self.successResultOf(one.totals())
        self.assertEqual(totals[(Direction.OUTGOING, "a.example")].encrypted_messages, 3)

    def test_totalsBounded(self) -> None:
        """
        The running totals (what C{/metrics} shows) follow at most
        C{MAX_TOTAL_DOMAINS} destination domains, also after a restart;
        later ones add to one C{(other domains)} row, so that relayed mail
        to endless domains cannot grow them without end.  The hourly report
        still names every domain.
        """
        counters = self.counters()
        for i in range(MAX_TOTAL_DOMAINS + 5):
            counters.outgoing(f"d{i}.example", "required", True, messages=1)
        totals = self.successResultOf(counters.totals())
        self.assertEqual(len(totals), MAX_TOTAL_DOMAINS + 1)
        self.assertEqual(totals[(Direction.OUTGOING, OTHER_DOMAINS)].encrypted_messages, 5)
        self.assertIn((Direction.OUTGOING, "d0.example"), totals)
        self.successResultOf(counters.flush())
        again = self.counters()
        again.outgoing("late.example", "required", True, messages=1)
        again.outgoing("d1.example", "required", True, messages=1)
        totals = self.successResultOf(again.totals())
        self.assertEqual(len(totals), MAX_TOTAL_DOMAINS + 1)
        self.assertEqual(totals[(Direction.OUTGOING, OTHER_DOMAINS)].encrypted_messages, 6)
        self.assertEqual(totals[(Direction.OUTGOING, "d1.example")].encrypted_messages, 2)
        report = self.report(again, HOUR)
        self.assertEqual(len(report.outgoing), MAX_TOTAL_DOMAINS + 6)

    def test_windows(self) -> None:
        """
        C{report(window)} covers the buckets from the window's start
        (rounded down to the hour) to now, and its series has one point
        per hour, empty ones included.
        """
        counters = self.counters()
        counters.outgoing("old.example", "required", True)  # at T0
        self.clock.advance(25 * HOUR)
        counters.outgoing("mid.example", "required", True)  # T0 + 25h
        self.clock.advance(5 * HOUR + 10 * 60)
        counters.outgoing("new.example", "required", True)  # T0 + 30h10m
        self.successResultOf(counters.flush())

        def domains(window: float) -> list[str]:
            return sorted(r.domain for r in self.report(counters, window).outgoing)

        self.assertEqual(domains(HOUR), ["new.example"])
        self.assertEqual(domains(6 * HOUR), ["mid.example", "new.example"])
        self.assertEqual(domains(24 * HOUR), ["mid.example", "new.example"])
        self.assertEqual(domains(31 * HOUR), ["mid.example", "new.example", "old.example"])
        report = self.report(counters, 6 * HOUR)
        self.assertEqual(len(report.series), 7)
        self.assertEqual(
            [p.outgoing.required_success for p in report.series], [0, 1, 0, 0, 0, 0, 1]
        )
        # The same windows from the files, as the command reads them.
        rows = read_buckets(self.directory, self.clock.seconds() - 6 * HOUR)
        self.assertEqual(sorted({key[1] for _, _, key, _ in rows}), ["mid.example", "new.example"])

    def test_retention(self) -> None:
        """
        Buckets older than the retention are dropped from memory and their
        files deleted at the next flush; the totals keep counting them.
        """
        counters = self.counters(retention=48 * HOUR)
        counters.outgoing("old.example", "required", True)
        self.successResultOf(counters.flush())
        self.clock.advance(49 * HOUR)
        counters.outgoing("new.example", "required", True)
        self.successResultOf(counters.flush())
        self.assertEqual([b for b, _, _ in list_buckets(self.directory)], [T0 + 49 * HOUR])
        report = self.report(counters, 100 * HOUR)
        self.assertEqual([r.domain for r in report.outgoing], ["new.example"])
        totals = self.successResultOf(self.counters().totals())
        self.assertIn((Direction.OUTGOING, "old.example"), totals)

    def test_corruptFileSkipped(self) -> None:
        """
        A damaged report file is skipped with a warning, not fatal.
        """
        counters = self.counters()
        counters.outgoing("a.example", "required", True)
        self.successResultOf(counters.flush())
        (_, _, path), *_ = list_buckets(self.directory)
        with open(path, "wb") as f:
            f.write(b"{not json")
        with open(os.path.join(self.directory, "tls-000000000001-9.json"), "wb") as f:
            f.write(b'{"format": 99}')
        report = self.report(self.counters(), 10 * 365 * 86400)
        self.assertEqual(report.outgoing, ())

    def test_json(self) -> None:
        """
        The JSON form carries rows, addresses, totals and the series.
        """
        counters = self.counters()
        scripted_mix(counters)
        document = render_json(self.report(counters, HOUR))
        self.assertEqual(document["outgoing"]["total"]["required_failure"], 2)
        (sender,) = [r for r in document["incoming"]["rows"] if r["domain"] == "sender.example"]
        self.assertEqual([a["ip"] for a in sender["addresses"]], ["192.0.2.1", "192.0.2.2"])
        self.assertEqual(document["incoming"]["total"]["tls_percent"], 71.4)
        self.assertEqual(document["series"][-1]["start"], "2027-01-15T08:00:00Z")
        self.assertEqual(document["series"][-1]["outgoing"]["encrypted_messages"], 15)

    def test_serviceFlushesOnStop(self) -> None:
        """
        The flush service writes periodically and once more on stop.
        """
        counters = self.counters()
        service = counters.service(interval=60)
        service.startService()
        counters.outgoing("a.example", "required", True)
        self.clock.advance(60)
        self.assertEqual(len(list_buckets(self.directory)), 1)
        counters.outgoing("b.example", "required", True)
        self.successResultOf(service.stopService())
        report = self.report(self.counters(), HOUR)
        self.assertEqual(sorted(r.domain for r in report.outgoing), ["a.example", "b.example"])

    def test_badWorkerName(self) -> None:
        """
        Worker names must be safe in file names.
        """
        self.assertRaises(ValueError, self.counters, worker="../x")
        self.assertRaises(ValueError, self.counters, bucket_seconds=7)


class ThreadTests(TestCase):
    @inlineCallbacks
    def test_flushInThread(self) -> Any:
        """
        With the real reactor, a flush returns before the files are
        written (the fsyncs run in the thread pool) and they are there
        when it fires.
        """
        directory = self.mktemp()
        counters = TLSCounters(directory, reactor)
        counters.incoming("sender.example", "192.0.2.1", "preferred", True, messages=1)
        d = counters.flush()
        self.assertNoResult(d)
        yield d
        self.assertEqual(len(list_buckets(directory)), 1)
        report = yield counters.report(HOUR)
        self.assertEqual(report.incoming[0].counts.encrypted_messages, 1)
