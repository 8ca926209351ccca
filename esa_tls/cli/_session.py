# -*- test-case-name: tests.test_cli_commit -*-
"""
What the editing commands share: where the pending changes are, how to ask
questions, and the rules for keeping or dropping a command's changes.

A command run directly (C{esa-tls --config F listenerconfig}) reads the
pending changes from disk and writes them back when it finishes; inside the
shell (C{esa-tls --config F cli}) they stay in memory until C{commit}, or
until the shell ends, when any left are kept on disk for later.  Either way a
command works on its own copy of the text and hands it back only when it
finishes normally: a command stopped by the end of its input leaves the
pending changes exactly as they were.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from attrs import frozen

from esa_tls.cli._document import ConfigDocument, ensure_policy
from esa_tls.cli._pending import PendingConfig, PendingError
from esa_tls.cli._prompt import BadAnswer, PromptAborted, Prompter
from esa_tls.cli.main import EXIT_CONFIG_ERROR, CommandContext
from esa_tls.config.errors import ConfigError, ConfigFault, KeyPath, render_path
from esa_tls.config.model import GatewayConfig

__all__ = ["EditSession", "ShellContext", "edit", "open_session"]

#: Exit status of a command stopped by the end of its input, or refused.
EXIT_ABORTED = 1

#: Exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells do).
EXIT_INTERRUPTED = 130


class EditSession:
    """
    The pending configuration of one shell, or of one direct command.

    @ivar pending: the configuration with its pending changes.
    @ivar in_shell: whether the pending changes live in a shell's memory
        (C{False}: on disk between invocations).
    """

    def __init__(self, pending: PendingConfig, in_shell: bool) -> None:
        self.pending = pending
        self.in_shell = in_shell

    def document(self) -> ConfigDocument:
        """
        A fresh, editable copy of the pending text.
        """
        return ConfigDocument(self.pending.text)

    def check(self, text: str) -> tuple[GatewayConfig | None, tuple[ConfigFault, ...]]:
        """
        Validate C{text} as the configuration file.

        @return: the configuration (or C{None}) and the faults.
        """
        try:
            return self.pending.validate(text).config, ()
        except ConfigError as e:
            return None, e.faults

    def value_check(self, doc: ConfigDocument) -> Callable[[KeyPath, Any], None]:
        """
        A check for one answer: would the loader accept C{value} at C{path}
        of C{doc}?  The answer is tried on a copy of the document, so the
        ESA treatment (the reason, then the prompt again) uses the very
        words the loader would use at C{commit}.

        @return: a function raising L{BadAnswer} with the loader's reason
            when a fault is at C{path} or below it.
        """

        def check(path: KeyPath, value: Any) -> None:
            copy = ConfigDocument(doc.text())
            if len(path) > 4 and path[0] == "listeners" and path[2] == "policies":
                ensure_policy(copy, str(path[1]), str(path[3]))
            copy.set(path, value)
            _, faults = self.check(copy.text())
            message = fault_at(faults, path)
            if message is not None:
                raise BadAnswer(message)

        return check

    def keep(self, text: str) -> None:
        """
        Make C{text} the pending configuration (saved to disk outside the
        shell).
        """
        self.pending.text = text
        if not self.in_shell:
            self.pending.save()


@frozen
class ShellContext(CommandContext):
    """
    The context of a command run inside the interactive shell: it also
    carries the shell's input and its in-memory pending changes.
    """

    stdin: TextIO
    session: EditSession


def open_session(context: CommandContext) -> EditSession:
    """
    The session a command edits: the shell's, or a new one for a direct
    invocation.

    @raise PendingError: there is no file to edit, or its pending changes
        cannot be used.
    """
    if isinstance(context, ShellContext):
        return context.session
    if context.config_path is None:
        raise PendingError(
            "this command changes the configuration: give the file with --config FILE "
            "(the embedded default cannot be changed)"
        )
    return EditSession(PendingConfig.open(context.config_path), in_shell=False)


def stdin_of(context: CommandContext) -> TextIO:
    return context.stdin if isinstance(context, ShellContext) else sys.stdin


def fault_at(faults: tuple[ConfigFault, ...], path: KeyPath) -> str | None:
    """
    The message of the first fault at C{path} or below it, if any.
    """
    rendered = render_path(path)
    for fault in faults:
        if fault.path == rendered or fault.path.startswith((rendered + ".", rendered + "[")):
            return fault.message
    return None


def show_faults(prompter: Prompter, faults: tuple[ConfigFault, ...], intro: str) -> None:
    prompter.say(intro)
    for fault in faults:
        where = f"{fault.path}: " if fault.path else ""
        prompter.say(f"  {where}{fault.message}")


def edit(
    context: CommandContext,
    editor: Callable[[EditSession, ConfigDocument, Prompter], None],
) -> int:
    """
    Run an interactive editor on a copy of the pending configuration and
    keep its changes if it finishes.

    @param editor: asks its questions with the L{Prompter} and changes the
        L{ConfigDocument}; returns normally when the administrator is done.
    @return: the exit status: 0, L{EXIT_ABORTED} when the input ended
        before the dialog did (nothing kept), L{EXIT_CONFIG_ERROR} when
        there is nothing to edit.
    """
    prompter = Prompter(stdin_of(context), context.stdout)
    try:
        session = open_session(context)
    except PendingError as e:
        print(f"esa-tls: {e}", file=context.stderr)
        return EXIT_CONFIG_ERROR
    if not session.in_shell and session.pending.loaded_from_disk:
        prompter.say(f"(continuing the pending changes in {session.pending.pending_path})")
    if not session.pending.exists and not session.in_shell:
        prompter.say(
            f"({session.pending.path} does not exist yet: starting from the embedded "
            "default configuration)"
        )
    document = session.document()
    before = session.pending.text
    try:
        editor(session, document, prompter)
    except PromptAborted:
        prompter.say("Aborted at the end of the input: the changes of this command were dropped.")
        return EXIT_ABORTED
    except KeyboardInterrupt:
        if session.in_shell:
            raise
        prompter.say("\nInterrupted: the changes of this command were dropped.")
        return EXIT_INTERRUPTED
    text = document.text()
    if text != before:
        try:
            session.keep(text)
        except PendingError as e:
            print(f"esa-tls: {e}", file=context.stderr)
            return EXIT_CONFIG_ERROR
        _, faults = session.check(text)
        if faults:
            show_faults(
                prompter,
                faults,
                "The pending configuration has problems; 'commit' will refuse it until they are fixed:",
            )
    if not session.in_shell and session.pending.changed:
        prompter.say("Changes are pending: use 'commit' to apply them or 'clear' to discard them.")
    return 0
