"""
Tests for L{esa_tls.outbound.policy}: Destination Controls lookup and the
meaning of each TLS setting.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from esa_tls.config.model import (
    DestinationControl,
    DestinationTLS,
    GatewayConfig,
    SystemSettings,
)
from esa_tls.outbound.policy import TLSPlan, destination_for, effective_tls


def _config(**rows: DestinationTLS) -> GatewayConfig:
    return GatewayConfig(
        system=SystemSettings(hostname="gw.example"),
        destinations={name: DestinationControl(domain=name, tls=tls) for name, tls in rows.items()},
    )


class DestinationLookupTests(SynchronousTestCase):
    """
    Which row governs a domain.
    """

    def test_exact_parent_default(self) -> None:
        """
        A domain's own row wins, then a C{.parent} row, then C{default}.
        """
        config = GatewayConfig(
            system=SystemSettings(hostname="gw.example"),
            destinations={
                "a.example": DestinationControl("a.example", DestinationTLS.REQUIRED),
                ".b.example": DestinationControl(".b.example", DestinationTLS.NO),
                "default": DestinationControl("default", DestinationTLS.PREFERRED_VERIFY),
            },
        )
        self.assertEqual(destination_for(config, "A.example.").domain, "a.example")
        self.assertEqual(destination_for(config, "mx.b.example").domain, ".b.example")
        self.assertEqual(destination_for(config, "b.example").domain, "default")

    def test_default_resolves_to_default_row(self) -> None:
        """
        A row set to C{default} takes the C{default} row's setting.
        """
        config = _config(
            **{"p.example": DestinationTLS.DEFAULT, "default": DestinationTLS.REQUIRED}
        )
        self.assertEqual(effective_tls(config, "p.example"), DestinationTLS.REQUIRED)
        self.assertEqual(effective_tls(config, "other.example"), DestinationTLS.REQUIRED)

    def test_no_default_row_is_preferred(self) -> None:
        """
        Without a C{default} row (or with one set to C{default}), the
        Default setting is C{preferred}.
        """
        self.assertEqual(effective_tls(_config(), "x.example"), DestinationTLS.PREFERRED)
        self.assertEqual(
            effective_tls(_config(default=DestinationTLS.DEFAULT), "x.example"),
            DestinationTLS.PREFERRED,
        )


class TLSPlanTests(SynchronousTestCase):
    """
    What each setting asks of a connection.
    """

    def test_table(self) -> None:
        """
        The settings map to STARTTLS / require / verify / require-verified
        / hosted as ESA documents them.
        """
        table = {
            DestinationTLS.NO: (False, False, False, False, False),
            DestinationTLS.PREFERRED: (True, False, False, False, False),
            DestinationTLS.REQUIRED: (True, True, False, False, False),
            DestinationTLS.PREFERRED_VERIFY: (True, False, True, False, False),
            DestinationTLS.REQUIRED_VERIFY: (True, True, True, True, False),
            DestinationTLS.REQUIRED_VERIFY_HOSTED: (True, True, True, True, True),
        }
        for level, expected in table.items():
            plan = TLSPlan.for_level(level)
            self.assertEqual(
                (plan.starttls, plan.require, plan.verify, plan.require_verified, plan.hosted),
                expected,
                level,
            )
        self.assertRaises(ValueError, TLSPlan.for_level, DestinationTLS.DEFAULT)

    def test_clear_fallback_only_when_allowed(self) -> None:
        """
        Only settings that do not require TLS have a clear fallback plan.
        """
        self.assertFalse(TLSPlan.for_level(DestinationTLS.PREFERRED).in_the_clear().starttls)
        self.assertRaises(ValueError, TLSPlan.for_level(DestinationTLS.REQUIRED).in_the_clear)
