"""
The durable spool: accepted mail on stable storage, and the queue the
delivery engine works from.

L{DurableSpool} implements L{esa_tls.interfaces.IMessageStore}; see
L{esa_tls.spool.store} for the layout and the guarantees.
"""

from __future__ import annotations

from esa_tls.spool.fs import FileSystem
from esa_tls.spool.groupcommit import Executor, GroupCommitter
from esa_tls.spool.store import DurableSpool, IncomingMessage
from esa_tls.spool.values import (
    BOUNCED,
    DEFERRED,
    DELIVERED,
    QUEUED,
    QueuedMessage,
    RecipientState,
)

__all__ = [
    "BOUNCED",
    "DEFERRED",
    "DELIVERED",
    "QUEUED",
    "DurableSpool",
    "Executor",
    "FileSystem",
    "GroupCommitter",
    "IncomingMessage",
    "QueuedMessage",
    "RecipientState",
]
