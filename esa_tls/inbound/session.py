# -*- test-case-name: tests.test_inbound_session -*-
"""
The inbound ESMTP session: Twisted's C{ESMTP} with its defects fixed
(twisted.md findings 1-10) and the ESA's policy applied at every step.

The session is a small state machine::

    CLASSIFYING --verdict--> COMMAND <--> DATA
         |                     |  \\--STARTTLS--> (COMMAND, secure)
         +--REJECT/TCPREFUSE---+---> CLOSED

Commands are processed strictly one at a time and in order: while a reply
waits on something asynchronous (a HAT lookup, a durable commit), input is
held, not read past (twisted.md 1.2: out-of-order pipelined replies).  The
session decides nothing about policy by itself: it asks the L{MailFlowPolicy}
its connection was classified into, and the L{ITLSPolicy} made from it.
"""

from __future__ import annotations

import enum
import json
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    ISSLTransport,
)
from twisted.logger import Logger
from twisted.mail.smtp import ESMTP
from twisted.python.failure import Failure
from zope.interface import implementer

from esa_tls.config.model import (
    AccessRule,
    ListenerType,
    MailFlowPolicy,
    SMTPAuthMode,
    TLSMode,
)
from esa_tls.inbound.address import AddressError, Mailbox, parse_mail_from, parse_rcpt_to
from esa_tls.inbound.auth import (
    MECHANISMS,
    PasswordFileError,
    SASLError,
    decode_response,
    parse_plain,
)
from esa_tls.inbound.framing import DataReader
from esa_tls.interfaces import IIncomingMessage, ITLSPolicy, StoreError
from esa_tls.spool.fileformat import MAX_HEADER_LENGTH
from esa_tls.tls.server import TLSConfigurationError, peer_certificate_status, tls_info
from esa_tls.values import Envelope, HATVerdict, TLSInfo

if TYPE_CHECKING:  # pragma: no cover
    from esa_tls.inbound.listener import ListenerFactory

log = Logger()

#: RFC 5321 4.5.3.1.4: a command line is at most 512 octets with its CRLF.
MAX_COMMAND_LINE = 512
#: RFC 4954 section 4: an AUTH command line or SASL response.
MAX_AUTH_LINE = 12288
#: How much pipelined input is held while a reply is pending before the
#: socket is paused.
_MAX_HELD = 64 * 1024
#: Seconds a closed session waits for its client to take the last replies
#: before the connection is aborted.
_LINGER = 30.0
#: The most octets one message's recipients may take in its spool header:
#: a 250 promises a file the queue can read back, and it believes no
#: header line over MAX_HEADER_LENGTH.  Half of it leaves room for the
#: rest of the envelope; at RFC 5321's longest paths that is over 4,000
#: recipients, whatever a policy's max_rcpts_per_msg allows.
MAX_RECIPIENT_OCTETS = MAX_HEADER_LENGTH // 2

#: RFC 3461 xtext (section 4): printable ASCII but "+" and "=", which
#: encode as "+" and two upper-case hex digits.
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})+")


def counts_connection(policy: MailFlowPolicy, reject_at_rcpt: bool) -> bool:
    """
    Whether a session placed under C{policy} goes on to talk SMTP, and so
    counts against the policy's concurrent connections per IP: not when
    the policy refuses the connection outright (TCPREFUSE, or REJECT with
    the reject banner at connect, C{reject_at_rcpt} off).  A listener that
    classifies a host as it accepts the connection uses the same test to
    count the address then (see L{esa_tls.workers.SharedListenerFactory}).
    """
    rule = policy.rule
    if rule is AccessRule.TCPREFUSE:
        return False
    return not (rule is AccessRule.REJECT and not reject_at_rcpt)


class State(enum.Enum):
    CLASSIFYING = "classifying"
    COMMAND = "command"
    DATA = "data"
    CLOSED = "closed"


_HELP = (
    b"2.0.0 The following commands are recognized\n"
    b" data ehlo helo help\n"
    b" mail noop quit rcpt\n"
    b" rset starttls vrfy"
)


#: RFC 3207 section 4: the reply to STARTTLS when TLS is on for the policy
#: but cannot be started now (the listener's certificate is not in service).
_TLS_UNAVAILABLE = (454, b"4.7.0 TLS not available due to temporary reason")
#: Replies collected from one read before they are written anyway.
_MAX_COLLECTED = 32


#: The reply to a message the store could not take: the same whatever the
#: reason, which names spool paths and OS errors and goes to the log.
_STORE_FAULT = (451, b"4.3.0 Temporary error storing the message, try again later")


#: An enhanced status code (RFC 3463) at the start of a reply text, also in
#: the ESA's C{#5.7.1} form.
_ENHANCED = re.compile(r"\A(#?)[245](\.[0-9]{1,3}\.[0-9]{1,3}(?: |\Z))")


def _configured_text(code: int, text: str) -> bytes:
    """
    A configured reply text for C{code}, with the class of its enhanced
    status code made that of the code (RFC 3463 section 3: the class
    agrees with the reply).  An administrator who sets only the code (421
    for "try later") keeps the default text, whose C{5.7.1} would tell a
    client that trusts enhanced codes to give up for good.
    """
    return _ENHANCED.sub(rf"\g<1>{code // 100}\g<2>", text, count=1).encode("utf-8")


