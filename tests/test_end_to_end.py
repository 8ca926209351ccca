"""
The seed's whole story through a real C{twistd -n esa-tls} gateway and a
real Postfix destination: mail relayed for a domain whose Destination
Controls say TLS Required is delivered encrypted when the destination can do
TLS; when it cannot, nothing is sent in the clear, the message stays queued,
and the administrator subscribed to Warning/System alerts is told, naming
the domain.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from esa_tls.spool import DurableSpool
from esa_tls.testing import CertificateAuthority
from tests.peers.postfix import start_postfix
from tests.support import in_thread, wait_until
from tests.test_gateway import Child, free_port


def gateway_config(data_dir: str, port: int, destination_port: int, tls: str, ca_file: str) -> str:
    return f"""
[system]
hostname = "gw.test.example"
data_dir = "{data_dir}"

[interfaces.Loopback]
address = "127.0.0.1/8"

[listeners.OutgoingMail]
type = "private"
interface = "Loopback"
port = {port}

[[listeners.OutgoingMail.hat]]
group = "RELAYLIST"
policy = "RELAYED"
senders = ["127.0.0.1"]

[destinations."partner.example"]
tls = "{tls}"
ca_file = "{ca_file}"

[smtp_routes]
"partner.example" = ["127.0.0.1:{destination_port}"]

[alerts]
tls_failure_alert = true

[[alerts.recipients]]
address = "admin@gw.test.example"
severities = ["warning"]
types = ["system"]

[[alerts.hooks]]
type = "log"
"""


def relay(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="inside.test", timeout=10) as s:
        s.sendmail(
            "alice@inside.test",
            ["bob@partner.example"],
            b"Subject: for partner\r\n\r\nconfidential\r\n",
        )


class EndToEndTests(TestCase):
    async def run_gateway(self, tls: str, postfix: Any, ca_file: str) -> Child:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        child = Child(self, directory, free_port())
        with open(child.config, "w") as f:
            f.write(
                gateway_config(
                    os.path.join(directory, "var"), child.port, postfix.port, tls, ca_file
                )
            )
        await in_thread(child.start)
        await in_thread(relay, child.port)
        return child

    def test_requiredDeliveredEncrypted(self) -> Deferred[None]:
        """
        TLS Required to a destination that offers STARTTLS: delivered, and
        the destination's C{Received:} header shows TLS.
        """

        async def run() -> None:
            ca = CertificateAuthority.generate()
            ca_file = os.path.abspath(self.mktemp())
            with open(ca_file, "wb") as f:
                f.write(ca.cert_pem)
            postfix = await start_postfix(
                self, tls="may", certificate=ca.issue(["partner.example"])
            )
            await self.run_gateway("required-verify", postfix, ca_file)
            (message,) = await postfix.wait_for_messages(1)
            self.assertIn(b"confidential", message)
            self.assertRegex(message, rb"\(using TLSv1\.[23] with cipher ")

        return Deferred.fromCoroutine(run())

    def test_requiredFailureAlertsAndKeepsMessage(self) -> Deferred[None]:
        """
        TLS Required to a destination that does not offer STARTTLS: no MAIL
        FROM reaches it, the message stays queued, and a Warning/System
        alert naming the domain goes to the subscribed recipient.
        """

        async def run() -> None:
            ca_file = os.path.abspath(self.mktemp())
            with open(ca_file, "wb") as f:
                f.write(CertificateAuthority.generate().cert_pem)
            postfix = await start_postfix(self, tls="none")
            child = await self.run_gateway("required", postfix, ca_file)
            alerts_log = os.path.join(child.directory, "var", "logs", "alerts.log")

            def alerted() -> bool:
                return os.path.exists(alerts_log) and "partner.example" in open(alerts_log).read()

            self.assertTrue((await in_thread(wait_until, alerted, 30)), child.log())
            with open(alerts_log) as f:
                alert = json.loads(f.readline())
            self.assertEqual((alert["severity"], alert["type"]), ("warning", "system"))
            self.assertIn("partner.example", alert["subject"])
            self.assertEqual(alert["recipients"], ["admin@gw.test.example"])
            self.assertNotIn("MAIL FROM", postfix.log().upper().replace("MAIL FROM=", ""))
            self.assertEqual(postfix.messages(), [])
            mail_log_path = os.path.join(child.directory, "var", "logs", "mail.log")

            def deferred() -> bool:
                with open(mail_log_path) as f:
                    return "RID [0] deferred:" in f.read()

            self.assertTrue(await in_thread(wait_until, deferred, 30))
            with open(mail_log_path) as f:
                self.assertIn("STARTTLS command not supported.", f.read())
            # A clean stop: the deferral's state write is durable by then.
            child.kill(signal.SIGTERM)
            spool = DurableSpool(os.path.join(child.directory, "var", "spool"), reactor)
            self.addCleanup(spool.close)
            (queued,) = [
                q for q in spool.queued() if q.envelope.rcpt_to == ("bob@partner.example",)
            ]
            self.assertEqual([r.status for r in queued.recipients], ["deferred"])

        return Deferred.fromCoroutine(run())

    def test_requiredVerifyWrongName(self) -> Deferred[None]:
        """
        Required (Verify) to a destination whose certificate names neither
        the recipient domain nor the route host: not delivered, and the
        alert gives the RFC 8460 cause C{certificate-host-mismatch}.
        """

        async def run() -> None:
            ca = CertificateAuthority.generate()
            ca_file = os.path.abspath(self.mktemp())
            with open(ca_file, "wb") as f:
                f.write(ca.cert_pem)
            postfix = await start_postfix(
                self, tls="may", certificate=ca.issue(["mx.elsewhere.example"])
            )
            child = await self.run_gateway("required-verify", postfix, ca_file)
            alerts_log = os.path.join(child.directory, "var", "logs", "alerts.log")

            def alerted() -> bool:
                return os.path.exists(alerts_log) and "partner.example" in open(alerts_log).read()

            self.assertTrue((await in_thread(wait_until, alerted, 30)), child.log())
            with open(alerts_log) as f:
                text = f.read()
            self.assertIn("certificate-host-mismatch", text)
            self.assertEqual(postfix.messages(), [])

        return Deferred.fromCoroutine(run())
