# -*- test-case-name: tests.test_outbound_verify -*-
"""
Certificate name checks for outbound TLS, as the ESA does them (TN200537):
the C{Verify} algorithm of C{preferred-verify} and C{required-verify}, and
the C{Hosted Verify} algorithm of C{required-verify-hosted}.

Both algorithms look only at the SAN dNSName entries when the certificate
has a subjectAltName extension, and at the subject CN only when it has none
(RFC 6125 section 6.4.4; TN200537: "if the certificate has SAN attributes,
only SAN is used").  A SAN of IP addresses or URIs alone names no host,
and the CN does not stand in for it.  They differ in which reference identities they accept:

  - B{Verify}: the recipient's email domain, then the host we connected to
    (the MX host name, or the SMTP route host name when a route chose it);
  - B{Hosted Verify}: the email domain first, then the SMTP route host name.
    The MX host name is not accepted: it comes from unauthenticated DNS, so
    an attacker who forges the MX answer could name a host whose
    certificate they hold.

Wildcards follow RFC 6125 through C{service_identity}: C{*} only as the
whole left-most label of a name with at least three labels, matching
exactly one label; partial-label wildcards (C{f*.example.com}) match
nothing.

Everything here is pure: no I/O and no reactor.  The certificate chain is
checked elsewhere (L{esa_tls.outbound.tlscontext}); these functions only
answer "does this certificate name this destination, and by which name".
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from attrs import frozen
from cryptography import x509
from cryptography.x509.oid import NameOID
from service_identity.exceptions import CertificateError
from service_identity.hazmat import DNS_ID, DNSPattern

from esa_tls.outbound.mx import is_ip_literal, normalize_name


class ReferenceKind(enum.Enum):
    """
    The kinds of reference identity of TN200537 that outbound delivery uses.
    """

    EMAIL_DOMAIN = "email domain"
    MX_HOSTNAME = "MX hostname"
    SMTP_ROUTE_HOSTNAME = "SMTP route hostname"


class NameField(enum.Enum):
    """
    Where in the certificate a presented name was found.
    """

    SAN = "SAN"
    CN = "CN"


@frozen
class CertificateNames:
    """
    The DNS names a certificate presents.

    @ivar san: the subjectAltName dNSName entries, as written.
    @ivar cn: the subject commonName values, as written.
    @ivar has_san: whether the certificate has a subjectAltName extension
        at all (with or without dNSName entries).
    """

    san: tuple[str, ...]
    cn: tuple[str, ...]
    has_san: bool = False

    @classmethod
    def from_certificate(cls, certificate: x509.Certificate) -> CertificateNames:
        """
        Read the names of C{certificate}.
        """
        try:
            extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            san: tuple[str, ...] = ()
            has_san = False
        else:
            san = tuple(extension.value.get_values_for_type(x509.DNSName))
            has_san = True
        cn = tuple(
            str(attribute.value)
            for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        )
        return cls(san=san, cn=cn, has_san=has_san)

    @property
    def presented(self) -> tuple[NameField, tuple[str, ...]]:
        """
        The names that count: the SAN dNSName entries when the certificate
        has a SAN, else the CN.  A certificate with a SAN never matches by
        its CN.
        """
        if self.san or self.has_san:
            return NameField.SAN, self.san
        return NameField.CN, self.cn


@frozen
class NameMatch:
    """
    Which reference identity a certificate matched, and with which of its
    names: the answer C{tlsverify} prints and the mail log records.
    """

    kind: ReferenceKind
    reference: str
    presented: str
    field: NameField

    def describe(self) -> str:
        return f"{self.field.value} {self.presented!r} matches {self.kind.value} {self.reference}"


def dns_name_matches(presented: str, reference: str) -> bool:
    """
    Whether the certificate name C{presented} (possibly a wildcard) names
    the host C{reference}, by the RFC 6125 rules of C{service_identity}.
    Malformed names on either side never match.
    """
    try:
        pattern = DNSPattern.from_bytes(normalize_name(presented).encode("ascii"))
        identity = DNS_ID(normalize_name(reference))
    except (CertificateError, ValueError, UnicodeError):
        return False
    return bool(identity.verify(pattern))


def reference_identities(
    email_domain: str,
    host_name: str | None,
    *,
    via_smtp_route: bool,
    hosted: bool,
) -> list[tuple[ReferenceKind, str]]:
    """
    The names a certificate may match, in the order they are tried.

    @param email_domain: the recipient domain.
    @param host_name: the name of the host we connected to (MX exchange,
        implicit MX or SMTP route host); C{None} or an IP literal adds
        nothing.
    @param via_smtp_route: whether C{host_name} came from C{[smtp_routes]}.
    @param hosted: use the Hosted Verify rules instead of Verify.
    """
    references = [(ReferenceKind.EMAIL_DOMAIN, normalize_name(email_domain))]
    if host_name and not is_ip_literal(host_name):
        host = normalize_name(host_name)
        if via_smtp_route:
            references.append((ReferenceKind.SMTP_ROUTE_HOSTNAME, host))
        elif not hosted:
            references.append((ReferenceKind.MX_HOSTNAME, host))
    return references


def match_names(
    names: CertificateNames, references: Sequence[tuple[ReferenceKind, str]]
) -> NameMatch | None:
    """
    The first reference identity (in order) that one of the certificate's
    counted names matches, or C{None}.
    """
    field, presented = names.presented
    for kind, reference in references:
        for name in presented:
            if dns_name_matches(name, reference):
                return NameMatch(kind, reference, name, field)
    return None


def verify_certificate_names(
    certificate: x509.Certificate,
    email_domain: str,
    host_name: str | None,
    *,
    via_smtp_route: bool = False,
    hosted: bool = False,
) -> NameMatch | None:
    """
    Apply the Verify (or, with C{hosted}, the Hosted Verify) name rules to
    a peer certificate.

    @return: the match, or C{None} when the certificate names none of the
        acceptable reference identities.
    """
    return match_names(
        CertificateNames.from_certificate(certificate),
        reference_identities(email_domain, host_name, via_smtp_route=via_smtp_route, hosted=hosted),
    )
