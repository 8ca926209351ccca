"""
Tests for L{esa_tls.tls.certificates}: what an imported certificate must be
to be served, and the messages an administrator gets when it is not.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from esa_tls.config.model import CertificateConfig
from esa_tls.testing import (
    CertificateAuthority,
    IssuedCertificate,
    expired,
    expiring_in,
    not_yet_valid,
)
from esa_tls.tls.certificates import CertificateError, load_certificate
from tests.test_tls_support import install, write_pem


class LoadCertificateTests(SynchronousTestCase):
    """
    L{load_certificate} accepts a certificate that peers can use and refuses,
    with a reason, one that would fail in their hands.
    """

    def setUp(self) -> None:
        self.base = self.mktemp()
        os.makedirs(self.base)
        self.root = CertificateAuthority.generate()
        self.intermediate = self.root.intermediate()

    def configure(self, issued: IssuedCertificate, name: str = "main") -> CertificateConfig:
        return install(name, issued, os.path.join(self.base, name))

    def refusal(self, config: CertificateConfig) -> str:
        error = self.assertRaises(CertificateError, load_certificate, config)
        self.assertEqual(error.name, config.name)
        return error.reason

    def test_valid(self) -> None:
        """
        A valid leaf with its chain in order loads, and its description
        shows subject, names, issuer, validity, key and chain length.
        """
        issued = self.intermediate.issue(["mx.example.test", "192.0.2.7"])
        loaded = load_certificate(self.configure(issued))
        info = loaded.info()
        self.assertEqual(info.name, "main")
        self.assertEqual(info.subject, "CN=mx.example.test")
        self.assertEqual(info.sans, ("DNS:mx.example.test", "IP:192.0.2.7"))
        self.assertEqual(info.issuer, "CN=esa_tls Test Intermediate CA,O=esa_tls tests")
        self.assertEqual(info.not_after, issued.certificate.not_valid_after_utc)
        self.assertEqual(info.key_description, "EC P-256 256 bits")
        self.assertEqual(info.chain_length, 2)
        self.assertFalse(info.insecure)
        self.assertEqual(info.warnings, ())
        self.assertEqual(len(info.fingerprint.split(":")), 32)

    def test_rsa(self) -> None:
        """
        RSA keys are described with their size.
        """
        loaded = load_certificate(self.configure(self.root.issue(["a.test"], key_type="rsa")))
        self.assertEqual(loaded.info().key_description, "RSA 2048 bits")

    def test_fullchain_file(self) -> None:
        """
        Certificates after the leaf in the C{cert} file are the chain, as in
        the C{fullchain.pem} files ACME clients write.
        """
        issued = self.intermediate.issue(["mx.example.test"])
        cert = write_pem(os.path.join(self.base, "full.pem"), issued.cert_pem + issued.chain_pem)
        _, key, _ = issued.write(os.path.join(self.base, "k"))
        loaded = load_certificate(CertificateConfig("full", cert=cert, key=key))
        self.assertEqual(len(loaded.chain), 2)

    def test_cn_only(self) -> None:
        """
        A legacy certificate without subject alternative names still loads;
        it simply has none to show.
        """
        loaded = load_certificate(self.configure(self.root.issue(["legacy.test"], san=False)))
        self.assertEqual(loaded.info().sans, ())
        self.assertEqual(loaded.info().subject, "CN=legacy.test")

    def test_key_mismatch(self) -> None:
        """
        A key that does not belong to the certificate is refused.
        """
        one = self.configure(self.root.issue(["a.test"]), "one")
        two = self.configure(self.root.issue(["a.test"]), "two")
        reason = self.refusal(CertificateConfig("mixed", cert=one.cert, key=two.key))
        self.assertEqual(reason, "the private key does not match the certificate")

    def test_chain_out_of_order(self) -> None:
        """
        A chain with the root before the intermediate is refused, naming the
        certificate whose issuer is not next.
        """
        issued = self.intermediate.issue(["mx.example.test"])
        config = self.configure(issued)
        write_pem(config.chain, self.root.cert_pem + self.intermediate.cert_pem)
        reason = self.refusal(config)
        self.assertIn("the chain is not in order", reason)
        self.assertIn("the certificate (CN=mx.example.test) is not issued by", reason)

    def test_chain_foreign(self) -> None:
        """
        A chain that does not vouch for the leaf at all (another CA's) is
        refused the same way.
        """
        issued = self.root.issue(["mx.example.test"])
        config = self.configure(issued)
        write_pem(config.chain, CertificateAuthority.generate("Other CA").cert_pem)
        self.assertIn("the chain is not in order", self.refusal(config))

    def test_expired(self) -> None:
        """
        An expired leaf is refused with its expiry date.
        """
        issued = expired(self.root, ["old.test"])
        reason = self.refusal(self.configure(issued))
        self.assertTrue(reason.startswith("the certificate expired on "), reason)
        self.assertIn(issued.certificate.not_valid_after_utc.strftime("%Y-%m-%d"), reason)

    def test_not_yet_valid(self) -> None:
        """
        A leaf whose validity has not started is refused.
        """
        reason = self.refusal(self.configure(not_yet_valid(self.root, ["new.test"])))
        self.assertTrue(reason.startswith("the certificate is not valid until "), reason)

    def test_expiring_soon(self) -> None:
        """
        A leaf expiring within 30 days loads, with a warning saying when.
        """
        issued = expiring_in(self.root, ["soon.test"], timedelta(days=10, hours=1))
        warnings = load_certificate(self.configure(issued)).info().warnings
        self.assertEqual(len(warnings), 1)
        self.assertTrue(warnings[0].startswith("expires in 10 days, on "), warnings)

    def test_expiry_warning_is_current(self) -> None:
        """
        The warning is computed when the certificate is described, so a
        long-running gateway reports expiry as it approaches.
        """
        loaded = load_certificate(self.configure(self.root.issue(["a.test"])))
        later = datetime.now(UTC) + timedelta(days=80)
        self.assertTrue(loaded.info(later).warnings[0].startswith("expires in 9 days"))

    def test_readable_key(self) -> None:
        """
        A key file other users can read loads, with a warning.
        """
        config = self.configure(self.root.issue(["a.test"]))
        os.chmod(config.key, 0o644)
        (warning,) = load_certificate(config).info().warnings
        self.assertEqual(warning, f"key file {config.key} can be read by other users (mode 0644)")

    def test_missing_file(self) -> None:
        """
        A file that cannot be read is refused, naming it.
        """
        config = CertificateConfig("gone", cert=os.path.join(self.base, "nope.pem"), key="x")
        reason = self.refusal(config)
        self.assertIn("cannot read certificate file", reason)
        self.assertIn("nope.pem", reason)

    def test_not_configured(self) -> None:
        """
        An entry without a certificate file is refused.
        """
        self.assertEqual(
            self.refusal(CertificateConfig("empty")), "no certificate file is configured"
        )

    def test_garbage(self) -> None:
        """
        Files that hold no PEM certificate or key are refused.
        """
        config = self.configure(self.root.issue(["a.test"]))
        junk = write_pem(os.path.join(self.base, "junk"), b"not a certificate\n")
        self.assertIn(
            "holds no PEM certificate",
            self.refusal(CertificateConfig("x", cert=junk, key=config.key)),
        )
        self.assertIn(
            "holds no usable PEM private key",
            self.refusal(CertificateConfig("x", cert=config.cert, key=junk)),
        )

    def test_encrypted_key(self) -> None:
        """
        A passphrase-protected key is refused: the gateway cannot ask for
        the passphrase at each start.
        """
        issued = self.root.issue(["a.test"])
        config = self.configure(issued)
        key = serialization.load_pem_private_key(issued.key_pem, None)
        write_pem(
            config.key,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
        )
        self.assertIn("is encrypted", self.refusal(config))
