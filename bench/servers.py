"""
The servers the benchmarks run: our gateway (with a generated configuration
equivalent to Postfix's), Postfix, and Postfix's smtp-sink as the relay
destination.  Shared by C{bench/run} (esa_tls against Postfix) and
C{bench/compare} (two versions of esa_tls side by side).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping

import postfix

GATEWAY_CONFIG = """\
[system]
hostname = "gateway.bench.test"
data_dir = "{data_dir}"
spool_sync = "{spool_sync}"
worker_cpu_affinity = "{cpu_affinity}"
# A resolver nobody answers: the benchmark must never query outside.
resolvers = ["127.0.0.1:{dns_port}"]

[interfaces.Loopback]
address = "127.0.0.1/8"

[certificates.Bench]
cert = "{cert}"
key = "{key}"

[listeners.InboundMail]
type = "public"
interface = "Loopback"
port = {port}
rat = ["example.com"]
certificate = "Bench"
max_concurrency = {max_concurrency}

# Postfix's mynetworks clients are exempt from its per-client limits: the
# benchmark client gets the same here.
[listeners.InboundMail.policies.BENCH]
rule = "ACCEPT"
tls = "preferred"
max_concurrency = {max_concurrency}
max_msgs_per_session = 1000
max_rcpts_per_msg = 100
max_rcpts_per_hour = -1

[[listeners.InboundMail.hat]]
group = "BENCH"
policy = "BENCH"
senders = ["127.0.0.0/8"]
{relay}"""

RELAY_CONFIG = """
[destinations.default]
tls = "preferred"

[smtp_routes]
"example.com" = ["{route}"]
"""

#: The ESA drops mail routed to /dev/null (smtproutes): the inbound
#: benchmarks use it as Postfix uses its discard transport, so that both
#: servers finish each message's life the same way.
DISCARD_ROUTE = "/dev/null"


class Server:
    """
    A server under test: a name, a port, the process trees to measure.
    """

    name = ""
    port = 0

    def roots(self) -> list[int]:
        raise NotImplementedError

    def settle(self, timeout: float = 60.0) -> None:
        """
        Wait until work that follows the 250s (Postfix's delivery to
        discard) is done, so that its CPU time is counted.
        """

    def stop(self) -> None:
        raise NotImplementedError


class Gateway(Server):
    name = "esa_tls"

    def __init__(
        self,
        args: argparse.Namespace,
        workdir: str,
        tag: str,
        cert: str,
        key: str,
        route: str,
        workers: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """
        @param route: where mail for example.com goes: C{host:port} of a
            sink, or L{DISCARD_ROUTE}.
        @param workers: C{--workers} (default: C{args.workers}, else the
            gateway's own default).
        @param env: the gateway's environment (default: this one); its
            workers inherit it.
        """
        self.directory = os.path.join(workdir, f"gateway-{tag}")
        os.makedirs(self.directory)
        self.port = postfix.free_port()
        relay = RELAY_CONFIG.format(route=route)
        self.config = os.path.join(self.directory, "gateway.toml")
        with open(self.config, "w") as f:
            f.write(
                GATEWAY_CONFIG.format(
                    data_dir=os.path.join(self.directory, "var"),
                    dns_port=postfix.free_port(),
                    cert=cert,
                    key=key,
                    port=self.port,
                    max_concurrency=args.idle + 100,
                    relay=relay,
                    spool_sync=args.spool_sync,
                    cpu_affinity=args.cpu_affinity,
                )
            )
        command = [
            args.twistd,
            "-n",
            "--pidfile=",
            "--logfile",
            os.path.join(self.directory, "twistd.log"),
            "esa-tls",
            "--config",
            self.config,
        ]
        workers = workers if workers is not None else args.workers
        if workers is not None:
            command += ["--workers", str(workers)]
        self.env = None if env is None else dict(env)
        # The administrator's command line, next to twistd in the same
        # virtualenv and run from the same tree.
        self.cli = os.path.join(os.path.dirname(args.twistd), "esa-tls")
        # What twistd says before its log is open (a configuration error)
        # goes here.
        self.output = os.path.join(self.directory, "twistd.out")
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                command,
                cwd=self.directory,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        if not wait_listening(self.port, 60, self.process):
            self.stop()
            raise RuntimeError(
                f"the gateway did not start; see {self.output} and {self.directory}/twistd.log"
            )

    def roots(self) -> list[int]:
        return [self.process.pid]

    def settle(self, timeout: float = 60.0) -> None:
        queue = os.path.join(self.directory, "var", "spool", "queue")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not os.listdir(queue):
                    return
            except OSError:
                return
            time.sleep(0.05)

    def deferred(self) -> int:
        """
        How many messages have had an attempt and wait for a retry (each
        has its recipient states in a file of its own).
        """
        try:
            return len(os.listdir(os.path.join(self.directory, "var", "spool", "state")))
        except OSError:
            return 0

    def deliver_now(self) -> None:
        """
        Ask the running gateway to retry every deferred recipient now, as an
        administrator does: C{esa-tls delivernow}.
        """
        subprocess.run(
            [self.cli, "--config", self.config, "delivernow"],
            cwd=self.directory,
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class PostfixServer(Server):
    name = "postfix"

    def __init__(self, cert: str, key: str, smtpd_limit: int, relay_to: int | None = None) -> None:
        self.instance = postfix.Postfix(
            cert=cert, key=key, smtpd_limit=smtpd_limit, relay_to=relay_to
        )
        self.instance.start()
        self.port = self.instance.port

    def roots(self) -> list[int]:
        return [self.instance.pid]

    def settle(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.instance.queue_empty() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self.instance.stop()


class Sink:
    """
    Postfix's smtp-sink: accepts everything, stores nothing, and counts.
    It can be stopped and started again on the same port (the next hop of
    a queue-drain benchmark going down and coming back).
    """

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.port = postfix.free_port()
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """
        Listen again; L{count} starts from 0.
        """
        path = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        self.starts += 1
        self.output = os.path.join(self.workdir, f"sink-{self.port}-{self.starts}.out")
        self._file = open(self.output, "wb")
        command = [path, "-c", f"127.0.0.1:{self.port}", "256"]
        if os.geteuid() == 0:
            command[1:1] = ["-u", "nobody"]
        self.process = subprocess.Popen(command, stdout=self._file, stderr=subprocess.STDOUT)
        if not wait_listening(self.port, 10, self.process):
            raise RuntimeError("smtp-sink did not start")

    def count(self) -> int:
        """
        Messages received since the last start (the last C{mesg=N}
        smtp-sink printed).
        """
        with open(self.output, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 200))
            tail = f.read()
        at = tail.rfind(b"mesg=")
        if at < 0:
            return 0
        digits = tail[at + 5 :].split(b"\r")[0].split()[0]
        return int(digits) if digits.isdigit() else 0

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()
            self.process = None
            self._file.close()


def wait_listening(port: int, timeout: float, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def make_certificate(directory: str) -> tuple[str, str]:
    """
    One RSA-2048 certificate, served by both servers: the same handshake
    cost on both sides.
    """
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "30",
            "-subj",
            "/CN=mx.bench.test",
            "-addext",
            "subjectAltName=DNS:mx.bench.test",
        ],
        check=True,
        capture_output=True,
    )
    os.chmod(directory, 0o755)
    os.chmod(key, 0o644)  # Postfix reads it as root; the gateway as root too
    return cert, key
