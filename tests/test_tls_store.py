"""
Tests for L{esa_tls.tls.store} and L{esa_tls.tls.demo}: the Demo certificate,
imported certificates by name, and reloading them in service.
"""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID
from twisted.internet import defer, protocol
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.ssl import CertificateOptions
from twisted.logger import ILogObserver, Logger, formatEvent
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from esa_tls.config.model import TLSMode
from esa_tls.interfaces import ICertificateStore
from esa_tls.testing import CertificateAuthority, IssuedCertificate, expired
from esa_tls.tls import store as store_module
from esa_tls.tls.certificates import CertificateError, CertificateValidityError, load_certificate
from esa_tls.tls.demo import (
    DEMO_UNIT,
    demo_paths,
    demo_warning_lines,
    uses_demo_with_tls,
)
from esa_tls.tls.server import TLSConfigurationError
from esa_tls.tls.store import CertificateStore, certificate_faults
from tests.test_tls_support import (
    HOSTNAME,
    install,
    make_config,
    make_listener,
    python_client,
    serve,
    write_pem,
)


def der(issued: IssuedCertificate) -> bytes:
    return issued.certificate.public_bytes(Encoding.DER)


class DemoTests(SynchronousTestCase):
    """
    The Demo certificate always exists, is made on this machine once, and
    is marked insecure wherever it is described.
    """

    def setUp(self) -> None:
        self.data_dir = self.mktemp()

    def test_interface(self) -> None:
        """
        The store provides L{ICertificateStore}.
        """
        store = CertificateStore(make_config(self.data_dir))
        self.assertTrue(verifyObject(ICertificateStore, store))

    def test_generated(self) -> None:
        """
        On first start the Demo certificate is generated under
        C{data_dir/certs/}: self-signed, for this host name, its subject
        saying it is an insecure demonstration certificate, its key readable
        by the owner only.
        """
        store = CertificateStore(make_config(self.data_dir))
        self.assertEqual(store.names(), ["Demo"])
        cert_path, key_path = demo_paths(self.data_dir)
        self.assertEqual(os.path.dirname(cert_path), os.path.join(self.data_dir, "certs"))
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        self.assertEqual(cert.subject, cert.issuer)
        self.assertEqual(
            cert.subject.rfc4514_string(),
            f"CN={HOSTNAME},OU={DEMO_UNIT.replace(',', chr(92) + ',')},O=esa_tls",
        )
        info = store.describe("Demo")
        self.assertTrue(info.insecure)
        self.assertIn("INSECURE demonstration certificate", info.subject)
        self.assertEqual(info.sans, (f"DNS:{HOSTNAME}",))
        self.assertEqual(info.key_description, "EC P-256 256 bits")

    def test_reused(self) -> None:
        """
        A later start reuses the Demo certificate on disk.
        """
        first = CertificateStore(make_config(self.data_dir)).describe("Demo")
        second = CertificateStore(make_config(self.data_dir)).describe("Demo")
        self.assertEqual(first.fingerprint, second.fingerprint)

    def test_new_hostname(self) -> None:
        """
        When the gateway's host name changes, a new Demo certificate is made
        for the new name.
        """
        CertificateStore(make_config(self.data_dir))
        info = CertificateStore(make_config(self.data_dir, hostname="other.example.test")).describe(
            "Demo"
        )
        self.assertEqual(info.sans, ("DNS:other.example.test",))

    def test_damaged(self) -> None:
        """
        A damaged Demo certificate is replaced by a new one.
        """
        first = CertificateStore(make_config(self.data_dir)).describe("Demo")
        with open(demo_paths(self.data_dir)[0], "wb") as f:
            f.write(b"garbage")
        second = CertificateStore(make_config(self.data_dir)).describe("Demo")
        self.assertNotEqual(first.fingerprint, second.fingerprint)

    def test_reserved_name(self) -> None:
        """
        A configured certificate named Demo with files is refused: the name
        belongs to the generated one.
        """
        ca = CertificateAuthority.generate()
        config = install("Demo", ca.issue(["a.test"]), self.mktemp())
        store = CertificateStore(make_config(self.data_dir, [config]))
        self.assertTrue(store.describe("Demo").insecure)
        self.assertIn("the name Demo is reserved", store.reload()[0])

    def test_warning_lines(self) -> None:
        """
        The start-up warning for TLS on the Demo certificate uses the ESA's
        words and says the certificate is not secure.
        """
        lines = demo_warning_lines("IncomingMail")
        self.assertEqual(
            lines[0],
            "You have chosen to enable TLS. Please use the 'certconfig' command to "
            "ensure that there is a valid certificate configured.",
        )
        self.assertIn("Listener IncomingMail uses the demonstration certificate", lines[1])
        self.assertIn("it is not secure and is not recommended for general use", lines[1])

    def test_uses_demo_with_tls(self) -> None:
        """
        The warning applies to listeners that may serve Demo with TLS on:
        Demo as default or SNI certificate, and TLS on in a policy or
        implicit TLS.
        """
        self.assertTrue(uses_demo_with_tls(make_listener(tls=TLSMode.PREFERRED)))
        self.assertTrue(uses_demo_with_tls(make_listener(tls=TLSMode.REQUIRED)))
        self.assertFalse(uses_demo_with_tls(make_listener(tls=TLSMode.OFF)))
        self.assertTrue(uses_demo_with_tls(make_listener(tls=TLSMode.OFF, protocol="SMTPS")))
        self.assertFalse(uses_demo_with_tls(make_listener(certificate="main")))
        self.assertTrue(
            uses_demo_with_tls(make_listener(certificate="main", sni={"x.test": "Demo"}))
        )


