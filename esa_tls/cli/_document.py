# -*- test-case-name: tests.test_cli_document -*-
"""
The configuration file as an editable document that keeps what the
administrator wrote.

The CLI changes the TOML file the administrator also edits by hand, so an
edit must change only what it is about: comments, key order, blank lines and
quoting elsewhere survive (U{tomlkit<https://tomlkit.readthedocs.io/>}
round-trips them).  Tables the CLI adds get the usual blank line before
their header, and nothing else in the file is reformatted.

Knowledge of what the loader fills in implicitly also lives here: a listener
without C{hat} has the ESA predefined sender groups, and a predefined policy
absent from the file has the ESA values.  Before the CLI edits one of those,
it writes it out in full (L{ensure_hat}, L{ensure_policy}), so that changing
one parameter of C{TRUSTED} keeps the rest of C{TRUSTED} as the ESA ships it
instead of silently falling back to the Default Policy Parameters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import MutableMapping
from typing import Any

import tomlkit
from tomlkit.items import AoT, InlineTable

from esa_tls.cli._keypath import parse_header, render_header
from esa_tls.config.errors import KeyPath, render_path
from esa_tls.config.load import DEFAULT_POLICY
from esa_tls.config.model import ListenerType
from esa_tls.hat.predefined import predefined_groups, predefined_policies

__all__ = [
    "ConfigDocument",
    "DocumentError",
    "ensure_hat",
    "ensure_policy",
    "listener_type",
    "policy_names",
]


class DocumentError(ValueError):
    """
    A key path cannot be followed in the document: it goes through a value
    that is not a table, or past the end of an array.
    """


def _is_table(node: object) -> bool:
    return isinstance(node, MutableMapping)


def _plain(node: object) -> Any:
    unwrap = getattr(node, "unwrap", None)
    return unwrap() if unwrap is not None else node


class ConfigDocument:
    """
    One TOML document being edited.

    @ivar original: the text it was parsed from, used to tell the tables the
        CLI added (which get a blank line before them) from the
        administrator's own.
    """

    def __init__(self, text: str) -> None:
        self.original = text
        self.doc = tomlkit.parse(text)

    def text(self) -> str:
        """
        The document as TOML text, as the administrator wrote it apart from
        the edits.
        """
        return _tidy(self.original, tomlkit.dumps(self.doc))

    # Reading

    def node(self, path: KeyPath) -> Any:
        """
        The tomlkit item at C{path}, or C{None} when absent.
        """
        node: Any = self.doc
        for part in path:
            if isinstance(part, int):
                if not isinstance(node, list) or not 0 <= part < len(node):
                    return None
                node = node[part]
            else:
                if not _is_table(node) or part not in node:
                    return None
                node = node[part]
        return node

    def get(self, path: KeyPath, default: Any = None) -> Any:
        """
        The plain Python value at C{path} (tables as dicts, arrays as lists),
        or C{default} when absent.
        """
        node = self.node(path)
        return default if node is None else _plain(node)

    def has(self, path: KeyPath) -> bool:
        return self.node(path) is not None

    def keys(self, path: KeyPath) -> list[str]:
        """
        The keys of the table at C{path}, in file order; C{[]} when absent.
        """
        node = self.node(path)
        return list(node.keys()) if _is_table(node) else []

    # Writing

    def table(self, path: KeyPath) -> Any:
        """
        The table at C{path}, created (with any tables above it) if absent.
        A created table that holds values gets its own C{[header]}; one that
        only holds tables is a super-table without a header of its own, as
        an administrator would write them.

        @raise DocumentError: something on the way is not a table.
        """
        node: Any = self.doc
        for depth, part in enumerate(path):
            where = render_path(path[: depth + 1])
            if isinstance(part, int):
                if not isinstance(node, list) or not 0 <= part < len(node):
                    raise DocumentError(f"{where}: no such array element")
                node = node[part]
                continue
            if not _is_table(node):
                raise DocumentError(f"{render_path(path[:depth])}: not a table")
            if part not in node:
                if isinstance(node, InlineTable):
                    node[part] = tomlkit.inline_table()
                elif depth == len(path) - 1:
                    node[part] = tomlkit.table()
                else:
                    node[part] = tomlkit.table(is_super_table=True)
            node = node[part]
        if not _is_table(node):
            raise DocumentError(f"{render_path(path)}: not a table")
        return node

    def set(self, path: KeyPath, value: Any) -> None:
        """
        Set the value at C{path}, creating the tables above it.

        @param value: a plain value (string, integer, float, boolean, list,
            dict for an inline table).
        @raise DocumentError: the path cannot be followed.
        """
        if not path:
            raise DocumentError("empty key path")
        *above, last = path
        if isinstance(last, int):
            array = self.node(tuple(above))
            if not isinstance(array, list) or not 0 <= last < len(array):
                raise DocumentError(f"{render_path(path)}: no such array element")
            array[last] = _item(value)
            return
        container = self.table(tuple(above))
        container[last] = _item(value)

    def delete(self, path: KeyPath) -> bool:
        """
        Remove the key or array element at C{path}.

        @return: whether there was one.
        """
        if not path:
            return False
        *above, last = path
        parent = self.node(tuple(above))
        if isinstance(last, int):
            if isinstance(parent, list) and 0 <= last < len(parent):
                del parent[last]
                return True
            return False
        if _is_table(parent) and last in parent:
            del parent[last]
            return True
        return False

    def table_array(self, path: KeyPath) -> AoT:
        """
        The array of tables at C{path} (C{[[listeners.X.hat]]}), created empty
        if absent.

        @raise DocumentError: C{path} holds something else.
        """
        node = self.node(path)
        if node is None:
            *above, last = path
            container = self.table(tuple(above))
            container[last] = tomlkit.aot()
            node = container[last]
        if not isinstance(node, AoT | list):
            raise DocumentError(f"{render_path(path)}: not an array of tables")
        return node  # type: ignore[return-value]

    def rename(self, path: KeyPath, new_name: str) -> None:
        """
        Rename the table at C{path} (a listener, a policy) to C{new_name},
        with its sub-tables, keeping its place and comments in the file.

        Table headers are rewritten in the text; a table written some other
        way (inline, dotted keys) is moved instead, to the end of its parent.
        """
        new_path = (*path[:-1], new_name)
        before = self.get(path)
        lines = self.text().splitlines(keepends=True)
        for index, line in enumerate(lines):
            header = parse_header(line)
            if header is None:
                continue
            array, hpath, rest = header
            if hpath[: len(path)] == path:
                indent = line[: len(line) - len(line.lstrip())]
                lines[index] = (
                    indent + render_header(array, (*new_path, *hpath[len(path) :])) + rest
                )
        candidate = tomlkit.parse("".join(lines))
        moved = ConfigDocument.__new__(ConfigDocument)
        moved.original, moved.doc = self.original, candidate
        if moved.get(new_path) == before and not moved.has(path):
            self.doc = candidate
            return
        self.delete(path)
        self.table(path[:-1])[new_name] = _item(before)


def _item(value: Any) -> Any:
    if isinstance(value, dict):
        table = tomlkit.inline_table()
        for key, inner in value.items():
            table[key] = _item(inner)
        return table
    if isinstance(value, list | tuple):
        array = tomlkit.array()
        for element in value:
            array.append(_item(element))
        return array
    return tomlkit.item(value)


def _header_key(line: str) -> str | None:
    header = parse_header(line)
    if header is None:
        return None
    array, path, _ = header
    return render_header(array, path)


def _tidy(original: str, text: str) -> str:
    """
    Put a blank line before each table header the CLI added, and before a
    header that directly follows an added table, unless one (or a comment)
    is there already.  Headers the administrator wrote are left as they are.
    """
    counts = Counter(
        key for key in map(_header_key, original.splitlines(keepends=True)) if key is not None
    )
    seen: Counter[str] = Counter()
    out: list[str] = []
    previous_new = False
    for line in text.splitlines(keepends=True):
        key = _header_key(line)
        if key is not None:
            seen[key] += 1
            new = seen[key] > counts[key]
            if (new or previous_new) and out:
                last = out[-1].strip()
                if last and not last.startswith("#"):
                    out.append("\n")
            previous_new = new
        out.append(line)
    result = "".join(out)
    if result and not result.endswith("\n"):
        result += "\n"
    return result


# What the loader fills in implicitly


def listener_type(doc: ConfigDocument, listener: str) -> ListenerType:
    """
    The type of a listener in the document; public when missing or wrong
    (the loader reports that).
    """
    value = doc.get(("listeners", listener, "type"), "public")
    if isinstance(value, str) and value.lower() == "private":
        return ListenerType.PRIVATE
    return ListenerType.PUBLIC


def policy_names(doc: ConfigDocument, listener: str) -> list[str]:
    """
    The named mail flow policies a listener has: those in the file, in file
    order, then the predefined ones the file does not mention.  The Default
    Policy Parameters are not a named policy.
    """
    names = [n for n in doc.keys(("listeners", listener, "policies")) if n != DEFAULT_POLICY]
    for name in predefined_policies(listener_type(doc, listener)):
        if name != DEFAULT_POLICY and name not in names:
            names.append(name)
    return names


def policy_settings(doc: ConfigDocument, listener: str, name: str) -> dict[str, Any]:
    """
    What a named policy sets itself (its rule and the parameters it does not
    inherit), from the file or else the ESA predefined values.
    """
    path = ("listeners", listener, "policies", name)
    if doc.has(path):
        settings: dict[str, Any] = doc.get(path)
        predefined = predefined_policies(listener_type(doc, listener)).get(name, {})
        if "rule" not in settings and "rule" in predefined:
            settings = {"rule": predefined["rule"], **settings}
        return settings
    return dict(predefined_policies(listener_type(doc, listener)).get(name, {}))


def ensure_policy(doc: ConfigDocument, listener: str, name: str) -> Any:
    """
    The table of a named policy (or of C{default}), written out first with
    its ESA predefined values if the file does not have it yet.
    """
    path = ("listeners", listener, "policies", name)
    if not doc.has(path):
        settings = policy_settings(doc, listener, name)
        table = doc.table(path)
        for key, value in settings.items():
            table[key] = _item(value)
    return doc.table(path)


def hat_groups(doc: ConfigDocument, listener: str) -> list[dict[str, Any]]:
    """
    A listener's sender groups in evaluation order, as dictionaries with
    C{group}, C{policy}, C{senders} and C{comment}: the file's, or the
    predefined ones when the file gives none.
    """
    path = ("listeners", listener, "hat")
    if doc.has(path):
        groups = doc.get(path)
        return [
            {
                "group": g.get("group", ""),
                "policy": g.get("policy", ""),
                "senders": list(g.get("senders", [])),
                "comment": g.get("comment", ""),
            }
            for g in groups
            if isinstance(g, dict)
        ]
    return [
        {
            "group": g.name,
            "policy": g.policy,
            "senders": list(g.senders),
            "comment": g.comment,
        }
        for g in predefined_groups(listener_type(doc, listener))
    ]


def group_table(group: dict[str, Any]) -> Any:
    """
    A C{[[listeners.X.hat]]} table for a sender group dictionary.
    """
    table = tomlkit.table()
    table["group"] = group["group"]
    table["policy"] = group["policy"]
    table["senders"] = _item(list(group["senders"]))
    if group.get("comment"):
        table["comment"] = group["comment"]
    return table


def ensure_hat(doc: ConfigDocument, listener: str) -> AoT:
    """
    The array of a listener's sender groups, written out first with the
    predefined groups if the file has none.
    """
    path = ("listeners", listener, "hat")
    if not doc.has(path):
        groups = hat_groups(doc, listener)
        array = doc.table_array(path)
        for group in groups:
            array.append(group_table(group))
    return doc.table_array(path)
