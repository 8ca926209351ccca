# -*- test-case-name: tests.test_outbound_probe -*-
"""
C{tlsverify}: connect to a destination the way a delivery would, and tell
step by step what happens to TLS, without sending any mail.

Like the ESA command, it looks the domain up (SMTP route or MX), connects
to the first host that answers, asks for STARTTLS, shows the protocol,
cipher and certificate chain, checks the certificate with the Verify rules
(or Hosted Verify under C{required-verify-hosted}), says which name
matched, and ends with the verdict for the domain's configured setting:
would mail go, and how.  The session ends with QUIT where MAIL FROM would
have been sent.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from io import BytesIO
from typing import Any

from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol

from esa_tls.config.model import DestinationTLS, GatewayConfig
from esa_tls.outbound.client import DeliveryClient, SessionOutcome, Timeouts
from esa_tls.outbound.mx import (
    SMTP_PORT,
    HostSource,
    MailHost,
    MXResolver,
    RouteError,
    normalize_name,
)
from esa_tls.outbound.policy import TLSPlan, destination_for, effective_tls, trust_anchors
from esa_tls.outbound.tlscontext import InspectingClientTLS
from esa_tls.outbound.verify import NameMatch, verify_certificate_names
from esa_tls.printable import printable

__all__ = ["tls_verify", "verdict"]


def verdict(level: DestinationTLS, outcome: SessionOutcome) -> tuple[bool, str]:
    """
    What the setting C{level} would do after the probe's C{outcome}.

    @return: C{(delivers, text)}: whether mail would be sent on such a
        connection, and why.
    """
    tls = outcome.tls
    name = level.value
    if level is DestinationTLS.NO:
        return True, f"{name}: TLS is not used; mail would be delivered in the clear."
    if tls.encrypted:
        if not level.verifies:
            return True, f"{name}: mail would be delivered encrypted (certificate not checked)."
        if tls.verified:
            return True, f"{name}: mail would be delivered encrypted, certificate verified."
        why = tls.failure.value if tls.failure is not None else "verification failed"
        if level.required:
            return False, (
                f"{name}: mail would NOT be delivered ({why}: {tls.detail}); "
                "it would stay queued and a TLS failure alert would be raised."
            )
        return True, f"{name}: mail would be delivered encrypted but unverified ({why})."
    reason = tls.detail or outcome.failure or "TLS was not negotiated"
    if level.required:
        return False, (
            f"{name}: mail would NOT be delivered ({reason}); "
            "it would stay queued and a TLS failure alert would be raised."
        )
    if outcome.handshake_failed:
        return True, (
            f"{name}: TLS failed after the 220 ({reason}); mail would be delivered in the "
            "clear on a new connection."
        )
    return True, f"{name}: mail would be delivered in the clear ({reason})."


async def _tls_verify(
    reactor: Any,
    config: GatewayConfig,
    domain: str,
    write: Callable[[str], None],
    mx: MXResolver,
    port: int,
    timeouts: Timeouts,
    trust_system: bool,
) -> int:
    domain = normalize_name(domain)
    control = destination_for(config, domain)
    level = effective_tls(config, domain)
    plan = TLSPlan.for_level(level)
    write(
        f"Destination {domain}: TLS setting {level.value} (Destination Controls row {control.domain})."
    )
    try:
        route = await mx.resolve(domain, config.smtp_routes, port=port)
    except RouteError as e:
        write(f"No mail host for {domain}: {e}")
        return 1
    for host in route.hosts:
        how = (
            "SMTP route"
            if host.source is HostSource.ROUTE
            else (
                "implicit MX" if host.source is HostSource.IMPLICIT_MX else f"MX {host.preference}"
            )
        )
        write(f"{how} {host.name} port {host.port}: {', '.join(host.addresses)}")
    for name, reason in route.skipped:
        write(f"Skipped {name}: {reason}")
    probe_plan = TLSPlan(
        level=level,
        starttls=True,
        require=False,
        verify=True,
        require_verified=False,
        hosted=plan.hosted,
    )
    for host in route.hosts:
        for address in host.addresses:
            write(f"Connecting to {address} on port {host.port} ({host.name}).")
            client = _probe_client(
                config,
                domain,
                host,
                route.via_smtp_route,
                probe_plan,
                timeouts,
                trust_anchors(config, domain),
                trust_system,
                reactor,
            )
            endpoint_type = (
                TCP6ClientEndpoint
                if ipaddress.ip_address(address).version == 6
                else TCP4ClientEndpoint
            )
            try:
                await connectProtocol(
                    endpoint_type(reactor, address, host.port, timeout=timeouts.connect), client
                )
            except Exception as e:
                write(f"Connection to {address} failed: {e}")
                continue
            local = client.transport.getHost() if client.transport is not None else None
            write(f"Connected to {address} from {getattr(local, 'host', '?')}.")
            outcome = await client.finished
            _report(outcome, write)
            delivers, text = verdict(level, outcome)
            write(f"Verdict for {text}")
            return 0 if delivers else 1
    write(f"Could not connect to any mail host of {domain}.")
    return 1


def _probe_client(
    config: GatewayConfig,
    domain: str,
    host: MailHost,
    via_smtp_route: bool,
    plan: TLSPlan,
    timeouts: Timeouts,
    ca_file: str | None,
    trust_system: bool,
    reactor: Any,
) -> DeliveryClient:
    """
    A delivery client that stops where MAIL FROM would go.
    """

    def creator() -> InspectingClientTLS:
        return InspectingClientTLS(host.server_name, ca_file=ca_file, trust_system=trust_system)

    def name_check(certificate: x509.Certificate) -> NameMatch | None:
        return verify_certificate_names(
            certificate, domain, host.name, via_smtp_route=via_smtp_route, hosted=plan.hosted
        )

    return DeliveryClient(
        identity=config.system.hostname,
        mail_from="",
        recipients=[],
        body=BytesIO(b""),
        plan=plan,
        tls_creator=creator,
        name_check=name_check,
        timeouts=timeouts,
        call_later=reactor.callLater,
        probe=True,
    )


def _report(outcome: SessionOutcome, write: Callable[[str], None]) -> None:
    tls = outcome.tls
    if tls.starttls_offered is None and not tls.encrypted:
        write(f"The session ended early: {outcome.failure}")
        return
    write(f"STARTTLS offered: {'yes' if tls.starttls_offered else 'no'}.")
    if tls.starttls_offered:
        write("Checking TLS connection.")
    if tls.encrypted:
        write(f"TLS connection established: protocol {tls.protocol}, cipher {tls.cipher}.")
        if tls.discarded_plaintext:
            write(
                f"Warning: the server sent {tls.discarded_plaintext} plaintext bytes after its "
                "220 to STARTTLS; they were discarded."
            )
        write("Certificate chain:")
        for depth, line in enumerate(tls.chain):
            write(f"  {depth}: {line}")
        write("Verifying peer certificate.")
        if tls.match is not None:
            write(f"TLS certificate match: {tls.match.describe()}.")
        if tls.verified:
            write("TLS certificate verified.")
        else:
            kind = tls.failure.value if tls.failure is not None else "not verified"
            write(f"TLS certificate not verified: {kind}: {tls.detail}.")
    elif tls.detail:
        write(f"TLS not established: {tls.detail}.")
    if outcome.failure and not outcome.ready:
        write(f"Session: {outcome.failure}")


def tls_verify(
    reactor: Any,
    resolver: Any,
    config: GatewayConfig,
    domain: str,
    write: Callable[[str], None],
    *,
    port: int = SMTP_PORT,
    timeouts: Timeouts | None = None,
    trust_system: bool = True,
    mx_resolver: MXResolver | None = None,
) -> Deferred[int]:
    """
    Probe C{domain}'s TLS as a delivery would, writing each step with
    C{write} (one line per call, no newline, control characters escaped).

    @return: a L{Deferred} firing with C{0} when the domain's setting
        would let mail go on the connection found, C{1} when it would be
        held back (or no host answered).
    """
    return Deferred.fromCoroutine(
        _tls_verify(
            reactor,
            config,
            domain,
            lambda line: write(printable(line)),
            mx_resolver or MXResolver(resolver),
            port,
            timeouts or Timeouts.uniform(30),
            trust_system,
        )
    )
