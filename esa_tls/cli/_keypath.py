# -*- test-case-name: tests.test_cli_document -*-
"""
Key paths as administrators type them: C{listeners.Inboundmail.port},
C{destinations."example.com".tls}, C{listeners.In.hat[0].senders}.

The same text form is what the configuration loader prints in its faults
(L{esa_tls.config.errors.render_path}), so that a script can copy a key
path from an error message into C{esa-tls set} and back.  Parsing and
rendering are inverse: C{render_path(parse_key_path(text))} names the same
key, written the canonical way.
"""

from __future__ import annotations

import re
import tomllib

from esa_tls.config.errors import KeyPath, render_path, string_end

__all__ = ["KeyPathError", "parse_key_path", "render_path"]

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_INDEX = re.compile(r"\[(\d+)\]")


class KeyPathError(ValueError):
    """
    Text that is not a key path; C{str()} says where and why.
    """


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """
    Read the TOML quoted key starting at C{text[pos]}.

    @return: the key and the position after its closing quote.
    """
    end = string_end(text, pos, text[pos])
    if end is None:
        raise KeyPathError(f"unterminated quoted key at column {pos + 1} of {text!r}")
    try:
        key = tomllib.loads(f"k = {text[pos:end]}")["k"]
    except tomllib.TOMLDecodeError as e:
        raise KeyPathError(f"bad quoted key at column {pos + 1} of {text!r}") from e
    return key, end


def parse_key_path(text: str) -> KeyPath:
    """
    Parse a dotted key path with optional quoted keys and C{[N]} array
    indexes.

    @param text: e.g. C{listeners.In.hat[0].senders}.
    @return: e.g. C{("listeners", "In", "hat", 0, "senders")}.
    @raise KeyPathError: the text is not a key path.
    """
    parts: list[str | int] = []
    pos = 0
    text = text.strip()
    if not text:
        raise KeyPathError("empty key path")
    while True:
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos >= len(text):
            raise KeyPathError(f"key path {text!r} ends with a dot")
        if text[pos] in "\"'":
            key, pos = _quoted(text, pos)
            parts.append(key)
        else:
            match = _BARE.match(text, pos)
            if match is None:
                raise KeyPathError(f"unexpected {text[pos]!r} at column {pos + 1} of {text!r}")
            parts.append(match.group())
            pos = match.end()
        while True:
            index = _INDEX.match(text, pos)
            if index is None:
                break
            parts.append(int(index.group(1)))
            pos = index.end()
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos == len(text):
            return tuple(parts)
        if text[pos] != ".":
            raise KeyPathError(f"unexpected {text[pos]!r} at column {pos + 1} of {text!r}")
        pos += 1


def parse_header(line: str) -> tuple[bool, KeyPath, str] | None:
    """
    Parse a TOML table header line.

    @return: (whether it is an array-of-tables header, its key path, what
        follows the closing bracket: whitespace and any comment), or C{None}
        when the line is not a header.
    """
    stripped = line.lstrip()
    if not stripped.startswith("["):
        return None
    array = stripped.startswith("[[")
    start = 2 if array else 1
    closing = "]]" if array else "]"
    # Find the closing bracket outside quotes.
    pos = start
    quote: str | None = None
    while pos < len(stripped):
        char = stripped[pos]
        if quote is not None:
            if quote == '"' and char == "\\":
                pos += 2
                continue
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif stripped.startswith(closing, pos):
            break
        pos += 1
    else:
        return None
    try:
        path = parse_key_path(stripped[start:pos])
    except KeyPathError:
        return None
    if any(isinstance(part, int) for part in path):
        return None
    return array, path, stripped[pos + len(closing) :]


def render_header(array: bool, path: KeyPath) -> str:
    """
    A table header for C{path}: C{[listeners.In]} or C{[[listeners.In.hat]]}.
    """
    body = render_path(path)
    return f"[[{body}]]" if array else f"[{body}]"
