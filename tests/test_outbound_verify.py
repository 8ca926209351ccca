"""
Tests for L{esa_tls.outbound.verify}: the ESA Verify and Hosted Verify
certificate name rules.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from esa_tls.outbound.verify import (
    CertificateNames,
    NameField,
    ReferenceKind,
    dns_name_matches,
    match_names,
    reference_identities,
    verify_certificate_names,
)
from esa_tls.testing import CertificateAuthority

CA = CertificateAuthority.generate()

label = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)


class WildcardTests(SynchronousTestCase):
    """
    RFC 6125 wildcard rules, via C{service_identity}.
    """

    def test_exact(self) -> None:
        """
        Names match exactly, ignoring case and a trailing dot.
        """
        self.assertTrue(dns_name_matches("MX.Partner.Example", "mx.partner.example."))
        self.assertFalse(dns_name_matches("mx.partner.example", "mx2.partner.example"))

    def test_leftmost_wildcard(self) -> None:
        """
        C{*.partner.example} matches one label below C{partner.example}:
        not the domain itself, not two labels down.
        """
        self.assertTrue(dns_name_matches("*.partner.example", "mx.partner.example"))
        self.assertFalse(dns_name_matches("*.partner.example", "partner.example"))
        self.assertFalse(dns_name_matches("*.partner.example", "a.mx.partner.example"))

    def test_no_partial_or_inner_wildcards(self) -> None:
        """
        Partial-label wildcards, wildcards below the left-most label and
        wildcards over a public suffix match nothing.
        """
        self.assertFalse(dns_name_matches("m*.partner.example", "mx.partner.example"))
        self.assertFalse(dns_name_matches("*x.partner.example", "mx.partner.example"))
        self.assertFalse(dns_name_matches("mx.*.example", "mx.partner.example"))
        self.assertFalse(dns_name_matches("*.example", "partner.example"))
        self.assertFalse(dns_name_matches("*.*.example", "a.partner.example"))

    def test_garbage_never_matches(self) -> None:
        """
        An IP address reference or an empty name matches nothing.
        """
        self.assertFalse(dns_name_matches("127.0.0.1", "127.0.0.1"))
        self.assertFalse(dns_name_matches("", "partner.example"))

    @given(label, label, label)
    def test_wildcard_one_label(self, a: str, b: str, c: str) -> None:
        """
        A left-most wildcard matches exactly the names with one more label
        than its base.
        """
        base = f"{b}.{c}.example"
        self.assertTrue(dns_name_matches(f"*.{base}", f"{a}.{base}"))
        self.assertFalse(dns_name_matches(f"*.{base}", f"{a}.{a}.{base}"))
        self.assertFalse(dns_name_matches(f"*.{base}", base))


class ReferenceOrderTests(SynchronousTestCase):
    """
    Which reference identities each algorithm accepts, and in what order.
    """

    def test_verify_with_mx(self) -> None:
        """
        Verify accepts the email domain, then the MX host name.
        """
        self.assertEqual(
            reference_identities(
                "Partner.Example", "mx1.partner.example", via_smtp_route=False, hosted=False
            ),
            [
                (ReferenceKind.EMAIL_DOMAIN, "partner.example"),
                (ReferenceKind.MX_HOSTNAME, "mx1.partner.example"),
            ],
        )

    def test_verify_with_route(self) -> None:
        """
        Verify through an SMTP route accepts the route host name instead of
        an MX host name.
        """
        self.assertEqual(
            reference_identities(
                "partner.example", "relay.example", via_smtp_route=True, hosted=False
            )[1],
            (ReferenceKind.SMTP_ROUTE_HOSTNAME, "relay.example"),
        )

    def test_hosted_ignores_mx(self) -> None:
        """
        Hosted Verify never accepts the MX host name (it comes from
        unauthenticated DNS); it does accept an SMTP route host.
        """
        self.assertEqual(
            reference_identities(
                "partner.example", "mx1.partner.example", via_smtp_route=False, hosted=True
            ),
            [(ReferenceKind.EMAIL_DOMAIN, "partner.example")],
        )
        self.assertEqual(
            len(
                reference_identities(
                    "partner.example", "relay.example", via_smtp_route=True, hosted=True
                )
            ),
            2,
        )

    def test_ip_literal_host_adds_nothing(self) -> None:
        """
        An SMTP route to an IP literal adds no reference identity.
        """
        self.assertEqual(
            reference_identities("p.example", "127.0.0.1", via_smtp_route=True, hosted=False),
            [(ReferenceKind.EMAIL_DOMAIN, "p.example")],
        )


class CertificateMatchTests(SynchronousTestCase):
    """
    L{verify_certificate_names} on real certificates.
    """

    def test_email_domain_first(self) -> None:
        """
        When the certificate names both, the email domain is reported as
        the match, since it is tried first.
        """
        cert = CA.issue(["mx1.partner.example", "partner.example"]).certificate
        match = verify_certificate_names(cert, "partner.example", "mx1.partner.example")
        assert match is not None
        self.assertEqual(match.kind, ReferenceKind.EMAIL_DOMAIN)
        self.assertEqual(match.field, NameField.SAN)

    def test_mx_hostname_by_wildcard(self) -> None:
        """
        Verify accepts a wildcard SAN naming the MX host; Hosted Verify
        does not.
        """
        cert = CA.issue(["*.hoster.example"]).certificate
        match = verify_certificate_names(cert, "partner.example", "mx7.hoster.example")
        assert match is not None
        self.assertEqual(
            (match.kind, match.presented), (ReferenceKind.MX_HOSTNAME, "*.hoster.example")
        )
        self.assertIsNone(
            verify_certificate_names(cert, "partner.example", "mx7.hoster.example", hosted=True)
        )

    def test_cn_ignored_when_san_present(self) -> None:
        """
        A certificate with SAN dNSNames never matches by its CN.
        """
        cert = CA.issue(["other.example"], common_name="partner.example").certificate
        self.assertIsNone(verify_certificate_names(cert, "partner.example", None))

    def test_cn_ignored_when_san_has_no_dns_name(self) -> None:
        """
        A certificate whose SAN holds only an IP address never matches by
        its CN either: TN200537 ("if the certificate has SAN attributes,
        only SAN is used") and RFC 6125 section 6.4.4 (no CN-ID when any
        subjectAltName identifier is presented).  Before, a SAN without
        dNSName entries counted as no SAN, and the CN matched.
        """
        cert = CA.issue(["192.0.2.25"], common_name="partner.example").certificate
        self.assertIsNone(verify_certificate_names(cert, "partner.example", None))
        self.assertIsNone(
            verify_certificate_names(cert, "partner.example", "partner.example", hosted=True)
        )

    def test_cn_used_without_san(self) -> None:
        """
        A certificate without SAN matches by its CN.
        """
        cert = CA.issue(["partner.example"], san=False).certificate
        self.assertEqual(CertificateNames.from_certificate(cert).san, ())
        match = verify_certificate_names(cert, "partner.example", None)
        assert match is not None
        self.assertEqual(match.field, NameField.CN)
        self.assertIn("CN 'partner.example' matches email domain", match.describe())

    def test_no_match(self) -> None:
        """
        A certificate naming neither the domain nor the host fails.
        """
        cert = CA.issue(["wrong.example"]).certificate
        self.assertIsNone(
            match_names(
                CertificateNames.from_certificate(cert),
                reference_identities(
                    "partner.example", "mx.partner.example", via_smtp_route=False, hosted=False
                ),
            )
        )
