# -*- test-case-name: tests.test_cli_listeners -*-
"""
C{esa-tls [--config FILE] COMMAND ...}: the entry point of the console
script.

Commands are discovered, not registered: every module of L{esa_tls.cli}
(see there for what one must define) is the command of the same name, and
is imported only when it runs (or when C{--help} lists the commands), so a
command with heavy imports costs the others nothing and a broken one does
not break the rest.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType
from typing import TextIO

from attrs import frozen

import esa_tls.cli
from esa_tls.config.errors import ConfigError
from esa_tls.config.load import load_config_with_warnings
from esa_tls.config.model import GatewayConfig

#: Exit status for a configuration that cannot be used (and for usage
#: errors, as argparse does).
EXIT_CONFIG_ERROR = 2

_NOT_COMMANDS = frozenset({"main"})


@frozen
class CommandContext:
    """
    What every command gets besides its own options.

    @ivar config_path: the C{--config} file, or C{None} for the embedded
        default.
    @ivar stdout: where the command's output goes.
    @ivar stderr: where diagnostics go.
    """

    config_path: str | None
    stdout: TextIO
    stderr: TextIO

    def load_config(self) -> GatewayConfig:
        """
        Load the configuration, telling the administrator the warnings on
        C{stderr} (not on C{stdout}, whose text scripts may parse).

        @raise ConfigError: the configuration cannot be used; L{main} prints
            it and exits with L{EXIT_CONFIG_ERROR}.
        """
        result = load_config_with_warnings(self.config_path)
        for warning in result.warnings:
            print(f"warning: {warning}", file=self.stderr)
        return result.config


def command_names() -> list[str]:
    """
    The commands available, sorted.
    """
    return sorted(
        info.name
        for info in pkgutil.iter_modules(esa_tls.cli.__path__)
        if not info.name.startswith("_") and info.name not in _NOT_COMMANDS
    )


def _command(name: str) -> ModuleType:
    return importlib.import_module(f"{esa_tls.cli.__name__}.{name}")


def _summary(module: ModuleType) -> str:
    doc = (module.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def _epilog(names: list[str]) -> str:
    lines = ["commands:"]
    for name in names:
        try:
            text = _summary(_command(name))
        except Exception as e:  # help must still list the other commands
            text = f"(unavailable: {e})"
        lines.append(f"  {name:<16}{text}")
    return "\n".join(lines)


class _HelpWithCommands(argparse.Action):
    """
    C{--help} that lists the commands with their one-line help: importing
    every command is fine when a human asked for the list.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.epilog = _epilog(command_names())
        parser.print_help()
        parser.exit()


def _global_parser(names: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esa-tls",
        description="Administer an esa-tls mail gateway (Cisco ESA-style commands).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
        allow_abbrev=False,
    )
    parser.add_argument("-h", "--help", action=_HelpWithCommands, nargs=0, help="show this help")
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="TOML configuration file (default: the embedded default configuration)",
    )
    parser.add_argument(
        "command", choices=names, metavar="COMMAND", help="one of: " + ", ".join(names)
    )
    return parser


def _split(args: list[str]) -> tuple[list[str], list[str]]:
    """
    Split the command line after the command name: what comes before is the
    global parser's, the rest the command's (which may reuse option names).
    """
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--config":
            index += 2
        elif arg.startswith("-"):
            index += 1
        else:
            return args[: index + 1], args[index + 1 :]
    return args, []


def main(argv: list[str] | None = None) -> int:
    """
    Run one C{esa-tls} command.

    @param argv: the arguments after the program name; C{None} for
        C{sys.argv[1:]}.
    @return: the exit status: the command's own, L{EXIT_CONFIG_ERROR} when
        the configuration is invalid (its faults printed on stderr, one per
        line) or the command line is wrong.
    """
    args = sys.argv[1:] if argv is None else argv
    names = command_names()
    try:
        top = _global_parser(names)
        global_args, command_args = _split(args)
        options = top.parse_args(global_args)
        if options.command is None:
            top.error("a COMMAND is required (see esa-tls --help)")
        module = _command(options.command)
        parser = argparse.ArgumentParser(
            prog=f"esa-tls {options.command}", description=_summary(module)
        )
        # Accept --config after the command name too.
        parser.add_argument(
            "--config", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        add_arguments = getattr(module, "add_arguments", None)
        if add_arguments is not None:
            add_arguments(parser)
        command_options = parser.parse_args(command_args)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_CONFIG_ERROR
    context = CommandContext(
        getattr(command_options, "config", options.config), sys.stdout, sys.stderr
    )
    try:
        status: int = module.run(command_options, context)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return status
