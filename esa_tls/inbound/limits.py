# -*- test-case-name: tests.test_workers_admission,tests.attacks.test_floods -*-
"""
Counters that outlive one session: concurrent connections per remote IP and
recipients per hour per remote IP.

The ESA tracks recipients per hour per sending IP I{globally}: every listener
checks the same counter (reference 3.2), so one L{RecipientRateLimiter} is
shared by all listeners of a gateway.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict, deque

from twisted.internet.interfaces import IReactorTime


class ConnectionCounter:
    """
    Open connections per remote IP, for a policy's C{max_concurrency}.
    """

    def __init__(self) -> None:
        self._open: defaultdict[str, int] = defaultdict(int)

    def acquire(self, ip: str, limit: int) -> bool:
        """
        Count one more connection from C{ip}, unless that would exceed
        C{limit} (non-positive: unlimited).

        @return: whether the connection was counted; only a counted
            connection may be L{release}d.
        """
        if limit > 0 and self._open[ip] >= limit:
            return False
        self._open[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self._open[ip] -= 1
        if self._open[ip] <= 0:
            del self._open[ip]

    def count(self, ip: str) -> int:
        return self._open.get(ip, 0)


class RecipientRateLimiter:
    """
    Recipients accepted per remote IP over the last hour (a sliding window
    with minute resolution, so memory per IP is bounded by 60 buckets).

    Only the addresses that sent a recipient within the hour are kept: the
    table is in the order of each address's latest recipient, so those
    whose hour is over are at its front and go as soon as the clock has
    passed them.  Kept for ever, they would grow the gateway's memory with
    every new sending address (an IPv6 client can use a new one for each
    connection).
    """

    WINDOW = 3600.0
    BUCKET = 60.0

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._buckets: OrderedDict[str, deque[list[float]]] = OrderedDict()

    def _current(self, ip: str) -> deque[list[float]]:
        now = self._clock.seconds()
        self._forget(now)
        buckets = self._buckets.get(ip)
        if buckets is None:
            return deque()
        while buckets and buckets[0][0] <= now - self.WINDOW:
            buckets.popleft()
        return buckets

    def _forget(self, now: float) -> None:
        """
        Drop the addresses whose latest recipient is over an hour old.
        """
        buckets = self._buckets
        while buckets:
            ip, first = next(iter(buckets.items()))
            if first and first[-1][0] > now - self.WINDOW:
                return
            del buckets[ip]

    def count(self, ip: str) -> int:
        return int(sum(b[1] for b in self._current(ip)))

    def try_add(self, ip: str, limit: int) -> bool:
        """
        Count one recipient for C{ip} unless the hour's C{limit} is reached
        (negative: disabled, as the ESA's C{-1}).
        """
        buckets = self._current(ip)
        if limit >= 0 and sum(b[1] for b in buckets) >= limit:
            return False
        start = self._clock.seconds() // self.BUCKET * self.BUCKET
        if buckets and buckets[-1][0] == start:
            buckets[-1][1] += 1
        else:
            buckets.append([start, 1])
        self._buckets[ip] = buckets
        self._buckets.move_to_end(ip)
        return True
