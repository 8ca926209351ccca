# -*- test-case-name: tests.test_cli_commit -*-
"""
Validate and apply the pending changes, then tell a running gateway to reload (commit [comment]).

C{esa-tls --config FILE commit [COMMENT]} checks the whole pending
configuration with the gateway's own loader; a configuration with any fault
is refused with every fault listed and nothing is written.  Otherwise the
file is replaced atomically, the previous one kept as C{FILE.bak}, the
commit recorded in C{FILE.history} (time, user, digest, comment), and the
gateway whose process id is in the pid file (C{--pidfile}, default
C{twistd.pid} in the current directory, as C{twistd} writes it) is sent
C{SIGHUP}: it re-reads the file and applies policies, HAT, RAT and
certificates to new connections without dropping the sessions in progress.

Inside the shell, C{commit} without a comment asks for one, as the ESA does.
"""

from __future__ import annotations

import argparse
import io
import os
import signal

from esa_tls.cli._pending import PendingError
from esa_tls.cli._prompt import PromptAborted, Prompter
from esa_tls.cli._session import (
    EXIT_ABORTED,
    EditSession,
    ShellContext,
    open_session,
    show_faults,
)
from esa_tls.cli.main import EXIT_CONFIG_ERROR, CommandContext
from esa_tls.config.errors import ConfigError

__all__ = [
    "DEFAULT_PIDFILE",
    "UNKNOWN",
    "add_arguments",
    "reload_gateway",
    "run",
    "running_configuration",
]

#: Where C{twistd} writes its process id unless told otherwise.
DEFAULT_PIDFILE = "twistd.pid"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "comment", nargs="*", help="why the change was made (recorded in FILE.history)"
    )
    parser.add_argument(
        "--pidfile",
        default=DEFAULT_PIDFILE,
        metavar="FILE",
        help="pid file of the running gateway (default: %(default)s in the current directory)",
    )
    parser.add_argument(
        "--no-reload",
        action="store_true",
        help="write the file but do not signal the gateway",
    )


def _looks_like_gateway(pid: int) -> bool:
    """
    Whether process C{pid} may be our gateway.  A stale pid file can name a
    process that has since been reused by something else, and C{SIGHUP}
    terminates most programs; where C{/proc} tells, only a C{twistd} or
    C{esa-tls} process is signalled.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read()
    except OSError:
        return True
    return b"twistd" in command or b"esa" in command


#: L{running_configuration}'s answer when C{/proc} does not tell.
UNKNOWN = "<unknown>"


def running_configuration(pid: int) -> str | None:
    """
    The configuration file the C{twistd ... esa-tls} process C{pid} was
    started with, from its command line (C{--config FILE}, C{--config=FILE},
    C{-c FILE}, C{-cFILE}), so that C{commit} does not tell a gateway
    running another file (or the embedded default, as C{make run} does) that
    it reloaded the one just committed.

    @return: the file's real path; C{None} for the embedded default (no
        C{--config}); L{UNKNOWN} when the process's command line cannot be
        read or understood, or names a relative file (the gateway resolved
        it before C{twistd --rundir} changed its directory, so where the
        process is now says nothing).
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [os.fsdecode(a) for a in f.read().split(b"\0")]
    except OSError:
        return UNKNOWN
    if "esa-tls" not in argv:
        return UNKNOWN
    args = argv[argv.index("esa-tls") + 1 :]
    config: str | None = None
    index = 0
    while index < len(args):
        arg, value = args[index], None
        if arg == "--":
            break
        if arg.startswith("--"):
            name, equals, given = arg[2:].partition("=")
            wanted = name and "config".startswith(name)
            if wanted or (name and "workers".startswith(name)):
                if equals:
                    value = given
                else:
                    index += 1
                    value = args[index] if index < len(args) else None
            if wanted:
                config = value
        elif arg.startswith("-") and len(arg) > 1 and arg[1] in "cw":
            value = arg[2:]
            if not value:
                index += 1
                value = args[index] if index < len(args) else None
            if arg[1] == "c":
                config = value
        index += 1
    if config is None:
        return None
    if not os.path.isabs(config):
        return UNKNOWN
    return os.path.realpath(config)


