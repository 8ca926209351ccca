"""
External TLS scanners as oracles: C{testssl.sh --starttls smtp} and
C{sslscan --starttls-smtp} against a Preferred listener (Debian packages
C{testssl.sh} and C{sslscan}; each test is skipped with the reason when its
scanner is not installed).  Nothing below TLS 1.2, no weak cipher, no
finding worse than OK or INFO.

testssl.sh 3.0 (Debian 12) has no STARTTLS injection check; should a newer
one report a finding about it, it must be OK.  The injection itself is
attacked directly in L{tests.attacks.test_starttls_injection}.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.attacks.support import FUZZ
from tests.support import in_thread, require
from tests.test_inbound_tls import TLSGatewayMixin

#: testssl findings that must say "not offered".
NOT_OFFERED = [
    "SSLv2",
    "SSLv3",
    "TLS1",
    "TLS1_1",
    "cipherlist_NULL",
    "cipherlist_aNULL",
    "cipherlist_EXPORT",
    "cipherlist_LOW",
    "cipherlist_3DES_IDEA",
    "cipherlist_AVERAGE",
]
#: Severities that are a problem with the server (testssl also says WARN
#: about its own client, which is not about us).
BAD = {"LOW", "MEDIUM", "HIGH", "CRITICAL"}


class ScannerTests(TLSGatewayMixin, TestCase):
    timeout = 300

    @inlineCallbacks
    def test_testssl(self) -> Any:
        """
        testssl.sh finds SSLv2, SSLv3, TLS 1.0 and 1.1 not offered, TLS 1.2
        and 1.3 offered, no NULL, anonymous, export, low, 3DES or obsolete
        CBC ciphers, forward secrecy offered, and nothing of LOW severity or
        worse.  (C{make fuzz} adds its vulnerability checks, C{-U}, and the
        forward secrecy details, C{-f}.)
        """
        # Debian installs it as testssl; upstream calls it testssl.sh.
        testssl = require("testssl") if shutil.which("testssl") else require("testssl.sh")
        gw = self.gateway("preferred")
        report = os.path.abspath(self.mktemp())
        checks = ["-p", "-s"] if FUZZ.max_examples < 1000 else ["-p", "-s", "-f", "-U"]
        result = yield in_thread(
            subprocess.run,
            [
                testssl,
                "--quiet",
                "--color",
                "0",
                "--warnings",
                "off",
                "--starttls",
                "smtp",
                *checks,
                "--jsonfile",
                report,
                f"127.0.0.1:{gw.port}",
            ],
            capture_output=True,
            timeout=280,
        )
        with open(report) as f:
            findings = {item["id"]: item for item in json.load(f)}
        output = result.stdout.decode(errors="replace")
        self.assertEqual(findings["service"]["finding"], "smtp", output)
        for name in NOT_OFFERED:
            self.assertIn("not offered", findings[name]["finding"], name)
        self.assertIn("offered", findings["TLS1_2"]["finding"])
        self.assertTrue(findings["TLS1_3"]["finding"].startswith("offered"))
        self.assertEqual(findings["cipherlist_STRONG"]["finding"], "offered")
        bad = [
            (k, v["severity"], v["finding"]) for k, v in findings.items() if v["severity"] in BAD
        ]
        self.assertEqual(bad, [], output)
        for key, item in findings.items():
            if "inject" in key.lower() and "starttls" in key.lower():
                self.assertEqual(item["severity"], "OK", item)

    @inlineCallbacks
    def test_sslscan(self) -> Any:
        """
        sslscan finds only TLS 1.2 and 1.3 enabled, every accepted cipher
        strong or acceptable, and no Heartbleed.
        """
        sslscan = require("sslscan")
        gw = self.gateway("preferred")
        result = yield in_thread(
            subprocess.run,
            [sslscan, "--no-colour", "--starttls-smtp", "--xml=-", f"127.0.0.1:{gw.port}"],
            capture_output=True,
            timeout=120,
        )
        document = ElementTree.fromstring(result.stdout)
        enabled = {
            (p.get("type"), p.get("version"))
            for p in document.iter("protocol")
            if p.get("enabled") == "1"
        }
        self.assertEqual(enabled, {("tls", "1.2"), ("tls", "1.3")})
        ciphers = list(document.iter("cipher"))
        self.assertTrue(ciphers)
        for cipher in ciphers:
            self.assertIn(cipher.get("strength"), ("strong", "acceptable"), cipher.attrib)
        for heartbleed in document.iter("heartbleed"):
            self.assertEqual(heartbleed.get("vulnerable"), "0")
