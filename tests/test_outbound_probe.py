"""
Tests for C{tlsverify} (L{esa_tls.outbound.probe} and
L{esa_tls.cli.tlsverify}): it tells what delivery would do, step by step,
and never sends mail.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from esa_tls.config.model import (
    DestinationControl,
    DestinationTLS,
    GatewayConfig,
    SystemSettings,
)
from esa_tls.outbound.client import Timeouts
from esa_tls.outbound.probe import tls_verify
from esa_tls.testing import CertificateAuthority, self_signed
from tests.peers.hostile import HostileServer, Script, start_hostile_server

CA = CertificateAuthority.generate()


#: A listener, which every configuration file needs.
LISTENER = (
    '[interfaces.Loopback]\naddress = "127.0.0.1/8"\n'
    '[listeners.InboundMail]\ntype = "public"\ninterface = "Loopback"\nport = 2525\n'
    'rat = ["example.com"]\n'
)


class TLSVerifyTests(TestCase):
    """
    L{tls_verify} against a scripted server.
    """

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.ca_file = os.path.join(directory, "ca.pem")
        with open(self.ca_file, "wb") as f:
            f.write(CA.cert_pem)
        self.lines: list[str] = []

    async def probe(self, server: HostileServer, level: DestinationTLS) -> int:
        config = GatewayConfig(
            system=SystemSettings(hostname="gw.test"),
            destinations={
                "partner.example": DestinationControl(
                    "partner.example", tls=level, ca_file=self.ca_file
                )
            },
            smtp_routes={"partner.example": (f"127.0.0.1:{server.port}",)},
        )
        status: int = await tls_verify(
            reactor,
            None,
            config,
            "partner.example",
            self.lines.append,
            timeouts=Timeouts.uniform(10),
            trust_system=False,
        )
        self.assertNotIn(b"MAIL", server.verbs())
        return status

    async def test_verified(self) -> None:
        """
        A trusted certificate for the domain: every step is shown, with the
        name that matched, and the verdict is that mail would go.
        """
        server = start_hostile_server(self, Script(certificate=CA.issue(["partner.example"])))
        status = await self.probe(server, DestinationTLS.REQUIRED_VERIFY)
        self.assertEqual(status, 0)
        text = "\n".join(self.lines)
        self.assertIn("Destination partner.example: TLS setting required-verify", text)
        self.assertIn(f"SMTP route 127.0.0.1 port {server.port}: 127.0.0.1", text)
        self.assertIn("STARTTLS offered: yes.", text)
        self.assertRegex(text, r"TLS connection established: protocol TLSv1\.[23], cipher \S+\.")
        self.assertIn("  0: subject CN=partner.example; issuer CN=esa_tls Test CA", text)
        self.assertIn(
            "TLS certificate match: SAN 'partner.example' matches email domain partner.example.",
            text,
        )
        self.assertIn("TLS certificate verified.", text)
        self.assertIn("mail would be delivered encrypted, certificate verified.", text)

    async def test_not_verified_required(self) -> None:
        """
        A self-signed certificate under C{required-verify}: the verdict is
        that mail would be held, and why.
        """
        server = start_hostile_server(self, Script(certificate=self_signed(["partner.example"])))
        status = await self.probe(server, DestinationTLS.REQUIRED_VERIFY)
        self.assertEqual(status, 1)
        text = "\n".join(self.lines)
        self.assertIn("TLS certificate not verified: certificate-not-trusted", text)
        self.assertIn("mail would NOT be delivered (certificate-not-trusted", text)

    async def test_not_offered_preferred(self) -> None:
        """
        No STARTTLS under C{preferred}: mail would go in the clear.
        """
        server = start_hostile_server(self, Script())
        status = await self.probe(server, DestinationTLS.PREFERRED)
        self.assertEqual(status, 0)
        self.assertIn("STARTTLS offered: no.", self.lines)
        self.assertIn("mail would be delivered in the clear", self.lines[-1])

    async def test_control_characters_escaped(self) -> None:
        """
        A hostile server's certificate names reach the administrator's
        terminal only with their control characters escaped: an ESC, CR or
        LF in a subject would otherwise drive the terminal or forge a line
        such as C{TLS certificate verified.}
        """
        evil = "x\x1b[2J\r\nTLS certificate verified."
        server = start_hostile_server(
            self, Script(certificate=CA.issue(["partner.example"], common_name=evil))
        )
        await self.probe(server, DestinationTLS.REQUIRED_VERIFY)
        text = "\n".join(self.lines)
        self.assertEqual([line for line in self.lines if not line.isprintable()], [])
        self.assertIn("CN=x\\x1b[2J\\x0d\\x0aTLS certificate verified.", text)

    async def test_command(self) -> None:
        """
        C{esa-tls tlsverify DOMAIN} runs the probe from a configuration
        file and exits 1 when the setting would hold mail back.
        """
        server = start_hostile_server(self, Script())
        directory = os.path.dirname(self.ca_file)
        config = os.path.join(directory, "gateway.toml")
        with open(config, "w") as f:
            f.write(
                LISTENER + "[system]\n"
                'hostname = "gw.test"\n'
                f'data_dir = "{directory}/var"\n'
                '[destinations."partner.example"]\n'
                'tls = "required"\n'
                "[smtp_routes]\n"
                f'"partner.example" = ["127.0.0.1:{server.port}"]\n'
            )
        code = "import sys; from esa_tls.cli.main import main; sys.exit(main(sys.argv[1:]))"
        out, err, status = await getProcessOutputAndValue(
            sys.executable,
            ["-c", code, "--config", config, "tlsverify", "partner.example"],
            env=dict(os.environ),
            path=os.getcwd(),
        )
        self.assertEqual(status, 1, (out, err))
        self.assertIn(b"STARTTLS offered: no.", out)
        self.assertIn(b"required: mail would NOT be delivered", out)
        self.assertNotIn(b"MAIL", server.verbs())

    async def test_bad_arguments(self) -> None:
        """
        A timeout that is not a positive number of seconds, or a port out of
        1-65535, is refused as a usage error (exit status 2, naming the
        option) before anything is looked up: C{--timeout -1} went as far
        as connecting, then printed an unhandled error's traceback.
        """
        code = "import sys; from esa_tls.cli.main import main; sys.exit(main(sys.argv[1:]))"
        for option, value in [
            ("--timeout", "-1"),
            ("--timeout", "0"),
            ("--timeout", "nan"),
            ("--timeout", "inf"),
            ("--port", "0"),
            ("--port", "65536"),
        ]:
            out, err, status = await getProcessOutputAndValue(
                sys.executable,
                ["-c", code, "tlsverify", "partner.example", option, value],
                env=dict(os.environ),
                path=os.getcwd(),
            )
            self.assertEqual((status, out), (2, b""), (option, value, err))
            self.assertIn(f"argument {option}: ".encode(), err)
            self.assertNotIn(b"Traceback", err)