def _format_reply(code: int, text: bytes) -> bytes:
    """
    The reply C{code} with C{text} on the wire: one line per line of text,
    all but the last marked as continued.
    """
    if b"\n" not in text:
        return b"%d %s\r\n" % (code, text)
    lines = text.split(b"\n")
    out = [b"%d-%s\r\n" % (code, line) for line in lines[:-1]]
    out.append(b"%d %s\r\n" % (code, lines[-1]))
    return b"".join(out)


@implementer(IHandshakeListener, IPushProducer)
class InboundSession(ESMTP):
    """
    One SMTP conversation on a listener.

    @ivar icid: the ESA incoming connection ID, in every log line.
    @ivar verdict: what the HAT decided (set once classified).
    """

    factory: ListenerFactory

    def __init__(self, factory: ListenerFactory, icid: int) -> None:
        ESMTP.__init__(self)
        self.factory = factory
        # TimeoutMixin's idle timer runs on the listener's clock too, so
        # that every timer of a session can be driven by one test clock.
        self.callLater = factory.clock.callLater  # type: ignore[method-assign,assignment]
        self.icid = icid
        self.state = State.CLASSIFYING
        self.verdict: HATVerdict | None = None
        self.policy: MailFlowPolicy = factory.config.default_policy
        self.tls_policy: ITLSPolicy = factory.tls_policy(self.policy, True)
        self.peer_ip = ""
        self.secure = False
        self.tls_info: TLSInfo | None = None
        self._hostname = factory.hostname
        self._held = b""
        # Replies made while one read is processed, sent as one write when
        # it is done (pipelined commands get one segment, not three).
        self._replies: list[bytes] | None = None
        self._busy = False
        self._paused = False
        self._output_full = False
        self._linger: IDelayedCall | None = None
        self._counted = False
        # Whether the mail log has this connection's "New SMTP ICID" line
        # (written once the HAT has placed it).
        self._introduced = False
        # Admitted into SMTP (greeted with the banner); unlike _counted,
        # which hands the per-IP count back, it stays set once closed.
        self._in_smtp = False
        self._bad_commands = 0
        self._messages = 0
        self._helo_name: str | None = None
        self._esmtp = False
        # None: no MAIL FROM yet; "": the null reverse path.
        self._sender: str | None = None
        self._recipients: list[Mailbox] = []
        self._recipient_octets = 0
        self._reader: DataReader | None = None
        self._message: IIncomingMessage | None = None
        self._store_fault: tuple[int, bytes] | None = None
        self._timers: list[IDelayedCall] = []
        self._unsuccessful: IDelayedCall | None = None
        self._close_after_message = False
        # A message's commit is under way; the gateway is stopping, and
        # says 421 once the commit's reply is sent.
        self._committing = False
        self._stopping = False
        self._tls_pending = False
        self._skip_line = False
        self._envelope: Envelope | None = None
        # SMTP AUTH: the authenticated user, and the handler of the next
        # line while a SASL exchange is under way.
        self.user: str | None = None
        self._sasl: Callable[[str], None] | None = None
        # The password check under way, cancelled if the client goes.
        self._auth_check: Deferred[Any] | None = None
        # For the TLS Connections report: a handshake was tried and failed,
        # or the client certificate it brought did not verify.
        self.tls_failed = False

    @property
    def counted(self) -> bool:
        """
        Whether the session got past the HAT into SMTP (a TCPREFUSE or
        REJECT connection is not a TLS report row, nor one turned away for
        its address's concurrent connections: it had no chance at TLS).
        """
        return self._in_smtp and self.policy.rule in (
            AccessRule.ACCEPT,
            AccessRule.RELAY,
        )

    @property
    def messages_accepted(self) -> int:
        """
        Messages this session got a 250 for.
        """
        return self._messages

    @property
    def _t(self) -> Any:
        """
        The transport, with the TCP and TLS methods Twisted's C{ITransport}
        annotation does not declare.
        """
        return self.transport

    # -- connection life ----------------------------------------------------

    def connectionMade(self) -> None:
        # The session produces the replies: when the client stops reading
        # them, the transport pauses it (see L{pauseProducing}).
        self._t.registerProducer(self, True)
        self.peer_ip = getattr(self._t.getPeer(), "host", "")
        self.secure = ISSLTransport.providedBy(self.transport)
        if self.secure:
            # Implicit TLS (SMTPS): the whole connection is already inside
            # TLS, so STARTTLS must never be offered (twisted.md 1.4).
            self.startedTLS = True
            self._tls_pending = True
        self.setTimeout(self.factory.settings.idle_timeout)
        verdict = self.factory.classify_now(self.peer_ip)
        if verdict is not None:
            self._classified(verdict)
            return
        d = self.factory.classify(self.peer_ip)
        d.addCallback(self._classified)
        d.addErrback(self._internalError)

    def _classified(self, verdict: HATVerdict) -> None:
        if self.state is State.CLOSED:
            return
        self.verdict = verdict
        self.policy = verdict.policy
        self.tls_policy = self.factory.tls_policy(self.policy, self.factory.tls_available)
        self._introduce(verdict.reverse_dns, verdict.verified)
        self.factory.maillog.connection_verdict(self.icid, verdict)
        rule = self.policy.rule
        if not counts_connection(self.policy, self.factory.settings.reject_at_rcpt):
            if rule is AccessRule.TCPREFUSE:
                self._close(abort=True)
                return
            self._close(reply=(self.policy.reject_banner_code, self._reject_text()))
            return
        if not self.factory.admit(self, self.peer_ip, self.policy.max_concurrency):
            self._close(
                reply=(
                    421,
                    b"4.7.0 "
                    + self._host_bytes()
                    + b" Too many concurrent connections from your address",
                )
            )
            return
        self._counted = True
        self._in_smtp = True
        self.state = State.COMMAND
        clock = self.factory.clock
        settings = self.factory.settings
        self._timers.append(
            clock.callLater(settings.total_time_limit * 0.8, self._connectionTimeLimit)
        )
        if self.factory.config.type is ListenerType.PUBLIC and settings.unsuccessful_timeout > 0:
            self._unsuccessful = clock.callLater(settings.unsuccessful_timeout, self._noInjection)
            self._timers.append(self._unsuccessful)
        self._reply(self.policy.banner_code, self._banner_text())
        if self._held:
            # Bytes sent before our greeting: a client that does not wait
            # for the banner is not speaking SMTP (and "early talkers" are a
            # classic spam-bot tell); refuse it rather than guess.
            self._close(reply=(554, b"5.5.1 Protocol error: data received before the greeting"))

    def _introduce(self, reverse_dns: str | None, verified: bool) -> None:
        """
        Write the connection's C{New SMTP ICID} line, which every other
        line of the ICID follows.
        """
        self._introduced = True
        listener = self.factory.config
        self.factory.maillog.new_icid(
            self.icid,
            listener.interface.name,
            listener.interface.ip,
            self.peer_ip,
            reverse_dns,
            verified,
        )

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.state = State.CLOSED
        self.setTimeout(None)
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._abort_message()
        if self._auth_check is not None:
            # Nobody waits for its answer: not worth an scrypt.
            self._auth_check.cancel()
        counted_ip = self.peer_ip if self._counted else None
        self._counted = False
        if self._tls_pending and reason is not None:
            self.tls_failed = True
            self.factory.maillog.icid_tls_failed(self.icid, _reason_text(reason))
        # The factory gives back this session's per-IP count with the rest
        # of what the session held (one locked section when the counts
        # are shared between worker processes).
        self.factory.session_closed(self, counted_ip)
        if not self._introduced:
            # Gone before the HAT placed it (the client left during a slow
            # DNS lookup, the HAT failed, the gateway stopped): its close
            # must not name a connection the log never introduced.
            self._introduce(None, False)
        self.factory.maillog.icid_close(self.icid)

    def _close(self, abort: bool = False, reply: tuple[int, bytes] | None = None) -> None:
        """
        End the session: with C{abort}, at once; else after the replies
        collected so far and the last C{reply}.

        In the clear the last reply is written after C{loseConnection}, so
        that it leaves in the same reactor step in which the connection
        ends and gives back its place in the limits, not a step before (a
        client told 421 that reconnects at once should find the place
        free); under TLS it must go before the TLS shutdown.
        """
        last = None if abort or reply is None else _format_reply(*reply)
        if not abort:
            self._flush_replies()
            if last is not None and ISSLTransport.providedBy(self.transport):
                self._t.write(last)
                last = None
        self._replies = None
        self.state = State.CLOSED
        self._held = b""
        # A registered producer would keep the connection open (see
        # FileDescriptor.loseConnection).
        self._t.unregisterProducer()
        if abort:
            self._t.abortConnection()
            return
        self._t.loseConnection()
        if last is not None:
            self._t.write(last)
        # loseConnection waits for the client to take the replies still
        # buffered; one that never reads would hold its slot (and per-IP
        # count) for ever.
        self._linger = self.factory.clock.callLater(_LINGER, self._t.abortConnection)

    def shutdown(self) -> None:
        """
        The gateway is stopping: tell the client, as RFC 5321 3.8 asks.

        A connection the HAT is still placing is told too: given its
        banner once the answer came, it would keep the stop waiting for
        a whole session (the client may run the slow DNS server itself).
        A session whose message is being committed gets the commit's reply
        first (the stop waits for the commit anyway), then the 421.
        """
        if self.state is State.CLOSED:
            return
        if self._committing:
            # The message is reaching the disk whatever is said now (the
            # stop waits for it): a bare 421 would have the client send it
            # again.  Its 250 first, then the 421 (L{_afterMessage}).
            self._stopping = True
            return
        self._close(reply=self._shutdown_reply())

    def _shutdown_reply(self) -> tuple[int, bytes]:
        return (
            421,
            b"4.3.2 "
            + self._host_bytes()
            + b" Service shutting down, closing transmission channel",
        )

    def timeoutConnection(self) -> None:
        self._close(reply=(421, b"4.4.2 " + self._host_bytes() + b" Error: timeout exceeded"))

    def _noInjection(self) -> None:
        if self.state is State.COMMAND and not self._busy:
            self._close(
                reply=(421, b"Timed out waiting for successful message injection, disconnecting.")
            )
        elif self.state is not State.CLOSED:
            self._close_after_message = True

    def _connectionTimeLimit(self) -> None:
        if self.state is State.COMMAND and not self._busy:
            self._close(reply=(421, b"Exceeded allowable connection time, disconnecting."))
        elif self.state is not State.CLOSED:
            # At 80% of the limit a message may be on its way: let it finish,
            # but not beyond the limit itself.
            self._close_after_message = True
            remaining = self.factory.settings.total_time_limit * 0.2
            self._timers.append(self.factory.clock.callLater(remaining, self._hardTimeLimit))

    def _hardTimeLimit(self) -> None:
        if self.state is not State.CLOSED:
            self._close(reply=(421, b"Exceeded allowable connection time, disconnecting."))

    def handshakeCompleted(self) -> None:
        """
        The STARTTLS (or implicit TLS) handshake finished: log what was
        negotiated and, where the policy verifies client certificates, turn
        away a client whose certificate did not verify (with Required the
        handshake itself has already failed for a missing one).
        """
        self._tls_pending = False
        self.tls_info = tls_info(self.transport)
        self.factory.maillog.icid_tls_success(self.icid, self.tls_info)
        if self.policy.verify_client_certificate:
            status = peer_certificate_status(self.transport)
            if status.presented and not status.verified:
                # A verification that did not succeed is a TLS failure in
                # the report too, as in the mail log.
                self.tls_failed = True
                self.factory.maillog.icid_tls_failed(
                    self.icid, f"client certificate not verified: {status.error}"
                )
                self._close(
                    reply=(
                        421,
                        b"4.7.1 " + self._host_bytes() + b" Client certificate not accepted",
                    )
                )

    # -- input --------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        self.resetTimeout()
        self._held += data
        if self.state is State.CLASSIFYING:
            if len(self._held) > _MAX_HELD:
                self._close(abort=True)
            return
        self._process()

    def _process(self) -> None:
        if self._replies is not None:  # re-entered: the outer call sends
            self._consume()
            self._flow()
            return
        self._replies = []
        try:
            self._consume()
            self._flow()
        finally:
            self._send_replies()

    def _send_replies(self) -> None:
        """
        Send the replies collected while processing a read, as one write,
        and stop collecting: the end of L{_process}.  (L{_flush_replies}
        sends them earlier, before anything that must follow them on the
        wire: closing, starting TLS.)
        """
        self._flush_replies()
        self._replies = None

    def _consume(self) -> None:
        while not self._blocked() and self._held and self.state is not State.CLOSED:
            if self.state is State.DATA:
                assert self._reader is not None
                data, self._held = self._held, b""
                rest = self._reader.feed(data)
                if rest is None:
                    return
                self._held = rest
                self._endOfData()
                continue
            end = self._held.find(b"\r\n")
            limit = self._line_limit()
            if end < 0:
                if len(self._held) > limit:
                    # One 500 per over-long line, however many reads it
                    # takes to arrive; a final CR may be half of its CRLF.
                    self._held = self._held[-1:] if self._held.endswith(b"\r") else b""
                    if not self._skip_line:
                        self._skip_line = True
                        self._sasl = None
                        self._badCommand(500, b"5.5.2 Line too long")
                return
            line, self._held = self._held[:end], self._held[end + 2 :]
            if self._skip_line:
                # The tail of an over-long line: never run it as a command.
                self._skip_line = False
                continue
            if len(line) + 2 > limit:
                self._badCommand(500, b"5.5.2 Line too long")
                self._sasl = None
                continue
            if self._sasl is not None:
                self._saslResponse(line)
                continue
            self._command(line)

    def _blocked(self) -> bool:
        """
        Whether the next command must wait: for the reply to the one before
        (twisted.md 1.2), or for the client to read the replies it has.
        """
        return self._busy or self._output_full

    def _flow(self) -> None:
        """
        Stop reading from the socket once the held input reaches its cap
        while it cannot be consumed (a reply is pending, or the client is
        not reading its replies); start again when it can.  Called after
        every turn of L{_consume}, whichever way that ended (an early return
        that skipped it left a paused session paused for ever).
        """
        if self.state is State.CLOSED:
            return
        # Only held input pauses the socket: a TLS handshake must go on
        # reading while its first replies wait in the TLS layer.
        pause = self._blocked() and len(self._held) > _MAX_HELD
        if pause and not self._paused:
            self._paused = True
            self._t.pauseProducing()
        elif self._paused and not pause:
            self._paused = False
            self._t.resumeProducing()

    # -- IPushProducer: the replies, paused by the transport ------------------

    def pauseProducing(self) -> None:
        """
        The transport's write buffer is full: the client is not reading its
        replies.  Answer nothing more until it does (and, once the held
        input reaches its cap, read nothing more), so that a client cannot
        make the gateway buffer replies without limit (a pipelined HELP
        costs 6 octets and its reply 150).
        """
        self._output_full = True
        self._flow()

    def resumeProducing(self) -> None:
        self._output_full = False
        self._process()

    def stopProducing(self) -> None:
        """
        The connection is going; L{connectionLost} cleans up.
        """

    def _line_limit(self) -> int:
        """
        RFC 5321 allows 512 octets per command line; RFC 4954 allows AUTH
        lines (and SASL responses) up to 12288.
        """
        if self._sasl is not None or self._held[:5].upper() == b"AUTH ":
            return MAX_AUTH_LINE
        return MAX_COMMAND_LINE

    def _command(self, line: bytes) -> None:
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            self._badCommand(500, b"5.5.2 Syntax error: non-ASCII command")
            return
        if "\r" in text or "\n" in text or "\x00" in text:
            self._badCommand(500, b"5.5.2 Syntax error: bare CR, LF or NUL in command")
            return
        verb, _, argument = text.strip(" ").partition(" ")
        upper = verb.upper()
        handler: Callable[[str], None] | None = getattr(self, "smtp_" + upper, None)
        if not verb.isalpha() or handler is None:
            self._badCommand(500, b"5.5.1 command not recognized")
            return
        refusal = self.tls_policy.command_refusal(upper.encode("ascii"), self.secure)
        if refusal is not None:
            self._reply(*refusal)
            return
        handler(argument.strip(" "))

    def _badCommand(self, code: int, text: bytes) -> None:
        self._bad_commands += 1
        if self._bad_commands >= self.factory.settings.bad_command_limit:
            self._close(reply=(421, b"Exceeded bad SMTP command limit, disconnecting."))
            return
        self._reply(code, text)

    # -- replies -------------------------------------------------------------

    def _reply(self, code: int, text: bytes) -> None:
        if self.state is State.CLOSED:
            return
        reply = _format_reply(code, text)
        if self._replies is None:
            self._t.write(reply)
            return
        self._replies.append(reply)
        if len(self._replies) >= _MAX_COLLECTED:
            # A long pipelined burst: hand them over now, so that the
            # transport can push back (pauseProducing) on a client that
            # does not read.
            self._flush_replies()

    def _flush_replies(self) -> None:
        """
        Send the replies collected so far now, and keep collecting.
        """
        if self._replies:
            replies = self._replies
            self._replies = []
            self._t.write(b"".join(replies))

    def _host_bytes(self) -> bytes:
        host = self.policy.override_hostname
        return _idna(self._hostname if host is None else host)

    def _banner_text(self) -> bytes:
        host = self._host_bytes()
        text = self.policy.banner_text.encode("utf-8") or b"ESMTP"
        return (host + b" " + text) if host else text

    def _reject_text(self) -> bytes:
        return _configured_text(self.policy.reject_banner_code, self.policy.reject_banner_text)

    def _reset(self) -> None:
        self._sender = None
        self._recipients = []
        self._recipient_octets = 0

    # -- commands ------------------------------------------------------------

    def smtp_EHLO(self, argument: str) -> None:
        if not argument:
            self._reply(501, b"5.5.4 Syntax: EHLO hostname")
            return
        self._reset()
        self._helo_name = argument
        self._esmtp = True
        lines = [self._host_bytes() or b"Hello"]
        lines += [b"PIPELINING", b"SIZE %d" % self.policy.max_message_size, b"8BITMIME"]
        lines.append(b"ENHANCEDSTATUSCODES")
        if self.tls_policy.offer_starttls(self.secure):
            lines.append(b"STARTTLS")
        if self._auth_offered():
            lines.append(b"AUTH " + b" ".join(MECHANISMS))
        self._reply(250, b"\n".join(lines))

    def smtp_HELO(self, argument: str) -> None:
        if not argument:
            self._reply(501, b"5.5.4 Syntax: HELO hostname")
            return
        self._reset()
        self._helo_name = argument
        self._esmtp = False
        self._reply(250, self._host_bytes() or b"Hello")

    def smtp_NOOP(self, argument: str) -> None:
        self._reply(250, b"2.0.0 Ok")

    def smtp_RSET(self, argument: str) -> None:
        if argument:
            self._reply(501, b"5.5.4 Syntax: RSET")
            return
        self._reset()
        self._reply(250, b"2.0.0 Ok")

    def smtp_QUIT(self, argument: str) -> None:
        self._close(reply=(221, b"2.0.0 Bye"))

    def smtp_HELP(self, argument: str) -> None:
        self._reply(214, _HELP)

    def smtp_VRFY(self, argument: str) -> None:
        if not argument:
            self._reply(501, b"5.5.4 Syntax: VRFY address")
            return
        self._reply(252, b"2.5.2 Cannot VRFY user, but will accept message and attempt delivery")

    def smtp_STARTTLS(self, argument: str) -> None:
        if argument:
            self._reply(501, b"5.5.4 Syntax: STARTTLS takes no parameters")
            return
        if self.secure:
            self._reply(503, b"5.5.1 TLS already active")
            return
        if not self.tls_policy.offer_starttls(self.secure):
            if self.policy.tls is TLSMode.OFF or self.factory.certificates is None:
                self._reply(502, b"5.5.1 STARTTLS not available")
            else:
                # TLS is on but the certificate is not in service (yet).
                self._reply(*_TLS_UNAVAILABLE)
            return
        try:
            creator = self.factory.tls_creator(self.policy)
        except TLSConfigurationError as e:
            log.error("ICID {icid}: STARTTLS refused: {reason}", icid=self.icid, reason=str(e))
            self._reply(*_TLS_UNAVAILABLE)
            return
        self._reply(220, b"2.0.0 Ready to start TLS")
        # RFC 3207 4.2 and CVE-2011-0411: whatever the client sent in the
        # clear after STARTTLS is not to be trusted, and the session starts
        # again from the greeting.
        self._held = b""
        self._reset()
        self.user = None
        self._helo_name = None
        self._esmtp = False
        self.secure = True
        self.startedTLS = True
        self._tls_pending = True
        # The 220 must leave in the clear, before the handshake starts.
        self._flush_replies()
        self._t.startTLS(creator)

    def _auth_offered(self) -> bool:
        """
        Whether this session's EHLO offers AUTH (as it would now).
        """
        return self._auth_available() and self.tls_policy.offer_auth(self.secure)

    def _auth_available(self) -> bool:
        return (
            self.factory.auth_checker is not None
            and self.policy.smtp_auth is not SMTPAuthMode.DISALLOW
        )

    def smtp_AUTH(self, argument: str) -> None:
        if not self._auth_available():
            self._reply(502, b"5.5.1 AUTH not available")
            return
        if not self.tls_policy.offer_auth(self.secure):
            self._reply(538, b"5.7.11 Encryption required for requested authentication mechanism")
            return
        if self.user is not None:
            self._reply(503, b"5.5.1 Already authenticated")
            return
        if self._sender is not None:
            self._reply(503, b"5.5.1 AUTH not permitted during a mail transaction")
            return
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        if not mechanism:
            # A syntax error (RFC 4954 4: AUTH takes a mechanism), not a
            # mechanism this server does not know (504).
            self._reply(501, b"5.5.4 Syntax: AUTH mechanism [initial-response]")
        elif mechanism == "PLAIN":
            if initial:
                self._saslPlain(initial)
            else:
                self._sasl = self._saslPlain
                self._reply(334, b"")
        elif mechanism == "LOGIN":
            if initial:
                self._saslLoginUser(initial)
            else:
                self._sasl = self._saslLoginUser
                self._reply(334, b"VXNlcm5hbWU6")
        else:
            self._reply(504, b"5.5.4 Unrecognized authentication type")

    def _saslResponse(self, line: bytes) -> None:
        handler, self._sasl = self._sasl, None
        assert handler is not None
        text = line.decode("ascii", "replace").strip()
        if text == "*":
            self._reply(501, b"5.0.0 Authentication cancelled")
            return
        handler(text)

    def _saslPlain(self, text: str) -> None:
        try:
            credentials = parse_plain(decode_response(text))
        except SASLError as e:
            self._reply(501, str(e).encode("ascii"))
            return
        self._authenticate(credentials, "PLAIN")

    def _saslLoginUser(self, text: str) -> None:
        try:
            user = decode_response(text)
        except SASLError as e:
            self._reply(501, str(e).encode("ascii"))
            return

        def password(text: str) -> None:
            try:
                secret = decode_response(text)
            except SASLError as e:
                self._reply(501, str(e).encode("ascii"))
                return
            self._authenticate(UsernamePassword(user, secret), "LOGIN")

        self._sasl = password
        self._reply(334, b"UGFzc3dvcmQ6")

    def _authenticate(self, credentials: UsernamePassword, mechanism: str) -> None:
        checker = self.factory.auth_checker
        if checker is None:
            # A reload took AUTH away during the exchange.
            self._reply(502, b"5.5.1 AUTH not available")
            return
        self._busy = True
        d = self._auth_check = maybeDeferred(checker.requestAvatarId, credentials)

        def succeeded(avatar: bytes) -> None:
            self.user = avatar.decode("utf-8", "replace")
            self.factory.maillog.icid_auth(self.icid, self.user, mechanism, True)
            self._reply(235, b"2.7.0 Authentication successful")

        def failed(reason: Failure) -> None:
            if reason.check(CancelledError):
                return  # the client has gone (connectionLost)
            user = credentials.username.decode("utf-8", "replace")
            self.factory.maillog.icid_auth(self.icid, user, mechanism, False)
            if reason.check(UnauthorizedLogin):
                self._badCommand(535, b"5.7.8 Authentication credentials invalid")
            elif reason.check(PasswordFileError):
                # The administrator's to fix, and the message says where.
                log.error(
                    "ICID {icid}: SMTP AUTH password file: {error}",
                    icid=self.icid,
                    error=str(reason.value),
                )
                self._reply(454, b"4.7.0 Temporary authentication failure")
            else:
                log.failure("ICID {icid}: checking credentials failed", reason, icid=self.icid)
                self._reply(454, b"4.7.0 Temporary authentication failure")

        def done(_: object) -> None:
            self._auth_check = None
            self._busy = False
            self._process()

        d.addCallbacks(succeeded, failed).addBoth(done)

    def smtp_MAIL(self, argument: str) -> None:
        if self._helo_name is None:
            self._reply(503, b"5.5.1 Error: send HELO/EHLO first")
            return
        if self._sender is not None:
            self._reply(503, b"5.5.1 Error: nested MAIL command")
            return
        if self.policy.smtp_auth is SMTPAuthMode.REQUIRE and self.user is None:
            self._reply(530, b"5.7.0 Authentication required")
            return
        if self._messages >= self.policy.max_msgs_per_session:
            self._close(
                reply=(
                    421,
                    b"4.7.0 " + self._host_bytes() + b" Too many messages in this session, closing",
                )
            )
            return
        try:
            path = parse_mail_from(argument)
        except AddressError as e:
            self._reply(e.code, e.text.encode("ascii"))
            return
        size = 0
        for key, value in path.params:
            if key == "SIZE" and self._esmtp:
                if value is None or not value.isdigit() or len(value) > 20:
                    self._reply(501, b"5.5.4 Bad SIZE parameter")
                    return
                size = int(value)
            elif key == "BODY" and self._esmtp and (value or "").upper() in ("7BIT", "8BITMIME"):
                pass
            elif key == "AUTH" and self._esmtp and self._auth_offered():
                # RFC 4954 section 5: the identity a relaying client
                # vouches for.  Nothing here trusts another MTA's word for
                # it, so it is taken as AUTH=<> (as the RFC asks of such a
                # server) once it is well formed.
                if value is None or not (value == "<>" or _XTEXT.fullmatch(value)):
                    self._reply(501, b"5.5.4 Bad AUTH parameter")
                    return
            else:
                self._reply(555, b"5.5.4 Unsupported parameter " + key.encode("ascii"))
                return
        if size > self.policy.max_message_size:
            self._reply(552, b"5.3.4 Message size exceeds fixed maximum message size")
            return
        sender = "" if path.mailbox is None else str(path.mailbox)
        refusal = self.tls_policy.sender_refusal(sender, self.secure)
        if refusal is not None:
            self._reply(*refusal)
            return
        if not self._store_has_space(size):
            self._reply(452, b"4.3.1 Insufficient system storage")
            return
        self._sender = sender
        self._reply(250, b"2.1.0 Ok")

    def _store_has_space(self, size: int) -> bool:
        """
        The store's L{IMessageStore.has_space}; a store that fails to tell
        (it may be someone else's code) has none, as the spool's own
        answer is when it cannot ask the disk: 452, try later.
        """
        try:
            return bool(self.factory.store.has_space(size))
        except Exception:
            log.failure("ICID {icid}: asking the message store for space failed", icid=self.icid)
            return False

    def smtp_RCPT(self, argument: str) -> None:
        if self._sender is None:
            self._reply(503, b"5.5.1 Error: need MAIL command")
            return
        try:
            path = parse_rcpt_to(argument, self.factory.config.default_domain or self._hostname)
        except AddressError as e:
            self._reply(e.code, e.text.encode("ascii"))
            return
        if path.params:
            self._reply(555, b"5.5.4 Unsupported parameter " + path.params[0][0].encode("ascii"))
            return
        mailbox = path.mailbox
        assert mailbox is not None
        if self.policy.rule is AccessRule.REJECT:
            self._reply(self.policy.reject_banner_code, self._reject_text())
            return
        if self.policy.rule is not AccessRule.RELAY and self.user is None:
            if mailbox.routed:
                self._reply(
                    550,
                    b"5.7.1 <"
                    + str(mailbox).encode("ascii")
                    + b">: Relaying denied: routed addresses are not accepted",
                )
                return
            if not self.factory.rat_accepts(mailbox):
                self._reply(550, b"5.7.1 <" + str(mailbox).encode("ascii") + b">: Relaying denied")
                return
        # As the spool header will hold it: quoted, with its escapes.
        octets = len(json.dumps(str(mailbox))) + 1
        if (
            len(self._recipients) >= self.policy.max_rcpts_per_msg
            or self._recipient_octets + octets > MAX_RECIPIENT_OCTETS
        ):
            self._reply(452, b"4.5.3 Too many recipients")
            return
        if not self.factory.rates.try_add(self.peer_ip, self.policy.max_rcpts_per_hour):
            self._reply(
                self.policy.max_rcpts_per_hour_code,
                _configured_text(
                    self.policy.max_rcpts_per_hour_code, self.policy.max_rcpts_per_hour_text
                ),
            )
            return
        self._recipients.append(mailbox)
        self._recipient_octets += octets
        self._reply(250, b"2.1.5 Ok")

    def smtp_DATA(self, argument: str) -> None:
        if argument:
            self._reply(501, b"5.5.4 Syntax: DATA")
            return
        if self._sender is None:
            self._reply(503, b"5.5.1 Error: need MAIL command")
            return
        if not self._recipients:
            self._reply(554, b"5.5.1 Error: no valid recipients")
            return
        envelope = Envelope(
            mail_from=self._sender,
            rcpt_to=tuple(str(r) for r in self._recipients),
            helo=self._helo_name or "",
            peer_ip=self.peer_ip,
            listener=self.factory.config.name,
            icid=self.icid,
            sender_group=self.verdict.sender_group if self.verdict else None,
            policy=self.policy.name,
            tls=self.tls_info,
            received_at=time.time(),
        )
        try:
            self._message = self.factory.store.new_message(envelope)
            self._message.write(self._received_header(envelope, self._message.mid))
        except StoreError as e:
            # The reason (an OS error, a spool path) is for the log: a
            # client learns only that it should try again.
            log.warn("ICID {icid}: cannot start a message: {error}", icid=self.icid, error=str(e))
            self._abort_message()
            self._reply(*_STORE_FAULT)
            return
        except Exception:
            # Not the contract's StoreError: a fault of a plug-in store,
            # still a 451 (as at commit), not a dropped connection.
            log.failure("ICID {icid}: starting a message failed", icid=self.icid)
            self._abort_message()
            self._reply(*_STORE_FAULT)
            return
        self._store_fault = None
        self._reader = DataReader(
            self._write_body,
            self.policy.max_message_size,
            self.factory.settings.max_received_headers,
        )
        self.state = State.DATA
        self._envelope = envelope
        self._reply(354, b"End data with <CR><LF>.<CR><LF>")

    # -- message body -------------------------------------------------------------

    def _write_body(self, data: bytes) -> None:
        if self._message is None or self._store_fault is not None:
            return
        try:
            self._message.write(data)
        except StoreError as e:
            log.warn("ICID {icid}: cannot store a message: {error}", icid=self.icid, error=str(e))
            self._store_fault = _STORE_FAULT
        except Exception:
            log.failure("ICID {icid}: writing a message failed", icid=self.icid)
            self._store_fault = _STORE_FAULT
        else:
            return
        assert self._reader is not None
        self._reader.note(*self._store_fault)

    def _endOfData(self) -> None:
        reader, message = self._reader, self._message
        assert reader is not None
        self._reader = None
        self.state = State.COMMAND
        envelope = self._envelope
        assert envelope is not None
        self._reset()
        if reader.fault is not None or message is None:
            self._abort_message()
            code, text = reader.fault or (451, b"4.3.0 Temporary error storing the message")
            self._reply(code, text)
            self._afterMessage()
            return
        self._busy = True
        self._committing = True
        d = maybeDeferred(message.commit)

        def committed(mid: int) -> None:
            self._message = None
            self._messages += 1
            maillog = self.factory.maillog
            maillog.start_mid(mid, self.icid)
            maillog.mail_from(mid, self.icid, envelope.mail_from)
            for rid, address in enumerate(envelope.rcpt_to):
                maillog.rcpt_to(mid, self.icid, rid, address)
            maillog.ready(mid, reader.size, envelope.mail_from)
            maillog.queued(mid)
            if self._unsuccessful is not None and self._unsuccessful.active():
                self._unsuccessful.reset(self.factory.settings.unsuccessful_timeout)
            # The 250 leaves at once (the listener's transport writes
            # through): the message's lines go to mail.log first.
            maillog.flush()
            self._reply(250, b"2.0.0 Ok: Message %d accepted" % (mid,))

        def failed(reason: Failure) -> None:
            self._message = None
            error = reason.value
            transient = not isinstance(error, StoreError) or error.transient
            log.failure("ICID {icid}: storing a message failed", reason, icid=self.icid)
            if transient:
                self._reply(*_STORE_FAULT)
            else:
                self._reply(554, b"5.3.0 Message could not be stored")

        def done(_: object) -> None:
            self._busy = False
            self._committing = False
            self._afterMessage()
            self._process()

        d.addCallbacks(committed, failed)
        d.addBoth(done)

    def _afterMessage(self) -> None:
        if self._stopping and self.state is not State.CLOSED:
            self._close(reply=self._shutdown_reply())
        elif self._close_after_message and self.state is not State.CLOSED:
            self._close(reply=(421, b"Exceeded allowable connection time, disconnecting."))

    def _abort_message(self) -> None:
        message, self._message = self._message, None
        if message is not None:
            try:
                message.abort()
            except Exception:
                log.failure("ICID {icid}: aborting a message failed", icid=self.icid)

    def _received_header(self, envelope: Envelope, mid: int) -> bytes:
        verdict = self.verdict
        rdns = (
            verdict.reverse_dns
            if verdict and verdict.verified and verdict.reverse_dns
            else "unknown"
        )
        with_ = "ESMTPS" if self.secure else ("ESMTP" if self._esmtp else "SMTP")
        if self.user is not None:
            with_ += "A"
        # RFC 5321 4.4: TCP-info is an address-literal, whose IPv6 form is
        # tagged (4.1.3), as Postfix writes it.
        literal = f"IPv6:{envelope.peer_ip}" if ":" in envelope.peer_ip else envelope.peer_ip
        lines = [
            f"Received: from {envelope.helo} ({rdns} [{literal}])",
            f"\tby {self._hostname} (esa_tls) with {with_}",
            f"\tid MID {mid} ICID {self.icid} listener {envelope.listener}",
        ]
        if self.tls_info is not None:
            lines.append(f"\t(using {self.tls_info.protocol} with cipher {self.tls_info.cipher})")
        if len(envelope.rcpt_to) == 1:
            lines.append(f"\tfor <{envelope.rcpt_to[0]}>")
        lines[-1] += f"; {_rfc5322_date(int(envelope.received_at))}"
        text = "\r\n".join(lines) + "\r\n"
        return text.encode("utf-8", "replace")

    def _internalError(self, reason: Failure) -> Any:
        log.failure("ICID {icid}: classifying the connection failed", reason, icid=self.icid)
        if self.state is not State.CLOSED:
            self._close(
                reply=(421, b"4.3.0 " + self._host_bytes() + b" Service temporarily unavailable")
            )
        return None


@lru_cache(maxsize=64)
def _idna(hostname: str) -> bytes:
    """
    C{hostname} as it goes on the wire; the codec is slow, and the banner
    and every EHLO reply need it.
    """
    return hostname.encode("idna")


@lru_cache(maxsize=4)
def _rfc5322_date(second: int) -> str:
    """
    The C{Received:} header's date: the same text for every message of one
    second, so made once per second.
    """
    return formatdate(second)


def _reason_text(reason: Failure) -> str:
    value = reason.value
    return f"{type(value).__name__}: {value}"
