# -*- test-case-name: tests.test_config_load -*-
"""
Read a TOML configuration file into one validated L{GatewayConfig}.

Validation happens here, once, so that nothing downstream has to wonder
whether a value is sane: a listener's policies are complete (inheritance is
resolved), names refer to things that exist, paths are absolute.  Every
fault in the file is collected and reported together in one L{ConfigError},
each as C{FILE:LINE: KEY.PATH: what is wrong}; nothing is built from a file
with any fault, so the gateway never starts half-configured.

Besides faults there are warnings: things that are allowed but that the
administrator should hear about, such as ESA policy switches this gateway
accepts but does not implement (C{spam_check}...).  L{load_config} and
L{parse_config} return only the configuration; L{load_config_with_warnings}
and L{parse_config_with_warnings} return a L{LoadResult} that carries the
warnings too, for start-up to log.
"""

from __future__ import annotations

import ast
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from attrs import frozen

from esa_tls.addresslist import AddressList, AddressListError
from esa_tls.config.errors import (
    ConfigError,
    ConfigFault,
    KeyPath,
    SourceMap,
    render_path,
    suggest,
)
from esa_tls.config.model import (
    DEFAULT_ROW_TLS,
    POLICY_PARAMETER_KEYS,
    UNIMPLEMENTED_POLICY_KEYS,
    AccessRule,
    AdminSettings,
    AlertHookConfig,
    AlertRecipient,
    AlertSettings,
    CertificateConfig,
    DestinationControl,
    DestinationTLS,
    GatewayConfig,
    Interface,
    Listener,
    ListenerSettings,
    ListenerType,
    MailFlowPolicy,
    SenderGroup,
    SMTPAuthMode,
    SpoolSync,
    SystemSettings,
    TLSMode,
    WorkerCPUAffinity,
)
from esa_tls.hat.predefined import predefined_groups, predefined_policies
from esa_tls.hat.syntax import SenderSyntaxError, parse_sender
from esa_tls.outbound.discard import DISCARD_ROUTE
from esa_tls.spool.fs import syncfs_unsupported

#: The name of the built-in, insecure demonstration certificate.
DEMO_CERTIFICATE = "Demo"

#: The name under which a listener keeps its Default Policy Parameters.
DEFAULT_POLICY = "default"

#: C{source} of the configuration built from the embedded default.
EMBEDDED_SOURCE = "<embedded default>"

_TOP_KEYS = (
    "system",
    "interfaces",
    "listeners",
    "listener_settings",
    "certificates",
    "destinations",
    "smtp_routes",
    "alerts",
    "admin",
)
_LISTENER_KEYS = (
    "type",
    "interface",
    "port",
    "protocol",
    "default_domain",
    "max_concurrency",
    "tcp_queue",
    "domain_map",
    "certificate",
    "rat",
    "policies",
    "hat",
    "sni",
    "tls_protocols",
    "tls_ciphers",
    "hostname",
    "proxy_protocol",
    "proxy_trusted",
)
_TLS_PROTOCOLS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
#: The longest timeout or interval in seconds the configuration takes.
_MAX_SECONDS = 7 * 24 * 3600

#: The largest C{tcp_queue}: the kernel caps the backlog at C{somaxconn}
#: anyway, and C{listen()} refuses numbers past a C int.
MAX_TCP_QUEUE = 65535

#: The largest listener C{max_concurrency}: more connections than a
#: process has descriptors (C{nr_open}'s default is 1048576); the workers'
#: shared table is sized from it (twice as many slots, 32-bit counts).
MAX_LISTENER_CONCURRENCY = 1_000_000
_ALERT_SEVERITIES = ("critical", "warning", "info")
_ALERT_TYPES = ("system", "hardware", "updater")
_HOOK_TYPES = ("mail", "log", "command", "webhook", "python")

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\Z")
_NAME = re.compile(r"[!-~]+\Z")
_LOCAL_PART = re.compile(r"[!-~]+\Z")

#: Marks a value that failed validation; the fault is already recorded.
_INVALID: Any = type("_Invalid", (), {"__repr__": lambda self: "<invalid>"})()

Check = Callable[[KeyPath, object], Any]


@frozen
class LoadResult:
    """
    A valid configuration and what the administrator should be told about it.

    @ivar config: the configuration.
    @ivar warnings: one C{FILE:LINE: KEY.PATH: text} line per warning, e.g.
        a policy switch that is accepted but not implemented.
    """

    config: GatewayConfig
    warnings: tuple[str, ...] = ()


def load_config(path: str | None) -> GatewayConfig:
    """
    Read and validate a configuration file.

    @param path: the TOML file, or C{None} for the embedded default
        (L{esa_tls.config.defaults.DEFAULT_CONFIG}).
    @return: the configuration.
    @raise ConfigError: listing every fault in the file.
    """
    return load_config_with_warnings(path).config


def load_config_with_warnings(path: str | None) -> LoadResult:
    """
    Like L{load_config}, also returning the warnings start-up should log.

    Relative paths in the file are taken relative to the file's directory;
    those of the embedded default, relative to the current directory.

    @raise ConfigError: listing every fault in the file.
    """
    if path is None:
        from esa_tls.config.defaults import DEFAULT_CONFIG

        return parse_config_with_warnings(DEFAULT_CONFIG, EMBEDDED_SOURCE)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError([ConfigFault(path, None, "", f"cannot read: {e.strerror}")]) from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError([ConfigFault(path, line, "", "not UTF-8 text (TOML is UTF-8)")]) from e
    base_dir = os.path.dirname(os.path.abspath(path))
    return parse_config_with_warnings(text, path, base_dir)


def parse_config(text: str, source: str, base_dir: str | None = None) -> GatewayConfig:
    """
    Validate configuration text.

    @param text: the TOML text.
    @param source: the name to give in messages and in
        L{GatewayConfig.source} (normally the file name).
    @param base_dir: the directory relative paths are relative to; C{None}
        leaves them relative (to the current directory).
    @raise ConfigError: listing every fault in the text.
    """
    return parse_config_with_warnings(text, source, base_dir).config


