#!/usr/bin/env python3
"""
The durable spool alone: commits per second and commit latency for each
C{[system] spool_sync} setting, on this machine's disk.

C{concurrency} writers each loop: receive a 2 KiB message, commit it
(group commit: every commit of a reactor turn in one batch), wait for the
commit, then remove the message (as the C{/dev/null} route does).  No
network and no load generator share the cores, so what is left is the
batch's file system work: the number to look at before choosing
C{spool_sync = "filesystem"} for a spool on its own file system::

    .venv/bin/python bench/spool.py     # file and filesystem, 3 rounds each
    .venv/bin/python bench/spool.py --directory /var/spool/esa --seconds 10

Run by hand, never as a timed test.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

from twisted.internet import defer, reactor, task

from esa_tls.spool import DurableSpool
from esa_tls.spool.fs import FileSystem, WholeFileSystemSync, syncfs_unsupported
from esa_tls.values import Envelope

ENVELOPE = Envelope(
    mail_from="sender@bench.test",
    rcpt_to=("user@example.com",),
    helo="client.bench.test",
    peer_ip="127.0.0.1",
    listener="InboundMail",
    icid=1,
    sender_group="BENCH",
    policy="BENCH",
    tls=None,
    received_at=0.0,
)


async def one_round(
    mode: str, parent: str, concurrency: int, seconds: float, size: int
) -> tuple[float, float, float, float]:
    """
    @return: commits per second, p50 and p99 latency in ms, and messages
        per batch.
    """
    directory = tempfile.mkdtemp(prefix="esa-spool-bench-", dir=parent)
    fs = WholeFileSystemSync(directory) if mode == "filesystem" else FileSystem()
    spool = DurableSpool(directory, reactor, filesystem=fs, memory_limit=64 * 1024)
    body = b"x" * (size - 2) + b"\r\n"
    latencies: list[float] = []
    end = time.monotonic() + seconds

    async def writer() -> None:
        while time.monotonic() < end:
            message = spool.new_message(ENVELOPE)
            message.write(body)
            started = time.perf_counter()
            mid = await message.commit()
            latencies.append(time.perf_counter() - started)
            await spool.remove(mid)

    try:
        await defer.gatherResults([defer.ensureDeferred(writer()) for _ in range(concurrency)])
    finally:
        await spool.close()
        shutil.rmtree(directory, ignore_errors=True)
    latencies.sort()
    # Each message costs two batch steps: its commit and its removal.
    per_batch = 2 * len(latencies) / max(spool.committer.jobs, 1)
    return (
        len(latencies) / seconds,
        1000 * latencies[len(latencies) // 2],
        1000 * latencies[int(0.99 * (len(latencies) - 1))],
        per_batch,
    )


async def main(args: argparse.Namespace) -> None:
    modes = ["file"]
    why = syncfs_unsupported()
    if why is None:
        modes.append("filesystem")
    else:
        print(f"spool_sync filesystem left out: {why}", file=sys.stderr)
    results: dict[str, list[tuple[float, float, float, float]]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode in modes:  # alternate, so that drift hits both
            results[mode].append(
                await one_round(mode, args.directory, args.concurrency, args.seconds, args.size)
            )
    print(
        f"spool commits: {args.concurrency} writers, {args.size}-octet messages, "
        f"{args.rounds} rounds of {args.seconds:.0f} s, median; directory {args.directory}"
    )
    print(f"{'spool_sync':12s} {'commits/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s} {'per batch':>10s}")
    for mode, rows in results.items():
        print(
            f"{mode:12s} {statistics.median(r[0] for r in rows):10.0f} "
            f"{statistics.median(r[1] for r in rows):8.2f} "
            f"{statistics.median(r[2] for r in rows):8.2f} "
            f"{statistics.median(r[3] for r in rows):10.1f}"
        )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--directory", default=tempfile.gettempdir(), help="where to make spools")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=2048)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    task.react(lambda _: defer.ensureDeferred(main(arguments)))
