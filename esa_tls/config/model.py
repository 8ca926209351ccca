# -*- test-case-name: tests.test_config_load,tests.test_config_errors -*-
"""
The configuration as immutable values.

Everything the gateway does is decided by these values; nothing here touches
the network or the disk.  L{esa_tls.config.load} turns a TOML file into one
L{GatewayConfig}, resolving policy inheritance on the way, so that a
L{MailFlowPolicy} seen by a session is always complete: a session never has to
ask "and if this is unset?".

The TOML key names are a contract (issue 2): field names below are the key
names, so outside tools can read one to know the other.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network, ip_network
from typing import Any

import attrs
from attrs import field, frozen


class ListenerType(enum.Enum):
    """
    ESA listener types: public listeners take mail from the Internet for the
    domains in their RAT; private listeners take mail from known inside hosts.
    """

    PUBLIC = "public"
    PRIVATE = "private"


class AccessRule(enum.Enum):
    """
    What a mail flow policy does with a connection (ESA reference section 2.3).
    """

    ACCEPT = "ACCEPT"
    REJECT = "REJECT"
    TCPREFUSE = "TCPREFUSE"
    RELAY = "RELAY"
    CONTINUE = "CONTINUE"


class TLSMode(enum.Enum):
    """
    Inbound TLS setting of a mail flow policy: the seed's No / Preferred /
    Required.
    """

    OFF = "off"
    PREFERRED = "preferred"
    REQUIRED = "required"

    @property
    def label(self) -> str:
        """
        The word the ESA shows in a listener summary (C{TLS: Required}).
        """
        return {"off": "No", "preferred": "Preferred", "required": "Required"}[self.value]


class SMTPAuthMode(enum.Enum):
    """
    ESA "SMTP Authentication" policy switch.
    """

    DISALLOW = "disallow"
    ALLOW = "allow"
    REQUIRE = "require"


class SpoolSync(enum.Enum):
    """
    C{[system] spool_sync}: how a commit batch is made durable.

    C{file}: one C{fsync} per file and per directory, as Postfix does;
    only the spool's own files are written back.  C{filesystem}: one
    C{syncfs} per phase of a batch however many messages it holds, which
    also writes back everything else dirty on that file system, so it is
    for a spool with a file system of its own (Linux 5.8 or later).
    """

    FILE = "file"
    FILESYSTEM = "filesystem"


class WorkerCPUAffinity(enum.Enum):
    """
    C{[system] worker_cpu_affinity}: whether each process of a multi-worker
    gateway keeps to a CPU of its own.

    C{auto}: with C{--workers N}, N at least 2 and at most the number of
    CPUs the gateway may run on, process I (0: the parent) and its threads
    run on the I-th of those CPUs only, as nginx's C{worker_cpu_affinity
    auto} does: a reactor that is not moved between CPUs keeps its caches,
    and its commit thread shares them (C{bench/RESULTS.md}: more msg/s and
    a shorter p99 on two cores shared with the load generator).  With one
    process, or more processes than CPUs, nothing is pinned.  C{off}: the
    kernel's scheduler places every process.
    """

    AUTO = "auto"
    OFF = "off"


class DestinationTLS(enum.Enum):
    """
    Outbound TLS setting of a Destination Controls row (ESA reference 6.2).
    """

    DEFAULT = "default"
    NO = "no"
    PREFERRED = "preferred"
    REQUIRED = "required"
    PREFERRED_VERIFY = "preferred-verify"
    REQUIRED_VERIFY = "required-verify"
    REQUIRED_VERIFY_HOSTED = "required-verify-hosted"

    @property
    def required(self) -> bool:
        """
        Whether mail may never leave in the clear under this setting.
        """
        return self in (
            DestinationTLS.REQUIRED,
            DestinationTLS.REQUIRED_VERIFY,
            DestinationTLS.REQUIRED_VERIFY_HOSTED,
        )

    @property
    def verifies(self) -> bool:
        """
        Whether the peer certificate is checked under this setting.
        """
        return self in (
            DestinationTLS.PREFERRED_VERIFY,
            DestinationTLS.REQUIRED_VERIFY,
            DestinationTLS.REQUIRED_VERIFY_HOSTED,
        )


#: The default row's TLS when the file does not set it (or has no default
#: row): opportunistic, like Postfix's C{may}, encrypted whenever the
#: destination offers it and never refused for it.  The loader and the
#: C{destconfig} dialog and the delivery policy all take it from here, so
#: that what the dialog shows (and writes back when the administrator keeps
#: it) is what runs.
DEFAULT_ROW_TLS = DestinationTLS.PREFERRED


#: Mail flow policy parameters that the ESA has but this gateway does not
#: implement.  They are accepted in configuration (so an ESA administrator's
#: habits do not break the file) and reported as not implemented at start-up.
UNIMPLEMENTED_POLICY_KEYS = frozenset(
    {
        "spam_check",
        "virus_check",
        "use_sb",
        "dhap_limit",
        "dkim_signing",
        "dkim_verification",
        "spf_verification",
        "dmarc_verification",
    }
)


@frozen
class MailFlowPolicy:
    """
    A complete, resolved mail flow policy: every parameter has a value,
    inherited from the listener's Default Policy Parameters where the file did
    not set it.

    The defaults are the ESA's Default Policy Parameters, except
    C{max_rcpts_per_msg}: 100, the least RFC 5321 (4.5.3.1.8) lets a server
    accept, rather than the 50 sometimes recalled for the ESA.

    @ivar explicit: the parameter names the configuration set on this policy
        itself (the rest were inherited); kept so that tools can show and
        write back only what the administrator chose.
    """

    name: str
    rule: AccessRule = AccessRule.ACCEPT
    banner_code: int = 220
    banner_text: str = ""
    reject_banner_code: int = 554
    reject_banner_text: str = "5.7.1 Access denied"
    override_hostname: str | None = None
    max_msgs_per_session: int = 10
    max_rcpts_per_msg: int = 100
    max_message_size: int = 10485760
    max_concurrency: int = 10
    max_rcpts_per_hour: int = -1
    max_rcpts_per_hour_code: int = 452
    max_rcpts_per_hour_text: str = "4.5.3 Too many recipients received this hour"
    tls: TLSMode = TLSMode.OFF
    tls_mandatory_senders: tuple[str, ...] = ()
    verify_client_certificate: bool = False
    client_ca: str | None = None
    smtp_auth: SMTPAuthMode = SMTPAuthMode.DISALLOW
    smtp_auth_requires_tls: bool = False
    unimplemented: tuple[tuple[str, object], ...] = ()
    explicit: frozenset[str] = frozenset()


#: The parameter names of a mail flow policy that configuration may set,
#: besides C{rule}.
POLICY_PARAMETER_KEYS: frozenset[str] = frozenset(a.name for a in attrs.fields(MailFlowPolicy)) - {
    "name",
    "rule",
    "unimplemented",
    "explicit",
}


@frozen
class SenderGroup:
    """
    One row of a Host Access Table: a named list of sender entries (matched
    with OR) and the name of the mail flow policy applied on a match.
    """

    name: str
    policy: str
    senders: tuple[str, ...]
    comment: str = ""


@frozen
class Interface:
    """
    An IP interface (ESA C{interfaceconfig}): a name, an address and its
    prefix.  Listeners bind to the address.
    """

    name: str
    address: IPv4Interface | IPv6Interface

    @property
    def ip(self) -> str:
        return str(self.address.ip)


#: C{proxy_trusted} when a listener does not set it: this host's loopback
#: addresses only.  HAProxy on the same host keeps working without a word
#: of configuration; a proxy anywhere else must be named, so that a client
#: that reaches the port directly cannot claim an address with a PROXY
#: header of its own.
DEFAULT_PROXY_TRUSTED: tuple[IPv4Network | IPv6Network, ...] = (
    ip_network("127.0.0.0/8"),
    ip_network("::1/128"),
)


@frozen
class Listener:
    """
    One ESA listener: an SMTP daemon on one interface and port, with its own
    Host Access Table and mail flow policies.

    @ivar policies: every policy this listener knows by name, resolved;
        C{policies["default"]} holds the Default Policy Parameters.
    @ivar hat: sender groups, evaluated top to bottom, first match wins.
    @ivar rat: Recipient Access Table: C{example.com} (that domain),
        C{.example.com} (its subdomains), C{user@example.com} (one address)
        or C{user@} (that local part in any RAT domain).
    @ivar sni: SNI host name to certificate name, for listeners that serve
        several names.
    @ivar proxy_protocol: every connection starts with a PROXY protocol
        header (HAProxy), and the HAT judges the client it names.
    @ivar proxy_trusted: with C{proxy_protocol}, the networks whose
        connections may carry that header; a connection from anywhere else
        is closed before a byte is read, since its header would be a claim
        anyone could make.  Meaningless (and refused by the loader)
        without C{proxy_protocol}.
    """

    name: str
    type: ListenerType
    interface: Interface
    port: int
    protocol: str = "SMTP"
    default_domain: str = ""
    max_concurrency: int = 1000
    tcp_queue: int = 50
    domain_map: bool = False
    certificate: str = "Demo"
    rat: tuple[str, ...] = ()
    policies: Mapping[str, MailFlowPolicy] = field(factory=dict)
    hat: tuple[SenderGroup, ...] = ()
    sni: Mapping[str, str] = field(factory=dict)
    tls_protocols: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")
    tls_ciphers: str = ""
    hostname: str = ""
    proxy_protocol: bool = False
    proxy_trusted: tuple[IPv4Network | IPv6Network, ...] = DEFAULT_PROXY_TRUSTED

    @property
    def default_policy(self) -> MailFlowPolicy:
        return self.policies["default"]

    @property
    def implicit_tls(self) -> bool:
        """
        RFC 8314 implicit TLS (C{protocol = "SMTPS"}): TLS from the first
        byte, STARTTLS never offered.
        """
        return self.protocol.upper() == "SMTPS"


@frozen
class ListenerSettings:
    """
    ESA global listener settings (C{listenerconfig -> setup}), shared by all
    listeners.

    @ivar unsuccessful_timeout: seconds a connection may go on issuing
        commands without injecting a message (ESA default 5 minutes).
    @ivar total_time_limit: seconds a connection may last in all; the ESA
        disconnects at 80% of it so as not to cut a message.
    @ivar idle_timeout: seconds of silence from the client (RFC 5321
        4.5.3.2.7 asks for at least 5 minutes).
    @ivar bad_command_limit: unrecognised commands before 421.
    @ivar reject_at_rcpt: REJECT policies answer at RCPT TO instead of at
        the banner, so that the sender and recipients are logged.
    @ivar max_received_headers: a message arriving with this many
        C{Received:} fields is in a mail loop and is refused (C{554 5.4.6});
        RFC 5321 6.3 asks for a threshold of at least 100 (Postfix's
        C{hopcount_limit} is 50).
    """

    unsuccessful_timeout: float = 300.0
    total_time_limit: float = 900.0
    idle_timeout: float = 300.0
    bad_command_limit: int = 5
    reject_at_rcpt: bool = False
    max_received_headers: int = 100


@frozen
class CertificateConfig:
    """
    A named certificate: PEM files for the leaf, its key and its chain.
    C{Demo} has no files: the store generates it under C{data_dir}.
    """

    name: str
    cert: str = ""
    key: str = ""
    chain: str = ""


@frozen
class DestinationControl:
    """
    One row of Destination Controls (ESA C{destconfig}); the row named
    C{default} governs every domain without its own row.
    """

    domain: str
    tls: DestinationTLS = DestinationTLS.DEFAULT
    max_host_concurrency: int = 500
    max_messages_per_connection: int = 50
    recipient_limit: int = 0
    recipient_minutes: int = 60
    ca_file: str = ""


@frozen
class AlertRecipient:
    """
    Someone who gets alerts of the given severities and types.
    """

    address: str
    severities: tuple[str, ...] = ("critical", "warning", "info")
    types: tuple[str, ...] = ("system", "hardware", "updater")


@frozen
class AlertHookConfig:
    """
    One C{[[alerts.hooks]]} table: where alerts go besides (or instead of)
    the built-in mail and log hooks.

    @ivar type: C{mail}, C{log}, C{command}, C{webhook} or C{python} (a
        third-party factory named by C{object}, C{package.module:factory},
        or an C{esa_tls.alert_hooks} entry point).
    @ivar severities: only these severities reach the hook (empty: all).
    @ivar types: only these alert types reach the hook (empty: all).
    """

    type: str
    command: tuple[str, ...] = ()
    url: str = ""
    object: str = ""
    timeout: float = 10.0
    sender: str = ""
    headers: Mapping[str, str] = field(factory=dict)
    options: Mapping[str, Any] = field(factory=dict)
    severities: tuple[str, ...] = ()
    types: tuple[str, ...] = ()


@frozen
class AlertSettings:
    """
    C{[alerts]}: the global TLS-failure alert switch (ESA C{destconfig ->
    setup}), who is told, and how.

    @ivar merge_interval: seconds during which repeated TLS failures for one
        domain are folded into one alert (with a count).
    @ivar hooks: empty means the built-in mail and log hooks.
    """

    tls_failure_alert: bool = False
    recipients: tuple[AlertRecipient, ...] = ()
    merge_interval: float = 900.0
    hooks: tuple[AlertHookConfig, ...] = ()


@frozen
class AdminSettings:
    """
    C{[admin]}: the admin web page (TLS report, recent alerts, C{/metrics}).

    @ivar listen: a Twisted server endpoint string such as
        C{tcp:8025:interface=127.0.0.1}; empty (the default) means off.
    """

    listen: str = ""


@frozen
class SystemSettings:
    """
    C{[system]}: the gateway's own name and where it keeps its data.

    @ivar smtp_auth_users: a C{user:hash} password file for SMTP AUTH
        (lines made by C{esa-tls passwd}); without it AUTH is never offered.
    @ivar spool_sync: see L{SpoolSync}.
    @ivar worker_cpu_affinity: see L{WorkerCPUAffinity}.
    """

    hostname: str
    data_dir: str = "var"
    resolvers: tuple[str, ...] = ()
    smtp_auth_users: str = ""
    spool_sync: SpoolSync = SpoolSync.FILE
    worker_cpu_affinity: WorkerCPUAffinity = WorkerCPUAffinity.AUTO


@frozen
class GatewayConfig:
    """
    The whole validated configuration.

    @ivar source: the file it was read from (C{"<embedded default>"} for the
        built-in one); error messages and tools name it.
    """

    system: SystemSettings
    interfaces: Mapping[str, Interface] = field(factory=dict)
    listeners: Mapping[str, Listener] = field(factory=dict)
    listener_settings: ListenerSettings = ListenerSettings()
    certificates: Mapping[str, CertificateConfig] = field(factory=dict)
    destinations: Mapping[str, DestinationControl] = field(factory=dict)
    smtp_routes: Mapping[str, tuple[str, ...]] = field(factory=dict)
    alerts: AlertSettings = AlertSettings()
    admin: AdminSettings = AdminSettings()
    source: str = "<embedded default>"
