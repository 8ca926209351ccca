"""
The project documents name things that exist: the modules C{docs/ARCHITECTURE.md}
maps, and the tests C{docs/SECURITY.md} gives as the proof of each
guarantee.  A reader who follows either to the code must find it.
"""

from __future__ import annotations

import ast
import os
import re

from twisted.trial.unittest import SynchronousTestCase

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(*path: str) -> str:
    with open(os.path.join(TOP, *path)) as f:
        return f.read()


def methods_of(path: str) -> dict[str, set[str]]:
    """
    The test classes of the module at C{path} and their methods, those
    inherited from classes of the same module included.
    """
    classes: dict[str, set[str]] = {}
    for node in ast.parse(read(path)).body:
        if isinstance(node, ast.ClassDef):
            methods = {
                n.name for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            }
            for base in node.bases:
                if isinstance(base, ast.Name):
                    methods |= classes.get(base.id, set())
            classes[node.name] = methods
    return classes


class ArchitectureTests(SynchronousTestCase):
    #: Packages the module table describes as a whole.
    WHOLE = ("alerts", "cli", "report")

    def test_everyModuleNamed(self) -> None:
        """
        Every module of C{esa_tls} is named in C{docs/ARCHITECTURE.md}: a
        top-level module by its file name, a module of a package by its
        path or its file name (the packages described as a whole aside).
        """
        text = read("docs", "ARCHITECTURE.md")
        unnamed = []
        package = os.path.join(TOP, "esa_tls")
        for directory, _, files in os.walk(package):
            relative = os.path.relpath(directory, package)
            if relative.split(os.sep)[0] in self.WHOLE or "__pycache__" in relative:
                continue
            for name in sorted(files):
                if not name.endswith(".py") or name == "__init__.py":
                    continue
                path = name if relative == "." else f"{relative}/{name}"
                named = re.search(rf"(?<![\w/]){re.escape(path)}\b", text) or (
                    relative != "." and re.search(rf"(?<![\w/]){re.escape(name)}\b", text)
                )
                if not named:
                    unnamed.append(path)
        self.assertEqual(unnamed, [])


class TestCaseNameTests(SynchronousTestCase):
    def test_everyTestCaseNameExists(self) -> None:
        """
        Each module's C{test-case-name} line (what C{trial --testmodule}
        and editors run for it) names test modules that exist.
        """
        missing = []
        for directory, _, files in os.walk(os.path.join(TOP, "esa_tls")):
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                path = os.path.join(directory, name)
                with open(path) as f:
                    first = f.readline()
                found = re.search(r"test-case-name:\s*([\w., ]+?)\s*-\*-", first)
                if found is None:
                    continue
                for test in found.group(1).split(","):
                    module = os.path.join(TOP, *test.strip().split("."))
                    if not (os.path.isfile(module + ".py") or os.path.isdir(module)):
                        missing.append(f"{os.path.relpath(path, TOP)}: {test.strip()}")
        self.assertEqual(missing, [])


class SecurityTests(SynchronousTestCase):
    def test_everyTestExists(self) -> None:
        """
        Every test C{docs/SECURITY.md} names exists: C{file::Class::test},
        C{file::Class}, and the C{::test} (or C{::Class}) shorthands that
        follow one, which name a method of the last class named, or a class
        of the last file.
        """
        text = read("docs", "SECURITY.md")
        missing = []
        module: str | None = None
        classes: dict[str, set[str]] = {}
        current: str | None = None
        for name in re.findall(r"`([^`\s]+)`", text):
            if name.startswith("tests/"):
                path, *parts = name.split("::")
                if os.path.isdir(os.path.join(TOP, path)):
                    module = None
                    continue
                if not os.path.exists(os.path.join(TOP, path)):
                    missing.append(name)
                    module = None
                    continue
                module, classes, current = path, methods_of(path), None
            elif name.startswith("::") and module is not None:
                parts = name[2:].split("::")
                if parts[0] in classes:
                    current = parts[0]
                    if len(parts) > 1 and parts[1] not in classes[current]:
                        missing.append(f"{module}{name}")
                    continue
                if current is None or parts[0] not in classes[current]:
                    missing.append(f"{module}::{current}{name}")
                continue
            else:
                continue
            if parts:
                current = parts[0]
                if current not in classes:
                    missing.append(name)
                    continue
                if len(parts) > 1 and parts[1] not in classes[current]:
                    missing.append(name)
        self.assertEqual(missing, [])


class AdministratorDocsTests(SynchronousTestCase):
    """
    What the README and C{docs/CLI.md} tell an administrator to type or
    copy works as written.
    """

    def test_everyCommandDocumented(self) -> None:
        """
        Every C{esa-tls} command (C{esa-tls --help}) is described in
        C{docs/CLI.md}, where the README sends administrators, in a heading
        or a list item of its own.
        """
        from esa_tls.cli.main import command_names

        text = read("docs", "CLI.md")
        described = set(re.findall(r"^\* `(\w+)", text, re.MULTILINE))
        for heading in re.findall(r"^#+ (.*)$", text, re.MULTILINE):
            for code in re.findall(r"`([^`]+)`", heading):
                described |= set(code.split())
        missing = [name for name in command_names() if name not in described]
        self.assertEqual(missing, [])

    def test_readmeConfigurationLoads(self) -> None:
        """
        The README's configuration example loads, without a fault or a
        warning.
        """
        from esa_tls.config.load import parse_config_with_warnings

        (block,) = re.findall(r"```toml\n(.*?)```", read("README.md"), re.DOTALL)
        result = parse_config_with_warnings(block, "README.md")
        self.assertEqual(result.warnings, ())
        self.assertEqual(list(result.config.listeners), ["Inboundmail"])
