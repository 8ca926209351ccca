# -*- test-case-name: tests.test_tls_store -*-
"""
The C{Demo} certificate: what a listener serves until someone configures a
real one.

Like the ESA's pre-installed demonstration certificate it lets TLS be
switched on at once, for testing, but nobody can verify it: its key was made
on this machine and no CA vouches for it.  So it is generated per machine
(never shipped: a key in a package is a key everyone has), its subject says
what it is, and everything that shows it flags it insecure.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.logger import Logger

from esa_tls.config.model import CertificateConfig, Listener, TLSMode
from esa_tls.tls.certificates import CertificateError, LoadedCertificate, load_certificate

__all__ = [
    "DEMO_NAME",
    "DEMO_UNIT",
    "demo_paths",
    "demo_warning_lines",
    "ensure_demo_certificate",
    "load_demo_certificate",
    "uses_demo_with_tls",
]

log = Logger()

#: The name listeners and the CLI use for the demonstration certificate.
DEMO_NAME = "Demo"

#: The organizational unit of the Demo certificate's subject: a peer that
#: logs our certificate subject sees what it is dealing with.
DEMO_UNIT = "INSECURE demonstration certificate, not for production use"

_DEMO_ORGANIZATION = "esa_tls"
_DEMO_LIFETIME = timedelta(days=3650)


def demo_paths(data_dir: str) -> tuple[str, str]:
    """
    Where the Demo certificate and key live: C{<data_dir>/certs/demo.crt}
    and C{<data_dir>/certs/demo.key}.
    """
    directory = os.path.join(data_dir, "certs")
    return os.path.join(directory, "demo.crt"), os.path.join(directory, "demo.key")


def _write_private(path: str, data: bytes, mode: int) -> None:
    """
    Write C{data} to C{path} atomically with C{mode}: a crash leaves either
    the old file or the new one, and the key is never readable by others,
    not even for a moment.
    """
    temporary = f"{path}.new"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        os.unlink(temporary)
        raise
    os.replace(temporary, path)


def _generate(hostname: str, now: datetime) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _DEMO_ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, DEMO_UNIT),
            x509.NameAttribute(NameOID.COMMON_NAME, hostname),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + _DEMO_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _hostname_of(loaded: LoadedCertificate) -> str | None:
    names = loaded.leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def load_demo_certificate(data_dir: str, now: datetime | None = None) -> LoadedCertificate:
    """
    Load the Demo certificate already on disk, without making one; for
    tools that must not change the gateway's files.

    @raise CertificateError: there is none yet, or it is unusable.
    """
    cert_path, key_path = demo_paths(data_dir)
    if not os.path.exists(cert_path):
        raise CertificateError(
            DEMO_NAME, "not generated yet: the gateway makes it when it first starts"
        )
    config = CertificateConfig(name=DEMO_NAME, cert=cert_path, key=key_path)
    return load_certificate(config, now=now, insecure=True)


def ensure_demo_certificate(
    data_dir: str, hostname: str, now: datetime | None = None
) -> LoadedCertificate:
    """
    Load the Demo certificate, generating it first if there is none yet, or
    if the one on disk is unusable (unreadable, expired) or was made for
    another host name.  Later starts reuse it, so peers that pinned it keep
    seeing the same key.

    Runs at start-up (and on reload), before listeners accept connections:
    the key generation and the few small file operations are quick.

    @param hostname: this gateway's name (C{[system] hostname}), the
        subject CN and only SAN; C{localhost} if empty.
    """
    if now is None:
        now = datetime.now(UTC)
    hostname = hostname or "localhost"
    cert_path, key_path = demo_paths(data_dir)
    config = CertificateConfig(name=DEMO_NAME, cert=cert_path, key=key_path)
    if os.path.exists(cert_path) or os.path.exists(key_path):
        try:
            loaded = load_certificate(config, now=now, insecure=True)
        except CertificateError as e:
            log.warn(
                "The Demo certificate in {path} is unusable ({reason}); generating a new one",
                path=cert_path,
                reason=e.reason,
            )
        else:
            if _hostname_of(loaded) == hostname:
                return loaded
            log.info(
                "The Demo certificate was made for {old}; generating one for {new}",
                old=_hostname_of(loaded),
                new=hostname,
            )
    os.makedirs(os.path.dirname(cert_path), mode=0o700, exist_ok=True)
    cert_pem, key_pem = _generate(hostname, now)
    _write_private(key_path, key_pem, 0o600)
    _write_private(cert_path, cert_pem, 0o644)
    log.info(
        "Generated the insecure Demo certificate for {hostname} in {path}",
        hostname=hostname,
        path=cert_path,
    )
    return load_certificate(config, now=now, insecure=True)


def uses_demo_with_tls(listener: Listener) -> bool:
    """
    Whether C{listener} may serve the Demo certificate to a peer: it is the
    listener's certificate (or one of its SNI certificates) and TLS is on in
    at least one of its mail flow policies, or the listener is implicit TLS.
    """
    uses_demo = listener.certificate == DEMO_NAME or DEMO_NAME in listener.sni.values()
    if not uses_demo:
        return False
    return listener.implicit_tls or any(
        p.tls is not TLSMode.OFF for p in listener.policies.values()
    )


def demo_warning_lines(listener_name: str | None = None) -> list[str]:
    """
    The start-up warning for a listener with TLS enabled on the Demo
    certificate, in the ESA's words (C{certconfig} is what the ESA calls its
    certificate command; here it is the C{[certificates]} section and
    C{esa-tls certificates}).

    @param listener_name: named in the second line when given.
    """
    which = f"Listener {listener_name} uses" if listener_name else "The listener uses"
    return [
        "You have chosen to enable TLS. Please use the 'certconfig' command to "
        "ensure that there is a valid certificate configured.",
        f"{which} the demonstration certificate (Demo). You can enable TLS with "
        "the demonstration certificate for testing purposes, but it is not secure "
        "and is not recommended for general use.",
        "Configure a certificate under [certificates.NAME] and assign it with the "
        "listener's 'certificate' key (ESA: listenerconfig > edit > certificate); "
        "'esa-tls certificates' lists them.",
    ]
