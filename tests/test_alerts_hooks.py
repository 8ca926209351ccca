"""
The built-in alert hooks against real things: the mail hook queues a real
message in a real durable spool; the log hook writes its file; the command
hook runs a real program; the webhook posts to a real HTTP server on
loopback; third-party hooks load by dotted name.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from attrs import evolve
from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from esa_tls.alerts import (
    Alert,
    AlertDispatcher,
    AlertFields,
    AlertType,
    FilteredHook,
    Severity,
    make_alert,
)
from esa_tls.alerts.commandhook import CommandAlertHook, CommandFailed
from esa_tls.alerts.hooks import (
    HookConfig,
    HookConfigError,
    HookContext,
    build_hook,
    build_hooks,
    load_factory,
)
from esa_tls.alerts.loghook import LogAlertHook, alert_log_path
from esa_tls.alerts.mailhook import ALERT_LISTENER, MailAlertHook
from esa_tls.alerts.webhook import WebhookAlertHook, WebhookFailed
from esa_tls.config.errors import ConfigError
from esa_tls.config.model import AlertRecipient, AlertSettings
from esa_tls.interfaces import IAlertHook
from esa_tls.service import GatewayService
from esa_tls.spool import DurableSpool
from esa_tls.values import Envelope
from tests.support import free_port
from tests.test_service_reload import INBOUND, ROUTES, SYSTEM, ReloadingGateway

SETTINGS = AlertSettings(
    tls_failure_alert=True,
    recipients=(
        AlertRecipient("admin@example.com", ("warning",), ("system",)),
        AlertRecipient("noc@example.net", ("warning", "critical"), ("system",)),
        AlertRecipient("hw@example.com", ("critical",), ("hardware",)),
    ),
)


def tls_alert() -> Alert:
    """
    A routed TLS-failure alert, as the dispatcher hands it to hooks.
    """
    hooks: list[Alert] = []

    @implementer(IAlertHook)
    class Keep:
        def alert(self, alert: object) -> None:
            assert isinstance(alert, Alert)
            hooks.append(alert)

    dispatcher = AlertDispatcher(SETTINGS, [Keep()], Clock())
    dispatcher.tls_failure(
        "partner.example",
        result_type="certificate-host-mismatch",
        level="required-verify",
        host="mx.partner.example",
        address="192.0.2.7",
        detail="certificate names other.example, not mx.partner.example",
        mid=11,
    )
    return hooks[0]


@implementer(IAlertHook)
class ThirdPartyHook:
    def __init__(self, context: HookContext) -> None:
        self.context = context

    def alert(self, alert: object) -> None:
        pass


def make_hook(context: HookContext) -> ThirdPartyHook:
    return ThirdPartyHook(context)


def not_a_hook(context: HookContext) -> object:
    return object()


def failing_hook(context: HookContext) -> object:
    return context.config.options["channel"]


class MailHookTests(TestCase):
    def setUp(self) -> None:
        self.spool = DurableSpool(self.mktemp(), IReactorTime(reactor))
        self.addCleanup(self.spool.close)

    @inlineCallbacks
    def test_queuesMessageToSubscribers(self) -> Any:
        """
        The mail hook commits one message into the spool whose envelope
        goes to exactly the subscribed recipients, from alert@HOSTNAME;
        the message is RFC 5322 with the ESA subject, Auto-Submitted, and
        a body naming the domain and the cause.
        """
        hook = MailAlertHook(self.spool, "mx.test.example")
        verifyObject(IAlertHook, hook)
        mid = yield hook.alert(tls_alert())
        (queued,) = self.spool.queued()
        self.assertEqual(queued.mid, mid)
        self.assertEqual(queued.envelope.mail_from, "alert@mx.test.example")
        self.assertEqual(queued.envelope.rcpt_to, ("admin@example.com", "noc@example.net"))
        self.assertEqual(queued.envelope.listener, ALERT_LISTENER)
        with self.spool.open_body(mid) as f:
            raw = f.read()
        self.assertNotIn(b"\n", raw.replace(b"\r\n", b""))
        message = email.message_from_bytes(raw, policy=email.policy.default)
        self.assertEqual(
            message["Subject"],
            "Warning <System> esa_tls: TLS failure for destination domain partner.example",
        )
        self.assertEqual(message["Auto-Submitted"], "auto-generated")
        self.assertEqual(message["From"], "alert@mx.test.example")
        self.assertEqual(message["To"], "admin@example.com, noc@example.net")
        self.assertTrue(message["Message-ID"].endswith("@mx.test.example>"))
        self.assertIn("tls-failure; severity=warning", message["X-ESA-TLS-Alert"])
        body = message.get_content()
        self.assertIn("The TLS connection to partner.example failed.", body)
        self.assertIn("certificate-host-mismatch", body)
        self.assertIn("  domain: partner.example", body)
        self.assertIn("  mids: 11", body)

    @inlineCallbacks
    def test_knowsAlertMail(self) -> Any:
        """
        The hook tells alert mail from other mail by MID, also alert mail
        queued before a restart (another hook on the same spool), so that
        the dispatcher does not mail alerts about alert mail's own TLS
        failures; such an alert queues nothing.
        """
        mid = yield MailAlertHook(self.spool, "mx.test.example").alert(tls_alert())
        other = self.spool.new_message(
            Envelope("s@example.com", ("r@example.net",), "h", "192.0.2.1", "InboundMail", 1)
        )
        other.write(b"Subject: x\r\n\r\nx\r\n")
        other_mid = yield other.commit()
        hook = MailAlertHook(self.spool, "mx.test.example")
        self.assertTrue(hook.is_alert_mail(mid))
        self.assertFalse(hook.is_alert_mail(other_mid))
        self.assertFalse(hook.is_alert_mail(10**9))
        about_alert_mail = evolve(
            tls_alert(), fields=AlertFields.of(tls_alert().fields, alert_mail_only=True)
        )
        self.assertIsNone((yield hook.alert(about_alert_mail)))
        self.assertEqual(len(self.spool.queued()), 2)

    @inlineCallbacks
    def test_nobodySubscribed(self) -> Any:
        """
        An alert with no subscribed recipient queues nothing.
        """
        hook = MailAlertHook(self.spool, "mx.test.example", sender="postmaster@example.com")
        alert = make_alert(Severity.INFO, AlertType.UPDATER, "u", "Updated", "b")
        result = yield hook.alert(alert)
        self.assertIsNone(result)
        self.assertEqual(self.spool.queued(), [])

    @inlineCallbacks
    def test_nonASCIISubjectEncoded(self) -> Any:
        """
        A subject with non-ASCII text is RFC 2047-encoded: the message
        stays 7-bit headers, and decodes back to the text.
        """
        hook = MailAlertHook(self.spool, "mx.test.example", sender="postmaster@example.com")
        alert = make_alert(
            Severity.WARNING, AlertType.SYSTEM, "x", "Zertifikat läuft ab", "Text ü\n"
        )
        alert = Alert(
            alert.severity,
            alert.type,
            alert.kind,
            alert.subject,
            alert.body,
            recipients=("a@example.com",),
        )
        mid = yield hook.alert(alert)
        with self.spool.open_body(mid) as f:
            raw = f.read()
        head = raw.split(b"\r\n\r\n", 1)[0]
        head.decode("ascii")
        message = email.message_from_bytes(raw, policy=email.policy.default)
        self.assertEqual(message["Subject"], "Warning <System> esa_tls: Zertifikat läuft ab")
        self.assertIn("Text ü", message.get_content())
        self.assertEqual(self.spool.get(mid).envelope.mail_from, "postmaster@example.com")


class LogHookTests(TestCase):
    def test_jsonLines(self) -> None:
        """
        Each alert is one JSON line in data_dir/logs/alerts.log (created
        with its directory), with the fields and the recipients.
        """
        data_dir = self.mktemp()
        path = alert_log_path(data_dir)
        self.assertEqual(path, os.path.join(data_dir, "logs", "alerts.log"))
        hook = LogAlertHook(path)
        verifyObject(IAlertHook, hook)
        hook.alert(tls_alert())
        hook.alert(make_alert(Severity.INFO, AlertType.SYSTEM, "k", "multi\nline", "a\nb\r\n"))
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 2)
        first = json.loads(lines[0])
        self.assertEqual(first["severity"], "warning")
        self.assertEqual(first["type"], "system")
        self.assertEqual(first["kind"], "tls-failure")
        self.assertEqual(first["fields"]["domain"], "partner.example")
        self.assertEqual(first["fields"]["mids"], [11])
        self.assertEqual(first["recipients"], ["admin@example.com", "noc@example.net"])
        self.assertEqual(json.loads(lines[1])["body"], "a\nb\r\n")


SCRIPT = """
import os, sys
data = sys.stdin.buffer.read()
with open(sys.argv[1], "wb") as f:
    f.write(data)
