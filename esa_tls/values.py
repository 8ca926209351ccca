"""
Immutable values that cross module boundaries: what the HAT decided about a
connection, what TLS was negotiated, and the envelope of a message.
"""

from __future__ import annotations

from attrs import frozen

from esa_tls.config.model import MailFlowPolicy


@frozen
class HATVerdict:
    """
    What the Host Access Table decided about one connecting host.

    @ivar sender_group: the name of the group that matched (C{None} when no
        group matched and the listener's fallback applied).
    @ivar policy: the resolved mail flow policy to apply.
    @ivar matched: the sender entry that matched, as written in the HAT
        (C{"ALL"}, C{"10.1.1.1-50"}, C{".partner.example"}...).
    @ivar reverse_dns: the PTR name of the peer, or C{None} if unknown.
    @ivar verified: whether the PTR name resolves back to the peer address
        (forward-confirmed); only verified names ever match host entries.
    @ivar sbrs: a reputation score, if an L{IReputationSource} gave one.
    """

    sender_group: str | None
    policy: MailFlowPolicy
    matched: str | None = None
    reverse_dns: str | None = None
    verified: bool = False
    sbrs: float | None = None


@frozen
class TLSInfo:
    """
    The TLS parameters of a session, for logs and the C{Received:} header.
    """

    protocol: str
    cipher: str
    peer_certificate_subject: str | None = None
    peer_certificate_verified: bool = False


@frozen
class Envelope:
    """
    The SMTP envelope of one message as the gateway received it.

    Addresses are the bare C{local@domain} form (no angle brackets);
    C{mail_from} is C{""} for the null reverse path.
    """

    mail_from: str
    rcpt_to: tuple[str, ...]
    helo: str
    peer_ip: str
    listener: str
    icid: int
    sender_group: str | None = None
    policy: str = ""
    tls: TLSInfo | None = None
    received_at: float = 0.0
