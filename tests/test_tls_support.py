"""
Shared fixtures for the TLS tests: configuration values, a loopback TLS
server that reports what each handshake established, and real clients
(Python's C{ssl} module in a thread, C{openssl s_client} as a process).

No test cases live here.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Interface
from typing import Any, cast

from attrs import frozen
from twisted.internet import defer, protocol, threads
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLServerConnectionCreator
from twisted.protocols.basic import LineReceiver
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from esa_tls.config.model import (
    CertificateConfig,
    GatewayConfig,
    Interface,
    Listener,
    ListenerType,
    MailFlowPolicy,
    SystemSettings,
    TLSMode,
)
from esa_tls.testing import IssuedCertificate
from esa_tls.tls.server import ClientCertStatus, peer_certificate_status, tls_info
from esa_tls.values import TLSInfo

HOSTNAME = "gateway.example.test"


def make_listener(
    name: str = "IncomingMail",
    certificate: str = "Demo",
    sni: Mapping[str, str] | None = None,
    tls_protocols: tuple[str, ...] = ("TLSv1.2", "TLSv1.3"),
    tls_ciphers: str = "",
    tls: TLSMode = TLSMode.PREFERRED,
    protocol: str = "SMTP",
) -> Listener:
    return Listener(
        name=name,
        type=ListenerType.PUBLIC,
        interface=Interface("Data 1", IPv4Interface("127.0.0.1/8")),
        port=25,
        protocol=protocol,
        certificate=certificate,
        policies={"default": MailFlowPolicy(name="default", tls=tls)},
        sni=dict(sni or {}),
        tls_protocols=tls_protocols,
        tls_ciphers=tls_ciphers,
    )


def make_config(
    data_dir: str,
    certificates: Sequence[CertificateConfig] = (),
    listeners: Sequence[Listener] = (),
    hostname: str = HOSTNAME,
) -> GatewayConfig:
    return GatewayConfig(
        system=SystemSettings(hostname=hostname, data_dir=data_dir),
        listeners={listener.name: listener for listener in listeners},
        certificates={c.name: c for c in certificates},
    )


def install(name: str, issued: IssuedCertificate, directory: str) -> CertificateConfig:
    """
    Write C{issued} to files and return the configuration naming them.
    """
    cert, key, chain = issued.write(directory)
    return CertificateConfig(name=name, cert=cert, key=key, chain=chain)


def write_pem(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


@frozen
class ServerOutcome:
    """
    What the server saw on one connection: the handshake's result, or why
    it failed.
    """

    info: TLSInfo | None
    status: ClientCertStatus | None
    failure: str | None


@implementer(IHandshakeListener)
class StatusProtocol(LineReceiver):
    """
    On handshake, report what TLS established, to the test (through the
    factory) and to the client (one C{OK ...} line).  In one-shot mode it
    then closes; otherwise it answers C{status} lines and echoes others.
    """

    factory: StatusFactory
    transport: Any
    delimiter = b"\n"

    def connectionMade(self) -> None:
        self._handshook = False

    def handshakeCompleted(self) -> None:
        self._handshook = True
        info = tls_info(self.transport)
        status = peer_certificate_status(self.transport)
        self.factory.outcomes.put(ServerOutcome(info, status, None))
        self.transport.write(self._status_line(info, status))
        if self.factory.oneshot:
            self.transport.loseConnection()

    def _status_line(self, info: TLSInfo, status: ClientCertStatus) -> bytes:
        return (
            f"OK {info.protocol} {info.cipher} presented={status.presented} "
            f"verified={status.verified}\n"
        ).encode()

    def lineReceived(self, line: bytes) -> None:
        if line.strip() == b"status":
            self.transport.write(
                self._status_line(tls_info(self.transport), peer_certificate_status(self.transport))
            )
        else:
            self.transport.write(b"echo " + line + b"\n")

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not self._handshook:
            self.factory.outcomes.put(ServerOutcome(None, None, str(reason.value)))


class StatusFactory(protocol.ServerFactory):
    protocol = StatusProtocol  # type: ignore[assignment]

    def __init__(self, oneshot: bool = True) -> None:
        self.oneshot = oneshot
        self.outcomes: defer.DeferredQueue[ServerOutcome] = defer.DeferredQueue()


class StartTLSProtocol(StatusProtocol):
    """
    A plaintext line protocol where C{STARTTLS} starts TLS the way the SMTP
    session does: C{transport.startTLS(creator)}.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.write(b"ready\n")

    def lineReceived(self, line: bytes) -> None:
        if line.strip() == b"STARTTLS" and not self._handshook:
            self.transport.write(b"go\n")
            self.transport.startTLS(cast(StartTLSFactory, self.factory).creator)
        else:
            super().lineReceived(line)


