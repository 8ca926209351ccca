"""
A real listener on a loopback port, built from a TOML snippet, with the real
HAT, spool, certificate store and mail log, for tests that talk SMTP to it
over real sockets.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SkipTest, TestCase

from esa_tls.config.load import parse_config
from esa_tls.config.model import GatewayConfig
from esa_tls.hat.table import HostAccessTable
from esa_tls.ids import IdAllocator
from esa_tls.inbound.auth import PasswordFile
from esa_tls.inbound.limits import RecipientRateLimiter
from esa_tls.inbound.listener import ListenerFactory
from esa_tls.maillog import MailLog, format_maillog_line
from esa_tls.spool import DurableSpool
from esa_tls.spool.values import QueuedMessage
from esa_tls.tls.store import CertificateStore

BASE = """
[system]
hostname = "mx.test.example"
data_dir = "{data_dir}"
{system_extra}

[interfaces.Loopback]
address = "127.0.0.1/8"
"""

PUBLIC = """
[listeners.InboundMail]
type = "public"
interface = "Loopback"
port = 2525
rat = ["example.com", ".sub.example.net", "only@example.org"]
"""


#: The twistd of the environment running the tests.
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def free_port() -> int:
    """
    A TCP port free on 127.0.0.1 now, for a child process that must be told
    its port in advance.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require(program: str) -> str:
    """
    The path of a peer program, or skip the test with the reason.
    """
    path = shutil.which(program)
    if path is None:
        raise SkipTest(f"{program} is not installed")
    return path


class Gateway:
    """
    One listener from C{toml} (which must define exactly one listener; the
    C{[system]} and C{Loopback} interface come from L{BASE}), listening on an
    ephemeral port of 127.0.0.1.

    @ivar lines: the mail log lines written so far (without time stamps).
    @ivar clock: drives the session timers when C{clock=True} was given.
    """

    def __init__(
        self,
        testcase: TestCase,
        toml: str = PUBLIC,
        *,
        clock: bool = False,
        free_bytes: Callable[[], int] | None = None,
        store: Any = None,
        wrap_store: Callable[[DurableSpool], Any] | None = None,
        extra_base: str = "",
        users: str = "",
    ) -> None:
        self.data_dir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.data_dir)
        system_extra = f'smtp_auth_users = "{users}"' if users else ""
        text = BASE.format(data_dir=self.data_dir, system_extra=system_extra) + extra_base + toml
        self.config: GatewayConfig = parse_config(text, "test.toml", base_dir=self.data_dir)
        (self.listener,) = self.config.listeners.values()
        self.events: list[dict[str, Any]] = []
        self.maillog = MailLog(observer=self.events.append)
        self.clock: Any = Clock() if clock else reactor
        self.spool = DurableSpool(
            os.path.join(self.data_dir, "spool"), reactor, free_bytes=free_bytes
        )
        self.store = store if store is not None else self.spool
        if wrap_store is not None:
            self.store = wrap_store(self.spool)
        self.certificates = CertificateStore(self.config, self.data_dir)
        self.factory = ListenerFactory(
            self.listener,
            hostname=self.config.system.hostname,
            settings=self.config.listener_settings,
            hat=HostAccessTable(self.listener, None, clock=reactor),
            store=self.store,
            maillog=self.maillog,
            clock=self.clock,
            icids=IdAllocator(os.path.join(self.data_dir, "icid.counter")),
            rates=RecipientRateLimiter(self.clock),
            certificates=self.certificates,
            auth_checker=(
                PasswordFile(self.config.system.smtp_auth_users)
                if self.config.system.smtp_auth_users
                else None
            ),
        )
        served: Any = self.factory
        if self.listener.implicit_tls:
            # As the service does: the creator of the configuration and
            # certificate in force at each connection.
            served = TLSMemoryBIOFactory(self.factory.implicit_tls_creator(), False, self.factory)
        self.port_object = reactor.listenTCP(0, served, interface="127.0.0.1")
        self.port: int = self.port_object.getHost().port
        testcase.addCleanup(self.stop)

    @inlineCallbacks
    def stop(self) -> Any:
        yield self.port_object.stopListening()
        yield self.factory.shutdown()
        yield self.spool.close()

    @property
    def lines(self) -> list[str]:
        out = []
        for event in self.events:
            line = format_maillog_line(event)
            if line is not None:
                out.append(line.split(": ", 1)[1].rstrip("\n"))
        return out

    def queued(self) -> list[QueuedMessage]:
        return self.spool.queued()

    def body(self, mid: int) -> bytes:
        with self.spool.open_body(mid) as f:
            data: bytes = f.read()
        return data


def in_thread(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
    """
    Run a blocking client (smtplib, a raw socket, a subprocess) in a thread
    so that the reactor keeps serving the gateway meanwhile.
    """
    return deferToThread(f, *args, **kwargs)


class Raw:
    """
    A blocking line-level SMTP client for byte-exact conversations; use it
    from L{in_thread}.
    """

    def __init__(
        self,
        port: int,
        timeout: float = 10.0,
        *,
        host: str = "127.0.0.1",
        source: str | None = None,
    ) -> None:
        """
        @param source: the local address to connect from (any of 127/8
            reaches a listener on 127.0.0.1), for tests about who the
            peer is.
        """
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """
        One whole reply (all its lines), CRLFs included; C{b""} at EOF.
        """
        out = b""
        while True:
            line = self.file.readline()
            out += line
            if not line or line[3:4] != b"-":
                return out

    def chat(self, data: bytes) -> bytes:
        self.send(data)
        return self.reply()

    def starttls(
        self, context: ssl.SSLContext | None = None, server_hostname: str | None = None
    ) -> None:
        if context is None:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self.file.close()
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.file = self.sock.makefile("rb")

    def rest(self) -> bytes:
        """
        Everything until the server closes the connection.
        """
        chunks = []
        while True:
            try:
                data = self.file.read1(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    def close(self) -> None:
        # The socket stays open while its reader is: close both, so that the
        # gateway sees the client leave.
        for closable in (self.file, self.sock):
            try:
                closable.close()
            except OSError:
                pass


def smtp_send(
    port: int,
    sender: str,
    recipients: list[str],
    message: bytes,
    *,
    starttls: bool = False,
) -> dict[str, tuple[int, bytes]]:
    """
    Send one message with Python's smtplib; returns its refused recipients.
    """
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as s:
        if starttls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            s.starttls(context=context)
        refused: dict[str, tuple[int, bytes]] = s.sendmail(sender, recipients, message)
        return refused


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
