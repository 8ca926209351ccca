"""
Tests for L{esa_tls.config.load}: every kind of configuration fault is
reported as C{FILE:LINE: KEY.PATH: what is wrong}, all faults at once, and
valid files become complete, resolved values.
"""

from __future__ import annotations

import ipaddress
import os
import textwrap

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from esa_tls.config.errors import ConfigError
from esa_tls.config.load import (
    load_config,
    load_config_with_warnings,
    parse_config,
    parse_config_with_warnings,
)
from esa_tls.config.model import (
    AccessRule,
    DestinationTLS,
    GatewayConfig,
    ListenerType,
    SenderGroup,
    SMTPAuthMode,
    SpoolSync,
    TLSMode,
    WorkerCPUAffinity,
)
from esa_tls.hat.syntax import SenderSyntaxError, parse_sender
from esa_tls.inbound.auth import hash_password
from esa_tls.spool.fs import syncfs_unsupported

#: Lines 1-6 of most test files; a listener table starts on line 7.
HEAD = """\
[system]
hostname = "mail.example.com"

[interfaces.PublicNet]
address = "192.168.2.1/24"

"""

#: A valid listener, lines 7-11 after L{HEAD}.
LISTENER = """\
[listeners.Inboundmail]
type = "public"
interface = "PublicNet"
port = 25
rat = ["example.com"]
"""


def with_system(line: str) -> str:
    """
    A valid configuration with C{line} added at the top of its C{[system]}
    table (line 2).
    """
    return HEAD.replace("[system]", "[system]\n" + line) + LISTENER


def config(text: str) -> GatewayConfig:
    return parse_config(textwrap.dedent(text), "site.toml")


class FaultTestsMixin:
    """
    Helpers to run the loader on text expected to be invalid.
    """

    def system_faults(self, line: str) -> list[str]:
        """
        The fault lines reported for a valid configuration with C{line}
        added at the top of its C{[system]} table (line 2).
        """
        return self.faults(with_system(line))

    def faults(self, text: str) -> list[str]:
        """
        The fault lines reported for C{text} named C{site.toml}.
        """
        try:
            parse_config(text, "site.toml")
        except ConfigError as e:
            self.assertEqual(str(e), "\n".join(str(f) for f in e.faults))  # type: ignore[attr-defined]
            return str(e).splitlines()
        self.fail("no ConfigError")  # type: ignore[attr-defined]
        raise AssertionError  # pragma: no cover


class SpoolSyncTests(FaultTestsMixin, SynchronousTestCase):
    """
    C{[system] spool_sync}: C{file} by default, C{filesystem} where the
    kernel makes C{syncfs} trustworthy.
    """

    def test_default(self) -> None:
        """
        Without the key each file is synced on its own.
        """
        self.assertIs(config(HEAD + LISTENER).system.spool_sync, SpoolSync.FILE)

    def test_filesystem(self) -> None:
        """
        C{filesystem} is accepted here (the test machines run Linux 5.8 or
        later).
        """
        why = syncfs_unsupported()
        if why is not None:
            raise SkipTest(why)
        self.assertIs(
            config(with_system('spool_sync = "filesystem"')).system.spool_sync, SpoolSync.FILESYSTEM
        )

    def test_unknown_value(self) -> None:
        """
        Any other value is refused, naming file, line, key and the choices.
        """
        self.assertEqual(
            self.system_faults('spool_sync = "fsync"'),
            ['site.toml:2: system.spool_sync: "fsync" is not one of file | filesystem'],
        )


class PasswordFileTests(FaultTestsMixin, SynchronousTestCase):
    def test_malformed_password_file(self) -> None:
        """
        A malformed C{smtp_auth_users} file is a configuration error naming
        the key, the file and its line: a line without C{user:hash}, a hash
        that is not C{$scrypt$...}, a user named twice.
        """
        good = hash_password("pw")
        for lines, problem in [
            (["# users", "alice " + good], "line 2: expected user:hash"),
            (
                [f"alice:{good}", "bob:secret"],
                "line 2: the hash is not of the form $scrypt$N$r$p$salt$key (see esa-tls passwd)",
            ),
            ([f"alice:{good[:-3]}"], "line 1: the hash's salt or key is not base64"),
            (
                [f"alice:{good}", "", f"alice:{good}"],
                "line 3: user 'alice' is already on line 1",
            ),
        ]:
            users = self.mktemp()
            with open(users, "w") as f:
                f.write("\n".join(lines) + "\n")
            self.assertEqual(
                self.system_faults(f'smtp_auth_users = "{users}"'),
                [f"site.toml:2: system.smtp_auth_users: {users}, {problem}"],
            )


class WorkerCPUAffinityTests(FaultTestsMixin, SynchronousTestCase):
    """
    C{[system] worker_cpu_affinity}: C{auto} by default, or C{off}.
    """

    def test_default(self) -> None:
        """
        Without the key, processes are kept on CPUs of their own where that
        fits (L{esa_tls.workers.cpu_plan}).
        """
        self.assertIs(config(HEAD + LISTENER).system.worker_cpu_affinity, WorkerCPUAffinity.AUTO)

    def test_off(self) -> None:
        """
        C{off} leaves every process to the scheduler.
        """
        affinity = config(with_system('worker_cpu_affinity = "off"')).system.worker_cpu_affinity
        self.assertIs(affinity, WorkerCPUAffinity.OFF)

    def test_unknown_value(self) -> None:
        """
        Any other value is refused, naming file, line, key and the choices.
        """
        self.assertEqual(
            self.system_faults('worker_cpu_affinity = "on"'),
            ['site.toml:2: system.worker_cpu_affinity: "on" is not one of auto | off'],
        )
        self.assertEqual(
            self.system_faults("worker_cpu_affinity = true"),
            ["site.toml:2: system.worker_cpu_affinity: expected a string, got a boolean (true)"],
        )


