"""
Tools the attacks share: Hypothesis profiles, a byte-exact TLS client whose
every TCP segment the test chooses, and small conversation helpers.

Everything here is blocking client code meant to run in a thread (through
L{tests.support.in_thread}) while the reactor serves the gateway.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Any

from hypothesis import HealthCheck, settings

from tests.support import Gateway, Raw

#: CI runs few examples; C{make fuzz} sets C{HYPOTHESIS_PROFILE=long}.
settings.register_profile(
    "attacks",
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: The settings every Hypothesis test of the attack suite is decorated
#: with.  A settings object is itself a decorator; applying it per test,
#: instead of loading the profile globally, leaves the other test modules'
#: Hypothesis settings alone.
FUZZ = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "attacks"))

#: Seconds a fuzzing test that runs over sockets may take (trial's
#: per-test timeout), scaled with the profile's examples.
FUZZ_TIMEOUT = 120.0 * max(1, FUZZ.max_examples // 60)

#: RAT of the listeners the attacks run against (see L{tests.support.PUBLIC}).
RAT_DOMAIN = "example.com"


def unverified_context() -> ssl.SSLContext:
    """
    A client context that does not check the server certificate: the
    attacks are about the SMTP layer, not about certificate checks.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def conversation(port: int, *commands: bytes) -> list[bytes]:
    """
    Greeting, then one reply per command, each command sent alone.
    """
    raw = Raw(port)
    try:
        replies = [raw.reply()]
        for command in commands:
            replies.append(raw.chat(command))
        return replies
    finally:
        raw.close()


def split_replies(data: bytes) -> list[bytes]:
    """
    Cut a reply stream into whole replies (multi-line ones kept together).
    """
    replies: list[bytes] = []
    current = b""
    for line in data.split(b"\r\n"):
        if not line:
            continue
        current += line + b"\r\n"
        if line[3:4] != b"-":
            replies.append(current)
            current = b""
    if current:
        replies.append(current)
    return replies


def open_transaction(port: int, *, rcpt: bytes = b"u@example.com") -> Raw:
    """
    A connection that has said EHLO, MAIL and RCPT and got C{354} to DATA.
    """
    raw = Raw(port)
    raw.reply()
    for command in (
        b"EHLO client.test\r\n",
        b"MAIL FROM:<a@client.test>\r\n",
        b"RCPT TO:<" + rcpt + b">\r\n",
    ):
        reply = raw.chat(command)
        assert reply.startswith(b"250"), reply
    reply = raw.chat(b"DATA\r\n")
    assert reply.startswith(b"354"), reply
    return raw


def stored_content(gw: Gateway, mid: int) -> bytes:
    """
    The stored message without the C{Received:} header the gateway added.
    """
    body = gw.body(mid)
    assert body.startswith(b"Received: ")
    # The header's continuation lines start with a tab; the first line that
    # does not is the client's content.
    lines = body.split(b"\r\n")
    index = 1
    while lines[index].startswith(b"\t"):
        index += 1
    return b"\r\n".join(lines[index:])


class SegmentTLS:
    """
    A TLS client over a plain socket through memory BIOs, so that the test
    decides which bytes share a TCP segment: the ClientHello can be glued to
    the STARTTLS command, or plaintext to the ClientHello.
    """

    def __init__(self, raw: Raw, context: ssl.SSLContext | None = None) -> None:
        self.sock: socket.socket = raw.sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = (context or unverified_context()).wrap_bio(
            self._incoming, self._outgoing, server_hostname="mx.test.example"
        )
        self._plain = b""

    def client_hello(self) -> bytes:
        """
        Start the handshake and return the ClientHello instead of sending it.
        """
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self._outgoing.read()

    def finish_handshake(self) -> None:
        """
        Drive the handshake to its end over the socket.

        @raise ssl.SSLError: or L{EOFError} when the server ends it.
        """
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                self._pull()
                continue
            self._flush()
            return

    def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending:
            self.sock.sendall(pending)

    def _pull(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("server closed the connection")
        self._incoming.write(data)

    def send(self, data: bytes) -> None:
        self._tls.write(data)
        self._flush()

    def _fill(self) -> bool:
        while True:
            try:
                chunk = self._tls.read(65536)
            except ssl.SSLWantReadError:
                try:
                    self._pull()
                except (EOFError, OSError):
                    return False
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return False
            if not chunk:
                return False
            self._plain += chunk
            return True

    def reply(self) -> bytes:
        """
        One whole reply from inside TLS; C{b""} at the end of the stream.
        """
        out = b""
        while True:
            end = self._plain.find(b"\n")
            if end < 0:
                if not self._fill():
                    return out + self._plain
                continue
            line, self._plain = self._plain[: end + 1], self._plain[end + 1 :]
            out += line
            if line[3:4] != b"-":
                return out

    def chat(self, data: bytes) -> bytes:
        self.send(data)
        return self.reply()

    def rest(self) -> bytes:
        """
        Everything the server says inside TLS until it closes.
        """
        while self._fill():
            pass
        out, self._plain = self._plain, b""
        return out


def hang_up(raw: Raw) -> None:
    """
    Really close a L{Raw} connection: C{Raw.close} leaves the socket open
    while its C{makefile} reader is, so the gateway never sees the client
    go.
    """
    raw.file.close()
    raw.close()


def receive_all(raw: Raw) -> bytes:
    """
    Everything until the server closes the (plain) connection, whatever
    way it closes it.
    """
    try:
        return raw.rest()
    except OSError:
        return b""


def settle(value: Any) -> Any:
    """
    Identity, for callbacks that only wait.
    """
    return value
