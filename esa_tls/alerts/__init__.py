"""
Alerts (ESA C{alertconfig}): the TLS-failure alert for domains that
require TLS, certificate alerts, and the hooks that carry them.

The pieces, each in its own module:

  - L{esa_tls.alerts.alert}: the L{Alert} value and the subject format.
  - L{esa_tls.alerts.dispatcher}: routing to subscribed recipients,
    merging repeated TLS failures, recovery notices, hook timeouts.
  - L{esa_tls.alerts.certificates}: expiry and Demo certificate alerts.
  - L{esa_tls.alerts.mailhook}, L{esa_tls.alerts.loghook},
    L{esa_tls.alerts.commandhook}, L{esa_tls.alerts.webhook}: the built-in
    hooks.
  - L{esa_tls.alerts.hooks}: building hooks from configuration, third-party
    ones by dotted name or entry point.
"""

from __future__ import annotations

from esa_tls.alerts.alert import (
    Alert,
    AlertFields,
    AlertKind,
    AlertType,
    Severity,
    format_subject,
    make_alert,
)
from esa_tls.alerts.dispatcher import AlertDispatcher, FilteredHook

__all__ = [
    "Alert",
    "AlertDispatcher",
    "AlertFields",
    "AlertKind",
    "AlertType",
    "FilteredHook",
    "Severity",
    "format_subject",
    "make_alert",
]
