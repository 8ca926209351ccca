# -*- test-case-name: tests.test_cli_listenerconfig -*-
"""
The mail flow policy dialogs of C{listenerconfig > EDIT > HOSTACCESS}:
C{DEFAULT} walks the Default Policy Parameters, C{NEW} and C{EDIT} walk a
named policy.

The Default Policy Parameters dialog asks the ESA's questions in the ESA's
words; its TLS question is the seed's, to the character, because ESA
administrators (and the Cisco documentation they follow) know it by heart.
A named policy inherits every parameter it does not set from the Default
Policy Parameters, so its dialog offers "default" for each one and shows
C{[default]>} when the policy inherits.

Answers change the document only where they differ from what is in force,
so walking a dialog with Enter everywhere changes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs

from esa_tls.addresslist import AddressList, AddressListError
from esa_tls.cli._document import ConfigDocument, ensure_policy, listener_type
from esa_tls.cli._prompt import BadAnswer, Prompter
from esa_tls.config.load import DEFAULT_POLICY
from esa_tls.config.model import POLICY_PARAMETER_KEYS, MailFlowPolicy
from esa_tls.hat.predefined import predefined_policies

__all__ = [
    "TLS_ENABLED_NOTE",
    "default_policy_lines",
    "edit_default_policy",
    "edit_named_policy",
    "format_size",
    "parse_size",
]

#: What the ESA says after TLS is switched on (the seed).
TLS_ENABLED_NOTE = (
    "You have chosen to enable TLS. Please use the 'certconfig' command to\n"
    "ensure that there is a valid certificate configured."
)

_TLS_VALUES = ("off", "preferred", "required")
_TLS_LABELS = ("No", "Preferred", "Required")
_AUTH_VALUES = ("disallow", "allow", "require")
_AUTH_LABELS = ("No", "Yes", "Required")
_RULES = ("ACCEPT", "REJECT", "TCPREFUSE", "RELAY", "CONTINUE")
_RULE_LABELS = ("Accept", "Reject", "TCP Refuse", "Relay", "Continue")

_K = 1024
_M = 1024 * 1024


def _toml_form(value: Any) -> Any:
    if hasattr(value, "value") and not isinstance(value, int | str):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


#: The Default Policy Parameters of a listener whose file sets none, as the
#: TOML values a file would hold.
MODEL_DEFAULTS: dict[str, Any] = {
    field.name: _toml_form(field.default)
    for field in attrs.fields(MailFlowPolicy)
    if field.name in POLICY_PARAMETER_KEYS
}


def parse_size(text: str) -> int:
    """
    A message size as the ESA takes it: bytes, or a number with a trailing
    C{k} (kibibytes) or C{M} (mebibytes).

    @raise ValueError: not a size.
    """
    text = text.strip()
    factor = 1
    if text[-1:] in ("k", "K"):
        factor, text = _K, text[:-1]
    elif text[-1:] in ("m", "M"):
        factor, text = _M, text[:-1]
    if not text.isdigit():
        raise ValueError(text)
    return int(text) * factor


def format_size(size: int) -> str:
    """
    A size the way the ESA shows it: C{10M}, C{512k} or bytes.
    """
    if size and size % _M == 0:
        return f"{size // _M}M"
    if size and size % _K == 0:
        return f"{size // _K}k"
    return str(size)


def _is_text(answer: str) -> str:
    if any(not (" " <= c <= "~") for c in answer):
        raise BadAnswer("Use printable ASCII on one line (the text is sent in SMTP replies).")
    return answer


def default_values(doc: ConfigDocument, listener: str) -> dict[str, Any]:
    """
    The Default Policy Parameters in force for a listener, as TOML values.
    """
    values = dict(MODEL_DEFAULTS)
    explicit = doc.get(("listeners", listener, "policies", DEFAULT_POLICY), {})
    if isinstance(explicit, dict):
        values.update(explicit)
    return values


def default_policy_lines(doc: ConfigDocument, listener: str) -> list[str]:
    """
    The summary of the Default Policy Parameters shown at the top of
    HOSTACCESS, in the ESA's words.
    """
    v = default_values(doc, listener)
    rate = v.get("max_rcpts_per_hour", -1)
    tls = str(v.get("tls", "off")).lower()
    auth = str(v.get("smtp_auth", "disallow")).lower()
    lines = [
        "Default Policy Parameters",
        "==========================",
        f"Maximum Message Size: {_show_size(v.get('max_message_size'))}",
        f"Maximum Number Of Concurrent Connections From A Single IP: {v.get('max_concurrency')}",
        f"Maximum Number Of Messages Per Connection: {v.get('max_msgs_per_session')}",
        f"Maximum Number Of Recipients Per Message: {v.get('max_rcpts_per_msg')}",
        f"Maximum Number Of Recipients Per Hour: {'Disabled' if rate == -1 else rate}",
        f"Allow TLS Connections: {dict(zip(_TLS_VALUES, _TLS_LABELS, strict=True)).get(tls, tls)}",
        f"Allow SMTP Authentication: {dict(zip(_AUTH_VALUES, _AUTH_LABELS, strict=True)).get(auth, auth)}",
    ]
    if v.get("override_hostname") is not None:
        lines.append(f"SMTP Banner Host Name: {v['override_hostname'] or '(none)'}")
    return lines


def _show_size(value: object) -> str:
    return format_size(value) if isinstance(value, int) else str(value)


class _Walk:
    """
    One policy dialog: collects the answers, then writes only what
    changed.

    @ivar current: the values in force before the dialog (TOML form).
    @ivar explicit: the parameters the policy sets itself.
    @ivar changes: parameter to new value, or C{None} to stop setting it.
    """

    def __init__(
        self,
        doc: ConfigDocument,
        listener: str,
        name: str,
        prompter: Prompter,
        check: Callable[[tuple[str | int, ...], Any], None],
    ) -> None:
        self.doc = doc
        self.listener = listener
        self.name = name
        self.prompter = prompter
        self._check = check
        self.path = ("listeners", listener, "policies", name)
        self.changes: dict[str, Any] = {}

    def check(self, key: str, value: Any) -> Any:
        """
        Refuse a value the configuration loader would refuse, with its
        reason.
        """
        self._check((*self.path, key), value)
        return value


def edit_default_policy(
    doc: ConfigDocument,
    listener: str,
    prompter: Prompter,
    check: Callable[[tuple[str | int, ...], Any], None],
) -> bool:
    """
    Walk the Default Policy Parameters (HOSTACCESS > DEFAULT).

    @param check: raises L{BadAnswer} when the loader refuses a value at a
        key path.
    @return: whether anything changed.
    """
    walk = _Walk(doc, listener, DEFAULT_POLICY, prompter, check)
    current = default_values(doc, listener)
    explicit = doc.get(walk.path, {})
    if not isinstance(explicit, dict):
        explicit = {}
    ch = walk.changes
    p = prompter

    def size(answer: str) -> int:
        try:
            value = parse_size(answer)
        except ValueError:
            raise BadAnswer(
                "Enter a size in bytes, or with a trailing k or M (e.g. 10M)."
            ) from None
        return int(walk.check("max_message_size", value))

    ch["max_message_size"] = p.ask(
        "Enter the default maximum message size. Add a trailing k for kilobytes, "
        "M for megabytes, or no letter for bytes.",
        size,
        format_size(current["max_message_size"]),
    )
    ch["max_concurrency"] = p.integer(
        "Enter the maximum number of concurrent connections allowed from a single IP address.",
        current["max_concurrency"],
        1,
    )
    ch["max_msgs_per_session"] = p.integer(
        "Enter the maximum number of messages per connection.",
        current["max_msgs_per_session"],
        1,
    )
    ch["max_rcpts_per_msg"] = p.integer(
        "Enter the maximum number of recipients per message.", current["max_rcpts_per_msg"], 1
    )

    hostname = current.get("override_hostname")
    if p.yes_no("Do you want to override the hostname in the SMTP banner?", hostname is not None):
        ch["override_hostname"] = p.ask(
            'Enter the hostname to use in the SMTP banner ("none" to show no hostname).',
            lambda a: walk.check("override_hostname", "" if a.lower() == "none" else a),
            (hostname or "none") if hostname is not None else None,
        )
    else:
        ch["override_hostname"] = None

    _response(
        walk,
        current,
        explicit,
        "Would you like to specify a custom SMTP acceptance response?",
        ("banner_code", "banner_text"),
        (200, 299),
        "220",
    )
    _response(
        walk,
        current,
        explicit,
        "Would you like to specify a custom SMTP rejection response?",
        ("reject_banner_code", "reject_banner_text"),
        (400, 599),
        "554",
    )

    rate = current["max_rcpts_per_hour"]
    if p.yes_no("Do you want to enable rate limiting per host?", rate != -1):
        ch["max_rcpts_per_hour"] = p.integer(
            "Enter the maximum number of recipients per hour from a remote host.",
            rate if rate != -1 else None,
            1,
        )
        _response(
            walk,
            current,
            explicit,
            "Would you like to specify a custom SMTP limit exceeded response?",
            ("max_rcpts_per_hour_code", "max_rcpts_per_hour_text"),
            (400, 599),
            "452",
        )
    else:
        ch["max_rcpts_per_hour"] = None

    tls = str(current.get("tls", "off")).lower()
    index = p.choose(
        "Do you want to allow encrypted TLS connections?",
        _TLS_LABELS,
        _TLS_VALUES.index(tls) if tls in _TLS_VALUES else 0,
    )
    ch["tls"] = _TLS_VALUES[index]
    if index:
        p.say(TLS_ENABLED_NOTE)
    if ch["tls"] == "preferred":
        _mandatory(walk, current)
    else:
        ch["tls_mandatory_senders"] = None
    if ch["tls"] != "off":
        _client_certificates(walk, current)
    else:
        ch["verify_client_certificate"] = None
        ch["client_ca"] = None

    auth = str(current.get("smtp_auth", "disallow")).lower()
    index = p.choose(
        "Would you like to allow SMTP Authentication?",
        _AUTH_LABELS,
        _AUTH_VALUES.index(auth) if auth in _AUTH_VALUES else 0,
    )
    ch["smtp_auth"] = _AUTH_VALUES[index]
    if index and ch["tls"] != "off":
        ch["smtp_auth_requires_tls"] = p.yes_no(
            "Require TLS to offer SMTP authentication?",
            bool(current.get("smtp_auth_requires_tls")),
        )
    else:
        ch["smtp_auth_requires_tls"] = None
    return _apply_default(walk, current, explicit)


def _apply_default(walk: _Walk, current: dict[str, Any], explicit: dict[str, Any]) -> bool:
    """
    For the Default Policy Parameters, a value equal to the model default
    and not in the file need not be written; one that goes back to the
    model default is written (the file said otherwise before).
    """
    writes: dict[str, Any] = {}
    for key, value in walk.changes.items():
        if value is None:
            if key in explicit:
                writes[key] = None
        elif value != current.get(key):
            writes[key] = value
    if not writes:
        return False
    table = ensure_policy(walk.doc, walk.listener, walk.name)
    for key, value in writes.items():
        if value is None:
            if key in table:
                del table[key]
        else:
            table[key] = value
    return True


def _response(
    walk: _Walk,
    current: dict[str, Any],
    explicit: dict[str, Any],
    question: str,
    keys: tuple[str, str],
    codes: tuple[int, int],
    standard: str,
) -> None:
    code_key, text_key = keys
    custom = code_key in explicit or text_key in explicit
    p = walk.prompter
    if not p.yes_no(question, custom):
        walk.changes[code_key] = None
        walk.changes[text_key] = None
        return
    walk.changes[code_key] = p.integer(
        f"Enter the SMTP code to use in the response. {standard} is the standard code.",
        current.get(code_key, int(standard)),
        *codes,
    )
    walk.changes[text_key] = p.ask(
        "Enter the text of the SMTP response (one line).",
        lambda a: walk.check(text_key, _is_text(a)),
        str(current.get(text_key, "")),
    )


def _mandatory(walk: _Walk, current: dict[str, Any]) -> None:
    p = walk.prompter
    senders = list(current.get("tls_mandatory_senders") or [])
    if not p.yes_no(
        "Would you like to require TLS for envelope senders in an address list?", bool(senders)
    ):
        walk.changes["tls_mandatory_senders"] = None
        return

    def entries(answer: str) -> list[str]:
        items = [a.strip() for a in answer.split(",") if a.strip()]
        if not items:
            raise BadAnswer("Enter at least one address.")
        try:
            AddressList.parse(items)
        except AddressListError as e:
            raise BadAnswer(str(e)) from None
        return items

    walk.changes["tls_mandatory_senders"] = p.ask(
        "Enter the envelope senders that must use TLS (user@example.com, user@, "
        "@example.com, @.example.com, @[1.2.3.4]), separated by commas.",
        entries,
        ", ".join(senders) or None,
    )


def _client_certificates(walk: _Walk, current: dict[str, Any]) -> None:
    p = walk.prompter
    if not p.yes_no(
        "Would you like to verify client certificates?",
        bool(current.get("verify_client_certificate")),
    ):
        walk.changes["verify_client_certificate"] = None
        walk.changes["client_ca"] = None
        return
    walk.changes["verify_client_certificate"] = True

    def ca_file(answer: str) -> str | None:
        if not answer or answer.lower() == "system":
            return None
        path = os.path.abspath(answer)
        if not os.path.isfile(path):
            raise BadAnswer(f"File not found: {path}")
        return path

    walk.changes["client_ca"] = p.ask(
        "Enter the file of CA certificates that issue acceptable client certificates "
        '("system" for the system\'s trusted CAs).',
        ca_file,
        current.get("client_ca") or "system",
    )


def edit_named_policy(
    doc: ConfigDocument,
    listener: str,
    name: str,
    prompter: Prompter,
    check: Callable[[tuple[str | int, ...], Any], None],
    *,
    new: bool,
) -> bool:
    """
    Walk a named policy: its access rule, then (for policies that accept
    mail) the parameters it sets, each of which may be "default" (inherit
    the Default Policy Parameters).

    @param new: the policy is being created (its rule must be written).
    @return: whether anything changed.
    """
    walk = _Walk(doc, listener, name, prompter, check)
    path = walk.path
    kind = listener_type(doc, listener)
    predefined = predefined_policies(kind).get(name, {})
    if doc.has(path):
        explicit = dict(doc.get(path))
    else:
        explicit = dict(predefined)
    inherited = default_values(doc, listener)
    rule = str(explicit.get("rule", predefined.get("rule", "ACCEPT"))).upper()
    p = prompter
    index = p.choose(
        "Select the behavior for this policy.",
        _RULE_LABELS,
        _RULES.index(rule) if rule in _RULES else 0,
    )
    changes = walk.changes
    changes["rule"] = _RULES[index]
    if changes["rule"] in ("ACCEPT", "RELAY") and p.yes_no(
        "Would you like to change the policy parameters?", False
    ):
        _named_number(
            walk,
            explicit,
            inherited,
            "max_message_size",
            "Enter the maximum message size (a trailing k or M is allowed)",
            parse_size,
            format_size,
        )
        for key, text in (
            (
                "max_concurrency",
                "Enter the maximum number of concurrent connections from a single IP",
            ),
            ("max_msgs_per_session", "Enter the maximum number of messages per connection"),
            ("max_rcpts_per_msg", "Enter the maximum number of recipients per message"),
            (
                "max_rcpts_per_hour",
                "Enter the maximum number of recipients per hour from a remote host (-1: no limit)",
            ),
        ):
            _named_number(walk, explicit, inherited, key, text, int, str)
        _named_choice(
            walk,
            explicit,
            inherited,
            "tls",
            "Do you want to allow encrypted TLS connections?",
            _TLS_VALUES,
            _TLS_LABELS,
        )
        _named_choice(
            walk,
            explicit,
            inherited,
            "smtp_auth",
            "Would you like to allow SMTP Authentication?",
            _AUTH_VALUES,
            _AUTH_LABELS,
        )
    writes: dict[str, Any] = {}
    for key, value in changes.items():
        if value is None:
            if key in explicit:
                writes[key] = None
        elif explicit.get(key) != value or (new or not doc.has(path)):
            writes[key] = value
    if not writes and doc.has(path):
        return False
    table = ensure_policy(doc, listener, name)
    for key, value in writes.items():
        if value is None:
            if key in table:
                del table[key]
        else:
            table[key] = value
    return True


def _named_number(
    walk: _Walk,
    explicit: dict[str, Any],
    inherited: dict[str, Any],
    key: str,
    question: str,
    parse: Callable[[str], int],
    show: Callable[[int], str],
) -> None:
    def check(answer: str) -> int | None:
        if answer.lower() == "default":
            return None
        try:
            value = parse(answer)
        except ValueError:
            raise BadAnswer('Enter a number, or "default".') from None
        return int(walk.check(key, value))

    current = explicit.get(key)
    walk.changes[key] = walk.prompter.ask(
        f'{question}, or "default" for the Default Policy Parameters value '
        f"({show(inherited[key])}).",
        check,
        "default" if current is None else show(current),
    )


def _named_choice(
    walk: _Walk,
    explicit: dict[str, Any],
    inherited: dict[str, Any],
    key: str,
    question: str,
    values: tuple[str, ...],
    labels: tuple[str, ...],
) -> None:
    inherited_value = str(inherited.get(key, values[0])).lower()
    inherited_label = dict(zip(values, labels, strict=True)).get(inherited_value, inherited_value)
    current = explicit.get(key)
    options = [f"Default ({inherited_label})", *labels]
    default = 0 if current is None else 1 + values.index(str(current).lower())
    index = walk.prompter.choose(question, options, default)
    walk.changes[key] = None if index == 0 else values[index - 1]
    if key == "tls" and index > 1:
        walk.prompter.say(TLS_ENABLED_NOTE)
