# -*- test-case-name: tests.test_outbound_mx -*-
"""
A real DNS server for tests: C{twisted.names} serving an in-memory zone over
UDP on 127.0.0.1, port 0.

Usage::

    from twisted.names import dns
    from tests.peers.dns import start_dns_server

    server = start_dns_server(self, {
        "partner.example": [dns.Record_MX(10, b"mx1.partner.example")],
        "mx1.partner.example": [dns.Record_A("127.0.0.1")],
    }, servfail={"broken.example"})
    resolver = server.resolver()          # a twisted.names client for it

Names not in the table answer NXDOMAIN; names in the table without records
of the asked type answer NOERROR with no data (and the zone's SOA); names in
C{servfail} answer SERVFAIL to every query.  Every query is recorded in
C{server.queries} as C{(name, type)} so a test can prove, for example, that
no C{ANY} query was made.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet import reactor
from twisted.names import authority, client, dns, server
from twisted.trial.unittest import TestCase


class MemoryAuthority(authority.FileAuthority):
    """
    An authority whose records come from a mapping instead of a file.
    """

    def __init__(self, zone: str, records: Mapping[str, Iterable[Any]]) -> None:
        self._zone = zone
        self._records = records
        super().__init__(zone)

    def loadFile(self, filename: str) -> None:
        self.soa = (  # type: ignore[assignment]
            self._zone.encode("ascii"),
            dns.Record_SOA(
                mname=b"ns." + self._zone.encode("ascii"),
                rname=b"hostmaster." + self._zone.encode("ascii"),
                serial=1,
                refresh=60,
                retry=60,
                expire=60,
                minimum=1,
            ),
        )
        self.records = {  # type: ignore[assignment]
            name.lower().encode("ascii"): list(records) for name, records in self._records.items()
        }


class _RecordingFactory(server.DNSServerFactory):
    """
    Records every question and answers SERVFAIL for the broken names.
    """

    def __init__(self, queries: list[tuple[str, int]], servfail: Iterable[str], **kw: Any) -> None:
        super().__init__(**kw)
        self._queries = queries
        self._servfail = {name.lower() for name in servfail}

    def handleQuery(self, message: Any, protocol: Any, address: Any) -> Any:
        names = [query.name.name.decode("ascii").lower() for query in message.queries]
        self._queries.extend(
            (name, query.type) for name, query in zip(names, message.queries, strict=True)
        )
        if any(name in self._servfail for name in names):
            response = self._responseFromMessage(message=message, rCode=dns.ESERVER)
            self.sendReply(protocol, response, address)
            return None
        return super().handleQuery(message, protocol, address)


class DNSServer:
    """
    A running test DNS server.

    @ivar port: the UDP port it listens on (127.0.0.1).
    @ivar queries: every question asked, as C{(name, type)}.
    """

    def __init__(self, port: int, queries: list[tuple[str, int]]) -> None:
        self.port = port
        self.queries = queries

    def resolver(self) -> client.Resolver:
        """
        A C{twisted.names} client that asks only this server.
        """
        return client.Resolver(servers=[("127.0.0.1", self.port)], reactor=reactor)


def start_dns_server(
    case: TestCase,
    records: Mapping[str, Iterable[Any]],
    *,
    zone: str = "example",
    servfail: Iterable[str] = (),
) -> DNSServer:
    """
    Start a DNS server for the test C{case}; it stops when the test ends.

    @param records: owner name -> record payloads (C{dns.Record_MX},
        C{dns.Record_A}, C{dns.Record_AAAA}, ...); names must lie in C{zone}.
    @param servfail: names that answer SERVFAIL.
    """
    queries: list[tuple[str, int]] = []
    factory = _RecordingFactory(queries, servfail, authorities=[MemoryAuthority(zone, records)])
    protocol = dns.DNSDatagramProtocol(factory)
    listening = reactor.listenUDP(0, protocol, interface="127.0.0.1")  # type: ignore[attr-defined]
    case.addCleanup(listening.stopListening)
    return DNSServer(listening.getHost().port, queries)
