# -*- test-case-name: tests.test_inbound_tls,tests.test_config_load -*-
"""
ESA address lists (C{addresslistconfig}), used by "TLS is mandatory for
address list": which envelope senders must only ever arrive over TLS.

Entry forms (ESA reference 4.3): C{user@example.com} (one address),
C{user@} (that local part at any domain), C{@example.com} (a domain),
C{@.example.com} (the subdomains of a domain), C{@[1.2.3.4]} (an address
literal).  Matching is case-insensitive.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from attrs import frozen

_ENTRY = re.compile(
    r"(?P<local>[^@\s]+)?@(?P<domain>\[[0-9A-Fa-f:.]+\]|\.?[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)?\Z"
)


class AddressListError(ValueError):
    """
    An address list entry that is not one of the ESA forms.
    """


@frozen
class AddressList:
    """
    A parsed, immutable address list.
    """

    addresses: frozenset[str]
    local_parts: frozenset[str]
    domains: frozenset[str]
    parent_domains: tuple[str, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AddressList:
        """
        @raise AddressListError: naming the first entry that is not an ESA
            address list form.
        """
        addresses: set[str] = set()
        locals_: set[str] = set()
        domains: set[str] = set()
        parents: list[str] = []
        for raw in entries:
            entry = raw.strip().lower()
            m = _ENTRY.match(entry)
            if m is None or (m.group("local") is None and m.group("domain") is None):
                raise AddressListError(
                    f"{raw!r} is not an address list entry (user@example.com, user@, "
                    "@example.com, @.example.com or @[1.2.3.4])"
                )
            local, domain = m.group("local"), m.group("domain")
            if local and domain:
                if domain.startswith("."):
                    raise AddressListError(f"{raw!r}: a full address cannot name a partial domain")
                addresses.add(entry)
            elif local:
                locals_.add(local)
            elif domain and domain.startswith("."):
                parents.append(domain)
            elif domain:
                domains.add(domain)
        return cls(frozenset(addresses), frozenset(locals_), frozenset(domains), tuple(parents))

    def matches(self, address: str) -> bool:
        """
        Whether the envelope address C{local@domain} is on the list.  The
        null sender C{""} is never on a list.
        """
        local, sep, domain = address.lower().rpartition("@")
        if not sep:
            return False
        if address.lower() in self.addresses or local in self.local_parts:
            return True
        if domain in self.domains:
            return True
        return any(domain.endswith(parent) for parent in self.parent_domains)
