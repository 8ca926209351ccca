# -*- test-case-name: tests.test_tls_cli -*-
"""
List the certificates, the listeners using them, and which are insecure (certconfig).

C{esa-tls certificates [NAME ...]} prints one block per certificate, Demo
first and then the configured ones by name (or only those named), blocks
separated by one empty line.  Each line is C{Field: value}; fields appear in
this order, and tools may parse them:

    Certificate: main
    Subject: CN=mx.example.com
    SANs: DNS:mx.example.com, DNS:mx2.example.com
    Issuer: CN=R11,O=Let's Encrypt,C=US
    Valid: 2026-01-01T00:00:00Z to 2026-04-01T00:00:00Z
    Key: EC P-256 256 bits
    Fingerprint: SHA256 AB:CD:...
    Chain: 1
    Listeners: IncomingMail, Outbound (SNI mx2.example.com)
    Status: OK
    Warning: expires in 12 days, on 2026-04-01T00:00:00Z

  - C{Subject}, C{Issuer}: RFC 4514 distinguished names.
  - C{SANs}: comma-separated, C{DNS:}, C{IP:} or C{email:} prefixed;
    C{(none)} for a certificate without them.
  - C{Valid}: UTC, ISO 8601, C{NOT_BEFORE to NOT_AFTER}.
  - C{Chain}: how many chain certificates are sent after it.
  - C{Listeners}: comma-separated listener names, each followed by
    C{(SNI NAME)} when a listener uses it only for that server name;
    C{(none)} when unused.
  - C{Status}: C{INSECURE demonstration certificate} for Demo, C{OK} for
    an imported certificate in service, or C{REFUSED: REASON} for one that
    failed to load (its block then has only the C{Certificate},
    C{Listeners} and C{Status} lines).
  - C{Warning}: zero or more lines, one per warning.

The command reads the certificate files but changes nothing: a Demo
certificate that the gateway has not generated yet has a three-line block
with C{Status: INSECURE demonstration certificate, not generated yet}
(the gateway makes it when it first starts).  The exit status is 0 when every listed certificate is in
service, 1 when one is refused, 2 for a bad configuration or unknown name.
"""

from __future__ import annotations

import argparse
import os

from esa_tls.cli.main import EXIT_CONFIG_ERROR, CommandContext
from esa_tls.config.errors import suggest
from esa_tls.config.model import GatewayConfig
from esa_tls.tls.certificates import CertificateError, format_time
from esa_tls.tls.demo import DEMO_NAME, demo_paths
from esa_tls.tls.store import CertificateStore

__all__ = ["add_arguments", "certificate_users", "render", "run"]

_INSECURE = "INSECURE demonstration certificate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="only these certificates (names are case-sensitive); default: all",
    )


def certificate_users(config: GatewayConfig, name: str) -> list[str]:
    """
    The listeners that serve certificate C{name}, in configuration order:
    C{"IncomingMail"} when it is the listener's own certificate,
    C{"IncomingMail (SNI mx2.example.com)"} for each SNI name mapped to it
    otherwise.
    """
    users = []
    for listener in config.listeners.values():
        if listener.certificate == name:
            users.append(listener.name)
            continue
        users.extend(
            f"{listener.name} (SNI {server_name})"
            for server_name, target in listener.sni.items()
            if target == name
        )
    return users


def _block(store: CertificateStore, config: GatewayConfig, name: str) -> tuple[list[str], bool]:
    users = certificate_users(config, name)
    listeners = f"Listeners: {', '.join(users) if users else '(none)'}"
    try:
        info = store.describe(name)
    except CertificateError as e:
        if name == DEMO_NAME and not os.path.exists(demo_paths(store.data_dir)[0]):
            status = f"Status: {_INSECURE}, not generated yet"
            return [f"Certificate: {name}", listeners, status], True
        return [f"Certificate: {name}", listeners, f"Status: REFUSED: {e.reason}"], False
    lines = [
        f"Certificate: {name}",
        f"Subject: {info.subject}",
        f"SANs: {', '.join(info.sans) if info.sans else '(none)'}",
        f"Issuer: {info.issuer}",
        f"Valid: {format_time(info.not_before)} to {format_time(info.not_after)}",
        f"Key: {info.key_description}",
        f"Fingerprint: SHA256 {info.fingerprint}",
        f"Chain: {info.chain_length}",
        listeners,
        f"Status: {_INSECURE if info.insecure else 'OK'}",
    ]
    lines.extend(f"Warning: {warning}" for warning in info.warnings)
    return lines, True


def render(store: CertificateStore, config: GatewayConfig, names: list[str]) -> tuple[str, bool]:
    """
    The listing of certificates C{names}, in the format documented above.

    @return: the text (ending in a newline) and whether all of them are in
        service.
    """
    blocks = []
    all_ok = True
    for name in names:
        lines, ok = _block(store, config, name)
        blocks.append("\n".join(lines))
        all_ok = all_ok and ok
    return "\n\n".join(blocks) + "\n", all_ok


def run(options: argparse.Namespace, context: CommandContext) -> int:
    """
    Print the certificates; see the module docstring for the format.
    """
    config = context.load_config()
    store = CertificateStore(config, generate_demo=False)
    known = store.names()
    names: list[str] = options.names or known
    for name in names:
        if name not in known:
            print(
                f"esa-tls certificates: no certificate named {name!r}" + suggest(name, known),
                file=context.stderr,
            )
            return EXIT_CONFIG_ERROR
    text, all_ok = render(store, config, names)
    context.stdout.write(text)
    return 0 if all_ok else 1
