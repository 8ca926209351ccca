"""
The C{[alerts]} hooks and merge interval and the C{[admin]} page keys.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from esa_tls.config.errors import ConfigError
from esa_tls.config.load import parse_config, parse_config_with_warnings
from esa_tls.config.model import AlertHookConfig
from tests.test_config_load import HEAD, LISTENER

ALERTS = """
[alerts]
tls_failure_alert = true
merge_interval = 600

[[alerts.recipients]]
address = "admin@example.com"
severities = ["warning", "critical"]
types = ["system"]

[[alerts.hooks]]
type = "log"

[[alerts.hooks]]
type = "webhook"
url = "https://hooks.example.com/esa"
timeout = 5
headers = { Authorization = "Bearer x" }
severities = ["critical"]

[admin]
listen = "tcp:8025:interface=127.0.0.1"
"""


class AlertConfigTests(SynchronousTestCase):
    def test_loaded(self) -> None:
        """
        Hooks, merge interval and the admin endpoint load as values.
        """
        config = parse_config(HEAD + LISTENER + ALERTS, "site.toml")
        self.assertEqual(config.alerts.merge_interval, 600.0)
        self.assertEqual(
            config.alerts.hooks,
            (
                AlertHookConfig("log"),
                AlertHookConfig(
                    "webhook",
                    url="https://hooks.example.com/esa",
                    timeout=5.0,
                    headers={"Authorization": "Bearer x"},
                    severities=("critical",),
                ),
            ),
        )
        self.assertEqual(config.admin.listen, "tcp:8025:interface=127.0.0.1")

    def test_defaults(self) -> None:
        """
        Without the keys: 15 minutes, the built-in hooks, no admin page.
        """
        config = parse_config(HEAD + LISTENER, "site.toml")
        self.assertEqual((config.alerts.merge_interval, config.alerts.hooks), (900.0, ()))
        self.assertEqual(config.admin.listen, "")

    def test_faults(self) -> None:
        """
        A hook without what its type needs, an unknown type, a bad URL and a
        bad endpoint are named with file, line and key.
        """
        text = (
            HEAD
            + LISTENER
            + '[alerts]\n[[alerts.hooks]]\ntype = "command"\n'
            + '[[alerts.hooks]]\ntype = "pager"\n'
            + '[[alerts.hooks]]\ntype = "webhook"\nurl = "ftp://x"\n'
            + '[admin]\nlisten = "bogus:1"\n'
        )
        e = self.assertRaises(ConfigError, parse_config, text, "site.toml")
        message = str(e)
        self.assertIn('alerts.hooks[0]: a command hook needs "command"', message)
        self.assertIn(
            'alerts.hooks[1].type: "pager" is not one of mail | log | command | webhook | python',
            message,
        )
        self.assertIn('alerts.hooks[2].url: "ftp://x" is not an http:// or https:// URL', message)
        self.assertIn('admin.listen: "bogus:1" is not a server endpoint', message)

    def test_endpoint_parser_errors(self) -> None:
        """
        Whatever Twisted's endpoint parser raises for C{[admin] listen}
        is a fault at the key, not a traceback: an C{ssl:} endpoint whose
        certificate file is missing (C{FileNotFoundError}), a description
        ending in a backslash (C{RuntimeError} from the tokenizer).
        """
        for listen, line in (
            ('"ssl:8025:certKey=/nonexistent/esa.pem"', 'admin.listen: "ssl:8025:'),
            ('"tcp6:8025:interface=\\\\"', 'admin.listen: "tcp6:8025:interface=\\\\"'),
        ):
            text = HEAD + LISTENER + f"[admin]\nlisten = {listen}\n"
            e = self.assertRaises(ConfigError, parse_config, text, "site.toml")
            self.assertIn(line, str(e))
            self.assertIn("is not a server endpoint", str(e))

    def test_every_address_warned(self) -> None:
        """
        The admin page has no login: an endpoint that listens on every
        address (no C{interface}, or C{0.0.0.0} or C{::}) is allowed, with
        a warning naming the key, as C{proxy_trusted} warns about
        C{0.0.0.0/0}.  Loopback, a chosen address and a UNIX socket are not
        warned about.
        """
        warned = {}
        for listen in (
            "tcp:8025",
            "tcp6:8025",
            "tcp:8025:interface=0.0.0.0",
            "tcp6:8025:interface=\\\\:\\\\:",
            "tcp:8025:interface=127.0.0.1",
            "tcp:8025:interface=192.0.2.10",
            "unix:/run/esa-tls/admin.sock",
        ):
            text = HEAD + LISTENER + f'[admin]\nlisten = "{listen}"\n'
            warned[listen] = parse_config_with_warnings(text, "site.toml").warnings
        warning = (
            "site.toml:13: admin.listen: the admin page has no login and this listens on "
            "every address: give interface=127.0.0.1 or a management network's address"
        )
        self.assertEqual(
            warned,
            {
                "tcp:8025": (warning,),
                "tcp6:8025": (warning,),
                "tcp:8025:interface=0.0.0.0": (warning,),
                "tcp6:8025:interface=\\\\:\\\\:": (warning,),
                "tcp:8025:interface=127.0.0.1": (),
                "tcp:8025:interface=192.0.2.10": (),
                "unix:/run/esa-tls/admin.sock": (),
            },
        )