class ListenerFaultTests(FaultTestsMixin, SynchronousTestCase):
    """
    Faults in C{[listeners.NAME]}.
    """

    def test_port_out_of_range(self) -> None:
        """
        A port above 65535 is refused, naming file, line, key and range.
        """
        text = HEAD + LISTENER.replace("port = 25", "port = 70000")
        self.assertEqual(
            self.faults(text),
            ["site.toml:10: listeners.Inboundmail.port: 70000 is out of range 1-65535"],
        )

    def test_port_wrong_type(self) -> None:
        """
        A port given as a string is refused, quoting what was written.
        """
        text = HEAD + LISTENER.replace("port = 25", 'port = "25"')
        self.assertEqual(
            self.faults(text),
            ['site.toml:10: listeners.Inboundmail.port: expected an integer, got a string ("25")'],
        )

    def test_huge_limits(self) -> None:
        """
        C{tcp_queue} and C{max_concurrency} have upper bounds the loader
        names.  Before, C{tcp_queue = 99999999999} passed the loader and
        stopped start-up with C{OverflowError} from C{listen()} (or, with
        one worker, was logged as an unhandled error while the gateway ran
        without the listener), and C{max_concurrency = 99999999999} with a
        C{struct.error} from the workers' shared table.
        """
        text = HEAD + LISTENER + "tcp_queue = 99999999999\nmax_concurrency = 99999999999\n"
        self.assertEqual(
            self.faults(text),
            [
                "site.toml:12: listeners.Inboundmail.tcp_queue: 99999999999 is out of range "
                "1-65535",
                "site.toml:13: listeners.Inboundmail.max_concurrency: 99999999999 is out of "
                "range 1-1000000",
            ],
        )
        largest = HEAD + LISTENER + "tcp_queue = 65535\nmax_concurrency = 1000000\n"
        listener = config(largest).listeners["Inboundmail"]
        self.assertEqual((listener.tcp_queue, listener.max_concurrency), (65535, 1000000))

    def test_unknown_key_suggestion(self) -> None:
        """
        A misspelt key is an unknown key, with the likely intended one.
        """
        text = HEAD + LISTENER + "tcp_queu = 50\n"
        self.assertEqual(
            self.faults(text),
            [
                "site.toml:12: listeners.Inboundmail.tcp_queu: unknown key; did you mean 'tcp_queue'?"
            ],
        )

    def test_unknown_section(self) -> None:
        """
        A misspelt top-level table is an unknown key too.
        """
        text = HEAD + LISTENER + "\n[listener_setting]\nidle_timeout = 5\n"
        self.assertEqual(
            self.faults(text),
            ["site.toml:13: listener_setting: unknown key; did you mean 'listener_settings'?"],
        )

    def test_missing_required(self) -> None:
        """
        C{type}, C{interface} and C{port} are required; the fault is on the
        table header.
        """
        text = HEAD + '[listeners.Inboundmail]\nrat = ["example.com"]\n'
        self.assertEqual(
            self.faults(text),
            [
                'site.toml:7: listeners.Inboundmail: missing key "type"',
                'site.toml:7: listeners.Inboundmail: missing key "interface"',
                'site.toml:7: listeners.Inboundmail: missing key "port"',
            ],
        )

    def test_bad_type(self) -> None:
        """
        The listener type is public or private.
        """
        text = HEAD + LISTENER.replace('"public"', '"publik"')
        self.assertEqual(
            self.faults(text),
            [
                'site.toml:8: listeners.Inboundmail.type: "publik" is not one of '
                "public | private; did you mean 'public'?"
            ],
        )

    def test_unknown_interface(self) -> None:
        """
        A listener's interface must be a defined C{[interfaces.NAME]}.
        """
        text = HEAD + LISTENER.replace('interface = "PublicNet"', 'interface = "Publicnet"')
        self.assertEqual(
            self.faults(text),
            [
                'site.toml:9: listeners.Inboundmail.interface: unknown interface "Publicnet" '
                "(define it in [interfaces.Publicnet]); did you mean 'PublicNet'?"
            ],
        )

    def test_unknown_certificate(self) -> None:
        """
        A listener's certificate is C{Demo} or a C{[certificates.NAME]}.
        """
        text = HEAD + LISTENER + 'certificate = "demo"\n'
        self.assertEqual(
            self.faults(text),
            [
                'site.toml:12: listeners.Inboundmail.certificate: unknown certificate "demo" '
                "(Demo or a [certificates] name); did you mean 'Demo'?"
            ],
        )

    def test_unknown_sni_certificate(self) -> None:
        """
        SNI entries name certificates too.
        """
        text = HEAD + LISTENER + 'sni = { "mx.example.com" = "Other" }\n'
        self.assertEqual(
            self.faults(text),
            [
                'site.toml:12: listeners.Inboundmail.sni."mx.example.com": unknown certificate '
                '"Other" (Demo or a [certificates] name)'
            ],
        )

    def test_empty_sni_name(self) -> None:
        """
        An SNI entry with no host name (C{""}, or C{"*."} with nothing
        after the wildcard) is a fault at its key.  Before, C{""} made the
        loader drop the whole listener without a word, and C{"*."} was
        taken as a name no client can send.
        """
        for key in ('""', '"*."'):
            text = HEAD + LISTENER + f'sni = {{ {key} = "Demo" }}\n'
            self.assertEqual(
                self.faults(text),
                [
                    f"site.toml:12: listeners.Inboundmail.sni.{key}: needs a host name "
                    "(mx.example.com or *.example.com)"
                ],
            )

    def test_cipher_string_openssl_rejects(self) -> None:
        """
        A C{tls_ciphers} string in which OpenSSL finds no cipher is refused
        when the file is loaded.  Before, the gateway started, offered
        STARTTLS, and dropped each client that asked for it (an unhandled
        error in the listener's first TLS context).
        """
        text = HEAD + LISTENER + 'tls_ciphers = "BOGUS:NOSUCH"\n'
        self.assertEqual(
            self.faults(text),
            [
                "site.toml:12: listeners.Inboundmail.tls_ciphers: OpenSSL finds no cipher in "
                '"BOGUS:NOSUCH" (an OpenSSL cipher string for TLS 1.2, e.g. "ECDHE+AESGCM")'
            ],
        )
        self.assertEqual(
            config(HEAD + LISTENER + 'tls_ciphers = "ECDHE+AESGCM"\n')
            .listeners["Inboundmail"]
            .tls_ciphers,
            "ECDHE+AESGCM",
        )

    def test_duplicate_listener_name(self) -> None:
        """
        The same listener name twice is refused, pointing at both tables.
        """
        second = LISTENER.replace("port = 25", "port = 26")
        text = HEAD + LISTENER + "\n" + second
        self.assertEqual(
            self.faults(text),
            [
                "site.toml:13: listeners.Inboundmail: duplicate listener name "
                "'Inboundmail' (first defined at line 7)"
            ],
        )

    def test_names_case_sensitive(self) -> None:
        """
        Listener names are case-sensitive: C{Inboundmail} and C{InboundMail}
        are two listeners.
        """
        second = LISTENER.replace("Inboundmail", "InboundMail").replace("port = 25", "port = 26")
        loaded = parse_config(HEAD + LISTENER + second, "site.toml")
        self.assertEqual(list(loaded.listeners), ["Inboundmail", "InboundMail"])

    def test_address_in_use(self) -> None:
        """
        Two listeners may not bind the same address and port.
        """
        second = LISTENER.replace("Inboundmail", "Second")
        self.assertEqual(
            self.faults(HEAD + LISTENER + second),
            [
                "site.toml:15: listeners.Second.port: 192.168.2.1 port 25 is already used by listener 'Inboundmail'"
            ],
        )

    def test_rat_all_refused(self) -> None:
        """
        C{ALL} in a RAT would make an open relay: refused, pointing at RELAY.
        """
        text = HEAD + LISTENER.replace('rat = ["example.com"]', 'rat = ["example.com",\n  "ALL"]')
        self.assertEqual(
            self.faults(text),
            [
                "site.toml:12: listeners.Inboundmail.rat[1]: ALL is not allowed in a RAT "
                "(it would make an open relay): use a RELAY policy instead"
            ],
        )

    def test_rat_bad_entry(self) -> None:
        """
        RAT entries are domains, C{.domains}, addresses or C{user@}.
        """
        text = HEAD + LISTENER.replace('"example.com"', '"exa mple.com"')
        self.assertEqual(
            self.faults(text),
            [
                'site.toml:11: listeners.Inboundmail.rat[0]: "exa mple.com" is not a RAT entry '
                "(example.com, .example.com, user@example.com or user@)"
            ],
        )

    def test_rat_forms(self) -> None:
        """
        The four RAT forms are accepted (domains lower-cased).
        """
        text = HEAD + LISTENER.replace(
            '["example.com"]',
            '["Example.COM", ".sub.example.com", "joe@example.org", "postmaster@"]',
        )
        listener = parse_config(text, "site.toml").listeners["Inboundmail"]
        self.assertEqual(
            listener.rat, ("example.com", ".sub.example.com", "joe@example.org", "postmaster@")
        )

    def test_no_listener(self) -> None:
        """
        A file without listeners is refused: the gateway would do nothing.
        """
        self.assertEqual(
            self.faults(HEAD),
            ["site.toml:1: listeners: no listener is defined (add a [listeners.NAME] table)"],
        )

    def test_smtp_text_injection(self) -> None:
        """
        Text sent in SMTP replies may not hold line breaks.
        """
        text = (
            HEAD
            + LISTENER
            + ('[listeners.Inboundmail.policies.default]\nbanner_text = "hello\\r\\n250 fake"\n')
        )
        self.assertEqual(
            self.faults(text),
            [
                "site.toml:13: listeners.Inboundmail.policies.default.banner_text: "
                "must be printable ASCII on one line (it is sent in SMTP replies)"
            ],
        )


