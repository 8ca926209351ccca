# -*- test-case-name: tests.test_cli_listenerconfig -*-
"""
Create, edit and delete listeners, their HAT, RAT and limits (ESA listenerconfig).

C{esa-tls --config FILE listenerconfig} asks the ESA's questions and changes
the pending configuration; C{commit} applies the changes.  The menus:

  - NEW, EDIT, DELETE a listener; SETUP the global listener settings
    (C{[listener_settings]}).
  - EDIT > a listener > NAME, INTERFACE (interface, protocol, port),
    LIMITS (max concurrency, TCP queue), HOSTACCESS (sender groups and mail
    flow policies: NEW, EDIT, DELETE, MOVE, DEFAULT, PRINT, IMPORT, EXPORT,
    CLEAR), RCPTACCESS (the Recipient Access Table of a public listener),
    CERTIFICATE.

After each change to a listener its summary is printed, in the seed's
format.  An empty answer at a menu goes back one level; at the top it ends
the command.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from typing import Any

from esa_tls.cli._document import (
    ConfigDocument,
    ensure_hat,
    group_table,
    hat_groups,
    listener_type,
    policy_names,
    policy_settings,
)
from esa_tls.cli._hatfile import (
    HATGroup,
    HATPolicy,
    HATSyntaxError,
    format_hat,
    parse_hat,
)
from esa_tls.cli._policy import default_policy_lines, edit_default_policy, edit_named_policy
from esa_tls.cli._prompt import BadAnswer, Prompter
from esa_tls.cli._session import EditSession, edit, fault_at, show_faults
from esa_tls.cli.main import CommandContext
from esa_tls.config.errors import KeyPath
from esa_tls.config.load import DEFAULT_POLICY, MAX_LISTENER_CONCURRENCY, MAX_TCP_QUEUE
from esa_tls.config.model import ListenerType
from esa_tls.durable import write_atomically
from esa_tls.hat.predefined import predefined_groups, predefined_policies
from esa_tls.hat.syntax import SenderSyntaxError, parse_sender
from esa_tls.summary import listener_summary

_NAME = re.compile(r"[!-~]+\Z")

#: What the HAT text (PRINT, EXPORT, IMPORT) puts around sender group and
#: policy names: a name holding one would be exported in a form that does
#: not import (C{x#y:} reads as C{x} and a comment).
_HAT_RESERVED = ",#$(){}:"

_RAT_HELP = (
    'Enter the recipients to accept mail for. Hostnames such as "example.com" are '
    'allowed. Partial hostnames such as ".example.com" are allowed. Usernames such as '
    '"postmaster@" are allowed. Full email addresses such as "joe@example.com" are '
    "allowed. Separate multiple entries with commas."
)
_HOSTS_HELP = (
    "Enter the hosts to add. CIDR addresses such as 10.1.1.0/24 are allowed. IP address "
    "ranges such as 10.1.1.10-20 are allowed. IP subnets such as 10.2.3. are allowed. "
    "Hostnames such as crm.example.com are allowed. Partial hostnames such as "
    ".example.com are allowed. DNS lists such as dnslist[query.blocklist.example] are "
    "allowed. Separate multiple hosts with commas."
)


def run(options: argparse.Namespace, context: CommandContext) -> int:
    """
    Run the listenerconfig dialog on the pending configuration.
    """
    return edit(context, lambda s, d, p: ListenerConfig(s, d, p).main())


def _split(answer: str) -> list[str]:
    return [part.strip() for part in answer.split(",") if part.strip()]


def _plural(count: int, word: str, words: str | None = None) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {words or word + 's'}"


class ListenerConfig:
    """
    The listenerconfig dialog over one document.
    """

    def __init__(self, session: EditSession, doc: ConfigDocument, prompter: Prompter) -> None:
        self.session = session
        self.doc = doc
        self.p = prompter
        self.check = session.value_check(doc)

    # Helpers

    def checked(self, path: KeyPath, convert: Callable[[str], Any]) -> Callable[[str], Any]:
        """
        An answer check: convert the answer, then let the loader judge the
        value at C{path}.
        """

        def check(answer: str) -> Any:
            value = convert(answer)
            self.check(path, value)
            return value

        return check

    def listeners(self) -> list[str]:
        return self.doc.keys(("listeners",))

    def interfaces(self) -> list[str]:
        return self.doc.keys(("interfaces",))

    def describe(self, name: str) -> str:
        get = self.doc.get
        interface = str(get(("listeners", name, "interface"), ""))
        address = get(("interfaces", interface, "address"), "?")
        protocol = get(("listeners", name, "protocol"), "SMTP")
        port = get(("listeners", name, "port"), "?")
        kind = str(get(("listeners", name, "type"), "public")).capitalize()
        return f"{name} (on {interface}, {address}) {protocol} TCP Port {port} {kind}"

    def summary(self, name: str) -> None:
        """
        Print the listener's summary in the seed's format, or what keeps it
        from being valid.
        """
        config, faults = self.session.check(self.doc.text())
        if config is not None and name in config.listeners:
            self.p.say(listener_summary(config.listeners[name], config))
            return
        mine = tuple(f for f in faults if fault_at((f,), ("listeners", name)) is not None)
        show_faults(self.p, mine or faults, f"Listener {name} has problems:")

    def new_name(
        self,
        question: str,
        taken: list[str],
        current: str | None = None,
        *,
        convert: Callable[[str], str] | None = None,
    ) -> str:
        """
        Ask for a name that is not taken.

        @param convert: turns the answer into the name before it is
            checked (a policy's C{$} dropped), so the name checked is the
            name used.
        """

        def check(answer: str) -> str:
            if current is not None and answer == current:
                return answer  # Enter keeps the name, even one made by 'set'
            if convert is not None:
                answer = convert(answer)
            if not _NAME.match(answer):
                raise BadAnswer("A name is printable ASCII without spaces.")
            if answer in taken and answer != current:
                raise BadAnswer(f"The name {answer} is already in use.")
            return answer

        return self.p.ask(question, check, current)

    # Top level

    def main(self) -> None:
        while True:
            names = self.listeners()
            if names:
                self.p.say("Currently configured listeners:")
                for number, name in enumerate(names, start=1):
                    self.p.say(f"{number}. {self.describe(name)}")
            else:
                self.p.say("No listeners are configured.")
            op = self.p.operation(
                [
                    ("NEW", "Create a new listener."),
                    ("EDIT", "Modify a listener."),
                    ("DELETE", "Remove a listener."),
                    ("SETUP", "Change global settings."),
                ]
            )
            if op is None:
                return
            if op == "NEW":
                self.new_listener()
            elif op == "SETUP":
                self.setup()
            elif names:
                index = self.p.pick(
                    f"Enter the name or number of the listener you wish to {op.lower()}.",
                    names,
                    listing=False,
                )
                if index is None:
                    continue
                if op == "EDIT":
                    self.edit_listener(names[index])
                else:
                    self.delete_listener(names[index])

    def new_listener(self) -> None:
        p = self.p
        interfaces = self.interfaces()
        if not interfaces:
            p.say(
                "No IP interface is defined: add one first, e.g. "
                "esa-tls --config FILE set interfaces.PublicNet.address 192.168.2.1/24"
            )
            return
        kind = p.choose(
            "Please select the type of listener you want to create.", ["Private", "Public"], 1
        )
        name = self.new_name(
            'Please create a name for this listener (Ex: "InboundMail"):', self.listeners()
        )
        path = ("listeners", name)
        self.doc.set((*path, "type"), "public" if kind == 1 else "private")
        self.ask_interface(name, new=True)
        if kind == 1:
            rat = p.ask(_RAT_HELP, self.checked((*path, "rat"), self.rat_entries), None)
            self.doc.set((*path, "rat"), rat)
        else:
            relay = p.text(
                "Please specify the systems allowed to relay email through this listener. "
                "IP addresses, ranges, CIDR blocks and hostnames are allowed. Separate "
                "multiple entries with commas.",
                check=lambda a: a,
                required=False,
            )
            if relay:
                senders = self.senders(relay)
                array = ensure_hat(self.doc, name)
                array[0]["senders"] = senders
        p.say()
        self.summary(name)

    def delete_listener(self, name: str) -> None:
        if len(self.listeners()) == 1:
            self.p.say("The last listener cannot be deleted: the gateway needs one.")
            return
        self.doc.delete(("listeners", name))
        self.p.say(f"Listener {name} deleted.")

    def setup(self) -> None:
        p = self.p
        base = ("listener_settings",)
        get = self.doc.get

        def seconds(key: str, question: str, default: float) -> None:
            current = get((*base, key), default)
            shown = str(int(current)) if float(current).is_integer() else str(current)

            def convert(answer: str) -> int | float:
                try:
                    value = float(answer)
                except ValueError:
                    raise BadAnswer("Enter a number of seconds.") from None
                return int(value) if value.is_integer() else value

            value = p.ask(question, self.checked((*base, key), convert), shown)
            if value != current:
                self.doc.set((*base, key), value)

        seconds(
            "unsuccessful_timeout",
            "Enter the timeout in seconds for unsuccessful inbound connections "
            "(commands without a message).",
            300,
        )
        seconds(
            "total_time_limit",
            "Enter the total time limit in seconds for inbound connections.",
            900,
        )
        seconds("idle_timeout", "Enter the idle timeout in seconds for inbound connections.", 300)
        limit = get((*base, "bad_command_limit"), 5)
        value = p.integer(
            "Enter the number of bad SMTP commands after which a connection is closed.", limit, 1
        )
        if value != limit:
            self.doc.set((*base, "bad_command_limit"), value)
        reject = bool(get((*base, "reject_at_rcpt"), False))
        answer = p.yes_no(
            "By default HAT rejected connections will be closed with a banner message at the "
            "start of the SMTP conversation. Would you like to do the rejection at the message "
            "recipient level instead for more detailed logging of rejected mail?",
            reject,
        )
        if answer != reject:
            self.doc.set((*base, "reject_at_rcpt"), answer)

    # One listener

    def edit_listener(self, name: str) -> None:
        while True:
            self.summary(name)
            op = self.p.operation(
                [
                    ("NAME", "Change the name of the listener."),
                    ("INTERFACE", "Change the interface, protocol and port."),
                    ("LIMITS", "Change the injection limits."),
                    ("HOSTACCESS", "Modify the Host Access Table."),
                    ("RCPTACCESS", "Modify the Recipient Access Table."),
                    ("CERTIFICATE", "Choose the certificate."),
                ]
            )
            if op is None:
                return
            if op == "NAME":
                new = self.new_name(
                    "Please enter the new name for this listener.", self.listeners(), name
                )
                if new != name:
                    self.doc.rename(("listeners", name), new)
                    name = new
            elif op == "INTERFACE":
                self.ask_interface(name, new=False)
            elif op == "LIMITS":
                self.limits(name)
            elif op == "HOSTACCESS":
                HostAccess(self, name).main()
            elif op == "RCPTACCESS":
                if listener_type(self.doc, name) is ListenerType.PRIVATE:
                    self.p.say(
                        "Private listeners have no Recipient Access Table: "
                        "RELAY policies decide who may send through them."
                    )
                else:
                    RecipientAccess(self, name).main()
            elif op == "CERTIFICATE":
                self.certificate(name)

    def ask_interface(self, name: str, *, new: bool) -> None:
        p = self.p
        path = ("listeners", name)
        interfaces = self.interfaces()
        current = str(self.doc.get((*path, "interface"), interfaces[0] if interfaces else ""))
        labels = [f"{n} ({self.doc.get(('interfaces', n, 'address'), '?')})" for n in interfaces]
        index = p.choose(
            "Please choose an IP interface for this Listener.",
            labels,
            interfaces.index(current) if current in interfaces else 0,
        )
        self.doc.set((*path, "interface"), interfaces[index])
        protocols = ["SMTP", "SMTPS"]
        protocol = str(self.doc.get((*path, "protocol"), "SMTP")).upper()
        chosen = p.choose(
            "Choose a protocol.",
            ["SMTP", "SMTPS (TLS from the first byte, RFC 8314)"],
            protocols.index(protocol) if protocol in protocols else 0,
        )
        if not new or chosen:
            self.doc.set((*path, "protocol"), protocols[chosen])
        default_port = 465 if chosen else 25
        port = p.ask(
            "Please enter the TCP port for this listener.",
            self.checked((*path, "port"), self.port_number),
            str(self.doc.get((*path, "port"), default_port)),
        )
        self.doc.set((*path, "port"), port)

    @staticmethod
    def port_number(answer: str) -> int:
        # ASCII digits, few of them: int() refuses "\u00b2" (a digit to
        # str.isdigit) and numbers of thousands of digits; the loader
        # judges the range.
        if not (answer.isascii() and answer.isdigit()) or len(answer) > 9:
            raise BadAnswer("Enter a port number from 1 to 65535.")
        return int(answer)

    def limits(self, name: str) -> None:
        path = ("listeners", name)
        for key, question, default, maximum in (
            (
                "max_concurrency",
                "Enter the maximum number of concurrent connections.",
                1000,
                MAX_LISTENER_CONCURRENCY,
            ),
            (
                "tcp_queue",
                "Enter the maximum number of TCP connections to queue (the listen backlog).",
                50,
                MAX_TCP_QUEUE,
            ),
        ):
            current = self.doc.get((*path, key), default)
            value = self.p.integer(question, current, 1, maximum)
            if value != current:
                self.doc.set((*path, key), value)

    def certificate(self, name: str) -> None:
        path = ("listeners", name, "certificate")
        names = ["Demo", *[n for n in self.doc.keys(("certificates",)) if n != "Demo"]]
        current = str(self.doc.get(path, "Demo"))
        labels = [
            n + (" (insecure demonstration certificate)" if n == "Demo" else "") for n in names
        ]
        index = self.p.choose(
            "Choose the certificate to use for this listener.",
            labels,
            names.index(current) if current in names else 0,
        )
        if names[index] != current:
            self.doc.set(path, names[index])
        if names[index] == "Demo":
            self.p.say(
                "The Demo certificate is not secure: peers cannot verify it. "
                "Use 'certconfig' to import or create a real one."
            )

    # Parsing answers

    @staticmethod
    def rat_entries(answer: str) -> list[str]:
        entries = _split(answer)
        if not entries:
            raise BadAnswer("Enter at least one recipient.")
        return entries

    @classmethod
    def some_senders(cls, answer: str) -> list[str]:
        senders = cls.senders(answer)
        if not senders:
            raise BadAnswer("Enter at least one host.")
        return senders

    @staticmethod
    def senders(answer: str) -> list[str]:
        entries = _split(answer)
        for entry in entries:
            try:
                parse_sender(entry)
            except SenderSyntaxError as e:
                raise BadAnswer(str(e)) from None
        return entries


_ALL_STAYS = "The ALL sender group is always present, last: edit it to change its policy."


def _hat_name(what: str) -> Callable[[str], str]:
    """
    A name check for L{ListenerConfig.new_name}: refuse the characters of
    L{_HAT_RESERVED}, so that the table still exports and imports.
    """

    def check(answer: str) -> str:
        if any(c in _HAT_RESERVED for c in answer):
            raise BadAnswer(
                f"A {what} name cannot contain any of {' '.join(_HAT_RESERVED)} "
                "(the HAT text format uses them)."
            )
        return answer

    return check


class HostAccess:
    """
    HOSTACCESS: a listener's sender groups and mail flow policies.
    """

    def __init__(self, owner: ListenerConfig, listener: str) -> None:
        self.owner = owner
        self.doc = owner.doc
        self.p = owner.p
        self.listener = listener
        self.path: KeyPath = ("listeners", listener)

    def groups(self) -> list[dict[str, Any]]:
        return hat_groups(self.doc, self.listener)

    def policies(self) -> list[str]:
        return policy_names(self.doc, self.listener)

    def main(self) -> None:
        p = self.p
        while True:
            p.say()
            for line in default_policy_lines(self.doc, self.listener):
                p.say(line)
            p.say()
            p.say(
                f"There are currently {_plural(len(self.policies()), 'policy', 'policies')} defined."
            )
            p.say(f"There are currently {_plural(len(self.groups()), 'sender group')}.")
            op = p.operation(
                [
                    ("NEW", "Create a new entry."),
                    ("EDIT", "Modify an entry."),
                    ("DELETE", "Remove an entry."),
                    ("MOVE", "Move an entry."),
                    ("DEFAULT", "Set the defaults."),
                    ("PRINT", "Display the table."),
                    ("IMPORT", "Import a table from a file."),
                    ("EXPORT", "Export the table to a file."),
                    ("CLEAR", "Remove all entries."),
                ]
            )
            if op is None:
                return
            getattr(self, f"op_{op.lower()}")()

    # Operations

    def op_new(self) -> None:
        if self.p.choose("", ["New Sender Group", "New Policy"], 0) == 0:
            self.new_group()
        else:
            # "$TRUSTED" is how the HAT writes TRUSTED: the name without
            # its "$" is the one that must be free.
            name = self.owner.new_name(
                "Enter the name for this mail flow policy.",
                [*self.policies(), DEFAULT_POLICY],
                convert=lambda answer: _hat_name("policy")(answer.removeprefix("$")),
            )
            edit_named_policy(self.doc, self.listener, name, self.p, self.owner.check, new=True)

    def new_group(self) -> None:
        p = self.p
        groups = self.groups()
        name = self.owner.new_name(
            "Enter a name for this sender group.",
            [g["group"] for g in groups],
            convert=_hat_name("sender group"),
        )
        senders = p.ask(_HOSTS_HELP, self.owner.some_senders, None)
        policy = self.choose_policy("ACCEPTED")
        comment = p.text("Enter a comment for this sender group.", required=False)
        array = ensure_hat(self.doc, self.listener)
        position = len(array)
        if position and array[position - 1].get("group") == "ALL":
            position -= 1
        array.insert(
            position,
            group_table({"group": name, "policy": policy, "senders": senders, "comment": comment}),
        )
        p.say(f"Sender group {name} added at position {position + 1}.")

    def choose_policy(self, current: str) -> str:
        names = self.policies()
        labels = [
            f"{n} ({str(policy_settings(self.doc, self.listener, n).get('rule', '?')).upper()})"
            for n in names
        ]
        index = self.p.choose(
            "Select a mail flow policy for this sender group.",
            labels,
            names.index(current) if current in names else 0,
        )
        return names[index]

    def pick_group(self, verb: str) -> int | None:
        groups = self.groups()
        labels = [
            f"{g['group']} ({g['policy']}): {', '.join(g['senders']) or '(no hosts)'}"
            for g in groups
        ]
        return self.p.pick(
            f"Enter the name or number of the sender group you wish to {verb}.",
            [g["group"] for g in groups],
            labels=labels,
        )

    def pick_policy(self, verb: str) -> str | None:
        names = self.policies()
        index = self.p.pick(
            f"Enter the name or number of the mail flow policy you wish to {verb}.", names
        )
        return None if index is None else names[index]

    def op_edit(self) -> None:
        if self.p.choose("", ["Edit Sender Group", "Edit Policy"], 0) == 0:
            index = self.pick_group("edit")
            if index is not None:
                self.edit_group(index)
        else:
            name = self.pick_policy("edit")
            if name is not None:
                edit_named_policy(
                    self.doc, self.listener, name, self.p, self.owner.check, new=False
                )

    def edit_group(self, index: int) -> None:
        p = self.p
        while True:
            group = self.groups()[index]
            p.say()
            p.say(
                f"Sender group {group['group']}: {', '.join(group['senders']) or '(no hosts)'}"
                f" -> ${group['policy']}" + (f" ({group['comment']})" if group["comment"] else "")
            )
            operations = [
                ("NEW", "Add hosts to this sender group."),
                ("DELETE", "Remove a host from this sender group."),
                ("POLICY", "Change the mail flow policy of this sender group."),
                ("RENAME", "Rename this sender group."),
                ("COMMENT", "Change the comment of this sender group."),
            ]
            if group["group"] == "ALL":
                # Every host, by that name, as on the ESA: only its policy
                # and comment change.
                operations = [o for o in operations if o[0] in ("POLICY", "COMMENT")]
            op = p.operation(operations)
            if op is None:
                return
            table = ensure_hat(self.doc, self.listener)[index]
            if op == "NEW":
                added = p.ask(_HOSTS_HELP, self.owner.some_senders, None)
                senders = list(group["senders"])
                senders += [s for s in added if s not in senders]
                table["senders"] = senders
            elif op == "DELETE":
                if not group["senders"]:
                    p.say("This sender group has no hosts.")
                    continue
                host = p.pick("Enter the number of the host you wish to remove.", group["senders"])
                if host is not None:
                    table["senders"] = [s for i, s in enumerate(group["senders"]) if i != host]
            elif op == "POLICY":
                table["policy"] = self.choose_policy(group["policy"])
            elif op == "RENAME":
                others = [g["group"] for g in self.groups()]
                table["group"] = self.owner.new_name(
                    "Enter the new name for this sender group.",
                    others,
                    group["group"],
                    convert=_hat_name("sender group"),
                )
            elif op == "COMMENT":
                comment = p.text(
                    "Enter a comment for this sender group.",
                    group["comment"] or None,
                    required=False,
                )
                if comment:
                    table["comment"] = comment
                elif "comment" in table:
                    del table["comment"]

    def op_delete(self) -> None:
        p = self.p
        if p.choose("", ["Delete Sender Group", "Delete Policy"], 0) == 0:
            index = self.pick_group("delete")
            if index is not None:
                array = ensure_hat(self.doc, self.listener)
                name = array[index].get("group")
                if name == "ALL":
                    # The ESA's ALL group is always there: without it a
                    # host no group matches would meet the closed fallback.
                    p.say(_ALL_STAYS)
                    return
                del array[index]
                p.say(f"Sender group {name} deleted.")
            return
        name = self.pick_policy("delete")
        if name is None:
            return
        users = [g["group"] for g in self.groups() if g["policy"] == name]
        if users:
            p.say(
                f"Policy {name} is used by sender group(s) {', '.join(users)}: "
                "give them another policy first."
            )
            return
        predefined = name in predefined_policies(listener_type(self.doc, self.listener))
        self.doc.delete((*self.path, "policies", name))
        if predefined:
            p.say(f"{name} is a predefined policy: its settings are back to the ESA values.")
        else:
            p.say(f"Policy {name} deleted.")

    def op_move(self) -> None:
        index = self.pick_group("move")
        if index is None:
            return
        groups = self.groups()
        if groups[index]["group"] == "ALL":
            self.p.say(_ALL_STAYS)
            return
        # ALL matches every host: a group placed after it would never match.
        count = len(groups) - (1 if groups[-1]["group"] == "ALL" else 0)
        target = self.p.integer(
            f"Enter the new position of this sender group (1-{count}).", index + 1, 1, count
        )
        array = ensure_hat(self.doc, self.listener)
        table = array[index]
        values = {
            "group": table.get("group"),
            "policy": table.get("policy"),
            "senders": list(table.get("senders", [])),
            "comment": table.get("comment", ""),
        }
        del array[index]
        array.insert(target - 1, group_table(values))

    def op_default(self) -> None:
        edit_default_policy(self.doc, self.listener, self.p, self.owner.check)

    def hat_text(self) -> str:
        policies = []
        for name in self.policies():
            settings = policy_settings(self.doc, self.listener, name)
            rule = str(settings.pop("rule", "ACCEPT")).upper()
            policies.append(HATPolicy(name, rule, tuple(settings.items())))
        groups = [
            HATGroup(g["group"], tuple(g["senders"]), g["policy"], g["comment"])
            for g in self.groups()
        ]
        return format_hat(policies, groups, f"Host Access Table of listener {self.listener}")

    def op_print(self) -> None:
        self.p.say(self.hat_text().rstrip("\n"))

    def op_import(self) -> None:
        p = self.p
        path = p.text("Enter the name of the file to import.", required=False)
        if not path:
            return
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            p.say(f"Cannot read {path}: {getattr(e, 'strerror', None) or e}")
            return
        try:
            parsed = parse_hat(text)
        except HATSyntaxError as e:
            p.say(f"{path} was not imported:")
            for line, message in e.faults:
                p.say(f"  line {line}: {message}")
            return
        copy = ConfigDocument(self.doc.text())
        replace_hat(copy, self.listener, parsed.policies, parsed.groups)
        _, faults = self.owner.session.check(copy.text())
        mine = tuple(f for f in faults if fault_at((f,), self.path) is not None)
        if mine:
            show_faults(p, mine, f"{path} was not imported:")
            return
        self.doc.doc = copy.doc
        p.say(
            f"Imported {_plural(len(parsed.policies), 'policy', 'policies')} "
            f"and {_plural(len(parsed.groups), 'sender group')} from {path}."
        )

    def op_export(self) -> None:
        p = self.p
        path = p.text("Enter a name for the exported file.", required=False)
        if not path:
            return
        if os.path.exists(path) and not p.yes_no(f"{path} exists. Overwrite it?", False):
            return
        try:
            write_atomically(path, self.hat_text().encode("utf-8"))
        except OSError as e:
            p.say(f"Cannot write {path}: {e.strerror}")
            return
        p.say(f"Exported the Host Access Table of {self.listener} to {path}.")

    def op_clear(self) -> None:
        kind = listener_type(self.doc, self.listener)
        (all_group,) = [g for g in predefined_groups(kind) if g.name == "ALL"]
        if not self.p.yes_no(
            "Do you want to remove all sender groups and mail flow policies? The ALL sender "
            f"group is kept, with policy {all_group.policy}.",
            False,
        ):
            return
        replace_hat(
            self.doc,
            self.listener,
            (),
            (HATGroup("ALL", ("ALL",), all_group.policy, all_group.comment),),
        )
        self.p.say("The Host Access Table has been cleared.")


def replace_hat(
    doc: ConfigDocument,
    listener: str,
    policies: tuple[HATPolicy, ...],
    groups: tuple[HATGroup, ...],
) -> None:
    """
    Replace a listener's named policies and sender groups (the Default
    Policy Parameters stay), as an ESA HAT import does.
    """
    base = ("listeners", listener)
    for name in doc.keys((*base, "policies")):
        if name != DEFAULT_POLICY:
            doc.delete((*base, "policies", name))
    for policy in policies:
        table = doc.table((*base, "policies", policy.name))
        table["rule"] = policy.rule
        for key, value in policy.parameters:
            table[key] = value
    doc.delete((*base, "hat"))
    array = doc.table_array((*base, "hat"))
    for group in groups:
        array.append(
            group_table(
                {
                    "group": group.name,
                    "policy": group.policy,
                    "senders": list(group.senders),
                    "comment": group.comment,
                }
            )
        )


class RecipientAccess:
    """
    RCPTACCESS: the Recipient Access Table of a public listener.
    """

    def __init__(self, owner: ListenerConfig, listener: str) -> None:
        self.owner = owner
        self.doc = owner.doc
        self.p = owner.p
        self.path: KeyPath = ("listeners", listener, "rat")

    def entries(self) -> list[str]:
        return [str(e) for e in self.doc.get(self.path, [])]

    def store(self, entries: list[str]) -> None:
        self.doc.set(self.path, entries)

    def checked(self, build: Callable[[list[str]], list[str]]) -> Callable[[str], list[str]]:
        """
        An answer check for entries: the loader judges the whole new table.
        """

        def check(answer: str) -> list[str]:
            entries = build(_split(answer))
            self.owner.check(self.path, entries)
            return entries

        return check

    def main(self) -> None:
        p = self.p
        while True:
            p.say()
            p.say("Recipient Access Table")
            count = len(self.entries())
            p.say(
                f"There {'is' if count == 1 else 'are'} currently "
                f"{_plural(count, 'entry', 'entries')}."
            )
            op = p.operation(
                [
                    ("NEW", "Create a new entry."),
                    ("EDIT", "Modify an entry."),
                    ("DELETE", "Remove an entry."),
                    ("PRINT", "Display all entries."),
                    ("IMPORT", "Import all entries from a file."),
                    ("EXPORT", "Export all entries to a file."),
                    ("CLEAR", "Remove all entries."),
                ]
            )
            if op is None:
                return
            entries = self.entries()
            if op == "NEW":
                self.new_entries(entries)
            elif op in ("EDIT", "DELETE"):
                self.change_entry(op, entries)
            elif op == "PRINT":
                for entry in entries:
                    p.say(f"{entry} ACCEPT")
            elif op == "IMPORT":
                self.import_file()
            elif op == "EXPORT":
                self.export_file(entries)
            elif op == "CLEAR":
                if p.yes_no("Do you want to remove all entries?", False):
                    self.store([])

    def new_entries(self, entries: list[str]) -> None:
        def added(new: list[str]) -> list[str]:
            if not new:
                raise BadAnswer("Enter at least one recipient.")
            return entries + [e for e in new if e not in entries]

        self.store(self.p.ask(_RAT_HELP, self.checked(added), None))

    def change_entry(self, op: str, entries: list[str]) -> None:
        p = self.p
        if not entries:
            p.say("The Recipient Access Table is empty.")
            return
        index = p.pick(f"Enter the number of the entry you wish to {op.lower()}.", entries)
        if index is None:
            return
        if op == "DELETE":
            self.store([e for i, e in enumerate(entries) if i != index])
            return

        def replaced(new: list[str]) -> list[str]:
            if len(new) != 1:
                raise BadAnswer("Enter one recipient.")
            return [new[0] if i == index else e for i, e in enumerate(entries)]

        self.store(p.ask("Enter the new recipient.", self.checked(replaced), entries[index]))

    def import_file(self) -> None:
        p = self.p
        path = p.text("Enter the name of the file to import.", required=False)
        if not path:
            return
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            p.say(f"Cannot read {path}: {getattr(e, 'strerror', None) or e}")
            return
        entries: list[str] = []
        for number, line in enumerate(lines, start=1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) > 2 or (len(words) == 2 and words[1].upper() != "ACCEPT"):
                p.say(
                    f"{path} was not imported: line {number}: expected 'RECIPIENT' or "
                    "'RECIPIENT ACCEPT' (this gateway's RAT only accepts)"
                )
                return
            if words[0] not in entries:
                entries.append(words[0])
        try:
            self.owner.check(self.path, entries)
        except BadAnswer as e:
            p.say(f"{path} was not imported: {e}")
            return
        self.store(entries)
        p.say(f"Imported {len(entries)} entries from {path}.")

    def export_file(self, entries: list[str]) -> None:
        p = self.p
        path = p.text("Enter a name for the exported file.", required=False)
        if not path:
            return
        if os.path.exists(path) and not p.yes_no(f"{path} exists. Overwrite it?", False):
            return
        text = "".join(f"{entry} ACCEPT\n" for entry in entries)
        try:
            write_atomically(path, text.encode("utf-8"))
        except OSError as e:
            p.say(f"Cannot write {path}: {e.strerror}")
            return
        p.say(f"Exported {len(entries)} entries to {path}.")
