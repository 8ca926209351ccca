"""
Helpers for testing code that uses esa_tls: certificates made on the spot.

TLS tests need certificates, and checked-in ones expire, leak into real
deployments and cannot show the broken cases (an expired leaf, a chain out of
order, a name that does not match).  L{CertificateAuthority} makes a private
CA whose certificates are good for exactly what a test asks:

    ca = CertificateAuthority.generate()
    good = ca.issue(["mx.example.com"])
    expired = ca.issue(["mx.example.com"], not_after=datetime.now(UTC) - timedelta(days=1))
    cert_path, key_path, chain_path = good.write(self.mktemp())

Everything here uses C{cryptography} only and never touches the network.
Keys are small and fast (EC P-256 unless RSA is asked for), never for
production use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from typing import Literal

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateAuthority",
    "IssuedCertificate",
    "KeyType",
    "expired",
    "expiring_in",
    "not_yet_valid",
    "self_signed",
]

KeyType = Literal["ec", "rsa"]

_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

#: How far back a fresh certificate's validity starts, so that small clock
#: differences between the test and the TLS library never make it "not yet
#: valid".
_BACKDATE = timedelta(minutes=5)

#: How long a leaf certificate is valid when the caller does not say.
_LIFETIME = timedelta(days=90)


def _validity(not_before: datetime | None, not_after: datetime | None) -> tuple[datetime, datetime]:
    """
    The validity period for the ends given.  When only one end is given the
    other follows it: a past C{not_after} alone makes an expired
    certificate and a future C{not_before} alone a not-yet-valid one,
    rather than a period that ends before it starts.
    """
    now = datetime.now(UTC)
    if not_before is None:
        not_before = now - _BACKDATE
        if not_after is not None and not_after <= not_before:
            not_before = not_after - _LIFETIME
    if not_after is None:
        not_after = max(now, not_before) + _LIFETIME
    return not_before, not_after


def _new_key(key_type: KeyType) -> _PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: _PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _general_name(name: str) -> x509.GeneralName:
    """
    A SAN entry: an address literal becomes an IPAddress entry, since
    clients match IP addresses only against those.
    """
    try:
        return x509.IPAddress(ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _subject(common_name: str | None, organization: str | None = None) -> x509.Name:
    attributes = []
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if common_name is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


@frozen
class IssuedCertificate:
    """
    A certificate with its key, as PEM bytes, ready to be written to files
    that a L{esa_tls.config.model.CertificateConfig} can name.

    @ivar cert_pem: the leaf certificate.
    @ivar key_pem: its private key (PKCS#8, unencrypted).
    @ivar chain_pem: the intermediate and root certificates that vouch for
        the leaf, leaf's issuer first; empty for a self-signed certificate.
    @ivar certificate: the leaf as a C{cryptography} object, for assertions.
    """

    cert_pem: bytes
    key_pem: bytes
    chain_pem: bytes
    certificate: x509.Certificate

    def write(self, directory: str) -> tuple[str, str, str]:
        """
        Write the three PEM files into C{directory} (created if missing).
        The key file is mode 0600, like a real deployment's, so code that
        checks permissions sees what it would see in production.

        @return: the paths C{(cert, key, chain)}.  The chain file exists
            even when empty, so it can always be configured.
        """
        os.makedirs(directory, exist_ok=True)
        cert_path = os.path.join(directory, "cert.pem")
        key_path = os.path.join(directory, "key.pem")
        chain_path = os.path.join(directory, "chain.pem")
        with open(cert_path, "wb") as f:
            f.write(self.cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.key_pem)
        with open(chain_path, "wb") as f:
            f.write(self.chain_pem)
        return cert_path, key_path, chain_path


#: The key usage of every test CA, root and intermediate alike.
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@frozen
class CertificateAuthority:
    """
    A private certificate authority for tests.

    @ivar cert_pem: the CA certificate; give it to clients as their trust
        anchor, or to a listener policy as C{client_ca}.
    @ivar certificate: the same, as a C{cryptography} object.
    @ivar key: the CA's private key.
    @ivar chain_pem: the certificates above this CA (its issuer first),
        empty for a root.
    """

    cert_pem: bytes
    certificate: x509.Certificate
    key: _PrivateKey
    chain_pem: bytes = b""

    @classmethod
    def generate(cls, name: str = "esa_tls Test CA") -> CertificateAuthority:
        """
        Make a new self-signed root CA, valid from a few minutes ago for ten
        years.
        """
        key = _new_key("ec")
        subject = _subject(name, "esa_tls tests")
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert_pem=_cert_pem(cert), certificate=cert, key=key)

    def intermediate(self, name: str = "esa_tls Test Intermediate CA") -> CertificateAuthority:
        """
        Make a CA signed by this one, so tests can build a chain of more than
        one certificate (and get its order wrong on purpose).
        """
        key = _new_key("ec")
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_subject(name, "esa_tls tests"))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + timedelta(days=1825))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return CertificateAuthority(
            cert_pem=_cert_pem(cert),
            certificate=cert,
            key=key,
            chain_pem=self.cert_pem + self.chain_pem,
        )

    def issue(
        self,
        names: Sequence[str],
        *,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        key_type: KeyType = "ec",
        client: bool = False,
        common_name: str | None = None,
        san: bool = True,
    ) -> IssuedCertificate:
        """
        Issue an end-entity certificate.

        @param names: DNS names (or IP address literals) for the subject
            alternative name extension; the first is also the CN unless
            C{common_name} is given.
        @param not_before: start of validity; default a few minutes ago
            (90 days before a C{not_after} that is already past).  A future
            value makes a not-yet-valid certificate.
        @param not_after: end of validity; default 90 days after now (or
            after a future C{not_before}).  A past value makes an expired
            certificate.
        @param key_type: C{"ec"} (P-256) or C{"rsa"} (2048 bits).
        @param client: issue for TLS client authentication instead of server
            authentication.
        @param common_name: the subject CN, overriding C{names[0]}.
        @param san: C{False} leaves out the subject alternative names, making
            a legacy CN-only certificate that modern clients refuse to match.
        """
        key = _new_key(key_type)
        not_before, not_after = _validity(not_before, not_after)
        cn = common_name if common_name is not None else (names[0] if names else None)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_subject(cn))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if san and names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return IssuedCertificate(
            cert_pem=_cert_pem(cert),
            key_pem=_key_pem(key),
            chain_pem=self.cert_pem + self.chain_pem,
            certificate=cert,
        )


def self_signed(
    names: Sequence[str],
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    key_type: KeyType = "ec",
    common_name: str | None = None,
    san: bool = True,
) -> IssuedCertificate:
    """
    A self-signed server certificate: what a gateway configured with no
    real certificate, or the Demo one, shows its peers.  Parameters as for
    L{CertificateAuthority.issue}; the chain is empty.
    """
    key = _new_key(key_type)
    not_before, not_after = _validity(not_before, not_after)
    cn = common_name if common_name is not None else (names[0] if names else None)
    subject = _subject(cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if san and names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
    cert = builder.sign(key, hashes.SHA256())
    return IssuedCertificate(
        cert_pem=_cert_pem(cert), key_pem=_key_pem(key), chain_pem=b"", certificate=cert
    )


def expired(ca: CertificateAuthority, names: Sequence[str]) -> IssuedCertificate:
    """
    A certificate whose validity ended yesterday.
    """
    now = datetime.now(UTC)
    return ca.issue(names, not_before=now - timedelta(days=60), not_after=now - timedelta(days=1))


def not_yet_valid(ca: CertificateAuthority, names: Sequence[str]) -> IssuedCertificate:
    """
    A certificate whose validity starts tomorrow.
    """
    now = datetime.now(UTC)
    return ca.issue(names, not_before=now + timedelta(days=1), not_after=now + timedelta(days=60))


def expiring_in(
    ca: CertificateAuthority, names: Sequence[str], delta: timedelta
) -> IssuedCertificate:
    """
    A valid certificate whose validity ends C{delta} from now, e.g. to test
    the "expires within 30 days" warning.
    """
    now = datetime.now(UTC)
    return ca.issue(names, not_before=now - timedelta(days=60), not_after=now + delta)
