# -*- test-case-name: tests.test_cli_certconfig -*-
"""
Import, create, export and delete TLS certificates (ESA certconfig).

C{esa-tls --config FILE certconfig} lists the certificates (the insecure
Demo one flagged as such, with the listeners using each) and offers:

  - IMPORT: a PEM certificate (with its chain) and key from files;
  - PASTE: the same, pasted into the terminal, each ended by a line with
    only a period;
  - NEW: a new key with a self-signed certificate (usable at once) and a
    certificate signing request (CSR) to send to a CA;
  - EDIT: print the CSR of a certificate's key again, or install the
    certificate a CA signed for that key;
  - EXPORT: write a certificate and its chain (and, if asked, its key) to
    files;
  - DELETE: remove a certificate, refused while a listener uses it and for
    Demo;
  - PRINT: every detail, as C{esa-tls certificates} shows them.

Material is checked before anything is stored: the key must match the
certificate, the chain must be in order, the certificate must be valid now
(the same checks the gateway makes when it loads it).  Accepted material is
written under C{data_dir/certs/} (keys with mode 0600, never readable by
others) as new files, so a pending change never alters a file the running
gateway uses; the C{[certificates.NAME]} entry pointing at them is pending
until C{commit}.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import os
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from esa_tls.cli._document import ConfigDocument
from esa_tls.cli._prompt import BadAnswer, Prompter
from esa_tls.cli._session import EditSession, edit, show_faults
from esa_tls.cli.main import CommandContext
from esa_tls.config.model import CertificateConfig
from esa_tls.durable import write_atomically
from esa_tls.tls.certificates import (
    CertificateError,
    PrivateKey,
    format_time,
    load_certificate,
    read_pem_file,
    validate_certificate,
)
from esa_tls.tls.demo import DEMO_NAME, load_demo_certificate

__all__ = ["generate", "run"]

_KEY_TYPES = ("EC P-256", "RSA 2048", "RSA 4096")
_BACKDATE = timedelta(minutes=5)


def run(options: argparse.Namespace, context: CommandContext) -> int:
    """
    Run the certconfig dialog on the pending configuration.
    """
    return edit(context, lambda s, d, p: CertConfig(s, d, p).main())


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def generate(
    subject: x509.Name,
    names: list[str],
    days: int,
    key_type: str = "EC P-256",
    now: datetime | None = None,
) -> tuple[PrivateKey, x509.Certificate, x509.CertificateSigningRequest]:
    """
    A new key, a self-signed server certificate for it and a CSR.

    @param names: the subjectAltName host names (or IP addresses).
    @param key_type: one of C{"EC P-256"}, C{"RSA 2048"}, C{"RSA 4096"}.
    """
    if now is None:
        now = datetime.now(UTC)
    key: PrivateKey
    if key_type.startswith("RSA"):
        key = rsa.generate_private_key(65537, int(key_type.split()[1]))
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    sans = x509.SubjectAlternativeName([_general_name(n) for n in names])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(sans, critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(key, _hash_for(key))
    )
    return key, cert, _csr(key, subject, sans)


def _csr(
    key: PrivateKey, subject: x509.Name, sans: x509.SubjectAlternativeName | None
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if sans is not None:
        builder = builder.add_extension(sans, critical=False)
    return builder.sign(key, _hash_for(key))


def _der_hint(source: str, data: bytes, kind: str) -> str:
    """
    The end of the sentence refusing C{data} from C{source} as PEM: the
    command that converts it when it is DER (the other encoding CAs hand
    out), else a full stop.

    @param kind: C{"x509"} or C{"pkey"}, the openssl command for its kind.
    """
    try:
        if kind == "x509":
            x509.load_der_x509_certificate(data)
        else:
            serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "."
    return (
        f": it is DER; convert it with 'openssl {kind} -inform DER -in {source} -out {source}.pem'."
    )


def _load_key(data: bytes, password: bytes | None, source: str) -> PrivateKey:
    """
    @param source: the file the key was read from, for the messages.
    @raise TypeError: the key is encrypted and no (or a wrong) password was
        given.
    @raise BadAnswer: not a key TLS servers can use.
    """
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, UnsupportedAlgorithm):
        if password is not None:
            raise TypeError("wrong passphrase") from None
        raise BadAnswer(
            f"{source} is not a PEM private key{_der_hint(source, data, 'pkey')}"
        ) from None
    if not isinstance(key, PrivateKey):
        raise BadAnswer(f"The key in {source} is of a type TLS servers cannot use.")
    return key


class CertConfig:
    """
    The certconfig dialog over one document.
    """

    def __init__(self, session: EditSession, doc: ConfigDocument, prompter: Prompter) -> None:
        self.session = session
        self.doc = doc
        self.p = prompter
        self.base_dir = session.pending.base_dir

    # Where things are

    def resolve(self, path: str) -> str:
        if os.path.isabs(path):
            return path
        return os.path.normpath(os.path.join(self.base_dir, path))

    def data_dir(self) -> str:
        return self.resolve(str(self.doc.get(("system", "data_dir"), "var") or "."))

    def names(self) -> list[str]:
        return [DEMO_NAME, *[n for n in self.doc.keys(("certificates",)) if n != DEMO_NAME]]

    def config_of(self, name: str) -> CertificateConfig:
        entry = self.doc.get(("certificates", name), {})
        return CertificateConfig(
            name,
            **{
                k: self.resolve(str(entry[k]))
                for k in ("cert", "key", "chain")
                if isinstance(entry, dict) and entry.get(k)
            },
        )

    def users(self, name: str) -> list[str]:
        """
        The listeners of the pending configuration that serve C{name}.
        """
        users = []
        for listener in self.doc.keys(("listeners",)):
            if self.doc.get(("listeners", listener, "certificate"), DEMO_NAME) == name:
                users.append(listener)
            sni = self.doc.get(("listeners", listener, "sni"), {})
            if isinstance(sni, dict):
                users += [f"{listener} (SNI {host})" for host, n in sni.items() if n == name]
        return users

    def status(self, name: str) -> str:
        try:
            if name == DEMO_NAME:
                loaded = load_demo_certificate(self.data_dir())
            else:
                loaded = load_certificate(self.config_of(name))
        except CertificateError as e:
            if name == DEMO_NAME:
                return "INSECURE demonstration certificate (made when the gateway first starts)"
            return f"REFUSED: {e.reason}"
        info = loaded.info()
        text = f"{info.subject}, valid until {format_time(info.not_after)}"
        if name == DEMO_NAME:
            text = "INSECURE demonstration certificate, " + text
        return text

    def write_new(self, name: str, extension: str, data: bytes, mode: int) -> str:
        """
        Write C{data} to a new file under C{data_dir/certs/}, owned by the
        directory's owner and group.

        @return: the path to put in the configuration: relative to the
            configuration file's directory when under it.
        """
        directory = os.path.join(self.data_dir(), "certs")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        candidate = os.path.join(directory, f"{name}{extension}")
        counter = 0
        while os.path.exists(candidate):
            counter += 1
            suffix = f"-{stamp}" + (f"-{counter}" if counter > 1 else "")
            candidate = os.path.join(directory, f"{name}{suffix}{extension}")
        # Owned like the directory: the gateway, running as its own user,
        # must read the key, whoever (root) ran this dialog.
        info = os.stat(directory)
        write_atomically(candidate, data, mode, (info.st_uid, info.st_gid))
        relative = os.path.relpath(candidate, self.base_dir)
        return candidate if relative.startswith("..") else relative

    # Top level

    def main(self) -> None:
        p = self.p
        while True:
            p.say("Currently installed certificates:")
            for number, name in enumerate(self.names(), start=1):
                users = self.users(name)
                p.say(f"{number}. {name}: {self.status(name)}")
                p.say(f"   Listeners: {', '.join(users) if users else '(none)'}")
            op = p.operation(
                [
                    ("IMPORT", "Import a certificate and key from PEM files."),
                    ("PASTE", "Paste a certificate and key into the CLI."),
                    ("NEW", "Create a key, a self-signed certificate and a CSR."),
                    ("EDIT", "Print a CSR again, or install the certificate a CA signed."),
                    ("EXPORT", "Export a certificate."),
                    ("DELETE", "Remove a certificate."),
                    ("PRINT", "Display the certificates in detail."),
                ]
            )
            if op is None:
                return
            getattr(self, f"op_{op.lower()}")()

    def ask_name(self) -> str:
        taken = self.names()

        def check(answer: str) -> str:
            if answer == DEMO_NAME:
                raise BadAnswer("Demo is the built-in certificate: choose another name.")
            if not answer or any(not ("!" <= c <= "~") for c in answer) or "/" in answer:
                raise BadAnswer("A name is printable ASCII without spaces or slashes.")
            if answer in taken:
                raise BadAnswer(f"A certificate named {answer} already exists.")
            return answer

        return self.p.ask("Enter a name for this certificate.", check, None)

    def pick(self, verb: str, *, demo: bool) -> str | None:
        names = [n for n in self.names() if demo or n != DEMO_NAME]
        if not names:
            self.p.say("There is no certificate to choose.")
            return None
        index = self.p.pick(f"Enter the name or number of the certificate to {verb}.", names)
        return None if index is None else names[index]

    # Reading material

    def read_file(self, question: str, *, required: bool) -> tuple[str, bytes] | None:
        """
        @return: the path answered and what the file holds, or C{None} for
            no answer when the file is not C{required}.
        """

        def check(answer: str) -> tuple[str, bytes] | None:
            if not answer:
                if required:
                    raise BadAnswer("A file is required.")
                return None
            try:
                return answer, read_pem_file(answer)
            except OSError as e:
                raise BadAnswer(f"Cannot read {answer}: {e.strerror}.") from None

        return self.p.ask(question, check, "")

    def read_pasted(self, what: str) -> bytes:
        self.p.say(f"Paste the {what} now, then a line with only a period (.):")
        lines: list[str] = []
        while True:
            line = self.p.answer("")
            if line == ".":
                return ("\n".join(lines) + "\n").encode("ascii", "replace")
            lines.append(line)

    def key_from(self, data: bytes, source: str) -> PrivateKey:
        """
        Load a key, asking for its passphrase if it is encrypted (it is
        stored decrypted, mode 0600: the gateway starts unattended).
        """
        try:
            return _load_key(data, None, source)
        except TypeError:
            pass
        while True:
            prompt = "The private key is encrypted. Enter its passphrase: "
            if self.p.stdin.isatty():
                passphrase = getpass.getpass(prompt)
            else:
                passphrase = self.p.answer(prompt)
            try:
                return _load_key(data, passphrase.encode("utf-8"), source)
            except TypeError:
                self.p.say("Wrong passphrase.")

    def check_material(
        self,
        name: str,
        cert_data: bytes,
        key: PrivateKey,
        chain_data: bytes | None,
        sources: tuple[str, str] = ("The certificate", "The chain"),
    ) -> list[x509.Certificate] | None:
        """
        The leaf and chain if they may be served with C{key}, else C{None}
        after saying why.

        @param sources: where the certificate and the chain came from (file
            names), for the messages.
        """
        certs: list[x509.Certificate] = []
        for data, source in ((cert_data, sources[0]), (chain_data, sources[1])):
            if data is None or (not data.strip() and certs):
                continue
            try:
                certs += x509.load_pem_x509_certificates(data)
            except ValueError:
                self.p.say(
                    f"{source} is not a PEM certificate{_der_hint(source, data, 'x509')} "
                    "Nothing was imported."
                )
                return None
        try:
            warnings = validate_certificate(name, certs[0], certs[1:], key)
        except CertificateError as e:
            self.p.say(f"The certificate cannot be used: {e.reason}. Nothing was imported.")
            return None
        for warning in warnings:
            self.p.say(f"Warning: {warning}")
        return certs

    def store(self, name: str, certs: list[x509.Certificate], key: PrivateKey) -> None:
        key_path = self.write_new(name, ".key", _key_pem(key), 0o600)
        cert_path = self.write_new(name, ".crt", _cert_pem(certs), 0o644)
        table = self.doc.table(("certificates", name))
        table["cert"] = cert_path
        table["key"] = key_path
        self.p.say(
            f"Certificate {name} added: {certs[0].subject.rfc4514_string()}, valid until "
            f"{format_time(certs[0].not_valid_after_utc)}."
        )
        self.p.say(
            "Use 'listenerconfig' > EDIT > CERTIFICATE to assign it to a listener, then 'commit'."
        )

    # Operations

    def op_import(self) -> None:
        name = self.ask_name()
        cert = self.read_file(
            "Enter the path of the PEM certificate file (the certificate first, then any chain).",
            required=True,
        )
        key_data = self.read_file("Enter the path of the PEM private key file.", required=True)
        chain = self.read_file(
            "Enter the path of a PEM chain file (intermediate certificates), if it is separate.",
            required=False,
        )
        assert cert is not None and key_data is not None
        self.finish_import(
            name,
            cert[1],
            key_data[1],
            None if chain is None else chain[1],
            (cert[0], key_data[0], "" if chain is None else chain[0]),
        )

    def op_paste(self) -> None:
        name = self.ask_name()
        cert = self.read_pasted("certificate (the certificate first, then any chain)")
        key_data = self.read_pasted("private key")
        sources = ("The pasted certificate", "The pasted key", "")
        self.finish_import(name, cert, key_data, None, sources)

    def finish_import(
        self,
        name: str,
        cert: bytes,
        key_data: bytes,
        chain: bytes | None,
        sources: tuple[str, str, str],
    ) -> None:
        """
        @param sources: where the certificate, the key and the chain came
            from (file names), for the messages.
        """
        try:
            key = self.key_from(key_data, sources[1])
        except BadAnswer as e:
            self.p.say(f"{e} Nothing was imported.")
            return
        certs = self.check_material(name, cert, key, chain, (sources[0], sources[2]))
        if certs is not None:
            self.store(name, certs, key)

    def op_new(self) -> None:
        p = self.p
        name = self.ask_name()
        hostname = str(self.doc.get(("system", "hostname"), "") or "")
        common = p.text("Enter Common Name:", hostname or None)
        names = p.ask(
            "Enter the host names the certificate is for (subjectAltName), separated by commas.",
            lambda a: [n.strip() for n in a.split(",") if n.strip()],
            common,
        )
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
        for oid, question in (
            (NameOID.ORGANIZATION_NAME, "Enter Organization:"),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, "Enter Organizational Unit:"),
            (NameOID.LOCALITY_NAME, "Enter Locality or City:"),
            (NameOID.STATE_OR_PROVINCE_NAME, "Enter State or Province:"),
        ):
            value = p.text(question, required=False)
            if value:
                attributes.append(x509.NameAttribute(oid, value))

        def country(answer: str) -> str:
            if answer and not (len(answer) == 2 and answer.isalpha() and answer.isascii()):
                raise BadAnswer("Enter a two-letter country code, or nothing.")
            return answer.upper()

        code = p.ask("Country (2 letter code):", country, "")
        if code:
            attributes.append(x509.NameAttribute(NameOID.COUNTRY_NAME, code))
        days = p.integer("Duration before expiration (in days):", 3650, 1, 36500)
        key_type = _KEY_TYPES[p.choose("Choose the type of the private key.", _KEY_TYPES, 0)]
        key, cert, csr = generate(x509.Name(attributes), names, days, key_type)
        self.store(name, [cert], key)
        p.say(
            "It is self-signed: peers that verify certificates will not trust it until a CA "
            "signs it."
        )
        if p.yes_no("Do you want to view the CSR?", True):
            p.say(csr.public_bytes(serialization.Encoding.PEM).decode("ascii").rstrip("\n"))
            p.say(
                "Send it to your CA, then install the signed certificate with "
                "certconfig > EDIT > SIGNED."
            )

    def op_edit(self) -> None:
        name = self.pick("edit", demo=False)
        if name is None:
            return
        config = self.config_of(name)
        try:
            loaded = load_certificate(config)
        except CertificateError as e:
            self.p.say(f"Certificate {name} cannot be loaded: {e.reason}")
            return
        op = self.p.operation(
            [
                ("CSR", "Print a certificate signing request for this certificate's key."),
                ("SIGNED", "Install the certificate a CA signed for this key."),
            ]
        )
        if op == "CSR":
            sans: x509.SubjectAlternativeName | None
            try:
                sans = loaded.leaf.extensions.get_extension_for_class(
                    x509.SubjectAlternativeName
                ).value
            except x509.ExtensionNotFound:
                sans = None
            csr = _csr(loaded.key, loaded.leaf.subject, sans)
            self.p.say(csr.public_bytes(serialization.Encoding.PEM).decode("ascii").rstrip("\n"))
        elif op == "SIGNED":
            cert = self.read_file(
                "Enter the path of the signed PEM certificate file (the certificate first, "
                "then its chain).",
                required=True,
            )
            assert cert is not None
            certs = self.check_material(name, cert[1], loaded.key, None, (cert[0], ""))
            if certs is None:
                return
            cert_path = self.write_new(name, ".crt", _cert_pem(certs), 0o644)
            table = self.doc.table(("certificates", name))
            table["cert"] = cert_path
            if "chain" in table:
                del table["chain"]
            self.p.say(
                f"Certificate {name} is now {certs[0].subject.rfc4514_string()}, issued by "
                f"{certs[0].issuer.rfc4514_string()}."
            )

    def op_export(self) -> None:
        p = self.p
        name = self.pick("export", demo=True)
        if name is None:
            return
        try:
            if name == DEMO_NAME:
                loaded = load_demo_certificate(self.data_dir())
            else:
                loaded = load_certificate(self.config_of(name))
        except CertificateError as e:
            p.say(f"Certificate {name} cannot be exported: {e.reason}")
            return
        if self.write_export(
            "Enter the file to export the certificate (and its chain) to.",
            f"{name}.pem",
            _cert_pem([loaded.leaf, *loaded.chain]),
            0o644,
        ) and p.yes_no("Do you want to export the private key as well?", False):
            self.write_export(
                "Enter the file for the private key.", f"{name}.key", _key_pem(loaded.key), 0o600
            )

    def write_export(self, question: str, default: str, data: bytes, mode: int) -> bool:
        p = self.p
        path = p.text(question, default)
        if os.path.exists(path) and not p.yes_no(f"{path} exists. Overwrite it?", False):
            return False
        try:
            write_atomically(path, data, mode)
        except OSError as e:
            p.say(f"Cannot write {path}: {e.strerror}")
            return False
        p.say(f"Wrote {path}.")
        return True

    def op_delete(self) -> None:
        p = self.p
        names = self.names()
        index = p.pick("Enter the name or number of the certificate to delete.", names)
        if index is None:
            return
        name = names[index]
        if name == DEMO_NAME:
            p.say("The Demo certificate is built in and cannot be deleted.")
            return
        users = self.users(name)
        if users:
            p.say(
                f"Certificate {name} is used by {', '.join(users)}: assign another "
                "certificate there first."
            )
            return
        self.doc.delete(("certificates", name))
        p.say(
            f"Certificate {name} deleted. Its files stay in {os.path.join(self.data_dir(), 'certs')} "
            "until you remove them."
        )

    def op_print(self) -> None:
        from esa_tls.cli.certificates import render
        from esa_tls.tls.store import CertificateStore

        config, faults = self.session.check(self.doc.text())
        if config is None:
            show_faults(self.p, faults, "The pending configuration has problems:")
            return
        store = CertificateStore(config, generate_demo=False)
        text, _ = render(store, config, store.names())
        self.p.say(text.rstrip("\n"))