with open(sys.argv[1] + ".env", "w") as f:
    f.write(os.environ["ESA_TLS_ALERT_KIND"] + " " + os.environ["ESA_TLS_ALERT_SEVERITY"])
"""


class CommandHookTests(TestCase):
    @inlineCallbacks
    def test_programGetsJSON(self) -> Any:
        """
        The program runs with the alert's JSON on standard input and its
        kind and severity in the environment.
        """
        out = os.path.abspath(self.mktemp())
        hook = CommandAlertHook(reactor, [sys.executable, "-c", SCRIPT, out])
        verifyObject(IAlertHook, hook)
        status = yield hook.alert(tls_alert())
        self.assertEqual(status, 0)
        with open(out, "rb") as f:
            received = json.loads(f.read())
        self.assertEqual(received["fields"]["domain"], "partner.example")
        self.assertEqual(received["subject"], tls_alert().subject)
        with open(out + ".env") as f:
            self.assertEqual(f.read(), "tls-failure warning")

    @inlineCallbacks
    def test_failingProgram(self) -> Any:
        """
        A program exiting non-zero fails the hook with its status and the
        end of its standard error.
        """
        hook = CommandAlertHook(
            reactor,
            [
                sys.executable,
                "-c",
                "import sys; sys.stderr.write('no route to pager'); sys.exit(3)",
            ],
        )
        with self.assertRaises(CommandFailed) as caught:
            yield hook.alert(tls_alert())
        self.assertIn("exited with status 3", str(caught.exception))
        self.assertIn("no route to pager", str(caught.exception))

    @inlineCallbacks
    def test_hangingProgramKilled(self) -> Any:
        """
        A program that outlives its timeout is killed, and the hook fails
        saying so.
        """
        hook = CommandAlertHook(
            reactor,
            [sys.executable, "-c", "import time; time.sleep(120)"],
            timeout=0.5,
        )
        with self.assertRaises(CommandFailed) as caught:
            yield hook.alert(tls_alert())
        self.assertIn("timed out", str(caught.exception))


class _Receiver(Resource):
    isLeaf = True

    def __init__(self, code: int = 200) -> None:
        super().__init__()
        self.code = code
        self.posts: list[tuple[bytes, dict[bytes, Sequence[bytes]]]] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        headers = dict(request.requestHeaders.getAllRawHeaders())
        self.posts.append((request.content.read(), headers))
        request.setResponseCode(self.code)
        return b"ok"


class CommandBackgroundTests(TestCase):
    """
    A program that leaves a process of its own running, holding its
    standard output and error (a script that starts a notifier in the
    background, say).
    """

    @inlineCallbacks
    def test_exitedProgramNotWaitedFor(self) -> Any:
        """
        The hook ends when the program exits, with its status, not when
        its background process lets the pipes go: before, a program that
        exited 0 at once was reported as "timed out and was killed", when
        the background process ended, past the timeout.
        """
        hook = CommandAlertHook(reactor, ["/bin/sh", "-c", "sleep 4 & exit 0"], timeout=1)
        started = reactor.seconds()
        status = yield hook.alert(tls_alert())
        self.assertEqual(status, 0)
        self.assertLess(reactor.seconds() - started, 2.5)

    @inlineCallbacks
    def test_exitStatusAndStderrKept(self) -> Any:
        """
        Such a program's status and standard error are still told.
        """
        hook = CommandAlertHook(
            reactor, ["/bin/sh", "-c", "echo no pager >&2; sleep 4 & exit 3"], timeout=1
        )
        started = reactor.seconds()
        with self.assertRaises(CommandFailed) as caught:
            yield hook.alert(tls_alert())
        self.assertIn("exited with status 3: no pager", str(caught.exception))
        self.assertLess(reactor.seconds() - started, 2.5)

    @inlineCallbacks
    def test_hungProgramBounded(self) -> Any:
        """
        A program that hangs while a background process of its own holds
        the pipes fails at its timeout, not when the background process
        ends.
        """
        hook = CommandAlertHook(reactor, ["/bin/sh", "-c", "sleep 4 & sleep 4"], timeout=0.5)
        started = reactor.seconds()
        with self.assertRaises(CommandFailed) as caught:
            yield hook.alert(tls_alert())
        self.assertIn("timed out", str(caught.exception))
        self.assertLess(reactor.seconds() - started, 2.5)


class _Endless(Protocol):
    """
    An HTTP server that answers any request with C{200} and a body that
    never ends.
    """

    factory: _EndlessFactory

    def dataReceived(self, data: bytes) -> None:
        if self.transport is None or self.factory.call is not None:
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n")
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.transport.write(self.factory.chunk)
        self.factory.sent += len(self.factory.chunk)
        self.factory.call = reactor.callLater(self.factory.every, self.send)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.stop()
        self.factory.lost.callback(None)


class _EndlessFactory(Factory):
    protocol = _Endless

    def __init__(self) -> None:
        self.chunk = b"x" * 65536
        self.every = 0.0
        self.sent = 0
        self.call: Any = None
        self.lost: Deferred[None] = Deferred()

    def stop(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()


class WebhookTests(TestCase):
    def serve(self, code: int = 200) -> tuple[_Receiver, str]:
        receiver = _Receiver(code)
        root = Resource()
        root.putChild(b"hook", receiver)
        port: Any = reactor.listenTCP(0, Site(root), interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        return receiver, f"http://127.0.0.1:{port.getHost().port}/hook"

    @inlineCallbacks
    def test_postsJSON(self) -> Any:
        """
        The webhook POSTs the alert's JSON, with the configured headers, to
        a real HTTP server.
        """
        receiver, url = self.serve()
        hook = WebhookAlertHook(reactor, url, headers={"Authorization": "Bearer t0k"})
        verifyObject(IAlertHook, hook)
        code = yield hook.alert(tls_alert())
        self.assertEqual(code, 200)
        ((body, headers),) = receiver.posts
        self.assertEqual(json.loads(body)["fields"]["result_type"], "certificate-host-mismatch")
        self.assertEqual(headers[b"Content-Type"], [b"application/json"])
        self.assertEqual(headers[b"Authorization"], [b"Bearer t0k"])

    @inlineCallbacks
    def test_errorStatusFails(self) -> Any:
        """
        A non-2xx answer fails the hook with the status.
        """
        receiver, url = self.serve(503)
        hook = WebhookAlertHook(reactor, url)
        with self.assertRaises(WebhookFailed) as caught:
            yield hook.alert(tls_alert())
        self.assertEqual(caught.exception.code, 503)
        self.assertEqual(len(receiver.posts), 1)

    def test_badURL(self) -> None:
        """
        Only http and https URLs are accepted.
        """
        self.assertRaises(ValueError, WebhookAlertHook, reactor, "ftp://example.com/")

    def endless(self) -> tuple[_EndlessFactory, str]:
        factory = _EndlessFactory()
        port: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        self.addCleanup(factory.stop)
        return factory, f"http://127.0.0.1:{port.getHost().port}/hook"

    @inlineCallbacks
    def test_endlessAnswerClosed(self) -> Any:
        """
        A webhook that answers 200 and then sends a body without end (a
        broken proxy, a hostile endpoint) fails the hook once it has sent
        more than the hook reads, and the connection is closed: before,
        the whole body was read into memory, with no limit, and a timeout
        left the connection open, still reading.
        """
        factory, url = self.endless()
        hook = WebhookAlertHook(reactor, url, timeout=30)
        with self.assertRaises(WebhookFailed) as caught:
            yield hook.alert(tls_alert())
        self.assertIn("too long", str(caught.exception))
        yield factory.lost.addTimeout(10, reactor)  # type: ignore[arg-type]
        self.assertLess(factory.sent, 16 * 1024 * 1024)

    @inlineCallbacks
    def test_timeoutClosesConnection(self) -> Any:
        """
        A webhook that answers 200 and then trickles its body past the
        timeout fails the hook at the timeout, and the connection is
        closed then, not left open for ever.
        """
        factory, url = self.endless()
        factory.chunk, factory.every = b"x", 0.1
        hook = WebhookAlertHook(reactor, url, timeout=0.5)
        started = reactor.seconds()
        with self.assertRaises(TimeoutError):
            yield hook.alert(tls_alert())
        self.assertLess(reactor.seconds() - started, 5)
        yield factory.lost.addTimeout(10, reactor)  # type: ignore[arg-type]
        self.assertLess(reactor.seconds() - started, 5)


class BuildTests(TestCase):
    def build(self, config: HookConfig, store: Any = None) -> IAlertHook:
        return build_hook(
            config, reactor=reactor, store=store, data_dir="/data", hostname="mx.example"
        )

    def test_defaults(self) -> None:
        """
        Without configured hooks, alerts go by mail and to the log.
        """
        spool = DurableSpool(self.mktemp(), IReactorTime(reactor))
        self.addCleanup(spool.close)
        hooks = build_hooks(None, reactor=reactor, store=spool, data_dir="/d", hostname="h")
        self.assertEqual([type(h).__name__ for h in hooks], ["MailAlertHook", "LogAlertHook"])
        assert isinstance(hooks[1], LogAlertHook)
        self.assertEqual(hooks[1].path, "/d/logs/alerts.log")

    def test_dottedFactory(self) -> None:
        """
        A python hook is made by the named factory, which gets the context.
        """
        hook = self.build(HookConfig("python", object="tests.test_alerts_hooks:make_hook"))
        assert isinstance(hook, ThirdPartyHook)
        self.assertEqual(hook.context.hostname, "mx.example")
        self.assertIs(load_factory("tests.test_alerts_hooks:make_hook"), make_hook)

    def test_filtered(self) -> None:
        """
        Severities or types in a hook's config wrap it in a filter.
        """
        hook = self.build(HookConfig("command", command=("/bin/true",), severities=("critical",)))
        assert isinstance(hook, FilteredHook)
        self.assertEqual(hook.severities, {Severity.CRITICAL})

    def test_errors(self) -> None:
        """
        Unusable hook configurations are refused with a reason.
        """
        for config, words in [
            (
                HookConfig("python", object="tests.test_alerts_hooks:not_a_hook"),
                "not an IAlertHook",
            ),
            (HookConfig("python", object="tests.test_alerts_hooks:nothing"), "has no"),
            (HookConfig("python", object="no_such_module_x:f"), "cannot import"),
            (HookConfig("python", object="no-such-entry-point"), "entry point"),
            (HookConfig("command"), "needs command"),
            (HookConfig("webhook", url="gopher://x"), "http"),
            (HookConfig("pager"), "unknown hook type"),
            (HookConfig("log", types=("bogus",)), "bogus"),
            (HookConfig("mail"), "message store"),
        ]:
            with self.assertRaises(HookConfigError) as caught:
                self.build(config)
            self.assertIn(words, str(caught.exception))

    def test_errorNamesHook(self) -> None:
        """
        The error from build_hooks names the hook's position.
        """
        with self.assertRaises(HookConfigError) as caught:
            build_hooks(
                (HookConfig("log"), HookConfig("command")),
                reactor=reactor,
                store=None,
                data_dir="/d",
                hostname="h",
            )
        self.assertTrue(str(caught.exception).startswith("alerts.hooks[1] (command): "))


PYTHON_HOOKS = """
[[alerts.hooks]]
type = "log"

