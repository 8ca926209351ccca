"""
A throwaway Postfix for the benchmarks: its own configuration and queue in
a private directory, 127.0.0.1 only, started with C{postfix -c DIR start}
and stopped at the end.  Postfix must start as root.

Two shapes, the same as the gateway's in L{bench/run}:

  - I{inbound}: smtpd with the real, durable queue (cleanup fsyncs every
    queue file before the 250), and mail for C{example.com} handed to the
    C{discard} transport, so that the queue stays small and the cost
    measured is the cost of accepting;
  - I{relay}: the same smtpd and queue, and mail for C{example.com} relayed
    by Postfix's smtp client to C{[127.0.0.1]:SINK} with opportunistic TLS
    (C{smtp_tls_security_level = may}, the Postfix name of "TLS
    preferred").

This mirrors C{tests/peers/postfix.py} (which serves the interoperability
tests) but does not import it: the benchmark must run without the test
tree and its Twisted reactor.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

POSTFIX = "/usr/sbin/postfix"

_MASTER_CF = """\
{port} inet n - n - {smtpd_limit} smtpd
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
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def available() -> str | None:
    """
    @return: why Postfix cannot be benchmarked here, or C{None}.
    """
    if not os.path.exists(POSTFIX) or shutil.which("postconf") is None:
        return "postfix is not installed"
    if os.geteuid() != 0:
        return "starting Postfix needs root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "there is no postfix user"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(args: list[str]) -> tuple[int, str]:
    # Through a file, not a pipe: the master daemon keeps its standard
    # output open for a while after "postfix start" returns.
    with tempfile.TemporaryFile() as out:
        done = subprocess.run(args, stdout=out, stderr=out, timeout=120, check=False)
        out.seek(0)
        return done.returncode, out.read().decode(errors="replace")


class Postfix:
    """
    One Postfix instance.

    @ivar port: its smtpd port on 127.0.0.1.
    """

    def __init__(
        self,
        *,
        cert: str,
        key: str,
        relay_to: int | None = None,
        smtpd_limit: int = 100,
    ) -> None:
        """
        @param cert: PEM certificate (with its chain) for STARTTLS.
        @param key: its PEM key.
        @param relay_to: relay to this port of 127.0.0.1 instead of
            discarding.
        @param smtpd_limit: how many smtpd processes may run at once (one
            per connection; the idle-session benchmark needs a thousand).
        """
        # Short: Postfix's UNIX socket paths must fit in 108 bytes.
        self.directory = tempfile.mkdtemp(prefix="esa-bpf-")
        os.chmod(self.directory, 0o755)
        self.port = free_port()
        self.config_directory = os.path.join(self.directory, "conf")
        self.queue_directory = os.path.join(self.directory, "queue")
        data = os.path.join(self.directory, "data")
        for path in (self.config_directory, self.queue_directory, data):
            os.makedirs(path)
        user = pwd.getpwnam("postfix")
        os.chown(data, user.pw_uid, user.pw_gid)
        self.log_file = os.path.join(self.directory, "maillog")
        parameters = {
            "compatibility_level": "3.6",
            "config_directory": self.config_directory,
            "queue_directory": self.queue_directory,
            "data_directory": data,
            "meta_directory": "/etc/postfix",
            "syslog_name": "bench" + str(self.port),
            "maillog_file": self.log_file,
            "maillog_file_prefixes": self.directory,
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "postfix.bench.test",
            "mydomain": "bench.test",
            "mydestination": "",
            "relay_domains": "example.com",
            "mynetworks": "127.0.0.0/8",
            "alias_maps": "",
            "alias_database": "",
            "smtpd_peername_lookup": "no",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": cert,
            "smtpd_tls_key_file": key,
            "smtp_tls_security_level": "may",
            "smtp_host_lookup": "native",
            "disable_dns_lookups": "yes",
            "default_process_limit": str(max(100, smtpd_limit)),
            "biff": "no",
            "append_dot_mydomain": "no",
            "readme_directory": "no",
            "smtputf8_enable": "no",
        }
        if relay_to is None:
            parameters["relay_transport"] = "discard:"
        else:
            parameters["relay_transport"] = f"smtp:[127.0.0.1]:{relay_to}"
        with open(os.path.join(self.config_directory, "main.cf"), "w") as f:
            f.writelines(f"{k} = {v}\n" for k, v in parameters.items())
        with open(os.path.join(self.config_directory, "master.cf"), "w") as f:
            f.write(_MASTER_CF.format(port=self.port, smtpd_limit=smtpd_limit))
        # Postfix waits for a configuration file to be a little old.
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(os.path.join(self.config_directory, name), (past, past))

    def start(self) -> None:
        status, output = _run([POSTFIX, "-c", self.config_directory, "start"])
        if status != 0:
            raise RuntimeError(f"postfix start failed: {output}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"Postfix never listened on port {self.port}")

    @property
    def pid(self) -> int:
        """
        The master daemon's process ID: the root of the tree measured.
        """
        with open(os.path.join(self.queue_directory, "pid", "master.pid")) as f:
            return int(f.read().strip())

    def queue_empty(self) -> bool:
        for sub in ("incoming", "active", "deferred", "maildrop"):
            path = os.path.join(self.queue_directory, sub)
            for _, _, files in os.walk(path):
                if files:
                    return False
        return True

    def stop(self) -> None:
        try:
            pid = self.pid
        except (OSError, ValueError):
            pid = None
        _run([POSTFIX, "-c", self.config_directory, "stop"])
        for _ in range(200):
            if pid is None or not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.05)
        shutil.rmtree(self.directory, ignore_errors=True)
