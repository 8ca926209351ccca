# -*- test-case-name: tests.test_hat_predefined -*-
"""
The ESA's factory Host Access Table: the sender groups and mail flow
policies a new listener starts with (ESA reference sections 2.4 and 3.3).

They are plain values so that the configuration loader can use them for a
listener whose file gives no HAT or does not define these policies.  A file
table with a predefined name replaces that policy (issue 2's contract: unset
parameters inherit the Default Policy Parameters, only the rule is kept), so
C{esa-tls listenerconfig} writes a predefined policy out in full before
changing one of its values.

The policies are given as the parameter overrides a configuration file would
write (TOML key names and TOML-shaped values: C{rule = "ACCEPT"},
C{max_message_size = 1048576}), not as resolved L{esa_tls.config.model.MailFlowPolicy}
values, because resolving (inheriting the listener's Default Policy
Parameters) is the loader's job and must happen after the merge.
"""

from __future__ import annotations

from esa_tls.config.model import ListenerType, SenderGroup

_MIB = 1024 * 1024

#: Public listener policies, UG 8.5.5 Table 6-1.  C{ACCEPTED} leaves the
#: recipients-per-hour limit at the default; C{TRUSTED} turns it off.  None
#: of them sets C{tls}: the table's "OFF" was the default of its day, and
#: pinning it here would quietly switch TLS off for almost every sender of a
#: listener whose administrator set C{tls = "required"} in the Default Policy
#: Parameters (the seed's very example).
_PUBLIC_POLICIES: dict[str, dict[str, object]] = {
    "default": {},
    "ACCEPTED": {
        "rule": "ACCEPT",
        "max_msgs_per_session": 1000,
        "max_rcpts_per_msg": 1000,
        "max_message_size": 100 * _MIB,
        "max_concurrency": 1000,
    },
    "THROTTLED": {
        "rule": "ACCEPT",
        "max_msgs_per_session": 10,
        "max_rcpts_per_msg": 20,
        "max_message_size": 1 * _MIB,
        "max_concurrency": 10,
        "max_rcpts_per_hour": 20,
    },
    "TRUSTED": {
        "rule": "ACCEPT",
        "max_msgs_per_session": 1000,
        "max_rcpts_per_msg": 1000,
        "max_message_size": 100 * _MIB,
        "max_concurrency": 1000,
        "max_rcpts_per_hour": -1,
    },
    "BLOCKED": {"rule": "REJECT"},
}

#: Private listener policies, UG 7.5 Table 5-13: C{RELAYED} relays with every
#: parameter at the listener's default but one: its recipients per hour are
#: "-1 (Disabled)", not "Default", so a rate limit set in the Default Policy
#: Parameters (for the listener's other policies) never throttles the
#: internal hosts the listener relays for.
_PRIVATE_POLICIES: dict[str, dict[str, object]] = {
    "default": {},
    "RELAYED": {"rule": "RELAY", "max_rcpts_per_hour": -1},
    "BLOCKED": {"rule": "REJECT"},
}

_PUBLIC_GROUPS = (
    SenderGroup(
        "WHITELIST",
        "TRUSTED",
        (),
        "My trusted senders have no anti-spam scanning or rate limiting",
    ),
    SenderGroup("BLOCKED_LIST", "BLOCKED", (), "Spammers are rejected"),
    SenderGroup("SUSPECTLIST", "THROTTLED", (), "Suspicious senders are throttled"),
    SenderGroup(
        "UNKNOWNLIST",
        "ACCEPTED",
        (),
        "Reviewed but undecided, continue normal acceptance",
    ),
    SenderGroup("ALL", "ACCEPTED", ("ALL",), "Default for all other senders"),
)

_PRIVATE_GROUPS = (
    SenderGroup("RELAYLIST", "RELAYED", (), "Hosts allowed to relay through this listener"),
    SenderGroup("ALL", "BLOCKED", ("ALL",), "Everyone else is rejected"),
)


def predefined_groups(listener_type: ListenerType) -> tuple[SenderGroup, ...]:
    """
    The ESA's predefined sender groups for a listener type, in evaluation
    order.  Every group but C{ALL} is empty: an administrator fills them.

    @param listener_type: public or private.
    @return: the groups, C{ALL} last.
    """
    if listener_type is ListenerType.PRIVATE:
        return _PRIVATE_GROUPS
    return _PUBLIC_GROUPS


def predefined_policies(listener_type: ListenerType) -> dict[str, dict[str, object]]:
    """
    The ESA's predefined mail flow policies for a listener type, as
    parameter overrides over the Default Policy Parameters (whose values are
    the defaults of L{esa_tls.config.model.MailFlowPolicy}, so C{"default"}
    maps to no overrides).

    @param listener_type: public or private.
    @return: a new dictionary (the caller may change it) mapping each policy
        name to its overrides, C{rule} included.
    """
    table = _PRIVATE_POLICIES if listener_type is ListenerType.PRIVATE else _PUBLIC_POLICIES
    return {name: dict(overrides) for name, overrides in table.items()}
