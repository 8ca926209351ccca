# -*- test-case-name: tests.test_cli_terminal -*-
"""
Interactive shell: the ESA commands at a hostname prompt, changes pending until commit (cli).

C{esa-tls --config FILE cli} prompts with the gateway's host name
(C{mail.example.com> }), as the ESA does, and runs every C{esa-tls} command
by name with the same arguments (C{listenerconfig}, C{set KEY VALUE},
C{commit "comment"}, C{listeners}...), plus C{help} and C{exit} (or
C{quit}, or end of input).  Changes stay in the shell's memory until
C{commit} or C{clear}; changes still uncommitted when the shell ends are kept
in C{FILE.pending}, where the next shell or direct command picks them up.

On a terminal, the prompt has line editing, a history kept in
C{~/.esa_tls_history}, and tab completion of command names and of the key
paths C{set} takes.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import socket
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from esa_tls.cli._pending import PendingConfig, PendingError
from esa_tls.cli._session import EditSession, ShellContext
from esa_tls.cli.main import EXIT_CONFIG_ERROR, CommandContext, command_names
from esa_tls.config.errors import ConfigError, KeyPath, render_path

__all__ = ["HISTORY_FILE", "Shell", "run"]

#: Where the shell keeps its history on a terminal.
HISTORY_FILE = "~/.esa_tls_history"

_BUILTINS = {"help": "List the commands.", "exit": "Leave the shell.", "quit": "Leave the shell."}


def run(options: argparse.Namespace, context: CommandContext) -> int:
    """
    Run the shell until C{exit} or the end of input.
    """
    if context.config_path is None:
        print("esa-tls: cli needs --config FILE (the file it edits)", file=context.stderr)
        return EXIT_CONFIG_ERROR
    try:
        pending = PendingConfig.open(context.config_path)
    except PendingError as e:
        print(f"esa-tls: {e}", file=context.stderr)
        return EXIT_CONFIG_ERROR
    shell = Shell(context, EditSession(pending, in_shell=True), sys.stdin)
    return shell.loop()


def _key_paths(node: Any, prefix: KeyPath = ()) -> Iterator[str]:
    """
    Every key path in a plain TOML value, tables and arrays included, for
    completion.
    """
    if isinstance(node, dict):
        for key, value in node.items():
            path = (*prefix, key)
            yield render_path(path)
            yield from _key_paths(value, path)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, dict):
                path = (*prefix, index)
                yield render_path(path)
                yield from _key_paths(value, path)


class Shell:
    """
    The command loop.

    @ivar session: the pending changes, shared by every command run here.
    """

    def __init__(self, context: CommandContext, session: EditSession, stdin: TextIO) -> None:
        self.context = context
        self.session = session
        self.stdin = stdin
        self.stdout = context.stdout
        self.commands = [name for name in command_names() if name != "cli"]
        try:
            self.tty = stdin.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self._matches: list[str] = []

    @property
    def prompt(self) -> str:
        doc = self.session.document()
        hostname = doc.get(("system", "hostname")) or socket.getfqdn()
        return f"{hostname}> "

    def say(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    # Terminal niceties

    def _setup_readline(self) -> Any:
        try:
            import readline
        except ImportError:  # pragma: no cover - platforms without readline
            return None
        readline.parse_and_bind("set enable-bracketed-paste off")
        readline.parse_and_bind("tab: complete")
        readline.set_completer_delims(" \t\n")
        readline.set_completer(self.complete)
        try:
            readline.read_history_file(os.path.expanduser(HISTORY_FILE))
        except OSError:
            pass
        readline.set_history_length(1000)
        return readline

    def complete(self, text: str, state: int) -> str | None:
        """
        readline's completer: command names first, then key paths after
        C{set}.
        """
        if state == 0:
            import readline

            words = readline.get_line_buffer()[: readline.get_begidx()].split()
            if not words:
                candidates = [*self.commands, *_BUILTINS]
            elif words[0] == "set" and len(words) == 1:
                candidates = list(_key_paths(self.session.document().get(())))
            else:
                candidates = []
            self._matches = sorted(c + " " for c in set(candidates) if c.startswith(text))
        return self._matches[state] if state < len(self._matches) else None

    def read(self) -> str | None:
        """
        One command line, or C{None} at the end of input.
        """
        if self.tty:
            try:
                return input(self.prompt)
            except EOFError:
                self.stdout.write("\n")
                return None
        self.stdout.write(self.prompt)
        self.stdout.flush()
        line = self.stdin.readline()
        if not line:
            self.stdout.write("\n")
            return None
        self.stdout.write(line if line.endswith("\n") else line + "\n")
        return line

    # The loop

    def loop(self) -> int:
        readline = self._setup_readline() if self.tty else None
        pending = self.session.pending
        self.say(
            f"esa-tls administration of {pending.path}. Type 'help' for the commands, "
            "'exit' to leave."
        )
        if pending.loaded_from_disk:
            self.say(
                f"Pending changes from an earlier session were loaded from "
                f"{pending.pending_path}: 'commit' or 'clear' them."
            )
        try:
            while True:
                try:
                    line = self.read()
                except KeyboardInterrupt:
                    self.say("")
                    continue
                if line is None:
                    break
                try:
                    words = shlex.split(line)
                except ValueError as e:
                    self.say(f"Cannot read that command: {e}.")
                    continue
                if not words:
                    continue
                name, args = words[0], words[1:]
                if name in ("exit", "quit"):
                    break
                if name in ("help", "?"):
                    self.help()
                    continue
                if name not in self.commands:
                    self.say(f'Unknown command or missing feature: "{name}".')
                    continue
                try:
                    self.dispatch(name, args)
                except KeyboardInterrupt:
                    self.say("\nInterrupted: the changes of this command were dropped.")
        finally:
            if readline is not None:
                try:
                    readline.write_history_file(os.path.expanduser(HISTORY_FILE))
                except OSError:
                    pass
            self.leave()
        return 0

    def leave(self) -> None:
        pending = self.session.pending
        if pending.changed:
            try:
                pending.save()
            except PendingError as e:
                self.say(f"The uncommitted changes of this shell were not kept: {e}")
                return
            except OSError as e:
                self.say(f"Cannot keep the uncommitted changes in {pending.pending_path}: {e}")
                return
            self.say(
                f"Uncommitted changes are kept in {pending.pending_path}: 'commit' or "
                "'clear' them later."
            )
        else:
            pending.forget()

    def help(self) -> None:
        self.say("Commands:")
        for name in self.commands:
            try:
                doc = (importlib.import_module(f"esa_tls.cli.{name}").__doc__ or "").strip()
                summary = doc.splitlines()[0] if doc else ""
            except Exception as e:  # help must still list the others
                summary = f"(unavailable: {e})"
            self.say(f"  {name:<16}{summary}")
        for name, summary in _BUILTINS.items():
            self.say(f"  {name:<16}{summary}")

    def dispatch(self, name: str, args: list[str]) -> None:
        """
        Run one command with the shell's context.
        """
        module = importlib.import_module(f"esa_tls.cli.{name}")
        doc = (module.__doc__ or "").strip()
        parser = argparse.ArgumentParser(prog=name, description=doc.splitlines()[0] if doc else "")
        add_arguments = getattr(module, "add_arguments", None)
        if add_arguments is not None:
            add_arguments(parser)
        try:
            options = parser.parse_args(args)
        except SystemExit:
            return
        context = ShellContext(
            self.context.config_path,
            self.stdout,
            self.context.stderr,
            self.stdin,
            self.session,
        )
        try:
            module.run(options, context)
        except ConfigError as e:
            self.say(str(e))
