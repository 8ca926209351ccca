# -*- test-case-name: tests.test_outbound_client -*-
"""
A scripted SMTP server that misbehaves on purpose, for client tests: it
strips or refuses STARTTLS, injects plaintext after its C{220}, sends
garbage instead of a TLS handshake, or resets the connection; and it
records every command it received, in plaintext or over TLS, and every
message, so a test can prove what the client did and did not send.

Usage::

    from tests.peers.hostile import Script, start_hostile_server

    server = start_hostile_server(self, Script(
        starttls_reply=b"220 go ahead",
        after_starttls=b"250 INJECTED\\r\\n",       # same segment as the 220
        certificate=ca.issue(["partner.example"]),
    ))
    ... deliver to 127.0.0.1:server.port ...
    self.assertNotIn(b"MAIL", server.verbs())
    server.messages   # [(mail_from, [rcpts], body bytes)], body unstuffed

This is deliberately not built on C{twisted.mail.smtp.ESMTP}: the point is
to speak exactly the bytes a test scripts, including wrong ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import Factory, define, field
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ServerFactory
from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import TestCase

from esa_tls.testing import IssuedCertificate

#: What happens after the server's reply to STARTTLS.
HANDSHAKE = "handshake"
GARBAGE = "garbage"
RESET = "reset"


@define
class Script:
    """
    How the server behaves.

    @ivar ehlo_keywords: advertised in the EHLO reply (C{STARTTLS} only
        when a certificate is set, unless listed explicitly).
    @ivar starttls_reply: the reply to STARTTLS (C{220 ...}, C{454 ...}).
    @ivar after_starttls: plaintext sent in the same write as that reply.
    @ivar after_220: C{"handshake"}, C{"garbage"} (plaintext instead of
        TLS) or C{"reset"} (abort the connection).
    @ivar silent_after: a verb (C{b"MAIL"}, C{b"EHLO"}...) after which
        the server stops answering, or C{b"GREETING"} for no banner.
    @ivar hold_ehlo_reply_over_tls: delay the post-TLS EHLO reply, so that
        a client sending before the reply is caught (L{Capture.premature}).
    @ivar ehlo_reply_over_tls: the reply to the EHLO after TLS, in place
        of the usual one (a refusal, say).
    @ivar ehlo_reply: the reply to the EHLO in the clear, in place of the
        usual one.
    @ivar helo_reply: the reply to HELO.
    @ivar quit_reply: the reply to QUIT; the server closes the connection
        after it only when it starts with C{221}.
    @ivar hang_after_messages: once this many messages were accepted, take
        the next ones' data but never answer the final dot (they go to
        L{Capture.unanswered}): a server that is slow, or a sender that
        crashes, at the worst moment.
    """

    greeting: bytes = b"220 hostile.test ESMTP"
    ehlo_keywords: tuple[bytes, ...] | None = None
    starttls_reply: bytes = b"220 2.0.0 Ready to start TLS"
    after_starttls: bytes = b""
    after_220: str = HANDSHAKE
    certificate: IssuedCertificate | None = None
    mail_reply: bytes = b"250 2.1.0 Ok"
    rcpt_replies: Mapping[str, bytes] = Factory(dict)
    data_reply: bytes = b"354 End data with <CR><LF>.<CR><LF>"
    final_reply: bytes = b"250 2.0.0 Ok: queued"
    silent_after: bytes | None = None
    hold_ehlo_reply_over_tls: float = 0.0
    ehlo_reply_over_tls: bytes | None = None
    ehlo_reply: bytes | None = None
    helo_reply: bytes = b"250 hostile.test"
    quit_reply: bytes = b"221 2.0.0 Bye"
    hang_after_messages: int | None = None


@define
class Capture:
    """
    What the server saw, over all connections.

    @ivar commands: C{(over_tls, line)} for every command line.
    @ivar messages: C{(mail_from, rcpts, body)} of each message accepted
        (answered 2xx at the final dot); the body dot-unstuffed, CRLF line
        endings, as a receiving MTA would store it.
    @ivar premature: commands that arrived while a reply was being held.
    @ivar unanswered: messages whose final dot got no reply (see
        L{Script.hang_after_messages}); not accepted.
    @ivar max_open: the most connections open at once.
    @ivar server_names: the SNI name of each TLS handshake (C{None} when
        the client sent none).
    """

    commands: list[tuple[bool, bytes]] = Factory(list)
    messages: list[tuple[bytes, list[bytes], bytes]] = Factory(list)
    unanswered: list[tuple[bytes, list[bytes], bytes]] = Factory(list)
    server_names: list[str | None] = Factory(list)
    premature: list[bytes] = Factory(list)
    max_open: int = 0
    connections: int = 0
    open: list[Any] = Factory(list)
    closed_waiters: list[Deferred[None]] = Factory(list)

    def all_closed(self) -> Deferred[None]:
        """
        Fires once no connection is open (aborting any still open after a
        moment, so a test never leaves the reactor dirty).
        """
        d: Deferred[None] = Deferred()
        if not self.open:
            d.callback(None)
            return d
        self.closed_waiters.append(d)
        aborts = [reactor.callLater(0.5, _abort, p) for p in self.open]

        def cancel(result: None) -> None:
            for call in aborts:
                if call.active():
                    call.cancel()

        d.addCallback(cancel)
        return d


def _abort(protocol: Any) -> None:
    if protocol.transport is not None and protocol.connected:
        protocol.transport.abortConnection()


class _HostileSMTP(LineReceiver):
    MAX_LENGTH = 1 << 20

    def __init__(self, script: Script, capture: Capture) -> None:
        self.script = script
        self.capture = capture
        self.tls = False
        self.in_data = False
        self.data_lines: list[bytes] = []
        self.mail_from = b""
        self.rcpts: list[bytes] = []
        self.holding = False
        self.silent = False

    def connectionMade(self) -> None:
        self.capture.connections += 1
        self.capture.open.append(self)
        self.capture.max_open = max(self.capture.max_open, len(self.capture.open))
        if self.script.silent_after == b"GREETING":
            self.silent = True
            return
        self.sendLine(self.script.greeting)

    def connectionLost(self, reason: Any = None) -> None:
        self.capture.open.remove(self)
        waiting, self.capture.closed_waiters = self.capture.closed_waiters, []
        if not self.capture.open:
            for d in waiting:
                d.callback(None)
        else:
            self.capture.closed_waiters = waiting

    def lineReceived(self, line: bytes) -> None:
        if self.in_data:
            if line == b".":
                self.in_data = False
                body = b"".join(
                    (x[1:] if x.startswith(b".") else x) + b"\r\n" for x in self.data_lines
                )
                self.data_lines = []
                message = (self.mail_from, list(self.rcpts), body)
                limit = self.script.hang_after_messages
                if limit is not None and len(self.capture.messages) >= limit:
                    self.capture.unanswered.append(message)
                    self.silent = True
                    return
                if self.script.final_reply.startswith(b"2"):
                    self.capture.messages.append(message)
                else:
                    self.capture.unanswered.append(message)
                self._reply(b"DOT", self.script.final_reply)
            else:
                self.data_lines.append(line)
            return
        self.capture.commands.append((self.tls, line))
        if self.holding:
            self.capture.premature.append(line)
        verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
        if self.silent:
            return
        handler = getattr(self, "do_" + verb.decode("ascii", "replace"), None)
        if handler is None:
            self._reply(verb, b"502 5.5.2 Error: command not recognized")
        else:
            handler(line)

    def _reply(self, verb: bytes, reply: bytes) -> None:
        if self.silent:
            return
        self.transport.write(reply + b"\r\n")  # type: ignore[union-attr]
        if self.script.silent_after == verb:
            self.silent = True

    def do_EHLO(self, line: bytes) -> None:
        if self.tls and self.script.ehlo_reply_over_tls is not None:
            self._reply(b"EHLO", self.script.ehlo_reply_over_tls)
            return
        if not self.tls and self.script.ehlo_reply is not None:
            self._reply(b"EHLO", self.script.ehlo_reply)
            return
        keywords = self.script.ehlo_keywords
        if keywords is None:
            keywords = (b"PIPELINING", b"8BITMIME")
            if self.script.certificate is not None and not self.tls:
                keywords = (*keywords, b"STARTTLS")
        lines = [b"hostile.test", *keywords]
        reply = b"\r\n".join(
            (b"250 " if i == len(lines) - 1 else b"250-") + text for i, text in enumerate(lines)
        )
        if self.tls and self.script.hold_ehlo_reply_over_tls:
            self.holding = True

            def release() -> None:
                self.holding = False
                self._reply(b"EHLO", reply)

            reactor.callLater(self.script.hold_ehlo_reply_over_tls, release)
            return
        self._reply(b"EHLO", reply)

    def do_HELO(self, line: bytes) -> None:
        self._reply(b"HELO", self.script.helo_reply)

    def do_STARTTLS(self, line: bytes) -> None:
        reply = self.script.starttls_reply
        if not reply.startswith(b"220") or self.script.certificate is None:
            self._reply(b"STARTTLS", reply)
            return
        self.transport.write(reply + b"\r\n" + self.script.after_starttls)  # type: ignore[union-attr]
        if self.script.after_220 == GARBAGE:
            self.transport.write(b"this is not a TLS handshake\r\n" * 20)  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        if self.script.after_220 == RESET:
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.clearLineBuffer()
        cert = self.script.certificate
        private = PrivateCertificate.loadPEM(cert.cert_pem + cert.key_pem)
        chain = [
            Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + part).original
            for part in cert.chain_pem.split(b"-----BEGIN CERTIFICATE-----")[1:]
        ]
        options = CertificateOptions(
            privateKey=private.privateKey.original,
            certificate=private.original,
            extraCertChain=chain,
        )
        capture = self.capture

        def record_sni(connection: Any) -> None:
            name = connection.get_servername()
            capture.server_names.append(name.decode("ascii") if name else None)

        options.getContext().set_tlsext_servername_callback(record_sni)
        self.transport.startTLS(options)  # type: ignore[union-attr]
        self.tls = True

    def do_MAIL(self, line: bytes) -> None:
        self.mail_from = line[len(b"MAIL FROM:") :].split(b" ")[0].strip(b"<>")
        self.rcpts = []
        self._reply(b"MAIL", self.script.mail_reply)

    def do_RCPT(self, line: bytes) -> None:
        address = line[len(b"RCPT TO:") :].split(b" ")[0].strip(b"<>")
        reply = self.script.rcpt_replies.get(address.decode(), b"250 2.1.5 Ok")
        if reply.startswith(b"2"):
            self.rcpts.append(address)
        self._reply(b"RCPT", reply)

    def do_DATA(self, line: bytes) -> None:
        if not self.rcpts:
            self._reply(b"DATA", b"554 5.5.1 Error: no valid recipients")
            return
        self.in_data = self.script.data_reply.startswith(b"354")
        self._reply(b"DATA", self.script.data_reply)

    def do_RSET(self, line: bytes) -> None:
        self._reply(b"RSET", b"250 2.0.0 Ok")

    def do_NOOP(self, line: bytes) -> None:
        self._reply(b"NOOP", b"250 2.0.0 Ok")

    def do_QUIT(self, line: bytes) -> None:
        self._reply(b"QUIT", self.script.quit_reply)
        if self.script.quit_reply.startswith(b"221"):
            self.transport.loseConnection()  # type: ignore[union-attr]


@define
class HostileServer:
    """
    A running scripted server.
    """

    port: int
    capture: Capture
    script: Script
    _listening: Any = field(default=None, repr=False)

    def verbs(self, over_tls: bool | None = None) -> list[bytes]:
        """
        The command verbs received (optionally only those in plaintext,
        C{over_tls=False}, or over TLS, C{True}).
        """
        return [
            line.split(b" ", 1)[0].split(b":", 1)[0].upper()
            for tls, line in self.capture.commands
            if over_tls is None or tls == over_tls
        ]


def start_hostile_server(
    case: TestCase, script: Script, interface: str = "127.0.0.1"
) -> HostileServer:
    """
    Listen on C{interface} (127.0.0.1 by default; C{"::1"} for IPv6),
    port 0, for the duration of the test C{case}.
    """
    capture = Capture()
    factory: Any = ServerFactory.forProtocol(lambda: _HostileSMTP(script, capture))
    listening = reactor.listenTCP(0, factory, interface=interface)
    case.addCleanup(listening.stopListening)
    case.addCleanup(capture.all_closed)
    port = listening.getHost().port  # type: ignore[attr-defined]
    return HostileServer(port, capture, script, listening)