def reload_gateway(pidfile: str, config: str | None = None) -> str:
    """
    Send C{SIGHUP} to the gateway named by C{pidfile}.

    @param config: the file just committed: a gateway whose command line
        shows that it runs another file, or the embedded default, is not
        signalled (a reload would not run C{config}) and the line says so.
    @return: one line saying what happened, for the administrator.
    """
    try:
        with open(pidfile, "rb") as f:
            text = f.read(64).strip().decode("ascii", "replace")
    except FileNotFoundError:
        return (
            f"No running gateway found (no pid file {pidfile}): the configuration "
            "applies when it starts."
        )
    except OSError as e:
        return f"Cannot read the pid file {pidfile}: {e.strerror}; the gateway was not told."
    # ASCII digits only: str.isdigit() takes "²", which int() refuses.
    if not (text.isascii() and text.isdigit() and len(text) <= 9) or int(text) <= 1:
        return f"The pid file {pidfile} does not hold a process id; the gateway was not told."
    pid = int(text)
    if not _looks_like_gateway(pid):
        return (
            f"Process {pid} named by {pidfile} is not an esa-tls gateway (stale pid file); "
            "it was not signalled."
        )
    if config is not None:
        running = running_configuration(pid)
        if running != UNKNOWN and running != os.path.realpath(config):
            what = "the embedded default configuration" if running is None else running
            return (
                f"The gateway (pid {pid}) runs {what}, not {config}: it was not told to "
                f"reload. Start it with 'twistd -n esa-tls --config {config}' to run this file."
            )
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return (
            f"The gateway of {pidfile} (pid {pid}) is not running: the configuration "
            "applies when it starts."
        )
    except PermissionError:
        return f"Not allowed to signal the gateway (pid {pid}): reload it with SIGHUP yourself."
    return f"The gateway (pid {pid}) was told to reload its configuration."


def run(options: argparse.Namespace, context: CommandContext) -> int:
    """
    Commit the pending changes; see the module docstring.

    @return: 0 when committed (or nothing to commit), 1 when refused.
    """
    comment = " ".join(options.comment)
    try:
        session = open_session(context)
    except PendingError as e:
        print(f"esa-tls: {e}", file=context.stderr)
        return EXIT_CONFIG_ERROR
    prompter = Prompter(
        context.stdin if isinstance(context, ShellContext) else io.StringIO(),
        context.stdout,
    )
    pending = session.pending
    before = _committed_listeners(session)
    if not pending.changed:
        pending.forget()
        prompter.say("There are no changes to commit.")
        return 0
    if isinstance(context, ShellContext) and not comment:
        try:
            comment = prompter.text(
                "Please enter some comments describing your changes:", required=False
            )
        except PromptAborted:
            prompter.say("Commit aborted: nothing was written.")
            return EXIT_ABORTED
    try:
        result = pending.commit(comment)
    except ConfigError as e:
        show_faults(
            prompter,
            e.faults,
            f"The configuration cannot be committed; {pending.path} was not changed:",
        )
        return EXIT_ABORTED
    except PendingError as e:
        prompter.say(str(e))
        return EXIT_ABORTED
    except OSError as e:
        prompter.say(f"Cannot write {pending.path}: {e.strerror}; nothing was committed.")
        return EXIT_ABORTED
    if result.loaded is not None:
        for warning in result.loaded.warnings:
            print(f"warning: {warning}", file=context.stderr)
    local = result.when.astimezone()
    prompter.say(f"Changes committed: {local.strftime('%a %b %d %H:%M:%S %Y')}")
    if result.backup is not None:
        prompter.say(f"The previous configuration is kept in {result.backup}.")
    if result.loaded is not None and before is not None:
        for name, where in result.loaded.config.listeners.items():
            place = (where.interface.address.ip, where.port, where.protocol)
            if before.get(name) != place:
                prompter.say(
                    f"Listener {name} is new or has moved: restart the gateway to start it "
                    "there (a reload opens no port)."
                )
        # A reload does close the port of a listener removed (or renamed):
        # mail sent there is refused from then on, which must not come as
        # a surprise after the line above.
        for name, (ip, port, _protocol) in before.items():
            if name not in result.loaded.config.listeners:
                prompter.say(
                    f"Listener {name} is removed: the reload stops it listening on "
                    f"{ip} port {port}."
                )
    if not options.no_reload:
        prompter.say(reload_gateway(options.pidfile, pending.path))
    return 0


def _committed_listeners(session: EditSession) -> dict[str, tuple[object, int, object]] | None:
    """
    Where each listener of the committed file listens, to tell the
    administrator which changes a reload cannot apply; C{None} when the
    committed file is not valid (or absent).
    """
    config, _ = session.check(session.pending.base_text)
    if config is None or not session.pending.exists:
        return None
    return {
        name: (listener.interface.address.ip, listener.port, listener.protocol)
        for name, listener in config.listeners.items()
    }