[[alerts.hooks]]
type = "python"
object = "{object}"
"""


class GatewayHookTests(TestCase):
    """
    A python hook the gateway cannot build, named as the loader names its
    own faults: at start-up C{FILE:LINE: KEY: reason}; at a reload, refused
    while the hooks in service stay.
    """

    def start(self, target: str) -> str:
        """
        @return: the start-up error for a gateway whose second hook is the
            python object C{target}.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "gateway.toml")
        text = SYSTEM.replace("{data_dir}", os.path.join(directory, "var"))
        text += INBOUND.format(port=free_port()) + PYTHON_HOOKS.format(object=target)
        with open(path, "w") as f:
            f.write(text)
        with self.assertRaises(ConfigError) as caught:
            GatewayService.from_file(path)
        line = text.splitlines().index(f'object = "{target}"') + 1
        self.assertTrue(str(caught.exception).startswith(f"{path}:{line}: "), caught.exception)
        return str(caught.exception)

    def test_startUnimportable(self) -> None:
        """
        A module that cannot be imported: the fault names the line and the
        key C{alerts.hooks[1].object}.
        """
        message = self.start("no_such_module_x:f")
        self.assertTrue(
            message.endswith(
                ": alerts.hooks[1].object: cannot import 'no_such_module_x': "
                "No module named 'no_such_module_x'"
            ),
            message,
        )

    def test_startFactoryFails(self) -> None:
        """
        A factory that raises is a fault too, not a traceback.
        """
        message = self.start("tests.test_alerts_hooks:failing_hook")
        self.assertTrue(
            message.endswith(
                ": alerts.hooks[1].object: 'tests.test_alerts_hooks:failing_hook' failed: "
                "KeyError('channel')"
            ),
            message,
        )

    def test_reloadFactoryFails(self) -> None:
        """
        A reload bringing a hook whose factory raises is refused for the
        hooks alone: the rest of the file applies.
        """
        gw = ReloadingGateway(self, SYSTEM + INBOUND.format(port=free_port()) + ROUTES)
        problems = gw.rewrite(
            ROUTES,
            ROUTES.replace('"127.0.0.1:9"', '"127.0.0.1:10"')
            + PYTHON_HOOKS.format(object="tests.test_alerts_hooks:failing_hook"),
        )
        self.assertEqual(
            problems,
            [
                "alerts.hooks refused: alerts.hooks[1] (python): "
                "'tests.test_alerts_hooks:failing_hook' failed: KeyError('channel'); "
                "the hooks in service stay"
            ],
        )
        self.assertIn("reload: smtp_routes changed; applied", gw.log())
