"""
The HAT text format of HOSTACCESS IMPORT, EXPORT and PRINT.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from esa_tls.cli._hatfile import HATGroup, HATPolicy, HATSyntaxError, format_hat, parse_hat

SAMPLE = """\
# Exported HAT
$TRUSTED ACCEPT { max_msgs_per_session=5000 tls="off" }
$BLOCKED REJECT
$LIST ACCEPT { tls="preferred" tls_mandatory_senders=["@bank.example", "ceo@"] spam_check=on }

WHITELIST: 10.1.1.1-50, .partner.example $TRUSTED (My trusted senders (all of them))
BLOCKED_LIST: dnslist[zen.example], 2001:db8::/32 $BLOCKED
ALL $ACCEPTED
"""


class ParseTests(SynchronousTestCase):
    def test_sample(self) -> None:
        """
        Policies with typed parameters, groups with senders of several
        forms, comments with parentheses, and the ALL group.
        """
        parsed = parse_hat(SAMPLE)
        self.assertEqual(
            parsed.policies,
            (
                HATPolicy("TRUSTED", "ACCEPT", (("max_msgs_per_session", 5000), ("tls", "off"))),
                HATPolicy("BLOCKED", "REJECT"),
                HATPolicy(
                    "LIST",
                    "ACCEPT",
                    (
                        ("tls", "preferred"),
                        ("tls_mandatory_senders", ["@bank.example", "ceo@"]),
                        ("spam_check", "on"),
                    ),
                ),
            ),
        )
        self.assertEqual(
            parsed.groups,
            (
                HATGroup(
                    "WHITELIST",
                    ("10.1.1.1-50", ".partner.example"),
                    "TRUSTED",
                    "My trusted senders (all of them)",
                ),
                HATGroup("BLOCKED_LIST", ("dnslist[zen.example]", "2001:db8::/32"), "BLOCKED"),
                HATGroup("ALL", ("ALL",), "ACCEPTED"),
            ),
        )

    def test_esa_layout(self) -> None:
        """
        The ESA's own multi-line layout (senders one per line, parameters
        on following lines) reads the same.
        """
        text = (
            "$TRUSTED\n    ACCEPT {\n        max_msgs_per_session = 5000\n    }\n"
            "WHITELIST:\n    10.1.1.1\n    fe80::\n    $TRUSTED (Trusted)\n"
        )
        parsed = parse_hat(text)
        self.assertEqual(parsed.policies[0].parameters, (("max_msgs_per_session", 5000),))
        self.assertEqual(parsed.groups[0].senders, ("10.1.1.1", "fe80::"))

    def test_round_trip(self) -> None:
        """
        Formatting what was parsed and parsing it again gives the same
        values, and formatting that gives the same text.
        """
        parsed = parse_hat(SAMPLE)
        text = format_hat(parsed.policies, parsed.groups, "title")
        again = parse_hat(text)
        self.assertEqual(again, parsed)
        self.assertEqual(format_hat(again.policies, again.groups, "title"), text)

    def test_faults_with_lines(self) -> None:
        """
        Every fault is reported with its line; nothing is returned.
        """
        text = (
            "$A MAYBE\n"
            '$B ACCEPT { colour="red" }\n'
            "G1: 10.0.0.300 $B\n"
            "G2: 10.0.0.1\n"
            "G3: 10.0.0.2 $B\n"
            "G3: 10.0.0.3 $B\n"
            "junk\n"
        )
        with self.assertRaises(HATSyntaxError) as caught:
            parse_hat(text)
        lines = [line for line, _ in caught.exception.faults]
        messages = " | ".join(m for _, m in caught.exception.faults)
        self.assertEqual(lines, [1, 2, 3, 4, 6, 7])
        self.assertIn("'MAYBE' is not an access rule", messages)
        self.assertIn("unknown parameter 'colour'", messages)
        self.assertIn("bad IPv4 address '10.0.0.300'", messages)
        self.assertIn("sender group G2 has no $POLICY before group G3:", messages)
        self.assertIn("sender group G3 is given twice", messages)
        self.assertIn("got 'junk'", messages)
