"""
Open relay: nmap's smtp-open-relay list (16 forms) and the other address
tricks used to get mail relayed (C{%} hacks, C{!} paths, quoted local
parts, source routes, C{<postmaster>}, IP literals, case and trailing-dot
games) against a public listener, whose ACCEPT policy may only take mail
for its RAT, and a private listener, which relays only for RELAYLIST.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.attacks.support import conversation
from tests.support import PUBLIC, Gateway, Raw, in_thread

#: The scanner's outside domain and the server's own names: the listener's
#: RAT domain (so that the tricks that end in it are really tried) and its
#: IP literal.
OUTSIDE = "nmap.scanme.org"
SRV = "example.com"
IP = "[127.0.0.1]"

#: nmap smtp-open-relay: (MAIL FROM path, RCPT TO path), in its order.
NMAP_FORMS = [
    ("<>", f"<relaytest@{OUTSIDE}>"),
    (f"<antispam@{OUTSIDE}>", f"<relaytest@{OUTSIDE}>"),
    (f"<antispam@{SRV}>", f"<relaytest@{OUTSIDE}>"),
    (f"<antispam@{IP}>", f"<relaytest@{OUTSIDE}>"),
    (f"<antispam@{IP}>", f"<relaytest%{OUTSIDE}@{IP}>"),
    (f"<antispam@{IP}>", f"<relaytest%{OUTSIDE}@{SRV}>"),
    (f"<antispam@{IP}>", f'<"relaytest@{OUTSIDE}">'),
    (f"<antispam@{IP}>", f'<"relaytest%{OUTSIDE}">'),
    (f"<antispam@{IP}>", f"<relaytest@{OUTSIDE}@{IP}>"),
    (f"<antispam@{IP}>", f'<"relaytest@{OUTSIDE}"@{IP}>'),
    (f"<antispam@{IP}>", f"<relaytest@{OUTSIDE}@{SRV}>"),
    (f"<antispam@{IP}>", f"<@{IP}:relaytest@{OUTSIDE}>"),
    (f"<antispam@{IP}>", f"<@{SRV}:relaytest@{OUTSIDE}>"),
    (f"<antispam@{IP}>", f"<{OUTSIDE}!relaytest>"),
    (f"<antispam@{IP}>", f"<{OUTSIDE}!relaytest@{IP}>"),
    (f"<antispam@{IP}>", f"<{OUTSIDE}!relaytest@{SRV}>"),
]

#: Further recipient forms that must never relay through a RAT of
#: C{example.com}, C{.sub.example.net} and C{only@example.org}.
MORE_TRICKS = [
    f'<"relaytest%{OUTSIDE}"@{SRV}>',
    f'<"relaytest!{OUTSIDE}"@{SRV}>',
    f'<"relaytest\\@{OUTSIDE}"@{SRV}>',
    f"<{OUTSIDE}!relaytest%{SRV}@{SRV}>",
    f"<relaytest%{OUTSIDE}%{SRV}@{SRV}>",
    f"<@{SRV},@{OUTSIDE}:relaytest@{SRV}>",
    f"<@{SRV},@{IP}:relaytest@{OUTSIDE}>",
    f"<relaytest@{OUTSIDE.upper()}>",
    f"<relaytest@{OUTSIDE}.>",
    f"<relaytest@{SRV}.>",
    f"<relaytest@{SRV}.{OUTSIDE}>",
    f"<relaytest@evil{SRV}>",
    "<relaytest@[IPv6:::1]>",
    "<relaytest@[127.1]>",
    f"<postmaster@{OUTSIDE}>",
    "<x@sub.example.net>",
    "<x@evilsub.example.net>",
    "<other@example.org>",
    f"<only%{OUTSIDE}@example.org>",
    f'<"only@{OUTSIDE}"@example.org>',
    f"relaytest@{OUTSIDE}",
    f"<relaytest@{OUTSIDE}> <relaytest@{SRV}>",
    f"<relaytest@{OUTSIDE}>(comment)",
    f"<relaytest@{OUTSIDE}",
    f"<relaytest@{SRV}@{OUTSIDE}>",
]

#: Recipients that are the listener's own: the RAT takes them whatever
#: their case, so refusing the tricks above is not refusing everything.
OWN = [
    f"<relaytest@{SRV}>",
    f"<RelayTest@{SRV.upper()}>",
    '<"relaytest"@example.com>',
    "<x@a.sub.example.net>",
    "<only@EXAMPLE.ORG>",
]

#: A private listener; which hosts are in RELAYLIST is filled in.
PRIVATE = """
[listeners.OutboundMail]
type = "private"
interface = "Loopback"
port = 2526

