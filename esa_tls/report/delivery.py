# -*- test-case-name: tests.test_alerts_delivery -*-
"""
What one delivery attempt means for the TLS report and the TLS alerts:
the queue runner calls L{record_delivery} with each
L{esa_tls.outbound.result.DeliveryResult}.

The TLS-failure alerts themselves come earlier, host by host, through
C{deliver_message(on_tls_failure=dispatcher.on_tls_failure)}; this adds
the other half, the recovery: a message delivered with TLS up to a domain
with an open TLS-failure incident ends it
(L{esa_tls.alerts.dispatcher.AlertDispatcher.tls_recovered}), unless a
host failed the domain's TLS in that same attempt: a domain whose first MX
strips STARTTLS and whose second one works gets every message through the
second, and is still failing.  Ending the incident there would follow each
alert with a recovery notice and start a new incident, alerted at once, with
the next message: no merging at all.

Connections are counted from the result (see L{esa_tls.report.counts} for
the rules):

  - each host that could not give the TLS a required setting demands
    (C{tls_failures}): a required failure, no message;
  - the connection that carried the transaction (C{tls}), unless it is
    one of those: TLS up, or TLS failed before its C{220} and the mail
    went on in the clear (C{preferred}), or STARTTLS not offered (not
    attempted), or C{no};
  - a C{preferred} handshake that failed after C{220} and was followed
    by a new connection in the clear counts as two connections, the
    failed one and the clear one.

The message counts as one (encrypted or not) when any recipient was
delivered on that connection.  A message carried by a session kept from
an earlier message (C{result.reused}) counts only as a message: its
connection was counted with the message that opened it.
"""

from __future__ import annotations

from typing import Any

from esa_tls.outbound.result import DeliveryResult, Fallback
from esa_tls.report.counts import Direction, TLSCounts

__all__ = ["record_delivery"]


def record_delivery(result: DeliveryResult, counters: Any = None, dispatcher: Any = None) -> None:
    """
    Count C{result} in C{counters} (an L{esa_tls.report.TLSCounters}) and
    tell C{dispatcher} (an L{esa_tls.alerts.AlertDispatcher}) of a
    recovery; either may be C{None}.  Never waits.
    """
    tls = result.tls
    delivered = bool(result.delivered)
    if counters is not None:
        for event in result.tls_failures:
            counters.outgoing(result.domain, event.level, False, 0)
        carried = tls is not None and not (tls.failure is not None and tls.level.required)
        if tls is not None and carried:
            messages = 1 if delivered else 0
            if result.reused:
                counts = (
                    TLSCounts(encrypted_messages=messages)
                    if tls.encrypted
                    else TLSCounts(unencrypted_messages=messages)
                )
                if counts:
                    counters.add(Direction.OUTGOING, result.domain, "", counts)
            elif tls.encrypted:
                counters.outgoing(result.domain, tls.level, True, messages)
            elif tls.fallback is Fallback.RECONNECTED:
                counters.outgoing(result.domain, tls.level, False, 0)
                counters.outgoing(result.domain, tls.level, None, messages)
            elif tls.fallback is Fallback.REFUSED:
                counters.outgoing(result.domain, tls.level, False, messages)
            else:
                counters.outgoing(result.domain, tls.level, None, messages)
    if (
        dispatcher is not None
        and delivered
        and tls is not None
        and tls.encrypted
        and not result.tls_failures
    ):
        dispatcher.tls_recovered(result.domain)
