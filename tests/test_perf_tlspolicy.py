"""
The TLS rules of a policy are worked out once per policy object (the
profile of the STARTTLS path showed the mandatory-sender list being parsed
twice per session), without ever answering for a policy with the rules of
another, including after a reload replaced the policy objects.
"""

from __future__ import annotations

import attrs
from twisted.trial.unittest import TestCase

from esa_tls.config.model import MailFlowPolicy, TLSMode
from esa_tls.inbound.tlspolicy import MUST_STARTTLS, InboundTLSPolicy


class RememberedRulesTests(TestCase):
    def test_samePolicySameRules(self) -> None:
        """
        Asking twice for one policy gives the same rules, worked out once.
        """
        policy = MailFlowPolicy(name="P", tls=TLSMode.PREFERRED)
        self.assertIs(InboundTLSPolicy.from_policy(policy), InboundTLSPolicy.from_policy(policy))

    def test_reloadedPolicyGetsItsOwnRules(self) -> None:
        """
        A policy edited by a reload (a new object, equal name) gets rules
        from its own settings: a sender made mandatory is refused in the
        clear at once, and the old policy's sessions keep the old rules.
        """
        old = MailFlowPolicy(name="P", tls=TLSMode.PREFERRED)
        new = attrs.evolve(old, tls_mandatory_senders=("@bank.example",))
        old_rules = InboundTLSPolicy.from_policy(old)
        new_rules = InboundTLSPolicy.from_policy(new)
        self.assertIsNone(old_rules.sender_refusal("a@bank.example", False))
        refusal = new_rules.sender_refusal("a@bank.example", False)
        assert refusal is not None
        self.assertEqual(refusal[0], 530)
        self.assertIsNone(new_rules.sender_refusal("a@other.example", False))

    def test_availabilityIsPartOfTheAnswer(self) -> None:
        """
        The same policy on a listener without certificates offers no
        STARTTLS; with them it does.
        """
        policy = MailFlowPolicy(name="R", tls=TLSMode.REQUIRED)
        self.assertTrue(InboundTLSPolicy.from_policy(policy, True).offer_starttls(False))
        self.assertFalse(InboundTLSPolicy.from_policy(policy, False).offer_starttls(False))
        self.assertEqual(
            InboundTLSPolicy.from_policy(policy, False).command_refusal(b"MAIL", False),
            MUST_STARTTLS,
        )

    def test_manyPolicies(self) -> None:
        """
        More policies than the cache holds are all answered correctly.
        """
        policies = [
            MailFlowPolicy(name=f"P{n}", tls=TLSMode.REQUIRED if n % 2 else TLSMode.OFF)
            for n in range(3000)
        ]
        for n, policy in enumerate(policies):
            rules = InboundTLSPolicy.from_policy(policy)
            self.assertEqual(rules.mode, policy.tls, n)
