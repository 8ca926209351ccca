# -*- test-case-name: tests.test_spool_queue -*-
"""
What the queue side of the spool tells the delivery engine about a message:
its envelope and, per recipient, how far delivery has got.
"""

from __future__ import annotations

from attrs import field, frozen
from attrs.validators import in_

from esa_tls.values import Envelope

__all__ = [
    "BOUNCED",
    "DEFERRED",
    "DELIVERED",
    "FINAL_STATUSES",
    "QUEUED",
    "STATUSES",
    "QueuedMessage",
    "RecipientState",
]

#: Not tried yet.
QUEUED = "queued"
#: Handed to the next hop with a 2xx: never to be sent again.
DELIVERED = "delivered"
#: Tried and failed temporarily; try again at C{next_attempt}.
DEFERRED = "deferred"
#: Failed for good (5xx, or retried until the give-up time); a DSN is due.
BOUNCED = "bounced"

STATUSES: frozenset[str] = frozenset({QUEUED, DELIVERED, DEFERRED, BOUNCED})
#: Statuses after which nothing more is done for a recipient.
FINAL_STATUSES: frozenset[str] = frozenset({DELIVERED, BOUNCED})


@frozen
class RecipientState:
    """
    The delivery state of one recipient of one message, as stored durably.

    @ivar rid: the recipient's index in the envelope's C{rcpt_to} (the ESA
        RID, 0-based per message).
    @ivar address: the recipient address, bare C{local@domain}.
    @ivar status: one of L{QUEUED}, L{DELIVERED}, L{DEFERRED}, L{BOUNCED}.
    @ivar attempts: delivery attempts made so far.
    @ivar next_attempt: POSIX time before which the recipient is not tried
        again (C{0.0}: at once).
    @ivar last_error: the last failure, as text for C{showrecipients} and
        the DSN (C{""} when there was none).
    """

    rid: int
    address: str
    status: str = field(default=QUEUED, validator=in_(STATUSES))
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""


@frozen
class QueuedMessage:
    """
    One committed message that is not finished yet.

    @ivar mid: the message ID.
    @ivar envelope: the envelope as the session received it.
    @ivar recipients: the state of every recipient, in RID order, finished
        ones included (so that RIDs stay meaningful).
    @ivar body_size: the number of message bytes, headers included, after
        the spool's own header line.
    """

    mid: int
    envelope: Envelope
    recipients: tuple[RecipientState, ...]
    body_size: int

    @property
    def pending(self) -> tuple[RecipientState, ...]:
        """
        The recipients still to be tried (queued or deferred).  Delivered
        and bounced recipients are never in here, also after a crash.
        """
        return tuple(r for r in self.recipients if r.status not in FINAL_STATUSES)
