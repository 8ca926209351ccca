# -*- test-case-name: tests.test_cli_destconfig -*-
"""
Who receives alerts, of which severities and types (ESA alertconfig).

C{esa-tls --config FILE alertconfig} edits C{[[alerts.recipients]]}: NEW,
EDIT, DELETE and LIST of addresses, each with the alert classes (System,
Hardware, Updater) and severities (Critical, Warning, Information) it gets.
The TLS-failure alert (C{destconfig} > SETUP) goes to every recipient of
Warning alerts of the System class, as on the ESA.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

import tomlkit

from esa_tls.cli._document import ConfigDocument
from esa_tls.cli._prompt import BadAnswer, Prompter
from esa_tls.cli._session import EditSession, edit
from esa_tls.cli.main import CommandContext

__all__ = ["run"]

_TYPES = (("system", "System"), ("hardware", "Hardware"), ("updater", "Updater"))
_SEVERITIES = (("critical", "Critical"), ("warning", "Warning"), ("info", "Information"))
_ADDRESS = re.compile(
    r"[!-?A-~]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+\Z"
)
_PATH = ("alerts", "recipients")


def run(options: argparse.Namespace, context: CommandContext) -> int:
    """
    Run the alertconfig dialog on the pending configuration.
    """
    return edit(context, lambda s, d, p: AlertConfig(s, d, p).main())


def _describe(chosen: list[str], choices: tuple[tuple[str, str], ...]) -> str:
    if set(chosen) == {value for value, _ in choices}:
        return "All"
    labels = dict(choices)
    return ", ".join(labels.get(c, c) for c in chosen)


class AlertConfig:
    """
    The alertconfig dialog over one document.
    """

    def __init__(self, session: EditSession, doc: ConfigDocument, prompter: Prompter) -> None:
        self.session = session
        self.doc = doc
        self.p = prompter

    def recipients(self) -> list[dict[str, Any]]:
        value = self.doc.get(_PATH, [])
        return [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []

    def show(self) -> None:
        p = self.p
        recipients = self.recipients()
        if not recipients:
            p.say("No alert recipients are configured.")
            return
        p.say("Sending alerts to:")
        for number, r in enumerate(recipients, start=1):
            types = list(r.get("types", [v for v, _ in _TYPES]))
            severities = list(r.get("severities", [v for v, _ in _SEVERITIES]))
            p.say(f"{number}. {r.get('address')}")
            p.say(
                f"   Class: {_describe(types, _TYPES)} - "
                f"Severities: {_describe(severities, _SEVERITIES)}"
            )

    def main(self) -> None:
        p = self.p
        while True:
            self.show()
            if self.doc.get(("alerts", "tls_failure_alert"), False):
                p.say(
                    "TLS failure alerts are on: they go to recipients of Warning alerts of "
                    "the System class."
                )
            op = p.operation(
                [
                    ("NEW", "Add a new email address to send alerts."),
                    ("EDIT", "Modify an email address."),
                    ("DELETE", "Remove an email address."),
                    ("LIST", "Display the alert recipients."),
                ]
            )
            if op is None:
                return
            if op == "NEW":
                self.new()
            elif op == "LIST":
                continue
            else:
                self.change(op)

    def ask_address(self, current: str | None) -> str:
        taken = {str(r.get("address", "")).lower() for r in self.recipients()}

        def check(answer: str) -> str:
            if not _ADDRESS.match(answer):
                raise BadAnswer(f"{answer!r} is not an email address.")
            if answer.lower() in taken and answer != current:
                raise BadAnswer(f"{answer} already receives alerts: use EDIT.")
            return answer

        return self.p.ask(
            'Please enter a new email address to send alerts.\n(Ex: "administrator@example.com")',
            check,
            current,
        )

    def ask_classes(self, current: dict[str, Any]) -> tuple[list[str], list[str]]:
        types = list(current.get("types", [v for v, _ in _TYPES]))
        severities = list(current.get("severities", [v for v, _ in _SEVERITIES]))
        chosen_types = self.ask_many(
            "Choose the Alert Class for this address (several may be given, separated by commas):",
            _TYPES,
            types,
        )
        chosen_severities = self.ask_many(
            "Select a Severity Level (several may be given, separated by commas):",
            _SEVERITIES,
            severities,
        )
        return chosen_types, chosen_severities

    def ask_many(
        self, question: str, choices: tuple[tuple[str, str], ...], current: list[str]
    ) -> list[str]:
        values = [v for v, _ in choices]
        # The loader takes "Warning" as well as "warning": so must the
        # default, or Enter would offer All and widen the recipient.
        current = [str(c).lower() for c in current]
        options = ["All", *[label for _, label in choices]]
        if set(current) == set(values):
            default = [0]
        else:
            default = [values.index(c) + 1 for c in current if c in values]
        indexes = self.p.choose_many(question, options, default or [0])
        if 0 in indexes:
            return values
        return [values[i - 1] for i in indexes]

    def new(self) -> None:
        address = self.ask_address(None)
        types, severities = self.ask_classes({})
        table = tomlkit.table()
        table["address"] = address
        table["severities"] = severities
        table["types"] = types
        self.doc.table_array(_PATH).append(table)
        self.p.say(f"{address} added.")

    def change(self, op: str) -> None:
        recipients = self.recipients()
        if not recipients:
            self.p.say("There are no alert recipients.")
            return
        addresses = [str(r.get("address")) for r in recipients]
        index = self.p.pick(
            f"Enter the address or number of the recipient you wish to {op.lower()}.",
            addresses,
        )
        if index is None:
            return
        array = self.doc.table_array(_PATH)
        if op == "DELETE":
            del array[index]
            self.p.say(f"{addresses[index]} removed.")
            return
        address = self.ask_address(addresses[index])
        types, severities = self.ask_classes(recipients[index])
        table = array[index]
        table["address"] = address
        table["severities"] = severities
        table["types"] = types