class ServeDemoTests(TestCase):
    """
    A listener left on the Demo certificate serves it.
    """

    async def test_served(self) -> None:
        """
        A TLS client of a Demo listener sees the demonstration certificate.
        """
        listener = make_listener()
        store = CertificateStore(make_config(self.mktemp(), (), [listener]))
        port, _ = serve(self, store.server_creator(listener))
        result = await python_client(port, server_hostname=HOSTNAME)
        assert result.peer_der is not None
        cert = x509.load_der_x509_certificate(result.peer_der)
        self.assertIn("INSECURE demonstration certificate", cert.subject.rfc4514_string())


class StoreTests(SynchronousTestCase):
    """
    Imported certificates: known by name, refused with a reason when bad.
    """

    def setUp(self) -> None:
        self.base = self.mktemp()
        self.ca = CertificateAuthority.generate()

    def test_names(self) -> None:
        """
        C{names()} lists Demo first, then the configured certificates.
        """
        configs = [
            install(name, self.ca.issue(["a.test"]), os.path.join(self.base, name))
            for name in ("zeta", "alpha")
        ]
        store = CertificateStore(make_config(os.path.join(self.base, "d"), configs))
        self.assertEqual(store.names(), ["Demo", "alpha", "zeta"])
        self.assertEqual(store.describe("alpha").subject, "CN=a.test")
        self.assertRaises(KeyError, store.describe, "nope")

    def test_refused_at_start(self) -> None:
        """
        A certificate that fails at start is not in service: the store says
        why, describing it raises the reason, and a listener using it cannot
        get a TLS creator.
        """
        config = install("old", expired(self.ca, ["a.test"]), self.base)
        listener = make_listener(certificate="old")
        store = CertificateStore(make_config(os.path.join(self.base, "d"), [config], [listener]))
        self.assertIn("old", store.names())
        self.assertTrue(store.errors["old"].startswith("the certificate expired on"))
        error = self.assertRaises(CertificateError, store.describe, "old")
        self.assertIn("expired", error.reason)
        self.assertRaises(TLSConfigurationError, store.server_creator, listener)


class _LineClient(LineReceiver):
    delimiter = b"\n"

    def __init__(self) -> None:
        self.lines: defer.DeferredQueue[bytes] = defer.DeferredQueue()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def lineReceived(self, line: bytes) -> None:
        self.lines.put(line)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        self.closed.callback(None)


