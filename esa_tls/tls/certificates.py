# -*- test-case-name: tests.test_tls_certificates -*-
"""
Loading a named certificate from PEM files and deciding whether it may be
served.

A certificate that cannot work must be refused when it is loaded, not
discovered by a peer in the middle of a handshake: a key that does not match
the leaf makes every handshake fail, a chain out of order makes strict
peers (and every C{-verify} mode on the ESA) refuse us, and an expired leaf
makes verifying peers give up on TLS altogether.  So L{load_certificate}
checks all of that and raises L{CertificateError} with a sentence an
administrator can act on; soft problems (expiring soon, a key file others can
read) become warnings carried with the certificate.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise

from attrs import frozen
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from OpenSSL import SSL

from esa_tls.config.model import CertificateConfig

__all__ = [
    "EXPIRY_WARNING",
    "MAX_PEM_FILE",
    "CertificateError",
    "CertificateInfo",
    "CertificateValidityError",
    "LoadedCertificate",
    "PrivateKey",
    "format_time",
    "load_certificate",
    "read_pem_file",
    "validate_certificate",
]

PrivateKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)

#: A leaf expiring sooner than this is served, with a warning: there is
#: still time to replace it, but someone has to do it now.
EXPIRY_WARNING = timedelta(days=30)

_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


class CertificateError(Exception):
    """
    A certificate cannot be served.

    @ivar name: the certificate's configured name.
    @ivar reason: why, in words for the administrator.
    @ivar setting: the key of C{[certificates.NAME]} whose file is at
        fault: C{"cert"}, C{"key"} or C{"chain"}.
    """

    def __init__(self, name: str, reason: str, setting: str = "cert") -> None:
        super().__init__(f"certificate {name!r}: {reason}")
        self.name = name
        self.reason = reason
        self.setting = setting


class CertificateValidityError(CertificateError):
    """
    A certificate outside its validity period (expired, or not valid yet).

    Unlike the other refusals, this is not a mistake in the configuration:
    time makes it, on a running gateway, and it is what the certificate
    expiry alerts are for.  So it does not stop start-up (which would turn
    an expired certificate into a total mail outage at the next restart);
    the certificate is still refused and its listener offers no TLS with
    it.

    @ivar certificate: what was refused, when L{load_certificate} read it
        (so that the expiry alerts can still describe it), else C{None}.
    """

    certificate: LoadedCertificate | None = None


def format_time(when: datetime) -> str:
    """
    The one way certificate times are shown (UTC, ISO 8601, second
    precision), so logs, the CLI and tests agree.
    """
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@frozen
class CertificateInfo:
    """
    What an administrator needs to know about one certificate, as shown by
    C{esa-tls certificates} and logged at start-up.

    @ivar subject: the subject distinguished name (RFC 4514 string).
    @ivar sans: subject alternative names, C{"DNS:mx.example.com"} or
        C{"IP:192.0.2.1"}.
    @ivar key_type: C{"EC"}, C{"RSA"}, C{"Ed25519"} or C{"Ed448"}.
    @ivar key_size: the key size in bits.
    @ivar key_detail: the curve for EC keys (C{"P-256"}), else C{""}.
    @ivar insecure: C{True} for the Demo certificate: its key is generated
        on this machine with no CA behind it, so no peer can verify it.
    @ivar warnings: problems that do not stop it being served.
    @ivar fingerprint: SHA-256 of the leaf, colon-separated hex, the way
        peers' logs show it.
    @ivar chain_length: how many certificates are sent after the leaf.
    """

    name: str
    subject: str
    sans: tuple[str, ...]
    issuer: str
    not_before: datetime
    not_after: datetime
    key_type: str
    key_size: int
    key_detail: str
    insecure: bool
    warnings: tuple[str, ...]
    fingerprint: str
    chain_length: int

    @property
    def key_description(self) -> str:
        """
        The key as one phrase: C{"EC P-256 256 bits"}, C{"RSA 2048 bits"}.
        """
        parts = [self.key_type]
        if self.key_detail:
            parts.append(self.key_detail)
        parts.append(f"{self.key_size} bits")
        return " ".join(parts)


@frozen
class LoadedCertificate:
    """
    A checked certificate ready to be put into TLS contexts.  Each load makes
    a new object, so holders can tell by identity whether what they built
    from is still current.

    @ivar chain: the certificates sent after the leaf, in order.
    @ivar warnings: warnings that do not depend on the time (a key file
        others can read); L{info} adds the time-dependent ones.
    """

    name: str
    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: PrivateKey
    insecure: bool = False
    warnings: tuple[str, ...] = ()

    def info(self, now: datetime | None = None) -> CertificateInfo:
        """
        Describe this certificate.  Time-dependent warnings are computed for
        C{now} (default: the current time), so a long-running gateway's
        listing says "expires in 3 days" and not what was true at start-up.
        """
        if now is None:
            now = datetime.now(UTC)
        key_type, key_size, key_detail = _describe_key(self.key)
        warnings = [*self.warnings, *_time_warnings(self.leaf, self.chain, now)]
        return CertificateInfo(
            name=self.name,
            subject=self.leaf.subject.rfc4514_string(),
            sans=_sans(self.leaf),
            issuer=self.leaf.issuer.rfc4514_string(),
            not_before=self.leaf.not_valid_before_utc,
            not_after=self.leaf.not_valid_after_utc,
            key_type=key_type,
            key_size=key_size,
            key_detail=key_detail,
            insecure=self.insecure,
            warnings=tuple(warnings),
            fingerprint=self.leaf.fingerprint(hashes.SHA256()).hex(":").upper(),
            chain_length=len(self.chain),
        )


def _describe_key(key: PrivateKey) -> tuple[str, int, str]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "EC", key.curve.key_size, _CURVE_NAMES.get(key.curve.name, key.curve.name)
    if isinstance(key, rsa.RSAPrivateKey):
        return "RSA", key.key_size, ""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "Ed25519", 256, ""
    return "Ed448", 456, ""


def _sans(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    names = [f"DNS:{n}" for n in ext.get_values_for_type(x509.DNSName)]
    names.extend(f"IP:{a}" for a in ext.get_values_for_type(x509.IPAddress))
    names.extend(f"email:{e}" for e in ext.get_values_for_type(x509.RFC822Name))
    return tuple(names)


def _time_warnings(
    leaf: x509.Certificate, chain: Sequence[x509.Certificate], now: datetime
) -> list[str]:
    warnings = []
    remaining = leaf.not_valid_after_utc - now
    if remaining < timedelta(0):
        warnings.append(f"expired on {format_time(leaf.not_valid_after_utc)}")
    elif remaining < EXPIRY_WARNING:
        warnings.append(
            f"expires in {remaining.days} days, on {format_time(leaf.not_valid_after_utc)}"
        )
    for cert in chain:
        if cert.not_valid_after_utc < now:
            warnings.append(
                f"chain certificate {cert.subject.rfc4514_string()} expired on "
                f"{format_time(cert.not_valid_after_utc)}"
            )
    return warnings


def _same_public_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def _openssl_refusal(leaf: x509.Certificate, key: PrivateKey) -> str | None:
    """
    Why OpenSSL would refuse to put C{leaf} and C{key} into a server
    context, or C{None}: its security level refuses small keys (RSA under
    2048 bits) and weak signatures, and the listener's context is built
    with the same library at a client's STARTTLS, too late to say so.
    """
    context = SSL.Context(SSL.TLS_METHOD)
    try:
        context.use_certificate(leaf)
        context.use_privatekey(key)
    except SSL.Error as e:
        reasons = [str(part[2]) for part in e.args[0] if len(part) == 3] if e.args else []
        return "; ".join(reasons) or "refused"
    return None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def validate_certificate(
    name: str,
    leaf: x509.Certificate,
    chain: Sequence[x509.Certificate],
    key: PrivateKey,
    now: datetime | None = None,
) -> list[str]:
    """
    Decide whether a leaf, its chain and key may be served.

    @raise CertificateError: the key does not belong to the leaf, OpenSSL
        refuses to serve them (a key too small), the chain is not in issuing
        order (each certificate signed by the next), or the
        leaf is expired or not yet valid.
    @return: warnings (expiring within L{EXPIRY_WARNING}, an expired chain
        certificate).
    """
    if now is None:
        now = datetime.now(UTC)
    if not _same_public_key(leaf, key):
        for position, cert in enumerate(chain, start=1):
            if _same_public_key(cert, key):
                # The leaf is further down: the file is in the wrong
                # order, and the key is fine.
                raise CertificateError(
                    name,
                    f"the chain is not in order: the private key belongs to chain "
                    f"certificate {position} ({cert.subject.rfc4514_string()}), not to the "
                    f"first certificate ({leaf.subject.rfc4514_string()}); list the "
                    f"certificate first, then the issuer of each certificate right after it",
                )
        raise CertificateError(name, "the private key does not match the certificate", "key")
    refusal = _openssl_refusal(leaf, key)
    if refusal is not None:
        key_type, key_size, key_detail = _describe_key(key)
        described = " ".join(part for part in (key_type, key_detail, f"{key_size} bits") if part)
        raise CertificateError(
            name,
            f"OpenSSL refuses to serve it ({refusal}): its key is {described}; "
            "use RSA 2048 bits or more, or EC P-256",
        )
    ordered = [leaf, *chain]
    for position, (cert, issuer) in enumerate(pairwise(ordered)):
        if not _issued_by(cert, issuer):
            what = "the certificate" if position == 0 else f"chain certificate {position}"
            raise CertificateError(
                name,
                f"the chain is not in order: {what} ({cert.subject.rfc4514_string()}) "
                f"is not issued by chain certificate {position + 1} "
                f"({issuer.subject.rfc4514_string()}); list the issuer of each "
                f"certificate right after it",
                "chain",
            )
    if leaf.not_valid_after_utc < now:
        raise CertificateValidityError(
            name, f"the certificate expired on {format_time(leaf.not_valid_after_utc)}"
        )
    if leaf.not_valid_before_utc > now:
        raise CertificateValidityError(
            name,
            f"the certificate is not valid until {format_time(leaf.not_valid_before_utc)}",
        )
    return _time_warnings(leaf, chain, now)


def _setting(what: str) -> str:
    """
    The C{[certificates.NAME]} key of a file, from what it holds.
    """
    return "cert" if what == "certificate" else what


#: The largest certificate, key or chain file read: a chain of a few dozen
#: certificates is well under it.
MAX_PEM_FILE = 1024 * 1024


def read_pem_file(path: str) -> bytes:
    """
    Read a certificate, key or chain file, refusing what cannot be one: a
    FIFO or device (C{/dev/zero}, which would never end, a FIFO, which
    would wait for a writer) or a file over L{MAX_PEM_FILE}.

    @raise OSError: the file cannot be read, or is no such file; its
        C{strerror} says why.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if info.st_size > MAX_PEM_FILE:
            raise OSError(errno.EFBIG, f"larger than {MAX_PEM_FILE // 1024} KiB")
        chunks = []
        left = MAX_PEM_FILE + 1
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > MAX_PEM_FILE:
            raise OSError(errno.EFBIG, f"larger than {MAX_PEM_FILE // 1024} KiB")
        return data
    finally:
        os.close(fd)


