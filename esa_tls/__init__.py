"""
esa_tls: Cisco ESA-style mail gateway TLS controls for Twisted.

Named listeners, a Host Access Table of sender groups and mail flow policies,
inbound TLS set to No / Preferred / Required, certificates (with an insecure
demonstration certificate), and outbound delivery that enforces each
destination domain's TLS requirement.

The names in L{__all__} are the library's public API: the plug-in
interfaces (L{esa_tls.interfaces}), the values that cross them, the
configuration loader, and the built-in implementations to plug one's own
parts into.  They are imported on first use, so that C{import esa_tls}
(which every gateway process and the CLI do) costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Each public name and the module it lives in.
_PUBLIC = {
    "IAlertHook": "esa_tls.interfaces",
    "ICertificateStore": "esa_tls.interfaces",
    "IHostAccessTable": "esa_tls.interfaces",
    "IIncomingMessage": "esa_tls.interfaces",
    "IListener": "esa_tls.interfaces",
    "IMessageStore": "esa_tls.interfaces",
    "IReputationSource": "esa_tls.interfaces",
    "ITLSPolicy": "esa_tls.interfaces",
    "StoreError": "esa_tls.interfaces",
    "Envelope": "esa_tls.values",
    "HATVerdict": "esa_tls.values",
    "TLSInfo": "esa_tls.values",
    "AccessRule": "esa_tls.config.model",
    "GatewayConfig": "esa_tls.config.model",
    "MailFlowPolicy": "esa_tls.config.model",
    "TLSMode": "esa_tls.config.model",
    "load_config": "esa_tls.config.load",
    "parse_config": "esa_tls.config.load",
    "ListenerFactory": "esa_tls.inbound.listener",
    "InboundTLSPolicy": "esa_tls.inbound.tlspolicy",
    "HostAccessTable": "esa_tls.hat.table",
    "DurableSpool": "esa_tls.spool.store",
    "CertificateStore": "esa_tls.tls.store",
    "Alert": "esa_tls.alerts.alert",
    "AlertDispatcher": "esa_tls.alerts.dispatcher",
    "deliver_message": "esa_tls.outbound.attempt",
    "QueueManager": "esa_tls.outbound.queue",
}

__all__ = [
    "AccessRule",
    "Alert",
    "AlertDispatcher",
    "CertificateStore",
    "DurableSpool",
    "Envelope",
    "GatewayConfig",
    "HATVerdict",
    "HostAccessTable",
    "IAlertHook",
    "ICertificateStore",
    "IHostAccessTable",
    "IIncomingMessage",
    "IListener",
    "IMessageStore",
    "IReputationSource",
    "ITLSPolicy",
    "InboundTLSPolicy",
    "ListenerFactory",
    "MailFlowPolicy",
    "QueueManager",
    "StoreError",
    "TLSInfo",
    "TLSMode",
    "__version__",
    "deliver_message",
    "load_config",
    "parse_config",
]

if TYPE_CHECKING:  # pragma: no cover
    from esa_tls.alerts.alert import Alert
    from esa_tls.alerts.dispatcher import AlertDispatcher
    from esa_tls.config.load import load_config, parse_config
    from esa_tls.config.model import AccessRule, GatewayConfig, MailFlowPolicy, TLSMode
    from esa_tls.hat.table import HostAccessTable
    from esa_tls.inbound.listener import ListenerFactory
    from esa_tls.inbound.tlspolicy import InboundTLSPolicy
    from esa_tls.interfaces import (
        IAlertHook,
        ICertificateStore,
        IHostAccessTable,
        IIncomingMessage,
        IListener,
        IMessageStore,
        IReputationSource,
        ITLSPolicy,
        StoreError,
    )
    from esa_tls.outbound.attempt import deliver_message
    from esa_tls.outbound.queue import QueueManager
    from esa_tls.spool.store import DurableSpool
    from esa_tls.tls.store import CertificateStore
    from esa_tls.values import Envelope, HATVerdict, TLSInfo


def __getattr__(name: str) -> Any:
    """
    A public name, imported from its module the first time it is asked for.
    """
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'esa_tls' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
