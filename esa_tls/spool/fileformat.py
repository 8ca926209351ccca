# -*- test-case-name: tests.test_spool_format -*-
"""
The on-disk formats of the spool: the message file and the recipient state
file.

Both are JSON, never pickle: a spool directory is data, and reading it must
not run code whoever wrote it (twisted.mail's relay queue unpickles its
envelopes, see C{twisted.md} 3.3).  Every decoder checks types and values
strictly and raises L{SpoolFormatError}; the spool quarantines what fails
instead of delivering it.

A message file is one header line and then the message bytes exactly as the
session wrote them::

    {"format":"esa_tls-spool","version":1,"body_size":      1234,"mid":7,"envelope":{...}}\\n
    Received: from ...\\r\\n
    ...

C{body_size} is written last, into a fixed-width field (JSON allows the
blanks), once the size is known; a file whose length disagrees with its
C{body_size} is truncated or damaged and is never delivered.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from esa_tls.spool.values import STATUSES, RecipientState
from esa_tls.values import Envelope, TLSInfo

__all__ = [
    "MAX_HEADER_LENGTH",
    "SIZE_FIELD_OFFSET",
    "SIZE_FIELD_WIDTH",
    "MessageHeader",
    "SpoolFormatError",
    "decode_envelope",
    "decode_message_header",
    "decode_recipient_states",
    "encode_envelope",
    "encode_message_header",
    "encode_recipient_states",
    "encode_size_field",
    "recipient_record",
]

MESSAGE_FORMAT = "esa_tls-spool"
STATE_FORMAT = "esa_tls-state"
VERSION = 1

_SIZE_PREFIX = b'{"format":"%s","version":%d,"body_size":' % (MESSAGE_FORMAT.encode(), VERSION)
#: Where in a message file the body size field starts.
SIZE_FIELD_OFFSET = len(_SIZE_PREFIX)
#: How wide the body size field is: room for any 64-bit size.
SIZE_FIELD_WIDTH = 20
#: A header line longer than this is not believed (a envelope of a thousand
#: recipients of maximum length is well under it).
MAX_HEADER_LENGTH = 4 * 1024 * 1024


class SpoolFormatError(ValueError):
    """
    A spool file is not in a format this version can read.
    """


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise SpoolFormatError(what)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or isinstance(value, float)


def _optional_str(value: object) -> bool:
    return value is None or isinstance(value, str)


def encode_envelope(envelope: Envelope) -> dict[str, Any]:
    """
    @return: C{envelope} as a JSON-ready dictionary.
    """
    tls = envelope.tls
    return {
        "mail_from": envelope.mail_from,
        "rcpt_to": list(envelope.rcpt_to),
        "helo": envelope.helo,
        "peer_ip": envelope.peer_ip,
        "listener": envelope.listener,
        "icid": envelope.icid,
        "sender_group": envelope.sender_group,
        "policy": envelope.policy,
        "tls": None
        if tls is None
        else {
            "protocol": tls.protocol,
            "cipher": tls.cipher,
            "peer_certificate_subject": tls.peer_certificate_subject,
            "peer_certificate_verified": tls.peer_certificate_verified,
        },
        "received_at": envelope.received_at,
    }


def decode_envelope(data: object) -> Envelope:
    """
    @return: the L{Envelope} that L{encode_envelope} made C{data} from.
    @raise SpoolFormatError: C{data} is not such a dictionary.
    """
    _require(isinstance(data, dict), "envelope is not an object")
    assert isinstance(data, dict)
    expected = {
        "mail_from",
        "rcpt_to",
        "helo",
        "peer_ip",
        "listener",
        "icid",
        "sender_group",
        "policy",
        "tls",
        "received_at",
    }
    _require(set(data) == expected, f"envelope keys {sorted(data)}")
    for key in ("mail_from", "helo", "peer_ip", "listener", "policy"):
        _require(isinstance(data[key], str), f"envelope {key} is not a string")
    rcpt_to = data["rcpt_to"]
    _require(
        isinstance(rcpt_to, list) and all(isinstance(r, str) for r in rcpt_to),
        "envelope rcpt_to is not a list of strings",
    )
    _require(_is_int(data["icid"]), "envelope icid is not an integer")
    _require(_optional_str(data["sender_group"]), "envelope sender_group")
    _require(_is_number(data["received_at"]), "envelope received_at is not a number")
    tls_data = data["tls"]
    tls: TLSInfo | None = None
    if tls_data is not None:
        _require(
            isinstance(tls_data, dict)
            and set(tls_data)
            == {"protocol", "cipher", "peer_certificate_subject", "peer_certificate_verified"}
            and isinstance(tls_data["protocol"], str)
            and isinstance(tls_data["cipher"], str)
            and _optional_str(tls_data["peer_certificate_subject"])
            and isinstance(tls_data["peer_certificate_verified"], bool),
            "envelope tls is malformed",
        )
        tls = TLSInfo(
            protocol=tls_data["protocol"],
            cipher=tls_data["cipher"],
            peer_certificate_subject=tls_data["peer_certificate_subject"],
            peer_certificate_verified=tls_data["peer_certificate_verified"],
        )
    return Envelope(
        mail_from=data["mail_from"],
        rcpt_to=tuple(rcpt_to),
        helo=data["helo"],
        peer_ip=data["peer_ip"],
        listener=data["listener"],
        icid=data["icid"],
        sender_group=data["sender_group"],
        policy=data["policy"],
        tls=tls,
        received_at=float(data["received_at"]),
    )


def encode_size_field(size: int) -> bytes:
    """
    @return: the bytes that go at L{SIZE_FIELD_OFFSET} for a body of
        C{size} bytes.
    """
    return b"%*d" % (SIZE_FIELD_WIDTH, size)


def encode_message_header(mid: int, envelope: Envelope) -> bytes:
    """
    @return: the header line of a message file, newline included, with a
        body size of 0 to be overwritten at L{SIZE_FIELD_OFFSET} once the
        body is complete.
    """
    rest = json.dumps(
        {"mid": mid, "envelope": encode_envelope(envelope)},
        ensure_ascii=True,
        separators=(",", ":"),
        allow_nan=False,
    )
    # rest is '{"mid":...}': splice its members after the size field.
    return _SIZE_PREFIX + encode_size_field(0) + b"," + rest[1:].encode("ascii") + b"\n"


class MessageHeader:
    """
    The parsed header line of a message file.

    @ivar mid: the message ID the file says it holds.
    @ivar envelope: its envelope.
    @ivar body_size: how many message bytes follow the header line.
    @ivar body_offset: where they start in the file.
    """

    def __init__(self, mid: int, envelope: Envelope, body_size: int, body_offset: int) -> None:
        self.mid = mid
        self.envelope = envelope
        self.body_size = body_size
        self.body_offset = body_offset


def decode_message_header(line: bytes) -> MessageHeader:
    """
    @param line: the first line of a message file, newline included.
    @raise SpoolFormatError: the line is not a complete header of a version
        this code reads.
    """
    _require(line.endswith(b"\n"), "header line is incomplete")
    _require(line.startswith(_SIZE_PREFIX[: len(b'{"format":')]), "not a spool file")
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as e:
        # RecursionError: nested deeper than the decoder goes, which no
        # file this code wrote is.
        raise SpoolFormatError(f"header is not JSON: {e}") from None
    _require(isinstance(data, dict), "header is not an object")
    _require(data.get("format") == MESSAGE_FORMAT, "not a spool file")
    _require(
        data.get("version") == VERSION, f"unknown spool format version {data.get('version')!r}"
    )
    _require(set(data) == {"format", "version", "body_size", "mid", "envelope"}, "header keys")
    mid = data["mid"]
    size = data["body_size"]
    _require(_is_int(mid) and mid >= 0, "header mid is not a MID")
    _require(_is_int(size) and size >= 0, "header body_size is not a size")
    return MessageHeader(mid, decode_envelope(data["envelope"]), size, len(line))


def recipient_record(state: RecipientState) -> dict[str, Any]:
    """
    C{state} as the JSON object the state file holds for it (and
    C{esa-tls showrecipients --json} prints).
    """
    return {
        "rid": state.rid,
        "address": state.address,
        "status": state.status,
        "attempts": state.attempts,
        "next_attempt": state.next_attempt,
        "last_error": state.last_error,
    }


def encode_recipient_states(mid: int, states: Mapping[int, RecipientState]) -> bytes:
    """
    @return: the contents of the recipient state file of message C{mid}.
    """
    return (
        json.dumps(
            {
                "format": STATE_FORMAT,
                "version": VERSION,
                "mid": mid,
                "recipients": [recipient_record(s) for _, s in sorted(states.items())],
            },
            ensure_ascii=True,
            separators=(",", ":"),
            allow_nan=False,
        ).encode("ascii")
        + b"\n"
    )


def decode_recipient_states(data: bytes, mid: int) -> dict[int, RecipientState]:
    """
    @param mid: the message the state file is expected to describe.
    @return: the recipient states by RID.
    @raise SpoolFormatError: C{data} is not a complete state file for
        message C{mid}.
    """
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise SpoolFormatError(f"state is not JSON: {e}") from None
    _require(isinstance(obj, dict), "state is not an object")
    _require(obj.get("format") == STATE_FORMAT, "not a state file")
    _require(obj.get("version") == VERSION, f"unknown state format version {obj.get('version')!r}")
    _require(obj.get("mid") == mid, f"state file is for MID {obj.get('mid')!r}")
    recipients = obj.get("recipients")
    _require(isinstance(recipients, list), "state recipients is not a list")
    result: dict[int, RecipientState] = {}
    for r in recipients:
        _require(
            isinstance(r, dict)
            and set(r) == {"rid", "address", "status", "attempts", "next_attempt", "last_error"},
            "state recipient keys",
        )
        _require(_is_int(r["rid"]) and r["rid"] >= 0, "state rid")
        _require(isinstance(r["address"], str), "state address")
        _require(r["status"] in STATUSES, f"state status {r['status']!r}")
        _require(_is_int(r["attempts"]) and r["attempts"] >= 0, "state attempts")
        _require(_is_number(r["next_attempt"]), "state next_attempt")
        _require(isinstance(r["last_error"], str), "state last_error")
        _require(r["rid"] not in result, "state rid repeated")
        result[r["rid"]] = RecipientState(
            rid=r["rid"],
            address=r["address"],
            status=r["status"],
            attempts=r["attempts"],
            next_attempt=float(r["next_attempt"]),
            last_error=r["last_error"],
        )
    return result