def _read(name: str, what: str, path: str) -> bytes:
    if not path:
        raise CertificateError(name, f"no {what} file is configured", _setting(what))
    try:
        return read_pem_file(path)
    except OSError as e:
        raise CertificateError(
            name, f"cannot read {what} file {path}: {e.strerror}", _setting(what)
        ) from e


def _load_certs(name: str, what: str, path: str) -> list[x509.Certificate]:
    data = _read(name, what, path)
    if not data.strip():
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CertificateError(
            name, f"{what} file {path} holds no PEM certificate", _setting(what)
        ) from e


def _load_key(name: str, path: str) -> tuple[PrivateKey, list[str]]:
    data = _read(name, "key", path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as e:
        raise CertificateError(
            name,
            f"the key in {path} is encrypted; the gateway needs an unencrypted key file",
            "key",
        ) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CertificateError(
            name, f"key file {path} holds no usable PEM private key", "key"
        ) from e
    if not isinstance(key, PrivateKey):
        raise CertificateError(
            name, f"the key in {path} is of a type TLS servers cannot use", "key"
        )
    warnings = []
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = 0
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(f"key file {path} can be read by other users (mode {mode:04o})")
    return key, warnings


def load_certificate(
    config: CertificateConfig, now: datetime | None = None, insecure: bool = False
) -> LoadedCertificate:
    """
    Read and check the files named by C{config}.

    The C{cert} file holds the leaf first; any certificates after it (a
    "fullchain" file) are taken as the start of the chain, followed by those
    in the optional C{chain} file.

    @param insecure: mark the result as the insecure Demo certificate.
    @raise CertificateError: the files cannot be read or parsed, or
        L{validate_certificate} refuses them.
    """
    certs = _load_certs(config.name, "certificate", config.cert)
    if not certs:
        raise CertificateError(config.name, f"certificate file {config.cert} is empty")
    chain = certs[1:]
    if config.chain:
        chain.extend(_load_certs(config.name, "chain", config.chain))
    key, key_warnings = _load_key(config.name, config.key)
    loaded = LoadedCertificate(
        name=config.name,
        leaf=certs[0],
        chain=tuple(chain),
        key=key,
        insecure=insecure,
        warnings=tuple(key_warnings),
    )
    try:
        validate_certificate(config.name, certs[0], chain, key, now)
    except CertificateValidityError as e:
        e.certificate = loaded
        raise
    except CertificateError as e:
        if e.setting == "chain" and not config.chain:
            # The chain came from the cert file ("fullchain"): that is the
            # file to fix.
            raise CertificateError(config.name, e.reason, "cert") from None
        raise
    return loaded
