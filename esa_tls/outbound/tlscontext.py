# -*- test-case-name: tests.test_outbound_client -*-
"""
The client side of STARTTLS for deliveries: a connection creator that lets
every handshake complete and records what was wrong with the certificate
chain, instead of aborting.

Twisted's C{optionsForClientTLS} aborts the handshake on any verification
error, and the abort surfaces as a generic connection error (twisted.md
2.3-2.4).  That is right for a client that must verify, but a
C{preferred-verify} destination must still get its mail, encrypted, when the
certificate does not verify; and every setting must log and report I{why}
(RFC 8460 result types).  So the handshake here always completes, the
OpenSSL verification result of each certificate is kept, and the delivery
client decides after the handshake, before any mail command, whether the
setting allows it to go on.

Trust anchors: the system store (C{twisted.internet.ssl.platformTrust()})
plus an optional per-destination C{ca_file}.  SNI is the MX host name.

The OpenSSL context (options, trust store) is built once per trust setting
and shared by the connections: loading the system store costs about 9 ms
of CPU, which per delivery connection was more than the rest of the
session.  A C{ca_file} that changes on disk gets a new context; a change
of the system store needs a restart.
"""

from __future__ import annotations

import os

from attrs import frozen
from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import CertificateOptions, platformTrust
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from esa_tls.outbound.result import TLSResultType
from esa_tls.tls.verifyerrors import VERIFY_ERROR_TEXTS

log = Logger()

#: OpenSSL X509_V_ERR codes that mean "not signed by anyone we trust".
_UNTRUSTED = {2, 18, 19, 20, 21, 24, 27, 28}
#: ... and "outside its validity period".
_EXPIRED = {10}


@frozen
class ChainError:
    """
    One complaint of OpenSSL's chain verification.

    @ivar depth: 0 for the server's own certificate, 1 for its issuer...
    @ivar code: the C{X509_V_ERR_*} number.
    """

    depth: int
    code: int

    @property
    def text(self) -> str:
        return VERIFY_ERROR_TEXTS.get(self.code, f"verify error {self.code}")

    def describe(self) -> str:
        return f"verify error: {self.text} (depth {self.depth})"


def classify_chain_errors(errors: tuple[ChainError, ...]) -> TLSResultType | None:
    """
    The RFC 8460 result type for a chain that failed verification, from its
    first error; C{None} for a chain without errors.
    """
    if not errors:
        return None
    code = errors[0].code
    if code in _EXPIRED:
        return TLSResultType.CERTIFICATE_EXPIRED
    if code in _UNTRUSTED:
        return TLSResultType.CERTIFICATE_NOT_TRUSTED
    return TLSResultType.VALIDATION_FAILURE


@frozen
class HandshakeFacts:
    """
    What one completed handshake showed.

    @ivar chain: the certificates the server sent, its own first.
    """

    protocol: str
    cipher: str
    chain: tuple[x509.Certificate, ...]
    chain_errors: tuple[ChainError, ...]

    @property
    def leaf(self) -> x509.Certificate | None:
        return self.chain[0] if self.chain else None

    @property
    def chain_trusted(self) -> bool:
        return bool(self.chain) and not self.chain_errors


#: Client contexts by (ca_file, trust_system, the ca_file's mtime and size).
_contexts: dict[tuple[str | None, bool, tuple[int, int] | None], SSL.Context] = {}


def _client_context(ca_file: str | None, trust_system: bool) -> SSL.Context:
    """
    The shared client context for one trust setting (see the module
    docstring); each connection sets its own verify callback on itself.
    """
    stamp = None
    if ca_file:
        try:
            st = os.stat(ca_file)
        except OSError:
            stamp = None
        else:
            stamp = (st.st_mtime_ns, st.st_size)
    key = (ca_file or None, trust_system, stamp)
    context = _contexts.get(key)
    if context is not None:
        return context
    options = (
        CertificateOptions(trustRoot=platformTrust()) if trust_system else CertificateOptions()
    )
    context = options.getContext()
    if ca_file:
        try:
            context.load_verify_locations(ca_file.encode())
        except (SSL.Error, OSError) as e:
            # Checked when the configuration was loaded, but a file can be
            # replaced (or half rewritten) since.  Its anchors are then
            # missing: a peer they would have vouched for fails
            # verification, which each setting handles as it says
            # (Preferred-Verify: encrypted, unverified; Required-Verify:
            # deferred), rather than the handshake failing and a
            # Preferred setting going on in the clear.  Tried again next
            # time: not remembered.
            log.error(
                "outbound TLS: could not load the trust anchors of {ca_file}: {error};"
                " verifying without them",
                ca_file=ca_file,
                error=e,
            )
            return context
    if stamp is None and ca_file:
        return context  # could not tell its version: never remembered
    if len(_contexts) >= 64:
        _contexts.clear()
    _contexts[key] = context
    return context


@implementer(IOpenSSLClientConnectionCreator)
class InspectingClientTLS:
    """
    Creates the client side of one TLS connection, verifies nothing by
    itself, and remembers what it saw.  Use one per connection.

    @ivar server_name: the SNI name (the MX host name); C{None} for an IP
        literal, which must never be sent as SNI.
    @ivar connection: the OpenSSL connection, once created.
    @ivar chain_errors: verification complaints, in the order OpenSSL made
        them.
    """

    def __init__(
        self,
        server_name: str | None,
        *,
        ca_file: str | None = None,
        trust_system: bool = True,
    ) -> None:
        """
        @param ca_file: extra trust anchors (PEM), e.g. a partner's private
            CA from the destination's C{ca_file}.
        @param trust_system: include the platform's CA store.
        """
        self.server_name = server_name
        self._context = _client_context(ca_file, trust_system)
        self.connection: SSL.Connection | None = None
        self.chain_errors: list[ChainError] = []

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self.server_name:
            connection.set_tlsext_host_name(self.server_name.encode("idna"))
        connection.set_verify(SSL.VERIFY_PEER, self._record)
        self.connection = connection
        return connection

    def _record(
        self, connection: SSL.Connection, certificate: object, code: int, depth: int, ok: int
    ) -> bool:
        """
        OpenSSL's verify callback: note each error and carry on, so the
        handshake completes and the delivery client decides.
        """
        if not ok:
            error = ChainError(depth, code)
            if error not in self.chain_errors:
                self.chain_errors.append(error)
        return True

    def facts(self) -> HandshakeFacts:
        """
        What the completed handshake showed.
        """
        connection = self.connection
        if connection is None:
            raise RuntimeError("no TLS connection was made")
        chain = connection.get_peer_cert_chain(as_cryptography=True) or []
        if not chain:
            leaf = connection.get_peer_certificate(as_cryptography=True)
            chain = [leaf] if leaf is not None else []
        return HandshakeFacts(
            protocol=connection.get_protocol_version_name(),
            cipher=connection.get_cipher_name() or "",
            chain=tuple(chain),
            chain_errors=tuple(self.chain_errors),
        )
