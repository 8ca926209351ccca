# -*- test-case-name: tests.test_alerts_dispatcher -*-
"""
The L{Alert} value: what every alert hook receives.

An alert is built once and then read by very different consumers: a person
reading a mail, a script parsing C{alerts.log}, a chat webhook, a pager.  So
it carries both words (L{Alert.subject}, L{Alert.body}) and a flat set of
typed L{fields<Alert.fields>} that programs can rely on without parsing
prose.

Subjects follow the ESA's alert mails, so that the filters administrators
already have keep working::

    <Severity> <<Type>> <origin>: <title>
    Warning <System> esa_tls: TLS failure for destination domain partner.example

C{Severity} and C{Type} are capitalised words (L{Severity.label},
L{AlertType.label}); C{origin} is C{esa_tls} unless the gateway is given
another one (the ESA puts its host name there).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from attrs import field, frozen

__all__ = [
    "DEFAULT_ORIGIN",
    "Alert",
    "AlertFields",
    "AlertKind",
    "AlertType",
    "Severity",
    "format_subject",
    "make_alert",
]

#: The origin named in subjects when none is configured.
DEFAULT_ORIGIN = "esa_tls"


class Severity(enum.Enum):
    """
    ESA alert severities; recipients subscribe to some of them.
    """

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"

    @property
    def label(self) -> str:
        """
        The word in the subject: C{Critical}, C{Warning}, C{Info}.
        """
        return self.value.capitalize()


class AlertType(enum.Enum):
    """
    ESA alert types (the ones C{[[alerts.recipients]] types} accepts).
    """

    SYSTEM = "system"
    HARDWARE = "hardware"
    UPDATER = "updater"

    @property
    def label(self) -> str:
        """
        The word between angle brackets in the subject: C{<System>}.
        """
        return self.value.capitalize()


class AlertKind:
    """
    Machine names of the alerts esa_tls raises, in L{Alert.kind}: hooks and
    filters match on these rather than on subjects, which are for people.
    """

    TLS_FAILURE = "tls-failure"
    TLS_RECOVERED = "tls-recovered"
    #: The summary of the TLS alerts held back by the dispatcher's limit.
    TLS_ALERTS_HELD = "tls-alerts-held"
    CERTIFICATE_EXPIRY = "certificate-expiry"
    CERTIFICATE_EXPIRED = "certificate-expired"
    DEMO_CERTIFICATE = "demo-certificate"


_Scalar = str | int | float | bool | None


def _freeze(value: object) -> Any:
    """
    Make a field value immutable and JSON-shaped: sequences become tuples,
    enums their value, datetimes ISO 8601 UTC text.
    """
    if isinstance(value, enum.Enum):
        return _freeze(value.value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Iterable) and not isinstance(value, Mapping | bytes):
        return tuple(_freeze(v) for v in value)
    raise TypeError(f"alert field values must be JSON scalars or sequences, not {value!r}")


@frozen
class AlertFields(Mapping[str, Any]):
    """
    The structured part of an alert: an immutable, hashable mapping of
    names to JSON scalars or tuples of them, in a stable (sorted) order so
    that two equal alerts render the same JSON.

    For TLS failures the names are: C{domain}, C{host}, C{address},
    C{port}, C{dcid}, C{listener}, C{result_type} (an RFC 8460 result
    type, e.g. C{starttls-not-supported}), C{result_types} (all seen in
    the interval), C{level} (the Destination Controls setting that
    required TLS), C{detail}, C{mids}, C{first_seen}, C{last_seen} (ISO
    8601 UTC) and C{count}; C{alert_mail_only} (true) when every failure
    was of alert mail, which the mail hook then does not mail.
    """

    items_: tuple[tuple[str, Any], ...] = field(default=())

    @classmethod
    def of(cls, values: Mapping[str, object] | None = None, **more: object) -> AlertFields:
        """
        Build fields from a mapping and keywords; values are frozen (see
        the class docstring) and C{None} values are dropped, so an absent
        fact is simply absent.
        """
        merged: dict[str, object] = dict(values or {})
        merged.update(more)
        return cls(tuple(sorted((k, _freeze(v)) for k, v in merged.items() if v is not None)))

    def __getitem__(self, key: str) -> Any:
        for name, value in self.items_:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self.items_)

    def __len__(self) -> int:
        return len(self.items_)


@frozen
class Alert:
    """
    One alert.

    @ivar severity: how urgent it is.
    @ivar type: which ESA alert type it belongs to; with C{severity} it
        decides who is told.
    @ivar kind: what happened, for programs (an L{AlertKind} name).
    @ivar subject: the one-line summary, ESA style (see the module
        docstring).
    @ivar body: the explanation for a person: what happened, what it
        affects, what to do.
    @ivar fields: the facts, for programs.
    @ivar time: when it was raised (POSIX seconds).
    @ivar recipients: the addresses subscribed to this severity and type;
        filled in by the dispatcher, used by the mail hook.
    """

    severity: Severity
    type: AlertType
    kind: str
    subject: str
    body: str
    fields: AlertFields = AlertFields()
    time: float = 0.0
    recipients: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """
        The alert as a JSON object: what the log, command and webhook hooks
        emit.  Keys: C{time} (ISO 8601 UTC), C{timestamp} (POSIX seconds),
        C{severity}, C{type}, C{kind}, C{subject}, C{body}, C{fields},
        C{recipients}.
        """
        return {
            "time": datetime.fromtimestamp(self.time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "timestamp": self.time,
            "severity": self.severity.value,
            "type": self.type.value,
            "kind": self.kind,
            "subject": self.subject,
            "body": self.body,
            "fields": {k: list(v) if isinstance(v, tuple) else v for k, v in self.fields.items()},
            "recipients": list(self.recipients),
        }

    def to_json_bytes(self) -> bytes:
        """
        L{to_json} serialised on one line, UTF-8.
        """
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def format_subject(
    severity: Severity, type: AlertType, title: str, origin: str = DEFAULT_ORIGIN
) -> str:
    """
    @return: the ESA-style subject C{Warning <System> esa_tls: TITLE}.
        Line breaks in C{title} are folded to spaces: a subject is one line.
    """
    one_line = " ".join(title.split())
    return f"{severity.label} <{type.label}> {origin}: {one_line}"


def make_alert(
    severity: Severity,
    type: AlertType,
    kind: str,
    title: str,
    body: str,
    fields: Mapping[str, object] | None = None,
    *,
    time: float = 0.0,
    origin: str = DEFAULT_ORIGIN,
) -> Alert:
    """
    Build an L{Alert} with an ESA-style subject made from C{title}.
    """
    return Alert(
        severity=severity,
        type=type,
        kind=kind,
        subject=format_subject(severity, type, title, origin),
        body=body,
        fields=AlertFields.of(fields),
        time=time,
    )
