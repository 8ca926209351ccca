# -*- test-case-name: tests.test_inbound_auth -*-
"""
Print a password file line (user:hash) for SMTP AUTH users.

Append the line to the file named by C{[system] smtp_auth_users}; the
gateway reads the file at each login, so no restart is needed.  The
password is read from standard input (one line), or asked for twice without
echo when standard input is a terminal: a typo nobody saw would otherwise
become the password.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from esa_tls.cli.main import EXIT_CONFIG_ERROR, CommandContext
from esa_tls.inbound.auth import hash_password


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user", metavar="USER", help="the SMTP AUTH user name")


def run(options: argparse.Namespace, context: CommandContext) -> int:
    user: str = options.user
    # A line starting with '#' is a comment in the password file: the user
    # could never log in, and nothing would say why.
    if not user or user.startswith("#") or ":" in user or not user.isprintable() or " " in user:
        print(
            "esa-tls passwd: a user name cannot be empty, start with '#',"
            " or contain ':', spaces or control characters",
            file=context.stderr,
        )
        return EXIT_CONFIG_ERROR
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if password and getpass.getpass("Password again: ") != password:
            print("esa-tls passwd: the passwords differ; nothing printed", file=context.stderr)
            return 1  # refused, as a dialog's refusal is (docs/CLI.md)
    else:
        try:
            password = sys.stdin.buffer.readline().decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            # The gateway compares the UTF-8 a client sends: a password in
            # another encoding could never be typed by one.
            print("esa-tls passwd: the password is not UTF-8", file=context.stderr)
            return EXIT_CONFIG_ERROR
    if not password:
        print("esa-tls passwd: the password is empty", file=context.stderr)
        return EXIT_CONFIG_ERROR
    context.stdout.write(f"{user}:{hash_password(password)}\n")
    return 0
