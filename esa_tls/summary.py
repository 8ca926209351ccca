# -*- test-case-name: tests.test_config_summary -*-
"""
The listener summary, as the ESA CLI prints it after C{listenerconfig}.

ESA administrators read this block to check a listener at a glance, and
the seed quotes it, so its first eight lines are reproduced exactly (labels,
capitalisation, spacing): C{Name:} to C{TLS:}.  The lines after those are
ours: what an administrator most often needs next when checking TLS and
acceptance (the certificate, and whether it is the insecure Demo one; the
size of the RAT; the sender groups in evaluation order).
"""

from __future__ import annotations

from esa_tls.config.model import GatewayConfig, Listener, ListenerType


def listener_summary(listener: Listener, config: GatewayConfig | None = None) -> str:
    """
    Describe one listener.

    @param listener: the listener.
    @param config: the configuration it belongs to.  Not needed for
        today's lines; taken so that lines about what the listener's names
        refer to can be added without changing every caller.
    @return: the summary lines joined by newlines, without a final newline
        and without trailing spaces (the seed's C{Default Domain:} line has
        none when the default domain is empty).
    """
    interface = listener.interface
    lines = [
        f"Name: {listener.name}",
        f"Type: {listener.type.value.capitalize()}",
        f"Interface: {interface.name} ({interface.address}) TCP Port {listener.port}",
        f"Protocol: {listener.protocol}",
        f"Default Domain: {listener.default_domain}".rstrip(),
        f"Max Concurrency: {listener.max_concurrency} (TCP Queue: {listener.tcp_queue})",
        f"Domain map: {'enabled' if listener.domain_map else 'disabled'}",
        f"TLS: {listener.default_policy.tls.label}",
    ]
    lines.append(f"Certificate: {_certificate(listener.certificate)}")
    for host, name in sorted(listener.sni.items()):
        lines.append(f"Certificate for {host}: {_certificate(name)}")
    if listener.type is ListenerType.PUBLIC:
        count = len(listener.rat)
        lines.append(f"Recipient Access Table: {count} {'entry' if count == 1 else 'entries'}")
    groups = ", ".join(f"{group.name} ({group.policy})" for group in listener.hat)
    lines.append(f"Sender Groups: {groups}".rstrip())
    return "\n".join(lines)


def _certificate(name: str) -> str:
    if name == "Demo":
        return "Demo (insecure demonstration certificate)"
    return name
