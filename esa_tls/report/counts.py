# -*- test-case-name: tests.test_report_counters -*-
"""
The columns of the ESA's TLS Connections report, as one value.

One connection is counted once, by the TLS level that applied to it and
what became of TLS on it; its messages are counted as encrypted or not:

  ===========  ======================  ======================================
  level        TLS outcome             counted as
  ===========  ======================  ======================================
  required     up                      C{required_success}
  required     failed / never started  C{required_failure}
  preferred    up                      C{preferred_success}
  preferred    failed                  C{preferred_failure}
  preferred    not attempted           C{unencrypted}
  none         (not attempted)         C{unencrypted}
  ===========  ======================  ======================================

"Not attempted" under C{preferred} is the peer's choice: an inbound client
that never sent STARTTLS, or an outbound server that did not offer it.
"Failed" is a handshake (or, for the verifying settings, a verification)
that did not succeed.  The messages of a connection with TLS up are
C{encrypted_messages}; any other message is C{unencrypted_messages} (for
instance those a C{preferred} delivery then sent in the clear).

From these the report derives, as the ESA does: C{attempted} (the four
success and failure columns), C{connections} (C{attempted} plus
C{unencrypted}) and C{tls_percent} (C{attempted} over C{connections}).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

import attrs
from attrs import frozen

__all__ = ["COLUMNS", "Direction", "Level", "TLSCounts", "connection_columns", "level_of"]


class Direction(enum.Enum):
    """
    Which half of the report: mail received, or mail sent.
    """

    INCOMING = "incoming"
    OUTGOING = "outgoing"


class Level(enum.Enum):
    """
    The TLS level that applied to one connection, reduced to what the
    report distinguishes.
    """

    REQUIRED = "required"
    PREFERRED = "preferred"
    NONE = "none"


def level_of(value: object) -> Level:
    """
    The report level of an inbound L{esa_tls.config.model.TLSMode}, an
    outbound L{esa_tls.config.model.DestinationTLS} (its C{-verify}
    variants count with their base level), a L{Level}, or one of the
    strings C{"required"}, C{"preferred"}, C{"none"}/C{"off"}/C{"no"}.

    @raise ValueError: anything else (C{default} too: give the effective
        setting).
    """
    try:
        # Every connection asks with one of a handful of enum members.
        return _levels[value]
    except (KeyError, TypeError):
        pass
    if isinstance(value, Level):
        return value
    text = str(getattr(value, "value", value)).lower()
    if text.startswith("required"):
        level = Level.REQUIRED
    elif text.startswith("preferred"):
        level = Level.PREFERRED
    elif text in ("none", "off", "no"):
        level = Level.NONE
    else:
        raise ValueError(f"not a TLS level: {value!r}")
    if isinstance(value, enum.Enum) and len(_levels) < 64:
        _levels[value] = level
    return level


_levels: dict[object, Level] = {}


@frozen
class TLSCounts:
    """
    Counts for one row (or one total) of the report; see the module
    docstring for what each means.
    """

    required_success: int = 0
    required_failure: int = 0
    preferred_success: int = 0
    preferred_failure: int = 0
    unencrypted: int = 0
    encrypted_messages: int = 0
    unencrypted_messages: int = 0

    @classmethod
    def of_connection(cls, level: Level, tls: bool | None, messages: int = 0) -> TLSCounts:
        """
        The counts of one connection.

        @param tls: C{True} if TLS was up, C{False} if it was attempted and
            failed, C{None} if it was not attempted.
        @param messages: how many messages the connection carried.
        """
        values = [0] * len(COLUMNS)
        column, message_column = connection_columns(level, tls)
        values[column] = 1
        values[message_column] = messages
        return cls(*values)

    def __add__(self, other: TLSCounts) -> TLSCounts:
        # Field by field: attrs.astuple and friends cost more than the whole
        # rest of the accounting of a session.
        return TLSCounts(
            self.required_success + other.required_success,
            self.required_failure + other.required_failure,
            self.preferred_success + other.preferred_success,
            self.preferred_failure + other.preferred_failure,
            self.unencrypted + other.unencrypted,
            self.encrypted_messages + other.encrypted_messages,
            self.unencrypted_messages + other.unencrypted_messages,
        )

    def as_tuple(self) -> tuple[int, ...]:
        """
        The stored columns, in L{COLUMNS} order.
        """
        return (
            self.required_success,
            self.required_failure,
            self.preferred_success,
            self.preferred_failure,
            self.unencrypted,
            self.encrypted_messages,
            self.unencrypted_messages,
        )

    @classmethod
    def from_sequence(cls, values: Sequence[int], columns: Sequence[str]) -> TLSCounts:
        """
        Read counts stored under C{columns}; columns this version does not
        know are ignored, missing ones are 0.
        """
        known = {c: int(v) for c, v in zip(columns, values, strict=False) if c in COLUMNS}
        return cls(**known)

    @property
    def attempted(self) -> int:
        """
        Connections on which TLS was attempted (or required).
        """
        return (
            self.required_success
            + self.required_failure
            + self.preferred_success
            + self.preferred_failure
        )

    @property
    def failures(self) -> int:
        """
        Connections on which TLS failed.
        """
        return self.required_failure + self.preferred_failure

    @property
    def connections(self) -> int:
        return self.attempted + self.unencrypted

    @property
    def messages(self) -> int:
        return self.encrypted_messages + self.unencrypted_messages

    @property
    def tls_percent(self) -> float:
        """
        The share of connections on which TLS was attempted, 0 to 100 (0
        with no connections).
        """
        return 100.0 * self.attempted / self.connections if self.connections else 0.0

    def to_json(self) -> dict[str, Any]:
        """
        The stored columns and the derived ones, by name.
        """
        out: dict[str, Any] = dict(zip(COLUMNS, self.as_tuple(), strict=True))
        out["attempted"] = self.attempted
        out["connections"] = self.connections
        out["tls_percent"] = round(self.tls_percent, 1)
        return out

    def __bool__(self) -> bool:
        return any(self.as_tuple())


#: The stored columns, in storage order.
COLUMNS: tuple[str, ...] = tuple(a.name for a in attrs.fields(TLSCounts))

_REQUIRED_SUCCESS, _REQUIRED_FAILURE, _PREFERRED_SUCCESS, _PREFERRED_FAILURE, _UNENCRYPTED = range(
    5
)
_ENCRYPTED_MESSAGES, _UNENCRYPTED_MESSAGES = 5, 6


def connection_columns(level: Level, tls: bool | None) -> tuple[int, int]:
    """
    Where one connection counts: the index in L{COLUMNS} of its connection
    column, and that of the column its messages go to.  A counter that
    accumulates in place (L{esa_tls.report.counters.TLSCounters}) adds to
    these two and builds no value per connection.

    @param tls: as for L{TLSCounts.of_connection}.
    """
    messages = _ENCRYPTED_MESSAGES if tls is True else _UNENCRYPTED_MESSAGES
    if level is Level.REQUIRED:
        return (_REQUIRED_SUCCESS if tls is True else _REQUIRED_FAILURE), messages
    if level is Level.PREFERRED and tls is not None:
        return (_PREFERRED_SUCCESS if tls else _PREFERRED_FAILURE), messages
    return _UNENCRYPTED, messages
