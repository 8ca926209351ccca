# -*- test-case-name: tests.test_cli_listeners -*-
"""
Print each listener's summary, as the ESA shows it (listenerconfig).
"""

from __future__ import annotations

import argparse

from esa_tls.cli.main import EXIT_CONFIG_ERROR, CommandContext
from esa_tls.config.errors import suggest
from esa_tls.summary import listener_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="only these listeners (names are case-sensitive); default: all",
    )


def run(options: argparse.Namespace, context: CommandContext) -> int:
    """
    Print the summaries in configuration order, a blank line between two
    listeners, as the ESA CLI separates them.
    """
    config = context.load_config()
    names: list[str] = options.names or list(config.listeners)
    for name in names:
        if name not in config.listeners:
            print(
                f"esa-tls listeners: no listener named {name!r}" + suggest(name, config.listeners),
                file=context.stderr,
            )
            return EXIT_CONFIG_ERROR
    blocks = [listener_summary(config.listeners[name], config) for name in names]
    context.stdout.write("\n\n".join(blocks) + "\n")
    return 0
