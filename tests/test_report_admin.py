"""
The admin web site over real HTTP on loopback: the report page with its
charts drawn from the real counts and the recent alerts, the JSON report,
and C{/metrics} in the Prometheus exposition format.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import time
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent

from esa_tls.alerts import AlertDispatcher, AlertType, Severity, make_alert
from esa_tls.config.model import AlertRecipient, AlertSettings, DestinationTLS, TLSMode
from esa_tls.report import Direction, TLSCounters
from esa_tls.report.admin import admin_service, make_admin_site, render_page
from esa_tls.report.chart import tls_chart_svg

HOUR = 3600


class AdminSiteTests(TestCase):
    def setUp(self) -> None:
        now = time.time()
        self.counters = TLSCounters(self.mktemp(), reactor)
        # Two hours ago and now, as the sessions and deliveries counted.
        self.clock = Clock()
        self.clock.advance(now - 2 * HOUR)
        earlier = TLSCounters(
            self.counters.directory, self.clock, worker="1", executor=maybeDeferred
        )
        earlier.outgoing("partner.example", DestinationTLS.REQUIRED, False)
        earlier.outgoing("partner.example", DestinationTLS.REQUIRED, False)
        earlier.incoming("sender.example", "192.0.2.1", TLSMode.PREFERRED, None, messages=3)
        self.earlier = earlier
        self.counters.outgoing("partner.example", DestinationTLS.REQUIRED, True, messages=5)
        self.counters.incoming("sender.example", "192.0.2.1", TLSMode.PREFERRED, True, 2)
        self.dispatcher = AlertDispatcher(
            AlertSettings(True, (AlertRecipient("admin@example.com"),)), [], Clock()
        )
        self.dispatcher.tls_failure(
            "partner.example", result_type="starttls-not-supported", level="required"
        )
        self.dispatcher.dispatch(
            make_alert(Severity.CRITICAL, AlertType.SYSTEM, "x", "Spool <disk> full", "b")
        )

    @inlineCallbacks
    def serve(self) -> Any:
        # The other worker's counts reach the page through its files.
        yield self.earlier.flush()
        site = make_admin_site(self.counters, self.dispatcher)
        service: Any = admin_service("tcp:0:interface=127.0.0.1", site, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        # The endpoint service's listening port, to learn the port 0 got;
        # passed on, so that stopService can close it.
        listening: Deferred[Any] = Deferred()

        def got(port: Any) -> Any:
            listening.callback(port)
            return port

        service._waitingForPort.addCallback(got)
        port = yield listening
        return f"http://127.0.0.1:{port.getHost().port}"

    @inlineCallbacks
    def test_unixSocketPrivate(self) -> Any:
        """
        On a UNIX socket the page is the owner's only (0600), unless the
        endpoint names its own mode, by name or as the third argument
        (C{unix:PATH:MODE}); Twisted's default would let every local user
        read it.
        """
        site = make_admin_site(self.counters, self.dispatcher)
        # Short: a UNIX socket's path is limited to about 100 octets.
        directory = tempfile.mkdtemp(prefix="esa-admin-")
        self.addCleanup(shutil.rmtree, directory, True)
        modes = []
        for name, extra in (
            ("default.sock", ""),
            ("group.sock", ":mode=660"),
            ("positional.sock", ":640"),
        ):
            path = os.path.join(directory, name)
            service: Any = admin_service(f"unix:{path}{extra}", site, reactor)
            service.startService()
            listening: Deferred[Any] = Deferred()

            def got(port: Any, listening: Deferred[Any] = listening) -> Any:
                listening.callback(port)
                return port  # for stopService, which closes it

            service._waitingForPort.addCallback(got)
            yield listening
            modes.append(stat.S_IMODE(os.stat(path).st_mode))
            yield service.stopService()
        self.assertEqual(modes, [0o600, 0o660, 0o640])

    @inlineCallbacks
    def get(self, url: str) -> Any:
        # A non-persistent agent: no connection outlives the test.
        response = yield HTTPClient(Agent(reactor)).get(url)
        body = yield treq.content(response)
        return response, body

    @inlineCallbacks
    def test_page(self) -> Any:
        """
        The page shows both directions with an inline SVG chart whose
        columns carry the real counts (encrypted and unencrypted messages,
        TLS failures per hour), the tables, the failing domain and the
        recent alerts newest first, escaped; no script or outside
        resource, and a CSP that forbids them.
        """
        base = yield self.serve()
        response, body = yield self.get(base + "/")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"Content-Type"), [b"text/html; charset=utf-8"]
        )
        (csp,) = response.headers.getRawHeaders(b"Content-Security-Policy")
        self.assertIn(b"default-src 'none'", csp)
        page = body.decode("utf-8")
        self.assertNotIn("<script", page)
        self.assertNotRegex(page, r'(src|href)="(https?:)?//')
        charts = re.findall(r'<svg [^>]*data-direction="(\w+)"', page)
        self.assertEqual(charts, ["incoming", "outgoing"])
        outgoing = page[page.index('data-direction="outgoing"') :]
        buckets = re.findall(
            r'data-encrypted="(\d+)" data-unencrypted="(\d+)" data-failures="(\d+)"',
            outgoing[: outgoing.index("</svg>")],
        )
        self.assertEqual(len(buckets), 25)
        self.assertEqual(buckets[-3], ("0", "0", "2"))
        self.assertEqual(buckets[-1], ("5", "0", "0"))
        incoming = page[page.index('data-direction="incoming"') :]
        self.assertIn('data-encrypted="0" data-unencrypted="3" data-failures="0"', incoming)
        self.assertIn("<td>partner.example</td>", page)
        self.assertIn("Spool &lt;disk&gt; full", page)
        self.assertLess(
            page.index("Spool &lt;disk&gt; full"),
            page.index("TLS failure for destination domain partner.example"),
        )
        self.assertIn("<h2>Domains with failing required TLS</h2>\n<p>partner.example</p>", page)

    @inlineCallbacks
    def test_window(self) -> Any:
        """
        C{?since=1h} narrows the window (the failures two hours ago drop
        out); a malformed one is a 400.
        """
        base = yield self.serve()
        _, body = yield self.get(base + "/report.json?since=1h")
        document = json.loads(body)
        self.assertEqual(document["outgoing"]["total"]["required_failure"], 0)
        self.assertEqual(document["outgoing"]["total"]["required_success"], 1)
        _, body = yield self.get(base + "/report.json")
        self.assertEqual(json.loads(body)["outgoing"]["total"]["required_failure"], 2)
        response, _ = yield self.get(base + "/?since=forever")
        self.assertEqual(response.code, 400)

    @inlineCallbacks
    def test_windowTooLong(self) -> Any:
        """
        A window longer than the 90 days the counts are kept is a 400,
        small and at once: anyone who reaches the page could otherwise
        make the gateway's reactor build a chart of millions of hours.
        """
        base = yield self.serve()
        for path in ("/?since=100000000w", "/report.json?since=91d", "/?since=" + "9" * 5000 + "s"):
            response, body = yield self.get(base + path)
            self.assertEqual(response.code, 400, path)
            self.assertIn(b"at most 90d", body)
            self.assertLess(len(body), 200)

    @inlineCallbacks
    def test_metrics(self) -> Any:
        """
        C{/metrics} is the Prometheus text format with the counters of
        every worker and the alert counts.
        """
        base = yield self.serve()
        response, body = yield self.get(base + "/metrics")
        self.assertEqual(response.code, 200)
        (content_type,) = response.headers.getRawHeaders(b"Content-Type")
        self.assertTrue(content_type.startswith(b"text/plain; version="))
        text = body.decode()
        samples = dict(
            line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#")
        )
        self.assertEqual(
            samples[
                'esa_tls_tls_connections_total{direction="outgoing",result="required_failure"}'
            ],
            "2.0",
        )
        self.assertEqual(
            samples[
                'esa_tls_tls_connections_total{direction="outgoing",result="required_success"}'
            ],
            "1.0",
        )
        self.assertEqual(
            samples['esa_tls_messages_total{direction="incoming",encrypted="no"}'], "3.0"
        )
        self.assertEqual(
            samples[
                'esa_tls_outgoing_tls_connections_total{domain="partner.example",result="required_failure"}'
            ],
            "2.0",
        )
        self.assertEqual(
            samples['esa_tls_alerts_total{kind="tls-failure",severity="warning",type="system"}'],
            "1.0",
        )
        self.assertIn("# TYPE esa_tls_alert_hook_failures_total counter", text)

    def test_renderWithoutDispatcher(self) -> None:
        """
        Without a dispatcher the page has no alerts section.
        """
        report = self.successResultOf(self.earlier.report(3 * HOUR))
        page = render_page(report).decode()
        self.assertNotIn("Recent alerts", page)
        svg = tls_chart_svg(report, Direction.OUTGOING)
        self.assertIn("2 TLS failures", svg)