def parse_config_with_warnings(text: str, source: str, base_dir: str | None = None) -> LoadResult:
    """
    Like L{parse_config}, also returning the warnings start-up should log.

    @raise ConfigError: listing every fault in the text.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([_syntax_fault(str(e), text, source)]) from e
    loader = _Loader(source, text, base_dir)
    config = loader.load(document)
    if loader.faults:
        raise ConfigError(loader.faults)
    assert config is not None
    return LoadResult(config, tuple(loader.warnings))


_POSITION = re.compile(r" \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)\Z")
_DECLARED_TWICE = re.compile(r"Cannot declare (?P<key>\(.*\)) twice\Z")


def _syntax_fault(message: str, text: str, source: str) -> ConfigFault:
    """
    Turn a C{tomllib} error into a fault naming the line, and for tables and
    keys given twice (the usual way to get a duplicate listener name) the
    key path and the line of the first definition.
    """
    match = _POSITION.search(message)
    line = text.count("\n") + 1
    if match is not None:
        if match.group("line"):
            line = int(match.group("line"))
        message = message[: match.start()]
    sources = SourceMap(text)
    twice = _DECLARED_TWICE.match(message)
    if twice is not None:
        try:
            key = tuple(ast.literal_eval(twice.group("key")))
        except (ValueError, SyntaxError):
            key = ()
        if key:
            first = sources.exact_line(key)
            where = f" (first defined at line {first})" if first else ""
            if len(key) == 2 and key[0] == "listeners":
                what = f"duplicate listener name {key[1]!r}{where}"
            else:
                what = f"table defined twice{where}"
            return ConfigFault(source, line, render_path(key), what)
    if message == "Cannot overwrite a value":
        key_path = sources.key_at(line)
        if key_path is not None:
            first = sources.exact_line(key_path)
            where = f" (first set at line {first})" if first and first != line else ""
            return ConfigFault(source, line, render_path(key_path), f"set twice{where}")
    return ConfigFault(source, line, "", f"invalid TOML: {message}")


def _every_address(interface: str) -> bool:
    """
    Whether a TCP endpoint's C{interface} (C{""} when not given) listens on
    every address of the machine.
    """
    try:
        return not interface or ipaddress.ip_address(interface).is_unspecified
    except ValueError:
        return False


def _describe(value: object) -> str:
    """
    Name a TOML value's type, with the value when short, for "expected X,
    got Y" messages.
    """
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        return f"a string ({_toml_string(value)})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _freeze(value: object) -> object:
    """
    Make a TOML value hashable, for storing in frozen values.
    """
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _freeze(v)) for k, v in value.items())
    return value


class _Loader:
    """
    One validation pass over a parsed document: checks every section,
    recording faults and warnings with their lines, and builds the values.
    """

    def __init__(self, source: str, text: str, base_dir: str | None) -> None:
        self.source = source
        self.lines = SourceMap(text)
        self.base_dir = base_dir
        self.faults: list[ConfigFault] = []
        self.warnings: list[str] = []
        # Names declared in the file, valid or not: a reference to a
        # declared but faulty one is not a second fault.
        self.declared: set[tuple[str, str]] = set()

    # Reporting

    def fault(self, path: KeyPath, message: str) -> Any:
        """
        Record a fault at C{path}.

        @return: L{_INVALID}, so that checks can C{return self.fault(...)}.
        """
        line = self.lines.line_of(path)
        self.faults.append(ConfigFault(self.source, line, render_path(path), message))
        return _INVALID

    def warn(self, path: KeyPath, message: str) -> None:
        fault = ConfigFault(self.source, self.lines.line_of(path), render_path(path), message)
        self.warnings.append(str(fault))

    # Generic checks.  Each takes the path and the raw value and returns the
    # converted value, or _INVALID after recording a fault.

    def table(self, path: KeyPath, value: object) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        self.fault(path, f"expected a table, got {_describe(value)}")
        return None

    def known_keys(
        self, path: KeyPath, table: Mapping[str, object], allowed: Iterable[str]
    ) -> None:
        allowed = tuple(allowed)
        for key in table:
            if key not in allowed:
                self.fault((*path, key), "unknown key" + suggest(key, allowed))

    def string(self, path: KeyPath, value: object) -> Any:
        if not isinstance(value, str):
            return self.fault(path, f"expected a string, got {_describe(value)}")
        return value

    def name(self, path: KeyPath, value: object) -> Any:
        text = self.string(path, value)
        if text is not _INVALID and not _NAME.match(text):
            return self.fault(
                path, f"{_toml_string(text)} is not a name (printable ASCII, no spaces)"
            )
        return text

    def smtp_text(self, path: KeyPath, value: object) -> Any:
        """
        Text that goes into an SMTP reply: printable ASCII only, so that a
        configured banner can never inject a line break into the protocol.
        """
        text = self.string(path, value)
        if text is not _INVALID and any(not (" " <= c <= "~") for c in text):
            return self.fault(
                path, "must be printable ASCII on one line (it is sent in SMTP replies)"
            )
        return text

    def integer(self, lo: int, hi: int | None = None) -> Check:
        def check(path: KeyPath, value: object) -> Any:
            if isinstance(value, bool) or not isinstance(value, int):
                return self.fault(path, f"expected an integer, got {_describe(value)}")
            if hi is not None and not lo <= value <= hi:
                return self.fault(path, f"{value} is out of range {lo}-{hi}")
            if value < lo:
                return self.fault(path, f"{value} is below the minimum, {lo}")
            return value

        return check

    def rate(self, path: KeyPath, value: object) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            return self.fault(path, f"expected an integer, got {_describe(value)}")
        if value == 0 or value < -1:
            return self.fault(path, f"{value} is not -1 (disabled) or a positive number")
        return value

    def seconds(self, path: KeyPath, value: object) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return self.fault(path, f"expected a number of seconds, got {_describe(value)}")
        if not value > 0:
            return self.fault(path, f"{value} is not a positive number of seconds")
        if value > _MAX_SECONDS:
            # inf or 1e300: a timer that never fires, a slot held for ever.
            return self.fault(
                path, f"{float(value)} seconds is more than a week, the most it takes"
            )
        return float(value)

    def boolean(self, path: KeyPath, value: object) -> Any:
        if not isinstance(value, bool):
            return self.fault(path, f"expected true or false, got {_describe(value)}")
        return value

    def choice(self, choices: Iterable[str], convert: Callable[[str], Any] = str) -> Check:
        options = tuple(choices)

        def check(path: KeyPath, value: object) -> Any:
            if not isinstance(value, str):
                return self.fault(path, f"expected a string, got {_describe(value)}")
            for option in options:
                if value.lower() == option.lower():
                    return convert(option)
            return self.fault(
                path,
                f"{_toml_string(value)} is not one of {' | '.join(options)}"
                + suggest(value, options),
            )

        return check

    def enum(self, cls: Any) -> Check:
        choose = self.choice([member.value for member in cls], cls)

        def check(path: KeyPath, value: object) -> Any:
            if isinstance(value, cls):
                return value
            return choose(path, value)

        return check

    def array(self, item: Check, *, unique: bool = False) -> Check:
        """
        An array whose elements each pass C{item}; faults name the element
        (C{rat[2]}).
        """

        def check(path: KeyPath, value: object) -> Any:
            if isinstance(value, tuple):
                value = list(value)
            if not isinstance(value, list):
                return self.fault(path, f"expected an array, got {_describe(value)}")
            out: list[Any] = []
            ok = True
            for index, element in enumerate(value):
                converted = item((*path, index), element)
                if converted is _INVALID:
                    ok = False
                elif not (unique and converted in out):
                    out.append(converted)
            return tuple(out) if ok else _INVALID

        return check

    def domain(self, path: KeyPath, value: object) -> Any:
        text = self.string(path, value)
        if text is _INVALID:
            return text
        if not _DOMAIN.match(text):
            return self.fault(path, f"{_toml_string(text)} is not a domain name")
        return text.lower()

    def hostname(self, path: KeyPath, value: object) -> Any:
        text = self.string(path, value)
        if text is _INVALID or text == "":
            return text
        if not _DOMAIN.match(text):
            return self.fault(path, f"{_toml_string(text)} is not a host name")
        return text

    def file(self, path: KeyPath, value: object) -> Any:
        """
        A file that must exist; relative to the configuration's directory.
        """
        text = self.string(path, value)
        if text is _INVALID:
            return text
        if not text:
            return self.fault(path, "must name a file")
        full = self.resolve(text)
        if not os.path.isfile(full):
            return self.fault(path, f"file not found: {full}")
        return full

    def password_file(self, path: KeyPath, value: object) -> Any:
        """
        The SMTP AUTH password file, read now so that a malformed line is
        a configuration error naming it (the gateway reads the file again
        at each login, and says the same there).
        """
        full = self.file(path, value)
        if full is _INVALID:
            return full
        from esa_tls.inbound.auth import PasswordFileError, read_password_file

        try:
            read_password_file(full)
        except PasswordFileError as e:
            return self.fault(path, str(e))
        return full

    def cipher_string(self, path: KeyPath, value: object) -> Any:
        """
        An OpenSSL cipher string in which OpenSSL finds a cipher (C{""}: the
        gateway's default), checked with the library the listener's TLS
        contexts use: a string it rejects would otherwise surface only at
        a client's STARTTLS.
        """
        text = self.string(path, value)
        if text is _INVALID or text == "":
            return text
        from OpenSSL import SSL

        try:
            SSL.Context(SSL.TLS_METHOD).set_cipher_list(text.encode("ascii"))
        except (SSL.Error, UnicodeEncodeError):
            return self.fault(
                path,
                f"OpenSSL finds no cipher in {_toml_string(text)} (an OpenSSL cipher "
                'string for TLS 1.2, e.g. "ECDHE+AESGCM")',
            )
        return text

    def ca_certificates(self, path: KeyPath, value: object) -> Any:
        """
        A file (L{file}) of PEM CA certificates, such as a policy's
        C{client_ca}: one that holds none would fail every handshake that
        needs it.
        """
        full = self.file(path, value)
        if full is _INVALID:
            return full
        from cryptography import x509

        try:
            with open(full, "rb") as f:
                x509.load_pem_x509_certificates(f.read())
        except OSError as e:
            return self.fault(path, f"cannot read {full}: {e.strerror}")
        except ValueError:
            return self.fault(path, f"{full} holds no PEM certificate")
        return full

    def resolve(self, text: str) -> str:
        if self.base_dir is None or os.path.isabs(text):
            return text
        return os.path.normpath(os.path.join(self.base_dir, text))

    def endpoint(self, default_port: int | None) -> Check:
        """
        C{host[:port]}, C{[ipv6]:port} or a bare IPv6 address.
        """

        def check(path: KeyPath, value: object) -> Any:
            text = self.string(path, value)
            if text is _INVALID:
                return text
            host, port = text, ""
            if text.startswith("["):
                host, _, rest = text[1:].partition("]")
                if rest:
                    if not rest.startswith(":"):
                        return self.fault(path, f"{_toml_string(text)} is not host[:port]")
                    port = rest[1:]
            elif text.count(":") == 1:
                host, _, port = text.partition(":")
            if port and (not port.isdigit() or not 1 <= int(port) <= 65535):
                return self.fault(
                    path, f"{_toml_string(text)}: port {port!r} is out of range 1-65535"
                )
            try:
                ipaddress.ip_address(host)
            except ValueError:
                if default_port is not None or not _DOMAIN.match(host):
                    return self.fault(
                        path,
                        f"{_toml_string(text)} is not "
                        + ("an IP address[:port]" if default_port is not None else "host[:port]"),
                    )
            return text

        return check

    def fields(
        self, path: KeyPath, table: Mapping[str, object], checks: Mapping[str, Check]
    ) -> dict[str, Any] | None:
        """
        Check a table whose keys are value-class fields.

        @return: the converted values of the keys present, or C{None} if any
            was invalid (faults recorded).
        """
        self.known_keys(path, table, checks)
        out: dict[str, Any] = {}
        ok = True
        for key, value in table.items():
            if key not in checks:
                continue
            converted = checks[key]((*path, key), value)
            if converted is _INVALID:
                ok = False
            else:
                out[key] = converted
        return out if ok else None

    # Sections

    def load(self, document: dict[str, Any]) -> GatewayConfig | None:
        self.known_keys((), document, _TOP_KEYS)
        system = self.system(document.get("system", {}))
        interfaces = self.interfaces(document.get("interfaces", {}))
        certificates = self.certificates(document.get("certificates", {}))
        settings = self.listener_settings(document.get("listener_settings", {}))
        listeners = self.listeners(document.get("listeners", {}), interfaces, certificates)
        destinations = self.destinations(document.get("destinations", {}))
        routes = self.smtp_routes(document.get("smtp_routes", {}))
        alerts = self.alerts(document.get("alerts", {}))
        admin = self.admin(document.get("admin", {}))
        if system is not None and not system.smtp_auth_users:
            self.auth_without_users(listeners)
        if self.faults or system is None or settings is None or alerts is None or admin is None:
            return None
        return GatewayConfig(
            system=system,
            interfaces=interfaces,
            listeners=listeners,
            listener_settings=settings,
            certificates=certificates,
            destinations=destinations,
            smtp_routes=routes,
            alerts=alerts,
            admin=admin,
            source=self.source,
        )

    def auth_without_users(self, listeners: Mapping[str, Listener]) -> None:
        """
        Warn about each policy that sets C{smtp_auth} to allow or require
        while there is no C{smtp_auth_users} file: AUTH is then never
        offered, and a policy that requires it takes no mail at all (530
        to every MAIL FROM), which nothing else would tell the
        administrator.
        """
        for name, listener in listeners.items():
            for policy in listener.policies.values():
                if "smtp_auth" not in policy.explicit:
                    continue
                if policy.smtp_auth is SMTPAuthMode.DISALLOW:
                    continue
                message = (
                    "no [system] smtp_auth_users file, so AUTH is never offered "
                    "(unless a program embedding esa_tls supplies a credentials checker)"
                )
                if policy.smtp_auth is SMTPAuthMode.REQUIRE:
                    message += " and this policy refuses every MAIL FROM"
                self.warn(("listeners", name, "policies", policy.name, "smtp_auth"), message)

    def system(self, value: object) -> SystemSettings | None:
        path: KeyPath = ("system",)
        table = self.table(path, value)
        if table is None:
            return None
        values = self.fields(
            path,
            table,
            {
                "hostname": self.hostname,
                "data_dir": self.string,
                "resolvers": self.array(self.endpoint(53)),
                "smtp_auth_users": self.password_file,
                "spool_sync": self.spool_sync,
                "worker_cpu_affinity": self.enum(WorkerCPUAffinity),
            },
        )
        if values is None:
            return None
        if not values.get("hostname"):
            values["hostname"] = socket.getfqdn()
        values["data_dir"] = self.resolve(values.get("data_dir", "var") or ".")
        return SystemSettings(**values)

    def spool_sync(self, path: KeyPath, value: object) -> Any:
        mode = self.enum(SpoolSync)(path, value)
        if mode is SpoolSync.FILESYSTEM:
            why = syncfs_unsupported()
            if why is not None:
                return self.fault(path, f'"filesystem" cannot be used here: {why}; use "file"')
        return mode

    def interfaces(self, value: object) -> dict[str, Interface]:
        out: dict[str, Interface] = {}
        table = self.table(("interfaces",), value)
        if table is None:
            return out
        used: dict[object, str] = {}
        self.declared.update(("interfaces", name) for name in table)
        for name, body in table.items():
            path: KeyPath = ("interfaces", name)
            if self.name(path, name) is _INVALID:
                continue
            entry = self.table(path, body)
            if entry is None:
                continue
            self.known_keys(path, entry, ["address"])
            if "address" not in entry:
                self.fault(path, 'missing key "address" (e.g. address = "192.168.2.1/24")')
                continue
            text = self.string((*path, "address"), entry["address"])
            if text is _INVALID:
                continue
            try:
                address = ipaddress.ip_interface(text)
            except ValueError:
                self.fault(
                    (*path, "address"),
                    f"{_toml_string(text)} is not an IP address with a prefix length (e.g. 192.168.2.1/24)",
                )
                continue
            if address.ip in used:
                self.fault(
                    (*path, "address"),
                    f"{address.ip} is already the address of interface {used[address.ip]!r}",
                )
                continue
            used[address.ip] = name
            out[name] = Interface(name, address)
        return out

    def certificates(self, value: object) -> dict[str, CertificateConfig]:
        out: dict[str, CertificateConfig] = {DEMO_CERTIFICATE: CertificateConfig(DEMO_CERTIFICATE)}
        table = self.table(("certificates",), value)
        if table is None:
            return out
        self.declared.update(("certificates", name) for name in table)
        for name, body in table.items():
            path: KeyPath = ("certificates", name)
            if name == DEMO_CERTIFICATE:
                self.fault(
                    path,
                    "the Demo certificate is built in and cannot be redefined; choose another name",
                )
                continue
            if self.name(path, name) is _INVALID:
                continue
            entry = self.table(path, body)
            if entry is None:
                continue
            values = self.fields(
                path, entry, {"cert": self.file, "key": self.file, "chain": self.file}
            )
            if values is None:
                continue
            missing = [k for k in ("cert", "key") if k not in values]
            for key in missing:
                self.fault(path, f'missing key "{key}" (PEM file)')
            if not missing:
                out[name] = CertificateConfig(name, **values)
        return out

    def listener_settings(self, value: object) -> ListenerSettings | None:
        path: KeyPath = ("listener_settings",)
        table = self.table(path, value)
        if table is None:
            return None
        values = self.fields(
            path,
            table,
            {
                "unsuccessful_timeout": self.seconds,
                "total_time_limit": self.seconds,
                "idle_timeout": self.seconds,
                "bad_command_limit": self.integer(1),
                "reject_at_rcpt": self.boolean,
                "max_received_headers": self.integer(1, 10_000),
            },
        )
        return None if values is None else ListenerSettings(**values)

    def listeners(
        self,
        value: object,
        interfaces: Mapping[str, Interface],
        certificates: Mapping[str, CertificateConfig],
    ) -> dict[str, Listener]:
        out: dict[str, Listener] = {}
        table = self.table(("listeners",), value)
        if table is None:
            return out
        if not table:
            self.fault(("listeners",), "no listener is defined (add a [listeners.NAME] table)")
        bound: dict[
            tuple[int, int], list[tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address]]
        ] = {}
        for name, body in table.items():
            path: KeyPath = ("listeners", name)
            if self.name(path, name) is _INVALID:
                continue
            entry = self.table(path, body)
            if entry is None:
                continue
            listener = _ListenerLoader(self, path, name, entry, interfaces, certificates).load()
            if listener is None:
                continue
            ip = listener.interface.address.ip
            others = bound.setdefault((listener.port, ip.version), [])
            for other_name, other_ip in others:
                if other_ip == ip or other_ip.is_unspecified or ip.is_unspecified:
                    self.fault(
                        (*path, "port"),
                        f"{ip} port {listener.port} is already used by listener {other_name!r}",
                    )
                    break
            else:
                others.append((name, ip))
            out[name] = listener
        return out

    def destinations(self, value: object) -> dict[str, DestinationControl]:
        out: dict[str, DestinationControl] = {}
        table = self.table(("destinations",), value)
        if table is not None:
            for domain, body in table.items():
                path: KeyPath = ("destinations", domain)
                key = domain.lower()
                if key != "default":
                    checked = self.domain(path, domain.removeprefix("."))
                    if checked is _INVALID:
                        continue
                if key in out:
                    self.fault(path, f"domain {key!r} is given twice")
                    continue
                entry = self.table(path, body)
                if entry is None:
                    continue
                values = self.fields(
                    path,
                    entry,
                    {
                        "tls": self.enum(DestinationTLS),
                        "max_host_concurrency": self.integer(1),
                        "max_messages_per_connection": self.integer(1),
                        "recipient_limit": self.integer(0),
                        # ESA: the recipient limit is counted over 1 to 60 minutes.
                        "recipient_minutes": self.integer(1, 60),
                        "ca_file": self.file,
                    },
                )
                if values is None:
                    continue
                if key == "default":
                    if values.get("tls") is DestinationTLS.DEFAULT:
                        self.fault(
                            (*path, "tls"),
                            '"default" is not a setting for the default row: it IS the default '
                            "(use no, preferred, required, preferred-verify, required-verify "
                            "or required-verify-hosted)",
                        )
                        continue
                    values.setdefault("tls", DEFAULT_ROW_TLS)
                out[key] = DestinationControl(key, **values)
        # Without a Default row, TLS is opportunistic (like Postfix 3.11 "may"):
        # encrypted whenever the destination offers it, never refused for it.
        out.setdefault("default", DestinationControl("default", tls=DEFAULT_ROW_TLS))
        return out

    def smtp_routes(self, value: object) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        table = self.table(("smtp_routes",), value)
        if table is None:
            return out
        hosts = self.array(self.endpoint(None))
        for domain, body in table.items():
            path: KeyPath = ("smtp_routes", domain)
            key = domain if domain == "ALL" else domain.lower()
            if key != "ALL" and self.domain(path, domain.removeprefix(".")) is _INVALID:
                continue
            if key in out:
                self.fault(path, f"domain {key!r} is given twice")
                continue
            # The ESA's special destination host: mail for the domain is
            # dropped.  Only alone: "drop, else try this host" means nothing.
            if isinstance(body, list) and DISCARD_ROUTE in body:
                if len(body) != 1:
                    self.fault(
                        (*path, body.index(DISCARD_ROUTE)),
                        f'"{DISCARD_ROUTE}" drops the mail of the domain: it must be the '
                        "only host of its route",
                    )
                    continue
                out[key] = (DISCARD_ROUTE,)
                continue
            routes = hosts(path, body)
            if routes is _INVALID:
                continue
            if not routes:
                self.fault(path, "needs at least one host")
                continue
            out[key] = routes
        return out

    def alerts(self, value: object) -> AlertSettings | None:
        path: KeyPath = ("alerts",)
        table = self.table(path, value)
        if table is None:
            return None
        self.known_keys(path, table, ["tls_failure_alert", "recipients", "merge_interval", "hooks"])
        enabled = self.boolean((*path, "tls_failure_alert"), table.get("tls_failure_alert", False))
        merge_interval = self.seconds((*path, "merge_interval"), table.get("merge_interval", 900))
        hooks = self.alert_hooks(table.get("hooks", []))
        recipients: list[AlertRecipient] = []
        raw = table.get("recipients", [])
        if not isinstance(raw, list):
            self.fault((*path, "recipients"), "expected an array of tables ([[alerts.recipients]])")
            raw = []
        for index, body in enumerate(raw):
            rpath: KeyPath = (*path, "recipients", index)
            entry = self.table(rpath, body)
            if entry is None:
                continue
            values = self.fields(
                rpath,
                entry,
                {
                    "address": self.address,
                    "severities": self.nonempty(
                        self.array(self.choice(_ALERT_SEVERITIES), unique=True)
                    ),
                    "types": self.nonempty(self.array(self.choice(_ALERT_TYPES), unique=True)),
                },
            )
            if values is None:
                continue
            if "address" not in values:
                self.fault(rpath, 'missing key "address"')
                continue
            recipients.append(AlertRecipient(**values))
        if enabled is _INVALID or merge_interval is _INVALID or hooks is None:
            return None
        return AlertSettings(
            tls_failure_alert=enabled,
            recipients=tuple(recipients),
            merge_interval=merge_interval,
            hooks=hooks,
        )

    def alert_hooks(self, raw: object) -> tuple[AlertHookConfig, ...] | None:
        path: KeyPath = ("alerts", "hooks")
        if not isinstance(raw, list):
            self.fault(path, "expected an array of tables ([[alerts.hooks]])")
            return None
        hooks: list[AlertHookConfig] = []
        ok = True
        for index, body in enumerate(raw):
            hpath: KeyPath = (*path, index)
            entry = self.table(hpath, body)
            if entry is None:
                ok = False
                continue
            values = self.fields(
                hpath,
                entry,
                {
                    "type": self.choice(_HOOK_TYPES),
                    "command": self.nonempty(self.array(self.string)),
                    "url": self.url,
                    "object": self.string,
                    "timeout": self.seconds,
                    "sender": self.address,
                    "headers": self.string_table,
                    "options": self.any_table,
                    "severities": self.nonempty(
                        self.array(self.choice(_ALERT_SEVERITIES), unique=True)
                    ),
                    "types": self.nonempty(self.array(self.choice(_ALERT_TYPES), unique=True)),
                },
            )
            if values is None:
                ok = False
                continue
            kind = values.get("type")
            needed = {"command": "command", "webhook": "url", "python": "object"}.get(kind or "")
            if kind is None:
                self.fault(hpath, 'missing key "type" (' + " | ".join(_HOOK_TYPES) + ")")
                ok = False
            elif needed and not values.get(needed):
                self.fault(hpath, f'a {kind} hook needs "{needed}"')
                ok = False
            else:
                hooks.append(AlertHookConfig(**values))
        return tuple(hooks) if ok else None

    def url(self, path: KeyPath, value: object) -> Any:
        text = self.string(path, value)
        if text is _INVALID:
            return text
        if not re.match(r"https?://[^\s/]+", text):
            return self.fault(path, f"{_toml_string(text)} is not an http:// or https:// URL")
        return text

    def string_table(self, path: KeyPath, value: object) -> Any:
        table = self.table(path, value)
        if table is None:
            return _INVALID
        for key, item in table.items():
            if not isinstance(item, str):
                return self.fault((*path, key), f"expected a string, got {_describe(item)}")
        return dict(table)

    def any_table(self, path: KeyPath, value: object) -> Any:
        table = self.table(path, value)
        return _INVALID if table is None else dict(table)

    def admin(self, value: object) -> AdminSettings | None:
        path: KeyPath = ("admin",)
        table = self.table(path, value)
        if table is None:
            return None
        values = self.fields(path, table, {"listen": self.server_endpoint})
        return None if values is None else AdminSettings(**values)

    def server_endpoint(self, path: KeyPath, value: object) -> Any:
        text = self.string(path, value)
        if text is _INVALID or not text:
            return text
        from twisted.internet import reactor
        from twisted.internet.endpoints import serverFromString

        try:
            endpoint = serverFromString(reactor, text)
        except Exception as e:
            # The parser raises what its plugins raise: ValueError for a bad
            # number, OSError for an ssl: certificate that is not there,
            # RuntimeError for a trailing backslash.  All mean a bad value.
            return self.fault(path, f"{_toml_string(text)} is not a server endpoint: {e}")
        interface = getattr(endpoint, "_interface", None)
        if isinstance(interface, str) and _every_address(interface):
            # Allowed (a firewall may guard it), but the page has no login.
            self.warn(
                path,
                "the admin page has no login and this listens on every address: give "
                "interface=127.0.0.1 or a management network's address",
            )
        return text

    def nonempty(self, check: Check) -> Check:
        def nonempty(path: KeyPath, value: object) -> Any:
            result = check(path, value)
            if result is not _INVALID and not result:
                return self.fault(path, "must not be empty")
            return result

        return nonempty

    def address(self, path: KeyPath, value: object) -> Any:
        text = self.string(path, value)
        if text is _INVALID:
            return text
        local, at, domain = text.rpartition("@")
        if not at or not _LOCAL_PART.match(local) or not _DOMAIN.match(domain):
            return self.fault(path, f"{_toml_string(text)} is not an email address")
        return text

    def rat_entry(self, path: KeyPath, value: object) -> Any:
        """
        A Recipient Access Table entry: C{example.com}, C{.example.com},
        C{user@example.com} or C{user@}.
        """
        text = self.string(path, value)
        if text is _INVALID:
            return text
        if text.upper() == "ALL":
            return self.fault(
                path,
                "ALL is not allowed in a RAT (it would make an open relay): use a RELAY policy instead",
            )
        local, at, domain = text.rpartition("@")
        if at:
            ok = bool(_LOCAL_PART.match(local)) and (domain == "" or bool(_DOMAIN.match(domain)))
        else:
            ok = bool(_DOMAIN.match(text.removeprefix(".")))
        if not ok:
            return self.fault(
                path,
                f"{_toml_string(text)} is not a RAT entry (example.com, .example.com, "
                "user@example.com or user@)",
            )
        return text.lower()


class _ListenerLoader:
    """
    Checks one C{[listeners.NAME]} table and resolves its policies and HAT.
    """

    def __init__(
        self,
        loader: _Loader,
        path: KeyPath,
        name: str,
        table: dict[str, Any],
        interfaces: Mapping[str, Interface],
        certificates: Mapping[str, CertificateConfig],
    ) -> None:
        self.loader = loader
        self.path = path
        self.name = name
        self.table = table
        self.interfaces = interfaces
        self.certificates = certificates
        self.policy_names: set[str] = set()

    def load(self) -> Listener | None:
        loader, path, table = self.loader, self.path, self.table
        faults = len(loader.faults)
        checks: dict[str, Check] = {
            "type": loader.enum(ListenerType),
            "interface": self.interface,
            "port": loader.integer(1, 65535),
            "protocol": loader.choice(["SMTP", "SMTPS"]),
            "default_domain": loader.hostname,
            "max_concurrency": loader.integer(1, MAX_LISTENER_CONCURRENCY),
            "tcp_queue": loader.integer(1, MAX_TCP_QUEUE),
            "domain_map": loader.boolean,
            "certificate": self.certificate,
            "rat": loader.array(loader.rat_entry, unique=True),
            "sni": self.sni,
            "tls_protocols": loader.nonempty(
                loader.array(loader.choice(_TLS_PROTOCOLS), unique=True)
            ),
            "tls_ciphers": loader.cipher_string,
            "hostname": loader.hostname,
            "proxy_protocol": loader.boolean,
            "proxy_trusted": self.proxy_trusted,
        }
        loader.known_keys(path, table, _LISTENER_KEYS)
        values: dict[str, Any] = {}
        valid = True
        for key, check in checks.items():
            if key in table:
                converted = check((*path, key), table[key])
                if converted is _INVALID:
                    valid = False
                else:
                    values[key] = converted
        for key in ("type", "interface", "port"):
            if key not in table:
                loader.fault(path, f'missing key "{key}"')
        if "proxy_trusted" in table and table.get("proxy_protocol", False) is False:
            # Only a listener that reads PROXY headers has proxies to trust:
            # elsewhere the key would look like a restriction it is not.
            loader.fault(
                (*path, "proxy_trusted"),
                "only means something with proxy_protocol = true (this listener reads no "
                "PROXY header): remove it, or set proxy_protocol = true",
            )
            valid = False
        kind = values.get("type")
        if kind is None:
            # Without a type the predefined policies are unknown, so the
            # policies and HAT cannot be checked meaningfully.
            return None
        # Policies and the HAT are checked even when other keys are wrong,
        # so that every fault is reported in one pass.
        policies = self.policies(kind)
        hat = self.hat(kind)
        if not valid or len(loader.faults) > faults or policies is None or hat is None:
            return None
        rat = values.get("rat", ())
        if kind is ListenerType.PRIVATE and rat:
            loader.warn(
                (*path, "rat"),
                "private listeners have no RAT on the ESA; here it still decides which"
                " recipients senders under an ACCEPT policy may send to (RELAY policies"
                " skip it)",
            )
        if kind is ListenerType.PUBLIC and not rat:
            loader.warn(
                (*path, "rat"),
                "the RAT is empty: this public listener accepts mail for no domain (only RELAY senders)",
            )
        return Listener(name=self.name, policies=policies, hat=hat, **values)

    def interface(self, path: KeyPath, value: object) -> Any:
        text = self.loader.string(path, value)
        if text is _INVALID:
            return text
        if text not in self.interfaces:
            if ("interfaces", text) in self.loader.declared:
                return _INVALID
            return self.loader.fault(
                path,
                f"unknown interface {_toml_string(text)} (define it in [interfaces.{text}])"
                + suggest(text, self.interfaces),
            )
        return self.interfaces[text]

    def certificate(self, path: KeyPath, value: object) -> Any:
        text = self.loader.string(path, value)
        if text is _INVALID:
            return text
        if text not in self.certificates:
            if ("certificates", text) in self.loader.declared and text != DEMO_CERTIFICATE:
                return _INVALID
            return self.loader.fault(
                path,
                f"unknown certificate {_toml_string(text)} (Demo or a [certificates] name)"
                + suggest(text, self.certificates),
            )
        return text

    def proxy_trusted(self, path: KeyPath, value: object) -> Any:
        """
        The proxies whose connections may carry a PROXY header: addresses
        and networks, at least one (an empty list would refuse every
        connection).
        """
        networks = self.loader.array(self.proxy_network, unique=True)(path, value)
        if networks is not _INVALID and not networks:
            return self.loader.fault(
                path,
                "must name at least one proxy (with none, every connection is refused); "
                "leave the key out for the default, this host's loopback addresses",
            )
        return networks

    def proxy_network(self, path: KeyPath, value: object) -> Any:
        """
        One C{proxy_trusted} entry: an IPv4 or IPv6 address or a CIDR
        network, without host bits (C{10.1.1.1/16} is more likely a typo
        than a wish to trust C{10.1.0.0/16}).
        """
        text = self.loader.string(path, value)
        if text is _INVALID:
            return text
        if "%" in text:
            return self.loader.fault(
                path, f"{_toml_string(text)}: a zone (%...) is not supported; give the address"
            )
        try:
            network = ipaddress.ip_network(text)
        except ValueError:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                return self.loader.fault(
                    path,
                    f"{_toml_string(text)} is not an IP address or network "
                    '(e.g. "192.0.2.10", "10.0.0.0/24", "2001:db8::/64")',
                )
            return self.loader.fault(
                path, f"{_toml_string(text)} has host bits set (the network is {loose})"
            )
        if isinstance(network, ipaddress.IPv6Network) and (
            network.network_address.ipv4_mapped is not None
        ):
            return self.loader.fault(
                path,
                f"{_toml_string(text)} is an IPv4-mapped IPv6 address: give the IPv4 "
                "address (connections from it are seen as IPv4)",
            )
        if network.prefixlen == 0:
            self.loader.warn(
                path,
                f"{network} trusts every address: any client that can connect may claim "
                "any address in a PROXY header",
            )
        return network

    def sni(self, path: KeyPath, value: object) -> Any:
        table = self.loader.table(path, value)
        if table is None:
            return _INVALID
        out: dict[str, str] = {}
        ok = True
        for host, cert in table.items():
            hpath: KeyPath = (*path, host)
            if not host.removeprefix("*."):
                # hostname() takes "" (no name) for the keys where that
                # means something; here it names nothing a client can send.
                self.loader.fault(hpath, "needs a host name (mx.example.com or *.example.com)")
                ok = False
                continue
            checked = self.loader.hostname(hpath, host.removeprefix("*."))
            name = self.certificate(hpath, cert)
            if checked is _INVALID or name is _INVALID:
                ok = False
                continue
            out[host.lower()] = name
        return out if ok else _INVALID

    # Mail flow policies

    def policy_checks(self) -> dict[str, Check]:
        loader = self.loader
        return {
            "banner_code": loader.integer(200, 299),
            "banner_text": loader.smtp_text,
            "reject_banner_code": loader.integer(400, 599),
            "reject_banner_text": loader.smtp_text,
            "override_hostname": self.override_hostname,
            "max_msgs_per_session": loader.integer(1),
            "max_rcpts_per_msg": loader.integer(1),
            "max_message_size": loader.integer(1),
            "max_concurrency": loader.integer(1),
            "max_rcpts_per_hour": loader.rate,
            "max_rcpts_per_hour_code": loader.integer(400, 599),
            "max_rcpts_per_hour_text": loader.smtp_text,
            "tls": loader.enum(TLSMode),
            "tls_mandatory_senders": loader.array(self.address_list_entry, unique=True),
            "verify_client_certificate": loader.boolean,
            "client_ca": loader.ca_certificates,
            "smtp_auth": loader.enum(SMTPAuthMode),
            "smtp_auth_requires_tls": loader.boolean,
        }

    def override_hostname(self, path: KeyPath, value: object) -> Any:
        # "" is meaningful: the ESA then shows no host name in the banner.
        return self.loader.hostname(path, value)

    def address_list_entry(self, path: KeyPath, value: object) -> Any:
        text = self.loader.string(path, value)
        if text is _INVALID:
            return text
        try:
            AddressList.parse([text])
        except AddressListError as e:
            return self.loader.fault(path, str(e))
        return text

    def parameters(
        self, path: KeyPath, table: Mapping[str, object], *, warn: bool
    ) -> tuple[dict[str, Any], dict[str, object], object] | None:
        """
        Check one policy's parameters.

        @param warn: whether to warn about unimplemented switches (only for
            those the administrator set).
        @return: (implemented parameters, unimplemented switches, rule or
            C{None}), or C{None} if any was invalid.
        """
        checks = self.policy_checks()
        allowed = [*checks, "rule", *UNIMPLEMENTED_POLICY_KEYS]
        self.loader.known_keys(path, table, allowed)
        params: dict[str, Any] = {}
        unimplemented: dict[str, object] = {}
        rule: object = None
        ok = True
        for key, value in table.items():
            kpath = (*path, key)
            if key == "rule":
                rule = self.loader.enum(AccessRule)(kpath, value)
                ok = ok and rule is not _INVALID
            elif key in UNIMPLEMENTED_POLICY_KEYS:
                unimplemented[key] = _freeze(value)
                if warn:
                    self.loader.warn(kpath, "not implemented by this gateway: accepted and ignored")
            elif key in checks:
                converted = checks[key](kpath, value)
                if converted is _INVALID:
                    ok = False
                else:
                    params[key] = converted
            else:
                ok = False
        return (params, unimplemented, rule) if ok else None

    def policies(self, kind: ListenerType) -> dict[str, MailFlowPolicy] | None:
        """
        Resolve the listener's policies: the Default Policy Parameters (model
        defaults overridden by C{policies.default}); the ESA predefined
        policies for the listener type, each inheriting the default for what
        it does not set; and the administrator's policies, which inherit the
        same way and replace a predefined policy of the same name.
        """
        loader = self.loader
        ppath: KeyPath = (*self.path, "policies")
        predefined = predefined_policies(kind)
        tables = loader.table(ppath, self.table.get("policies", {}))
        self.policy_names = {*predefined, *(tables or ())} - {DEFAULT_POLICY}
        if tables is None:
            return None
        ok = True
        user: dict[str, tuple[dict[str, Any], dict[str, object], object, frozenset[str]]] = {}
        for name, body in tables.items():
            path: KeyPath = (*ppath, name)
            if loader.name(path, name) is _INVALID:
                ok = False
                continue
            table = loader.table(path, body)
            if table is None:
                ok = False
                continue
            checked = self.parameters(path, table, warn=True)
            if checked is None:
                ok = False
                continue
            user[name] = (*checked, frozenset(table))
        default_params: dict[str, Any] = {
            key: getattr(MailFlowPolicy(DEFAULT_POLICY), key) for key in POLICY_PARAMETER_KEYS
        }
        default_unimplemented: dict[str, object] = {}
        default_explicit: frozenset[str] = frozenset()
        if DEFAULT_POLICY in user:
            params, unimplemented, rule, default_explicit = user.pop(DEFAULT_POLICY)
            if rule is not None:
                loader.fault(
                    (*ppath, DEFAULT_POLICY, "rule"),
                    "the Default Policy Parameters have no access rule (sender groups choose a policy that has one)",
                )
                ok = False
            default_params.update(params)
            default_unimplemented.update(unimplemented)
        resolved: dict[str, MailFlowPolicy] = {
            DEFAULT_POLICY: MailFlowPolicy(
                DEFAULT_POLICY,
                AccessRule.ACCEPT,
                unimplemented=tuple(sorted(default_unimplemented.items())),
                explicit=default_explicit,
                **default_params,
            )
        }
        for name, overrides in predefined.items():
            if name in user or name == DEFAULT_POLICY:
                continue
            checked = self.parameters((*ppath, name), overrides, warn=False)
            if checked is None:
                ok = False
                continue
            params, unimplemented, rule = checked
            resolved[name] = self.resolve(
                name,
                rule,
                default_params,
                params,
                default_unimplemented,
                unimplemented,
                frozenset(),
            )
        for name, (params, unimplemented, rule, explicit) in user.items():
            if rule is None and name in predefined:
                rule = self.loader.enum(AccessRule)(
                    (*ppath, name), predefined[name].get("rule", "ACCEPT")
                )
            if rule is None:
                loader.fault(
                    (*ppath, name),
                    'missing key "rule" (ACCEPT | REJECT | TCPREFUSE | RELAY | CONTINUE)',
                )
                ok = False
                continue
            resolved[name] = self.resolve(
                name, rule, default_params, params, default_unimplemented, unimplemented, explicit
            )
            policy = resolved[name]
            if (
                policy.tls is TLSMode.OFF
                and policy.tls_mandatory_senders
                and {"tls", "tls_mandatory_senders"} & explicit
            ):
                # The list only acts where TLS is Preferred (under Required
                # every sender must use it): with TLS off these senders
                # would be taken in the clear, the opposite of what it says.
                key = "tls_mandatory_senders" if "tls_mandatory_senders" in explicit else "tls"
                loader.fault(
                    (*ppath, name, key),
                    'tls_mandatory_senders needs tls = "preferred" (or "required"): with TLS'
                    " off the senders it lists would be taken in the clear",
                )
                ok = False
        return resolved if ok else None

    @staticmethod
    def resolve(
        name: str,
        rule: object,
        default_params: Mapping[str, Any],
        params: Mapping[str, Any],
        default_unimplemented: Mapping[str, object],
        unimplemented: Mapping[str, object],
        explicit: frozenset[str],
    ) -> MailFlowPolicy:
        assert isinstance(rule, AccessRule), rule
        merged_unimplemented = {**default_unimplemented, **unimplemented}
        return MailFlowPolicy(
            name,
            rule,
            unimplemented=tuple(sorted(merged_unimplemented.items())),
            explicit=explicit,
            **{**default_params, **params},
        )

    # Host Access Table

    def hat(self, kind: ListenerType) -> tuple[SenderGroup, ...] | None:
        loader = self.loader
        hpath: KeyPath = (*self.path, "hat")
        if "hat" not in self.table:
            return tuple(predefined_groups(kind))
        raw = self.table["hat"]
        if not isinstance(raw, list):
            loader.fault(hpath, "expected an array of tables ([[listeners.NAME.hat]])")
            return None
        if not raw:
            loader.warn(hpath, "the HAT has no sender group: every connection is rejected")
        groups: list[SenderGroup] = []
        seen: dict[str, int] = {}
        ok = True
        for index, body in enumerate(raw):
            path: KeyPath = (*hpath, index)
            table = loader.table(path, body)
            if table is None:
                ok = False
                continue
            values = loader.fields(
                path,
                table,
                {
                    "group": loader.name,
                    "policy": self.policy_name,
                    "senders": loader.array(self.sender),
                    "comment": loader.string,
                },
            )
            if values is None:
                ok = False
                continue
            missing = [k for k in ("group", "policy", "senders") if k not in values]
            for key in missing:
                loader.fault(path, f'missing key "{key}"')
            if missing:
                ok = False
                continue
            group = values["group"]
            if group in seen:
                loader.fault(
                    (*path, "group"), f"sender group {group!r} is already hat[{seen[group]}]"
                )
                ok = False
                continue
            seen[group] = index
            groups.append(
                SenderGroup(
                    name=group,
                    policy=values["policy"],
                    senders=values["senders"],
                    comment=values.get("comment", ""),
                )
            )
        if (
            ok
            and groups
            and kind is ListenerType.PUBLIC
            and not any(s.strip().upper() == "ALL" for g in groups for s in g.senders)
        ):
            # The ESA's HAT always ends with the ALL group ($ACCEPTED on a
            # public listener); ours rejects the hosts no group matches
            # (closed by default), which an ESA administrator would not
            # expect after leaving it out of a file or an import.
            loader.warn(
                hpath,
                "no sender group lists ALL: a host no group matches is rejected (on the ESA "
                "the ALL group is always there, with $ACCEPTED on a public listener)",
            )
        return tuple(groups) if ok else None

    def policy_name(self, path: KeyPath, value: object) -> Any:
        text = self.loader.string(path, value)
        if text is _INVALID:
            return text
        if text not in self.policy_names:
            return self.loader.fault(
                path,
                f"unknown policy {_toml_string(text)} (one of {', '.join(sorted(self.policy_names))})"
                + suggest(text, self.policy_names),
            )
        return text

    def sender(self, path: KeyPath, value: object) -> Any:
        text = self.loader.string(path, value)
        if text is _INVALID:
            return text
        try:
            sender = parse_sender(text)
        except SenderSyntaxError as e:
            return self.loader.fault(path, str(e))
        if sender.needs_reputation:
            # An ESA HAT loads as it is, but nothing in the gateway scores
            # senders: say so rather than let the group silently never match.
            self.loader.warn(
                path,
                f"{text} never matches here: no reputation service (SenderBase) answers "
                "it unless a program embedding esa_tls supplies an IReputationSource",
            )
        return text
