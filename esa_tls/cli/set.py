# -*- test-case-name: tests.test_cli_set -*-
"""
Set one configuration key for scripts: set KEY.PATH VALUE (pending until commit).

C{esa-tls --config FILE set listeners.Inboundmail.policies.default.tls required}
changes one key of the pending configuration, without any prompt:

  - KEY.PATH is the key path the loader's faults use: dotted keys, quoted
    where needed (C{destinations."example.com".tls}), C{[N]} for an element
    of an array (C{listeners.In.hat[0].senders}).
  - VALUE is read as a TOML value when it is one (C{25}, C{true},
    C{["a.example", "b.example"]}, C{"quoted text"}); anything else is a
    string, so C{required} needs no quotes.
  - C{--unset} removes the key instead (a policy parameter then inherits the
    Default Policy Parameters again).

The change is checked with the gateway's loader at once: if it puts a fault
at that key (or below it) the fault is printed, naming the key, the pending
configuration is left unchanged and the exit status is 1.  Faults elsewhere
are shown as a note; C{commit} will refuse them.

Editing a predefined policy (C{TRUSTED}...) or the sender groups of a
listener whose file has none first writes out their ESA values, so that one
changed parameter does not reset the others.
"""

from __future__ import annotations

import argparse
import tomllib
from typing import Any

import tomlkit

from esa_tls.cli._document import DocumentError, ensure_hat, ensure_policy
from esa_tls.cli._keypath import KeyPathError, parse_key_path
from esa_tls.cli._pending import PendingError
from esa_tls.cli._session import open_session
from esa_tls.cli.main import EXIT_CONFIG_ERROR, CommandContext
from esa_tls.config.errors import KeyPath, render_path

__all__ = ["add_arguments", "parse_value", "run"]

#: Exit status when the value is refused.
EXIT_REFUSED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key", metavar="KEY.PATH", help="e.g. listeners.NAME.port")
    parser.add_argument(
        "value",
        metavar="VALUE",
        nargs="?",
        help="a TOML value, or text (taken as a string)",
    )
    parser.add_argument("--unset", action="store_true", help="remove the key instead")


def parse_value(text: str) -> Any:
    """
    Read a command-line value: a TOML value if it is one, else the text as
    a string.
    """
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _materialize(doc: Any, path: KeyPath) -> None:
    """
    Write out what the loader would otherwise fill in implicitly under
    C{path}: a predefined policy, or a listener's predefined sender groups.
    """
    if len(path) >= 4 and path[0] == "listeners" and path[2] == "policies":
        if isinstance(path[1], str) and isinstance(path[3], str):
            ensure_policy(doc, path[1], path[3])
    if len(path) >= 4 and path[0] == "listeners" and path[2] == "hat":
        if isinstance(path[1], str) and doc.has(("listeners", path[1])):
            ensure_hat(doc, path[1])


def _inline(value: Any) -> str:
    """
    C{value} as TOML on one line, for the C{KEY = VALUE} echo: a table as
    an inline table (tomlkit would render it as the body of a C{[table]},
    whose keys read like top-level ones), arrays of tables likewise.
    """
    if isinstance(value, dict):
        items = (f"{tomlkit.key(k).as_string()} = {_inline(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return tomlkit.item(value).as_string()


def _is_under(fault_path: str, key: str) -> bool:
    return fault_path == key or fault_path.startswith((key + ".", key + "["))


def run(options: argparse.Namespace, context: CommandContext) -> int:
    """
    Set (or unset) one key of the pending configuration.

    @return: 0 when the change is pending, 1 when refused, 2 for a bad
        command line or configuration file.
    """
    err = context.stderr
    try:
        path = parse_key_path(options.key)
    except KeyPathError as e:
        print(f"esa-tls set: {e}", file=err)
        return EXIT_CONFIG_ERROR
    if options.unset == (options.value is not None):
        print("esa-tls set: give either a VALUE or --unset", file=err)
        return EXIT_CONFIG_ERROR
    try:
        session = open_session(context)
    except PendingError as e:
        print(f"esa-tls: {e}", file=err)
        return EXIT_CONFIG_ERROR
    key = render_path(path)
    doc = session.document()
    try:
        if options.unset:
            if not doc.delete(path):
                print(f"esa-tls set: {key} is not set", file=err)
                return EXIT_REFUSED
        else:
            _materialize(doc, path)
            doc.set(path, parse_value(options.value))
    except DocumentError as e:
        print(f"esa-tls set: {e}", file=err)
        return EXIT_REFUSED
    text = doc.text()
    _, faults = session.check(text)
    # A fault under the key is about the new value; an "unknown key" fault
    # above it means the path itself is misspelt.
    mine = [
        f
        for f in faults
        if _is_under(f.path, key)
        or (f.path and _is_under(key, f.path) and f.message.startswith("unknown key"))
    ]
    if mine:
        for fault in mine:
            print(f"esa-tls set: {fault}", file=err)
        print("esa-tls set: nothing was changed", file=err)
        return EXIT_REFUSED
    try:
        session.keep(text)
    except PendingError as e:
        print(f"esa-tls: {e}", file=err)
        return EXIT_CONFIG_ERROR
    if options.unset:
        print(f"{key} unset (pending: use 'commit' to apply)", file=context.stdout)
    else:
        rendered = _inline(doc.get(path))
        print(f"{key} = {rendered} (pending: use 'commit' to apply)", file=context.stdout)
    others = [f for f in faults if f not in mine]
    if others:
        print(
            "note: the pending configuration has other problems that 'commit' will refuse:",
            file=err,
        )
        for fault in others:
            print(f"  {fault}", file=err)
    return 0
