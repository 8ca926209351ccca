# -*- test-case-name: tests.test_outbound_client -*-
"""
The delivery client: one SMTP session to one server, carrying one message,
under one TLS setting.

L{DeliveryClient} is a C{twisted.mail.smtp.ESMTPSender} with the defects
of the stock client fixed in the subclass (twisted.md sections 2.2-2.6):

  - B{response injection}: whatever the server sent after its C{220} to
    STARTTLS and before the handshake is discarded unread
    (C{clearLineBuffer}), so a man in the middle cannot forge the post-TLS
    EHLO reply; and nothing is sent over TLS until the handshake has
    completed and the TLS setting has approved the certificate;
  - B{dot-stuffing} and line endings are done by
    L{esa_tls.outbound.dotstuff.DataEncoder}, correct across any chunk
    boundary;
  - B{no silent give-up}: a failed STARTTLS under a setting that does not
    require TLS continues in the clear on the same connection (Twisted
    #10334), and the stock client's immediate retries are gone: the
    session reports and the caller (and the queue) decide;
  - B{no hang}: the result fires from C{connectionLost}, which every
    session reaches, whatever went wrong; timeouts abort the connection;
  - B{timeouts} per command as RFC 5321 section 4.5.3.2 lists them, and
    per I{reply}: the stock client restarts its timer on every line, so a
    server dribbling C{250-} lines (or C{0xx} lines, which it skips) held
    a session forever;
  - B{8BITMIME}: a body with octets above 127 is declared
    (C{BODY=8BITMIME}, RFC 6152) to a server that offers it, which the
    stock client never does; one that does not offer it gets the body as
    it is, without a parameter it would refuse (no MIME conversion);
  - B{one HELO}: after a refused EHLO the stock client sends HELO again
    for every refused HELO, without end; here a refused HELO ends the
    session;
  - B{well-formed replies}: a line whose code is not RFC 5321's three
    digits (the stock client read C{+25}, C{ 25} and C{2_5} as 25 with
    C{int()}, and skipped C{0xx} lines) ends the session, and the replies
    behind it are not read;
  - B{bounded replies}: a reply line over L{DeliveryClient.MAX_LENGTH}
    or a multi-line reply over L{MAX_REPLY_LINES} lines or
    L{MAX_REPLY_BYTES} bytes ends the session with an error that says
    so, instead of a bare "connection lost" (too long a line) or a
    response list that grows as long as the server likes;
  - B{per-recipient replies} are kept (C{RCPT} 4xx and 5xx apart), and
    PIPELINING is used when offered (RFC 2920).

The TLS rule, from the destination's setting (L{TLSPlan}):

  - C{no}: STARTTLS is never sent.
  - C{preferred}: STARTTLS when offered.  If it fails before the server's
    C{220} (not offered, 454, 502) the session goes on in the clear; if
    it fails after the C{220} (handshake error), or the connection drops
    while TLS is being set up, the session ends with
    L{SessionOutcome.handshake_failed} and the caller reconnects in the
    clear.
  - C{required}: no MAIL FROM ever leaves without TLS; the session ends
    with a TLS failure instead.
  - C{preferred-verify}: as preferred, and the certificate is checked;
    a failed check is logged and the mail still goes, encrypted.
  - C{required-verify}, C{required-verify-hosted}: TLS and a passed
    check, or no MAIL FROM.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO, Any

from attrs import frozen
from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.mail.smtp import ESMTPSender, SMTPClient, SMTPClientError
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from zope.interface import implementer

from esa_tls.maillog import MailLog
from esa_tls.outbound.dotstuff import DataEncoder
from esa_tls.outbound.policy import TLSPlan
from esa_tls.outbound.result import Fallback, TLSOutcome, TLSResultType
from esa_tls.outbound.tlscontext import (
    HandshakeFacts,
    InspectingClientTLS,
    classify_chain_errors,
)
from esa_tls.outbound.verify import NameMatch
from esa_tls.values import TLSInfo

log = Logger()

#: A body up to this size is read in one call and written with its final
#: dot in one go; a longer one is read ahead by that much and the rest is
#: streamed (L{FileSender}), so that a large message never sits whole in
#: memory.
WHOLE_BODY = 64 * 1024

#: The most lines one reply may have.  Real EHLO replies have a dozen or
#: two; RFC 5321 sets no limit, so the bound is generous.
MAX_REPLY_LINES = 1000

#: The most bytes one (multi-line) reply may have.
MAX_REPLY_BYTES = 64 * 1024


@frozen
class Timeouts:
    """
    How long to wait for each server reply, in seconds: the minimums of RFC
    5321 section 4.5.3.2 by default.

    @ivar connect: the TCP connection.
    @ivar greeting: the C{220} banner.
    @ivar command: EHLO, STARTTLS and the TLS handshake, QUIT.
    @ivar mail: the reply to MAIL FROM.
    @ivar rcpt: the reply to each RCPT TO.
    @ivar data_init: the C{354} to DATA.
    @ivar data_block: progress while sending the body.
    @ivar data_term: the reply to the final dot.
    """

    connect: float = 30.0
    greeting: float = 300.0
    command: float = 300.0
    mail: float = 300.0
    rcpt: float = 300.0
    data_init: float = 120.0
    data_block: float = 180.0
    data_term: float = 600.0

    @classmethod
    def uniform(cls, seconds: float) -> Timeouts:
        """
        The same timeout everywhere (tests).
        """
        return cls(*([seconds] * 8))


class Stage(enum.Enum):
    """
    Where a session is; a failure says where it happened.
    """

    GREETING = "greeting"
    EHLO = "EHLO"
    STARTTLS = "STARTTLS"
    HANDSHAKE = "TLS handshake"
    MAIL = "MAIL FROM"
    RCPT = "RCPT TO"
    DATA = "DATA"
    BODY = "message body"
    DOT = "end of data"
    QUIT = "QUIT"
    IDLE = "idle, kept for the next message"
    RSET = "RSET"


@frozen
class SessionOutcome:
    """
    What one session achieved.

    @ivar tls: the TLS story of the session.
    @ivar mail_sent: whether MAIL FROM was sent at all.
    @ivar mail_reply: the reply to MAIL FROM.
    @ivar rcpt_replies: C{(address, code, text)} per RCPT sent.
    @ivar data_reply: the reply after the final dot, or the failed reply to
        DATA itself.
    @ivar dot_sent: whether the final dot was sent (a failure after that
        may mean the server has the message).
    @ivar failure: why the session ended before a final reply, if it did.
    @ivar failure_code: the server's reply code in that failure, if any.
    @ivar failed_stage: where it failed.
    @ivar tls_failure: the TLS setting kept the mail from being sent.
    @ivar handshake_failed: STARTTLS got its C{220} and then TLS failed.
    @ivar ready: the session got as far as MAIL FROM (sent, or, for a
        probe, not sent on purpose).
    """

    tls: TLSOutcome
    mail_sent: bool = False
    mail_reply: tuple[int, str] | None = None
    rcpt_replies: tuple[tuple[str, int, str], ...] = ()
    data_reply: tuple[int, str] | None = None
    dot_sent: bool = False
    failure: str | None = None
    failure_code: int | None = None
    failed_stage: Stage | None = None
    tls_failure: bool = False
    handshake_failed: bool = False
    ready: bool = False

    @property
    def accepted(self) -> bool:
        """
        Whether the server took the message (for some recipients).
        """
        return self.data_reply is not None and 200 <= self.data_reply[0] < 300 and self.dot_sent


def _text(resp: bytes | str) -> str:
    if isinstance(resp, bytes):
        return resp.decode("utf-8", "replace").replace("\n", " ")
    return resp.replace("\n", " ")


#: RFC 5321 section 4.2: Reply-code (2-5, 0-5, 0-9), then a space or a
#: hyphen and text, or nothing.
_REPLY_LINE = re.compile(rb"[2-5][0-5][0-9](?:[ -]|\Z)")


def _is_ok(code: int) -> bool:
    return 200 <= code < 300


@implementer(IHandshakeListener)
class DeliveryClient(ESMTPSender):
    """
    One session carrying one message.  Build it, connect it (for example
    with C{connectProtocol}), and wait on L{finished}.

    @ivar finished: fires with a L{SessionOutcome} once the connection is
        gone; never fails.
    """

    #: The longest reply line taken (RFC 5321 section 4.5.3.1.5 says 512
    #: octets; servers exceed it, never by this much).
    MAX_LENGTH = 16384

    #: ESMTPClient's C{__setattr__} is a deprecation shim for C{tlsMode}
    #: (never used here) that costs a Python call per attribute assignment:
    #: a few percent of a delivering reactor (bench/README.md).
    __setattr__ = object.__setattr__

    def __init__(
        self,
        *,
        identity: str,
        mail_from: str,
        recipients: Sequence[tuple[int, str]],
        body: IO[bytes],
        plan: TLSPlan,
        tls_creator: Callable[[], InspectingClientTLS] | None = None,
        name_check: Callable[[x509.Certificate], NameMatch | None] | None = None,
        timeouts: Timeouts | None = None,
        maillog: MailLog | None = None,
        dcid: int = 0,
        mid: int | None = None,
        fallback: Fallback | None = None,
        call_later: Callable[..., Any] | None = None,
        probe: bool = False,
        reusable: bool = False,
    ) -> None:
        """
        @param identity: the EHLO name (the gateway's host name).
        @param mail_from: the envelope sender, C{""} for the null sender.
        @param recipients: C{(rid, address)} pairs.
        @param body: the message, CRLF line endings, not dot-stuffed,
            positioned at its start.
        @param plan: what the TLS setting asks.
        @param tls_creator: makes the client TLS connection creator (with
            SNI and trust anchors); required unless C{plan} never starts
            TLS.
        @param name_check: the Verify or Hosted Verify name rule for the
            peer certificate; required under the verifying settings.
        @param fallback: set when this session is the clear reconnection
            after a TLS failure (for the outcome and log).
        @param call_later: the C{callLater} for timeouts (a test clock).
        @param probe: stop where MAIL FROM would be sent, and QUIT
            (C{tlsverify}): no mail is sent.
        @param reusable: after the reply to the final dot, keep the session
            (L{parked}) instead of sending QUIT, so that L{reuse} can send
            another message over it (L{esa_tls.outbound.reuse}).
        """
        super().__init__(None, None, None, identity.encode("idna"))
        self.requireAuthentication = False
        self.requireTransportSecurity = plan.require
        self.heloFallback = not plan.require
        self.debug = True
        self._plan = plan
        self._tls_creator_factory = tls_creator
        self._name_check = name_check
        self._timeouts = timeouts or Timeouts()
        self.timeout = self._timeouts.greeting  # type: ignore[assignment]
        self._maillog = maillog
        self._dcid = dcid
        self._mid = mid
        self._mail_from = mail_from
        self._recipients = list(recipients)
        self._body = body
        if call_later is not None:
            self.callLater = call_later  # type: ignore[method-assign]
        self.finished: Deferred[SessionOutcome] = Deferred()
        self._stage = Stage.GREETING
        self._extensions: dict[bytes, bytes | None] = {}
        self._creator: InspectingClientTLS | None = None
        self._tls_ok = False
        self._tls = TLSOutcome(level=plan.level, fallback=fallback)
        self._mail_sent = False
        self._mail_reply: tuple[int, str] | None = None
        self._rcpt_replies: list[tuple[str, int, str]] = []
        self._data_reply: tuple[int, str] | None = None
        self._dot_sent = False
        self._failure: str | None = None
        self._failure_code: int | None = None
        self._failed_stage: Stage | None = None
        self._tls_failure = False
        self._handshake_failed = False
        self._pending: deque[tuple[Stage, str]] = deque()
        self._pipelining = False
        self._encoder = DataEncoder()
        self._probe = probe
        self._ready = False
        self._reply_lines = 0
        self._reply_bytes = 0
        self._continuing = False
        self._reusable = reusable
        self._rset_first = False
        self.parked = False
        self.transactions = 0
        self.closed: Deferred[None] = Deferred()

    # -- bookkeeping -----------------------------------------------------

    @property
    def _connection(self) -> Any:
        """
        The transport: TCP, with TLS on top after STARTTLS.
        """
        return self.transport

    def _fail(self, text: str, code: int | None = None) -> None:
        """
        Remember the first reason the session could not finish.
        """
        if self._failure is None:
            self._failure = text
            self._failure_code = code
            self._failed_stage = self._stage

    def _outcome(self) -> SessionOutcome:
        return SessionOutcome(
            tls=self._tls,
            mail_sent=self._mail_sent,
            mail_reply=self._mail_reply,
            rcpt_replies=tuple(self._rcpt_replies),
            data_reply=self._data_reply,
            dot_sent=self._dot_sent,
            failure=self._failure,
            failure_code=self._failure_code,
            failed_stage=self._failed_stage,
            tls_failure=self._tls_failure,
            handshake_failed=self._handshake_failed,
            ready=self._ready,
        )

    def _tls_update(self, **changes: Any) -> None:
        from attrs import evolve

        self._tls = evolve(self._tls, **changes)

    def sendLine(self, line: bytes) -> None:
        """
        Send a command with the timeout its reply deserves.
        """
        verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
        if verb == b"MAIL" and self._plan.require and not self._tls_ok:
            # Defence in depth: the states below never get here without
            # TLS under a setting that requires it; if a bug ever did, the
            # connection dies rather than the mail leaving in the clear.
            self._fail("internal error: MAIL FROM without required TLS")
            self._connection.abortConnection()
            return
        self.setTimeout(
            {
                b"MAIL": self._timeouts.mail,
                b"RCPT": self._timeouts.rcpt,
                b"DATA": self._timeouts.data_init,
            }.get(verb, self._timeouts.command)
        )
        super().sendLine(line)

    def setTimeout(self, period: float | None) -> float | None:
        """
        Change the reply timeout.  C{TimeoutMixin} moves its pending call
        with C{DelayedCall.reset}; moving a call sooner (600 s for the
        final dot, then 300 s for the next MAIL; 300 s, then 120 s for
        DATA) costs Twisted a linear search of every timed call in the
        reactor (C{_moveCallLaterSooner}), 5% of a relaying process's
        reactor with a few hundred sessions.  A shorter period therefore
        cancels the call, which is constant time, and schedules a new one.
        """
        previous = self.timeOut
        if period is not None and previous is not None and period < previous:
            super().setTimeout(None)
        super().setTimeout(period)
        return previous

    def lineReceived(self, line: bytes) -> None:
        """
        One reply line: bound the reply's size, and let only a reply's last
        line restart the timer, so the timeout bounds the whole reply.
        """
        self._reply_lines += 1
        self._reply_bytes += len(line) + 2
        if self._reply_lines > MAX_REPLY_LINES or self._reply_bytes > MAX_REPLY_BYTES:
            self._give_up(
                f"reply to {self._stage.value} too long (over {MAX_REPLY_LINES} lines "
                f"or {MAX_REPLY_BYTES} bytes)"
            )
            return
        if not _REPLY_LINE.match(line):
            # SMTPClient reads the code with int(): "+25", " 25" and "2_5"
            # pass for 25, and lines of code 0xx are skipped.
            self._give_up(f"malformed reply to {self._stage.value}: {_text(line[:80])!r}")
            return
        # SMTPClient takes a line as the end of a reply unless it continues
        # (C{250-}) or is "informational" (a code starting with C{0}).
        last = line[3:4] != b"-" and line[0:1] != b"0"
        if last:
            self._reply_lines = self._reply_bytes = 0
        self._continuing = not last
        try:
            super().lineReceived(line)
        finally:
            self._continuing = False

    def _give_up(self, why: str) -> None:
        """
        The server broke the protocol: record C{why} and drop the
        connection, reading nothing more (the replies already received
        behind the bad one, to pipelined commands, must not count).
        """
        self._fail(why)
        self.resp = []
        self.clearLineBuffer()
        self._connection.abortConnection()

    def resetTimeout(self) -> None:
        """
        Restart the timer, except for a line that does not end a reply.
        """
        if not self._continuing:
            super().resetTimeout()

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        A reply line longer than L{MAX_LENGTH} (or that many bytes without
        a line end): a broken or hostile server; stop reading it.
        """
        self._fail(f"reply line to {self._stage.value} too long (over {self.MAX_LENGTH} bytes)")
        self._connection.abortConnection()

    def timeoutConnection(self) -> None:
        """
        No reply in time: give up on this connection at once (a polite
        QUIT could wait forever on a server that stopped reading).
        """
        self._fail(f"timeout waiting for the server's reply to {self._stage.value}")
        self._connection.abortConnection()

    def sendError(self, exc: Any) -> None:
        """
        The stock client's error path, without its factory and retries.
        """
        code = getattr(exc, "code", None)
        resp = getattr(exc, "resp", b"")
        self._fail(f"{code} {_text(resp)}" if code and code > 0 else _text(resp), code)
        SMTPClient.sendError(self, exc)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._stage in (Stage.STARTTLS, Stage.HANDSHAKE) and not self._tls_ok:
            # Lost while TLS was being set up: whether or not the 220 got
            # here first, this connection cannot carry mail; a setting
            # that allows the clear reconnects without STARTTLS.
            self._handshake_failed = True
            detail = _describe_tls_error(reason)
            self._fail(f"TLS handshake failed: {detail}")
            self._tls_update(failure=TLSResultType.VALIDATION_FAILURE, detail=detail)
            if self._maillog is not None:
                self._maillog.dcid_tls_failed(self._dcid, detail)
        elif self._data_reply is None and self._stage is not Stage.QUIT:
            self._fail(
                f"connection lost during {self._stage.value}: "
                + (reason.getErrorMessage() if reason is not None else "closed")
            )
        super().connectionLost(reason)
        self.parked = False
        if not self.finished.called:
            self.finished.callback(self._outcome())
        self.closed.callback(None)

    # -- greeting, EHLO, STARTTLS --------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self._stage = Stage.GREETING

    def esmtpState_ehlo(self, code: int, resp: bytes) -> None:
        self._stage = Stage.EHLO
        super().esmtpState_ehlo(code, resp)

    def esmtpState_serverConfig(self, code: int, resp: bytes) -> None:
        """
        Parse the EHLO keywords case-insensitively (RFC 5321 section 4.1.1.1;
        the stock client matches C{STARTTLS} case-sensitively).
        """
        items: dict[bytes, bytes | None] = {}
        for line in resp.splitlines()[1:]:
            parts = line.split(None, 1)
            if parts:
                items[parts[0].upper()] = parts[1] if len(parts) > 1 else None
        self._extensions = items
        self.tryTLS(code, resp, items)

    def tryTLS(self, code: int, resp: bytes, items: dict[bytes, bytes | None]) -> None:
        if self._tlsMode or not self._plan.starttls:
            self.authenticate(code, resp, items)
            return
        self._tls_update(starttls_offered=b"STARTTLS" in items)
        if b"STARTTLS" not in items:
            if self._maillog is not None:
                self._maillog.dcid_starttls_not_supported(self._dcid)
            self._tls_update(
                failure=TLSResultType.STARTTLS_NOT_SUPPORTED,
                detail="STARTTLS not offered",
            )
            if self._plan.require:
                self._refuse_without_tls("STARTTLS not offered")
                return
            self._tls_update(fallback=Fallback.NOT_OFFERED)
            self.authenticate(code, resp, items)
            return
        self._stage = Stage.STARTTLS
        self._expected = [220]
        self._okresponse = self.esmtpState_starttls
        self._failresponse = self._starttls_refused
        self.sendLine(b"STARTTLS")

    def esmtpEHLORequired(self, code: int = -1, resp: bytes | None = None) -> None:
        """
        EHLO was refused: without it there is no STARTTLS, so a setting
        that requires TLS ends here.  After TLS is up (the EHLO that
        RFC 3207 asks for again) the refusal is the session's, not TLS's:
        no TLS failure, no alert, a deferral.
        """
        if self._tls_ok:
            self._fail(f"EHLO refused after STARTTLS: {code} {_text(resp or b'')}", code)
            self._stage = Stage.QUIT
            self._disconnectFromServer()
            return
        if self._plan.require:
            self._tls_update(
                failure=TLSResultType.STARTTLS_NOT_SUPPORTED,
                detail=f"EHLO refused: {code} {_text(resp or b'')}",
            )
            self._refuse_without_tls(f"EHLO refused ({code}), so no STARTTLS")
            return
        super().esmtpEHLORequired(code, resp)

    def smtpState_helo(self, code: int, resp: bytes) -> None:
        """
        EHLO was refused and the setting allows the fall back to HELO.  The
        stock client leaves EHLO's failure handler, which is this method,
        in place for the HELO: a refused HELO sent HELO again, thousands a
        second for as long as the server kept answering.  A refused HELO
        ends the session.
        """
        super().smtpState_helo(code, resp)
        self._failresponse = self._helo_refused

    def _helo_refused(self, code: int, resp: bytes) -> None:
        self._fail(f"HELO refused: {code} {_text(resp)}", code)
        self._quit()

    def _starttls_refused(self, code: int, resp: bytes) -> None:
        """
        STARTTLS failed before the C{220}: go on in the clear on this
        connection, unless the setting requires TLS.
        """
        detail = f"STARTTLS refused: {code} {_text(resp)}"
        self._tls_update(failure=TLSResultType.STARTTLS_NOT_SUPPORTED, detail=detail)
        if self._maillog is not None:
            self._maillog.dcid_tls_failed(self._dcid, detail)
        if code == 421:
            # The server is closing the session, not refusing TLS; but
            # where TLS is required, a 421 in place of the 220 is also
            # how a man in the middle would strip it, so it counts (and
            # alerts) as the failure it is for this setting.
            if self._plan.require:
                self._tls_failure = True
            self._fail(detail, code)
            self._stage = Stage.QUIT
            self._connection.loseConnection()
            return
        if self._plan.require:
            self._refuse_without_tls(detail)
            return
        log.info(
            "DCID {dcid}: {detail}; continuing in the clear on the same connection",
            dcid=self._dcid,
            detail=detail,
        )
        self._tls_update(fallback=Fallback.REFUSED)
        self.authenticate(code, resp, self._extensions)

    def esmtpState_starttls(self, code: int, resp: bytes) -> None:
        """
        The server said C{220}: discard anything it sent after that line in
        plaintext (response injection), start TLS, and wait for the
        handshake before sending anything more.
        """
        injected = self.clearLineBuffer()
        if injected:
            log.warn(
                "DCID {dcid}: discarded {n} plaintext bytes the server sent after its 220 "
                "to STARTTLS (possible response injection)",
                dcid=self._dcid,
                n=len(injected),
            )
            self._tls_update(discarded_plaintext=len(injected))
        # RFC 3207 section 4.2: forget what the server said in the clear;
        # only the EHLO over TLS tells what it offers (if that EHLO is
        # refused and HELO taken instead, nothing is offered).
        self._extensions = {}
        self._stage = Stage.HANDSHAKE
        self.setTimeout(self._timeouts.command)
        # No reply is expected until we speak again, after the handshake.
        self._expected = []
        self._okresponse = self._unexpected_reply
        self._failresponse = self._unexpected_reply
        if self._tls_creator_factory is None:
            self._fail("no TLS client configured")
            self._connection.abortConnection()
            return
        try:
            self._creator = self._tls_creator_factory()
            self._connection.startTLS(self._creator)
        except Exception as e:
            self._fail(f"could not start TLS: {e}")
            self._connection.abortConnection()

    def _unexpected_reply(self, code: int, resp: bytes) -> None:
        self._fail(f"unexpected reply during {self._stage.value}: {code} {_text(resp)}", code)
        self._connection.abortConnection()

    def handshakeCompleted(self) -> None:
        """
        TLS is up.  Decide, before anything is sent over it, whether the
        setting accepts this peer.
        """
        if self._creator is None:
            return
        facts = self._creator.facts()
        self._tlsMode = True
        info = TLSInfo(
            protocol=facts.protocol,
            cipher=facts.cipher,
            peer_certificate_subject=facts.leaf.subject.rfc4514_string() if facts.leaf else None,
        )
        verified, failure, detail, match = self._check(facts)
        self._tls_update(
            encrypted=True,
            protocol=facts.protocol,
            cipher=facts.cipher,
            verified=verified,
            match=match,
            failure=failure,
            detail=detail,
            peer_subject=info.peer_certificate_subject,
            fallback=None,
            chain=tuple(_describe_certificate(c) for c in facts.chain),
        )
        if self._plan.require_verified and not verified:
            if self._maillog is not None:
                self._maillog.dcid_tls_failed(self._dcid, detail or "verification failed")
            self._refuse_without_tls(detail or "verification failed")
            return
        self._tls_ok = True
        if self._maillog is not None:
            self._maillog.dcid_tls_success(self._dcid, info, verified)
        if self._plan.verify and not verified:
            log.warn(
                "DCID {dcid}: certificate verification failed ({detail}); delivering "
                "encrypted but unverified as {tls_level} allows",
                dcid=self._dcid,
                detail=detail,
                tls_level=self._plan.level.value,
            )
        self.esmtpState_ehlo(220, b"")

    def _check(
        self, facts: HandshakeFacts
    ) -> tuple[bool, TLSResultType | None, str | None, NameMatch | None]:
        """
        Chain and name verification, under the settings that verify.
        """
        if not self._plan.verify:
            return False, None, None, None
        if facts.leaf is None:
            return False, TLSResultType.VALIDATION_FAILURE, "no server certificate", None
        match = self._name_check(facts.leaf) if self._name_check is not None else None
        if facts.chain_errors:
            return (
                False,
                classify_chain_errors(facts.chain_errors),
                facts.chain_errors[0].describe(),
                match,
            )
        if match is None:
            return (
                False,
                TLSResultType.CERTIFICATE_HOST_MISMATCH,
                "verify error: no certificate name matches the destination",
                None,
            )
        return True, None, None, match

    def _refuse_without_tls(self, reason: str) -> None:
        """
        The setting forbids going on: no MAIL FROM; QUIT and report.
        """
        self._tls_failure = True
        if self._tls.failure is None:
            self._tls_update(failure=TLSResultType.VALIDATION_FAILURE, detail=reason)
        self._fail(
            f"TLS required by the destination's setting ({self._plan.level.value}): {reason}"
        )
        self._stage = Stage.QUIT
        self._disconnectFromServer()

    # -- the mail transaction -------------------------------------------

    def smtpState_from(self, code: int, resp: bytes) -> None:
        """
        Start the transaction: MAIL, each RCPT and DATA, in one write when
        the server offers PIPELINING.
        """
        if self._plan.require and not self._tls_ok:
            self._refuse_without_tls("TLS was not negotiated")
            return
        self._ready = True
        if self._probe:
            self._quit()
            return
        self._pipelining = b"PIPELINING" in self._extensions
        # Every code goes to _reply; a range answers SMTPClient's "code in
        # expected" at once, where a list of 1000 was scanned per reply line
        # (Twisted itself assigns ranges here; its annotation says list).
        self._expected = range(1000)  # type: ignore[assignment]
        self._okresponse = self._reply
        self._failresponse = self._reply
        self._pending.clear()
        if self._rset_first:
            self._rset_first = False
            self._queue_command(Stage.RSET, "", b"RSET")
        mail = b"MAIL FROM:<" + self._mail_from.encode("utf-8") + b">"
        size = self._body_size()
        if b"SIZE" in self._extensions and size is not None:
            mail += b" SIZE=%d" % (size,)
        if b"8BITMIME" in self._extensions and self._body_is_8bit():
            # RFC 6152 section 3: a client sending octets above 127 says so.
            mail += b" BODY=8BITMIME"
        if not self._mail_from.isascii() or any(not a.isascii() for _, a in self._recipients):
            if b"SMTPUTF8" in self._extensions:
                mail += b" SMTPUTF8"
        if self._maillog is not None and self._mid is not None:
            self._maillog.delivery_start(
                self._dcid, self._mid, [rid for rid, _ in self._recipients]
            )
        self._mail_sent = True
        self._stage = Stage.MAIL
        self._queue_command(Stage.MAIL, "", mail)
        if self._pipelining:
            for _, address in self._recipients:
                self._queue_command(Stage.RCPT, address, self._rcpt_line(address))
            self._queue_command(Stage.DATA, "", b"DATA")

    def _rcpt_line(self, address: str) -> bytes:
        return b"RCPT TO:<" + address.encode("utf-8") + b">"

    def _queue_command(self, stage: Stage, address: str, line: bytes) -> None:
        self._pending.append((stage, address))
        self.sendLine(line)

    def _body_is_8bit(self) -> bool:
        """
        Whether the body holds an octet above 127: read from where it will
        be sent, in the chunks it is sent in, and put back.  (The gateway
        takes 8-bit mail with or without the client's C{BODY=8BITMIME}, as
        other MTAs do, so the content, not the envelope, decides.)  A body
        that cannot be read is the DATA stage's to report.
        """
        try:
            here = self._body.tell()
            try:
                while chunk := self._body.read(WHOLE_BODY):
                    if not chunk.isascii():
                        return True
            finally:
                self._body.seek(here)
        except (OSError, ValueError):
            pass
        return False

    def _body_size(self) -> int | None:
        try:
            here = self._body.tell()
            self._body.seek(0, 2)
            end = self._body.tell()
            self._body.seek(here)
        except (OSError, ValueError):
            return None
        return end - here

    def _reply(self, code: int, resp: bytes) -> None:
        """
        One reply in a transaction; with PIPELINING they come in the order
        the commands went.
        """
        if not self._pending:
            return self._unexpected_reply(code, resp)
        stage, address = self._pending.popleft()
        self._stage = stage
        text = _text(resp)
        if code == 421 and stage is not Stage.DOT:
            # The server is closing: every reply after this one is lost.
            if stage is Stage.MAIL:
                self._mail_reply = (code, text)
            self._fail(f"{code} {text}", code)
            self._connection.loseConnection()
            return None
        if stage is Stage.RSET:
            if code != 250:
                self._fail(f"RSET refused: {code} {text}", code)
                self._quit()
            return None
        if stage is Stage.MAIL:
            self._mail_reply = (code, text)
            if not _is_ok(code) and not self._pipelining:
                return self._quit()
            if not self._pipelining:
                self._next_rcpt()
        elif stage is Stage.RCPT:
            self._rcpt_replies.append((address, code, text))
            if not self._pipelining:
                self._next_rcpt()
        elif stage is Stage.DATA:
            self._data_started(code, text)
        elif stage is Stage.DOT:
            self._data_reply = (code, text)
            self.transactions += 1
            if _is_ok(code) and self._maillog is not None and self._mid is not None:
                accepted = {a for a, c, _ in self._rcpt_replies if _is_ok(c)}
                self._maillog.message_done(
                    self._dcid, self._mid, [rid for rid, a in self._recipients if a in accepted]
                )
            if self._reusable and code != 421:
                self._park()
            else:
                self._quit()
        return None

    def _next_rcpt(self) -> None:
        done = len(self._rcpt_replies)
        if done < len(self._recipients):
            address = self._recipients[done][1]
            self._queue_command(Stage.RCPT, address, self._rcpt_line(address))
        elif any(_is_ok(c) for _, c, _ in self._rcpt_replies):
            self._queue_command(Stage.DATA, "", b"DATA")
        else:
            self._quit()

    def _data_started(self, code: int, text: str) -> None:
        mail_ok = self._mail_reply is not None and _is_ok(self._mail_reply[0])
        any_rcpt = any(_is_ok(c) for _, c, _ in self._rcpt_replies)
        if code != 354:
            if mail_ok and any_rcpt:
                self._data_reply = (code, text)
            return self._quit()
        if not (mail_ok and any_rcpt):
            # RFC 2920 section 3.1: DATA was accepted though nothing else
            # was; end it with an empty message the server will refuse.
            self._pending.append((Stage.DOT, ""))
            self._connection.write(b".\r\n")
            self._dot_sent = False
            return None
        self._stage = Stage.BODY
        self.setTimeout(self._timeouts.data_block)
        # Most mail is small: read it in one call and send it with its final
        # dot in the same write, rather than through a producer that takes
        # a reactor turn per chunk and another for the dot (the relay
        # profile in bench/RESULTS.md).
        try:
            head = self._body.read(WHOLE_BODY + 1)
        except (OSError, ValueError) as e:
            self._body_failed(Failure(e))
            return None
        if len(head) <= WHOLE_BODY:
            self._connection.write(self._encoder.encode(head) + self._end_of_data())
            return None
        self._connection.write(self._encoder.encode(head))
        sender = FileSender()
        sending = sender.beginFileTransfer(self._body, self.transport, self._transform)
        sending.addCallbacks(self._body_sent, self._body_failed)
        return None

    def _transform(self, chunk: bytes) -> bytes:
        self.resetTimeout()
        return self._encoder.encode(chunk)

    def _body_sent(self, last: object) -> None:
        self._connection.write(self._end_of_data())

    def _end_of_data(self) -> bytes:
        """
        The body is all encoded: now wait for the reply to the final dot,
        and return the bytes that end DATA.
        """
        self._stage = Stage.DOT
        self._pending.append((Stage.DOT, ""))
        self.setTimeout(self._timeouts.data_term)
        self._dot_sent = True
        return self._encoder.finish()

    def _body_failed(self, failure: Failure) -> None:
        self._fail(f"could not read the message body: {failure.getErrorMessage()}")
        self._connection.abortConnection()

    def _quit(self) -> None:
        self._stage = Stage.QUIT
        self._pending.clear()
        self._disconnectFromServer()

    def _disconnectFromServer(self) -> None:
        """
        Send QUIT; any reply to it ends the session.  The stock method
        leaves the failure handler of the command before in place, so a
        reply code its parser takes but outside 0-999 (C{-1}) went to
        that handler, and those that end in QUIT sent QUIT again, for as
        long as the server answered so.
        """
        super()._disconnectFromServer()
        self._failresponse = self.smtpState_disconnect

    # -- more than one message per session --------------------------------

    def _park(self) -> None:
        """
        The transaction is over and the server said so: report it, and keep
        the session, silent, for L{reuse}.  The TLS the setting accepted
        stays what it was; the next transaction runs on the same checks.
        """
        self._stage = Stage.IDLE
        self._pending.clear()
        self.setTimeout(None)
        # The server has nothing to say between transactions; if it does
        # (a 421 before closing), the session ends.
        self._expected = []
        self._okresponse = self._unexpected_reply
        self._failresponse = self._unexpected_reply
        self.parked = True
        self.finished.callback(self._outcome())

    def reuse(
        self,
        mail_from: str,
        recipients: Sequence[tuple[int, str]],
        body: IO[bytes],
        *,
        mid: int | None = None,
    ) -> Deferred[SessionOutcome]:
        """
        Send another message over a L{parked} session: C{RSET} (which also
        proves the server is still there), then the transaction as for the
        first message.

        @return: the new L{finished}: the outcome of this transaction.  A
            session that fails before MAIL FROM (C{not mail_sent}) had gone
            stale: the caller should try a new connection.
        """
        if not self.parked:
            raise RuntimeError("only a parked session can carry another message")
        self.parked = False
        self.finished = Deferred()
        self._mail_from = mail_from
        self._recipients = list(recipients)
        self._body = body
        self._mid = mid
        self._encoder = DataEncoder()
        self._mail_sent = False
        self._mail_reply = None
        self._rcpt_replies = []
        self._data_reply = None
        self._dot_sent = False
        self._failure = None
        self._failure_code = None
        self._failed_stage = None
        self._ready = False
        if self._pipelining:
            # RFC 2920 lets RSET lead the pipelined MAIL, RCPT and DATA: one
            # round trip per message instead of two.  If the server refuses
            # it (or is gone), no data follows, and the caller tries anew.
            self._rset_first = True
            self.smtpState_from(250, b"")
            return self.finished
        self._stage = Stage.RSET
        self._expected = [250]
        self._okresponse = self.smtpState_from
        self._failresponse = self._rset_refused
        self.sendLine(b"RSET")
        return self.finished

    def _rset_refused(self, code: int, resp: bytes) -> None:
        self._fail(f"RSET refused: {code} {_text(resp)}", code)
        self._quit()

    def close_idle(self) -> None:
        """
        End a L{parked} session politely (QUIT).
        """
        if self.parked:
            self.parked = False
            self._quit()

    # Not used: the transaction above replaces the stock one.

    def getMailFrom(self) -> str | None:
        return self._mail_from

    def getMailTo(self) -> list[str]:
        return [address for _, address in self._recipients]

    def getMailData(self) -> IO[bytes]:
        return self._body

    def sentMail(self, *args: object) -> None:
        pass


def _describe_certificate(certificate: x509.Certificate) -> str:
    """
    One line about a certificate: who, by whom, until when.
    """
    return (
        f"subject {certificate.subject.rfc4514_string()}; "
        f"issuer {certificate.issuer.rfc4514_string()}; "
        f"valid {certificate.not_valid_before_utc:%Y-%m-%d} to "
        f"{certificate.not_valid_after_utc:%Y-%m-%d}"
    )


def _describe_tls_error(reason: Failure | None) -> str:
    """
    A short text for why a handshake ended.
    """
    if reason is None:
        return "connection closed"
    value = reason.value
    args = getattr(value, "args", ())
    if args and isinstance(args[0], list) and args[0]:
        parts = [" ".join(str(p) for p in entry if p) for entry in args[0]]
        return "; ".join(parts) or type(value).__name__
    return reason.getErrorMessage() or type(value).__name__


__all__ = ["DeliveryClient", "SMTPClientError", "SessionOutcome", "Stage", "Timeouts"]
