"""
Tests for the embedded default configuration (issue 2: a contract).
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import SynchronousTestCase

from esa_tls.config.load import EMBEDDED_SOURCE, load_config, load_config_with_warnings
from esa_tls.config.model import AccessRule, ListenerType, TLSMode


class EmbeddedDefaultTests(SynchronousTestCase):
    """
    Without C{--config} the gateway runs one public listener C{InboundMail}
    on 127.0.0.1 port 2525 for C{example.com}, with the ESA predefined HAT,
    the Demo certificate, TLS off, the machine's host name and data in
    C{./var}.
    """

    def setUp(self) -> None:
        self.config = load_config(None)

    def test_system(self) -> None:
        """
        The host name is the machine's; data goes under C{var} in the
        current directory.
        """
        self.assertEqual(self.config.system.hostname, socket.getfqdn())
        self.assertEqual(self.config.system.data_dir, "var")
        self.assertEqual(self.config.source, EMBEDDED_SOURCE)

    def test_one_listener(self) -> None:
        """
        One public listener, C{InboundMail}, on 127.0.0.1 port 2525,
        accepting mail for C{example.com}, with the Demo certificate.
        """
        self.assertEqual(list(self.config.listeners), ["InboundMail"])
        listener = self.config.listeners["InboundMail"]
        self.assertEqual(listener.type, ListenerType.PUBLIC)
        self.assertEqual(listener.interface.ip, "127.0.0.1")
        self.assertEqual(listener.port, 2525)
        self.assertEqual(listener.rat, ("example.com",))
        self.assertEqual(listener.certificate, "Demo")
        self.assertEqual(listener.protocol, "SMTP")

    def test_predefined_hat_tls_off(self) -> None:
        """
        The ESA's public sender groups and policies, every one with TLS off
        (the ESA default).
        """
        listener = self.config.listeners["InboundMail"]
        self.assertEqual(
            [group.name for group in listener.hat],
            ["WHITELIST", "BLOCKED_LIST", "SUSPECTLIST", "UNKNOWNLIST", "ALL"],
        )
        self.assertEqual(listener.policies["BLOCKED"].rule, AccessRule.REJECT)
        self.assertEqual({p.tls for p in listener.policies.values()}, {TLSMode.OFF})

    def test_no_warnings(self) -> None:
        """
        The default draws no warnings at start-up.
        """
        self.assertEqual(load_config_with_warnings(None).warnings, ())
