# -*- test-case-name: tests.test_outbound_policy -*-
"""
Destination Controls: which row governs a domain, and what its TLS setting
means on the wire.

The ESA looks a domain up in its Destination Controls table and falls back
to the C{Default} row; a row whose TLS setting is C{Default} takes the
Default row's setting.  When the configuration has no C{default} row at
all, the Default row is C{preferred}, as the issue asks.
"""

from __future__ import annotations

from attrs import frozen

from esa_tls.config.model import DEFAULT_ROW_TLS, DestinationControl, DestinationTLS, GatewayConfig
from esa_tls.outbound.mx import normalize_name, normalized_table


def _rows(config: GatewayConfig) -> dict[str, DestinationControl]:
    """
    C{config.destinations} by normalized name.
    """
    return normalized_table(config.destinations)


def destination_for(config: GatewayConfig, domain: str) -> DestinationControl:
    """
    The Destination Controls row for C{domain}: its own row, else the row
    of the nearest parent written as C{.parent}, else the C{default} row
    (a built-in one when the configuration has none).
    """
    rows = _rows(config)
    domain = normalize_name(domain)
    if domain in rows:
        return rows[domain]
    labels = domain.split(".")
    for i in range(1, len(labels)):
        parent = "." + ".".join(labels[i:])
        if parent in rows:
            return rows[parent]
    return rows.get("default") or DestinationControl(domain="default", tls=DEFAULT_ROW_TLS)


def effective_tls(config: GatewayConfig, domain: str) -> DestinationTLS:
    """
    The TLS setting that applies to C{domain}, with C{default} resolved.
    """
    level = destination_for(config, domain).tls
    if level is DestinationTLS.DEFAULT:
        default_row = _rows(config).get("default")
        level = default_row.tls if default_row is not None else DEFAULT_ROW_TLS
        if level is DestinationTLS.DEFAULT:
            level = DEFAULT_ROW_TLS
    return level


def trust_anchors(config: GatewayConfig, domain: str) -> str | None:
    """
    The C{ca_file} that applies to C{domain}, or C{None} (the system's CAs
    only): its row's own, else, when the row takes the Default row's TLS
    setting, the Default row's, which goes with that setting (C{destconfig}
    asks for a CA file only with a setting of the row's own).
    """
    row = destination_for(config, domain)
    if row.ca_file:
        return row.ca_file
    if row.tls is DestinationTLS.DEFAULT:
        default_row = _rows(config).get("default")
        if default_row is not None and default_row.ca_file:
            return default_row.ca_file
    return None


@frozen
class TLSPlan:
    """
    What one TLS setting asks of a connection.

    @ivar starttls: send STARTTLS when the server offers it.
    @ivar require: never send MAIL FROM without TLS.
    @ivar verify: check the certificate (chain and name) after the
        handshake.
    @ivar require_verified: never send MAIL FROM unless the check passed.
    @ivar hosted: use the Hosted Verify name rules.
    """

    level: DestinationTLS
    starttls: bool
    require: bool
    verify: bool
    require_verified: bool
    hosted: bool

    @classmethod
    def for_level(cls, level: DestinationTLS) -> TLSPlan:
        """
        @param level: an effective setting (not C{default}).
        """
        if level is DestinationTLS.DEFAULT:
            raise ValueError("resolve 'default' with effective_tls() first")
        return cls(
            level=level,
            starttls=level is not DestinationTLS.NO,
            require=level.required,
            verify=level.verifies,
            require_verified=level.required and level.verifies,
            hosted=level is DestinationTLS.REQUIRED_VERIFY_HOSTED,
        )

    def in_the_clear(self) -> TLSPlan:
        """
        The plan for the reconnection after a TLS failure past the C{220}:
        no STARTTLS.  Only a setting that does not require TLS has one.
        """
        if self.require:
            raise ValueError(f"{self.level.value} never falls back to the clear")
        return TLSPlan(self.level, False, False, self.verify, False, self.hosted)
