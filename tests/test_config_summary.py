"""
Tests for L{esa_tls.summary.listener_summary}: the ESA listener summary.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from esa_tls.config.load import parse_config
from esa_tls.summary import listener_summary

CONFIG = """\
[interfaces.PublicNet]
address = "192.168.2.1/24"

[interfaces.Inside]
address = "2001:db8::25/64"

[certificates]

[listeners.Inboundmail]
type = "public"
interface = "PublicNet"
port = 25
max_concurrency = 1000
tcp_queue = 50
rat = ["example.com", ".example.com"]

[listeners.Inboundmail.policies.default]
tls = "required"

[listeners.Relay]
type = "private"
interface = "Inside"
port = 587
protocol = "SMTPS"
default_domain = "corp.example"
domain_map = true
max_concurrency = 300
tcp_queue = 20

[listeners.Relay.policies.default]
tls = "preferred"
"""


class SummaryTests(SynchronousTestCase):
    """
    The summary's first eight lines are the ESA's, exactly; the lines after
    add the certificate, RAT size and sender groups.
    """

    def setUp(self) -> None:
        self.config = parse_config(CONFIG, "site.toml")

    def test_seed(self) -> None:
        """
        The seed's listener prints the seed's eight lines, byte for byte
        (no trailing space after C{Default Domain:}), then ours.
        """
        summary = listener_summary(self.config.listeners["Inboundmail"], self.config)
        self.assertEqual(
            summary.split("\n"),
            [
                "Name: Inboundmail",
                "Type: Public",
                "Interface: PublicNet (192.168.2.1/24) TCP Port 25",
                "Protocol: SMTP",
                "Default Domain:",
                "Max Concurrency: 1000 (TCP Queue: 50)",
                "Domain map: disabled",
                "TLS: Required",
                "Certificate: Demo (insecure demonstration certificate)",
                "Recipient Access Table: 2 entries",
                "Sender Groups: WHITELIST (TRUSTED), BLOCKED_LIST (BLOCKED), "
                "SUSPECTLIST (THROTTLED), UNKNOWNLIST (ACCEPTED), ALL (ACCEPTED)",
            ],
        )

    def test_private(self) -> None:
        """
        A private listener shows its default domain, domain map, protocol
        and TLS label, and no RAT line.
        """
        summary = listener_summary(self.config.listeners["Relay"], self.config)
        self.assertEqual(
            summary.split("\n"),
            [
                "Name: Relay",
                "Type: Private",
                "Interface: Inside (2001:db8::25/64) TCP Port 587",
                "Protocol: SMTPS",
                "Default Domain: corp.example",
                "Max Concurrency: 300 (TCP Queue: 20)",
                "Domain map: enabled",
                "TLS: Preferred",
                "Certificate: Demo (insecure demonstration certificate)",
                "Sender Groups: RELAYLIST (RELAYED), ALL (BLOCKED)",
            ],
        )

    def test_tls_off(self) -> None:
        """
        TLS off shows as C{No}, as on the ESA.
        """
        config = parse_config(CONFIG.replace('tls = "required"', 'tls = "off"'), "site.toml")
        lines = listener_summary(config.listeners["Inboundmail"], config).split("\n")
        self.assertEqual(lines[7], "TLS: No")