class HATFaultTests(FaultTestsMixin, SynchronousTestCase):
    """
    Faults in C{[[listeners.NAME.hat]]} and the policies.
    """

    def test_bad_sender(self) -> None:
        """
        A bad sender entry is reported with its index, the entry and why,
        on the line of the entry.
        """
        text = (
            HEAD
            + LISTENER
            + "\n[[listeners.Inboundmail.hat]]\n"
            + 'group = "WHITELIST"\n'
            + 'policy = "TRUSTED"\n'
            + "senders = [\n"
            + '  "10.1.1.1-50",\n'
            + '  "192.168.0.0/16",\n'
            + '  "10.1.1.1-300",\n'
            + "]\n"
        )
        with self.assertRaises(SenderSyntaxError) as raised:
            parse_sender("10.1.1.1-300")
        self.assertEqual(
            self.faults(text),
            [f"site.toml:19: listeners.Inboundmail.hat[0].senders[2]: {raised.exception}"],
        )
        self.assertIn("'10.1.1.1-300'", str(raised.exception))

    def test_unknown_policy(self) -> None:
        """
        A sender group's policy must exist for that listener.
        """
        text = (
            HEAD
            + LISTENER
            + '[[listeners.Inboundmail.hat]]\ngroup = "A"\npolicy = "TRUSTD"\nsenders = ["ALL"]\n'
        )
        self.assertEqual(
            self.faults(text),
            [
                'site.toml:14: listeners.Inboundmail.hat[0].policy: unknown policy "TRUSTD" '
                "(one of ACCEPTED, BLOCKED, THROTTLED, TRUSTED); did you mean 'TRUSTED'?"
            ],
        )

    def test_duplicate_group(self) -> None:
        """
        Two sender groups of one HAT may not share a name.
        """
        group = (
            '[[listeners.Inboundmail.hat]]\ngroup = "A"\npolicy = "ACCEPTED"\nsenders = ["ALL"]\n'
        )
        self.assertEqual(
            self.faults(HEAD + LISTENER + group + group),
            [
                "site.toml:17: listeners.Inboundmail.hat[1].group: sender group 'A' is already hat[0]"
            ],
        )

    def test_missing_group_keys(self) -> None:
        """
        C{group}, C{policy} and C{senders} are required in a sender group.
        """
        text = HEAD + LISTENER + '[[listeners.Inboundmail.hat]]\ngroup = "A"\n'
        self.assertEqual(
            self.faults(text),
            [
                'site.toml:12: listeners.Inboundmail.hat[0]: missing key "policy"',
                'site.toml:12: listeners.Inboundmail.hat[0]: missing key "senders"',
            ],
        )

    def test_rule_required(self) -> None:
        """
        A policy that is not predefined needs a rule.
        """
        text = HEAD + LISTENER + "[listeners.Inboundmail.policies.PARTNERS]\nmax_concurrency = 5\n"
        self.assertEqual(
            self.faults(text),
            [
                'site.toml:12: listeners.Inboundmail.policies.PARTNERS: missing key "rule" '
                "(ACCEPT | REJECT | TCPREFUSE | RELAY | CONTINUE)"
            ],
        )

    def test_default_has_no_rule(self) -> None:
        """
        The Default Policy Parameters have no access rule.
        """
        text = HEAD + LISTENER + '[listeners.Inboundmail.policies.default]\nrule = "RELAY"\n'
        self.assertEqual(
            self.faults(text),
            [
                "site.toml:13: listeners.Inboundmail.policies.default.rule: the Default Policy "
                "Parameters have no access rule (sender groups choose a policy that has one)"
            ],
        )

    def test_bad_tls_mode(self) -> None:
        """
        C{tls} is off, preferred or required.
        """
        text = HEAD + LISTENER + '[listeners.Inboundmail.policies.default]\ntls = "require"\n'
        self.assertEqual(
            self.faults(text),
            [
                'site.toml:13: listeners.Inboundmail.policies.default.tls: "require" is not one '
                "of off | preferred | required; did you mean 'required'?"
            ],
        )

    def test_client_ca_not_pem(self) -> None:
        """
        C{client_ca} must hold PEM certificates: before, a file that held
        none was taken, and each STARTTLS under the policy then failed with
        an unhandled error.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        with open(os.path.join(base, "clients.pem"), "w") as f:
            f.write("not a certificate\n")
        text = (
            HEAD
            + LISTENER
            + "[listeners.Inboundmail.policies.default]\n"
            + 'tls = "preferred"\nverify_client_certificate = true\nclient_ca = "clients.pem"\n'
        )
        with self.assertRaises(ConfigError) as raised:
            parse_config(text, "site.toml", base_dir=base)
        self.assertEqual(
            str(raised.exception),
            "site.toml:15: listeners.Inboundmail.policies.default.client_ca: "
            f"{os.path.join(base, 'clients.pem')} holds no PEM certificate",
        )

    def test_unknown_policy_key(self) -> None:
        """
        A misspelt policy parameter is an unknown key.
        """
        text = (
            HEAD + LISTENER + "[listeners.Inboundmail.policies.default]\nmax_msgs_per_sesion = 5\n"
        )
        self.assertEqual(
            self.faults(text),
            [
                "site.toml:13: listeners.Inboundmail.policies.default.max_msgs_per_sesion: "
                "unknown key; did you mean 'max_msgs_per_session'?"
            ],
        )

    def test_bad_mandatory_sender(self) -> None:
        """
        C{tls_mandatory_senders} entries are ESA address list entries.
        """
        text = (
            HEAD
            + LISTENER
            + (
                '[listeners.Inboundmail.policies.default]\ntls_mandatory_senders = ["@ok.example", "nope"]\n'
            )
        )
        lines = self.faults(text)
        self.assertEqual(len(lines), 1)
        self.assertTrue(
            lines[0].startswith(
                "site.toml:13: listeners.Inboundmail.policies.default.tls_mandatory_senders[1]: "
                "'nope' is not an address list entry"
            ),
            lines[0],
        )

    def test_mandatory_senders_without_tls(self) -> None:
        """
        A policy that lists TLS-mandatory senders but has TLS off (set or
        inherited) is refused: those senders would be taken in the clear.
        The list may sit in the Default Policy Parameters for the policies
        that turn TLS on.
        """
        policy = "[listeners.Inboundmail.policies.ACCEPTED]\n"
        lines = self.faults(
            HEAD + LISTENER + policy + 'tls_mandatory_senders = ["@bank.example"]\n'
        )
        self.assertEqual(
            lines,
            [
                "site.toml:13: listeners.Inboundmail.policies.ACCEPTED.tls_mandatory_senders: "
                'tls_mandatory_senders needs tls = "preferred" (or "required"): with TLS off '
                "the senders it lists would be taken in the clear"
            ],
        )
        default = (
            '[listeners.Inboundmail.policies.default]\ntls_mandatory_senders = ["@bank.example"]\n'
        )
        lines = self.faults(HEAD + LISTENER + default + policy + 'tls = "off"\n')
        self.assertEqual(len(lines), 1)
        self.assertTrue(
            lines[0].startswith("site.toml:15: listeners.Inboundmail.policies.ACCEPTED.tls: "),
            lines,
        )
        loaded = config(HEAD + LISTENER + default + policy + 'tls = "preferred"\n')
        accepted = loaded.listeners["Inboundmail"].policies["ACCEPTED"]
        self.assertEqual(
            (accepted.tls, accepted.tls_mandatory_senders), (TLSMode.PREFERRED, ("@bank.example",))
        )


class ProxyTrustedTests(FaultTestsMixin, SynchronousTestCase):
    """
    C{proxy_trusted}: the proxies whose connections may carry a PROXY
    header, on a C{proxy_protocol} listener only.
    """

    def listener(self, lines: str) -> str:
        """
        A valid configuration whose listener has C{lines} from line 12 on.
        """
        return HEAD + LISTENER + lines

    def test_default(self) -> None:
        """
        Without the key, this host's loopback addresses are the proxies.
        """
        listener = config(self.listener("proxy_protocol = true\n")).listeners["Inboundmail"]
        self.assertEqual(
            listener.proxy_trusted,
            (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        )

    def test_forms(self) -> None:
        """
        IPv4 and IPv6 addresses and CIDR networks; an entry given twice
        counts once.
        """
        text = self.listener(
            "proxy_protocol = true\n"
            'proxy_trusted = ["192.0.2.10", "10.0.0.0/24", "2001:db8::/64", "::1", "192.0.2.10"]\n'
        )
        self.assertEqual(
            config(text).listeners["Inboundmail"].proxy_trusted,
            tuple(
                ipaddress.ip_network(n)
                for n in ("192.0.2.10/32", "10.0.0.0/24", "2001:db8::/64", "::1/128")
            ),
        )

    def test_bad_network(self) -> None:
        """
        An entry that is not an address or network, has host bits set, is
        not a string, or is IPv4-mapped is refused, naming file, line and
        key; so is an empty list.
        """
        text = self.listener(
            "proxy_protocol = true\n"
            "proxy_trusted = [\n"
            '  "10.0.0.300",\n'
            '  "10.1.1.1/16",\n'
            "  10,\n"
            '  "::ffff:192.0.2.1",\n'
            '  "2001:db8::/129",\n'
            "]\n"
        )
        self.assertEqual(
            self.faults(text),
            [
                'site.toml:14: listeners.Inboundmail.proxy_trusted[0]: "10.0.0.300" is not an IP '
                'address or network (e.g. "192.0.2.10", "10.0.0.0/24", "2001:db8::/64")',
                'site.toml:15: listeners.Inboundmail.proxy_trusted[1]: "10.1.1.1/16" has host '
                "bits set (the network is 10.1.0.0/16)",
                "site.toml:16: listeners.Inboundmail.proxy_trusted[2]: expected a string, got an "
                "integer (10)",
                'site.toml:17: listeners.Inboundmail.proxy_trusted[3]: "::ffff:192.0.2.1" is an '
                "IPv4-mapped IPv6 address: give the IPv4 address (connections from it are seen "
                "as IPv4)",
                'site.toml:18: listeners.Inboundmail.proxy_trusted[4]: "2001:db8::/129" is not an '
                'IP address or network (e.g. "192.0.2.10", "10.0.0.0/24", "2001:db8::/64")',
            ],
        )
        self.assertEqual(
            self.faults(self.listener("proxy_protocol = true\nproxy_trusted = []\n")),
            [
                "site.toml:13: listeners.Inboundmail.proxy_trusted: must name at least one proxy "
                "(with none, every connection is refused); leave the key out for the default, "
                "this host's loopback addresses"
            ],
        )

    def test_without_proxy_protocol(self) -> None:
        """
        On a listener that reads no PROXY header the key would restrict
        nothing: refused, whether C{proxy_protocol} is false or absent.
        """
        fault = (
            "listeners.Inboundmail.proxy_trusted: only means something with "
            "proxy_protocol = true (this listener reads no PROXY header): remove it, or set "
            "proxy_protocol = true"
        )
        self.assertEqual(
            self.faults(self.listener('proxy_trusted = ["10.0.0.1"]\n')),
            [f"site.toml:12: {fault}"],
        )
        self.assertEqual(
            self.faults(self.listener('proxy_protocol = false\nproxy_trusted = ["10.0.0.1"]\n')),
            [f"site.toml:13: {fault}"],
        )

    def test_everyone_warned(self) -> None:
        """
        Trusting every address is allowed (it is what the key's absence
        meant before it existed), with a warning.
        """
        result = parse_config_with_warnings(
            self.listener('proxy_protocol = true\nproxy_trusted = ["0.0.0.0/0", "::/0"]\n'),
            "site.toml",
        )
        self.assertEqual(
            result.warnings,
            tuple(
                f"site.toml:13: listeners.Inboundmail.proxy_trusted[{i}]: {n} trusts every "
                "address: any client that can connect may claim any address in a PROXY header"
                for i, n in enumerate(("0.0.0.0/0", "::/0"))
            ),
        )


class OtherSectionFaultTests(FaultTestsMixin, SynchronousTestCase):
    """
    Faults in the other sections.
    """

    def test_bad_interface_address(self) -> None:
        """
        An interface address is an IP address with a prefix length.
        """
        text = HEAD.replace("192.168.2.1/24", "192.168.2.300/24") + LISTENER
        self.assertEqual(
            self.faults(text),
            [
                'site.toml:5: interfaces.PublicNet.address: "192.168.2.300/24" is not an IP '
                "address with a prefix length (e.g. 192.168.2.1/24)"
            ],
        )

    def test_demo_not_redefinable(self) -> None:
        """
        The Demo certificate is built in.
        """
        text = HEAD + LISTENER + '[certificates.Demo]\ncert = "a.pem"\nkey = "a.key"\n'
        self.assertEqual(
            self.faults(text),
            [
                "site.toml:12: certificates.Demo: the Demo certificate is built in and cannot "
                "be redefined; choose another name"
            ],
        )

    def test_certificate_file_missing(self) -> None:
        """
        Certificate files must exist; relative paths are relative to the
        configuration's directory.
        """
        base = self.mktemp()
        os.makedirs(base)
        with open(os.path.join(base, "cert.pem"), "w") as f:
            f.write("x")
        text = HEAD + LISTENER + '[certificates.Mail]\ncert = "cert.pem"\nkey = "missing.key"\n'
        with self.assertRaises(ConfigError) as raised:
            parse_config(text, "site.toml", base_dir=os.path.abspath(base))
        missing = os.path.join(os.path.abspath(base), "missing.key")
        self.assertEqual(
            str(raised.exception), f"site.toml:14: certificates.Mail.key: file not found: {missing}"
        )

    def test_default_destination_not_default(self) -> None:
        """
        The C{default} destination row cannot itself be C{tls = "default"}.
        """
        text = HEAD + LISTENER + '[destinations.default]\ntls = "default"\n'
        self.assertEqual(
            self.faults(text),
            [
                'site.toml:13: destinations.default.tls: "default" is not a setting for the '
                "default row: it IS the default (use no, preferred, required, preferred-verify, "
                "required-verify or required-verify-hosted)"
            ],
        )

    def test_destination_domain(self) -> None:
        """
        Destination rows are named by domain; quoted keys are shown quoted.
        """
        text = HEAD + LISTENER + '[destinations."bad domain"]\ntls = "no"\n'
        self.assertEqual(
            self.faults(text),
            ['site.toml:12: destinations."bad domain": "bad domain" is not a domain name'],
        )

    def test_recipient_minutes_range(self) -> None:
        """
        A recipient limit is counted over 1 to 60 minutes, as on the ESA
        (and as the C{destconfig} dialog asks): 120 is refused, so that a
        file, C{set} or IMPORT cannot write a value the dialog then refuses
        to keep.
        """
        text = (
            HEAD
            + LISTENER
            + '[destinations."partner.example"]\nrecipient_limit = 100\nrecipient_minutes = 120\n'
        )
        self.assertEqual(
            self.faults(text),
            [
                'site.toml:14: destinations."partner.example".recipient_minutes: '
                "120 is out of range 1-60"
            ],
        )

    def test_smtp_route_port(self) -> None:
        """
        SMTP route hosts are C{host[:port]} with a valid port.
        """
        text = HEAD + LISTENER + '[smtp_routes]\n"example.com" = ["mx.example.com:99999"]\n'
        self.assertEqual(
            self.faults(text),
            [
                'site.toml:13: smtp_routes."example.com"[0]: "mx.example.com:99999": '
                "port '99999' is out of range 1-65535"
            ],
        )

    def test_resolver(self) -> None:
        """
        Resolvers are IP addresses with an optional port.
        """
        text = (
            HEAD.replace('hostname = "mail.example.com"', 'resolvers = ["dns.example"]') + LISTENER
        )
        self.assertEqual(
            self.faults(text),
            ['site.toml:2: system.resolvers[0]: "dns.example" is not an IP address[:port]'],
        )

    def test_alert_severity(self) -> None:
        """
        Alert severities are critical, warning and info.
        """
        text = (
            HEAD
            + LISTENER
            + '[[alerts.recipients]]\naddress = "pm@example.com"\nseverities = ["warn"]\n'
        )
        self.assertEqual(
            self.faults(text),
            [
                'site.toml:14: alerts.recipients[0].severities[0]: "warn" is not one of '
                "critical | warning | info; did you mean 'warning'?"
            ],
        )

    def test_listener_settings_type(self) -> None:
        """
        Timeouts are positive numbers of seconds, and finite: infinity (or
        1e300) would let a session hold its slot for ever.
        """
        text = HEAD + LISTENER + "[listener_settings]\nidle_timeout = 0\n"
        self.assertEqual(
            self.faults(text),
            ["site.toml:13: listener_settings.idle_timeout: 0 is not a positive number of seconds"],
        )
        for value in ("inf", "1e300"):
            text = HEAD + LISTENER + f"[listener_settings]\nidle_timeout = {value}\n"
            self.assertEqual(
                self.faults(text),
                [
                    f"site.toml:13: listener_settings.idle_timeout: {float(value)} seconds is "
                    "more than a week, the most it takes"
                ],
            )

    def test_toml_syntax(self) -> None:
        """
        A TOML syntax error names the file and line.
        """
        text = HEAD + LISTENER.replace("port = 25", "port = ")
        self.assertEqual(self.faults(text), ["site.toml:10: invalid TOML: Invalid value"])

    def test_key_twice(self) -> None:
        """
        A key set twice in one table is reported with both lines.
        """
        text = HEAD + LISTENER + "port = 26\n"
        self.assertEqual(
            self.faults(text),
            ["site.toml:12: listeners.Inboundmail.port: set twice (first set at line 10)"],
        )

    def test_all_faults_at_once(self) -> None:
        """
        Every fault is reported, in file order, in one error.
        """
        text = (
            HEAD.replace('"192.168.2.1/24"', "24")
            + LISTENER.replace("port = 25", "port = 0")
            + "[listeners.Inboundmail.policies.default]\nmax_message_size = -5\n"
        )
        self.assertEqual(
            self.faults(text),
            [
                "site.toml:5: interfaces.PublicNet.address: expected a string, got an integer (24)",
                "site.toml:10: listeners.Inboundmail.port: 0 is out of range 1-65535",
                "site.toml:13: listeners.Inboundmail.policies.default.max_message_size: "
                "-5 is below the minimum, 1",
            ],
        )


class FileTests(SynchronousTestCase):
    """
    L{load_config} on files.
    """

    def write(self, text: str | bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
        return path

    def test_unreadable(self) -> None:
        """
        A missing file is a configuration error naming it.
        """
        path = self.mktemp()
        with self.assertRaises(ConfigError) as raised:
            load_config(path)
        self.assertEqual(str(raised.exception), f"{path}: cannot read: No such file or directory")

    def test_not_utf8(self) -> None:
        """
        TOML is UTF-8; other bytes are refused with their line.
        """
        path = self.write(b'[system]\nhostname = "caf\xe9"\n')
        with self.assertRaises(ConfigError) as raised:
            load_config(path)
        self.assertEqual(str(raised.exception), f"{path}:2: not UTF-8 text (TOML is UTF-8)")

    def test_relative_paths(self) -> None:
        """
        Relative paths in a file are relative to the file's directory.
        """
        path = self.write(HEAD.replace("[system]", '[system]\ndata_dir = "spool"') + LISTENER)
        loaded = load_config(path)
        expected = os.path.join(os.path.dirname(os.path.abspath(path)), "spool")
        self.assertEqual(loaded.system.data_dir, expected)
        self.assertEqual(loaded.source, path)


class ResolutionTests(SynchronousTestCase):
    """
    Policy inheritance, predefined tables and defaults of valid files.
    """

    def test_default_policy(self) -> None:
        """
        The Default Policy Parameters are the model defaults overridden by
        C{policies.default}; the file's keys are recorded as explicit.
        """
        loaded = config(
            HEAD
            + LISTENER
            + "[listeners.Inboundmail.policies.default]\n"
            + 'tls = "required"\nmax_rcpts_per_msg = 7\n'
        )
        default = loaded.listeners["Inboundmail"].default_policy
        self.assertEqual(default.rule, AccessRule.ACCEPT)
        self.assertEqual(default.tls, TLSMode.REQUIRED)
        self.assertEqual(default.max_rcpts_per_msg, 7)
        self.assertEqual(default.max_msgs_per_session, 10)
        self.assertEqual(default.explicit, frozenset({"tls", "max_rcpts_per_msg"}))

    def test_predefined_inherit_default(self) -> None:
        """
        Predefined policies keep their own values and inherit the rest from
        the listener's default (the seed's C{tls = "required"} reaches them).
        """
        loaded = config(
            HEAD + LISTENER + '[listeners.Inboundmail.policies.default]\ntls = "required"\n'
        )
        policies = loaded.listeners["Inboundmail"].policies
        self.assertEqual(
            sorted(policies), ["ACCEPTED", "BLOCKED", "THROTTLED", "TRUSTED", "default"]
        )
        self.assertEqual(policies["TRUSTED"].tls, TLSMode.REQUIRED)
        self.assertEqual(policies["TRUSTED"].max_msgs_per_session, 1000)
        self.assertEqual(policies["THROTTLED"].max_rcpts_per_hour, 20)
        self.assertEqual(policies["BLOCKED"].rule, AccessRule.REJECT)
        self.assertEqual(policies["TRUSTED"].explicit, frozenset())

    def test_predefined_replaced(self) -> None:
        """
        A file table named like a predefined policy replaces it: what the
        file does not set comes from the default, not from the predefined
        policy; the predefined rule stays when the file sets none.
        """
        loaded = config(
            HEAD
            + LISTENER
            + "[listeners.Inboundmail.policies.TRUSTED]\nmax_msgs_per_session = 5000\n"
            + '[listeners.Inboundmail.policies.BLOCKED]\nreject_banner_text = "5.7.1 Go away"\n'
        )
        policies = loaded.listeners["Inboundmail"].policies
        trusted = policies["TRUSTED"]
        self.assertEqual(trusted.rule, AccessRule.ACCEPT)
        self.assertEqual(trusted.max_msgs_per_session, 5000)
        self.assertEqual(trusted.max_rcpts_per_msg, 100)
        self.assertEqual(trusted.max_message_size, 10485760)
        self.assertEqual(trusted.explicit, frozenset({"max_msgs_per_session"}))
        self.assertEqual(policies["BLOCKED"].rule, AccessRule.REJECT)
        self.assertEqual(policies["BLOCKED"].reject_banner_text, "5.7.1 Go away")

    def test_user_policy(self) -> None:
        """
        An administrator's policy inherits every unset parameter from the
        default.
        """
        loaded = config(
            HEAD
            + LISTENER
            + '[listeners.Inboundmail.policies.default]\nsmtp_auth = "allow"\n'
            + '[listeners.Inboundmail.policies.PARTNERS]\nrule = "relay"\ntls = "preferred"\n'
        )
        partners = loaded.listeners["Inboundmail"].policies["PARTNERS"]
        self.assertEqual(partners.rule, AccessRule.RELAY)
        self.assertEqual(partners.tls, TLSMode.PREFERRED)
        self.assertEqual(partners.smtp_auth, SMTPAuthMode.ALLOW)
        self.assertEqual(partners.explicit, frozenset({"rule", "tls"}))

    def test_unimplemented_keys(self) -> None:
        """
        ESA switches this gateway lacks are accepted, kept, inherited, and
        reported as warnings naming their line.
        """
        result = parse_config_with_warnings(
            HEAD
            + LISTENER
            + '[listeners.Inboundmail.policies.default]\nspam_check = "on"\n'
            + '[listeners.Inboundmail.policies.TRUSTED]\nspam_check = "off"\n',
            "site.toml",
        )
        policies = result.config.listeners["Inboundmail"].policies
        self.assertEqual(policies["default"].unimplemented, (("spam_check", "on"),))
        self.assertEqual(policies["ACCEPTED"].unimplemented, (("spam_check", "on"),))
        self.assertEqual(policies["TRUSTED"].unimplemented, (("spam_check", "off"),))
        self.assertEqual(
            result.warnings,
            (
                "site.toml:13: listeners.Inboundmail.policies.default.spam_check: "
                "not implemented by this gateway: accepted and ignored",
                "site.toml:15: listeners.Inboundmail.policies.TRUSTED.spam_check: "
                "not implemented by this gateway: accepted and ignored",
            ),
        )

    def test_smtp_auth_without_users(self) -> None:
        """
        A policy that allows or requires SMTP AUTH while the gateway has no
        C{smtp_auth_users} file loads, with a warning naming the key: AUTH
        is never offered, so "require" refuses every MAIL FROM.
        """
        result = parse_config_with_warnings(
            HEAD
            + LISTENER
            + '[listeners.Inboundmail.policies.default]\nsmtp_auth = "allow"\n'
            + '[listeners.Inboundmail.policies.STAFF]\nrule = "ACCEPT"\n'
            + 'smtp_auth = "require"\n',
            "site.toml",
        )
        self.assertEqual(
            result.warnings,
            (
                "site.toml:13: listeners.Inboundmail.policies.default.smtp_auth: "
                "no [system] smtp_auth_users file, so AUTH is never offered "
                "(unless a program embedding esa_tls supplies a credentials checker)",
                "site.toml:16: listeners.Inboundmail.policies.STAFF.smtp_auth: "
                "no [system] smtp_auth_users file, so AUTH is never offered "
                "(unless a program embedding esa_tls supplies a credentials checker)"
                " and this policy refuses every MAIL FROM",
            ),
        )
        users = self.mktemp()
        with open(users, "w") as f:
            f.write("")
        quiet = parse_config_with_warnings(
            HEAD.replace("[system]\n", f'[system]\nsmtp_auth_users = "{users}"\n')
            + LISTENER
            + '[listeners.Inboundmail.policies.default]\nsmtp_auth = "require"\n',
            "site.toml",
        )
        self.assertEqual(quiet.warnings, ())

    def test_predefined_groups(self) -> None:
        """
        A listener without a HAT gets the ESA's groups for its type.
        """
        loaded = config(
            HEAD
            + LISTENER
            + '[listeners.Relay]\ntype = "private"\ninterface = "PublicNet"\nport = 587\n'
        )
        public = loaded.listeners["Inboundmail"]
        private = loaded.listeners["Relay"]
        self.assertEqual(
            [(g.name, g.policy) for g in public.hat],
            [
                ("WHITELIST", "TRUSTED"),
                ("BLOCKED_LIST", "BLOCKED"),
                ("SUSPECTLIST", "THROTTLED"),
                ("UNKNOWNLIST", "ACCEPTED"),
                ("ALL", "ACCEPTED"),
            ],
        )
        self.assertEqual(
            [(g.name, g.policy) for g in private.hat],
            [("RELAYLIST", "RELAYED"), ("ALL", "BLOCKED")],
        )
        self.assertEqual(private.type, ListenerType.PRIVATE)
        self.assertEqual(private.policies["RELAYED"].rule, AccessRule.RELAY)
        self.assertNotIn("TRUSTED", private.policies)

    def test_hat(self) -> None:
        """
        A file's HAT is kept in order, entries as written.
        """
        loaded = config(
            HEAD
            + LISTENER
            + "[[listeners.Inboundmail.hat]]\n"
            + 'group = "WHITELIST"\npolicy = "TRUSTED"\n'
            + 'senders = ["10.1.1.1-50", ".partner.example", "2001:db8::/32"]\n'
            + 'comment = "friends"\n'
            + "[[listeners.Inboundmail.hat]]\n"
            + 'group = "ALL"\npolicy = "BLOCKED"\nsenders = ["ALL"]\n'
        )
        self.assertEqual(
            loaded.listeners["Inboundmail"].hat,
            (
                SenderGroup(
                    "WHITELIST",
                    "TRUSTED",
                    ("10.1.1.1-50", ".partner.example", "2001:db8::/32"),
                    "friends",
                ),
                SenderGroup("ALL", "BLOCKED", ("ALL",)),
            ),
        )

    def test_destinations(self) -> None:
        """
        Destination rows are keyed by lower-cased domain; a C{default} row is
        always there, with opportunistic TLS (preferred) unless the file says
        otherwise.
        """
        loaded = config(
            HEAD
            + LISTENER
            + '[destinations."Partner.Example"]\ntls = "required-verify"\nmax_host_concurrency = 5\n'
        )
        self.assertEqual(sorted(loaded.destinations), ["default", "partner.example"])
        self.assertEqual(loaded.destinations["default"].tls, DestinationTLS.PREFERRED)
        row = loaded.destinations["partner.example"]
        self.assertEqual((row.tls, row.max_host_concurrency), (DestinationTLS.REQUIRED_VERIFY, 5))

    def test_public_hat_without_all_warning(self) -> None:
        """
        On the ESA the ALL sender group is always there (on a public
        listener with $ACCEPTED); here a file HAT without it rejects every
        host no group matches.  An administrator who leaves it out (or
        imports a table without it) is told, instead of finding every
        other sender turned away after the commit.
        """
        hat = (
            "[[listeners.Inboundmail.hat]]\n"
            'group = "WHITELIST"\npolicy = "TRUSTED"\nsenders = ["10.1.1.1"]\n'
        )
        result = parse_config_with_warnings(HEAD + LISTENER + hat, "site.toml")
        self.assertEqual(
            result.warnings,
            (
                "site.toml:12: listeners.Inboundmail.hat: no sender group lists ALL: a host no "
                "group matches is rejected (on the ESA the ALL group is always there, with "
                "$ACCEPTED on a public listener)",
            ),
        )
        with_all = hat + '[[listeners.Inboundmail.hat]]\ngroup = "ALL"\npolicy = "ACCEPTED"\n'
        with_all += 'senders = ["ALL"]\n'
        self.assertEqual(
            parse_config_with_warnings(HEAD + LISTENER + with_all, "site.toml").warnings, ()
        )

    def test_reputation_senders_warning(self) -> None:
        """
        An ESA HAT's SBRS[...] and SBO:n entries load, but nothing in the
        gateway scores senders: each is warned about with its key, rather
        than its group silently never matching.
        """
        hat = (
            "[[listeners.Inboundmail.hat]]\n"
            'group = "BLOCKED_LIST"\npolicy = "BLOCKED"\n'
            'senders = ["10.9.9.9", "SBRS[-10.0:-3.0]", "SBO:12345"]\n'
            '[[listeners.Inboundmail.hat]]\ngroup = "ALL"\npolicy = "ACCEPTED"\n'
            'senders = ["ALL"]\n'
        )
        result = parse_config_with_warnings(HEAD + LISTENER + hat, "site.toml")
        self.assertEqual(
            result.warnings,
            tuple(
                f"site.toml:15: listeners.Inboundmail.hat[0].senders[{i}]: {entry} never "
                "matches here: no reputation service (SenderBase) answers it unless a program "
                "embedding esa_tls supplies an IReputationSource"
                for i, entry in ((1, "SBRS[-10.0:-3.0]"), (2, "SBO:12345"))
            ),
        )

    def test_private_hat_without_all_no_warning(self) -> None:
        """
        A private listener's HAT without ALL rejects the other hosts, as the
        ESA's private ALL group ($BLOCKED) does: nothing to warn about.
        """
        hat = (
            "[[listeners.Inboundmail.hat]]\n"
            'group = "RELAYLIST"\npolicy = "RELAYED"\nsenders = ["10.1.1.1"]\n'
        )
        text = HEAD + LISTENER.replace('"public"', '"private"').replace(
            'rat = ["example.com"]\n', ""
        )
        self.assertEqual(parse_config_with_warnings(text + hat, "site.toml").warnings, ())

    def test_empty_rat_warning(self) -> None:
        """
        A public listener with an empty RAT is allowed, with a warning.
        """
        result = parse_config_with_warnings(
            HEAD + LISTENER.replace('["example.com"]', "[]"), "site.toml"
        )
        self.assertEqual(
            result.warnings,
            (
                "site.toml:11: listeners.Inboundmail.rat: the RAT is empty: this public listener "
                "accepts mail for no domain (only RELAY senders)",
            ),
        )

    def test_private_rat_warning(self) -> None:
        """
        A RAT on a private listener is allowed, with a warning that says
        what it does here (the ESA's private listeners have none).
        """
        result = parse_config_with_warnings(
            HEAD + LISTENER.replace('"public"', '"private"'), "site.toml"
        )
        self.assertEqual(
            result.warnings,
            (
                "site.toml:11: listeners.Inboundmail.rat: private listeners have no RAT on the "
                "ESA; here it still decides which recipients senders under an ACCEPT policy may "
                "send to (RELAY policies skip it)",
            ),
        )

    def test_example_esa(self) -> None:
        """
        The commented example configuration loads, with both listeners.
        """
        here = os.path.dirname(os.path.abspath(__file__))
        result = load_config_with_warnings(os.path.join(here, os.pardir, "examples", "esa.toml"))
        self.assertEqual(list(result.config.listeners), ["InboundMail", "OutboundMail"])
        self.assertEqual(result.warnings, ())