class StartTLSFactory(StatusFactory):
    protocol = StartTLSProtocol

    def __init__(self, creator: object) -> None:
        super().__init__(oneshot=True)
        self.creator = creator


def serve(test: TestCase, creator: object, oneshot: bool = True) -> tuple[int, StatusFactory]:
    """
    Listen on a loopback port with implicit TLS made by C{creator}.
    """
    from twisted.internet import reactor

    factory = StatusFactory(oneshot)
    wrapper = TLSMemoryBIOFactory(cast(IOpenSSLServerConnectionCreator, creator), False, factory)
    port = reactor.listenTCP(0, wrapper, interface="127.0.0.1")  # type: ignore[arg-type]
    test.addCleanup(port.stopListening)
    return cast(IPv4Address, port.getHost()).port, factory


def serve_starttls(test: TestCase, creator: object) -> tuple[int, StartTLSFactory]:
    from twisted.internet import reactor

    factory = StartTLSFactory(creator)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    return cast(IPv4Address, port.getHost()).port, factory


@frozen
class ClientResult:
    version: str | None
    cipher: str | None
    reused: bool
    session: ssl.SSLSession | None
    peer_der: bytes | None
    data: bytes


def _read_all(sock: ssl.SSLSocket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(4096)
        except (ssl.SSLZeroReturnError, ConnectionResetError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def client_context(
    *,
    cafile: str | None = None,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
    cert: tuple[str, str] | None = None,
) -> ssl.SSLContext:
    """
    A Python C{ssl} client context; without C{cafile} it does not verify the
    server.  Reuse one context to resume sessions (Python only resumes a
    session in the context that made it).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cafile)
    if minimum is not None:
        context.minimum_version = minimum
    if maximum is not None:
        context.maximum_version = maximum
    if ciphers is not None:
        context.set_ciphers(ciphers)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def _python_client(
    port: int,
    context: ssl.SSLContext,
    server_hostname: str | None,
    session: ssl.SSLSession | None,
    starttls: bool,
) -> ClientResult:
    # The timeout only keeps a broken test from hanging; no assertion
    # depends on it.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        if starttls:
            reader = raw.makefile("rb")
            assert reader.readline() == b"ready\n"
            raw.sendall(b"STARTTLS\n")
            assert reader.readline() == b"go\n"
        with context.wrap_socket(raw, server_hostname=server_hostname, session=session) as sock:
            data = _read_all(sock)
            cipher = sock.cipher()
            return ClientResult(
                version=sock.version(),
                cipher=cipher[0] if cipher else None,
                reused=bool(sock.session_reused),
                session=sock.session,
                peer_der=sock.getpeercert(binary_form=True),
                data=data,
            )


def python_client(
    port: int,
    *,
    context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    session: ssl.SSLSession | None = None,
    starttls: bool = False,
    cafile: str | None = None,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
    cert: tuple[str, str] | None = None,
) -> defer.Deferred[ClientResult]:
    """
    Connect with Python's C{ssl} module (in a thread, so the reactor keeps
    serving) and read until the server closes.  The client context is
    C{context}, or one made by L{client_context} from the other arguments.
    """
    if context is None:
        context = client_context(
            cafile=cafile, minimum=minimum, maximum=maximum, ciphers=ciphers, cert=cert
        )
    return threads.deferToThread(_python_client, port, context, server_hostname, session, starttls)


class _Collector(protocol.ProcessProtocol):
    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: defer.Deferred[tuple[str, str, int]] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.done.callback(
            (
                b"".join(self.out).decode("utf-8", "replace"),
                b"".join(self.err).decode("utf-8", "replace"),
                code if code is not None else -1,
            )
        )


def openssl_path() -> str:
    path = shutil.which("openssl")
    if path is None:
        raise SkipTest("openssl not installed")
    return path


def s_client(port: int, *args: str, stdin: bytes = b"") -> defer.Deferred[str]:
    """
    Run C{openssl s_client} against the loopback port until the server
    closes.

    @return: a L{Deferred} firing with its standard output.
    """
    from twisted.internet import reactor

    executable = openssl_path()
    collector = _Collector(stdin)
    argv = [
        executable,
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-ign_eof",
        *args,
    ]
    reactor.spawnProcess(collector, executable, argv, env={"PATH": os.environ.get("PATH", "")})
    return collector.done.addCallback(lambda result: result[0])
