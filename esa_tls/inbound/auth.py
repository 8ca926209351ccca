# -*- test-case-name: tests.test_inbound_auth -*-
"""
SMTP AUTH (RFC 4954): the SASL PLAIN and LOGIN exchanges, and a password
file checker for the gateway.

Both mechanisms send the password itself, so a mail flow policy that allows
AUTH should also set C{smtp_auth_requires_tls}; the session then neither
advertises nor accepts AUTH before STARTTLS.

The password file holds one C{user:hash} per line, where the hash is
C{$scrypt$N$r$p$salt$key} (base64 salt and key) as written by
L{hash_password} (C{esa-tls passwd}).  scrypt is deliberately slow, so it is
run in a thread, never on the reactor; and on threads of its own, never on
the reactor's pool, which makes accepted messages durable (the spool's
fsyncs): any client may ask for checks as fast as it likes, and queued on
that pool they would hold up every other client's 250 (two seconds each
with ten clients of one address sending AUTH back to back).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

MECHANISMS = (b"PLAIN", b"LOGIN")

_N, _R, _P = 2**14, 8, 1

#: What an unknown user's password is checked against: a hash of the
#: default cost that no password matches (its key is all zeros).  A literal,
#: since making one with L{hash_password} at each check would cost a second
#: scrypt, and the time taken would tell which user names exist.
_UNKNOWN_USER_HASH = f"$scrypt${_N}${_R}${_P}${'A' * 22}==${'A' * 86}=="

#: Password checks that run at once; the others wait their turn.  Each
#: takes a core and 16 MiB for tens of milliseconds.
CHECK_THREADS = 2


class SASLError(ValueError):
    """
    A client response that is not valid for its mechanism (501).
    """


def decode_response(text: str) -> bytes:
    """
    Decode one base64 client response; C{=} is the empty response.
    """
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise SASLError("5.5.2 Invalid base64 in the response") from e


def parse_plain(response: bytes) -> UsernamePassword:
    """
    RFC 4616: C{authzid NUL authcid NUL passwd}.  An authorization identity
    other than the user itself is refused: nobody may act as someone else.
    """
    parts = response.split(b"\x00")
    if len(parts) != 3 or not parts[1]:
        raise SASLError("5.5.2 Malformed PLAIN response")
    authzid, user, password = parts
    if authzid and authzid != user:
        raise SASLError("5.7.0 Authorization identity must be the user itself")
    return UsernamePassword(user, password)


def hash_password(password: str, salt: bytes | None = None) -> str:
    """
    The password file form of C{password}.
    """
    salt = salt if salt is not None else os.urandom(16)
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P)
    b64 = base64.b64encode
    return f"$scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(key).decode()}"


def verify_password(password: bytes, stored: str) -> bool:
    """
    Whether C{password} matches a L{hash_password} hash (constant time).
    """
    try:
        _, scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key)
        got = hashlib.scrypt(
            password, salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, expected)


class PasswordFileError(Exception):
    """
    The password file cannot be read, or a line of it is malformed; the
    message names the file (and the line).  A login then gets 454, and the
    administrator a log line saying what to fix, where a malformed line
    used to be skipped in silence (its user told only 535) and an
    unreadable file gave a traceback.
    """


def _hash_problem(stored: str) -> str | None:
    """
    What is wrong with a password file hash, or C{None}: the form that
    L{hash_password} writes, C{$scrypt$N$r$p$salt$key}.
    """
    fields = stored.split("$")
    if len(fields) != 7 or fields[0] or fields[1] != "scrypt":
        return "the hash is not of the form $scrypt$N$r$p$salt$key (see esa-tls passwd)"
    n, r, p, salt, key = fields[2:]
    if not all(x.isdigit() and x.isascii() and int(x) > 0 for x in (n, r, p)):
        return "the scrypt parameters N, r and p must be positive integers"
    if int(n) < 2 or int(n) & (int(n) - 1):
        return "the scrypt parameter N must be a power of 2"
    try:
        base64.b64decode(salt, validate=True)
        if not base64.b64decode(key, validate=True):
            return "the hash's key is empty"
    except (binascii.Error, ValueError):
        return "the hash's salt or key is not base64"
    return None


def read_password_file(path: str) -> dict[bytes, str]:
    """
    The C{user:hash} lines of a password file, by user name.  Blank lines
    and lines starting with C{#} are comments.  A user named twice is an
    error rather than first-come: a new line appended for an existing user
    (as C{esa-tls passwd} suggests) would otherwise be ignored in silence.

    @raise PasswordFileError: naming the file, and the line at fault.
    """
    users: dict[bytes, str] = {}
    first: dict[bytes, int] = {}
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                where = f"{path}, line {number}"
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise PasswordFileError(f"{where}: not UTF-8") from None
                if not line or line.startswith("#"):
                    continue
                name, colon, stored = line.partition(":")
                if not colon or not name:
                    raise PasswordFileError(f"{where}: expected user:hash")
                problem = _hash_problem(stored)
                if problem is not None:
                    raise PasswordFileError(f"{where}: {problem}")
                user = name.encode("utf-8")
                if user in users:
                    raise PasswordFileError(
                        f"{where}: user {name!r} is already on line {first[user]}"
                    )
                users[user], first[user] = stored, number
    except OSError as e:
        raise PasswordFileError(f"{path}: cannot read: {e.strerror or e}") from None
    return users


@implementer(ICredentialsChecker)
class PasswordFile:
    """
    Checks user names and passwords against a C{user:hash} file, read at
    each check so that edits apply without a restart.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, path: str) -> None:
        self.path = path

    def _lookup(self, user: bytes) -> str | None:
        return read_password_file(self.path).get(user)

    def _check(self, user: bytes, password: bytes) -> bytes:
        stored = self._lookup(user)
        # Hash even for an unknown user, so that timing does not tell which
        # user names exist: exactly one scrypt, as for a known user.
        ok = verify_password(password, stored or _UNKNOWN_USER_HASH)
        if stored is None or not ok:
            raise UnauthorizedLogin("bad user name or password")
        return user

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        """
        Check on the password threads.  Cancelling the result (the session
        does when its client hangs up) skips a check still waiting for a
        thread: one that nobody waits for would otherwise still cost an
        scrypt, and a client hanging up after each AUTH could queue them
        without bound ahead of every real login.
        """
        from twisted.internet import reactor

        cancelled = threading.Event()

        def check(user: bytes, password: bytes) -> bytes:
            if cancelled.is_set():
                raise CancelledError()
            return self._check(user, password)

        result: Deferred[bytes | tuple[()]] = Deferred(lambda _: cancelled.set())

        def forward(outcome: Any) -> None:
            if not result.called:
                result.callback(outcome)

        deferToThreadPool(
            IReactorFromThreads(reactor),
            _check_threads(),
            check,
            credentials.username,
            credentials.password,
        ).addBoth(forward)
        return result


#: The pool of L{_check_threads} while there is one.
_pool: ThreadPool | None = None


def _check_threads() -> ThreadPool:
    """
    The threads password checks run on (see the module's docstring): made
    at the first check and stopped with the reactor, as the reactor's own
    pool is; and, like it, made again should the reactor run on after its
    shutdown event (as a test runner's may).
    """
    global _pool
    if _pool is not None:
        return _pool
    from twisted.internet import reactor

    pool = _pool = ThreadPool(0, CHECK_THREADS, name="esa_tls password checks")
    pool.start()

    def stop() -> None:
        global _pool
        if _pool is pool:
            _pool = None
        pool.stop()

    IReactorCore(reactor).addSystemEventTrigger("during", "shutdown", stop)
    return pool
