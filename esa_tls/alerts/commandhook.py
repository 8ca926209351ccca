# -*- test-case-name: tests.test_alerts_hooks -*-
"""
The command hook: runs a program for each alert, with the alert as JSON on
its standard input.

The program is started with C{reactor.spawnProcess} (no shell: the
command is an argument list) and never waited for on the reactor thread.
Its environment is ours plus C{ESA_TLS_ALERT_KIND},
C{ESA_TLS_ALERT_SEVERITY}, C{ESA_TLS_ALERT_TYPE} and
C{ESA_TLS_ALERT_SUBJECT}, so that a one-line shell script need not parse
JSON.  A program that runs past its timeout is killed (C{SIGKILL}); one
that exits non-zero counts as a failed hook, and the end of what it wrote
on standard error is in the log line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IProcessTransport, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from esa_tls.alerts.alert import Alert
from esa_tls.interfaces import IAlertHook

__all__ = ["CommandAlertHook", "CommandFailed"]

_KEEP_STDERR = 2048


class CommandFailed(Exception):
    """
    The alert program failed: it exited non-zero, was killed, or ran past
    its timeout.

    @ivar stderr: the last bytes it wrote on standard error.
    """

    def __init__(self, message: str, stderr: bytes = b"") -> None:
        text = stderr.decode("utf-8", "backslashreplace").strip()
        super().__init__(f"{message}: {text}" if text else message)
        self.stderr = stderr


class _AlertProcess(ProcessProtocol):
    def __init__(self, data: bytes, done: Deferred[int]) -> None:
        self.data = data
        self.done = done
        self.stderr = b""
        self.timed_out = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        pass

    def errReceived(self, data: bytes) -> None:
        self.stderr = (self.stderr + data)[-_KEEP_STDERR:]

    def processEnded(self, reason: Failure) -> None:
        if self.done.called:
            return
        if self.timed_out:
            self.done.errback(CommandFailed("timed out and was killed", self.stderr))
        elif reason.check(ProcessDone):
            self.done.callback(0)
        else:
            code = getattr(reason.value, "exitCode", None)
            signal = getattr(reason.value, "signal", None)
            how = f"exited with status {code}" if code is not None else f"killed by signal {signal}"
            self.done.errback(CommandFailed(how, self.stderr))


@implementer(IAlertHook)
class CommandAlertHook:
    """
    Runs C{command} once per alert.
    """

    name = "command"

    def __init__(
        self,
        reactor: IReactorProcess,
        command: Sequence[str],
        *,
        timeout: float = 10.0,
        env: Mapping[str, str] | None = None,
        path: str | None = None,
    ) -> None:
        """
        @param reactor: provides L{IReactorProcess} and L{IReactorTime}.
        @param command: the program and its arguments (C{command[0]} is
            looked up as given: use an absolute path).
        @param timeout: seconds before the program is killed.
        @param env: the base environment (ours by default).
        @param path: the working directory (ours by default).
        """
        if not command:
            raise ValueError("an alert command needs at least the program")
        self._reactor = reactor
        self.command = tuple(command)
        self.timeout = timeout
        self.env = dict(os.environ if env is None else env)
        self.path = path
        self.name = f"command {os.path.basename(self.command[0])}"

    def alert(self, alert: object) -> Deferred[int]:
        """
        Start the program.

        @return: a L{Deferred} firing with 0 when it exits with status 0,
            or failing with L{CommandFailed}.  Cancelling it kills the
            program.
        """
        assert isinstance(alert, Alert)
        env = dict(self.env)
        env.update(
            {
                "ESA_TLS_ALERT_KIND": alert.kind,
                "ESA_TLS_ALERT_SEVERITY": alert.severity.value,
                "ESA_TLS_ALERT_TYPE": alert.type.value,
                "ESA_TLS_ALERT_SUBJECT": alert.subject,
            }
        )
        transport: list[IProcessTransport] = []

        def kill(d: Deferred[Any]) -> None:
            protocol.timed_out = True
            for t in transport:
                try:
                    t.signalProcess("KILL")
                except ProcessExitedAlready:
                    pass

        done: Deferred[int] = Deferred(kill)
        protocol = _AlertProcess(alert.to_json_bytes() + b"\n", done)
        transport.append(
            self._reactor.spawnProcess(
                protocol, self.command[0], list(self.command), env=env, path=self.path
            )
        )
        timer = IReactorTime(self._reactor).callLater(self.timeout, kill, done)
        done.addBoth(_cancel_timer, timer)
        return done


def _cancel_timer(result: object, timer: Any) -> object:
    if timer.active():
        timer.cancel()
    return result
