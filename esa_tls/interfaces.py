"""
The contracts between esa_tls's parts.

Each interface is a seam where a developer building their own MTA may plug in
their own implementation: a different message store, a HAT backed by a
database, a reputation service, an alert sink.  The docstrings state what an
implementation must guarantee; the built-in implementations are tested
against these statements with C{verifyObject}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:  # pragma: no cover
    from esa_tls.config.model import GatewayConfig


class StoreError(Exception):
    """
    A message store could not take or keep a message.

    @ivar transient: C{True} when trying again later may work (a full disk,
        an I/O error): the session answers 4xx, never 5xx, and never 250.
    """

    def __init__(self, message: str, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class IListener(Interface):
    """
    A listener (ESA C{listenerconfig}): one SMTP service on one address and
    port, with its own Host Access Table and policies.  Implemented by the
    Twisted server factory that builds the inbound sessions.
    """

    name = Attribute("The listener's case-sensitive unique name (C{str}).")
    config = Attribute("The L{esa_tls.config.model.Listener} it was built from.")
    active_connections = Attribute("How many sessions are open now (C{int}).")

    def summary() -> str:
        """
        The listener summary exactly as the ESA CLI prints it (the seed's
        eight lines C{Name:} ... C{TLS:}), followed by any extra lines.
        """


class IHostAccessTable(Interface):
    """
    A Host Access Table: classifies a connecting host into a sender group and
    so a mail flow policy.
    """

    def lookup(address: str) -> object:
        """
        Classify the peer at C{address} (a textual IPv4 or IPv6 address).

        Groups are tried top to bottom and the first group with any matching
        entry wins; a group whose policy's rule is CONTINUE does not stop the
        search.  Host name entries match only a forward-confirmed reverse DNS
        name.  A DNS failure never matches an entry (it does not make a host
        look trusted); it may make a later entry, such as C{ALL}, match.

        Must never block: all DNS work is asynchronous.

        @return: a L{Deferred} firing with an L{esa_tls.values.HATVerdict}.
            It never fails: when nothing matches, the verdict carries the
            listener's fallback policy (REJECT on the ESA's predefined tables).
            Should it fail or raise all the same, the listener logs it and
            answers the client C{421 4.3.0} (try again later).

        An implementation may also have a C{lookup_sync(address)} method
        (not part of this interface): the verdict at once, or C{None} when
        it needs DNS or a reputation score.  The listener asks it first, so
        that a TCPREFUSE host is dropped before anything is read.
        """


class IReputationSource(Interface):
    """
    A sender reputation service (the ESA's SenderBase, SBRS).  None ships;
    HAT entries C{SBRS[...]} and C{SBO:...} consult the one configured.
    """

    def score(address: str) -> object:
        """
        @return: a L{Deferred} firing with a score from -10.0 to 10.0, or
            C{None} when the address has no score.  A failure, an exception,
            a value outside that range or no answer within the HAT's
            timeout all mean "unknown": then neither C{SBRS[a:b]} nor
            C{SBRS[none]} matches (no answer is not the same as no score).
        """


class ITLSPolicy(Interface):
    """
    The inbound TLS rules of one session, decided from its mail flow policy.
    The session asks; the policy decides.  Pure: no I/O.

    The built-in one is L{esa_tls.inbound.tlspolicy.InboundTLSPolicy}; to
    plug in another, give L{esa_tls.inbound.listener.ListenerFactory} a
    C{tls_policy} callable taking the session's
    L{esa_tls.config.model.MailFlowPolicy} and whether the listener can do
    TLS now, and returning the provider.  It is called when the HAT has
    placed the session, so it must be cheap (the built-in one caches).
    """

    def offer_starttls(secure: bool) -> bool:
        """
        Whether EHLO advertises STARTTLS.  Never true once C{secure}.
        """

    def command_refusal(verb: bytes, secure: bool) -> tuple[int, bytes] | None:
        """
        C{None} if the command C{verb} (upper case) may run now, else the
        reply (code, text) to send instead, e.g. C{530 5.7.0 Must issue a
        STARTTLS command first} for Required before TLS.
        """

    def sender_refusal(mail_from: str, secure: bool) -> tuple[int, bytes] | None:
        """
        C{None} if C{mail_from} may send on this session, else the reply to
        send (Preferred with C{tls_mandatory_senders} on a clear session).
        """

    def offer_auth(secure: bool) -> bool:
        """
        Whether AUTH may be advertised and accepted now.
        """


class ICertificateStore(Interface):
    """
    The certificates the gateway knows by name (ESA C{certconfig}).  The
    C{Demo} certificate always exists and is always marked insecure.
    """

    def names() -> list[str]:
        """
        The names of all certificates, C{"Demo"} included.
        """

    def server_creator(
        listener: object,
        client_ca: str | None = None,
        *,
        require_client_certificate: bool = False,
        verify_client_certificate: bool = False,
    ) -> object:
        """
        An C{IOpenSSLServerConnectionCreator} for the listener
        (L{esa_tls.config.model.Listener}): its certificate, SNI map, protocol
        floor and ciphers.  Connections made with it see the certificates as
        they are when each handshake starts, so a reload takes effect without
        dropping sessions.

        @param client_ca: a PEM file of CAs: clients are asked for a
            certificate, and the outcome can be read after the handshake
            (ESA Verify Client Certificate with Preferred TLS).
        @param require_client_certificate: the handshake fails unless the
            client's certificate verifies against C{client_ca} (with
            Required TLS).
        @param verify_client_certificate: clients are asked for a
            certificate even without C{client_ca}; it is then verified
            against the system's trusted CAs.
        @raise esa_tls.tls.server.TLSConfigurationError: the listener's
            certificate is not in service (unknown, or expired when it was
            loaded).  The listener then offers no STARTTLS and answers one
            with C{454 4.7.0}; an implicit TLS listener fails the
            handshake.  Nothing else may be raised.
        """

    def reload(config: GatewayConfig | None = None) -> list[str]:
        """
        Re-read every certificate, and take the certificates of C{config}
        when it is given (a configuration reload).  One that fails validation is not
        installed: the old one stays in service.

        @return: one message per certificate refused.
        """


class IIncomingMessage(Interface):
    """
    A message being received; created by L{IMessageStore.new_message}.
    """

    mid = Attribute(
        "The message ID (MID, C{int}), assigned when the message starts, so that the "
        "C{Received:} header and the mail log can name it before it is committed."
    )

    def write(data: bytes) -> None:
        """
        Append message bytes: CRLF line endings, already dot-unstuffed.
        May raise L{StoreError}; the session then answers 4xx at the end of
        DATA (so it does for any other exception, which it logs).
        """

    def commit() -> object:
        """
        Make the message durable.  When the returned L{Deferred} fires, the
        message and its envelope are on stable storage (written, fsync'd,
        renamed into the queue, directory fsync'd): only then may the
        session say 250.

        @return: a L{Deferred} firing with the message ID (MID, C{int}), or
            failing with L{StoreError}; any other failure (or exception) is
            taken as a transient one: C{451}.
        """

    def abort() -> None:
        """
        Forget the message: nothing of it is ever delivered.
        """


class IMessageStore(Interface):
    """
    Where accepted mail goes.  The durable spool implements it; a developer
    may plug in their own.
    """

    def new_message(envelope: object) -> IIncomingMessage:
        """
        Start a message with the given L{esa_tls.values.Envelope}.
        May raise L{StoreError}: the session answers DATA with C{451}.  Any
        other exception is logged and answered the same way.
        """

    def has_space(size: int) -> bool:
        """
        Whether a message of C{size} bytes can be taken now (a MAIL FROM on
        a nearly full disk is answered 452 4.3.1).  An exception counts as
        C{False} and is logged.
        """


class IAlertHook(Interface):
    """
    Receives alerts (ESA C{alertconfig}): TLS failures for a domain that
    requires TLS, certificate expiry, the Demo certificate in use.
    """

    def alert(alert: object) -> object:
        """
        Deliver one alert: an L{esa_tls.alerts.Alert}, whose C{subject}
        and C{body} are for people and C{kind} and C{fields} for programs
        (a TLS failure is C{kind} C{"tls-failure"} with the C{domain}
        field).  May return a L{Deferred}.  A hook that raises or hangs
        must never hold up mail: the dispatcher bounds the time it waits
        (its C{hook_timeout}, or the hook's own C{timeout} attribute and a
        second, when that is a longer number of seconds) and logs the
        failure under the hook's C{name} attribute, else its class name.
        """
