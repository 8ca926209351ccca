# -*- test-case-name: tests.test_alerts_hooks -*-
"""
The mail hook: the ESA's way of alerting, an email to each subscribed
recipient, sent through the gateway's own queue.

The alert is written as an RFC 5322 message and committed into the spool
like any accepted message, so it gets the same durability, retries and
Destination Controls as the rest of the mail (an alert is not lost because
the alert recipient's server was down for an hour).  The message says it
is machine-made (C{Auto-Submitted: auto-generated}, RFC 3834) so that
vacation responders stay quiet, and carries the alert's kind, severity
and type in C{X-ESA-TLS-Alert} for mail filters.

Alert mail is mail like any other, so it can fail the TLS its recipients'
domain requires, and raise a TLS-failure alert, whose mail goes to the
same domain and fails again: one more alert mail each merge interval for as
long as the outage lasts, or for ever when the domain has one broken host
and a good one.  So a TLS-failure alert whose failures were all of alert
mail (L{MailAlertHook.is_alert_mail}, which the dispatcher asks) is not
mailed; the other hooks still get it.
"""

from __future__ import annotations

import collections
import email.policy
import email.utils
import time as _time
import uuid
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from zope.interface import implementer

from esa_tls.alerts.alert import Alert, AlertKind
from esa_tls.interfaces import IAlertHook, IMessageStore
from esa_tls.values import Envelope

__all__ = ["ALERT_LISTENER", "MailAlertHook", "alert_message"]

#: The C{listener} of an alert message's envelope: it did not come in on
#: any listener, and the mail log and queue tools show this name instead.
ALERT_LISTENER = "(alerts)"

_UNFOLDED = email.policy.SMTP.clone(max_line_length=998)

#: Alert mail MIDs a hook remembers, for a store that cannot say.
_REMEMBERED = 10_000

_FIELD_ORDER = ("domain", "result_type", "host", "address", "mids", "count")


def _field_lines(alert: Alert) -> list[str]:
    names = [n for n in _FIELD_ORDER if n in alert.fields]
    names += [n for n in alert.fields if n not in names]
    lines = []
    for name in names:
        value = alert.fields[name]
        text = ", ".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
        lines.append(f"  {name}: {text}")
    return lines


def alert_message(
    alert: Alert,
    sender: str,
    recipients: Sequence[str],
    hostname: str,
    *,
    date: float | None = None,
) -> bytes:
    """
    The alert as an RFC 5322 message: CRLF line endings, UTF-8 text in
    quoted-printable where needed, the subject RFC 2047-encoded if it is
    not ASCII.  The body is the alert's text followed by its fields, one
    C{name: value} per line, for people who filter mail by body text.

    @param date: POSIX time for the C{Date:} header (the alert's own time
        if not given).
    """
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = alert.subject
    message["Date"] = email.utils.formatdate(
        date if date is not None else (alert.time or _time.time()), localtime=False
    )
    message["Message-ID"] = f"<{uuid.uuid4().hex}.alert@{hostname}>"
    message["Auto-Submitted"] = "auto-generated"
    message["X-ESA-TLS-Alert"] = (
        f"{alert.kind}; severity={alert.severity.value}; type={alert.type.value}"
    )
    text = alert.body.rstrip("\n") + "\n"
    if len(alert.fields):
        text += "\nDetails:\n" + "\n".join(_field_lines(alert)) + "\n"
    message.set_content(text, charset="utf-8", cte="quoted-printable")
    # Headers are folded only past RFC 5322's hard limit: the email
    # package's folding at 78 columns moves a subject like "Warning
    # <System> ..." whole onto a continuation line, which some readers show
    # with a leading space and which breaks subject filters.
    return message.as_bytes(policy=_UNFOLDED)


@implementer(IAlertHook)
class MailAlertHook:
    """
    Queues each alert as one message to the recipients subscribed to it
    (L{Alert.recipients}); an alert nobody is subscribed to sends nothing.

    @ivar name: C{"mail"}, for the dispatcher's log lines.
    """

    name = "mail"

    def __init__(
        self,
        store: IMessageStore,
        hostname: str,
        *,
        sender: str | None = None,
        now: Callable[[], float] = _time.time,
    ) -> None:
        """
        @param store: the message store the delivery engine works from
            (the L{esa_tls.spool.DurableSpool}).
        @param hostname: the gateway's name: in the default sender, the
            C{Message-ID} and the envelope's HELO.
        @param sender: the C{From:} and envelope sender; default
            C{alert@HOSTNAME}.
        """
        self.store = store
        self.hostname = hostname
        self.sender = sender if sender is not None else f"alert@{hostname}"
        self._now = now
        self._queued: collections.OrderedDict[int, None] = collections.OrderedDict()

    def is_alert_mail(self, mid: int) -> bool:
        """
        Whether message C{mid} is alert mail: one this hook queued, or (in
        a store that can say, such as the spool after a restart) one whose
        envelope came from L{ALERT_LISTENER}.
        """
        if mid in self._queued:
            return True
        get = getattr(self.store, "get", None)
        if get is None:
            return False
        try:
            return bool(get(mid).envelope.listener == ALERT_LISTENER)
        except Exception:
            return False

    def _remember(self, mid: object) -> object:
        if isinstance(mid, int):
            self._queued[mid] = None
            while len(self._queued) > _REMEMBERED:
                self._queued.popitem(last=False)
        return mid

    def alert(self, alert: object) -> Deferred[Any]:
        """
        Commit the alert message into the store.

        @return: a L{Deferred} firing with the message's MID once it is
            durable (C{None} when there was nobody to send it to, or
            when the alert is of TLS failures of alert mail only), or
            failing with the store's error.
        """
        assert isinstance(alert, Alert)
        if not alert.recipients:
            return succeed(None)
        if alert.kind == AlertKind.TLS_FAILURE and alert.fields.get("alert_mail_only"):
            # Its mail would go where the alert mail it is about is stuck.
            return succeed(None)
        now = self._now()
        envelope = Envelope(
            mail_from=self.sender,
            rcpt_to=tuple(alert.recipients),
            helo=self.hostname,
            peer_ip="127.0.0.1",
            listener=ALERT_LISTENER,
            icid=0,
            received_at=now,
        )
        data = alert_message(alert, self.sender, alert.recipients, self.hostname, date=now)

        def queue() -> object:
            message = self.store.new_message(envelope)
            try:
                message.write(data)
            except Exception:
                message.abort()
                raise
            return message.commit()

        return maybeDeferred(queue).addCallback(self._remember)
