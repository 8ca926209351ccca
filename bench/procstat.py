"""
CPU time and memory of a server's whole process tree, from C{/proc}.

A server is a root process and everything below it: Postfix's master and
its smtpd, cleanup, qmgr and discard children; our twistd parent and its
workers.  The CPU a tree has used is the sum, over the processes alive now,
of their own time and of the time of the children they have reaped
(C{utime + stime + cutime + cstime}): a child that exits between two
samples moves its time into its parent's C{cutime}, so nothing is lost or
counted twice, provided every process of the tree reaps its own children
(both servers do).

Memory is measured two ways, because summing the RSS of a hundred forked
processes counts their shared pages a hundred times: the RSS sum (what the
issue's targets speak of) and the PSS sum (each shared page divided among
the processes that share it: what the tree really costs the machine).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces.
    return text.rsplit(")", 1)[1].split()


def tree(root: int) -> list[int]:
    """
    C{root} and all its descendants alive now.
    """
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    found = [root]
    index = 0
    while index < len(found):
        found.extend(children.get(found[index], ()))
        index += 1
    return found


def cpu_seconds(roots: Iterable[int]) -> float:
    """
    The CPU seconds used so far by the trees under C{roots}.
    """
    ticks = 0
    for root in roots:
        for pid in tree(root):
            fields = _stat_fields(pid)
            if fields is not None:
                # Fields 14-17 of stat(5); [0] here is field 3 (state).
                ticks += sum(int(x) for x in fields[11:15])
    return ticks / TICKS


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def memory_mib(roots: Iterable[int], pss: bool = False) -> float:
    """
    The RSS (or, with C{pss}, the PSS) of the trees under C{roots}, summed,
    in MiB.
    """
    total = 0
    for root in roots:
        for pid in tree(root):
            total += _pss_kib(pid) if pss else _status_kib(pid, "VmRSS:")
    return total / 1024


class PeakMemory:
    """
    Samples the RSS sum of some trees in a thread, keeping the peak.
    """

    def __init__(self, roots: Iterable[int], interval: float = 0.2) -> None:
        self.roots = list(roots)
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        self.peak = max(self.peak, memory_mib(self.roots))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()
