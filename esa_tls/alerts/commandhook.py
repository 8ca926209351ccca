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
on standard error is in the log line.  The hook ends when the program
exits, even if a process it left in the background still holds its
standard output or error (our ends are closed then).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from esa_tls.alerts.alert import Alert
from esa_tls.interfaces import IAlertHook

__all__ = ["CommandAlertHook", "CommandFailed"]

_KEEP_STDERR = 2048

#: Seconds the end of a program's standard error may take to arrive once
#: it has exited.
_DRAIN = 0.5


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
    """
    Feeds the alert to the program and tells how it ended: when it exits,
    not when its pipes close (a background process of its own may hold
    them for long after), and at the timeout at the latest.
    """

    def __init__(self, data: bytes, done: Deferred[int], clock: IReactorTime) -> None:
        self.data = data
        self.done = done
        self.clock = clock
        self.stderr = b""
        self.timed_out = False
        self.exited: Failure | None = None
        self._drain: IDelayedCall | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        pass

    def errReceived(self, data: bytes) -> None:
        self.stderr = (self.stderr + data)[-_KEEP_STDERR:]

    def processExited(self, reason: Failure) -> None:
        self.exited = reason
        if self.done.called:
            self._close()
        else:
            # What it wrote last may still be in the pipe: a moment for it.
            self._drain = self.clock.callLater(_DRAIN, self._finish)

    def processEnded(self, reason: Failure) -> None:
        self.exited = reason
        self._finish()

    def time_out(self) -> None:
        """
        The timeout: the program is killed (if it is still there) and the
        hook fails now, whoever holds its pipes.
        """
        if self.exited is not None:
            self._finish()
            return
        self.timed_out = True
        self.kill()
        if not self.done.called:
            self.done.errback(CommandFailed("timed out and was killed", self.stderr))

    def kill(self) -> None:
        if self.transport is not None:
            try:
                self.transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
        self._close()

    def _close(self) -> None:
        # Our ends of its pipes: a background process may keep its own.
        if self.transport is not None:
            self.transport.loseConnection()

    def _finish(self) -> None:
        if self._drain is not None and self._drain.active():
            self._drain.cancel()
        self._drain = None
        self._close()
        reason = self.exited
        if self.done.called or reason is None:
            return
        if self.timed_out:
            self.done.errback(CommandFailed("timed out and was killed", self.stderr))
        elif reason.check(ProcessDone, ProcessTerminated) is None:
            self.done.errback(reason)
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
        protocol: list[_AlertProcess] = []

        def cancel(d: Deferred[Any]) -> None:
            protocol[0].timed_out = True
            protocol[0].kill()

        done: Deferred[int] = Deferred(cancel)
        clock = IReactorTime(self._reactor)
        protocol.append(_AlertProcess(alert.to_json_bytes() + b"\n", done, clock))
        self._reactor.spawnProcess(
            protocol[0], self.command[0], list(self.command), env=env, path=self.path
        )
        timer = clock.callLater(self.timeout, protocol[0].time_out)
        done.addBoth(_cancel_timer, timer)
        return done


def _cancel_timer(result: object, timer: Any) -> object:
    if timer.active():
        timer.cancel()
    return result
