"""
Tests for L{esa_tls.testing}: the certificates it makes are what their
names promise, so tests built on them test what they claim.
"""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.trial.unittest import SynchronousTestCase

from esa_tls.testing import (
    CertificateAuthority,
    expired,
    expiring_in,
    not_yet_valid,
    self_signed,
)


def _sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


class TestingHelperTests(SynchronousTestCase):
    """
    The certificate helpers.
    """

    def setUp(self) -> None:
        self.ca = CertificateAuthority.generate()

    def test_issue(self) -> None:
        """
        An issued certificate carries the names as SANs (addresses as IP
        entries), the first as CN, is signed by the CA and valid now.
        """
        issued = self.ca.issue(["mx.example.test", "192.0.2.1"])
        cert = issued.certificate
        cert.verify_directly_issued_by(self.ca.certificate)
        self.assertEqual(_sans(cert).get_values_for_type(x509.DNSName), ["mx.example.test"])
        self.assertEqual(_sans(cert).get_values_for_type(x509.IPAddress), [ip_address("192.0.2.1")])
        self.assertEqual(cert.subject.rfc4514_string(), "CN=mx.example.test")
        now = datetime.now(UTC)
        self.assertTrue(cert.not_valid_before_utc < now < cert.not_valid_after_utc)
        self.assertEqual(issued.chain_pem, self.ca.cert_pem)

    def test_broken_kinds(self) -> None:
        """
        Expired, not-yet-valid, expiring-soon, CN-only and wrong-name
        certificates are what they say.
        """
        now = datetime.now(UTC)
        self.assertLess(expired(self.ca, ["a.test"]).certificate.not_valid_after_utc, now)
        self.assertGreater(not_yet_valid(self.ca, ["a.test"]).certificate.not_valid_before_utc, now)
        soon = expiring_in(self.ca, ["a.test"], timedelta(days=3)).certificate
        self.assertLess(soon.not_valid_after_utc - now, timedelta(days=3, minutes=1))
        cn_only = self.ca.issue(["legacy.test"], san=False).certificate
        self.assertRaises(
            x509.ExtensionNotFound,
            cn_only.extensions.get_extension_for_class,
            x509.SubjectAlternativeName,
        )
        wrong = self.ca.issue(["other.test"], common_name="mx.example.test").certificate
        self.assertEqual(wrong.subject.rfc4514_string(), "CN=mx.example.test")
        self.assertEqual(_sans(wrong).get_values_for_type(x509.DNSName), ["other.test"])

    def test_client(self) -> None:
        """
        C{client=True} makes a TLS client authentication certificate.
        """
        cert = self.ca.issue(["c.test"], client=True).certificate
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(usage), [ExtendedKeyUsageOID.CLIENT_AUTH])

    def test_intermediate_chain(self) -> None:
        """
        A certificate from an intermediate comes with its chain in order:
        the intermediate, then the root.
        """
        issued = self.ca.intermediate().issue(["a.test"])
        chain = x509.load_pem_x509_certificates(issued.chain_pem)
        self.assertEqual(len(chain), 2)
        issued.certificate.verify_directly_issued_by(chain[0])
        chain[0].verify_directly_issued_by(chain[1])
        self.assertEqual(chain[1], self.ca.certificate)

    def test_self_signed(self) -> None:
        """
        A self-signed certificate is its own issuer and has no chain.
        """
        issued = self_signed(["a.test"], key_type="rsa")
        issued.certificate.verify_directly_issued_by(issued.certificate)
        self.assertEqual(issued.chain_pem, b"")

    def test_write(self) -> None:
        """
        C{write} puts the three PEM files in a directory, the key owner-only.
        """
        issued = self.ca.issue(["a.test"])
        cert, key, chain = issued.write(self.mktemp())
        with open(cert, "rb") as f:
            self.assertEqual(f.read(), issued.cert_pem)
        with open(chain, "rb") as f:
            self.assertEqual(f.read(), issued.chain_pem)
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)

    def test_oneEndOfValidityGiven(self) -> None:
        """
        A past C{not_after} alone makes an expired certificate, and a
        future C{not_before} alone a not-yet-valid one, as the parameters
        say (and as the module's own example does): the other end of the
        validity follows it instead of making an impossible period.
        """
        now = datetime.now(UTC)
        yesterday = now - timedelta(days=1)
        later = now + timedelta(days=200)
        for make in (self.ca.issue, self_signed):
            past = make(["a.test"], not_after=yesterday).certificate
            self.assertEqual(past.not_valid_after_utc, yesterday.replace(microsecond=0))
            self.assertLess(past.not_valid_before_utc, past.not_valid_after_utc)
            future = make(["a.test"], not_before=later).certificate
            self.assertEqual(future.not_valid_before_utc, later.replace(microsecond=0))
            self.assertLess(future.not_valid_before_utc, future.not_valid_after_utc)
