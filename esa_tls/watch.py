# -*- test-case-name: tests.test_gateway -*-
"""
Notice when files the running gateway depends on change (the configuration
file, certificates, keys, chains and CA lists), so that an administrator who
drops a renewed certificate in place sees it served without a SIGHUP.

Polling C{stat()} every few seconds is deliberate: it works the same on
every file system (inotify does not see NFS or bind-mounted changes), costs
a handful of syscalls, and a renewal that lands a few seconds late harms
nobody.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

_Stamp = tuple[int, int, int] | None


def _stamp(path: str) -> _Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class FileWatcher:
    """
    Calls C{changed()} once after any of C{paths()} changes (modified,
    replaced, created or removed), checking every C{interval} seconds.

    C{paths} is asked again after each change, because a new configuration
    may name new files.
    """

    def __init__(
        self,
        paths: Callable[[], Iterable[str]],
        changed: Callable[[], object],
        clock: IReactorTime,
        interval: float = 5.0,
    ) -> None:
        self._paths = paths
        self._changed = changed
        self._interval = interval
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock
        self._stamps = self._snapshot()

    def _snapshot(self) -> dict[str, _Stamp]:
        return {path: _stamp(path) for path in self._paths()}

    def check(self) -> bool:
        """
        Compare the files with what was seen last; on a difference call
        C{changed()} and keep what was seen before it ran.

        @return: whether a change was seen.
        """
        now = {path: _stamp(path) for path in self._stamps}
        if now == self._stamps:
            return False
        changed = sorted(p for p in now if now[p] != self._stamps[p])
        log.info("files changed: {paths}; reloading", paths=", ".join(changed))
        try:
            self._changed()
        except Exception:
            log.failure("reloading after a file change failed")
        # The stamps seen I{before} the reload read the files: a file that
        # changed while it ran (a certificate landing just after its new
        # key, the rest of a file written in place) differs from them at
        # the next check and is reloaded then.  Stamped after the reload,
        # that change would pass for the one already read, and the old
        # pair or policy would stay in force until some other change.
        # Only the files the new configuration adds are stamped now.
        self._stamps = {path: now[path] if path in now else _stamp(path) for path in self._paths()}
        return True

    def start(self) -> None:
        if self._interval > 0 and not self._loop.running:
            self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
