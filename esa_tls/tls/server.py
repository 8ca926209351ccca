# -*- test-case-name: tests.test_tls_server -*-
"""
Server-side TLS for a listener: the pyOpenSSL contexts, certificate choice
by SNI, and what the session may learn about the client's certificate.

A listener's TLS settings are fixed (protocol floor, ciphers, client
certificate mode) but its certificates are not: a reload may replace them at
any moment.  So L{ServerConnectionCreator} builds no context up front that
it keeps for ever; at each handshake it asks the store for the certificate
as it is now and reuses a context only while that certificate is current.
Connections already running keep the context they started with, so a
reload drops nobody.

Client certificates follow the ESA's "Verify Client Certificate": with
Preferred TLS a client without a certificate may go on, but one with an
I{invalid} certificate must be refused.  OpenSSL can only fail the
handshake, which would refuse the first kind too, so in the request mode
the verify callback records each error and lets the handshake finish; the
session then asks L{peer_certificate_status} and decides.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from esa_tls.config.model import Listener
from esa_tls.tls.certificates import LoadedCertificate
from esa_tls.tls.verifyerrors import VERIFY_ERROR_TEXTS
from esa_tls.values import TLSInfo

__all__ = [
    "DEFAULT_TLS12_CIPHERS",
    "ClientCertStatus",
    "ClientCertificates",
    "ServerConnectionCreator",
    "TLSConfigurationError",
    "peer_certificate_status",
    "tls_info",
]

log = Logger()

#: Cipher suites for TLS 1.2 when the listener sets none: forward-secret
#: ECDHE key exchange and AEAD ciphers only (Mozilla's "intermediate" list
#: without finite-field DHE).  TLS 1.3 suites are all AEAD and ECDHE or
#: better, so OpenSSL's defaults are kept for it.
DEFAULT_TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

#: Added to the defaults only when a listener explicitly enables a protocol
#: older than TLS 1.2, which has no AEAD suites: without them such a listener
#: could not complete a single old handshake.
_LEGACY_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-RSA-AES256-SHA",
    ]
)

_PROTOCOLS = {
    "TLSV1": SSL.TLS1_VERSION,
    "TLSV1.0": SSL.TLS1_VERSION,
    "TLSV1.1": SSL.TLS1_1_VERSION,
    "TLSV1.2": SSL.TLS1_2_VERSION,
    "TLSV1.3": SSL.TLS1_3_VERSION,
}

#: How long a TLS session may be resumed, in seconds.
_SESSION_TIMEOUT = 3600

#: How many client certificate verification results a creator remembers
#: for resumed sessions (see L{_VerificationLog}).
_VERIFICATION_LOG_SIZE = 10000


class TLSConfigurationError(ValueError):
    """
    A listener's TLS settings cannot be put into effect (an unknown protocol
    name, a cipher string OpenSSL rejects, an unreadable client CA file).
    """


class ClientCertificates(enum.Enum):
    """
    Whether a listener asks TLS clients for a certificate.

    @cvar NONE: never asked; clients send none.
    @cvar REQUEST: asked for and verified, but the handshake succeeds
        whatever happens; the session reads the outcome from
        L{peer_certificate_status} (ESA Preferred + Verify Client
        Certificate).
    @cvar REQUIRE: a certificate that verifies against the client CA is
        needed for the handshake to succeed (ESA Required + Verify Client
        Certificate).
    """

    NONE = "none"
    REQUEST = "request"
    REQUIRE = "require"


@frozen
class ClientCertStatus:
    """
    What the TLS handshake established about the client's certificate.

    @ivar presented: the client sent a certificate.
    @ivar verified: it chains to the configured client CA and is valid now.
        Never C{True} when not C{presented}.
    @ivar subject: its subject (RFC 4514 string), for logs and the
        C{Received:} header, or C{None}.
    @ivar error: why it did not verify, or C{None}.
    """

    presented: bool
    verified: bool
    subject: str | None = None
    error: str | None = None


class _VerificationLog:
    """
    Remembers, by certificate fingerprint, how each client certificate fared
    in full handshakes.

    A resumed session skips certificate verification, and pyOpenSSL cannot
    tell us what OpenSSL recorded in the session.  Without this log a client
    whose invalid certificate was let through in the request mode could
    resume that session and look verified.  A session can only be resumed on
    a context of the creator that made it (each context has its own session
    cache and ticket keys), so the creator's log always saw its full
    handshake, unless the entry was evicted, which reads as unverified.
    """

    def __init__(self, size: int = _VERIFICATION_LOG_SIZE) -> None:
        self._size = size
        self._results: OrderedDict[bytes, str | None] = OrderedDict()

    def record(self, fingerprint: bytes, error: str | None) -> None:
        self._results[fingerprint] = error
        self._results.move_to_end(fingerprint)
        while len(self._results) > self._size:
            self._results.popitem(last=False)

    def lookup(self, fingerprint: bytes) -> tuple[bool, str | None]:
        """
        @return: C{(known, error)}.
        """
        if fingerprint not in self._results:
            return False, None
        return True, self._results[fingerprint]


class _ServerConnection(SSL.Connection):
    """
    A server TLS connection that carries what its verify callback saw.

    @ivar esa_checked: the verify callback ran, i.e. the client's
        certificate was verified in this handshake (not resumed).
    @ivar esa_errors: the verification errors, in the order reported.
    @ivar esa_log: the creator's L{_VerificationLog}, or C{None} when no
        client certificate is asked for.
    """

    def __init__(self, context: SSL.Context, verification_log: _VerificationLog | None) -> None:
        super().__init__(context, None)
        self.esa_checked = False
        self.esa_errors: list[str] = []
        self.esa_log = verification_log


def _fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def _verify_error(errno: int) -> str:
    return VERIFY_ERROR_TEXTS.get(errno, f"certificate verification error {errno}")


def _protocol_range(protocols: tuple[str, ...]) -> tuple[int, int]:
    if not protocols:
        raise TLSConfigurationError("tls_protocols is empty: no TLS version is enabled")
    versions = []
    for name in protocols:
        try:
            versions.append(_PROTOCOLS[name.upper()])
        except KeyError:
            raise TLSConfigurationError(
                f"unknown TLS protocol {name!r} in tls_protocols "
                f"(known: TLSv1, TLSv1.1, TLSv1.2, TLSv1.3)"
            ) from None
    return min(versions), max(versions)


def _session_id_context(listener: Listener, mode: ClientCertificates) -> bytes:
    """
    One session ID context per listener and client certificate mode, the
    same for all of a listener's certificates, so that a session survives
    the SNI context switch but never crosses into a stricter mode.
    """
    return hashlib.sha256(f"esa_tls:{listener.name}:{mode.value}".encode()).digest()[:32]


#: A host name's letters, digits, hyphens and underscores, in dot-separated
#: labels.
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\Z")


def _sni_lookup(sni: Mapping[str, str], server_name: str) -> str | None:
    """
    The certificate name for C{server_name}: an exact (case-insensitive)
    key, else the nearest C{.parent.domain} or C{*.parent.domain} key, as
    Postfix's C{tls_server_sni_maps} does.
    """
    name = server_name.lower().rstrip(".")
    if not _HOST_NAME.match(name):
        # OpenSSL lets a client send any bytes but NUL: such a name is no
        # host name and maps to nothing (and never reaches a log line).
        return None
    table = {key.lower().rstrip("."): value for key, value in sni.items()}
    if name in table:
        return table[name]
    labels = name.split(".")
    for i in range(1, len(labels)):
        parent = ".".join(labels[i:])
        for key in (f".{parent}", f"*.{parent}"):
            if key in table:
                return table[key]
    return None


@implementer(IOpenSSLServerConnectionCreator)
class ServerConnectionCreator:
    """
    Makes the server side of each TLS connection on one listener.

    Give it to C{TLSMemoryBIOFactory} (implicit TLS) or to
    C{transport.startTLS} (STARTTLS).  Obtain one from
    L{esa_tls.tls.store.CertificateStore.server_creator}.

    @ivar listener: the L{Listener} whose settings it applies.
    @ivar client_certificates: the L{ClientCertificates} mode.
    """

    def __init__(
        self,
        listener: Listener,
        lookup: Callable[[str], LoadedCertificate | None],
        client_ca: str | None = None,
        client_certificates: ClientCertificates = ClientCertificates.NONE,
    ) -> None:
        """
        @param lookup: returns the current certificate of a name, or
            C{None} if the store has none usable; called at each handshake.
        @param client_ca: path of a PEM file of the CAs client certificates
            must chain to; C{None}: the system's trusted CAs (the ESA's
            system CA list), when C{client_certificates} is not C{NONE}.
        @raise TLSConfigurationError: the settings cannot work.
        """
        self.listener = listener
        self.client_certificates = client_certificates
        self._lookup = lookup
        self._client_ca = client_ca
        self._min_version, self._max_version = _protocol_range(listener.tls_protocols)
        self._ciphers = listener.tls_ciphers or DEFAULT_TLS12_CIPHERS
        if not listener.tls_ciphers and self._min_version < SSL.TLS1_2_VERSION:
            # OpenSSL 3 refuses the SHA-1 handshake signatures of TLS < 1.2
            # above security level 0; the listener asked for them.
            self._ciphers = f"{DEFAULT_TLS12_CIPHERS}:{_LEGACY_CIPHERS}:@SECLEVEL=0"
        self._session_id = _session_id_context(listener, client_certificates)
        self._verification_log = (
            None if client_certificates is ClientCertificates.NONE else _VerificationLog()
        )
        self._contexts: dict[str, tuple[LoadedCertificate, SSL.Context]] = {}
        self._fallback: dict[str, LoadedCertificate] = {}
        # Build the default context now: bad settings fail at start-up, not
        # at a client's first STARTTLS.
        self._context_for(listener.certificate)

    def _current(self, name: str) -> LoadedCertificate | None:
        """
        The certificate to serve as C{name}: the store's current one, or, if
        the store no longer has it (removed from the configuration), the
        last one this creator served, so a listener never loses TLS.
        """
        loaded = self._lookup(name)
        if loaded is not None:
            self._fallback[name] = loaded
            return loaded
        return self._fallback.get(name)

    def _context_for(self, name: str) -> SSL.Context:
        """
        The context serving certificate C{name}, rebuilt when the store has
        a new certificate under that name.

        @raise TLSConfigurationError: no certificate of that name was ever
            available.
        """
        loaded = self._current(name)
        if loaded is None:
            raise TLSConfigurationError(
                f"listener {self.listener.name}: certificate {name!r} is not available"
            )
        cached = self._contexts.get(name)
        if cached is not None and cached[0] is loaded:
            return cached[1]
        context = self._build(loaded)
        self._contexts[name] = (loaded, context)
        return context

    def _build(self, loaded: LoadedCertificate) -> SSL.Context:
        context = SSL.Context(SSL.TLS_METHOD)
        # Idle TLS sessions (the seed's Max Concurrency of 1000) then keep no
        # read/write buffers: about 23 MiB less per 1000 (bench/RESULTS.md).
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        context.set_min_proto_version(self._min_version)
        context.set_max_proto_version(self._max_version)
        context.set_options(
            SSL.OP_NO_COMPRESSION
            | SSL.OP_CIPHER_SERVER_PREFERENCE
            | SSL.OP_NO_RENEGOTIATION
            | SSL.OP_SINGLE_ECDH_USE
        )
        try:
            context.set_cipher_list(self._ciphers.encode("ascii"))
        except (SSL.Error, UnicodeEncodeError) as e:
            raise TLSConfigurationError(
                f"listener {self.listener.name}: OpenSSL rejects tls_ciphers "
                f"{self.listener.tls_ciphers!r}"
            ) from e
        context.use_certificate(loaded.leaf)
        for cert in loaded.chain:
            context.add_extra_chain_cert(cert)
        context.use_privatekey(loaded.key)
        context.check_privatekey()
        context.set_session_id(self._session_id)
        context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        context.set_timeout(_SESSION_TIMEOUT)
        if self.listener.sni:
            # Without SNI names there is nothing to switch to, and the
            # callback would cost every handshake a trip into Python.
            context.set_tlsext_servername_callback(self._server_name)
        if self.client_certificates is not ClientCertificates.NONE:
            try:
                if self._client_ca is None:
                    # No CA names in the request: the system's list is long,
                    # and clients then offer the certificate they have.
                    context.set_default_verify_paths()
                else:
                    context.load_verify_locations(self._client_ca)
                    context.load_client_ca(self._client_ca.encode())
            except SSL.Error as e:
                which = self._client_ca or "of the system's trusted CAs"
                raise TLSConfigurationError(
                    f"listener {self.listener.name}: cannot load client CA file {which}"
                ) from e
            mode = SSL.VERIFY_PEER
            if self.client_certificates is ClientCertificates.REQUIRE:
                mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            context.set_verify(mode, self._verify)
            context.set_info_callback(self._info)
        return context

    def _server_name(self, connection: SSL.Connection) -> None:
        """
        SNI: switch to the certificate the listener maps the client's server
        name to.  Unknown names, and names whose certificate is unusable,
        get the listener's own certificate.
        """
        raw = connection.get_servername()
        if not raw or not self.listener.sni:
            return
        server_name = raw.decode("ascii", "replace")
        name = _sni_lookup(self.listener.sni, server_name)
        if name is None or name == self.listener.certificate:
            return
        try:
            connection.set_context(self._context_for(name))
        except TLSConfigurationError as e:
            log.warn(
                "Listener {listener}: SNI name {server_name} maps to an unusable "
                "certificate ({reason}); serving the default certificate",
                listener=self.listener.name,
                server_name=server_name,
                reason=str(e),
            )

    def _verify(
        self, connection: SSL.Connection, cert: object, errno: int, depth: int, ok: int
    ) -> bool:
        if isinstance(connection, _ServerConnection):
            connection.esa_checked = True
            if not ok:
                connection.esa_errors.append(f"{_verify_error(errno)} at depth {depth}")
        if self.client_certificates is ClientCertificates.REQUIRE:
            return bool(ok)
        return True

    def _info(self, connection: SSL.Connection, where: int, ret: int) -> None:
        """
        At the end of each handshake, remember the outcome of a full
        verification for later resumptions of the session.
        """
        if not where & SSL.SSL_CB_HANDSHAKE_DONE:
            return
        if not isinstance(connection, _ServerConnection) or not connection.esa_checked:
            return
        cert = connection.get_peer_certificate(as_cryptography=True)
        if cert is not None and connection.esa_log is not None:
            error = connection.esa_errors[0] if connection.esa_errors else None
            connection.esa_log.record(_fingerprint(cert), error)

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """
        A new server connection on the current default certificate.
        """
        try:
            context = self._context_for(self.listener.certificate)
        except TLSConfigurationError:
            # The certificate vanished from the store and this creator never
            # served one: nothing sensible to offer.
            log.failure("Listener {listener}: no certificate", listener=self.listener.name)
            raise
        return _ServerConnection(context, self._verification_log)


def _connection_of(tls: object) -> SSL.Connection:
    """
    Accept a pyOpenSSL connection or a TLS transport (C{ISSLTransport}'s
    C{getHandle} gives the connection), so callers can pass
    C{self.transport} as they have it.
    """
    if isinstance(tls, SSL.Connection):
        return tls
    get_handle = getattr(tls, "getHandle", None)
    if get_handle is not None:
        handle = get_handle()
        if isinstance(handle, SSL.Connection):
            return handle
    raise TypeError(f"{tls!r} is not a TLS connection")


def peer_certificate_status(tls: object) -> ClientCertStatus:
    """
    What the client proved with its certificate on a finished handshake.

    With L{ClientCertificates.REQUEST}, refuse the client when
    C{presented and not verified}; with L{ClientCertificates.REQUIRE} the
    handshake itself already failed for a missing or bad certificate.

    @param tls: the server's C{SSL.Connection} or the TLS transport.
    """
    connection = _connection_of(tls)
    cert = connection.get_peer_certificate(as_cryptography=True)
    if cert is None:
        return ClientCertStatus(presented=False, verified=False)
    subject = cert.subject.rfc4514_string()
    if not isinstance(connection, _ServerConnection) or connection.esa_log is None:
        return ClientCertStatus(
            presented=True,
            verified=False,
            subject=subject,
            error="client certificates are not verified on this listener",
        )
    if connection.esa_checked:
        error = connection.esa_errors[0] if connection.esa_errors else None
    else:
        known, error = connection.esa_log.lookup(_fingerprint(cert))
        if not known:
            error = "resumed session with a certificate whose verification is not known"
    return ClientCertStatus(presented=True, verified=error is None, subject=subject, error=error)


def tls_info(tls: object) -> TLSInfo:
    """
    The negotiated protocol and cipher and the client certificate outcome,
    for the mail log (C{TLS success protocol TLSv1.3 cipher ...}) and the
    C{Received:} header.

    @param tls: the server's C{SSL.Connection} or the TLS transport.
    """
    connection = _connection_of(tls)
    status = peer_certificate_status(connection)
    return TLSInfo(
        protocol=connection.get_protocol_version_name(),
        cipher=connection.get_cipher_name() or "",
        peer_certificate_subject=status.subject,
        peer_certificate_verified=status.verified,
    )
