# -*- test-case-name: tests.test_config_errors -*-
"""
Configuration faults, and finding the line of the file they are on.

An administrator fixing a configuration file wants every fault at once, each
pointing at a line, not a traceback about the first one.  The loader collects
L{ConfigFault}s and raises one L{ConfigError} holding all of them.

C{tomllib} keeps no positions, so L{SourceMap} re-reads the text with a small
scanner that knows just enough TOML (tables, arrays of tables, dotted and
quoted keys, strings, arrays, inline tables, comments) to say on which line
each key and each array element starts.  It is best effort: when it cannot
tell, callers fall back to the line of the enclosing table header.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Sequence

from attrs import frozen

#: One step of a key path: a key in a table, or an index into an array.
PathPart = str | int

#: Where a value sits in the configuration, e.g.
#: C{("listeners", "Inboundmail", "hat", 0, "senders", 2)}.
KeyPath = tuple[PathPart, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


def render_path(path: KeyPath) -> str:
    """
    Write a key path the way an administrator would find it in the file:
    C{listeners.Inboundmail.hat[0].senders[2]}, with keys that are not bare
    TOML keys quoted (C{destinations."example.com".tls}).

    @param path: the key path.
    @return: its text form; C{""} for the root.
    """
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
            continue
        text = part if _BARE_KEY.match(part) else _quote(part)
        out.append(f".{text}" if out else text)
    return "".join(out)


def _quote(key: str) -> str:
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@frozen
class ConfigFault:
    """
    One thing wrong in a configuration file.

    @ivar source: the file name as the administrator gave it.
    @ivar line: the 1-based line the fault is on (best effort), or C{None}
        when it is about the whole file (it cannot be read).
    @ivar path: the rendered key path (see L{render_path}); C{""} when the
        fault is not about one key (a TOML syntax error).
    @ivar message: what is wrong, said so that the fix is obvious.
    """

    source: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.source}: {self.message}"
        if self.path:
            return f"{self.source}:{self.line}: {self.path}: {self.message}"
        return f"{self.source}:{self.line}: {self.message}"


class ConfigError(Exception):
    """
    A configuration cannot be used.  Raised once per load with every fault
    found, so that nothing starts half-configured and the administrator
    fixes everything in one pass.

    @ivar faults: the faults, in file order.
    """

    def __init__(self, faults: Sequence[ConfigFault]) -> None:
        self.faults = tuple(sorted(faults, key=lambda f: f.line or 0))
        super().__init__("\n".join(str(f) for f in self.faults))


class SourceMap:
    """
    Line numbers of the keys, tables and array elements of a TOML text.

    Lines are 1-based.  The first place a path appears wins (a table's
    header rather than a later sub-table).
    """

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        self._keys_by_line: dict[int, KeyPath] = {}
        _Scanner(text, self).scan()

    def _record(self, path: KeyPath, line: int) -> None:
        self._lines.setdefault(path, line)

    def _record_key(self, path: KeyPath, line: int) -> None:
        self._record(path, line)
        self._keys_by_line.setdefault(line, path)

    def line_of(self, path: KeyPath) -> int:
        """
        The line of C{path}, or of its nearest enclosing key or table that
        the scanner saw; line 1 when none was seen.

        @param path: a key path.
        @return: a 1-based line number.
        """
        for end in range(len(path), 0, -1):
            line = self._lines.get(path[:end])
            if line is not None:
                return line
        return 1

    def exact_line(self, path: KeyPath) -> int | None:
        """
        The line of C{path} itself, if the scanner saw it.
        """
        return self._lines.get(path)

    def key_at(self, line: int) -> KeyPath | None:
        """
        The key path of the key assigned on C{line}, if any.
        """
        return self._keys_by_line.get(line)


def _parse_key(text: str, pos: int) -> tuple[list[str], int] | None:
    """
    Read a (dotted, possibly quoted) TOML key starting at C{pos}.

    @return: the key's parts and the position after it, or C{None} if no
        key starts there.
    """
    parts: list[str] = []
    while True:
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos >= len(text):
            return None
        char = text[pos]
        if char in "\"'":
            end = string_end(text, pos, char)
            if end is None:
                return None
            try:
                parts.append(tomllib.loads(f"k = {text[pos:end]}")["k"])
            except tomllib.TOMLDecodeError:
                return None
            pos = end
        else:
            match = re.compile(r"[A-Za-z0-9_-]+").match(text, pos)
            if match is None:
                return None
            parts.append(match.group())
            pos = match.end()
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos < len(text) and text[pos] == ".":
            pos += 1
            continue
        return parts, pos


def string_end(text: str, pos: int, quote: str) -> int | None:
    """
    The position just after the one-line string starting at C{pos}.
    """
    index = pos + 1
    while index < len(text):
        char = text[index]
        if quote == '"' and char == "\\":
            index += 2
            continue
        if char == quote:
            return index + 1
        index += 1
    return None


class _Container:
    """
    An array or inline table whose value is still being read.
    """

    def __init__(self, kind: str, path: KeyPath) -> None:
        self.kind = kind
        self.path = path
        self.count = 0
        self.awaiting = True


class _Scanner:
    """
    Walks a TOML text line by line, recording where paths start.
    """

    def __init__(self, text: str, sink: SourceMap) -> None:
        self.lines = text.splitlines()
        self.sink = sink
        self.table: KeyPath = ()
        self.array_tables: dict[KeyPath, int] = {}
        self.stack: list[_Container] = []
        self.multiline: str | None = None

    def scan(self) -> None:
        for number, line in enumerate(self.lines, start=1):
            pos = 0
            if self.multiline is not None:
                end = line.find(self.multiline)
                if end < 0:
                    continue
                pos = end + 3
                self.multiline = None
            if not self.stack and pos == 0:
                stripped = line.lstrip()
                if stripped.startswith("["):
                    self._header(stripped, number)
                    continue
                after = self._key(line, 0, number, self.table)
                if after is None:
                    continue
                pos = after
            self._value(line, pos, number)

    def _header(self, stripped: str, number: int) -> None:
        array = stripped.startswith("[[")
        parsed = _parse_key(stripped, 2 if array else 1)
        if parsed is None:
            return
        parts, _ = parsed
        path: KeyPath = ()
        for index, part in enumerate(parts):
            path = (*path, part)
            last = index == len(parts) - 1
            if array and last:
                count = self.array_tables.get(path, 0)
                self.array_tables[path] = count + 1
                self.sink._record(path, number)
                path = (*path, count)
            elif path in self.array_tables:
                path = (*path, self.array_tables[path] - 1)
            self.sink._record(path, number)
        self.table = path

    def _key(self, line: str, pos: int, number: int, base: KeyPath) -> int | None:
        parsed = _parse_key(line, pos)
        if parsed is None:
            return None
        parts, after = parsed
        if after >= len(line) or line[after] != "=":
            return None
        path = (*base, *parts)
        for end in range(len(base) + 1, len(path)):
            self.sink._record(path[:end], number)
        self.sink._record_key(path, number)
        self.pending = path
        return after + 1

    def _value(self, line: str, pos: int, number: int) -> None:
        """
        Read value text from C{pos} to the end of the line, tracking
        nesting, strings and comments.
        """
        while pos < len(line):
            char = line[pos]
            top = self.stack[-1] if self.stack else None
            if char in " \t":
                pos += 1
                continue
            if char == "#":
                return
            if top is not None and top.kind == "table" and top.awaiting:
                after = self._key(line, pos, number, top.path)
                if after is None:
                    return
                top.awaiting = False
                pos = after
                continue
            if char == ",":
                if top is not None:
                    if top.kind == "array":
                        top.count += 1
                    top.awaiting = True
                pos += 1
                continue
            if char in "]}":
                if self.stack:
                    self.stack.pop()
                pos += 1
                continue
            path = self._element(top, number)
            if char in "[{":
                self.stack.append(_Container("array" if char == "[" else "table", path))
                pos += 1
                continue
            if char in "\"'":
                triple = line[pos : pos + 3]
                if triple in ('"""', "'''"):
                    end = line.find(triple, pos + 3)
                    if end < 0:
                        self.multiline = triple
                        return
                    pos = end + 3
                    continue
                closed = string_end(line, pos, char)
                if closed is None:
                    return
                pos = closed
                continue
            while pos < len(line) and line[pos] not in " \t,]}#":
                pos += 1

    def _element(self, top: _Container | None, number: int) -> KeyPath:
        """
        Note the start of a value; inside an array it is the next element.
        """
        if top is None:
            return self.pending
        if top.kind == "array":
            path = (*top.path, top.count)
            if top.awaiting:
                self.sink._record(path, number)
                top.awaiting = False
            return path
        return self.pending

    pending: KeyPath = ()


def suggest(word: str, choices: Iterable[str]) -> str:
    """
    A "did you mean" hint for a misspelt key or name, or C{""}.

    @param word: what the administrator wrote.
    @param choices: what would have been valid.
    @return: C{"; did you mean 'port'?"} or C{""}.
    """
    import difflib

    options = sorted(choices)
    lowered = {c.lower(): c for c in options}
    if word.lower() in lowered:
        return f"; did you mean {lowered[word.lower()]!r}?"
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return ""
