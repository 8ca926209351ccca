"""
Tests for L{esa_tls.hat.predefined}: the ESA's factory sender groups and
mail flow policies.
"""

from __future__ import annotations

from ipaddress import IPv4Interface
from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from esa_tls.config.model import (
    POLICY_PARAMETER_KEYS,
    AccessRule,
    Interface,
    Listener,
    ListenerType,
    MailFlowPolicy,
    SenderGroup,
)
from esa_tls.hat.predefined import predefined_groups, predefined_policies
from esa_tls.hat.table import HostAccessTable

MIB = 1024 * 1024


def resolve(overrides: dict[str, dict[str, object]]) -> dict[str, MailFlowPolicy]:
    """
    Turn policy overrides into resolved policies over the model's
    defaults, the way a configuration loader would.
    """
    policies = {}
    for name, values in overrides.items():
        fields: dict[str, Any] = dict(values)
        fields["rule"] = AccessRule(fields.get("rule", "ACCEPT"))
        policies[name] = MailFlowPolicy(name=name, **fields)
    return policies


def listener(kind: ListenerType, hat: tuple[SenderGroup, ...]) -> Listener:
    return Listener(
        name="L",
        type=kind,
        interface=Interface("Loopback", IPv4Interface("127.0.0.1/8")),
        port=2525,
        policies=resolve(predefined_policies(kind)),
        hat=hat,
    )


class PublicTests(SynchronousTestCase):
    """
    A public listener's factory HAT.
    """

    def test_groups(self) -> None:
        """
        The groups are the ESA's, in the ESA's order, each with its policy;
        only C{ALL} has an entry.
        """
        groups = predefined_groups(ListenerType.PUBLIC)
        self.assertEqual(
            [(g.name, g.policy, g.senders) for g in groups],
            [
                ("WHITELIST", "TRUSTED", ()),
                ("BLOCKED_LIST", "BLOCKED", ()),
                ("SUSPECTLIST", "THROTTLED", ()),
                ("UNKNOWNLIST", "ACCEPTED", ()),
                ("ALL", "ACCEPTED", ("ALL",)),
            ],
        )

    def test_policies(self) -> None:
        """
        The policies carry the values of the ESA's Table 6-1, as
        configuration keys and values, and leave TLS to the Default Policy
        Parameters.
        """
        policies = predefined_policies(ListenerType.PUBLIC)
        self.assertEqual(set(policies), {"default", "ACCEPTED", "THROTTLED", "TRUSTED", "BLOCKED"})
        self.assertEqual(policies["default"], {})
        self.assertEqual(policies["BLOCKED"], {"rule": "REJECT"})
        self.assertEqual(
            policies["THROTTLED"],
            {
                "rule": "ACCEPT",
                "max_msgs_per_session": 10,
                "max_rcpts_per_msg": 20,
                "max_message_size": MIB,
                "max_concurrency": 10,
                "max_rcpts_per_hour": 20,
            },
        )
        self.assertEqual(
            policies["ACCEPTED"],
            {
                "rule": "ACCEPT",
                "max_msgs_per_session": 1000,
                "max_rcpts_per_msg": 1000,
                "max_message_size": 100 * MIB,
                "max_concurrency": 1000,
            },
        )
        self.assertEqual(policies["TRUSTED"], {**policies["ACCEPTED"], "max_rcpts_per_hour": -1})
        for overrides in policies.values():
            self.assertLessEqual(set(overrides), POLICY_PARAMETER_KEYS | {"rule"})
            self.assertNotIn("tls", overrides)

    def test_fresh_copies(self) -> None:
        """
        A caller may change what it got without changing the next caller's.
        """
        predefined_policies(ListenerType.PUBLIC)["TRUSTED"]["max_msgs_per_session"] = 1
        self.assertEqual(
            predefined_policies(ListenerType.PUBLIC)["TRUSTED"]["max_msgs_per_session"], 1000
        )

    def test_accepts_everyone(self) -> None:
        """
        With the factory HAT a public listener accepts any host, through
        C{ALL} and C{ACCEPTED}.
        """
        table = HostAccessTable(
            listener(ListenerType.PUBLIC, predefined_groups(ListenerType.PUBLIC))
        )
        verdict = self.successResultOf(table.lookup("192.0.2.1"))
        self.assertEqual((verdict.sender_group, verdict.policy.name), ("ALL", "ACCEPTED"))
        self.assertEqual(verdict.policy.rule, AccessRule.ACCEPT)
        self.assertEqual(verdict.policy.max_message_size, 100 * MIB)


class PrivateTests(SynchronousTestCase):
    """
    A private listener's factory HAT.
    """

    def test_groups_and_policies(self) -> None:
        """
        C{RELAYLIST} relays with default parameters but no recipients per
        hour limit (Table 5-13: "-1 (Disabled)"); C{ALL} is blocked.
        """
        groups = predefined_groups(ListenerType.PRIVATE)
        self.assertEqual(
            [(g.name, g.policy, g.senders) for g in groups],
            [("RELAYLIST", "RELAYED", ()), ("ALL", "BLOCKED", ("ALL",))],
        )
        self.assertEqual(
            predefined_policies(ListenerType.PRIVATE),
            {
                "default": {},
                "RELAYED": {"rule": "RELAY", "max_rcpts_per_hour": -1},
                "BLOCKED": {"rule": "REJECT"},
            },
        )

    def test_relays_for_listed_hosts_only(self) -> None:
        """
        Hosts an administrator puts in C{RELAYLIST} may relay; everyone
        else is rejected.
        """
        relaylist, everyone = predefined_groups(ListenerType.PRIVATE)
        hat = (attrs.evolve(relaylist, senders=("10.0.0.0/8",)), everyone)
        table = HostAccessTable(listener(ListenerType.PRIVATE, hat))
        inside = self.successResultOf(table.lookup("10.1.2.3"))
        self.assertEqual((inside.sender_group, inside.policy.rule), ("RELAYLIST", AccessRule.RELAY))
        self.assertEqual(
            inside.policy.max_rcpts_per_msg, MailFlowPolicy(name="x").max_rcpts_per_msg
        )
        outside = self.successResultOf(table.lookup("192.0.2.1"))
        self.assertEqual((outside.sender_group, outside.policy.rule), ("ALL", AccessRule.REJECT))
