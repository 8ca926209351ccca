"""
The mail log of a running single-process gateway (C{twistd -n esa-tls
--workers 1}), written by its own buffered writer (issue 7): the lines of a
message are in C{mail.log} by the time its C{250} arrives, none of them go
to C{twistd.log}, and lines logged while the gateway stops are not lost.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support import free_port, in_thread
from tests.test_gateway import Child


def _message_then_open_session(port: int, path: str) -> tuple[bytes, str, socket.socket]:
    """
    Send one message and read C{mail.log} the moment its 250 is in; then
    open a second session and leave it open (EHLO answered).
    """
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as s:
        s.ehlo()
        s.mail("a@b.test")
        s.rcpt("u@example.com")
        code, reply = s.data(b"Subject: log\r\n\r\nbody\r\n")
        assert code == 250, (code, reply)
        with open(path, encoding="utf-8") as f:
            text = f.read()
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    reader = held.makefile("rb")
    assert reader.readline().startswith(b"220 ")
    held.sendall(b"EHLO client.test\r\n")
    while not reader.readline().startswith(b"250 "):
        pass
    return reply, text, held


class SingleProcessMailLogTests(TestCase):
    @inlineCallbacks
    def test_linesInMailLogOnly(self) -> Any:
        """
        A message's lines, through C{queued for delivery}, are in
        C{mail.log} when the client has its 250; C{twistd.log} holds none
        of them; and a session the gateway closes as it stops on SIGTERM
        gets its C{close} line, written as the gateway stops.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        child = Child(self, directory, free_port())
        yield in_thread(child.start)
        path = os.path.join(directory, "var", "logs", "mail.log")
        reply, text, held = yield in_thread(_message_then_open_session, child.port, path)
        self.addCleanup(held.close)
        mid = int(reply.split()[3])
        for expected in (
            f"Start MID {mid} ICID ",
            f"MID {mid} ICID ",
            f"MID {mid} ready ",
            f"MID {mid} queued for delivery",
        ):
            self.assertIn(expected, text)
        child.kill(signal.SIGTERM)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        # The start-up probe's connection, the message's, the held one.
        icids = re.findall(r" Info: New SMTP ICID (\d+) ", text)
        self.assertEqual(len(icids), 3, text)
        for icid in icids:
            self.assertIn(f" Info: ICID {icid} close\n", text)
        self.assertNotIn("ICID", child.log())
        self.assertNotIn("queued for delivery", child.log())
