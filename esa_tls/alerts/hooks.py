# -*- test-case-name: tests.test_alerts_hooks -*-
"""
Building the alert hooks from configuration, third-party ones included.

The configuration (read by L{esa_tls.config.load} into L{HookConfig};
C{examples/esa.toml} shows every key)::

    [[alerts.hooks]]
    type = "mail"                 # mail | log | command | webhook | python
    sender = "alert@mx.example"   # mail: From and envelope sender
    severities = ["critical"]     # optional: only these (default: all)
    types = ["system"]            # optional: only these (default: all)
    timeout = 10                  # seconds (command, webhook)

    [[alerts.hooks]]
    type = "command"
    command = ["/usr/local/bin/page-oncall", "--json"]

    [[alerts.hooks]]
    type = "webhook"
    url = "https://chat.example/hooks/abc"
    headers = { Authorization = "Bearer ..." }

    [[alerts.hooks]]
    type = "python"
    object = "mypackage.alerts:make_hook"   # or an entry point name
    options = { channel = "#mail" }

With no C{[[alerts.hooks]]}, the hooks are C{mail} and C{log}: the ESA's
mail to the recipients, and a local record.

A C{python} hook's C{object} is either C{package.module:factory} or the
name of an entry point in the group C{esa_tls.alert_hooks}; the factory is
called with a L{HookContext} and must return an L{IAlertHook} provider.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from attrs import frozen

from esa_tls.alerts.alert import AlertType, Severity
from esa_tls.alerts.commandhook import CommandAlertHook
from esa_tls.alerts.dispatcher import FilteredHook
from esa_tls.alerts.loghook import LogAlertHook, alert_log_path
from esa_tls.alerts.mailhook import MailAlertHook
from esa_tls.config.errors import KeyPath
from esa_tls.config.model import AlertHookConfig
from esa_tls.interfaces import IAlertHook, IMessageStore

__all__ = [
    "DEFAULT_HOOKS",
    "ENTRY_POINT_GROUP",
    "HOOK_TYPES",
    "HookConfig",
    "HookConfigError",
    "HookContext",
    "build_hook",
    "build_hooks",
    "load_factory",
]

#: The entry point group third-party hook factories register under.
ENTRY_POINT_GROUP = "esa_tls.alert_hooks"

HOOK_TYPES = ("mail", "log", "command", "webhook", "python")

#: The key a hook of each type is refused for at build time (the loader
#: has checked the rest): what to name in the fault.
_KEY_AT_FAULT = {"python": "object", "command": "command", "webhook": "url"}


class HookConfigError(ValueError):
    """
    A hook's configuration cannot be used; the message says why.

    @ivar path: the key at fault, when known (C{("alerts", "hooks", 1,
        "object")}), so that start-up names its file and line as the
        loader does for its own faults.
    @ivar reason: what is wrong, without the key.
    """

    def __init__(self, reason: str, path: KeyPath = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path


#: One C{[[alerts.hooks]]} table (the configuration value lives with the
#: rest of the configuration model).
HookConfig = AlertHookConfig


#: The hooks when none are configured.
DEFAULT_HOOKS: tuple[HookConfig, ...] = (HookConfig("mail"), HookConfig("log"))


@frozen
class HookContext:
    """
    What a hook factory may use.

    @ivar reactor: the reactor (processes, network, time).
    @ivar store: the message store alert mail is queued into.
    @ivar data_dir: the gateway's data directory.
    @ivar hostname: the gateway's name.
    @ivar config: the hook's own table.
    """

    reactor: Any
    store: IMessageStore | None
    data_dir: str
    hostname: str
    config: HookConfig


def load_factory(name: str) -> Callable[[HookContext], object]:
    """
    Find a third-party hook factory.

    @param name: C{package.module:attribute} (the attribute may be dotted),
        or an entry point name in L{ENTRY_POINT_GROUP}.
    @raise HookConfigError: nothing callable by that name.
    """
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
        except Exception as e:
            # ImportError, and the module's own errors (SyntaxError, ...).
            raise HookConfigError(f"cannot import {module_name!r}: {e}") from e
        for part in attribute.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise HookConfigError(f"{module_name!r} has no {attribute!r}") from None
    else:
        # Imported here: reading the installed packages' metadata costs
        # memory every gateway process would otherwise pay (issue 7).
        from importlib.metadata import entry_points

        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not found:
            raise HookConfigError(
                f"no alert hook {name!r}: expected package.module:factory or an "
                f"entry point in {ENTRY_POINT_GROUP}"
            )
        try:
            target = found[0].load()
        except Exception as e:
            raise HookConfigError(f"cannot load entry point {name!r}: {e}") from e
    if not callable(target):
        raise HookConfigError(f"{name!r} is not callable")
    factory: Callable[[HookContext], object] = target
    return factory


def _choices(values: tuple[str, ...], kind: type[Severity] | type[AlertType]) -> list[Any]:
    try:
        return [kind(v) for v in values]
    except ValueError as e:
        raise HookConfigError(str(e)) from None


def build_hook(
    config: HookConfig,
    *,
    reactor: Any,
    store: IMessageStore | None,
    data_dir: str,
    hostname: str,
) -> IAlertHook:
    """
    Build the hook C{config} describes, wrapped in a L{FilteredHook} when
    it names severities or types.

    @raise HookConfigError: the configuration is incomplete or names a
        factory that cannot be loaded or does not make a hook.
    """
    hook: IAlertHook
    if config.type == "mail":
        if store is None:
            raise HookConfigError("the mail hook needs the message store")
        hook = MailAlertHook(store, hostname, sender=config.sender or None)
    elif config.type == "log":
        hook = LogAlertHook(alert_log_path(data_dir))
    elif config.type == "command":
        if not config.command:
            raise HookConfigError('a command hook needs command = ["/path/to/program", ...]')
        hook = CommandAlertHook(reactor, config.command, timeout=config.timeout)
    elif config.type == "webhook":
        # treq and twisted.web, only for a gateway that has a webhook: every
        # process would otherwise hold them (issue 7: memory per worker).
        from esa_tls.alerts.webhook import WebhookAlertHook

        try:
            hook = WebhookAlertHook(
                reactor, config.url, timeout=config.timeout, headers=config.headers
            )
        except ValueError as e:
            raise HookConfigError(str(e)) from None
    elif config.type == "python":
        if not config.object:
            raise HookConfigError('a python hook needs object = "package.module:factory"')
        factory = load_factory(config.object)
        try:
            made = factory(HookContext(reactor, store, data_dir, hostname, config))
        except Exception as e:
            # The factory is someone else's code: whatever it raises is a
            # refused hook (a start-up fault, or a reload that keeps the
            # hooks in service), never a traceback that stops a reload.
            raise HookConfigError(f"{config.object!r} failed: {e!r}") from e
        if not IAlertHook.providedBy(made):
            raise HookConfigError(f"{config.object!r} made {made!r}, which is not an IAlertHook")
        hook = made
    else:
        raise HookConfigError(
            f"unknown hook type {config.type!r}: expected one of {', '.join(HOOK_TYPES)}"
        )
    if config.severities or config.types:
        return FilteredHook(
            hook, _choices(config.severities, Severity), _choices(config.types, AlertType)
        )
    return hook


def build_hooks(
    configs: tuple[HookConfig, ...] | None,
    *,
    reactor: Any,
    store: IMessageStore | None,
    data_dir: str,
    hostname: str,
) -> list[IAlertHook]:
    """
    Build every configured hook (L{DEFAULT_HOOKS} when C{configs} is empty
    or C{None}), in order.

    @raise HookConfigError: naming the hook (C{alerts.hooks[2]: ...}).
    """
    hooks = []
    for index, config in enumerate(configs or DEFAULT_HOOKS):
        try:
            hooks.append(
                build_hook(
                    config, reactor=reactor, store=store, data_dir=data_dir, hostname=hostname
                )
            )
        except HookConfigError as e:
            key = _KEY_AT_FAULT.get(config.type)
            path: KeyPath = ("alerts", "hooks", index, *([key] if key else []))
            error = HookConfigError(f"alerts.hooks[{index}] ({config.type}): {e}", path)
            error.reason = str(e)
            raise error from None
    return hooks
