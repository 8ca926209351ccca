# -*- test-case-name: tests.test_outbound_cli -*-
"""
Retry deferred recipients now: all of them, or those of one domain.

C{esa-tls delivernow [DOMAIN]} asks the running gateway (through a request
file in C{data_dir/delivernow/}, checked every second) to try at once every
queued or deferred recipient, ignoring retry times, and resets the
recipient-rate counters of the domains concerned, as the ESA command does.
The gateway's mail log shows the deliveries.  Exit status 0.
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
    request_delivery_now(config, options.domain)
    target = options.domain or "all domains"
    print(f"Delivery now requested for {target}.", file=context.stdout)
    return 0
