"""
The scale-out example (C{examples/haproxy/}) with a real HAProxy: two
gateway processes behind HAProxy in TCP mode with C{send-proxy-v2}, and
clients on two other loopback addresses.  Each gateway's Host Access Table
judges the client HAProxy saw (a BLOCKED_LIST entry for the client's
address rejects it, although every connection a gateway receives comes from
HAProxy on 127.0.0.1), and the mail logs name the client.
"""

from __future__ import annotations

import ipaddress
import os
import re
import smtplib
import socket
import subprocess
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from esa_tls.config.load import load_config
from tests.support import TWISTD, free_port, in_thread, wait_until

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples", "haproxy")


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def example(name: str) -> str:
    with open(os.path.join(EXAMPLE, name)) as f:
        return f.read()


def haproxy() -> str:
    for path in ("/usr/sbin/haproxy", "/usr/bin/haproxy", "/usr/local/sbin/haproxy"):
        if os.access(path, os.X_OK):
            return path
    raise SkipTest("haproxy is not installed (Debian package haproxy)")


class ExampleFilesTests(TestCase):
    def test_filesAreValid(self) -> None:
        """
        The example gateway configuration loads and turns the PROXY
        protocol on; HAProxy accepts the example haproxy.cfg.
        """
        config = load_config(os.path.join(EXAMPLE, "gateway.toml"))
        self.assertTrue(config.listeners["InboundMail"].proxy_protocol)
        # HAProxy runs on this host: the header is believed from it alone.
        self.assertEqual(
            config.listeners["InboundMail"].proxy_trusted, (ipaddress.ip_network("127.0.0.1"),)
        )
        result = subprocess.run(
            [haproxy(), "-c", "-f", os.path.join(EXAMPLE, "haproxy.cfg")],
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_readmeSecondGateway(self) -> None:
        """
        The README's "Try it on one machine" makes the second gateway's
        configuration with C{sed} and starts it with C{--config}: run from
        the top of a copy of the project, that file is a gateway on port
        2526 whose data (its C{mail.log}) is under
        C{examples/haproxy/var/gw2/}, where the README says to look.
        """
        readme = example("README.md")
        block = readme.split("## Try it on one machine", 1)[1].split("```sh\n", 1)[1]
        block = block.split("```", 1)[0]
        make = re.search(r"^sed .*?(?<!\\)$", block, re.MULTILINE | re.DOTALL)
        assert make is not None, block
        (second,) = re.findall(r"--pidfile=gw2\.pid esa-tls --config (\S+)", block)
        top = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(top, "examples", "haproxy"))
        with open(os.path.join(top, "examples", "haproxy", "gateway.toml"), "w") as f:
            f.write(example("gateway.toml"))
        subprocess.run(["sh", "-c", make.group(0)], cwd=top, check=True, timeout=60)
        config = load_config(os.path.join(top, second))
        self.assertEqual(config.listeners["InboundMail"].port, 2526)
        logs = os.path.join(top, "examples", "haproxy", "var", "gw2")
        self.assertIn("examples/haproxy/var/gwN/logs/", readme)
        self.assertEqual(config.system.data_dir, logs)


class Gateway:
    """
    One gateway process made from the example's C{gateway.toml}, on its own
    port and data directory, with 127.0.0.2 on its BLOCKED_LIST.
    """

    def __init__(self, case: TestCase, directory: str, port: int) -> None:
        self.directory = directory
        self.port = port
        os.makedirs(directory)
        text = example("gateway.toml")
        text = text.replace("port = 2525", f"port = {port}")
        text = text.replace('data_dir = "var/gw1"', f'data_dir = "{directory}/var"')
        text = text.replace(
            'senders = ["192.0.2.0/24", "198.51.100.66"]', 'senders = ["127.0.0.2"]'
        )
        self.config = os.path.join(directory, "gateway.toml")
        with open(self.config, "w") as f:
            f.write(text)
        self.process = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "--logfile",
                os.path.join(directory, "twistd.log"),
                "esa-tls",
                "--config",
                self.config,
                "--workers",
                "1",
            ],
            cwd=directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        case.addCleanup(self.stop)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def maillog(self) -> str:
        try:
            with open(os.path.join(self.directory, "var", "logs", "mail.log")) as f:
                return f.read()
        except OSError:
            return ""


class HAProxyTests(TestCase):
    @inlineCallbacks
    def test_hatSeesOriginalClient(self) -> Any:
        """
        Through HAProxy, a client on 127.0.0.2 (on the BLOCKED_LIST) gets
        the reject banner from whichever gateway it reaches, and a client on
        127.0.0.3 gets its message accepted; both gateways serve, and their
        mail logs record 127.0.0.2 and 127.0.0.3, not HAProxy's address.
        """
        binary = haproxy()
        directory = os.path.abspath(self.mktemp())
        gateways = [Gateway(self, os.path.join(directory, f"gw{n}"), free_port()) for n in (1, 2)]
        front = free_port()
        config = example("haproxy.cfg")
        config = config.replace("bind 127.0.0.1:2500", f"bind 127.0.0.1:{front}")
        config = config.replace("127.0.0.1:2525", f"127.0.0.1:{gateways[0].port}")
        config = config.replace("127.0.0.1:2526", f"127.0.0.1:{gateways[1].port}")
        # Strict alternation, so that one test run reaches both gateways.
        config = config.replace("balance leastconn", "balance roundrobin")
        path = os.path.join(directory, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(config)
        for gateway in gateways:
            self.assertTrue((yield in_thread(wait_until, lambda g=gateway: listening(g.port), 60)))
        proxy = subprocess.Popen(
            [binary, "-f", path, "-db"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

        def stop_proxy() -> None:
            proxy.terminate()
            proxy.wait(30)

        self.addCleanup(stop_proxy)
        if not (yield in_thread(wait_until, lambda: listening(front), 30)):
            stop_proxy()
            assert proxy.stdout is not None
            self.fail(f"HAProxy did not start: {proxy.stdout.read().decode(errors='replace')}")

        def banner(source: str) -> bytes:
            with socket.create_connection(
                ("127.0.0.1", front), timeout=10, source_address=(source, 0)
            ) as sock:
                return sock.makefile("rb").readline()

        def send(source: str, n: int) -> bytes:
            with smtplib.SMTP(
                "127.0.0.1",
                front,
                local_hostname="client.test",
                timeout=10,
                source_address=(source, 0),
            ) as s:
                s.ehlo()
                s.mail("a@client.test")
                s.rcpt("u@example.com")
                _, reply = s.data(b"Subject: %d\r\n\r\nthrough HAProxy\r\n" % n)
                return reply

        def clients() -> tuple[list[bytes], list[bytes]]:
            rejected = [banner("127.0.0.2") for _ in range(4)]
            accepted = [send("127.0.0.3", n) for n in range(4)]
            return rejected, accepted

        rejected, accepted = yield in_thread(clients)
        self.assertEqual([r[:4] for r in rejected], [b"554 "] * 4, rejected)
        self.assertEqual([r[:11] for r in accepted], [b"2.0.0 Ok: M"] * 4, accepted)

        def logged() -> bool:
            text = "".join(g.maillog() for g in gateways)
            return len(re.findall(r"ICID \d+ close", text)) >= 8

        yield in_thread(wait_until, logged, 10)
        for gateway in gateways:
            log = gateway.maillog()
            self.assertIn("address 127.0.0.2 reverse dns host", log)
            self.assertIn("address 127.0.0.3 reverse dns host", log)
            self.assertRegex(log, r"ICID \d+ REJECT SG BLOCKED_LIST match 127\.0\.0\.2")
