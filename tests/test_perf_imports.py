"""
What a gateway process holds in memory: every worker of C{--workers N} is
a whole interpreter, so each module it imports without need is paid N
times (issue 7: 1000 idle TLS sessions in 100 MiB).  The admin page's
web server and Prometheus client, the webhook's HTTP client, the CLI's
TOML editor and the test libraries stay out of a gateway that does not use
them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from tests.support import BASE, PUBLIC

_PROBE = """
import json, sys
from esa_tls.config.load import parse_config_with_warnings
from esa_tls.service import GatewayService
import esa_tls.tap, esa_tls.workers
from twisted.internet import reactor
text, data_dir = sys.argv[1], sys.argv[2]
GatewayService(parse_config_with_warnings(text, "probe.toml", base_dir=data_dir), reactor)
print(json.dumps(sorted(sys.modules)))
"""

#: Modules no gateway process needs unless it uses the feature they serve.
_UNNEEDED = (
    "treq",
    "twisted.web",
    "prometheus_client",
    "tomlkit",
    "hypothesis",
    "importlib.metadata",
)


def _modules(testcase: TestCase, toml: str) -> list[str]:
    data_dir = os.path.abspath(testcase.mktemp())
    os.makedirs(data_dir)
    text = BASE.format(data_dir=data_dir, system_extra="") + toml
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, text, data_dir],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    testcase.assertEqual(done.returncode, 0, done.stderr)
    modules: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return modules


def _loaded(modules: list[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


class ImportFootprintTests(TestCase):
    def test_gatewayImportsOnlyWhatItUses(self) -> None:
        """
        A gateway made with a listener, the default alert hooks and no
        admin page has imported none of the optional features' libraries.
        """
        modules = _modules(self, PUBLIC)
        self.assertIn("esa_tls.inbound.session", modules)
        self.assertEqual([m for m in _UNNEEDED if _loaded(modules, m)], [])

    def test_adminPageAndWebhookImportTheirLibraries(self) -> None:
        """
        The admin page and a webhook hook still get what they need when
        configured (imported when the gateway is made).
        """
        toml = (
            PUBLIC
            + """
[admin]
listen = "tcp:0:interface=127.0.0.1"

[[alerts.hooks]]
type = "webhook"
url = "https://hooks.example/x"
"""
        )
        modules = _modules(self, toml)
        self.assertTrue(_loaded(modules, "twisted.web"))
        self.assertTrue(_loaded(modules, "prometheus_client"))
        self.assertTrue(_loaded(modules, "treq"))
