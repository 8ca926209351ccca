"""
The examples work as their README says.
"""

from __future__ import annotations

import importlib.util
import mailbox
import os
import re
from types import ModuleType
from typing import Any

import attrs
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from esa_tls.config import model
from esa_tls.config.load import load_config
from tests.support import in_thread, smtp_send

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, name + ".py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CustomMTATests(TestCase):
    @inlineCallbacks
    def test_customMTA(self) -> Any:
        """
        C{examples/custom_mta.py} (under 60 lines) is a working MTA: its own
        HAT accepts loopback, its own store delivers to a Maildir, and the
        listener still refuses to relay.
        """
        with open(os.path.join(EXAMPLES, "custom_mta.py")) as f:
            self.assertLess(len(f.read().splitlines()), 60)
        module = load_example("custom_mta")
        maildir = os.path.abspath(self.mktemp())
        port = module.build(0, maildir)
        self.addCleanup(port.stopListening)
        refused = yield in_thread(
            smtp_send,
            port.getHost().port,
            "a@b.test",
            ["u@example.com", "x@elsewhere.test"],
            b"Subject: custom\r\n\r\nhello\r\n",
        )
        self.assertEqual(list(refused), ["x@elsewhere.test"])
        (message,) = mailbox.Maildir(maildir).values()
        self.assertEqual(message["Subject"], "custom")


class ExampleConfigTests(TestCase):
    def test_examplesLoad(self) -> None:
        """
        Every example configuration file is valid.
        """
        for name in sorted(os.listdir(EXAMPLES)):
            if name.endswith(".toml"):
                config = load_config(os.path.join(EXAMPLES, name))
                self.assertTrue(config.listeners, name)

    def test_esaTomlShowsEveryKey(self) -> None:
        """
        C{examples/esa.toml} is where the README sends an administrator for
        "every key, commented": each key the loader accepts, and each of its
        sections, appears in it (set, or commented out where it needs files
        of one's own).
        """
        with open(os.path.join(EXAMPLES, "esa.toml")) as f:
            text = f.read()
        shown = set(re.findall(r"^[ \t]*(?:#[ \t]*)?([a-z_]+)[ \t]*=", text, re.MULTILINE))
        sections = {
            "[system]": model.SystemSettings,
            "[listener_settings]": model.ListenerSettings,
            "[certificates.": model.CertificateConfig,
            "[listeners.": model.Listener,
            ".policies.": model.MailFlowPolicy,
            "[destinations.": model.DestinationControl,
            "[alerts]": model.AlertSettings,
            "[[alerts.recipients]]": model.AlertRecipient,
            "[[alerts.hooks]]": model.AlertHookConfig,
            "[admin]": model.AdminSettings,
        }
        # Fields that are not keys: the table's own name, what the loader
        # works out, and the sub-tables checked by their headers.
        not_keys = {"name", "domain", "unimplemented", "explicit"}
        not_keys |= {"policies", "hat", "recipients", "hooks"}
        missing = []
        for header, kind in sections.items():
            if header not in text:
                missing.append(header)
            for field in attrs.fields(kind):
                if field.name not in not_keys and field.name not in shown:
                    missing.append(f"{header} {field.name}")
        for key in ("group", "policy", "senders", "comment", "rule"):
            if key not in shown:
                missing.append(key)
        self.assertEqual(missing, [])
