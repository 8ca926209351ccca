# -*- test-case-name: tests.test_outbound_discard -*-
"""
The ESA's C{/dev/null} SMTP route: mail for a domain routed there is
dropped, as if delivered, without any connection.

An C{[smtp_routes]} entry of exactly C{["/dev/null"]} is what the ESA's
C{smtproutes} command calls the special destination host C{/dev/null}
(used to sink a test domain, or with C{ALL} to make sure no mail ever
leaves).  The configuration loader refuses it next to other hosts; the
queue manager marks the recipients delivered and writes one mail log line
per message::

    MID 12 RID [0, 1] Response '/dev/null'

This module holds only the name, so that the configuration loader can use
it without importing the delivery machinery.
"""

from __future__ import annotations

from collections.abc import Sequence

#: The special destination host that drops mail.
DISCARD_ROUTE = "/dev/null"


def is_discard_route(hosts: Sequence[str] | None) -> bool:
    """
    Whether an C{[smtp_routes]} entry (as L{esa_tls.outbound.mx.find_route}
    returns it) drops the mail.
    """
    return hosts is not None and len(hosts) == 1 and hosts[0] == DISCARD_ROUTE


__all__ = ["DISCARD_ROUTE", "is_discard_route"]
