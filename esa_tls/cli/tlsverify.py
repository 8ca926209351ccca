# -*- test-case-name: tests.test_outbound_probe -*-
"""
Test TLS to a destination domain as a delivery would, without sending mail.

C{esa-tls tlsverify DOMAIN [--port N]} looks up the domain's SMTP route or
MX hosts, connects to the first that answers, and prints step by step:
the hosts and addresses, whether STARTTLS is offered, the protocol and
cipher, the certificate chain, which name matched (ESA Verify rules, or
Hosted Verify for C{required-verify-hosted}), and the verdict for the
domain's configured TLS setting.  Exit status 0 when that setting would
let mail go, 1 when it would hold it back, 2 for a bad configuration.
"""

from __future__ import annotations

import argparse
import math

from esa_tls.cli.main import CommandContext

__all__ = ["add_arguments", "run"]


def _port(text: str) -> int:
    """
    A TCP port, 1-65535; argparse turns the error into a usage error.
    """
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} not in range 1-65535")
    return port


def _seconds(text: str) -> float:
    """
    A positive, finite number of seconds: a negative one made the first
    connection fail with an unhandled error, C{nan} or C{inf} never time
    out.
    """
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("domain", help="the destination domain, e.g. partner.example")
    parser.add_argument(
        "--port",
        type=_port,
        default=25,
        help="SMTP port of MX hosts (default 25; routes carry theirs)",
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=30.0, help="seconds to wait for each reply (default 30)"
    )


def run(options: argparse.Namespace, context: CommandContext) -> int:
    from twisted.internet import reactor

    from esa_tls.outbound.client import Timeouts
    from esa_tls.outbound.mx import resolver_from_config
    from esa_tls.outbound.probe import tls_verify

    config = context.load_config()
    status: list[int] = []

    def write(line: str) -> None:
        print(line, file=context.stdout, flush=True)

    def main() -> None:
        d = tls_verify(
            reactor,
            resolver_from_config(config, reactor),
            config,
            options.domain,
            write,
            port=options.port,
            timeouts=Timeouts.uniform(options.timeout),
        )

        def done(result: object) -> None:
            if isinstance(result, int):
                status.append(result)
            else:
                print(f"esa-tls tlsverify: {result}", file=context.stderr)
                status.append(1)
            reactor.stop()

        d.addBoth(done)

    reactor.callWhenRunning(main)
    reactor.run()
    return status[0] if status else 1