class ReloadTests(TestCase):
    """
    Reloading replaces certificates in service without rebuilding creators
    or dropping connections, and never installs a bad certificate.
    """

    def setUp(self) -> None:
        self.base = self.mktemp()
        self.ca = CertificateAuthority.generate()
        self.first = self.ca.issue(["mx.example.test"])
        self.config = install("main", self.first, os.path.join(self.base, "main"))
        self.listener = make_listener(certificate="main")
        self.store = CertificateStore(
            make_config(os.path.join(self.base, "data"), [self.config], [self.listener])
        )
        self.creator = self.store.server_creator(self.listener)
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        self.patch(store_module, "log", Logger(observer=observer))

    def replace_files(self, issued: IssuedCertificate) -> None:
        issued.write(os.path.join(self.base, "main"))

    async def test_good_replacement(self) -> None:
        """
        After a reload, the creator handed out before serves the new
        certificate to new handshakes.
        """
        port, _ = serve(self, self.creator)
        before = await python_client(port)
        self.assertEqual(before.peer_der, der(self.first))
        second = self.ca.issue(["mx.example.test"])
        self.replace_files(second)
        self.assertEqual(self.store.reload(), [])
        after = await python_client(port)
        self.assertEqual(after.peer_der, der(second))
        self.assertIs(self.store.server_creator(self.listener), self.creator)

    async def test_bad_replacement(self) -> None:
        """
        A new certificate that fails validation is refused with a message
        and a log line naming the certificate and the reason; the old one
        stays in service.
        """
        port, _ = serve(self, self.creator)
        self.replace_files(expired(self.ca, ["mx.example.test"]))
        (message,) = self.store.reload()
        self.assertTrue(message.startswith("Certificate main refused: the certificate expired on"))
        self.assertIn("stays in service", message)
        logged = [formatEvent(e) for e in self.events]
        self.assertIn(message, logged)
        result = await python_client(port)
        self.assertEqual(result.peer_der, der(self.first))
        self.assertEqual(self.store.describe("main").fingerprint, self.describe_first())

    def describe_first(self) -> str:
        from cryptography.hazmat.primitives import hashes

        return self.first.certificate.fingerprint(hashes.SHA256()).hex(":").upper()

    async def test_key_mismatch_replacement(self) -> None:
        """
        A half-finished rollover (new certificate, old key) is refused too.
        """
        port, _ = serve(self, self.creator)
        second = self.ca.issue(["mx.example.test"])
        with open(self.config.cert, "wb") as f:
            f.write(second.cert_pem)
        (message,) = self.store.reload()
        self.assertIn("the private key does not match the certificate", message)
        result = await python_client(port)
        self.assertEqual(result.peer_der, der(self.first))

    async def test_connection_in_progress(self) -> None:
        """
        A connection established before a reload keeps working on its
        original certificate.
        """
        from twisted.internet import reactor

        port, _ = serve(self, self.creator, oneshot=False)
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, CertificateOptions())
        client = _LineClient()
        await connectProtocol(endpoint, client)
        self.assertTrue((await client.lines.get()).startswith(b"OK "))
        self.replace_files(self.ca.issue(["mx.example.test"]))
        self.assertEqual(self.store.reload(), [])
        client.sendLine(b"hello")
        self.assertEqual(await client.lines.get(), b"echo hello")
        assert client.transport is not None
        peer = client.transport.getPeerCertificate()  # type: ignore[attr-defined]
        self.assertEqual(peer.to_cryptography(), self.first.certificate)
        client.transport.loseConnection()
        await client.closed

    def test_unchanged_keeps_context(self) -> None:
        """
        A reload that finds the same files keeps the certificate object, so
        TLS contexts (and resumable sessions) survive.
        """
        before = self.store.current("main")
        self.assertEqual(self.store.reload(), [])
        self.assertIs(self.store.current("main"), before)

    def test_new_configuration(self) -> None:
        """
        Reloading with a new configuration adds and removes certificates.
        """
        added = install("added", self.ca.issue(["b.test"]), os.path.join(self.base, "added"))
        config = make_config(os.path.join(self.base, "data"), [added])
        self.assertEqual(self.store.reload(config), [])
        self.assertEqual(self.store.names(), ["Demo", "added"])
        self.assertIsNone(self.store.current("main"))
        self.assertEqual(self.store.describe("added").subject, "CN=b.test")

    def test_refused_then_fixed(self) -> None:
        """
        A certificate refused at start goes into service when a reload
        finds it fixed.
        """
        bad = install("late", expired(self.ca, ["c.test"]), os.path.join(self.base, "late"))
        config = make_config(os.path.join(self.base, "data"), [self.config, bad])
        self.assertEqual(len(self.store.reload(config)), 1)
        self.assertIn("late", self.store.errors)
        self.ca.issue(["c.test"]).write(os.path.join(self.base, "late"))
        self.assertEqual(self.store.reload(), [])
        self.assertEqual(self.store.errors, {})
        self.assertEqual(self.store.describe("late").subject, "CN=c.test")

    def test_expiry_warning_logged(self) -> None:
        """
        Loading a certificate that expires soon logs a warning naming it.
        """
        from datetime import timedelta

        from esa_tls.testing import expiring_in

        self.replace_files(expiring_in(self.ca, ["mx.example.test"], timedelta(days=5)))
        self.assertEqual(self.store.reload(), [])
        logged = [formatEvent(e) for e in self.events]
        self.assertTrue(
            [line for line in logged if line.startswith("Certificate main: expires in 4 days")],
            logged,
        )


