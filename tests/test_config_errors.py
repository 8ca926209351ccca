"""
Tests for L{esa_tls.config.errors}: fault text and finding the line of a
key in TOML text that C{tomllib} parsed without positions.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from esa_tls.config.errors import ConfigError, ConfigFault, SourceMap, render_path, suggest

TEXT = '''\
# comment
[system]
hostname = "x"  # trailing comment
[listeners.Inboundmail]
port = 25
rat = [
  "a.example",  # one
  "b.example", "c.example",
]
[[listeners.Inboundmail.hat]]
group = "W"
senders = ["1.2.3.4", { a = 1, b = [2, 3] },
   "5.6.7.8"]
notes = """
[not.a.header]
port = 1
"""
[[listeners.Inboundmail.hat]]
group = "X"
[destinations."example.com"]
tls = "no"
[alerts]
[[alerts.recipients]]
address = "pm@example.com"
'''


class SourceMapTests(SynchronousTestCase):
    """
    L{SourceMap} finds the line where each key, table and array element of
    a TOML text starts.
    """

    def setUp(self) -> None:
        self.map = SourceMap(TEXT)

    def test_tables_and_keys(self) -> None:
        """
        Table headers and the keys under them are found; a table known only
        through a sub-table header gets that header's line.
        """
        self.assertEqual(self.map.line_of(("system",)), 2)
        self.assertEqual(self.map.line_of(("system", "hostname")), 3)
        self.assertEqual(self.map.line_of(("listeners",)), 4)
        self.assertEqual(self.map.line_of(("listeners", "Inboundmail", "port")), 5)

    def test_array_elements(self) -> None:
        """
        Elements of multi-line arrays are found on their own lines.
        """
        rat = ("listeners", "Inboundmail", "rat")
        self.assertEqual([self.map.line_of((*rat, i)) for i in range(3)], [7, 8, 8])
        senders = ("listeners", "Inboundmail", "hat", 0, "senders")
        self.assertEqual([self.map.line_of((*senders, i)) for i in range(3)], [12, 12, 13])

    def test_arrays_of_tables(self) -> None:
        """
        Each C{[[...]]} header is the next index of its array.
        """
        hat = ("listeners", "Inboundmail", "hat")
        self.assertEqual(self.map.line_of((*hat, 0, "group")), 11)
        self.assertEqual(self.map.line_of((*hat, 1)), 18)
        self.assertEqual(self.map.line_of((*hat, 1, "group")), 19)
        self.assertEqual(self.map.line_of(("alerts", "recipients", 0, "address")), 24)

    def test_multiline_string(self) -> None:
        """
        Text inside a multi-line string is not mistaken for headers or keys.
        """
        self.assertIsNone(self.map.exact_line(("not",)))
        self.assertEqual(self.map.line_of(("listeners", "Inboundmail", "port")), 5)

    def test_quoted_keys(self) -> None:
        """
        Quoted keys are unquoted.
        """
        self.assertEqual(self.map.line_of(("destinations", "example.com", "tls")), 21)

    def test_fallback(self) -> None:
        """
        An unseen path gets the line of its nearest seen parent, or line 1.
        """
        self.assertEqual(self.map.line_of(("listeners", "Inboundmail", "missing")), 4)
        self.assertEqual(self.map.line_of(("nowhere",)), 1)

    def test_key_at(self) -> None:
        """
        The key assigned on a line can be looked up from the line.
        """
        self.assertEqual(self.map.key_at(5), ("listeners", "Inboundmail", "port"))
        self.assertIsNone(self.map.key_at(1))


class RenderTests(SynchronousTestCase):
    """
    Fault text.
    """

    def test_render_path(self) -> None:
        """
        Paths read like the file: dotted keys, indexes, and quoted keys
        where TOML needs quotes.
        """
        self.assertEqual(
            render_path(("listeners", "Inboundmail", "hat", 0, "senders", 2)),
            "listeners.Inboundmail.hat[0].senders[2]",
        )
        self.assertEqual(render_path(("destinations", "example.com")), 'destinations."example.com"')

    def test_error_text(self) -> None:
        """
        A L{ConfigError} has one line per fault, in line order.
        """
        error = ConfigError(
            [
                ConfigFault("site.toml", 22, "b", "second"),
                ConfigFault("site.toml", 14, "a", "first"),
                ConfigFault("site.toml", 3, "", "no path"),
            ]
        )
        self.assertEqual(
            str(error), "site.toml:3: no path\nsite.toml:14: a: first\nsite.toml:22: b: second"
        )

    def test_suggest(self) -> None:
        """
        Suggestions catch case slips and small misspellings, and stay quiet
        otherwise.
        """
        self.assertEqual(suggest("demo", ["Demo"]), "; did you mean 'Demo'?")
        self.assertEqual(suggest("prot", ["port", "type"]), "; did you mean 'port'?")
        self.assertEqual(suggest("zzzz", ["port"]), "")
