"""
Tests for C{esa-tls certificates}: the listing format tools parse, the
Demo certificate flagged insecure, refused certificates and exit statuses.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC

from cryptography.hazmat.primitives import hashes
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from esa_tls.cli.main import main
from esa_tls.config.load import load_config
from esa_tls.testing import CertificateAuthority, IssuedCertificate, expired
from esa_tls.tls.demo import DEMO_UNIT
from esa_tls.tls.store import CertificateStore

CONFIG = """\
[system]
hostname = "gateway.example.test"
data_dir = "data"

[interfaces.Loop]
address = "127.0.0.1/8"

[certificates.main]
cert = "main/cert.pem"
key = "main/key.pem"
chain = "main/chain.pem"

[certificates.other]
cert = "other/cert.pem"
key = "other/key.pem"

[listeners.A]
type = "public"
interface = "Loop"
port = 2525
rat = ["example.com"]
certificate = "main"
sni = {{ "mx2.example.test" = "other" }}

[listeners.B]
type = "private"
interface = "Loop"
port = 2526
certificate = "{b_certificate}"
"""


def when(issued: IssuedCertificate) -> str:
    cert = issued.certificate
    return (
        f"{cert.not_valid_before_utc.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ} to "
        f"{cert.not_valid_after_utc.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
    )


class CertificatesCommandTests(SynchronousTestCase):
    """
    C{esa-tls certificates} in-process through L{main}.
    """

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.ca = CertificateAuthority.generate()
        self.main_cert = self.ca.issue(["mx.example.test", "mx1.example.test"])
        self.main_cert.write(os.path.join(self.base, "main"))
        self.other = self.ca.issue(["mx2.example.test"], key_type="rsa")
        self.other.write(os.path.join(self.base, "other"))

    def configure(self, b_certificate: str = "Demo") -> str:
        path = os.path.join(self.base, "esa.toml")
        with open(path, "w") as f:
            f.write(CONFIG.format(b_certificate=b_certificate))
        return path

    def run_main(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            status = main(list(args))
        return status, out.getvalue(), err.getvalue()

    def start_gateway(self, path: str) -> None:
        """
        What the service does at start: make the Demo certificate.
        """
        CertificateStore(load_config(path))

    def blocks(self, out: str) -> dict[str, list[str]]:
        result = {}
        for block in out.rstrip("\n").split("\n\n"):
            lines = block.split("\n")
            result[lines[0].removeprefix("Certificate: ")] = lines
        return result

    def test_listing(self) -> None:
        """
        Each certificate is a block of C{Field: value} lines with subject,
        SANs, issuer, validity, key, fingerprint, chain length, the
        listeners using it (SNI marked) and its status; Demo is listed
        first and flagged as the insecure demonstration certificate.
        """
        path = self.configure()
        self.start_gateway(path)
        status, out, err = self.run_main("--config", path, "certificates")
        self.assertEqual((status, err), (0, ""))
        blocks = self.blocks(out)
        self.assertEqual(list(blocks), ["Demo", "main", "other"])
        fingerprint = self.main_cert.certificate.fingerprint(hashes.SHA256()).hex(":").upper()
        self.assertEqual(
            blocks["main"],
            [
                "Certificate: main",
                "Subject: CN=mx.example.test",
                "SANs: DNS:mx.example.test, DNS:mx1.example.test",
                "Issuer: CN=esa_tls Test CA,O=esa_tls tests",
                f"Valid: {when(self.main_cert)}",
                "Key: EC P-256 256 bits",
                f"Fingerprint: SHA256 {fingerprint}",
                "Chain: 1",
                "Listeners: A",
                "Status: OK",
            ],
        )
        self.assertEqual(blocks["other"][5], "Key: RSA 2048 bits")
        self.assertEqual(blocks["other"][8], "Listeners: A (SNI mx2.example.test)")
        demo = blocks["Demo"]
        self.assertIn(DEMO_UNIT.replace(",", "\\,"), demo[1])
        self.assertEqual(demo[2], "SANs: DNS:gateway.example.test")
        self.assertEqual(demo[8], "Listeners: B")
        self.assertEqual(demo[9], "Status: INSECURE demonstration certificate")

    def test_demo_not_generated(self) -> None:
        """
        Before the gateway's first start the command does not make the Demo
        certificate; it says it is not generated yet.
        """
        path = self.configure()
        status, out, _ = self.run_main("--config", path, "certificates", "Demo")
        self.assertEqual(status, 0)
        self.assertEqual(
            out,
            "Certificate: Demo\nListeners: B\n"
            "Status: INSECURE demonstration certificate, not generated yet\n",
        )
        self.assertFalse(os.path.exists(os.path.join(self.base, "data", "certs")))

    def test_refused(self) -> None:
        """
        A certificate that cannot be served is shown as refused, with the
        reason, and the exit status is 1.
        """
        expired(self.ca, ["mx.example.test"]).write(os.path.join(self.base, "main"))
        path = self.configure(b_certificate="main")
        status, out, _ = self.run_main("--config", path, "certificates", "main")
        self.assertEqual(status, 1)
        lines = out.splitlines()
        self.assertEqual(lines[:2], ["Certificate: main", "Listeners: A, B"])
        self.assertTrue(lines[2].startswith("Status: REFUSED: the certificate expired on "))

    def test_warning(self) -> None:
        """
        Warnings follow the status, one C{Warning:} line each.
        """
        os.chmod(os.path.join(self.base, "other", "key.pem"), 0o640)
        path = self.configure()
        status, out, _ = self.run_main("--config", path, "certificates", "other")
        self.assertEqual(status, 0)
        self.assertEqual(
            out.splitlines()[-1],
            f"Warning: key file {os.path.join(self.base, 'other', 'key.pem')} "
            "can be read by other users (mode 0640)",
        )

    def test_unknown_name(self) -> None:
        """
        An unknown certificate name is an error with a suggestion.
        """
        status, out, err = self.run_main("--config", self.configure(), "certificates", "Main")
        self.assertEqual((status, out), (2, ""))
        self.assertEqual(
            err, "esa-tls certificates: no certificate named 'Main'; did you mean 'main'?\n"
        )

    def test_console_script(self) -> None:
        """
        The installed C{esa-tls} script runs the command.
        """
        script = os.path.join(os.path.dirname(sys.executable), "esa-tls")
        if not os.access(script, os.X_OK):
            raise SkipTest(f"the esa-tls console script is not installed at {script}")
        path = self.configure()
        self.start_gateway(path)
        done = subprocess.run(
            [script, "--config", path, "certificates"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(b"Status: INSECURE demonstration certificate\n", done.stdout)
