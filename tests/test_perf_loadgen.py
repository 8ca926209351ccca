"""
The benchmark's tools work (never how fast anything is: benchmarks are run
by hand, see C{bench/README.md}): the load generator delivers what it says
it delivered, over cleartext and STARTTLS, to a real listener, and holds
idle TLS sessions; the process statistics read real numbers.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support import Gateway, in_thread

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
LOADGEN = os.path.join(BENCH, "loadgen.py")

TLS_LISTENER = """
[listeners.InboundMail]
type = "public"
interface = "Loopback"
port = 2525
rat = ["example.com"]

[listeners.InboundMail.policies.default]
tls = "preferred"
max_concurrency = 100
"""


def loadgen(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, LOADGEN, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


class LoadGeneratorTests(TestCase):
    @inlineCallbacks
    def test_sendsWhatItCounts(self) -> Any:
        """
        Ten sessions of two messages each, half of them over STARTTLS, from
        two processes: the generator reports twenty messages without
        errors, with latencies, and the spool holds twenty messages of the
        size asked for.
        """
        gateway = Gateway(self, TLS_LISTENER)
        port = str(gateway.port)
        common = ["--port", port, "--sessions", "5", "--messages", "2", "--size", "3000"]
        clear = yield in_thread(loadgen, "send", *common, "--concurrency", "3")
        tls = yield in_thread(
            loadgen, "send", *common, "--concurrency", "2", "--processes", "2", "--starttls"
        )
        for result in (clear, tls):
            self.assertEqual((result["messages"], result["sessions"], result["errors"]), (10, 5, 0))
            self.assertGreater(result["msg_per_s"], 0)
            self.assertLessEqual(result["p50_ms"], result["p99_ms"])
        queued = gateway.queued()
        self.assertEqual(len(queued), 20)
        for message in queued:
            self.assertEqual(message.envelope.rcpt_to, ("user@example.com",))
            self.assertGreater(message.body_size, 2800)
        self.assertEqual(sum(1 for line in gateway.lines if "TLS success" in line), 5)

    @inlineCallbacks
    def test_countsErrors(self) -> Any:
        """
        Refused recipients are errors, not messages.
        """
        gateway = Gateway(self, TLS_LISTENER)
        result = yield in_thread(
            loadgen,
            "send",
            "--port",
            str(gateway.port),
            "--sessions",
            "3",
            "--rcpt",
            "someone@elsewhere.example",
            "--processes",
            "1",
        )
        self.assertEqual((result["messages"], result["errors"]), (0, 3))
        self.assertIn("RCPT", result["first_error"])

    @inlineCallbacks
    def test_holdsIdleSessions(self) -> Any:
        """
        Idle mode opens the sessions (through STARTTLS), says so, and holds
        them until its input closes.
        """
        gateway = Gateway(self, TLS_LISTENER)

        def hold() -> tuple[str, int, str]:
            process = subprocess.Popen(
                [
                    sys.executable,
                    LOADGEN,
                    "idle",
                    "--port",
                    str(gateway.port),
                    "--connections",
                    "8",
                    "--starttls",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert process.stdin is not None and process.stdout is not None
            ready = process.stdout.readline()
            held = len(gateway.factory.sessions)
            process.stdin.close()
            closed = process.stdout.readline()
            process.wait(60)
            return ready, held, closed

        ready, held, closed = yield in_thread(hold)
        self.assertEqual(ready.split()[:4], ["ready", "8", "failed", "0"])
        self.assertEqual(held, 8)
        self.assertEqual(closed.strip(), "closed")


class ProcessStatisticsTests(TestCase):
    def test_ownTree(self) -> None:
        """
        The CPU time and memory of a process tree are read from /proc: this
        process has used some CPU and holds some memory, and its child
        appears in its tree.
        """
        sys.path.insert(0, BENCH)
        self.addCleanup(sys.path.remove, BENCH)
        procstat: Any = importlib.import_module("procstat")

        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        self.assertIn(child.pid, procstat.tree(os.getpid()))
        self.assertGreater(procstat.cpu_seconds([os.getpid()]), 0)
        self.assertGreater(procstat.memory_mib([os.getpid()]), 1)
        self.assertGreater(procstat.memory_mib([os.getpid()], pss=True), 1)