_GATEWAY = """\
[system]
hostname = "mx.example.test"
data_dir = "{data_dir}"

[interfaces.Loopback]
address = "127.0.0.1/8"

[listeners.InboundMail]
type = "public"
interface = "Loopback"
port = 2525
rat = ["example.com"]
certificate = "{certificate}"
{sni}
[certificates.Mine]
cert = "{cert}"
key = "{key}"
{chain}
"""


class CertificateFaultsTests(SynchronousTestCase):
    """
    L{certificate_faults}: a certificate a listener serves that fails
    validation is a configuration fault naming the file, the line and key of
    the file at fault, and the reason.
    """

    def setUp(self) -> None:
        from esa_tls.config.load import load_config

        self.load_config = load_config
        self.base = os.path.abspath(self.mktemp())
        self.ca = CertificateAuthority.generate()
        self.cert, self.key, self.chain = self.ca.issue(["mx.example.test"]).write(
            os.path.join(self.base, "good")
        )
        _, self.other_key, _ = self.ca.issue(["mx.example.test"]).write(
            os.path.join(self.base, "other")
        )
        self.path = os.path.join(self.base, "gateway.toml")

    def faults(
        self,
        cert: str | None = None,
        key: str | None = None,
        chain: str = "",
        certificate: str = "Mine",
        sni: str = "",
    ) -> list[str]:
        """
        Write a configuration whose C{[certificates.Mine]} names these
        files (line 16 C{cert}, 17 C{key}, 18 C{chain}), load it with the
        gateway's loader, and return its certificate faults as text.
        """
        text = _GATEWAY.format(
            data_dir=os.path.join(self.base, "var"),
            certificate=certificate,
            sni=sni,
            cert=cert or self.cert,
            key=key or self.key,
            chain=f'chain = "{chain}"' if chain else "",
        )
        with open(self.path, "w") as f:
            f.write(text)
        return [str(fault) for fault in certificate_faults(self.load_config(self.path))]

    def test_good(self) -> None:
        """
        A certificate that passes is no fault.
        """
        self.assertEqual(self.faults(chain=self.chain), [])

    def test_expired_not_a_fault(self) -> None:
        """
        An expired certificate is refused by the store (and alerted on),
        but is no configuration fault: time made it so, and refusing to
        start would turn it into an outage at the next restart.
        """
        cert, key, _ = expired(self.ca, ["mx.example.test"]).write(
            os.path.join(self.base, "expired")
        )
        self.assertEqual(self.faults(cert=cert, key=key), [])
        with self.assertRaises(CertificateValidityError):
            load_certificate(self.load_config(self.path).certificates["Mine"])

    def test_key_mismatch(self) -> None:
        """
        A key that is not the certificate's is a fault of C{key}.
        """
        self.assertEqual(
            self.faults(key=self.other_key),
            [
                f"{self.path}:17: certificates.Mine.key: the private key does not match "
                "the certificate; served by listener InboundMail"
            ],
        )

    def test_not_pem(self) -> None:
        """
        A certificate file that holds no PEM certificate is a fault of
        C{cert}.
        """
        garbage = write_pem(os.path.join(self.base, "garbage.crt"), b"not a certificate\n")
        self.assertEqual(
            self.faults(cert=garbage),
            [
                f"{self.path}:16: certificates.Mine.cert: certificate file {garbage} holds "
                "no PEM certificate; served by listener InboundMail"
            ],
        )

    def test_certificate_as_key(self) -> None:
        """
        A certificate given as the key is a fault of C{key}.
        """
        self.assertEqual(
            self.faults(key=self.cert),
            [
                f"{self.path}:17: certificates.Mine.key: key file {self.cert} holds no "
                "usable PEM private key; served by listener InboundMail"
            ],
        )

    def test_key_too_small(self) -> None:
        """
        A certificate whose key OpenSSL refuses to serve (RSA 1024 bits,
        under its security level) is a fault of C{cert}.  Before, it passed
        every check: the gateway started, offered STARTTLS and dropped
        every client that asked for it.
        """
        key = rsa.generate_private_key(65537, 1024)
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.example.test")]))
            .issuer_name(self.ca.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=90))
            .sign(self.ca.key, hashes.SHA256())
        )
        directory = os.path.join(self.base, "weak")
        os.makedirs(directory)
        cert_path = write_pem(os.path.join(directory, "cert.pem"), cert.public_bytes(Encoding.PEM))
        key_path = write_pem(
            os.path.join(directory, "key.pem"),
            key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
        )
        self.assertEqual(
            self.faults(cert=cert_path, key=key_path),
            [
                f"{self.path}:16: certificates.Mine.cert: OpenSSL refuses to serve it "
                "(ee key too small): its key is RSA 1024 bits; use RSA 2048 bits or more, "
                "or EC P-256; served by listener InboundMail"
            ],
        )

    def test_chain_out_of_order(self) -> None:
        """
        A chain file out of issuing order is a fault of C{chain}; the same
        chain given in the certificate file (a "fullchain" file), of C{cert}.
        """
        intermediate = self.ca.intermediate()
        issued = intermediate.issue(["mx.example.test"])
        directory = os.path.join(self.base, "chained")
        cert, key, chain = issued.write(directory)
        write_pem(chain, self.ca.cert_pem + intermediate.cert_pem)
        (fault,) = self.faults(cert=cert, key=key, chain=chain)
        self.assertTrue(
            fault.startswith(f"{self.path}:18: certificates.Mine.chain: the chain is not in order"),
            fault,
        )
        full = write_pem(
            os.path.join(directory, "full.pem"),
            issued.cert_pem + self.ca.cert_pem + intermediate.cert_pem,
        )
        (fault,) = self.faults(cert=full, key=key)
        self.assertTrue(
            fault.startswith(f"{self.path}:16: certificates.Mine.cert: the chain is not in order"),
            fault,
        )

    def test_leaf_not_first(self) -> None:
        """
        A certificate file listing its issuer before the certificate is a
        fault of C{cert} saying the order is wrong, not of C{key}.
        """
        intermediate = self.ca.intermediate()
        issued = intermediate.issue(["mx.example.test"])
        directory = os.path.join(self.base, "backwards")
        _, key, _ = issued.write(directory)
        cert = write_pem(
            os.path.join(directory, "backwards.pem"), intermediate.cert_pem + issued.cert_pem
        )
        (fault,) = self.faults(cert=cert, key=key)
        self.assertTrue(
            fault.startswith(
                f"{self.path}:16: certificates.Mine.cert: the chain is not in order: the "
                "private key belongs to chain certificate 1 (CN=mx.example.test)"
            ),
            fault,
        )

    def test_sni(self) -> None:
        """
        A certificate served for an SNI name is served all the same.
        """
        (fault,) = self.faults(
            key=self.other_key,
            certificate="Demo",
            sni='sni = { "mx2.example.test" = "Mine" }\n',
        )
        self.assertIn("certificates.Mine.key: the private key does not match", fault)
        self.assertTrue(fault.endswith("; served by listener InboundMail"), fault)

    def test_unused(self) -> None:
        """
        A certificate no listener serves is no fault, however broken: the
        store refuses it (and logs why) when it loads.
        """
        self.assertEqual(self.faults(key=self.cert, certificate="Demo"), [])

    def test_demo(self) -> None:
        """
        The Demo certificate is the store's to make, not a fault when it
        does not exist yet: the embedded default configuration has none.
        """
        self.assertEqual(certificate_faults(self.load_config(None)), [])
        self.assertEqual(self.faults(certificate="Demo"), [])
