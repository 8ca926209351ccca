# -*- test-case-name: tests.test_cli_hatfile -*-
"""
The Host Access Table as text: what HOSTACCESS > EXPORT writes, IMPORT
reads and PRINT shows, in the ESA's HAT notation (ESA reference 2.2, 3.3).

The format (see also C{docs/CLI.md}), whitespace-insensitive except where
said:

    # a comment runs to the end of the line
    $TRUSTED ACCEPT { max_msgs_per_session=5000 tls="off" }
    $BLOCKED REJECT
    WHITELIST: 10.1.1.1-50, .partner.example $TRUSTED (My trusted senders)
    ALL $ACCEPTED (Everyone else)

  - A mail flow policy is C{$NAME RULE}, optionally followed by C{{ ... }}
    holding C{key=value} parameters (the configuration's key names; values
    are TOML values: C{"text"}, C{5000}, C{true}, C{["a", "b"]}; a bare word
    such as C{on} is taken as a string).  Parameters a policy does not give
    are inherited from the Default Policy Parameters.
  - A sender group is C{NAME:} followed by its senders (ESA sender syntax,
    separated by commas, spaces or line breaks), then C{$POLICY}, then
    optionally a comment in parentheses, which runs to the last C{)} on that
    line.  The group named C{ALL} may be written without the colon and
    without senders; it then matches every sender.
  - Groups are evaluated in the order written: first match wins.

Everything is checked before anything is used: a file with one bad entry is
refused as a whole, with the line of each fault, so an import never leaves a
listener half-replaced.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable
from typing import Any

from attrs import frozen

from esa_tls.config.errors import suggest
from esa_tls.config.model import POLICY_PARAMETER_KEYS, UNIMPLEMENTED_POLICY_KEYS, AccessRule
from esa_tls.hat.syntax import SenderSyntaxError, parse_sender

__all__ = ["HATGroup", "HATPolicy", "HATSyntaxError", "HATText", "format_hat", "parse_hat"]

_PARAMETERS = POLICY_PARAMETER_KEYS | UNIMPLEMENTED_POLICY_KEYS
_RULES = tuple(rule.value for rule in AccessRule)
_WORD_END = " \t\r\n,#$(){}"


class HATSyntaxError(ValueError):
    """
    A HAT text with faults.

    @ivar faults: C{(line, message)} pairs, in order.
    """

    def __init__(self, faults: Iterable[tuple[int, str]]) -> None:
        self.faults = tuple(faults)
        super().__init__("\n".join(f"line {line}: {message}" for line, message in self.faults))


@frozen
class HATPolicy:
    """
    A mail flow policy: name (without C{$}), access rule, and the
    parameters it sets, in order.
    """

    name: str
    rule: str
    parameters: tuple[tuple[str, Any], ...] = ()


@frozen
class HATGroup:
    """
    A sender group: name, senders in order, policy name, comment.
    """

    name: str
    senders: tuple[str, ...]
    policy: str
    comment: str = ""


@frozen
class HATText:
    policies: tuple[HATPolicy, ...]
    groups: tuple[HATGroup, ...]


def _value_text(value: Any) -> str:
    """
    A parameter value as TOML inline text (strings JSON-quoted, which is
    valid TOML for the printable text the configuration allows).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    return json.dumps(str(value))


def format_hat(policies: Iterable[HATPolicy], groups: Iterable[HATGroup], title: str = "") -> str:
    """
    The HAT text of policies and groups; L{parse_hat} reads it back to the
    same values.

    @param title: a first comment line, e.g. which listener it is from.
    """
    lines = []
    if title:
        lines.append(f"# {title}")
    lines += [
        "# Mail flow policies: $NAME RULE { parameter=value ... }",
        "# Sender groups, first match wins: NAME: sender, ... $POLICY (comment)",
        "",
    ]
    for policy in policies:
        line = f"${policy.name} {policy.rule}"
        if policy.parameters:
            body = " ".join(f"{k}={_value_text(v)}" for k, v in policy.parameters)
            line += f" {{ {body} }}"
        lines.append(line)
    lines.append("")
    for group in groups:
        if group.name == "ALL" and tuple(group.senders) == ("ALL",):
            line = "ALL"
        else:
            line = f"{group.name}:"
            if group.senders:
                line += " " + ", ".join(group.senders)
        line += f" ${group.policy}"
        if group.comment:
            line += f" ({' '.join(group.comment.split())})"
        lines.append(line)
    return "\n".join(lines) + "\n"


