# -*- test-case-name: tests.test_outbound_postfix -*-
"""
A real Postfix for interoperability tests: a throwaway instance on
127.0.0.1 with its own configuration, queue, data directory, log file and a
random free port, so several can run at once (under C{trial -j}) without
touching the system's Postfix.

As a B{destination} (our outbound client delivers to it)::

    from tests.peers.postfix import start_postfix

    pf = await start_postfix(self, tls="may", certificate=ca.issue(["mx.partner.example"]))
    ... deliver to 127.0.0.1:pf.port ...
    [message] = await pf.wait_for_messages(1)      # raw bytes of each delivered file
    self.assertIn(b"using TLSv1.3", message)         # Received: header shows TLS
    self.assertIn("mail=1", pf.log())                # Postfix's own log

Every recipient in every domain is accepted and lands in one maildir
(C{pf.messages()}).  Options: C{tls} is C{smtpd_tls_security_level}
(C{"none"}, C{"may"}, C{"encrypt"}); C{certificate} an
L{esa_tls.testing.IssuedCertificate}; C{discard_starttls=True} sets
C{smtpd_discard_ehlo_keywords = starttls} (STARTTLS configured but not
offered, as a stripping attacker would leave it); C{tls_protocols} limits
the server's protocols (C{"TLSv1"} breaks the handshake after the C{220}
for a modern client); C{main_cf} adds or overrides any parameter.

As a B{client} relaying to our listener::

    pf = await start_postfix(self, relayhost=f"[127.0.0.1]:{listener_port}",
                             client_tls="encrypt", client_ca_file=ca_path)
    await pf.send("alice@client.example", ["bob@partner.example"], b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
    await pf.wait_for_log("status=sent")

With a C{relayhost} no domain is local: everything injected (with
C{sendmail -C}, or over SMTP to C{pf.port}) is relayed there by Postfix's
C{smtp} client at C{smtp_tls_security_level = client_tls}.

The test is skipped when Postfix is not installed or the test does not run
as root (Postfix must start as root).  C{addCleanup} stops the instance.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from esa_tls.testing import IssuedCertificate

POSTFIX = "/usr/sbin/postfix"
SENDMAIL = "/usr/sbin/sendmail"

#: Postfix 3.7's master.cf, without chroot, plus the postlog service that
#: C{maillog_file} needs.
_MASTER_CF = """\
{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def _free_port() -> int:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
    finally:
        s.close()


def _alive(pid: int) -> bool:
    """
    Whether process C{pid} still runs.  A zombie counts as gone: the
    daemonized master's parent is init, which may reap it late.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _run(args: Sequence[str], stdin: bytes | None = None) -> tuple[int, str]:
    """
    Run a Postfix command; return its exit status and output.

    The output goes through a file, not a pipe: C{postfix start} leaves
    the master daemon holding its standard output for seconds, and a pipe
    would make us wait for that.
    """
    with tempfile.TemporaryFile() as out:
        done = subprocess.run(
            list(args), input=stdin, stdout=out, stderr=out, timeout=60, check=False
        )
        out.seek(0)
        return done.returncode, out.read().decode(errors="replace")


class PostfixInstance:
    """
    One running throwaway Postfix.

    @ivar port: the SMTP port on 127.0.0.1.
    @ivar directory: everything of this instance lives below it.
    @ivar config_directory: for C{postfix -c} and C{sendmail -C}.
    @ivar log_file: Postfix's C{maillog_file}.
    @ivar maildir: where every delivered message lands.
    """

    def __init__(self, directory: str, port: int) -> None:
        self.directory = directory
        self.port = port
        self.config_directory = os.path.join(directory, "conf")
        self.queue_directory = os.path.join(directory, "queue")
        self.data_directory = os.path.join(directory, "data")
        self.log_file = os.path.join(directory, "maillog")
        self.maildir = os.path.join(directory, "mail", "sink")
        self.running = False

    # -- files ------------------------------------------------------------

    def log(self) -> str:
        """
        Postfix's log so far.
        """
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def messages(self) -> list[bytes]:
        """
        The delivered messages, oldest first, as Postfix stored them
        (with its C{Received:} header on top).
        """
        found = []
        for sub in ("new", "cur"):
            path = os.path.join(self.maildir, sub)
            if os.path.isdir(path):
                for name in os.listdir(path):
                    full = os.path.join(path, name)
                    found.append((os.stat(full).st_mtime, name, full))
        result = []
        for _, _, full in sorted(found):
            with open(full, "rb") as f:
                result.append(f.read())
        return result

    async def wait_for_messages(self, count: int, timeout: float = 20.0) -> list[bytes]:
        """
        Wait until at least C{count} messages were delivered.

        @raise AssertionError: after C{timeout} seconds, with the log.
        """
        deadline = time.monotonic() + timeout
        while True:
            messages = self.messages()
            if len(messages) >= count:
                return messages
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(messages)} of {count} messages delivered; Postfix log:\n{self.log()}"
                )
            await deferLater(reactor, 0.1, lambda: None)

    async def wait_for_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """
        Wait until Postfix's log matches the regular expression
        C{pattern}.
        """
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log())
            if match is not None:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not in the Postfix log:\n{self.log()}")
            await deferLater(reactor, 0.1, lambda: None)

    def smtpd_sessions(self) -> list[str]:
        """
        The C{disconnect from ...} lines of smtpd: each lists the commands
        the client sent (C{ehlo=1 starttls=1 mail=1 ...}), which proves
        what was, and was not, sent.
        """
        return re.findall(r"disconnect from \S+ (.*)", self.log())

    async def settled_sessions(self, mails: int, timeout: float = 10.0) -> list[str]:
        """
        L{smtpd_sessions} once at least C{mails} of them sent a MAIL FROM
        (or after C{timeout} seconds): Postfix logs a session's end after
        its message is queued, so the last line may still be on its way
        when the message is already there.
        """
        deadline = time.monotonic() + timeout
        while True:
            sessions = self.smtpd_sessions()
            if sum("mail=1" in s for s in sessions) >= mails or time.monotonic() > deadline:
                return sessions
            await deferLater(reactor, 0.1, lambda: None)

    # -- commands ---------------------------------------------------------

    def _master_pid(self) -> int | None:
        try:
            with open(os.path.join(self.queue_directory, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def send(self, mail_from: str, recipients: Sequence[str], message: bytes) -> Deferred[None]:
        """
        Inject a message with C{sendmail -C}, as a local program would.
        """

        def inject() -> None:
            status, output = _run(
                [SENDMAIL, "-C", self.config_directory, "-f", mail_from, "--", *recipients],
                stdin=message,
            )
            if status != 0:
                raise RuntimeError(f"sendmail failed: {output}")

        return deferToThread(inject)

    def flush(self) -> Deferred[None]:
        """
        Ask Postfix to retry its deferred mail now.
        """

        def run() -> None:
            _run(["/usr/sbin/postqueue", "-c", self.config_directory, "-f"])

        return deferToThread(run)

    def stop(self) -> Deferred[None]:
        """
        Stop the instance (also done at the end of the test).
        """

        def run() -> None:
            if not self.running:
                return
            self.running = False
            pid = self._master_pid()
            _run([POSTFIX, "-c", self.config_directory, "stop"])
            for _ in range(100):
                if pid is None or not _alive(pid):
                    return
                time.sleep(0.05)

        return deferToThread(run)


def _main_cf(instance: PostfixInstance, parameters: dict[str, str]) -> str:
    return "".join(f"{key} = {value}\n" for key, value in parameters.items())


async def start_postfix(
    case: TestCase,
    *,
    tls: str = "none",
    certificate: IssuedCertificate | None = None,
    discard_starttls: bool = False,
    tls_protocols: str | None = None,
    relayhost: str | None = None,
    client_tls: str = "none",
    client_ca_file: str | None = None,
    hostname: str = "sink.test",
    main_cf: dict[str, str] | None = None,
) -> PostfixInstance:
    """
    Start a Postfix instance for the test C{case}; it is stopped when the
    test ends.  See the module docstring for the options.
    """
    if not os.path.exists(POSTFIX) or shutil.which("postconf") is None:
        raise SkipTest("postfix not installed")
    if os.geteuid() != 0:
        raise SkipTest("starting Postfix needs root")
    try:
        postfix_user = pwd.getpwnam("postfix")
    except KeyError:
        raise SkipTest("no postfix user") from None

    # Not case.mktemp(): Postfix's UNIX socket paths under the queue
    # directory must stay within 108 bytes, so the instance lives in a
    # short, private directory of its own, removed after the test.
    directory = tempfile.mkdtemp(prefix="esa-pfx-")
    os.chmod(directory, 0o755)  # Postfix's daemons run as the postfix user
    case.addCleanup(shutil.rmtree, directory, True)
    instance = PostfixInstance(directory, _free_port())
    for path in (instance.config_directory, instance.queue_directory, instance.data_directory):
        os.makedirs(path)
    os.chown(instance.data_directory, postfix_user.pw_uid, postfix_user.pw_gid)
    mail_base = os.path.dirname(instance.maildir)
    os.makedirs(mail_base)
    os.chown(mail_base, postfix_user.pw_uid, postfix_user.pw_gid)

    name = (
        "pfx" + os.path.basename(directory.rstrip("/")).replace("_", "")[-8:] + str(instance.port)
    )
    parameters: dict[str, str] = {
        "compatibility_level": "3.6",
        "config_directory": instance.config_directory,
        "queue_directory": instance.queue_directory,
        "data_directory": instance.data_directory,
        "meta_directory": "/etc/postfix",
        "syslog_name": name,
        "maillog_file": instance.log_file,
        "maillog_file_prefixes": directory,
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "myhostname": hostname,
        "mydomain": "test",
        "myorigin": hostname,
        "mydestination": "",
        "mynetworks": "127.0.0.0/8",
        "alias_maps": "",
        "alias_database": "",
        "smtpd_peername_lookup": "no",
        "smtpd_banner": "$myhostname ESMTP Postfix",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "smtpd_tls_security_level": tls,
        "smtpd_tls_received_header": "yes",
        "smtpd_tls_loglevel": "1",
        "smtp_tls_loglevel": "1",
        "smtp_tls_security_level": client_tls,
        "smtp_host_lookup": "native",
        "disable_dns_lookups": "yes",
        "queue_run_delay": "1s",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "2s",
        "biff": "no",
        "append_dot_mydomain": "no",
        "readme_directory": "no",
        "smtputf8_enable": "no",
    }
    if relayhost is None:
        parameters.update(
            {
                "virtual_mailbox_domains": "static:all",
                "virtual_mailbox_base": mail_base,
                "virtual_mailbox_maps": "static:sink/",
                "virtual_uid_maps": f"static:{postfix_user.pw_uid}",
                "virtual_gid_maps": f"static:{postfix_user.pw_gid}",
            }
        )
    else:
        parameters["relayhost"] = relayhost
    if client_ca_file is not None:
        parameters["smtp_tls_CAfile"] = client_ca_file
    if certificate is not None:
        tls_dir = os.path.join(directory, "tls")
        _cert, key_path, _chain = certificate.write(tls_dir)
        fullchain = os.path.join(tls_dir, "fullchain.pem")
        with open(fullchain, "wb") as f:
            f.write(certificate.cert_pem + certificate.chain_pem)
        parameters["smtpd_tls_cert_file"] = fullchain
        parameters["smtpd_tls_key_file"] = key_path
    if discard_starttls:
        parameters["smtpd_discard_ehlo_keywords"] = "starttls"
    if tls_protocols is not None:
        parameters["smtpd_tls_protocols"] = tls_protocols
        parameters["smtpd_tls_mandatory_protocols"] = tls_protocols
    parameters.update(main_cf or {})

    with open(os.path.join(instance.config_directory, "main.cf"), "w") as text:
        text.write(_main_cf(instance, parameters))
    with open(os.path.join(instance.config_directory, "master.cf"), "w") as text:
        text.write(_MASTER_CF.format(port=instance.port))
    # Postfix re-reads a configuration file until it is a second or two
    # old (it might still be being written): backdate ours.
    past = time.time() - 60
    for cf in ("main.cf", "master.cf"):
        os.utime(os.path.join(instance.config_directory, cf), (past, past))

    def start() -> None:
        status, output = _run([POSTFIX, "-c", instance.config_directory, "start"])
        if status != 0:
            raise RuntimeError(f"postfix start failed: {output}{instance.log()}")
        instance.running = True
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", instance.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"Postfix never listened on {instance.port}:\n{instance.log()}")

    case.addCleanup(instance.stop)
    await deferToThread(start)
    return instance
