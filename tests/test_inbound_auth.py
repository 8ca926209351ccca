"""
SMTP AUTH (RFC 4954) per mail flow policy: PLAIN and LOGIN, never before
TLS when the policy says so, required when the policy says so, and relaying
for authenticated users only.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import os
import shutil
import smtplib
import subprocess
import sys
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from esa_tls.inbound.auth import (
    PasswordFile,
    SASLError,
    hash_password,
    parse_plain,
    verify_password,
)
from tests.peers.postfix import start_postfix
from tests.support import Gateway, in_thread
from tests.test_inbound_tls import TLSGatewayMixin, session

PLAIN_GOOD = base64.b64encode(b"\x00alice\x00s3cret").decode()
PLAIN_BAD = base64.b64encode(b"\x00alice\x00wrong").decode()


class AuthGatewayMixin(TLSGatewayMixin):
    def auth_gateway(
        self: Any,
        auth: str,
        requires_tls: bool = True,
        tls: str = "preferred",
        protocol: str = "SMTP",
    ) -> Gateway:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        users = os.path.join(directory, "users")
        with open(users, "w") as f:
            f.write("# test users\n")
            f.write(f"alice:{hash_password('s3cret')}\n")
        extra = (
            f'smtp_auth = "{auth}"\nsmtp_auth_requires_tls = {"true" if requires_tls else "false"}'
        )
        gateway: Gateway = self.gateway(tls, extra, protocol=protocol, users=users)
        return gateway


class AuthTests(AuthGatewayMixin, TestCase):
    @inlineCallbacks
    def test_requiresTLS(self) -> Any:
        """
        With C{smtp_auth_requires_tls}, AUTH is not advertised in the clear
        and is refused there (538); inside TLS it is offered and works, and
        the authenticated user may relay.
        """
        gw = self.auth_gateway("allow")
        replies = yield in_thread(
            session,
            gw.port,
            [b"EHLO c\r\n", b"AUTH PLAIN " + PLAIN_GOOD.encode() + b"\r\n"],
            [
                b"EHLO c\r\n",
                b"AUTH PLAIN " + PLAIN_GOOD.encode() + b"\r\n",
                b"MAIL FROM:<alice@b.test>\r\n",
                b"RCPT TO:<friend@elsewhere.test>\r\n",
                b"DATA\r\n",
                b"Subject: relayed\r\n\r\nx\r\n.\r\n",
            ],
            self.client_context(),
        )
        self.assertNotIn(b"AUTH", replies[1])
        self.assertEqual(
            replies[2], b"538 5.7.11 Encryption required for requested authentication mechanism\r\n"
        )
        self.assertRegex(replies[4], rb"250[ -]AUTH PLAIN LOGIN\r\n")
        self.assertEqual(replies[5], b"235 2.7.0 Authentication successful\r\n")
        self.assertEqual(replies[7], b"250 2.1.5 Ok\r\n")
        (queued,) = gw.queued()
        self.assertIn(b"with ESMTPSA", gw.body(queued.mid))
        self.assertIn(
            "SMTP Auth: (ICID 1) succeeded for user: alice using AUTH mechanism: PLAIN", gw.lines
        )

    @inlineCallbacks
    def test_badPasswordAndNoRelay(self) -> Any:
        """
        A wrong password gets 535 5.7.8, and an unauthenticated session
        still may not relay.
        """
        gw = self.auth_gateway("allow")
        replies = yield in_thread(
            session,
            gw.port,
            [b"EHLO c\r\n"],
            [
                b"EHLO c\r\n",
                b"AUTH PLAIN " + PLAIN_BAD.encode() + b"\r\n",
                b"MAIL FROM:<a@b.test>\r\n",
                b"RCPT TO:<friend@elsewhere.test>\r\n",
            ],
            self.client_context(),
        )
        self.assertEqual(replies[4], b"535 5.7.8 Authentication credentials invalid\r\n")
        self.assertTrue(replies[6].startswith(b"550 5.7.1 "))
        self.assertIn(
            "SMTP Auth: (ICID 1) failed for user: alice using AUTH mechanism: PLAIN", gw.lines
        )

    @inlineCallbacks
    def test_loginMechanismAndCancel(self) -> Any:
        """
        AUTH LOGIN asks for the user and password in two 334 steps; C{*}
        cancels an exchange with 501.  AUTH without a mechanism is a syntax
        error (501), one this server does not know gets 504.
        """
        gw = self.auth_gateway("allow", requires_tls=False)
        user, password = base64.b64encode(b"alice"), base64.b64encode(b"s3cret")
        replies = yield in_thread(
            session,
            gw.port,
            [
                b"EHLO c\r\n",
                b"AUTH\r\n",
                b"AUTH CRAM-MD5\r\n",
                b"AUTH PLAIN\r\n",
                b"*\r\n",
                b"AUTH LOGIN\r\n",
                user + b"\r\n",
                password + b"\r\n",
                b"AUTH PLAIN\r\n",
            ],
            [],
            None,
        )
        self.assertEqual(replies[2], b"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n")
        self.assertEqual(replies[3], b"504 5.5.4 Unrecognized authentication type\r\n")
        self.assertEqual(replies[4], b"334 \r\n")
        self.assertEqual(replies[5], b"501 5.0.0 Authentication cancelled\r\n")
        self.assertEqual(replies[6], b"334 VXNlcm5hbWU6\r\n")
        self.assertEqual(replies[7], b"334 UGFzc3dvcmQ6\r\n")
        self.assertEqual(replies[8], b"235 2.7.0 Authentication successful\r\n")
        self.assertEqual(replies[9], b"503 5.5.1 Already authenticated\r\n")

    @inlineCallbacks
    def test_passwordFileErrors(self) -> Any:
        """
        The password file is read at each login: when it has since become
        unreadable or malformed, a login gets 454 4.7.0 and the log says
        which file and line to fix (no traceback); a malformed line no
        longer leaves its user to be told 535 in silence.
        """
        gw = self.auth_gateway("allow", requires_tls=False, tls="off")
        users = gw.config.system.smtp_auth_users
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        with open(users, "a") as f:
            f.write("bob $scrypt$16384$8$1$c2FsdA==$a2V5\n")
        login = [b"EHLO c\r\n", b"AUTH PLAIN " + PLAIN_GOOD.encode() + b"\r\n"]
        replies = yield in_thread(session, gw.port, login, [], None)
        self.assertEqual(replies[2], b"454 4.7.0 Temporary authentication failure\r\n")
        os.remove(users)
        replies = yield in_thread(session, gw.port, login, [], None)
        self.assertEqual(replies[2], b"454 4.7.0 Temporary authentication failure\r\n")
        errors = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
        self.assertEqual(
            errors,
            [
                f"ICID 1: SMTP AUTH password file: {users}, line 3: expected user:hash",
                f"ICID 2: SMTP AUTH password file: {users}: cannot read: No such file or directory",
            ],
        )
        self.assertFalse([e for e in events if e.get("log_failure")])

    @inlineCallbacks
    def test_required(self) -> Any:
        """
        C{smtp_auth = "require"}: MAIL before AUTH gets 530 5.7.0.
        """
        gw = self.auth_gateway("require", requires_tls=False)
        replies = yield in_thread(
            session, gw.port, [b"EHLO c\r\n", b"MAIL FROM:<a@b.test>\r\n"], [], None
        )
        self.assertEqual(replies[2], b"530 5.7.0 Authentication required\r\n")

    @inlineCallbacks
    def test_disallowed(self) -> Any:
        """
        With the ESA default C{smtp_auth = "disallow"} AUTH is neither
        offered nor accepted, even with a password file.
        """
        gw = self.auth_gateway("disallow", requires_tls=False)
        replies = yield in_thread(
            session,
            gw.port,
            [b"EHLO c\r\n", b"AUTH PLAIN " + PLAIN_GOOD.encode() + b"\r\n"],
            [],
            None,
        )
        self.assertNotIn(b"AUTH", replies[1])
        self.assertEqual(replies[2], b"502 5.5.1 AUTH not available\r\n")

    @inlineCallbacks
    def test_smtplibLogin(self) -> Any:
        """
        Python's smtplib logs in over STARTTLS and relays.
        """
        gw = self.auth_gateway("allow")
        context = self.client_context()
        context.check_hostname = False  # smtplib names the server by its IP

        def send() -> Any:
            with smtplib.SMTP("127.0.0.1", gw.port, local_hostname="client.test", timeout=10) as s:
                s.starttls(context=context)
                s.login("alice", "s3cret")
                return s.sendmail("alice@b.test", ["x@elsewhere.test"], b"Subject: s\r\n\r\nx\r\n")

        refused = yield in_thread(send)
        self.assertEqual(refused, {})

    @inlineCallbacks
    def test_mailAuthParameter(self) -> Any:
        """
        Where AUTH is offered, MAIL takes RFC 4954's AUTH= parameter
        (C{<>} or an xtext identity, before or after AUTH) and ignores its
        value; a malformed one gets 501, and where AUTH is not offered it
        is an unknown parameter (555).  The identity never authenticates
        anyone: relaying still needs the session's own AUTH.
        """
        gw = self.auth_gateway("allow", requires_tls=False, tls="off")
        replies = yield in_thread(
            session,
            gw.port,
            [
                b"EHLO c\r\n",
                b"MAIL FROM:<a@b.test> AUTH=<>\r\n",
                b"RCPT TO:<friend@elsewhere.test>\r\n",
                b"RSET\r\n",
                b"MAIL FROM:<a@b.test> AUTH=alice@b.test\r\n",
                b"RCPT TO:<friend@elsewhere.test>\r\n",
                b"RSET\r\n",
                b"MAIL FROM:<a@b.test> AUTH=a+zz@b.test\r\n",
                b"AUTH PLAIN " + PLAIN_GOOD.encode() + b"\r\n",
                b"MAIL FROM:<alice@b.test> AUTH=alice+2Bx@b.test\r\n",
            ],
            [],
            None,
        )
        self.assertIn(b"AUTH PLAIN LOGIN", replies[1])
        self.assertEqual(replies[2], b"250 2.1.0 Ok\r\n")
        self.assertEqual(replies[3][:3], b"550", replies[3])
        self.assertEqual(replies[5], b"250 2.1.0 Ok\r\n")
        self.assertEqual(replies[6][:3], b"550", replies[6])
        self.assertEqual(replies[8], b"501 5.5.4 Bad AUTH parameter\r\n")
        self.assertEqual(replies[9], b"235 2.7.0 Authentication successful\r\n")
        self.assertEqual(replies[10], b"250 2.1.0 Ok\r\n")
        plain = self.auth_gateway("disallow", requires_tls=False, tls="off")
        replies = yield in_thread(
            session, plain.port, [b"EHLO c\r\n", b"MAIL FROM:<a@b.test> AUTH=<>\r\n"], [], None
        )
        self.assertNotIn(b"AUTH", replies[1])
        self.assertEqual(replies[2], b"555 5.5.4 Unsupported parameter AUTH\r\n")


class PeerClientTests(AuthGatewayMixin, TestCase):
    """
    Real clients log in as they do in the field: Postfix's C{smtp} client
    (Cyrus SASL, C{smtp_sasl_auth_enable}) with each mechanism, and swaks.
    """

    def postfix_login(self, mechanism: str) -> Deferred[None]:
        plugin = f"lib{mechanism.lower()}.so*"
        if not glob.glob(f"/usr/lib/*/sasl2/{plugin}") + glob.glob(f"/usr/lib/sasl2/{plugin}"):
            raise SkipTest(f"no Cyrus SASL {mechanism} plugin for Postfix (libsasl2-modules)")

        async def run() -> None:
            gw = self.auth_gateway("require")
            pf = await start_postfix(
                self,
                relayhost=f"[127.0.0.1]:{gw.port}",
                client_tls="encrypt",
                client_ca_file=self.ca_file,
                main_cf={
                    "smtp_sasl_auth_enable": "yes",
                    "smtp_sasl_password_maps": "static:alice:s3cret",
                    "smtp_sasl_security_options": "noanonymous",
                    "smtp_sasl_mechanism_filter": mechanism.lower(),
                },
            )
            await pf.send(
                "alice@client.example",
                ["bob@elsewhere.test"],
                b"Subject: via postfix\r\n\r\nhello\r\n",
            )
            await pf.wait_for_log(r"status=sent")
            (queued,) = gw.queued()
            self.assertIn(b"with ESMTPSA", gw.body(queued.mid))
            self.assertIn(
                "SMTP Auth: (ICID 1) succeeded for user: alice using AUTH mechanism: " + mechanism,
                gw.lines,
            )

        return Deferred.fromCoroutine(run())

    def test_postfixPlain(self) -> Deferred[None]:
        return self.postfix_login("PLAIN")

    def test_postfixLogin(self) -> Deferred[None]:
        return self.postfix_login("LOGIN")

    @inlineCallbacks
    def test_implicitTLS(self) -> Any:
        """
        On an SMTPS listener (RFC 8314) the connection is inside TLS from
        its first byte: AUTH that requires TLS is offered at once and works
        (where aiosmtpd hides or refuses it), with smtplib's SMTP_SSL.
        """
        gw = self.auth_gateway("require", tls="required", protocol="SMTPS")
        context = self.client_context()
        context.check_hostname = False  # smtplib names the server by its IP

        def send() -> Any:
            with smtplib.SMTP_SSL(
                "127.0.0.1", gw.port, local_hostname="c.test", context=context, timeout=10
            ) as s:
                s.ehlo()
                features = s.esmtp_features.get("auth")
                s.login("alice", "s3cret")
                return features, s.sendmail("alice@b.test", ["x@elsewhere.test"], b"\r\nx\r\n")

        features, refused = yield in_thread(send)
        self.assertEqual((features, refused), (" PLAIN LOGIN", {}))
        (queued,) = gw.queued()
        self.assertIn(b"with ESMTPSA", gw.body(queued.mid))

    @inlineCallbacks
    def test_swaks(self) -> Any:
        """
        swaks logs in with PLAIN and with LOGIN over STARTTLS and relays; a
        wrong password is told 535.
        """
        swaks = shutil.which("swaks")
        if swaks is None:
            raise SkipTest("swaks not installed")
        gw = self.auth_gateway("allow")

        def run(mechanism: str, password: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                [swaks, "--server", "127.0.0.1", "--port", str(gw.port), "--tls",
                 "--tls-verify", "--tls-ca-path", self.ca_file,
                 "--auth", mechanism, "--auth-user", "alice", "--auth-password", password,
                 "--from", "alice@client.example", "--to", "bob@elsewhere.test",
                 "--helo", "client.test"],
                capture_output=True,
                timeout=60,
            )  # fmt: skip

        for mechanism in ("PLAIN", "LOGIN"):
            result = yield in_thread(run, mechanism, "s3cret")
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            self.assertIn(b"<~  235 2.7.0 Authentication successful", result.stdout)
        result = yield in_thread(run, "LOGIN", "wrong")
        self.assertIn(b"<~* 535 5.7.8 Authentication credentials invalid", result.stdout)
        self.assertEqual(len(gw.queued()), 2)


class PasswordTests(SynchronousTestCase):
    def test_hashes(self) -> None:
        """
        A password verifies against its own hash only.
        """
        stored = hash_password("pässword")
        self.assertTrue(stored.startswith("$scrypt$"))
        self.assertTrue(verify_password("pässword".encode(), stored))
        self.assertFalse(verify_password(b"password", stored))
        self.assertFalse(verify_password(b"x", "garbage"))

    def test_unknownUserCostsOneHash(self) -> None:
        """
        An unknown user's password is checked with exactly one scrypt, as a
        known user's is: a second one doubled the time of a failed login
        for a user name that does not exist, which told an attacker which
        names do.
        """
        users = self.mktemp()
        with open(users, "w") as f:
            f.write(f"alice:{hash_password('s3cret')}\n")
        checker = PasswordFile(users)
        calls: list[object] = []
        scrypt = hashlib.scrypt

        def counted(*args: Any, **kwargs: Any) -> bytes:
            calls.append(args)
            return scrypt(*args, **kwargs)

        self.patch(hashlib, "scrypt", counted)
        for user in (b"alice", b"mallory"):
            del calls[:]
            self.assertRaises(UnauthorizedLogin, checker._check, user, b"guess")
            self.assertEqual(len(calls), 1, user)
        self.assertEqual(checker._check(b"alice", b"s3cret"), b"alice")

    def test_plainAuthzid(self) -> None:
        """
        PLAIN refuses acting as someone else and malformed responses.
        """
        self.assertEqual(parse_plain(b"alice\x00alice\x00pw").username, b"alice")
        self.assertRaises(SASLError, parse_plain, b"root\x00alice\x00pw")
        self.assertRaises(SASLError, parse_plain, b"alice\x00pw")

    def test_passwdCommand(self) -> None:
        """
        C{esa-tls passwd USER} prints a line the gateway accepts.
        """
        result = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "esa-tls"), "passwd", "bob"],
            input=b"hunter2\n",
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        user, _, stored = result.stdout.decode().strip().partition(":")
        self.assertEqual(user, "bob")
        self.assertTrue(verify_password(b"hunter2", stored))

    def test_passwdRefusesCommentUser(self) -> None:
        """
        A user name the password file could not hold is refused: one
        starting with C{#} would make a comment line, whose user could
        never log in.
        """
        for user in ("#bob", "bo:b", "bo b", "bo\tb", ""):
            result = subprocess.run(
                [os.path.join(os.path.dirname(sys.executable), "esa-tls"), "passwd", user],
                input=b"hunter2\n",
                capture_output=True,
                timeout=60,
            )
            self.assertEqual((result.returncode, result.stdout), (2, b""), user)
            self.assertIn(b"a user name cannot be", result.stderr)

    def test_passwdNotUTF8(self) -> None:
        """
        A password that is not UTF-8 on standard input is refused, saying
        so (no client could send it), not a traceback.
        """
        result = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "esa-tls"), "passwd", "bob"],
            input=b"caf\xe9\n",
            capture_output=True,
            timeout=60,
        )
        self.assertEqual((result.returncode, result.stdout), (2, b""))
        self.assertEqual(result.stderr, b"esa-tls passwd: the password is not UTF-8\n")

    def _passwd_on_terminal(self, first: bytes, second: bytes) -> tuple[int, bytes, bytes]:
        """
        Run C{esa-tls passwd carol} with a pseudo-terminal as its standard
        input (no controlling terminal: getpass then reads the terminal on
        standard input, without echo), answer both prompts, and return the
        exit status, standard output and what the terminal showed.
        """
        primary, secondary = os.openpty()
        try:
            child = subprocess.Popen(
                [os.path.join(os.path.dirname(sys.executable), "esa-tls"), "passwd", "carol"],
                stdin=secondary,
                stdout=subprocess.PIPE,
                stderr=secondary,
                start_new_session=True,
            )
            os.close(secondary)
            shown = b""
            for prompt, answer in ((b"Password: ", first), (b"Password again: ", second)):
                while prompt not in shown:
                    shown += os.read(primary, 1024)
                shown = shown.split(prompt, 1)[1]
                os.write(primary, answer + b"\n")
            out, _ = child.communicate(timeout=60)
            try:
                while True:
                    chunk = os.read(primary, 1024)
                    if not chunk:
                        break
                    shown += chunk
            except OSError:  # EIO once the child has closed the terminal
                pass
            return child.returncode, out, shown
        finally:
            os.close(primary)

    def test_passwdTerminalAsksTwice(self) -> None:
        """
        On a terminal the password is asked for twice, without echo; the
        same answer twice prints the line.
        """
        code, out, shown = self._passwd_on_terminal(b"s3cret", b"s3cret")
        self.assertEqual(code, 0, shown)
        self.assertNotIn(b"s3cret", shown)
        user, _, stored = out.decode().strip().partition(":")
        self.assertEqual(user, "carol")
        self.assertTrue(verify_password(b"s3cret", stored))

    def test_passwdTerminalMismatch(self) -> None:
        """
        Two different answers print nothing and exit 1, saying why.
        """
        code, out, shown = self._passwd_on_terminal(b"s3cret", b"s3cert")
        self.assertEqual((code, out), (1, b""))
        self.assertIn(b"the passwords differ", shown)
