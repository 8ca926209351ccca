# -*- test-case-name: tests.test_outbound_queue -*-
"""
Delivery Status Notifications (RFC 3464): the bounce a sender gets when
recipients failed for good.

A DSN is a C{multipart/report; report-type=delivery-status} with three
parts: a human explanation, the machine-readable C{message/delivery-status}
(one block per failed recipient: C{Final-Recipient}, C{Action: failed},
C{Status}, C{Diagnostic-Code}), and the original message's headers
(C{text/rfc822-headers}, not the body: a bounce must not carry the whole
message back, and must not become a vehicle for backscatter spam).

It is sent from the null reverse path, so that it can never bounce in turn;
and none is ever made for a message that itself came from the null reverse
path (a bounce of a bounce, RFC 5321 section 6.1).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from email.utils import formatdate

from attrs import frozen

__all__ = ["FailedRecipient", "build_dsn", "status_of"]

#: An RFC 3463 code standing as a word of its own: not the tail or the head
#: of a dotted number (an IP address, C{192.5.1.1}) or of a name.
_STATUS = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?!\w|\.\w)")


@frozen
class FailedRecipient:
    """
    One recipient the DSN reports.

    @ivar diagnostic: the remote server's reply (C{"550 5.1.1 No such
        user"}) or our own reason.
    @ivar remote: whether C{diagnostic} is a reply from the remote MTA
        (C{Diagnostic-Code: smtp; ...}) rather than our own text.
    """

    address: str
    diagnostic: str
    status: str = ""
    remote: bool = True


def status_of(text: str, code: int | None = None) -> str:
    """
    The RFC 3463 status code for a failure: the enhanced code in the text
    if it has one, else one derived from the reply code.
    """
    match = _STATUS.search(text)
    if match is not None and match.group(1) == "5":
        return match.group(0)
    if code is not None and 500 <= code < 600:
        return "5.0.0"
    if match is not None:
        return match.group(0)
    return "5.0.0"


def _ascii(text: str) -> str:
    """
    A header-safe, single-line, ASCII rendering of peer text.
    """
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)


#: Where L{_fold} breaks a line at a space (RFC 5322 section 2.1.1's 78).
_FOLD_WIDTH = 78
#: The length no line may pass (RFC 5322 section 2.1.1: 998 octets), and
#: where a word longer than that is cut.
_MAX_LINE = 998


def _fold(line: str) -> list[str]:
    """
    C{line} (ASCII, from L{_ascii}) as lines of at most 78 characters where
    its spaces allow and never more than 998, each continuation line
    starting with a space: header folding, so the C{message/delivery-status}
    fields unfold to the same text (runs of spaces made one, which also
    keeps a line of nothing but spaces, the end of a field block to some
    readers, out).  A peer's reply may be 64 KiB long, and a strict
    receiver refuses a longer line, which would lose the bounce.
    """
    if len(line) <= _FOLD_WIDTH:
        return [line]
    lines: list[str] = []
    current = ""
    for word in line.split():
        if current and len(current) + 1 + len(word) > _FOLD_WIDTH:
            lines.append(current)
            current = " " + word
        else:
            current = f"{current} {word}" if current else word
        while len(current) > _MAX_LINE:
            lines.append(current[:_MAX_LINE])
            current = " " + current[_MAX_LINE:]
    lines.append(current)
    return lines


def build_dsn(
    *,
    reporting_mta: str,
    sender: str,
    failed: Sequence[FailedRecipient],
    original_headers: bytes,
    arrival_date: float | None = None,
    now: float | None = None,
    original_mid: int | None = None,
) -> bytes:
    """
    The whole DSN message, CRLF line endings, ready for the spool.

    @param reporting_mta: our host name.
    @param sender: the original envelope sender, who gets the DSN.
    @param failed: the recipients that failed for good.
    @param original_headers: the original message's header section.
    @raise ValueError: for a null C{sender}: never bounce a bounce.
    """
    if not sender:
        raise ValueError("no DSN for the null reverse path")
    boundary = f"=_{uuid.uuid4().hex}"
    host = _ascii(reporting_mta)
    # The original's headers go back as they came, and they may hold 8-bit
    # octets (raw UTF-8 subjects are common): content without a label is
    # 7-bit (RFC 2045 section 6.1), so such a DSN says it is not.
    eight_bit = [] if original_headers.isascii() else ["Content-Transfer-Encoding: 8bit"]
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>",
        f"To: <{_ascii(sender)}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {formatdate(now, localtime=False)}",
        f"Message-ID: <{uuid.uuid4().hex}@{host}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        *eight_bit,
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Description: Notification",
        "",
        f"This is the mail system at host {host}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "It has been returned below (headers only).",
        "",
    ]
    if original_mid is not None:
        lines.append(f"Message ID on {host}: MID {original_mid}")
        lines.append("")
    for recipient in failed:
        lines += _fold(f"<{_ascii(recipient.address)}>: {_ascii(recipient.diagnostic)}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "",
        f"Reporting-MTA: dns; {host}",
    ]
    if arrival_date:
        lines.append(f"Arrival-Date: {formatdate(arrival_date, localtime=False)}")
    for recipient in failed:
        status = recipient.status or status_of(recipient.diagnostic)
        kind = "smtp" if recipient.remote else "x-local"
        lines += [
            "",
            *_fold(f"Final-Recipient: rfc822; {_ascii(recipient.address)}"),
            "Action: failed",
            f"Status: {status}",
            *_fold(f"Diagnostic-Code: {kind}; {_ascii(recipient.diagnostic)}"),
        ]
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        *eight_bit,
        "Content-Description: Undelivered message headers",
        "",
    ]
    head = "\r\n".join(lines).encode("ascii") + b"\r\n"
    headers = original_headers.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").rstrip(b"\r\n")
    return head + headers + b"\r\n\r\n" + f"--{boundary}--\r\n".encode("ascii")


def header_section(body: bytes) -> bytes:
    """
    The header section of a message (up to the first empty line).
    """
    for separator in (b"\r\n\r\n", b"\n\n"):
        index = body.find(separator)
        if index >= 0:
            return body[:index]
    return body
