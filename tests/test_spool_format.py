"""
The spool's file formats: JSON that round-trips every envelope and state,
one ASCII header line, and strict refusal of anything else.
"""

from __future__ import annotations

import json
import pickle

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from esa_tls.spool import DELIVERED, RecipientState
from esa_tls.spool.fileformat import (
    SIZE_FIELD_OFFSET,
    SpoolFormatError,
    decode_message_header,
    decode_recipient_states,
    encode_message_header,
    encode_recipient_states,
    encode_size_field,
)
from esa_tls.values import Envelope, TLSInfo

texts = st.text(max_size=40)
envelopes = st.builds(
    Envelope,
    mail_from=texts,
    rcpt_to=st.lists(texts, max_size=5).map(tuple),
    helo=texts,
    peer_ip=texts,
    listener=texts,
    icid=st.integers(min_value=0, max_value=2**63),
    sender_group=st.none() | texts,
    policy=texts,
    tls=st.none() | st.builds(TLSInfo, texts, texts, st.none() | texts, st.booleans()),
    received_at=st.floats(allow_nan=False, allow_infinity=False),
)


class HeaderTests(SynchronousTestCase):
    @given(envelopes, st.integers(min_value=0, max_value=2**63), st.integers(0, 10**15))
    def test_roundTrip(self, envelope: Envelope, mid: int, size: int) -> None:
        """
        Any envelope (non-ASCII and control characters included) comes back
        equal, from a header that is a single ASCII line.
        """
        line = encode_message_header(mid, envelope)
        self.assertEqual(line.count(b"\n"), 1)
        self.assertTrue(line.endswith(b"\n"))
        line.decode("ascii")
        line = (
            line[:SIZE_FIELD_OFFSET]
            + encode_size_field(size)
            + line[SIZE_FIELD_OFFSET + len(encode_size_field(0)) :]
        )
        header = decode_message_header(line)
        self.assertEqual(
            (header.mid, header.envelope, header.body_size, header.body_offset),
            (mid, envelope, size, len(line)),
        )

    def test_versioned(self) -> None:
        """
        The header names its format and version; another version is refused.
        """
        envelope = Envelope("a@b", ("c@d",), "h", "127.0.0.1", "L", 1)
        data = json.loads(encode_message_header(3, envelope))
        self.assertEqual((data["format"], data["version"]), ("esa_tls-spool", 1))
        data["version"] = 2
        self.assertRaises(
            SpoolFormatError, decode_message_header, json.dumps(data).encode() + b"\n"
        )

    def test_refusesOtherData(self) -> None:
        """
        Pickles, truncated lines, wrong types and extra keys are refused.
        """
        envelope = Envelope("a@b", ("c@d",), "h", "127.0.0.1", "L", 1)
        good = encode_message_header(3, envelope)
        data = json.loads(good)
        wrong_type = dict(data, envelope=dict(data["envelope"], icid="1"))
        extra = dict(data, evil=True)
        for bad in [
            pickle.dumps(envelope) + b"\n",
            good[:-1],
            good[:40] + b"\n",
            json.dumps(wrong_type).encode() + b"\n",
            json.dumps(extra).encode() + b"\n",
        ]:
            self.assertRaises(SpoolFormatError, decode_message_header, bad)

    def test_deepNestingRefused(self) -> None:
        """
        A header nested deeper than the JSON decoder recurses is refused as
        malformed (and so quarantined), not a L{RecursionError} that stops
        the gateway's start-up at every try.
        """
        line = b'{"format":"esa_tls-spool","version":1,"envelope":' + b"[" * 100_000 + b"\n"
        self.assertRaises(SpoolFormatError, decode_message_header, line)


class StateTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        """
        Recipient states come back equal, for the right message only.
        """
        states = {
            0: RecipientState(0, "b\u00f6b@example.com", DELIVERED, 1, 0.0, ""),
            1: RecipientState(1, "c@example.com", "deferred", 3, 1795877368.5, "451 later"),
        }
        data = encode_recipient_states(7, states)
        self.assertEqual(decode_recipient_states(data, 7), states)
        self.assertRaises(SpoolFormatError, decode_recipient_states, data, 8)
        self.assertRaises(SpoolFormatError, decode_recipient_states, data[:-10], 7)

    def test_deepNestingRefused(self) -> None:
        """
        A state file nested deeper than the JSON decoder recurses is
        refused as malformed, not a L{RecursionError}.
        """
        data = b'{"format":"esa_tls-state","recipients":' + b"[" * 100_000
        self.assertRaises(SpoolFormatError, decode_recipient_states, data, 7)

    def test_unknownStatusRefused(self) -> None:
        """
        A status that is not one of the four is refused, in a file and in a
        value.
        """
        data = encode_recipient_states(7, {0: RecipientState(0, "a@b")})
        self.assertRaises(
            SpoolFormatError,
            decode_recipient_states,
            data.replace(b'"queued"', b'"sent"'),
            7,
        )
        self.assertRaises(ValueError, RecipientState, 0, "a@b", "sent")
