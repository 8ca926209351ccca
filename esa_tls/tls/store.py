# -*- test-case-name: tests.test_tls_store -*-
"""
The gateway's certificates by name (ESA C{certconfig}): the generated
C{Demo} and those imported from C{[certificates.NAME]}.

The store is the single place that decides which certificate is in service
under a name.  Listeners never hold a certificate, only a creator that asks
the store at each handshake; so installing a new certificate is one
dictionary assignment, and refusing a bad one is simply not making it.

A certificate that a listener serves and that fails validation is a
configuration fault (L{certificate_faults}): start-up, a reload and
C{esa-tls commit} refuse the whole configuration rather than run a listener
that advertises STARTTLS and drops every handshake.  A configured
certificate no listener serves is only logged when it fails: it harms
nobody until a listener is given it, which is then refused.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography.hazmat.primitives import serialization
from twisted.logger import Logger
from zope.interface import implementer

from esa_tls.config.errors import ConfigFault, KeyPath, SourceMap, render_path
from esa_tls.config.model import GatewayConfig, Listener
from esa_tls.interfaces import ICertificateStore
from esa_tls.tls.certificates import (
    CertificateError,
    CertificateInfo,
    CertificateValidityError,
    LoadedCertificate,
    load_certificate,
)
from esa_tls.tls.demo import DEMO_NAME, ensure_demo_certificate, load_demo_certificate
from esa_tls.tls.server import ClientCertificates, ServerConnectionCreator

__all__ = ["CertificateStore", "certificate_faults", "served_certificates", "source_lines"]

log = Logger()


def served_certificates(config: GatewayConfig) -> dict[str, list[str]]:
    """
    The certificates the listeners serve (their own, or for an SNI name),
    each with the names of the listeners serving it, in configuration order.
    """
    served: dict[str, list[str]] = {}
    for listener in config.listeners.values():
        for name in dict.fromkeys([listener.certificate, *listener.sni.values()]):
            served.setdefault(name, []).append(listener.name)
    return served


def source_lines(config: GatewayConfig, text: str | None = None) -> SourceMap:
    """
    The lines of C{text}, else of the file C{config} was read from (best
    effort, like L{SourceMap} itself: line 1 when it cannot be read).
    """
    if text is None:
        text = ""
        if not config.source.startswith("<"):
            try:
                with open(config.source, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError):
                pass
    return SourceMap(text)


def certificate_faults(
    config: GatewayConfig, text: str | None = None, now: datetime | None = None
) -> list[ConfigFault]:
    """
    Load every configured certificate a listener serves, as the store
    would, and describe each that fails validation as a configuration
    fault: C{FILE:LINE: certificates.NAME.key: the private key does not
    match the certificate; served by listener Inboundmail}.  The key named
    is that of the file at fault (C{cert}, C{key} or C{chain}).

    The Demo certificate is not checked here: it is the store's to make
    (L{ensure_demo_certificate}).  Certificates no listener serves are not
    faults.

    @param text: the configuration text, for line numbers; by default the
        file C{config.source} is read again.
    @return: one fault per certificate refused, empty when all pass.
    """
    if now is None:
        now = datetime.now(UTC)
    faults = []
    lines: SourceMap | None = None
    for name, listeners in served_certificates(config).items():
        entry = config.certificates.get(name)
        if name == DEMO_NAME or entry is None:
            continue
        try:
            load_certificate(entry, now=now)
        except CertificateValidityError:
            # Time's doing, not the configuration's: logged and alerted on,
            # never a reason to keep the gateway down.
            continue
        except CertificateError as e:
            if lines is None:
                lines = source_lines(config, text)
            path: KeyPath = ("certificates", name, e.setting)
            which = "listener" if len(listeners) == 1 else "listeners"
            faults.append(
                ConfigFault(
                    config.source,
                    lines.line_of(path),
                    render_path(path),
                    f"{e.reason}; served by {which} {', '.join(listeners)}",
                )
            )
    return faults


def _same_material(a: LoadedCertificate, b: LoadedCertificate) -> bool:
    """
    Whether two loads hold the same certificate, chain and key, so a reload
    that changed nothing keeps the contexts (and their TLS session caches).
    """
    if a.leaf != b.leaf or a.chain != b.chain or a.insecure != b.insecure:
        return False
    der = serialization.Encoding.DER
    pkcs8 = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    return a.key.private_bytes(der, pkcs8, none) == b.key.private_bytes(der, pkcs8, none)


@implementer(ICertificateStore)
class CertificateStore:
    """
    The certificates in service, reloadable without a restart.

    @ivar data_dir: where the Demo certificate lives (under C{certs/}).
    @ivar errors: certificate name to the reason it is not in service, for
        configured certificates that never loaded.  The service refuses
        to start (or reload) with a listener serving one that fails
        (L{certificate_faults}); those listed here are normally unused.
    """

    def __init__(
        self, config: GatewayConfig, data_dir: str | None = None, *, generate_demo: bool = True
    ) -> None:
        """
        Load every configured certificate and the Demo one (generating it
        under C{data_dir/certs/} on first start).

        @param data_dir: defaults to C{config.system.data_dir}.
        @param generate_demo: C{False} for tools that only look: the Demo
            certificate is loaded if it exists, else listed in L{errors}.
        @raise OSError: the Demo certificate cannot be written.
        """
        self._config = config
        self.data_dir = data_dir if data_dir is not None else config.system.data_dir
        self._generate_demo = generate_demo
        self._certificates: dict[str, LoadedCertificate] = {}
        self._creators: dict[
            tuple[str, str | None, ClientCertificates], ServerConnectionCreator
        ] = {}
        self.errors: dict[str, str] = {}
        self._out_of_date: dict[str, LoadedCertificate] = {}
        if generate_demo:
            self._certificates[DEMO_NAME] = ensure_demo_certificate(
                self.data_dir, config.system.hostname
            )
        else:
            try:
                self._certificates[DEMO_NAME] = load_demo_certificate(self.data_dir)
            except CertificateError as e:
                self.errors[DEMO_NAME] = e.reason
        for message in self._load_configured():
            log.error("{text}", text=message)

    def _load_configured(self) -> list[str]:
        """
        (Re)load the certificates named in the configuration, installing
        each that passes and keeping the old one of each that fails.

        @return: one message per certificate refused.
        """
        messages = []
        now = datetime.now(UTC)
        configured = {
            name: entry for name, entry in self._config.certificates.items() if name != DEMO_NAME
        }
        demo_entry = self._config.certificates.get(DEMO_NAME)
        if demo_entry is not None and (demo_entry.cert or demo_entry.key or demo_entry.chain):
            messages.append(
                "Certificate Demo refused: the name Demo is reserved for the generated "
                "demonstration certificate; import yours under another name"
            )
        for name in list(self._certificates):
            if name != DEMO_NAME and name not in configured:
                del self._certificates[name]
        for name in list(self.errors):
            if name != DEMO_NAME and name not in configured:
                del self.errors[name]
                self._out_of_date.pop(name, None)
        for name, entry in configured.items():
            old = self._certificates.get(name)
            try:
                loaded = load_certificate(entry, now=now)
            except CertificateError as e:
                if old is None:
                    self.errors[name] = e.reason
                    if isinstance(e, CertificateValidityError) and e.certificate is not None:
                        self._out_of_date[name] = e.certificate
                    else:
                        self._out_of_date.pop(name, None)
                    messages.append(f"Certificate {name} refused: {e.reason}")
                else:
                    messages.append(
                        f"Certificate {name} refused: {e.reason}; "
                        f"the certificate already in service stays in service"
                    )
                continue
            self.errors.pop(name, None)
            self._out_of_date.pop(name, None)
            if old is not None and _same_material(old, loaded):
                continue
            self._certificates[name] = loaded
            info = loaded.info(now)
            log.info(
                "Certificate {name} in service: {subject}, valid until {not_after}",
                name=name,
                subject=info.subject,
                not_after=info.not_after.isoformat(),
            )
            for warning in info.warnings:
                log.warn("Certificate {name}: {problem}", name=name, problem=warning)
        return messages

    def names(self) -> list[str]:
        """
        C{"Demo"} first, then every configured certificate in name order,
        including those not in service (see L{errors}).
        """
        configured = sorted(n for n in self._config.certificates if n != DEMO_NAME)
        return [DEMO_NAME, *configured]

    def current(self, name: str) -> LoadedCertificate | None:
        """
        The certificate in service under C{name}, or C{None}.
        """
        return self._certificates.get(name)

    def describe(self, name: str) -> CertificateInfo:
        """
        Describe the certificate in service under C{name}.

        @raise CertificateError: a configured certificate that is not in
            service; the reason says why.
        @raise KeyError: an unknown name.
        """
        loaded = self._certificates.get(name)
        if loaded is None:
            if name in self.errors:
                raise CertificateError(name, self.errors[name])
            raise KeyError(name)
        return loaded.info()

    def describe_out_of_date(self, name: str) -> CertificateInfo | None:
        """
        Describe a configured certificate that is not in service because it
        was outside its validity period when loaded (expired, or not valid
        yet), or C{None}: the expiry alerts must still tell of it, since its
        listeners now offer no TLS with it.
        """
        if name in self._certificates:
            return None
        loaded = self._out_of_date.get(name)
        return None if loaded is None else loaded.info()

    def server_creator(
        self,
        listener: object,
        client_ca: str | None = None,
        *,
        require_client_certificate: bool = False,
        verify_client_certificate: bool = False,
    ) -> ServerConnectionCreator:
        """
        The connection creator for C{listener} (a L{Listener}), for C{TLSMemoryBIOFactory}
        or C{transport.startTLS}.

        The same arguments give the same creator (while the listener's
        configuration is unchanged), so a session may ask at every STARTTLS
        and TLS sessions can be resumed.

        @param client_ca: a PEM file of CAs: when given, clients are asked
            for a certificate and the session can read the outcome with
            L{esa_tls.tls.server.peer_certificate_status} (the ESA's Verify
            Client Certificate with Preferred TLS).
        @param require_client_certificate: make the handshake fail unless the
            client's certificate verifies against C{client_ca} (with
            Required TLS).
        @param verify_client_certificate: ask for a certificate even without
            C{client_ca}, verifying it against the system's trusted CAs.
        @raise esa_tls.tls.server.TLSConfigurationError: the listener's
            certificate is not in service, or its TLS settings cannot work.
        """
        if not isinstance(listener, Listener):
            raise TypeError(f"expected a Listener, not {listener!r}")
        if require_client_certificate:
            mode = ClientCertificates.REQUIRE
        elif client_ca or verify_client_certificate:
            mode = ClientCertificates.REQUEST
        else:
            mode = ClientCertificates.NONE
        key = (listener.name, client_ca, mode)
        creator = self._creators.get(key)
        if creator is None or (creator.listener is not listener and creator.listener != listener):
            creator = ServerConnectionCreator(listener, self.current, client_ca, mode)
            self._creators[key] = creator
        return creator

    def reload(self, config: GatewayConfig | None = None) -> list[str]:
        """
        Re-read every certificate, and adopt C{config} (certificates added
        or removed) when given.  A certificate that fails is not installed;
        the old one stays in service.  Creators already handed out serve the
        new certificates from their next handshake.

        @return: one message per certificate refused, each also logged.
        """
        if config is not None:
            self._config = config
        messages = []
        try:
            if self._generate_demo:
                demo = ensure_demo_certificate(self.data_dir, self._config.system.hostname)
            else:
                demo = load_demo_certificate(self.data_dir)
        except (OSError, CertificateError) as e:
            messages.append(f"Certificate Demo refused: {e}; the old one stays in service")
        else:
            self.errors.pop(DEMO_NAME, None)
            old = self._certificates.get(DEMO_NAME)
            if old is None or not _same_material(old, demo):
                self._certificates[DEMO_NAME] = demo
        messages.extend(self._load_configured())
        for message in messages:
            log.error("{text}", text=message)
        return messages
