# -*- test-case-name: tests.test_inbound_tls,tests.test_api -*-
"""
The inbound TLS rules of a mail flow policy, as a pure decision table.

The session asks these questions at each step and does what it is told; the
rules themselves live here, where they can be read in one screen and tested
without a socket.
"""

from __future__ import annotations

from attrs import frozen
from zope.interface import implementer

from esa_tls.addresslist import AddressList
from esa_tls.config.model import MailFlowPolicy, SMTPAuthMode, TLSMode
from esa_tls.interfaces import ITLSPolicy

#: RFC 3207 section 4: the reply to any command that needs TLS first.
MUST_STARTTLS = (530, b"5.7.0 Must issue a STARTTLS command first")

#: Commands a client may give before TLS on a Required policy.  The seed
#: names NOOP, EHLO and QUIT (and STARTTLS itself, obviously); HELO is
#: refused, since a client that cannot say EHLO cannot say STARTTLS.
_ALLOWED_BEFORE_TLS = frozenset({b"EHLO", b"NOOP", b"QUIT", b"STARTTLS"})

#: Policies whose rules are remembered at once (a gateway has a few dozen).
_CACHE_SIZE = 1024
_cache: dict[tuple[int, bool], tuple[MailFlowPolicy, InboundTLSPolicy]] = {}


@implementer(ITLSPolicy)
@frozen
class InboundTLSPolicy:
    """
    L{ITLSPolicy} for one resolved L{MailFlowPolicy}.

    @ivar available: whether the listener can do TLS at all (it has a
        certificate store); without it nothing is offered and Required
        refuses everything but the always-allowed commands.
    """

    mode: TLSMode
    mandatory_senders: AddressList
    auth: SMTPAuthMode
    auth_requires_tls: bool
    available: bool = True

    @classmethod
    def from_policy(cls, policy: MailFlowPolicy, available: bool = True) -> InboundTLSPolicy:
        """
        The TLS rules of C{policy}.  Every session asks twice (before and
        after the HAT has classified it), so the answer for a policy object
        is remembered: parsing its mandatory-sender list each time showed
        in the profile.  The cache is keyed by identity and keeps the
        policy alive, so a reloaded configuration (new policy objects)
        never meets a stale answer; it is bounded by L{_CACHE_SIZE}.
        """
        key = (id(policy), available)
        cached = _cache.get(key)
        if cached is not None and cached[0] is policy:
            return cached[1]
        rules = cls(
            mode=policy.tls,
            mandatory_senders=AddressList.parse(policy.tls_mandatory_senders),
            auth=policy.smtp_auth,
            auth_requires_tls=policy.smtp_auth_requires_tls,
            available=available,
        )
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[key] = (policy, rules)
        return rules

    def offer_starttls(self, secure: bool) -> bool:
        return self.available and not secure and self.mode is not TLSMode.OFF

    def command_refusal(self, verb: bytes, secure: bool) -> tuple[int, bytes] | None:
        if secure or self.mode is not TLSMode.REQUIRED:
            return None
        if verb in _ALLOWED_BEFORE_TLS:
            return None
        return MUST_STARTTLS

    def sender_refusal(self, mail_from: str, secure: bool) -> tuple[int, bytes] | None:
        if secure:
            return None
        if self.mode is TLSMode.REQUIRED:
            return MUST_STARTTLS
        if self.mode is TLSMode.PREFERRED and self.mandatory_senders.matches(mail_from):
            return (
                530,
                b"5.7.0 Must issue a STARTTLS command first: TLS is mandatory for this sender",
            )
        return None

    def offer_auth(self, secure: bool) -> bool:
        if self.auth is SMTPAuthMode.DISALLOW:
            return False
        return secure or not self.auth_requires_tls
