# -*- test-case-name: tests.test_cli_destconfig -*-
"""
Per-domain delivery controls: TLS, concurrency, limits (ESA destconfig).

C{esa-tls --config FILE destconfig} edits C{[destinations.*]} with the ESA
menus: NEW, EDIT, DELETE a domain's row; DEFAULT for the row that governs
every other domain; LIST and DETAIL to look; IMPORT and EXPORT of the whole
table; CLEAR; and SETUP for the global switch that sends an alert when TLS
fails for a domain that requires it (C{[alerts] tls_failure_alert}).

The TLS question of a domain row is the ESA's: C{Do you wish to apply a
specific TLS setting for this domain?}; answering no leaves the domain on
the default row's setting, yes offers the six settings (No, Preferred,
Required, Preferred (Verify), Required (Verify), Required - Verify Hosted
Domains).

The IMPORT/EXPORT file is INI-like, one section per domain, C{[DEFAULT]} for
the default row, keys and values as in the configuration file:

    [DEFAULT]
    tls = no
    max_host_concurrency = 500

    [example.com]
    tls = required-verify
    max_messages_per_connection = 50
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

from esa_tls.cli._document import ConfigDocument
from esa_tls.cli._policy import TLS_ENABLED_NOTE
from esa_tls.cli._prompt import BadAnswer, Prompter
from esa_tls.cli._session import EditSession, edit, fault_at, show_faults
from esa_tls.cli.main import CommandContext
from esa_tls.config.errors import KeyPath
from esa_tls.config.model import DEFAULT_ROW_TLS, DestinationControl, DestinationTLS
from esa_tls.durable import write_atomically

__all__ = ["TLS_CHOICES", "format_table", "parse_table", "run"]

#: The six TLS settings, in the ESA's menu order, with their labels.
TLS_CHOICES: tuple[tuple[str, str], ...] = (
    ("no", "No"),
    ("preferred", "Preferred"),
    ("required", "Required"),
    ("preferred-verify", "Preferred (Verify)"),
    ("required-verify", "Required (Verify)"),
    ("required-verify-hosted", "Required - Verify Hosted Domains"),
)
_LABELS = dict(TLS_CHOICES) | {"default": "Default"}
_KEYS = (
    "tls",
    "max_host_concurrency",
    "max_messages_per_connection",
    "recipient_limit",
    "recipient_minutes",
    "ca_file",
)
#: Keys of an ESA export (Table 24-9) with nothing to set here: each value
#: the gateway's behaviour already is, mapped to what is said about it;
#: any other value of theirs is refused, since ignoring it would change
#: what the administrator asked for.
_ESA_KEYS: dict[str, dict[str, str]] = {
    "limit_type": {
        "0": "limits apply to the whole domain",
        "host": "limits apply to the whole domain",
    },
    "limit_apply": {
        "0": "limits apply system-wide",
        "system": "limits apply system-wide",
    },
    "ip_sort_pref": {
        "prefer_v4": "IPv4 addresses are tried first",
        "prefer_v6": "not kept: IPv4 addresses are tried first, then IPv6",
    },
}
#: ESA keys for features the gateway does not have, taken and not kept.
_ESA_IGNORED = ("bounce_profile", "bounce_verification")
_DOMAIN = re.compile(
    r"\.?[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z"
)
_MODEL = DestinationControl("model")


def run(options: argparse.Namespace, context: CommandContext) -> int:
    """
    Run the destconfig dialog on the pending configuration.
    """
    return edit(context, lambda s, d, p: DestConfig(s, d, p).main())


class DestImportError(ValueError):
    """
    A destination controls file with faults: C{str()} lists them by line.
    """


def parse_table(text: str, notes: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """
    Read an IMPORT file into rows (C{"default"} for C{[DEFAULT]}).  Values
    are integers where they look like one, else strings; the loader judges
    them.

    An ESA export's keys that have nothing to set here (C{limit_type},
    C{limit_apply}, C{ip_sort_pref}, C{bounce_profile},
    C{bounce_verification}) are taken when their value is what the gateway
    does anyway, and refused otherwise (limits per MX IP, per Virtual
    Gateway, IPv6 or IPv4 only), so that an ESA table imports without
    anything it asks for being silently dropped.

    @param notes: receives one line per ESA key taken but not kept.
    @raise DestImportError: a line that is not a section, C{key = value},
        comment or blank, a key given outside a section, or an ESA key
        whose value the gateway cannot honour.
    """
    rows: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    faults = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip()
            key = "default" if name.upper() == "DEFAULT" else name.lower()
            if key in rows:
                faults.append(f"line {number}: [{name}] is given twice")
            current = rows.setdefault(key, {})
            continue
        key, equals, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not equals or not key:
            faults.append(f"line {number}: expected [DOMAIN] or key = value")
            continue
        if current is None:
            faults.append(f"line {number}: {key} is outside any [DOMAIN] section")
            continue
        if key in _ESA_KEYS or key in _ESA_IGNORED:
            said = _esa_key(number, key, value.strip("\"'"), faults)
            if said is not None and notes is not None:
                notes.append(f"line {number}: {key} = {value}: {said}")
            continue
        if key not in _KEYS:
            faults.append(f"line {number}: unknown key {key!r} (one of {', '.join(_KEYS)})")
            continue
        if key in current:
            # As TOML says: a second value is a mistake, not an override
            # (tls = required, then tls = no, must not import as no).
            faults.append(f"line {number}: {key} is given twice in [{name}]")
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        current[key] = int(value) if re.fullmatch(r"-?\d+", value) else value
    if faults:
        raise DestImportError("\n".join(faults))
    return rows


def _esa_key(number: int, key: str, value: str, faults: list[str]) -> str | None:
    """
    What an ESA export's C{key = value} means here, or C{None} after
    recording a fault for a value the gateway cannot honour.
    """
    if key in _ESA_IGNORED:
        return "not a feature of this gateway; not kept"
    meanings = _ESA_KEYS[key]
    said = meanings.get(value.lower())
    if said is None:
        faults.append(
            f"line {number}: {key} = {value} cannot be honoured here "
            f"(accepted: {', '.join(meanings)})"
        )
    return said


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """
    The EXPORT file of C{rows}; L{parse_table} reads it back.
    """
    out = ["# esa-tls destination controls ([DEFAULT] is the default row)"]
    for domain, values in rows.items():
        out.append("")
        out.append("[DEFAULT]" if domain == "default" else f"[{domain}]")
        for key in _KEYS:
            if key in values:
                out.append(f"{key} = {values[key]}")
    return "\n".join(out) + "\n"


class DestConfig:
    """
    The destconfig dialog over one document.
    """

    def __init__(self, session: EditSession, doc: ConfigDocument, prompter: Prompter) -> None:
        self.session = session
        self.doc = doc
        self.p = prompter
        self.check = session.value_check(doc)

    def domains(self) -> list[str]:
        """
        The rows of the file as written, the default row excepted.
        """
        return [d for d in self.doc.keys(("destinations",)) if d.lower() != "default"]

    def default_key(self) -> str:
        for key in self.doc.keys(("destinations",)):
            if key.lower() == "default":
                return key
        return "default"

    def row(self, key: str) -> dict[str, Any]:
        value = self.doc.get(("destinations", key), {})
        return dict(value) if isinstance(value, dict) else {}

    def effective(self, key: str) -> dict[str, Any]:
        row = self.row(key)
        values = {
            "tls": DEFAULT_ROW_TLS.value if key.lower() == "default" else "default",
            "max_host_concurrency": _MODEL.max_host_concurrency,
            "max_messages_per_connection": _MODEL.max_messages_per_connection,
            "recipient_limit": _MODEL.recipient_limit,
            "recipient_minutes": _MODEL.recipient_minutes,
            "ca_file": "",
        }
        values.update(row)
        values["tls"] = str(values["tls"]).lower()
        return values

    # Top level

    def main(self) -> None:
        p = self.p
        while True:
            count = len(self.domains()) + 1
            p.say(
                f"There {'is' if count == 1 else 'are'} currently {count} "
                f"{'entry' if count == 1 else 'entries'} configured."
            )
            op = p.operation(
                [
                    ("SETUP", "Change global settings."),
                    ("NEW", "Create a new entry."),
                    ("EDIT", "Modify an entry."),
                    ("DELETE", "Remove an entry."),
                    ("DEFAULT", "Change the default."),
                    ("LIST", "Display a summary list of all entries."),
                    ("DETAIL", "Display details for one destination or all entries."),
                    ("CLEAR", "Remove all entries."),
                    ("IMPORT", "Import tables from a file."),
                    ("EXPORT", "Export tables to a file."),
                ]
            )
            if op is None:
                return
            getattr(self, f"op_{op.lower()}")()

    def ask_domain(self, question: str) -> str:
        taken = {d.lower() for d in self.domains()} | {"default"}

        def check(answer: str) -> str:
            if not _DOMAIN.match(answer):
                raise BadAnswer(
                    f"{answer!r} is not a domain (example.com, or .example.com for its subdomains)."
                )
            if answer.lower() in taken:
                raise BadAnswer(f"{answer} already has an entry: use EDIT.")
            return answer.lower()

        return self.p.ask(question, check, None)

    def pick_domain(self, verb: str) -> str | None:
        domains = self.domains()
        if not domains:
            self.p.say("There are no domain entries (only the default).")
            return None
        index = self.p.pick(f"Enter the domain you wish to {verb}.", domains, listing=True)
        return None if index is None else domains[index]

    # Operations

    def op_new(self) -> None:
        domain = self.ask_domain("Enter the domain you wish to configure.")
        self.walk(domain, new=True)

    def op_edit(self) -> None:
        domain = self.pick_domain("edit")
        if domain is not None:
            self.walk(domain, new=False)

    def op_default(self) -> None:
        self.walk(self.default_key(), new=False)

    def op_delete(self) -> None:
        domain = self.pick_domain("delete")
        if domain is not None:
            self.doc.delete(("destinations", domain))
            self.p.say(f"Domain {domain} deleted.")

    def op_clear(self) -> None:
        if not self.p.yes_no(
            "Do you want to remove all domain entries? The default row is kept.", False
        ):
            return
        for domain in self.domains():
            self.doc.delete(("destinations", domain))
        self.p.say("All domain entries have been removed.")

    def op_setup(self) -> None:
        path = ("alerts", "tls_failure_alert")
        current = bool(self.doc.get(path, False))
        answer = self.p.yes_no(
            "Do you want to send an alert when TLS negotiation fails for a domain that "
            "requires TLS?",
            current,
        )
        if answer != current:
            self.doc.set(path, answer)
        if answer and not self.warning_recipients():
            self.p.say(
                "No alert recipient gets Warning alerts of the System type, so nobody will "
                "receive it: use 'alertconfig' to add one."
            )

    def warning_recipients(self) -> list[str]:
        recipients = self.doc.get(("alerts", "recipients"), [])
        out = []
        for r in recipients if isinstance(recipients, list) else []:
            if not isinstance(r, dict):
                continue
            # In any case, as the loader takes them ("Warning").
            severities = [
                str(s).lower() for s in r.get("severities", ["critical", "warning", "info"])
            ]
            types = [str(t).lower() for t in r.get("types", ["system", "hardware", "updater"])]
            if "warning" in severities and "system" in types:
                out.append(str(r.get("address")))
        return out

    def walk(self, key: str, *, new: bool) -> None:
        """
        Ask every setting of one row, the current values as defaults, and
        write the answers that differ from what is in force.
        """
        p = self.p
        is_default = key.lower() == "default"
        shown = "the default" if is_default else f'"{key}"'
        path: KeyPath = ("destinations", key)
        current = self.effective(key)
        row = self.row(key)
        answers: dict[str, Any] = {}

        if p.yes_no(
            f"Do you wish to configure a concurrency limit for {shown}?",
            new or "max_host_concurrency" in row or is_default,
        ):
            answers["max_host_concurrency"] = p.integer(
                f"Enter the max concurrency limit for {shown}.",
                current["max_host_concurrency"],
                1,
            )
        else:
            answers["max_host_concurrency"] = None
        if p.yes_no(
            f"Do you wish to apply a messages-per-connection limit to {shown}?",
            "max_messages_per_connection" in row,
        ):
            answers["max_messages_per_connection"] = p.integer(
                f"Enter the max messages per connection for {shown}.",
                current["max_messages_per_connection"],
                1,
            )
        else:
            answers["max_messages_per_connection"] = None
        if p.yes_no(
            f"Do you wish to apply a recipient limit to {shown}?",
            bool(current["recipient_limit"]),
        ):
            minutes = p.integer(
                "Enter the number of minutes used to measure the recipient limit.",
                current["recipient_minutes"],
                1,
                60,
            )
            answers["recipient_minutes"] = minutes
            answers["recipient_limit"] = p.integer(
                f"Enter the max number of recipients per {minutes} minutes for {shown}.",
                current["recipient_limit"] or None,
                1,
            )
        else:
            answers["recipient_limit"] = None
            answers["recipient_minutes"] = None

        tls = current["tls"]
        values = [v for v, _ in TLS_CHOICES]
        specific = True
        if not is_default:
            specific = p.yes_no(
                "Do you wish to apply a specific TLS setting for this domain?", tls != "default"
            )
        if specific:
            # A row that inherits is offered the setting it runs with now,
            # the default row's: Enter must not turn it into No, which
            # would send its mail in the clear.
            offered = tls if tls in values else self.effective(self.default_key())["tls"]
            index = p.choose(
                "Do you want to use TLS support?",
                [label for _, label in TLS_CHOICES],
                values.index(offered) if offered in values else values.index(DEFAULT_ROW_TLS.value),
            )
            answers["tls"] = values[index]
            if index:
                p.say(TLS_ENABLED_NOTE)
            if DestinationTLS(values[index]).verifies:
                self.ask_ca_file(path, current, answers)
            else:
                answers["ca_file"] = None
        else:
            answers["tls"] = None
            answers["ca_file"] = None

        table = None
        for name, value in answers.items():
            if value is None:
                if name in row:
                    self.doc.delete((*path, name))
            elif name not in row or row[name] != value or new:
                if table is None:
                    table = self.doc.table(path)
                table[name] = value
        if new and table is None:
            self.doc.table(path)
        self.p.say()
        self.detail(key)

    def ask_ca_file(self, path: KeyPath, current: dict[str, Any], answers: dict[str, Any]) -> None:
        p = self.p
        if not p.yes_no(
            "Do you want to verify with your own CA certificates instead of the system's?",
            bool(current.get("ca_file")),
        ):
            answers["ca_file"] = None
            return

        def check(answer: str) -> str:
            if not answer:
                raise BadAnswer("Enter the name of a file.")
            full = os.path.abspath(answer)
            self.check((*path, "ca_file"), full)
            return full

        answers["ca_file"] = p.ask(
            "Enter the PEM file of the CA certificates to trust.",
            check,
            current.get("ca_file") or None,
        )

    def op_list(self) -> None:
        p = self.p
        p.say(f"{'Domain':<32} {'Concurrency':<12} {'Msgs/Conn':<10} {'Recipients':<16} TLS")
        for key in [*self.domains(), self.default_key()]:
            v = self.effective(key)
            limit = (
                f"{v['recipient_limit']}/{v['recipient_minutes']}min"
                if v["recipient_limit"]
                else "None"
            )
            name = "(Default)" if key.lower() == "default" else key
            p.say(
                f"{name:<32} {v['max_host_concurrency']:<12} "
                f"{v['max_messages_per_connection']:<10} {limit:<16} "
                f"{_LABELS.get(v['tls'], v['tls'])}"
            )

    def op_detail(self) -> None:
        domains = [*self.domains(), "default"]
        labels = [*self.domains(), "(Default)"]
        index = self.p.pick(
            "Enter the domain you wish to view, or ALL.", [*domains, "ALL"], labels=[*labels, "ALL"]
        )
        if index is None:
            return
        for key in domains if index == len(domains) else [domains[index]]:
            self.detail(self.default_key() if key == "default" else key)

    def detail(self, key: str) -> None:
        v = self.effective(key)
        p = self.p
        p.say("(Default)" if key.lower() == "default" else key)
        p.say(f"    Maximum concurrent connections: {v['max_host_concurrency']}")
        p.say(f"    Maximum messages per connection: {v['max_messages_per_connection']}")
        if v["recipient_limit"]:
            p.say(
                f"    Recipient limit: {v['recipient_limit']} per {v['recipient_minutes']} minutes"
            )
        else:
            p.say("    Recipient limit: None")
        tls = v["tls"]
        if tls == "default":
            inherited = self.effective(self.default_key())["tls"]
            p.say(f"    TLS: Default ({_LABELS.get(inherited, inherited)})")
        else:
            p.say(f"    TLS: {_LABELS.get(tls, tls)}")
        if v.get("ca_file"):
            p.say(f"    CA certificates: {v['ca_file']}")
        elif tls == "default":
            # Delivery takes the Default row's CA file with its setting.
            inherited_ca = self.effective(self.default_key()).get("ca_file")
            if inherited_ca:
                p.say(f"    CA certificates: Default ({inherited_ca})")

    def op_export(self) -> None:
        p = self.p
        path = p.text("Enter a name for the exported file.", required=False)
        if not path:
            return
        if os.path.exists(path) and not p.yes_no(f"{path} exists. Overwrite it?", False):
            return
        rows = {"default": self.row(self.default_key())}
        for domain in self.domains():
            rows[domain] = self.row(domain)
        try:
            write_atomically(path, format_table(rows).encode("utf-8"))
        except OSError as e:
            p.say(f"Cannot write {path}: {e.strerror}")
            return
        p.say(f"Exported {len(rows)} entries to {path}.")

    def op_import(self) -> None:
        p = self.p
        path = p.text("Enter the name of the file to import.", required=False)
        if not path:
            return
        notes: list[str] = []
        try:
            with open(path, encoding="utf-8") as f:
                rows = parse_table(f.read(), notes)
        except (OSError, UnicodeDecodeError) as e:
            p.say(f"Cannot read {path}: {getattr(e, 'strerror', None) or e}")
            return
        except DestImportError as e:
            p.say(f"{path} was not imported:")
            for line in str(e).splitlines():
                p.say(f"  {line}")
            return
        copy = ConfigDocument(self.doc.text())
        copy.delete(("destinations",))
        for domain, values in rows.items():
            table = copy.table(("destinations", domain))
            for key, value in values.items():
                table[key] = value
        _, faults = self.session.check(copy.text())
        mine = tuple(f for f in faults if fault_at((f,), ("destinations",)) is not None)
        if mine:
            show_faults(p, mine, f"{path} was not imported:")
            return
        self.doc.doc = copy.doc
        p.say(f"Imported {len(rows)} entries from {path}; they replace the previous table.")
        for note in notes:
            p.say(f"  {note}")
