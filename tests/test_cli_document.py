"""
Key paths and the editable configuration document: edits change only what
they are about.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from esa_tls.cli._document import ConfigDocument, ensure_hat, ensure_policy, policy_names
from esa_tls.cli._keypath import KeyPathError, parse_key_path
from esa_tls.config.errors import render_path
from esa_tls.config.load import parse_config

TEXT = """\
# Header comment.
[system]
hostname = "mx.test.example"   # our name

[interfaces.Loopback]
address = "127.0.0.1/8"

[listeners.A]
type = "public"
interface = "Loopback"
port = 2525
rat = ["example.com"]

[listeners.A.policies.default]
tls = "off"   # for now

[[listeners.A.hat]]
group = "ALL"
policy = "ACCEPTED"
senders = ["ALL"]
# after the HAT

[listeners.B]
type = "private"
interface = "Loopback"
port = 2526
"""


class KeyPathTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """
        Dotted keys, quoted keys and array indexes parse, and render back
        the way the loader's faults write them.
        """
        cases = {
            "listeners.In.port": ("listeners", "In", "port"),
            'destinations."example.com".tls': ("destinations", "example.com", "tls"),
            "listeners.In.hat[0].senders[2]": ("listeners", "In", "hat", 0, "senders", 2),
            "a . 'b c'": ("a", "b c"),
        }
        for text, path in cases.items():
            self.assertEqual(parse_key_path(text), path)
            self.assertEqual(parse_key_path(render_path(path)), path)

    def test_errors(self) -> None:
        """
        Empty parts, stray characters and open quotes are refused.
        """
        for text in ("", "a..b", "a.", "a b", 'a."b', "a[x]", "[0]"):
            with self.assertRaises(KeyPathError):
                parse_key_path(text)


class DocumentTests(SynchronousTestCase):
    def test_untouched(self) -> None:
        """
        A document that is not edited renders to the same text.
        """
        self.assertEqual(ConfigDocument(TEXT).text(), TEXT)

    def test_set_keeps_the_rest(self) -> None:
        """
        Changing a value keeps its line's comment and every other line.
        """
        doc = ConfigDocument(TEXT)
        doc.set(("listeners", "A", "policies", "default", "tls"), "required")
        self.assertEqual(doc.text(), TEXT.replace('tls = "off"', 'tls = "required"'))

    def test_new_tables(self) -> None:
        """
        New tables get their own header after a blank line; tables that
        only hold tables get none; keys needing quotes are quoted.
        """
        doc = ConfigDocument(TEXT)
        doc.set(("listeners", "B", "policies", "default", "tls"), "preferred")
        doc.set(("destinations", "example.org", "tls"), "required")
        text = doc.text()
        self.assertTrue(text.startswith(TEXT))
        self.assertEqual(
            text[len(TEXT) :],
            '\n[listeners.B.policies.default]\ntls = "preferred"\n'
            '\n[destinations."example.org"]\ntls = "required"\n',
        )
        parse_config(text, "t.toml")

    def test_rename(self) -> None:
        """
        Renaming a listener rewrites its headers in place, sub-tables and
        arrays of tables included, keeping comments.
        """
        doc = ConfigDocument(TEXT)
        doc.rename(("listeners", "A"), "Alpha")
        self.assertEqual(doc.text(), TEXT.replace("listeners.A", "listeners.Alpha"))
        self.assertEqual(doc.get(("listeners", "Alpha", "port")), 2525)

    def test_delete(self) -> None:
        """
        Deleting keys and array elements reports whether there was one.
        """
        doc = ConfigDocument(TEXT)
        self.assertTrue(doc.delete(("listeners", "B")))
        self.assertFalse(doc.delete(("listeners", "B")))
        self.assertTrue(doc.delete(("listeners", "A", "hat", 0)))
        self.assertEqual(doc.get(("listeners", "A", "hat")), [])
        self.assertNotIn("[listeners.B]", doc.text())

    def test_predefined_written_out(self) -> None:
        """
        The predefined HAT and policies of a listener without them are
        written out before being edited, with the ESA values.
        """
        doc = ConfigDocument(TEXT)
        self.assertEqual(policy_names(doc, "B"), ["RELAYED", "BLOCKED"])
        ensure_hat(doc, "B")
        ensure_policy(doc, "B", "RELAYED")
        config = parse_config(doc.text(), "t.toml")
        listener = config.listeners["B"]
        self.assertEqual([g.name for g in listener.hat], ["RELAYLIST", "ALL"])
        self.assertEqual(
            doc.get(("listeners", "B", "policies", "RELAYED")),
            {"rule": "RELAY", "max_rcpts_per_hour": -1},
        )