class _Reader:
    """
    A cursor over the text that knows its line number.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.faults: list[tuple[int, str]] = []

    @property
    def line(self) -> int:
        return self.text.count("\n", 0, self.pos) + 1

    def fault(self, message: str, line: int | None = None) -> None:
        self.faults.append((self.line if line is None else line, message))

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip(self, newlines: bool = True, commas: bool = False) -> None:
        """
        Skip blanks (and line breaks, commas), and comments.
        """
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r" or (newlines and char == "\n") or (commas and char == ","):
                self.pos += 1
            elif char == "#" and newlines:
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def word(self, end: str = _WORD_END) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in end:
            self.pos += 1
        return self.text[start : self.pos]

    def rest_of_line(self) -> str:
        end = self.text.find("\n", self.pos)
        end = len(self.text) if end < 0 else end
        text = self.text[self.pos : end]
        self.pos = end
        return text


def _group_header(word: str) -> str | None:
    """
    The group name of a C{NAME:} word, or C{None}.  IPv6 entries (which
    contain colons) are never headers.
    """
    if word.endswith(":") and ":" not in word[:-1] and len(word) > 1:
        return word[:-1]
    return None


def parse_hat(text: str) -> HATText:
    """
    Read a HAT text.

    @raise HATSyntaxError: listing every fault with its line.
    """
    reader = _Reader(text)
    policies: list[HATPolicy] = []
    groups: list[HATGroup] = []
    seen_policies: set[str] = set()
    seen_groups: set[str] = set()
    while True:
        reader.skip()
        if not reader.peek():
            break
        line = reader.line
        if reader.peek() == "$":
            reader.pos += 1
            policy = _policy(reader)
            if policy is None:
                continue
            if policy.name in seen_policies:
                reader.fault(f"policy ${policy.name} is defined twice", line)
            seen_policies.add(policy.name)
            policies.append(policy)
            continue
        word = reader.word()
        if not word:
            reader.fault(f"unexpected {reader.peek()!r}")
            reader.rest_of_line()
            continue
        name = _group_header(word)
        if name is None and word == "ALL":
            name = "ALL"
        if name is None:
            reader.fault(
                f"expected a sender group (NAME: senders $POLICY) or a policy "
                f"($NAME RULE), got {word!r}"
            )
            reader.rest_of_line()
            continue
        group = _group(reader, name, line)
        if group is None:
            continue
        if name in seen_groups:
            reader.fault(f"sender group {name} is given twice", line)
        seen_groups.add(name)
        groups.append(group)
    if reader.faults:
        raise HATSyntaxError(reader.faults)
    return HATText(tuple(policies), tuple(groups))


def _policy(reader: _Reader) -> HATPolicy | None:
    line = reader.line
    name = reader.word()
    if not name:
        reader.fault("a policy needs a name after $")
        reader.rest_of_line()
        return None
    reader.skip()
    rule = reader.word().upper()
    if rule not in _RULES:
        reader.fault(
            f"policy ${name}: {rule or 'nothing'!r} is not an access rule ({' | '.join(_RULES)})",
            line,
        )
        reader.rest_of_line()
        return None
    # Parameters may start on the next line (the ESA prints them so).
    mark = reader.pos
    reader.skip()
    if reader.peek() != "{":
        reader.pos = mark
        return HATPolicy(name, rule)
    reader.pos += 1
    parameters: list[tuple[str, Any]] = []
    keys: set[str] = set()
    while True:
        reader.skip(commas=True)
        char = reader.peek()
        if char == "}":
            reader.pos += 1
            break
        if not char:
            reader.fault(f"policy ${name}: missing }} at the end of its parameters", line)
            return None
        key_line = reader.line
        key = reader.word(_WORD_END + "=")
        reader.skip(newlines=False)
        if not key or reader.peek() != "=":
            reader.fault(f"policy ${name}: expected parameter=value, got {key or char!r}")
            reader.rest_of_line()
            return None
        reader.pos += 1
        reader.skip(newlines=False)
        value = _value(reader)
        if key not in _PARAMETERS:
            reader.fault(
                f"policy ${name}: unknown parameter {key!r}" + suggest(key, _PARAMETERS), key_line
            )
        elif key in keys:
            reader.fault(f"policy ${name}: parameter {key} is given twice", key_line)
        keys.add(key)
        parameters.append((key, value))
    return HATPolicy(name, rule, tuple(parameters))


def _value(reader: _Reader) -> Any:
    """
    Read one parameter value: a quoted string, an array, or a bare word.
    """
    start = reader.pos
    char = reader.peek()
    if char in "\"'":
        reader.pos += 1
        while reader.pos < len(reader.text):
            current = reader.text[reader.pos]
            if char == '"' and current == "\\":
                reader.pos += 2
                continue
            reader.pos += 1
            if current == char or current == "\n":
                break
    elif char == "[":
        depth = 0
        quote = ""
        while reader.pos < len(reader.text):
            current = reader.text[reader.pos]
            reader.pos += 1
            if quote:
                if current == "\\" and quote == '"':
                    reader.pos += 1
                elif current == quote:
                    quote = ""
            elif current in "\"'":
                quote = current
            elif current == "[":
                depth += 1
            elif current == "]":
                depth -= 1
                if depth == 0:
                    break
    else:
        reader.word(" \t\r\n,}")
    raw = reader.text[start : reader.pos]
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _group(reader: _Reader, name: str, line: int) -> HATGroup | None:
    senders: list[str] = []
    ok = True
    while True:
        reader.skip(commas=True)
        char = reader.peek()
        if not char:
            reader.fault(f"sender group {name} has no $POLICY", line)
            return None
        if char == "$":
            reader.pos += 1
            policy = reader.word()
            if not policy:
                reader.fault(f"sender group {name}: a policy name must follow $")
                return None
            break
        sender_line = reader.line
        word = reader.word(" \t\r\n,#$")
        if not word:
            reader.fault(f"sender group {name}: unexpected {char!r}")
            reader.rest_of_line()
            return None
        if _group_header(word) is not None:
            reader.fault(f"sender group {name} has no $POLICY before group {word}", line)
            reader.pos -= len(word)
            return None
        try:
            parse_sender(word)
        except SenderSyntaxError as e:
            reader.fault(f"sender group {name}: {e}", sender_line)
            ok = False
        senders.append(word)
    reader.skip(newlines=False)
    comment = ""
    if reader.peek() == "(":
        rest = reader.rest_of_line()
        close = rest.rfind(")")
        if close < 0:
            reader.fault(f"sender group {name}: the comment has no closing )")
            return None
        comment = rest[1:close].strip()
        trailing = rest[close + 1 :].strip()
        if trailing and not trailing.startswith("#"):
            reader.fault(f"sender group {name}: unexpected {trailing!r} after the comment")
            return None
    if name == "ALL" and not senders:
        senders = ["ALL"]
    if not ok:
        return None
    return HATGroup(name, tuple(senders), policy, comment)
