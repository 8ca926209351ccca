"""
C{esa-tls certconfig}: certificates imported, pasted, created, exported and
deleted through the dialog, checked against the files and the gateway's
certificate loader after C{commit}.
"""

from __future__ import annotations

import io
import os
import stat
import sys
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from esa_tls.cli.main import main
from esa_tls.config.load import load_config
from esa_tls.testing import CertificateAuthority, self_signed
from esa_tls.tls.certificates import load_certificate

CONFIG = """\
[system]
hostname = "mx.test.example"
data_dir = "var"

[interfaces.Loopback]
address = "127.0.0.1/8"

[listeners.Inboundmail]
type = "public"
interface = "Loopback"
port = 2525
rat = ["example.com"]
"""


def answers(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


class CertConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.config = os.path.join(self.directory, "esa.toml")
        with open(self.config, "w") as f:
            f.write(CONFIG)
        cwd = os.getcwd()
        os.chdir(self.directory)
        self.addCleanup(os.chdir, cwd)

    def esa_tls(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdin", io.StringIO(stdin))
        with redirect_stdout(out), redirect_stderr(err):
            status = main(["--config", self.config, *args])
        return status, out.getvalue(), err.getvalue()

    def certconfig(self, *lines: str) -> str:
        status, out, err = self.esa_tls("certconfig", stdin=answers(*lines, ""))
        self.assertEqual(status, 0, out + err)
        return out

    def commit(self) -> None:
        status, out, err = self.esa_tls("commit", "--no-reload")
        self.assertEqual(status, 0, out + err)

    def test_listing_shows_demo(self) -> None:
        """
        The listing names the insecure Demo certificate and the listeners
        using it.
        """
        out = self.certconfig()
        self.assertIn("1. Demo: INSECURE demonstration certificate", out)
        self.assertIn("   Listeners: Inboundmail\n", out)

    def test_import_from_files(self) -> None:
        """
        IMPORT checks the material and stores it under data_dir/certs (the
        key mode 0600); after commit the gateway's loader accepts it with
        its chain.
        """
        ca = CertificateAuthority.generate()
        issued = ca.issue(["mx.test.example"])
        cert, key, chain = issued.write(os.path.join(self.directory, "incoming"))
        out = self.certconfig("import", "Demo", "main", cert, key, chain)
        self.assertIn("Demo is the built-in certificate: choose another name.", out)
        self.assertIn("Certificate main added: CN=mx.test.example", out)
        self.commit()
        config = load_config(self.config)
        entry = config.certificates["main"]
        self.assertEqual(entry.key, os.path.join(self.directory, "var", "certs", "main.key"))
        self.assertEqual(stat.S_IMODE(os.stat(entry.key).st_mode), 0o600)
        loaded = load_certificate(entry)
        self.assertEqual(loaded.leaf, issued.certificate)
        self.assertEqual(len(loaded.chain), 1)

    def test_import_owned_like_directory(self) -> None:
        """
        Files IMPORT writes under data_dir/certs belong to that directory's
        owner and group: a gateway running as its own user must read the
        key it will serve.  Before, C{sudo esa-tls certconfig} left a key
        0600 owned by root, which such a gateway could not read once the
        change was committed.
        """
        if os.geteuid() != 0:
            raise SkipTest("only root can give a file to another user")
        certs = os.path.join(self.directory, "var", "certs")
        os.makedirs(certs, mode=0o700)
        os.chown(certs, 65534, 65534)
        cert, key, _ = self_signed(["mx.test.example"]).write(
            os.path.join(self.directory, "incoming")
        )
        self.certconfig("import", "main", cert, key, "")
        entry = load_config(self.config + ".pending").certificates["main"]
        for path, mode in ((entry.cert, 0o644), (entry.key, 0o600)):
            info = os.stat(path)
            self.assertEqual(
                (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)), (65534, 65534, mode), path
            )

    def test_wrong_key_refused(self) -> None:
        """
        A key that does not belong to the certificate is refused with the
        reason; nothing is added.
        """
        one = self_signed(["a.example"]).write(os.path.join(self.directory, "one"))
        two = self_signed(["b.example"]).write(os.path.join(self.directory, "two"))
        out = self.certconfig("import", "main", one[0], two[1], "")
        self.assertIn("the private key does not match the certificate. Nothing was imported.", out)
        self.assertFalse(os.path.exists(self.config + ".pending"))

    def test_leaf_not_first(self) -> None:
        """
        A certificate file with the chain before the certificate (the
        intermediate first) is refused saying so, naming the certificate
        the key belongs to: before, it was "the private key does not match
        the certificate", which sent the administrator after the key.
        """
        ca = CertificateAuthority.generate()
        intermediate = ca.intermediate()
        issued = intermediate.issue(["mx.example.com"])
        _, key, _ = issued.write(os.path.join(self.directory, "issued"))
        backwards = os.path.join(self.directory, "backwards.pem")
        with open(backwards, "wb") as f:
            f.write(intermediate.cert_pem + issued.cert_pem)
        out = self.certconfig("import", "main", backwards, key, "")
        self.assertIn(
            "The certificate cannot be used: the chain is not in order: the private key "
            "belongs to chain certificate 1 (CN=mx.example.com), not to the first "
            "certificate (CN=esa_tls Test Intermediate CA,O=esa_tls tests); list the "
            "certificate first",
            out,
        )
        self.assertNotIn("does not match", out)
        self.assertFalse(os.path.exists(self.config + ".pending"))

    def test_not_pem_names_the_file(self) -> None:
        """
        A certificate, chain or key file that is not PEM is refused naming
        that file, and a DER file is recognised as such with the command
        that converts it: before, every case was "That is not a PEM
        certificate." (or "private key"), whichever of the files it was.
        """
        cert, key, _ = self_signed(["mx.example.com"]).write(os.path.join(self.directory, "a"))
        with open(cert, "rb") as f:
            der = x509.load_pem_x509_certificate(f.read()).public_bytes(Encoding.DER)
        der_path = os.path.join(self.directory, "cert.der")
        junk = os.path.join(self.directory, "notes.txt")
        with open(der_path, "wb") as f:
            f.write(der)
        with open(junk, "w") as f:
            f.write("hello\n")
        out = self.certconfig("import", "main", der_path, key, "")
        self.assertIn(
            f"{der_path} is not a PEM certificate: it is DER; convert it with "
            f"'openssl x509 -inform DER -in {der_path} -out {der_path}.pem'. "
            "Nothing was imported.",
            out,
        )
        out = self.certconfig("import", "main", cert, key, junk)
        self.assertIn(f"{junk} is not a PEM certificate. Nothing was imported.", out)
        out = self.certconfig("import", "main", cert, junk, "")
        self.assertIn(f"{junk} is not a PEM private key. Nothing was imported.", out)
        self.assertFalse(os.path.exists(self.config + ".pending"))

    def test_files_that_cannot_be_certificates(self) -> None:
        """
        A path to a device (C{/dev/zero}: read, it never ends), a FIFO (it
        would wait for a writer) or a file over 1 MiB is refused at once,
        saying why, and the question is asked again.
        """
        cert, key, _ = self_signed(["mx.example.com"]).write(os.path.join(self.directory, "a"))
        fifo = os.path.join(self.directory, "fifo")
        os.mkfifo(fifo)
        big = os.path.join(self.directory, "big.pem")
        with open(big, "wb") as f:
            f.write(b"x" * (1024 * 1024 + 1))
        out = self.certconfig("import", "main", "/dev/zero", fifo, big, cert, key, "")
        self.assertIn("Cannot read /dev/zero: not a regular file.", out)
        self.assertIn(f"Cannot read {fifo}: not a regular file.", out)
        self.assertIn(f"Cannot read {big}: larger than 1024 KiB.", out)
        self.assertTrue(os.path.exists(self.config + ".pending"))

    def test_paste(self) -> None:
        """
        PASTE takes the PEM text typed or pasted, each ended by a lone
        period.
        """
        issued = self_signed(["mx.test.example"])
        out = self.certconfig(
            "paste",
            "pasted",
            *issued.cert_pem.decode().splitlines(),
            ".",
            *issued.key_pem.decode().splitlines(),
            ".",
        )
        self.assertIn("Certificate pasted added", out)
        self.commit()
        self.assertEqual(
            load_certificate(load_config(self.config).certificates["pasted"]).leaf,
            issued.certificate,
        )

    def test_new_self_signed_and_csr(self) -> None:
        """
        NEW makes a key, a self-signed certificate for the names given, and
        prints a CSR for them.
        """
        out = self.certconfig(
            "new", "made", "", "mx.test.example, mx2.test.example", "Example Org", "", "", "",
            "usa", "uk", "30", "2", "y",
        )  # fmt: skip
        self.assertIn("Enter Common Name:\n[mx.test.example]>", out)
        self.assertIn("Enter a two-letter country code, or nothing.", out)
        begin = out.index("-----BEGIN CERTIFICATE REQUEST-----")
        end = out.index("-----END CERTIFICATE REQUEST-----") + len(
            "-----END CERTIFICATE REQUEST-----"
        )
        csr = x509.load_pem_x509_csr(out[begin:end].encode())
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(
            sans.get_values_for_type(x509.DNSName), ["mx.test.example", "mx2.test.example"]
        )
        self.commit()
        loaded = load_certificate(load_config(self.config).certificates["made"])
        self.assertEqual(loaded.key.key_size, 2048)  # type: ignore[union-attr]
        self.assertIn("O=Example Org", loaded.leaf.subject.rfc4514_string())
        self.assertIn("C=UK", loaded.leaf.subject.rfc4514_string())
        self.assertEqual(
            loaded.leaf.not_valid_after_utc - loaded.leaf.not_valid_before_utc,
            timedelta(days=30, minutes=5),
        )

    def test_signed_certificate_installed(self) -> None:
        """
        EDIT > SIGNED installs the certificate a CA issued for the key of a
        certificate made with NEW; a certificate for another key is refused.
        """
        self.certconfig("new", "made", "", "", "", "", "", "", "", "", "", "n")
        self.commit()
        entry = load_config(self.config).certificates["made"]
        loaded = load_certificate(entry)
        ca = CertificateAuthority.generate()
        signed = (
            x509.CertificateBuilder()
            .subject_name(loaded.leaf.subject)
            .issuer_name(ca.certificate.subject)
            .public_key(loaded.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.now(UTC) - timedelta(minutes=5))
            .not_valid_after(datetime.now(UTC) + timedelta(days=30))
            .sign(ca.key, hashes.SHA256())
        )
        path = os.path.join(self.directory, "signed.pem")
        with open(path, "wb") as f:
            f.write(signed.public_bytes(Encoding.PEM) + ca.cert_pem)
        other = self_signed(["x.example"]).write(os.path.join(self.directory, "other"))[0]
        out = self.certconfig("edit", "made", "signed", other, "edit", "made", "signed", path)
        self.assertIn("the private key does not match the certificate", out)
        self.assertIn("Certificate made is now CN=mx.test.example, issued by", out)
        self.commit()
        installed = load_certificate(load_config(self.config).certificates["made"])
        self.assertEqual(installed.leaf, signed)
        self.assertEqual(len(installed.chain), 1)

    def test_delete_rules(self) -> None:
        """
        DELETE refuses Demo and a certificate a listener uses, and removes
        an unused one.
        """
        cert, key, _ = self_signed(["mx.test.example"]).write(os.path.join(self.directory, "c"))
        self.certconfig("import", "main", cert, key, "")
        self.esa_tls("set", "listeners.Inboundmail.certificate", "main")
        out = self.certconfig("delete", "Demo", "delete", "main")
        self.assertIn("The Demo certificate is built in and cannot be deleted.", out)
        self.assertIn("Certificate main is used by Inboundmail", out)
        self.esa_tls("set", "listeners.Inboundmail.certificate", "Demo")
        out = self.certconfig("delete", "main")
        self.assertIn("Certificate main deleted.", out)
        self.commit()
        self.assertNotIn("main", load_config(self.config).certificates)

    def test_export(self) -> None:
        """
        EXPORT writes the certificate with its chain and, if asked, the key
        (mode 0600).
        """
        issued = CertificateAuthority.generate().issue(["mx.test.example"])
        cert, key, chain = issued.write(os.path.join(self.directory, "in"))
        self.certconfig("import", "main", cert, key, chain)
        out = self.certconfig("export", "main", "out.pem", "y", "out.key")
        self.assertIn("Wrote out.pem.", out)
        with open(os.path.join(self.directory, "out.pem"), "rb") as f:
            self.assertEqual(len(x509.load_pem_x509_certificates(f.read())), 2)
        key_path = os.path.join(self.directory, "out.key")
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        with open(key_path, "rb") as f:
            self.assertIn(b"PRIVATE KEY", f.read())
