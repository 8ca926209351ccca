# -*- test-case-name: tests.test_outbound_cli -*-
"""
Retry deferred recipients now: all of them, or those of one domain.

C{esa-tls delivernow [DOMAIN]} asks the running gateway (through a request
file in C{data_dir/delivernow/}, checked every second) to try at once every
queued or deferred recipient, ignoring retry times, and resets the
recipient-rate counters of the domains concerned, as the ESA command does.
The gateway's mail log shows the deliveries.  Exit status 0; 2 for a
DOMAIN that is not one (C{..}, an empty name, spaces), which is never read
as all domains.
"""

from __future__ import annotations

import argparse

from esa_tls.cli.main import CommandContext
from esa_tls.outbound.queue import request_delivery_now

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "domain", nargs="?", default=None, help="only this recipient domain (default: all)"
    )


def run(options: argparse.Namespace, context: CommandContext) -> int:
    config = context.load_config()
    try:
        request_delivery_now(config, options.domain)
    except ValueError as e:
        print(f"esa-tls delivernow: {e}", file=context.stderr)
        return 2
    target = options.domain or "all domains"
    print(f"Delivery now requested for {target}.", file=context.stdout)
    return 0