[[listeners.OutboundMail.hat]]
group = "RELAYLIST"
policy = "RELAYED"
senders = [{relaylist}]

[[listeners.OutboundMail.hat]]
group = "ALL"
policy = "BLOCKED"
senders = ["ALL"]
"""


def _try(port: int, pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """
    For each (sender, recipient): RSET, MAIL and RCPT on one connection;
    then DATA, to see whether any recipient was taken.

    @return: the MAIL and RCPT replies of each pair, then the DATA reply
        as a last pair.
    """
    raw = Raw(port)
    try:
        raw.reply()
        raw.chat(b"EHLO nmap.scanme.org\r\n")
        out = []
        for sender, recipient in pairs:
            raw.chat(b"RSET\r\n")
            mail = raw.chat(f"MAIL FROM:{sender}\r\n".encode())
            rcpt = raw.chat(f"RCPT TO:{recipient}\r\n".encode())
            out.append((mail, rcpt))
        out.append((b"", raw.chat(b"DATA\r\n")))
        return out
    finally:
        raw.close()


class PublicListenerTests(TestCase):
    @inlineCallbacks
    def test_nmapForms(self) -> Any:
        """
        All 16 of nmap's relay probes are refused by a public listener with
        an ACCEPT policy: each RCPT gets a 5xx judged on the address (MAIL
        was accepted), never 2xx, and no message can follow.
        """
        gw = Gateway(self)
        results = yield in_thread(_try, gw.port, NMAP_FORMS)
        for (sender, recipient), (mail, rcpt) in zip(NMAP_FORMS, results, strict=False):
            self.assertTrue(mail.startswith(b"250 "), (sender, mail))
            self.assertTrue(rcpt[:1] == b"5" and rcpt[:3] != b"503", (recipient, rcpt))
        self.assertEqual(results[-1][1], b"554 5.5.1 Error: no valid recipients\r\n")
        self.assertEqual(gw.queued(), [])

    @inlineCallbacks
    def test_moreTricks(self) -> Any:
        """
        C{%}, C{!}, quoted C{@}, multi-hop source routes, IP literals, case,
        trailing dots, look-alike domains, and malformed paths are all
        refused on the public listener; its own RAT addresses (in any case,
        even quoted) are taken, so the refusals are about the tricks.
        """
        gw = Gateway(self)
        pairs = [("<a@client.test>", r) for r in MORE_TRICKS]
        results = yield in_thread(_try, gw.port, pairs)
        for recipient, (mail, rcpt) in zip(MORE_TRICKS, results, strict=False):
            self.assertEqual(mail, b"250 2.1.0 Ok\r\n")
            self.assertTrue(rcpt[:1] == b"5" and rcpt[:3] != b"503", (recipient, rcpt))
        self.assertEqual(results[-1][1], b"554 5.5.1 Error: no valid recipients\r\n")
        own = yield in_thread(_try, gw.port, [("<a@client.test>", r) for r in OWN])
        for recipient, (_, rcpt) in zip(OWN, own, strict=False):
            self.assertEqual(rcpt, b"250 2.1.5 Ok\r\n", recipient)
        self.assertEqual(own[-1][1], b"354 End data with <CR><LF>.<CR><LF>\r\n")

    @inlineCallbacks
    def test_postmaster(self) -> Any:
        """
        The bare C{<postmaster>} (RFC 5321 4.1.1.3) means the postmaster of
        this host, never of anywhere else: it relays nowhere, and it is
        taken only when the RAT holds the listener's own domain.
        """
        gw = Gateway(self)
        replies = yield in_thread(
            conversation,
            gw.port,
            b"EHLO c\r\n",
            b"MAIL FROM:<>\r\n",
            b"RCPT TO:<postmaster>\r\n",
            b"RCPT TO:<Postmaster>\r\n",
        )
        self.assertEqual(replies[3], b"550 5.7.1 <postmaster@mx.test.example>: Relaying denied\r\n")
        self.assertEqual(replies[4], replies[3])
        own = PUBLIC.replace('rat = ["example.com"', 'rat = ["mx.test.example", "example.com"')
        gw = Gateway(self, own)
        replies = yield in_thread(
            conversation, gw.port, b"EHLO c\r\n", b"MAIL FROM:<>\r\n", b"RCPT TO:<postmaster>\r\n"
        )
        self.assertEqual(replies[3], b"250 2.1.5 Ok\r\n")

    @inlineCallbacks
    def test_addressLiterals(self) -> Any:
        """
        Address literals must name an address: C{[127.1]} or C{[300.0.0.1]}
        get 501 (they used to pass as a sender); a real one is written the
        one canonical way, so the RAT and the stored envelope see the same
        text.
        """
        gw = Gateway(self)
        replies = yield in_thread(
            conversation,
            gw.port,
            b"EHLO c\r\n",
            b"MAIL FROM:<a@[127.1]>\r\n",
            b"MAIL FROM:<a@[300.0.0.1]>\r\n",
            b"MAIL FROM:<a@[ipv6:0:0:0:0:0:0:0:1]>\r\n",
            b"RCPT TO:<x@[IPV6:0:0::1]>\r\n",
        )
        self.assertEqual(replies[2], b"501 5.1.3 Bad address syntax: [127.1] is not an address\r\n")
        self.assertEqual(
            replies[3], b"501 5.1.3 Bad address syntax: [300.0.0.1] is not an address\r\n"
        )
        self.assertEqual(replies[4], b"250 2.1.0 Ok\r\n")
        self.assertEqual(replies[5], b"550 5.7.1 <x@[IPv6:::1]>: Relaying denied\r\n")


class PrivateListenerTests(TestCase):
    @inlineCallbacks
    def test_notInRelayList(self) -> Any:
        """
        A private listener relays for RELAYLIST only: a host outside it
        falls to ALL (BLOCKED) and every form, even a plain one, is refused
        (here at RCPT, with C{reject_at_rcpt}, so that each is tried).
        """
        gw = Gateway(
            self,
            PRIVATE.format(relaylist='"10.9.9.9"'),
            extra_base="[listener_settings]\nreject_at_rcpt = true\n",
        )
        results = yield in_thread(_try, gw.port, NMAP_FORMS)
        for (_, recipient), (_, rcpt) in zip(NMAP_FORMS, results, strict=False):
            # Well-formed paths meet the policy's refusal; malformed ones
            # are refused for their syntax first.
            self.assertIn(rcpt[:4], (b"554 ", b"501 "), recipient)
            if rcpt.startswith(b"501"):
                self.assertIn(b"Bad address syntax", rcpt)
        self.assertEqual(gw.queued(), [])

    @inlineCallbacks
    def test_relayListRelays(self) -> Any:
        """
        A RELAYLIST host may send anywhere: the plain outside recipient is
        taken and the message queued for it.
        """
        gw = Gateway(self, PRIVATE.format(relaylist='"127.0.0.1"'))
        replies = yield in_thread(
            conversation,
            gw.port,
            b"EHLO c\r\n",
            b"MAIL FROM:<app@example.com>\r\n",
            f"RCPT TO:<relaytest@{OUTSIDE}>\r\n".encode(),
            b"DATA\r\n",
            b"Subject: relayed\r\n\r\nx\r\n.\r\n",
        )
        self.assertEqual(replies[3], b"250 2.1.5 Ok\r\n")
        self.assertTrue(replies[5].startswith(b"250 2.0.0 Ok: Message "), replies[5])
        (queued,) = gw.queued()
        self.assertEqual(queued.envelope.rcpt_to, (f"relaytest@{OUTSIDE}",))
