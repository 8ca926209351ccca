# -*- test-case-name: tests.test_outbound_attempt -*-
"""
What a delivery attempt produced, as immutable values: per recipient, per
TLS negotiation, and the TLS failure events that the alert system (issue
5) consumes.
"""

from __future__ import annotations

import enum

from attrs import frozen

from esa_tls.config.model import DestinationTLS
from esa_tls.outbound.verify import NameMatch


class TLSResultType(enum.Enum):
    """
    Why TLS failed, in the words of RFC 8460 section 4.3 (the result types
    a TLS report would carry), so alerts and reports need no translation.
    """

    STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
    CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
    CERTIFICATE_EXPIRED = "certificate-expired"
    CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
    VALIDATION_FAILURE = "validation-failure"


class RecipientStatus(enum.Enum):
    """
    Where a recipient stands after an attempt.
    """

    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


class Fallback(enum.Enum):
    """
    How a C{preferred} (or C{preferred-verify}) delivery ended up in the
    clear, for the log: the ESA rule distinguishes failures before the
    server's C{220} to STARTTLS from failures after it.
    """

    NOT_OFFERED = "STARTTLS not offered: delivered in the clear"
    REFUSED = "STARTTLS refused before 220: continued in the clear on the same connection"
    RECONNECTED = "TLS failed after 220: reconnected and delivered in the clear"


@frozen
class RecipientOutcome:
    """
    The result for one recipient.

    @ivar code: the SMTP reply code that decided it (the RCPT, DATA or MAIL
        reply), or a local code (4xx/5xx) when no server said anything.
    @ivar text: the reply or reason, for the log, C{showrecipients} and
        the bounce.
    """

    rid: int
    address: str
    status: RecipientStatus
    code: int
    text: str


@frozen
class TLSOutcome:
    """
    The TLS story of one connection.

    @ivar level: the effective setting (never C{default}).
    @ivar encrypted: whether TLS was up when (and if) the mail was sent.
    @ivar protocol: e.g. C{"TLSv1.3"}, when encrypted.
    @ivar cipher: e.g. C{"TLS_AES_256_GCM_SHA384"}, when encrypted.
    @ivar verified: whether the chain was trusted and a name matched;
        only computed under the verifying settings.
    @ivar match: the reference identity the certificate matched.
    @ivar failure: the RFC 8460 result type of a failure, including a
        verification failure that C{preferred-verify} tolerated.
    @ivar detail: human text for C{failure}.
    @ivar fallback: how a preferred delivery went in the clear, if it did.
    @ivar peer_subject: the server certificate's subject, RFC 4514 text.
    @ivar discarded_plaintext: bytes the server sent after its C{220} to
        STARTTLS and before TLS, which were discarded unread (response
        injection attempts); their count.
    @ivar starttls_offered: whether the server's EHLO reply offered
        STARTTLS (C{None} when it was not asked, under C{no}).
    @ivar chain: the server's certificates as sent, one line each
        (subject, issuer, validity), for C{tlsverify} and logs.
    """

    level: DestinationTLS
    encrypted: bool = False
    protocol: str | None = None
    cipher: str | None = None
    verified: bool = False
    match: NameMatch | None = None
    failure: TLSResultType | None = None
    detail: str | None = None
    fallback: Fallback | None = None
    peer_subject: str | None = None
    discarded_plaintext: int = 0
    starttls_offered: bool | None = None
    chain: tuple[str, ...] = ()


@frozen
class TLSFailureEvent:
    """
    A destination whose setting requires TLS could not get it (or could not
    verify it): no mail was sent on that connection.  The alert system
    (issue 5) turns these into ESA TLS-failure alerts.

    @ivar domain: the destination domain (the alert names it).
    @ivar host: the MX or route host tried.
    @ivar address: the IP address connected to.
    @ivar mid: the message that was held back.
    @ivar dcid: the delivery connection on which TLS failed.
    """

    domain: str
    level: DestinationTLS
    host: str
    address: str
    port: int
    result_type: TLSResultType
    detail: str
    mid: int | None = None
    dcid: int | None = None


@frozen
class DeliveryResult:
    """
    The outcome of one attempt to deliver one message to one domain.

    @ivar recipients: one outcome per recipient, in the order given.
    @ivar tls: the TLS story of the connection that carried the message
        (or of the last one tried).
    @ivar host: the host that took the message (or was last tried).
    @ivar dcid: the delivery connection ID of that connection.
    @ivar reused: whether that connection was a session kept from an
        earlier message (L{esa_tls.outbound.reuse}), whose connection was
        counted then.
    @ivar tls_required_failure: whether a setting that requires TLS (or
        verification) kept the message from being sent on some host.
    @ivar tls_failures: every such failure, host by host.
    """

    domain: str
    mid: int | None
    recipients: tuple[RecipientOutcome, ...]
    tls: TLSOutcome | None = None
    host: str | None = None
    address: str | None = None
    port: int | None = None
    dcid: int | None = None
    reused: bool = False
    tls_required_failure: bool = False
    tls_failures: tuple[TLSFailureEvent, ...] = ()

    def with_status(self, status: RecipientStatus) -> tuple[RecipientOutcome, ...]:
        """
        The recipients that ended in C{status}.
        """
        return tuple(r for r in self.recipients if r.status is status)

    @property
    def delivered(self) -> tuple[RecipientOutcome, ...]:
        return self.with_status(RecipientStatus.DELIVERED)

    @property
    def deferred(self) -> tuple[RecipientOutcome, ...]:
        return self.with_status(RecipientStatus.DEFERRED)

    @property
    def bounced(self) -> tuple[RecipientOutcome, ...]:
        return self.with_status(RecipientStatus.BOUNCED)
