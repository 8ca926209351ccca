# -*- test-case-name: tests.test_maillog -*-
"""
The ESA mail log.

Administrators who know the Cisco ESA read its C{mail_logs} to follow a
connection (ICID), a message (MID), a recipient (RID) and a delivery
connection (DCID); their scripts grep the exact wording.  L{MailLog} emits
each of those lines as a structured L{twisted.logger} event in the
C{esa_tls.maillog} namespace: the typed fields (C{icid}, C{mid}, C{rids},
C{verified}...) for programs, and a format that renders exactly the ESA
text for people and scripts.  L{mail_log_observer} writes those events,
and only those, to C{data_dir/logs/mail.log} in the ESA line format::

    Sat Nov 28 15:17:30 2026 Info: Start MID 7 ICID 5

The gateway itself does not go through events: an accepted message makes
eight lines, and building, publishing and formatting eight events cost a
quarter of the reactor thread under load (issue 7).  It gives its
L{MailLog} a L{MailLogFile}, which takes the ESA text directly, formats
the time stamp once per second, and appends all the lines of a reactor
turn with one C{write}.

Text that comes from peers (addresses, HELO names, server replies, TLS
errors) is escaped so that it can never start a forged line of its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    formatEvent,
)
from zope.interface import implementer

from esa_tls.printable import printable
from esa_tls.values import HATVerdict, TLSInfo

__all__ = [
    "NAMESPACE",
    "MailLog",
    "MailLogCollector",
    "MailLogFile",
    "MailLogObserver",
    "format_maillog_line",
    "is_maillog_event",
    "mail_log_observer",
    "mail_log_path",
]

#: The namespace of every mail log event.
NAMESPACE = "esa_tls.maillog"

_LEVEL_WORDS = {
    LogLevel.debug: "Debug",
    LogLevel.info: "Info",
    LogLevel.warn: "Warning",
    LogLevel.error: "Critical",
    LogLevel.critical: "Critical",
}


def _clean(value: object) -> str:
    """
    Render C{value} for a log line, escaping control characters (a CR or LF
    from a peer would otherwise forge a line) and backslashes.
    """
    return printable(str(value), escape_backslash=True)


def _brace_escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _rids(rids: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(r)) for r in rids) + "]"


def is_maillog_event(event: dict[str, Any]) -> bool:
    """
    Whether C{event} is a mail log line (and not some other log event).
    """
    return event.get("log_namespace") == NAMESPACE and "maillog_event" in event


def format_maillog_line(event: dict[str, Any]) -> str | None:
    """
    Render a mail log event as a line of C{mail.log}, newline included.

    @return: the line, or C{None} for any other event.
    """
    if not is_maillog_event(event):
        return None
    when = time.asctime(time.localtime(event.get("log_time", time.time())))
    level = _LEVEL_WORDS.get(event.get("log_level", LogLevel.info), "Info")
    return f"{when} {level}: {formatEvent(event)}\n"


class MailLog:
    """
    Emits the mail log lines.  One per gateway; sessions and deliveries
    call the method for each step of the ESA story of a connection or a
    message.

    Every event carries C{maillog_event} (the method name), the fields
    named by the method's parameters, and a C{log_format} rendering the
    exact ESA text.
    """

    def __init__(
        self, observer: ILogObserver | None = None, writer: MailLogFile | None = None
    ) -> None:
        """
        @param observer: where events go; by default the global log
            publisher (then L{mail_log_observer} writes the file).
        @param writer: the file the lines go to directly, without events:
            what the gateway uses, for speed.  With a C{writer} and no
            C{observer} no event is made at all; with both, both get every
            line.
        """
        self._writer = writer
        self._log: Logger | None = (
            Logger(namespace=NAMESPACE, observer=observer)
            if writer is None or observer is not None
            else None
        )

    def flush(self) -> None:
        """
        Write the lines given so far now rather than at the end of the
        reactor turn: before a reply that tells the client they are true
        (the 250 of a message), so that mail.log has them when the client
        has its reply.
        """
        if self._writer is not None:
            self._writer.flush()

    def _emit(self, name: str, text: str, **fields: Any) -> None:
        if self._writer is not None:
            self._writer.line(text)
        if self._log is not None:
            self._log.emit(
                LogLevel.info,
                _brace_escape(text),
                maillog_event=name,
                **fields,
            )

    # -- inbound --------------------------------------------------------

    def new_icid(
        self,
        icid: int,
        interface: str,
        interface_address: str,
        address: str,
        reverse_dns: str | None,
        verified: bool,
    ) -> None:
        """
        A connection was accepted on a listener's interface.
        """
        host = _clean(reverse_dns) if reverse_dns else "unknown"
        self._emit(
            "new_icid",
            f"New SMTP ICID {icid} interface {_clean(interface)} ({_clean(interface_address)})"
            f" address {_clean(address)} reverse dns host {host} verified {_yes_no(verified)}",
            icid=icid,
            interface=interface,
            interface_address=interface_address,
            address=address,
            reverse_dns=reverse_dns,
            verified=verified,
        )

    def connection_verdict(self, icid: int, verdict: HATVerdict) -> None:
        """
        The Host Access Table classified the connection: C{ACCEPT},
        C{REJECT}, C{TCPREFUSE} or C{RELAY}, the sender group, the entry that
        matched and the reputation score (C{None} without one).
        """
        rule = verdict.policy.rule.value
        group = _clean(verdict.sender_group) if verdict.sender_group is not None else "None"
        match = f"match {_clean(verdict.matched)} " if verdict.matched else "match "
        self._emit(
            "connection_verdict",
            f"ICID {icid} {rule} SG {group} {match}SBRS {verdict.sbrs}",
            icid=icid,
            rule=rule,
            sender_group=verdict.sender_group,
            policy=verdict.policy.name,
            matched=verdict.matched,
            sbrs=verdict.sbrs,
        )

    def icid_tls_success(self, icid: int, tls: TLSInfo) -> None:
        """
        STARTTLS succeeded on an incoming connection.
        """
        self._emit(
            "icid_tls_success",
            f"ICID {icid} TLS success protocol {_clean(tls.protocol)} cipher {_clean(tls.cipher)}",
            icid=icid,
            protocol=tls.protocol,
            cipher=tls.cipher,
        )

    def icid_tls_failed(self, icid: int, reason: str) -> None:
        """
        The TLS handshake of an incoming connection failed.
        """
        self._emit(
            "icid_tls_failed",
            f"ICID {icid} TLS failed: {_clean(reason)}",
            icid=icid,
            reason=reason,
        )

    def icid_auth(self, icid: int, user: str, mechanism: str, succeeded: bool) -> None:
        """
        An SMTP AUTH attempt, in the ESA's words:
        C{SMTP Auth: (ICID 5) succeeded for user: bob using AUTH mechanism: PLAIN}.
        """
        outcome = "succeeded" if succeeded else "failed"
        self._emit(
            "icid_auth",
            f"SMTP Auth: (ICID {icid}) {outcome} for user: {_clean(user)}"
            f" using AUTH mechanism: {_clean(mechanism)}",
            icid=icid,
            user=user,
            mechanism=mechanism,
            succeeded=succeeded,
        )

    def start_mid(self, mid: int, icid: int) -> None:
        """
        A message was started on a connection (MAIL FROM accepted).
        """
        self._emit("start_mid", f"Start MID {mid} ICID {icid}", mid=mid, icid=icid)

    def bounce_generated(self, mid: int, original_mid: int) -> None:
        """
        The gateway made message C{mid}, a bounce (DSN) reporting on
        C{original_mid}: it has no connection (its lines say ICID 0), and
        without this line nothing would tie it to the message it reports.
        """
        self._emit(
            "bounce_generated",
            f"MID {mid} was generated for bounce of MID {original_mid}",
            mid=mid,
            original_mid=original_mid,
        )

    def mail_from(self, mid: int, icid: int, address: str) -> None:
        """
        The envelope sender (C{""} for the null reverse path).
        """
        self._emit(
            "mail_from",
            f"MID {mid} ICID {icid} From: <{_clean(address)}>",
            mid=mid,
            icid=icid,
            address=address,
        )

    def rcpt_to(self, mid: int, icid: int, rid: int, address: str) -> None:
        """
        An accepted recipient and the RID it got.
        """
        self._emit(
            "rcpt_to",
            f"MID {mid} ICID {icid} RID {rid} To: <{_clean(address)}>",
            mid=mid,
            icid=icid,
            rid=rid,
            address=address,
        )

    def message_id(self, mid: int, message_id: str) -> None:
        """
        The message's C{Message-ID:} header, when it has one.
        """
        self._emit(
            "message_id",
            f"MID {mid} Message-ID '{_clean(message_id)}'",
            mid=mid,
            message_id=message_id,
        )

    def ready(self, mid: int, size: int, mail_from: str) -> None:
        """
        The whole message was received.
        """
        self._emit(
            "ready",
            f"MID {mid} ready {size} bytes from <{_clean(mail_from)}>",
            mid=mid,
            size=size,
            mail_from=mail_from,
        )

    def queued(self, mid: int) -> None:
        """
        The message is durable in the spool (the session answered 250).
        """
        self._emit("queued", f"MID {mid} queued for delivery", mid=mid)

    def icid_close(self, icid: int) -> None:
        """
        An incoming connection ended.
        """
        self._emit("icid_close", f"ICID {icid} close", icid=icid)

    # -- outbound -------------------------------------------------------

    def new_dcid(self, dcid: int, interface: str, address: str, port: int) -> None:
        """
        A delivery connection was opened from C{interface} to C{address}.
        """
        self._emit(
            "new_dcid",
            f"New SMTP DCID {dcid} interface {_clean(interface)} address {_clean(address)}"
            f" port {port}",
            dcid=dcid,
            interface=interface,
            address=address,
            port=port,
        )

    def dcid_tls_success(self, dcid: int, tls: TLSInfo, verified: bool) -> None:
        """
        STARTTLS succeeded on a delivery connection; C{verified} tells
        whether the server's certificate passed verification.
        """
        self._emit(
            "dcid_tls_success",
            f"DCID {dcid} TLS success protocol {_clean(tls.protocol)}"
            f" cipher {_clean(tls.cipher)} verified {_yes_no(verified)}",
            dcid=dcid,
            protocol=tls.protocol,
            cipher=tls.cipher,
            verified=verified,
        )

    def dcid_tls_failed(self, dcid: int, reason: str) -> None:
        """
        TLS could not be set up on a delivery connection (handshake error,
        or a certificate that failed a required verification).
        """
        self._emit(
            "dcid_tls_failed",
            f"DCID {dcid} TLS failed: {_clean(reason)}",
            dcid=dcid,
            reason=reason,
        )

    def dcid_starttls_not_supported(self, dcid: int) -> None:
        """
        The server did not offer STARTTLS.
        """
        self._emit(
            "dcid_starttls_not_supported",
            f"DCID {dcid} STARTTLS command not supported.",
            dcid=dcid,
        )

    def delivery_start(self, dcid: int, mid: int, rids: Sequence[int]) -> None:
        """
        A message is being sent for recipients C{rids} on a connection.
        """
        self._emit(
            "delivery_start",
            f"Delivery start DCID {dcid} MID {mid} to RID {_rids(rids)}",
            dcid=dcid,
            mid=mid,
            rids=list(rids),
        )

    def message_done(self, dcid: int, mid: int, rids: Sequence[int]) -> None:
        """
        The next hop took the message for recipients C{rids}.
        """
        self._emit(
            "message_done",
            f"Message done DCID {dcid} MID {mid} to RID {_rids(rids)}",
            dcid=dcid,
            mid=mid,
            rids=list(rids),
        )

    def deferred(self, mid: int, rids: Sequence[int], reason: str) -> None:
        """
        Delivery to C{rids} failed temporarily; they stay queued.
        """
        self._emit(
            "deferred",
            f"MID {mid} RID {_rids(rids)} deferred: {_clean(reason)}",
            mid=mid,
            rids=list(rids),
            reason=reason,
        )

    def bounced(self, mid: int, rids: Sequence[int], reason: str) -> None:
        """
        Delivery to C{rids} failed for good.
        """
        self._emit(
            "bounced",
            f"MID {mid} RID {_rids(rids)} bounced: {_clean(reason)}",
            mid=mid,
            rids=list(rids),
            reason=reason,
        )

    def dropped(self, mid: int, rids: Sequence[int]) -> None:
        """
        Recipients C{rids} were dropped by an SMTP route to C{/dev/null}
        (the ESA's way to discard a domain's mail): done, with no
        connection, in the form of the ESA's C{Response} lines.
        """
        self._emit(
            "dropped",
            f"MID {mid} RID {_rids(rids)} Response '/dev/null'",
            mid=mid,
            rids=list(rids),
        )

    def dcid_close(self, dcid: int) -> None:
        """
        A delivery connection ended.
        """
        self._emit("dcid_close", f"DCID {dcid} close", dcid=dcid)


def mail_log_path(data_dir: str) -> str:
    """
    @return: where the mail log of a gateway with data directory
        C{data_dir} lives: C{data_dir/logs/mail.log}.
    """
    return os.path.join(data_dir, "logs", "mail.log")


#: Lines buffered before a write is forced even within one reactor turn.
_MAX_BATCH = 512

_log = Logger()


class _Stamp:
    """
    The ESA time stamp (C{time.asctime} of the local time), computed once
    per second rather than once per line.
    """

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._text = time.asctime(time.localtime(second))
            self._second = second
        return self._text


@implementer(ILogObserver)
class MailLogFile:
    """
    Appends mail log lines to a file.

    Given a clock, the lines of one reactor turn are written together, by
    one C{write} at the end of the turn (a C{callLater(0)}): a session logs
    its lines and writes its reply in the same turn, and the reply leaves
    only when the reactor next polls, after the lines are in the file, so
    whoever reads C{mail.log} on seeing a C{250} finds its lines there.
    Without a clock every line is written at once.

    The file is opened with C{O_APPEND} and each write holds whole lines
    only, so that the processes of a multi-worker gateway can share one
    file without cutting into each other's lines.

    It is also an L{ILogObserver}: mail log events, and only those, become
    lines (with the event's time).
    """

    def __init__(self, path: str, clock: IReactorTime | None = None) -> None:
        """
        @param path: the log file; it and its directory are created by
            L{open} if missing.
        @param clock: what schedules the end-of-turn write; C{None}: none,
            each line is written as it comes.
        """
        self.path = path
        self._clock = clock
        self._fd: int | None = None
        self._lines: list[str] = []
        self._call: IDelayedCall | None = None
        self._stamp = _Stamp()

    def open(self) -> None:
        """
        Open the file for appending; lines given while it is closed are
        dropped.
        """
        if self._fd is not None:
            return
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        self._fd = self._open_file()

    def _open_file(self) -> int:
        # O_APPEND: the processes of a gateway share the file (see above).
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def reopen(self) -> None:
        """
        Write what is buffered, then go on in the file now at C{path}: after
        C{logrotate} renamed the old one (its default, C{create}), the lines
        would otherwise keep going to the renamed file.  The new file is
        opened before the old one is closed, so no line is dropped; if it
        cannot be opened, the old one stays in use and the reason is
        logged.
        """
        if self._fd is None:
            return
        self.flush()
        try:
            fd = self._open_file()
        except OSError as e:
            _log.error("mail log {path}: cannot reopen: {error}", path=self.path, error=e)
            return
        old, self._fd = self._fd, fd
        os.close(old)

    def line(self, text: str, level: str = "Info", when: float | None = None) -> None:
        """
        Add the line C{<time stamp> <level>: <text>}.

        @param text: the ESA text, already escaped (L{MailLog} does it).
        @param when: the line's time; by default now.
        """
        if self._fd is None:
            return
        stamp = self._stamp(time.time() if when is None else when)
        lines = self._lines
        lines.append(f"{stamp} {level}: {text}\n")
        if self._clock is None or len(lines) >= _MAX_BATCH:
            self.flush()
        elif self._call is None:
            self._call = self._clock.callLater(0, self._endOfTurn)

    def __call__(self, event: dict[str, Any]) -> None:
        if self._fd is None or not is_maillog_event(event):
            return
        level = _LEVEL_WORDS.get(event.get("log_level", LogLevel.info), "Info")
        self.line(formatEvent(event), level, event.get("log_time"))

    def _endOfTurn(self) -> None:
        self._call = None
        self.flush()

    def flush(self) -> None:
        """
        Write the lines given so far, in one C{write}.
        """
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        if not self._lines or self._fd is None:
            self._lines = []
            return
        data = "".join(self._lines).encode("utf-8", "backslashreplace")
        self._lines = []
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as e:
            # A full disk must not stop the mail; the lines are lost, and
            # the gateway's own log says so.
            _log.error(
                "mail log {path}: {count} octets not written: {error}",
                path=self.path,
                count=len(view),
                error=e,
            )

    def close(self) -> None:
        """
        Write what is buffered and close the file; later lines are dropped.
        """
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class MailLogObserver(MailLogFile):
    """
    A L{MailLogFile} opened at once, without a clock: every line is written
    as soon as it is logged, so that C{tail -f} shows each line as it
    happens.
    """

    def __init__(self, path: str) -> None:
        """
        @param path: the log file; it and its directory are created if
            missing.
        """
        super().__init__(path)
        self.open()


def mail_log_observer(path: str) -> MailLogObserver:
    """
    @return: an L{ILogObserver} appending mail log lines to C{path}; add it
        to L{twisted.logger.globalLogBeginner} or a publisher.
    """
    return MailLogObserver(path)


@implementer(ILogObserver)
class MailLogCollector:
    """
    Collects mail log events in memory: for tests, and for anything that
    wants to watch the mail log from inside the process.

    @ivar events: the mail log events seen, in order.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if is_maillog_event(event):
            self.events.append(event)

    @property
    def lines(self) -> list[str]:
        """
        The text of each event, as after C{Info: } in C{mail.log}.
        """
        return [formatEvent(e) for e in self.events]
