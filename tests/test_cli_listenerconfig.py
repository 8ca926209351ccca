"""
C{esa-tls listenerconfig}: the dialogs answered from standard input (as a
here-document would), checking what the administrator sees and the file
after C{commit}.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from esa_tls.cli.main import main
from esa_tls.config.load import load_config
from esa_tls.config.model import AccessRule, ListenerType, TLSMode

CONFIG = """\
# Test gateway.
[system]
hostname = "mx.test.example"
data_dir = "var"

[interfaces.Loopback]
address = "127.0.0.1/8"   # loopback only

[interfaces.Other]
address = "127.0.0.2/8"

[listeners.Inboundmail]
type = "public"
interface = "Loopback"
port = 2525
rat = ["example.com"]   # our domain
"""


def answers(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


class DialogTestCase(SynchronousTestCase):
    """
    A configuration file in a fresh directory, and C{esa-tls} run
    in-process with standard input from a string.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.config = os.path.join(self.directory, "esa.toml")
        with open(self.config, "w") as f:
            f.write(CONFIG)
        cwd = os.getcwd()
        os.chdir(self.directory)
        self.addCleanup(os.chdir, cwd)

    def run_cli(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdin", io.StringIO(stdin))
        with redirect_stdout(out), redirect_stderr(err):
            status = main(["--config", self.config, *args])
        return status, out.getvalue(), err.getvalue()

    def commit(self) -> str:
        status, out, err = self.run_cli("commit", "--no-reload", "test")
        self.assertEqual(status, 0, out + err)
        self.assertIn("Changes committed: ", out)
        return out

    def text(self) -> str:
        with open(self.config) as f:
            return f.read()


class ListenerTests(DialogTestCase):
    """
    NEW, EDIT (NAME, INTERFACE, LIMITS, CERTIFICATE), DELETE and SETUP.
    """

    def test_new_private_listener(self) -> None:
        """
        NEW asks the ESA's questions; the new listener's summary is printed;
        after commit the file has it, with the relay hosts in the
        predefined RELAYLIST group.
        """
        status, out, _ = self.run_cli(
            "listenerconfig",
            stdin=answers(
                "new", "1", "Outbound", "1", "1", "2526", "10.0.0.0/8, .inside.example", ""
            ),
        )
        self.assertEqual(status, 0, out)
        self.assertIn(
            "Please select the type of listener you want to create.\n1. Private\n2. Public\n[2]>1\n",
            out,
        )
        self.assertIn(
            'Please create a name for this listener (Ex: "InboundMail"):\n[]>Outbound\n', out
        )
        self.assertIn(
            "Name: Outbound\nType: Private\nInterface: Loopback (127.0.0.1/8) TCP Port 2526\n", out
        )
        self.assertIn("Sender Groups: RELAYLIST (RELAYED), ALL (BLOCKED)", out)
        self.assertIn("2. Outbound (on Loopback, 127.0.0.1/8) SMTP TCP Port 2526 Private", out)
        self.assertEqual(self.text(), CONFIG, "pending until commit")
        out = self.commit()
        self.assertIn("Listener Outbound is new or has moved: restart the gateway", out)
        self.assertNotIn("Listener Inboundmail", out)
        listener = load_config(self.config).listeners["Outbound"]
        self.assertEqual(listener.type, ListenerType.PRIVATE)
        self.assertEqual(listener.port, 2526)
        self.assertEqual(listener.hat[0].senders, ("10.0.0.0/8", ".inside.example"))
        self.assertTrue(self.text().startswith(CONFIG))

    def test_port_in_use_repeats(self) -> None:
        """
        A port another listener already uses on the same address is refused
        with the loader's reason, and the question is asked again.
        """
        status, out, _ = self.run_cli(
            "listenerconfig",
            stdin=answers("new", "2", "Second", "1", "1", "2525", "0", "2527", "example.net", ""),
        )
        self.assertEqual(status, 0, out)
        self.assertIn(
            "[25]>2525\n127.0.0.1 port 2525 is already used by listener 'Inboundmail'\n[25]>0\n",
            out,
        )
        self.assertIn("[25]>0\n0 is out of range 1-65535\n[25]>2527\n", out)
        self.commit()
        self.assertEqual(load_config(self.config).listeners["Second"].rat, ("example.net",))

    def test_port_digits_int_cannot_read(self) -> None:
        """
        A port of digits C{int} cannot read (C{"\u00b2"}, which
        C{str.isdigit} accepts, or thousands of digits) is refused with the
        reason and the question is asked again, instead of a traceback that
        drops the dialog's changes.
        """
        huge = "9" * 5000
        status, out, err = self.run_cli(
            "listenerconfig",
            stdin=answers(
                "new", "2", "Second", "1", "1", "\u00b2", huge, "2527", "example.net", ""
            ),
        )
        self.assertEqual((status, err), (0, ""), out)
        self.assertIn("[25]>\u00b2\nEnter a port number from 1 to 65535.\n[25]>9999", out)
        self.assertIn("\nEnter a port number from 1 to 65535.\n[25]>2527\n", out)
        self.commit()
        self.assertEqual(load_config(self.config).listeners["Second"].port, 2527)

    def test_rename_keeps_comments(self) -> None:
        """
        NAME renames the listener in place: its table keeps its position and
        comments, and its sub-tables follow it.
        """
        self.run_cli("set", "listeners.Inboundmail.policies.default.tls", "preferred")
        status, out, _ = self.run_cli(
            "listenerconfig", stdin=answers("edit", "Inboundmail", "name", "Inbound", "", "")
        )
        self.assertEqual(status, 0, out)
        self.assertIn("Name: Inbound\n", out)
        out = self.commit()
        # Renamed: to the gateway, one listener removed (its port closes at
        # the reload) and another added (listening from the restart).
        self.assertIn(
            "Listener Inboundmail is removed: the reload stops it listening on "
            "127.0.0.1 port 2525.",
            out,
        )
        self.assertIn("Listener Inbound is new or has moved: restart the gateway", out)
        text = self.text()
        self.assertIn('[listeners.Inbound]\ntype = "public"', text)
        self.assertIn('rat = ["example.com"]   # our domain\n', text)
        self.assertIn('[listeners.Inbound.policies.default]\ntls = "preferred"\n', text)
        self.assertNotIn("Inboundmail", text)
        config = load_config(self.config)
        self.assertEqual(list(config.listeners), ["Inbound"])
        self.assertEqual(config.listeners["Inbound"].default_policy.tls, TLSMode.PREFERRED)

    def test_interface_limits_certificate(self) -> None:
        """
        INTERFACE, LIMITS and CERTIFICATE show the current values as the
        bracketed defaults and change what was answered.
        """
        status, out, _ = self.run_cli(
            "listenerconfig",
            stdin=answers(
                "edit", "1",
                "interface", "2", "", "",
                "limits", "", "128",
                "certificate", "",
                "", "",
            ),
        )  # fmt: skip
        self.assertEqual(status, 0, out)
        self.assertIn(
            "Please choose an IP interface for this Listener.\n"
            "1. Loopback (127.0.0.1/8)\n2. Other (127.0.0.2/8)\n[1]>2\n",
            out,
        )
        self.assertIn("Please enter the TCP port for this listener.\n[2525]>\n", out)
        self.assertIn("Enter the maximum number of concurrent connections.\n[1000]>\n", out)
        self.assertIn("[50]>128\n", out)
        self.assertIn("The Demo certificate is not secure", out)
        self.assertIn("Max Concurrency: 1000 (TCP Queue: 128)", out)
        self.commit()
        listener = load_config(self.config).listeners["Inboundmail"]
        self.assertEqual((listener.interface.name, listener.tcp_queue), ("Other", 128))
        self.assertNotIn("max_concurrency", self.text(), "unchanged values are not written")

    def test_limits_bounded(self) -> None:
        """
        LIMITS refuses, at the prompt, numbers the loader would refuse at
        commit, and asks again.
        """
        status, out, _ = self.run_cli(
            "listenerconfig",
            stdin=answers("edit", "1", "limits", "2000000", "20", "99999999999", "128", "", ""),
        )
        self.assertEqual(status, 0, out)
        self.assertIn("[1000]>2000000\nEnter a number from 1 to 1000000.\n[1000]>20\n", out)
        self.assertIn("[50]>99999999999\nEnter a number from 1 to 65535.\n[50]>128\n", out)
        self.commit()
        listener = load_config(self.config).listeners["Inboundmail"]
        self.assertEqual((listener.max_concurrency, listener.tcp_queue), (20, 128))

    def test_delete_and_setup(self) -> None:
        """
        DELETE removes a listener (never the last one); SETUP changes the
        global listener settings.
        """
        self.run_cli(
            "listenerconfig",
            stdin=answers("new", "2", "Second", "1", "1", "2527", "example.net", ""),
        )
        status, out, _ = self.run_cli(
            "listenerconfig",
            stdin=answers(
                "delete", "Inboundmail", "delete", "1", "setup", "60", "", "", "3", "y", ""
            ),
        )
        self.assertEqual(status, 0, out)
        self.assertIn("Listener Inboundmail deleted.", out)
        self.assertIn("The last listener cannot be deleted", out)
        out = self.commit()
        # A reload closes the port of a listener removed: said, since mail
        # sent there is refused from then on.
        self.assertIn(
            "Listener Inboundmail is removed: the reload stops it listening on "
            "127.0.0.1 port 2525.",
            out,
        )
        self.assertIn("Listener Second is new or has moved: restart the gateway", out)
        self.assertNotIn("does not open or close ports", out)
        config = load_config(self.config)
        self.assertEqual(list(config.listeners), ["Second"])
        self.assertEqual(config.listener_settings.unsuccessful_timeout, 60)
        self.assertEqual(config.listener_settings.bad_command_limit, 3)
        self.assertTrue(config.listener_settings.reject_at_rcpt)

    def test_end_of_input_aborts(self) -> None:
        """
        When the answers run out in the middle of a dialog nothing is kept:
        exit status 1, no pending changes, the file untouched.
        """
        status, out, _ = self.run_cli("listenerconfig", stdin=answers("new", "2", "Second"))
        self.assertEqual(status, 1)
        self.assertIn("Aborted at the end of the input", out)
        self.assertFalse(os.path.exists(self.config + ".pending"))
        self.assertEqual(self.text(), CONFIG)

    def test_here_document(self) -> None:
        """
        The installed script reads its answers from a here-document (a
        pipe): C{esa-tls --config F listenerconfig <<EOF ... EOF}.
        """
        path = os.path.join(os.path.dirname(sys.executable), "esa-tls")
        if not os.access(path, os.X_OK):
            raise SkipTest("the esa-tls console script is not installed")
        done = subprocess.run(
            f"{path} --config {self.config} listenerconfig <<'EOF'\n"
            "edit\n1\nlimits\n20\n\n\n\nEOF\n",
            shell=True,
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("Max Concurrency: 20 (TCP Queue: 50)", done.stdout)
        self.commit()
        self.assertEqual(load_config(self.config).listeners["Inboundmail"].max_concurrency, 20)


class HostAccessTests(DialogTestCase):
    """
    HOSTACCESS: sender groups and mail flow policies.
    """

    def hostaccess(self, *lines: str) -> str:
        status, out, _ = self.run_cli(
            "listenerconfig", stdin=answers("edit", "1", "hostaccess", *lines, "", "", "")
        )
        self.assertEqual(status, 0, out)
        return out

    def test_new_group_move_delete(self) -> None:
        """
        A new sender group goes before ALL; bad hosts are refused with the
        reason; MOVE reorders; DELETE removes.
        """
        out = self.hostaccess(
            "new", "1", "PARTNERS", "10.1.1.1-50, 10.1.1.300", "10.1.1.1-50, .partner.example",
            "3", "Our partners",
            "move", "PARTNERS", "1",
            "delete", "1", "BLOCKED_LIST",
        )  # fmt: skip
        self.assertIn("bad IPv4 address '10.1.1.300'", out)
        self.assertIn("Sender group PARTNERS added at position 5.", out)
        self.assertIn("Sender group BLOCKED_LIST deleted.", out)
        self.commit()
        hat = load_config(self.config).listeners["Inboundmail"].hat
        self.assertEqual(
            [(g.name, g.policy) for g in hat],
            [
                ("PARTNERS", "TRUSTED"),
                ("WHITELIST", "TRUSTED"),
                ("SUSPECTLIST", "THROTTLED"),
                ("UNKNOWNLIST", "ACCEPTED"),
                ("ALL", "ACCEPTED"),
            ],
        )
        self.assertEqual(hat[0].senders, ("10.1.1.1-50", ".partner.example"))
        self.assertEqual(hat[0].comment, "Our partners")

    def test_all_group_stays_last(self) -> None:
        """
        The ALL group is always present, last, as on the ESA: DELETE and
        MOVE refuse it, another group cannot be moved after it (where it
        would never match), and EDIT changes only its policy and comment.
        """
        out = self.hostaccess(
            "delete", "1", "ALL",
            "move", "ALL",
            "move", "WHITELIST", "6", "4",
            "edit", "1", "ALL", "rename", "policy", "BLOCKED", "",
        )  # fmt: skip
        self.assertEqual(out.count("The ALL sender group is always present, last"), 2, out)
        edit_all = out[out.rindex("Sender group ALL: ALL -> $ACCEPTED") :]
        self.assertNotIn("- RENAME", edit_all)
        self.assertNotIn("- DELETE", edit_all.split("[]>")[0])
        self.assertIn("(1-4)", out)
        self.commit()
        hat = load_config(self.config).listeners["Inboundmail"].hat
        self.assertEqual(
            [g.name for g in hat],
            ["BLOCKED_LIST", "SUSPECTLIST", "UNKNOWNLIST", "WHITELIST", "ALL"],
        )
        self.assertEqual((hat[-1].senders, hat[-1].policy), (("ALL",), "BLOCKED"))

    def test_edit_predefined_policy_keeps_esa_values(self) -> None:
        """
        Changing one parameter of a predefined policy keeps the rest of its
        ESA values (they are written out), and "default" makes a parameter
        inherit the Default Policy Parameters.
        """
        out = self.hostaccess(
            "edit", "2", "TRUSTED", "1", "y",
            "", "", "5000", "default", "", "4", "",
        )  # fmt: skip
        self.assertIn(
            'Enter the maximum number of messages per connection, or "default" for the '
            "Default Policy Parameters value (10).\n[1000]>5000\n",
            out,
        )
        self.assertIn("Do you want to allow encrypted TLS connections?\n1. Default (No)\n", out)
        self.commit()
        trusted = load_config(self.config).listeners["Inboundmail"].policies["TRUSTED"]
        self.assertEqual(trusted.max_msgs_per_session, 5000)
        self.assertEqual(trusted.max_rcpts_per_msg, 100)
        self.assertEqual(trusted.max_message_size, 100 * 1024 * 1024)
        self.assertEqual(trusted.max_concurrency, 1000)
        self.assertEqual(trusted.tls, TLSMode.REQUIRED)

    def test_new_policy(self) -> None:
        """
        NEW > New Policy creates a named policy that sender groups can use.
        """
        self.hostaccess(
            "new", "2", "RELAXED", "4", "n", "new", "1", "INSIDE", "192.168.0.0/16", "RELAXED", ""
        )
        self.commit()
        listener = load_config(self.config).listeners["Inboundmail"]
        self.assertEqual(listener.policies["RELAXED"].rule, AccessRule.RELAY)
        self.assertEqual(listener.hat[-2].policy, "RELAXED")

    def test_new_policy_dollar_name_is_not_an_existing_one(self) -> None:
        """
        A new policy's name may be typed with the C{$} of the HAT notation,
        but C{$TRUSTED} names the existing TRUSTED policy: it is refused as
        taken, not walked as if new (which rewrote TRUSTED's rule), and a
        lone C{$} names nothing.
        """
        out = self.hostaccess("new", "2", "$TRUSTED", "$", "$RELAXED", "4", "n")
        self.assertIn("[]>$TRUSTED\nThe name TRUSTED is already in use.\n[]>$\n", out)
        self.assertIn("[]>$\nA name is printable ASCII without spaces.\n[]>$RELAXED\n", out)
        self.commit()
        listener = load_config(self.config).listeners["Inboundmail"]
        self.assertEqual(listener.policies["TRUSTED"].rule, AccessRule.ACCEPT)
        self.assertEqual(listener.policies["RELAXED"].rule, AccessRule.RELAY)
        self.assertNotIn("", listener.policies)

    def test_names_the_hat_text_cannot_carry_refused(self) -> None:
        """
        A sender group or policy name holding a character the HAT text
        uses around names (C{, # $ ( ) { } :}) is refused with the reason,
        at NEW and at RENAME: such a name was accepted, and then EXPORT
        wrote a file its own IMPORT refused (C{x#y: ...} read as C{x}
        and a comment), contrary to "importing an export gives the same
        table".
        """
        reason = "cannot contain any of , # $ ( ) { } : (the HAT text format uses them)"
        out = self.hostaccess(
            "new", "1", "x#y", "a:b", "PARTNERS", "10.0.0.1", "", "",
            "edit", "1", "PARTNERS", "rename", "P(1)", "P-1", "",
            "new", "2", "$$X", "A{B", "OPEN", "4", "n",
        )  # fmt: skip
        self.assertIn(f"[]>x#y\nA sender group name {reason}.\n[]>a:b\n", out)
        self.assertIn(f"[]>a:b\nA sender group name {reason}.\n[]>PARTNERS\n", out)
        self.assertIn(f"[PARTNERS]>P(1)\nA sender group name {reason}.\n[PARTNERS]>P-1\n", out)
        self.assertIn(f"[]>$$X\nA policy name {reason}.\n[]>A{{B\n", out)
        self.assertIn(f"[]>A{{B\nA policy name {reason}.\n[]>OPEN\n", out)
        exported = os.path.join(self.directory, "hat.txt")
        out = self.hostaccess("export", exported, "import", exported)
        self.assertIn("Imported 5 policies and 6 sender groups", out)
        self.commit()
        listener = load_config(self.config).listeners["Inboundmail"]
        self.assertEqual([g.name for g in listener.hat][-2:], ["P-1", "ALL"])
        self.assertEqual(listener.policies["OPEN"].rule, AccessRule.RELAY)

    def test_export_import_round_trip(self) -> None:
        """
        EXPORT writes the ESA HAT text; IMPORT of an edited copy replaces
        the groups and policies; exporting again gives the imported text
        back, and the committed file loads to the same table.
        """
        first = os.path.join(self.directory, "hat.txt")
        self.hostaccess("export", first)
        with open(first) as f:
            exported = f.read()
        self.assertIn("$BLOCKED REJECT\n", exported)
        self.assertIn("ALL $ACCEPTED (Default for all other senders)\n", exported)
        edited = exported.replace(
            "WHITELIST: $TRUSTED", "WHITELIST: 10.1.1.1-50, .partner.example $TRUSTED"
        ).replace("$BLOCKED REJECT", '$BLOCKED REJECT { reject_banner_text="5.7.1 Go away" }')
        with open(first, "w") as f:
            f.write(edited)
        second = os.path.join(self.directory, "again.txt")
        out = self.hostaccess("import", first, "export", second)
        self.assertIn("Imported 4 policies and 5 sender groups", out)
        with open(second) as f:
            self.assertEqual(f.read(), edited)
        self.commit()
        listener = load_config(self.config).listeners["Inboundmail"]
        self.assertEqual(listener.hat[0].senders, ("10.1.1.1-50", ".partner.example"))
        self.assertEqual(listener.policies["BLOCKED"].reject_banner_text, "5.7.1 Go away")

    def test_import_refused(self) -> None:
        """
        An import file with faults is refused as a whole, each fault with
        its line; nothing changes.
        """
        path = os.path.join(self.directory, "bad.txt")
        with open(path, "w") as f:
            f.write('$X ACCEPT { tls="sometimes" }\nGOOD: 10.0.0.1 $X\nBAD: 10.0.0.999 $X\n')
        out = self.hostaccess("import", path)
        self.assertIn("line 3: sender group BAD: bad IPv4 address '10.0.0.999'", out)
        path2 = os.path.join(self.directory, "bad2.txt")
        with open(path2, "w") as f:
            f.write('$X ACCEPT { tls="sometimes" }\nGOOD: 10.0.0.1 $X\n')
        out = self.hostaccess("import", path2)
        self.assertIn("was not imported:", out)
        self.assertIn('listeners.Inboundmail.policies.X.tls: "sometimes" is not one of', out)
        self.assertFalse(os.path.exists(self.config + ".pending"))

    def test_clear_and_print(self) -> None:
        """
        CLEAR keeps only the ALL group; PRINT shows the table.
        """
        out = self.hostaccess("clear", "y", "print")
        self.assertIn("There are currently 1 sender group.", out)
        self.assertIn("ALL $ACCEPTED", out)
        self.commit()
        self.assertEqual(
            [g.name for g in load_config(self.config).listeners["Inboundmail"].hat], ["ALL"]
        )


class RecipientAccessTests(DialogTestCase):
    """
    RCPTACCESS: the Recipient Access Table.
    """

    def test_rat_operations(self) -> None:
        """
        NEW refuses ALL (an open relay) with the loader's reason; EDIT,
        DELETE, EXPORT and IMPORT work on the entries.
        """
        export = os.path.join(self.directory, "rat.txt")
        status, out, _ = self.run_cli(
            "listenerconfig",
            stdin=answers(
                "edit", "1", "rcptaccess",
                "new", "ALL", "example.net, .example.org",
                "edit", "2", "example.info",
                "delete", "1",
                "export", export,
                "", "", "",
            ),
        )  # fmt: skip
        self.assertEqual(status, 0, out)
        self.assertIn("ALL is not allowed in a RAT (it would make an open relay)", out)
        with open(export) as f:
            self.assertEqual(f.read(), "example.info ACCEPT\n.example.org ACCEPT\n")
        with open(export, "a") as f:
            f.write("# comment\npostmaster@ ACCEPT\n")
        self.run_cli(
            "listenerconfig", stdin=answers("edit", "1", "rcptaccess", "import", export, "", "", "")
        )
        self.commit()
        self.assertEqual(
            load_config(self.config).listeners["Inboundmail"].rat,
            ("example.info", ".example.org", "postmaster@"),
        )
