# -*- test-case-name: tests.test_cli_commit -*-
"""
Discard the pending changes (clear).

C{esa-tls --config FILE clear} drops every change made since the last
C{commit}, in the shell's memory or in C{FILE.pending}; the configuration
file itself is never touched.  It also drops pending changes that can no
longer be committed because the file changed under them.
"""

from __future__ import annotations

import argparse

from esa_tls.cli._pending import PendingConfig, PendingError
from esa_tls.cli._session import ShellContext
from esa_tls.cli.main import EXIT_CONFIG_ERROR, CommandContext

__all__ = ["run"]


def run(options: argparse.Namespace, context: CommandContext) -> int:
    """
    Discard the pending changes.

    @return: 0, or L{EXIT_CONFIG_ERROR} without C{--config}.
    """
    if isinstance(context, ShellContext):
        had = context.session.pending.discard()
    elif context.config_path is None:
        print("esa-tls: clear needs --config FILE", file=context.stderr)
        return EXIT_CONFIG_ERROR
    else:
        try:
            had = PendingConfig.open(context.config_path).discard()
        except PendingError:
            # Stale or foreign pending changes: clearing them is the remedy.
            pending = PendingConfig(context.config_path, None, "", False)
            had = True
            pending.discard()
    if had:
        print("All pending changes have been discarded.", file=context.stdout)
    else:
        print("There are no pending changes to discard.", file=context.stdout)
    return 0
