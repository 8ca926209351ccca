#!/usr/bin/env python3
"""
An SMTP load generator for loopback benchmarks.

Each process runs an asyncio loop with its share of the concurrent
sessions; a session connects, reads the banner, says EHLO (and, with
C{--starttls}, upgrades and says EHLO again), sends its messages with
C{MAIL}, C{RCPT} and C{DATA} pipelined as RFC 2920 allows, and quits.  The
latency of a message is the time from the moment its final C{.CRLF} is
handed to the kernel to the moment its C{250} has arrived: that is the
wait the durable spool imposes, which is what a sender feels.

Two modes::

    loadgen.py send  --port 2525 --sessions 2000 --concurrency 20 --size 2048
    loadgen.py idle  --port 2525 --connections 1000 --starttls

C{send} prints one JSON object (messages, errors, seconds, msg/s, p50/p99
in milliseconds).  C{idle} opens the connections, prints C{ready N}, holds
them until its standard input closes, then prints C{closed}.

Only the standard library is used, so that the generator costs the same
whatever is installed, and it never sends anything but to the given host
(127.0.0.1 by default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.queues
import os
import resource
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from typing import Any


class SMTPFailure(Exception):
    """
    The server answered something other than what the step needs.
    """


@dataclass
class Stats:
    """
    What one process measured.
    """

    messages: int = 0
    sessions: int = 0
    errors: int = 0
    first_error: str = ""
    latencies: list[float] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0


def message_body(size: int, serial: int) -> bytes:
    """
    A message of about C{size} octets: a few headers and 76-column lines,
    dot-stuffing-free, ending with the terminator.
    """
    head = (
        b"From: <load@client.bench.test>\r\n"
        b"To: <user@example.com>\r\n"
        b"Subject: load %d\r\n"
        b"Message-ID: <%d.%d@client.bench.test>\r\n"
        b"\r\n" % (serial, serial, os.getpid())
    )
    line = b"x" * 74 + b"\r\n"
    lines = max(1, (size - len(head)) // len(line))
    return head + line * lines + b".\r\n"


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """
    One whole (possibly multi-line) reply.
    """
    text = b""
    while True:
        line = await reader.readuntil(b"\r\n")
        text += line
        if line[3:4] != b"-":
            try:
                return int(line[:3]), text
            except ValueError:
                raise SMTPFailure(f"garbage reply {text[:80]!r}") from None


async def expect(reader: asyncio.StreamReader, first: int, what: str) -> bytes:
    code, text = await read_reply(reader)
    if code // 100 != first:
        raise SMTPFailure(f"{what}: {text.decode(errors='replace').strip()}")
    return text


def client_context() -> ssl.SSLContext:
    """
    A client context like an opportunistic MTA's: encrypt, do not verify.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def open_session(
    args: argparse.Namespace, context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """
    Connect, read the banner, say EHLO, and upgrade with STARTTLS when
    C{context} is given.
    """
    local = (args.source, 0) if args.source else None
    reader, writer = await asyncio.open_connection(
        args.host, args.port, local_addr=local, limit=1 << 20
    )
    await expect(reader, 2, "banner")
    writer.write(b"EHLO client.bench.test\r\n")
    await expect(reader, 2, "EHLO")
    if context is not None:
        writer.write(b"STARTTLS\r\n")
        await expect(reader, 2, "STARTTLS")
        await writer.start_tls(context)
        writer.write(b"EHLO client.bench.test\r\n")
        await expect(reader, 2, "EHLO after STARTTLS")
    return reader, writer


async def one_session(
    args: argparse.Namespace, stats: Stats, context: ssl.SSLContext | None, serial: int
) -> None:
    reader, writer = await open_session(args, context)
    try:
        envelope = b"MAIL FROM:<load@client.bench.test>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (
            args.rcpt.encode("ascii"),
        )
        for n in range(args.messages):
            writer.write(envelope)
            await expect(reader, 2, "MAIL")
            await expect(reader, 2, "RCPT")
            await expect(reader, 3, "DATA")
            writer.write(message_body(args.size, serial * 1000 + n))
            start = time.perf_counter()
            await expect(reader, 2, "end of DATA")
            stats.latencies.append(time.perf_counter() - start)
            stats.messages += 1
        writer.write(b"QUIT\r\n")
        await expect(reader, 2, "QUIT")
        stats.sessions += 1
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass


async def send_loop(args: argparse.Namespace, sessions: int, concurrency: int) -> Stats:
    """
    Run C{sessions} sessions, C{concurrency} at a time (or, with
    C{--duration}, as many as fit in that time).
    """
    stats = Stats()
    context = client_context() if args.starttls else None
    started = time.monotonic()
    deadline = started + args.duration if args.duration else None
    remaining = [sessions]
    serial = [0]

    async def worker() -> None:
        while True:
            if deadline is not None:
                if time.monotonic() >= deadline:
                    return
            elif remaining[0] <= 0:
                return
            remaining[0] -= 1
            serial[0] += 1
            try:
                await one_session(args, stats, context, serial[0])
            except (OSError, SMTPFailure, ssl.SSLError, asyncio.IncompleteReadError) as e:
                stats.errors += 1
                if not stats.first_error:
                    stats.first_error = f"{type(e).__name__}: {e}"
                # A refused or reset connection: do not spin.
                await asyncio.sleep(0.01)

    stats.started = started
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    stats.ended = time.monotonic()
    return stats


def _process_main(
    args: argparse.Namespace,
    sessions: int,
    concurrency: int,
    barrier: Barrier,
    results: multiprocessing.queues.Queue[dict[str, Any]],
) -> None:
    barrier.wait()
    stats = asyncio.run(send_loop(args, sessions, concurrency))
    results.put(stats.__dict__)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def send_command(settings: argparse.Namespace, port: int, extra: Sequence[str]) -> list[str]:
    """
    The command line of a C{send} run against C{port}, with the benchmark
    scripts' load settings (C{concurrency}, C{size}, C{processes}) and
    C{extra} arguments.
    """
    return [
        sys.executable,
        os.path.abspath(__file__),
        "send",
        "--port",
        str(port),
        "--concurrency",
        str(settings.concurrency),
        "--size",
        str(settings.size),
        "--processes",
        str(settings.processes),
        *extra,
    ]


def send_result(returncode: int, out: str, err: str) -> dict[str, Any]:
    """
    What a finished C{send} run printed, or why it failed.

    @raise RuntimeError: it failed.
    """
    if returncode != 0:
        raise RuntimeError(f"loadgen failed: {err[-2000:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def run_send(args: argparse.Namespace) -> dict[str, Any]:
    """
    Fork the processes, start them together, merge what they measured.
    """
    processes = max(1, min(args.processes, args.concurrency))
    sessions = _split(args.sessions, processes)
    concurrency = _split(args.concurrency, processes)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes)
    queue: multiprocessing.queues.Queue[dict[str, Any]] = context.Queue()
    children = [
        context.Process(
            target=_process_main, args=(args, sessions[i], concurrency[i], barrier, queue)
        )
        for i in range(processes)
    ]
    for child in children:
        child.start()
    parts = [queue.get() for _ in children]
    for child in children:
        child.join()
    latencies = sorted(x for p in parts for x in p["latencies"])
    started = min(p["started"] for p in parts)
    ended = max(p["ended"] for p in parts)
    messages = sum(p["messages"] for p in parts)
    seconds = max(ended - started, 1e-9)
    return {
        "messages": messages,
        "sessions": sum(p["sessions"] for p in parts),
        "errors": sum(p["errors"] for p in parts),
        "first_error": next((p["first_error"] for p in parts if p["first_error"]), ""),
        "seconds": seconds,
        "msg_per_s": messages / seconds,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "started": started,
        "ended": ended,
    }


async def idle_main(args: argparse.Namespace) -> None:
    """
    Open C{--connections} sessions (with STARTTLS if asked), say C{ready},
    hold them until standard input closes.
    """
    context = client_context() if args.starttls else None
    held: list[asyncio.StreamWriter] = []
    failures: list[str] = []
    gate = asyncio.Semaphore(args.concurrency)

    async def one() -> None:
        async with gate:
            try:
                _, writer = await open_session(args, context)
            except (OSError, SMTPFailure, ssl.SSLError, asyncio.IncompleteReadError) as e:
                failures.append(f"{type(e).__name__}: {e}")
                return
            held.append(writer)

    await asyncio.gather(*(one() for _ in range(args.connections)))
    first = failures[0] if failures else ""
    print(f"ready {len(held)} failed {len(failures)} {first}".rstrip(), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for writer in held:
        writer.close()
    print("closed", flush=True)


def raise_file_limit() -> None:
    """
    A thousand connections need more than the usual 1024 descriptors.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    modes = parser.add_subparsers(dest="mode", required=True)
    for name in ("send", "idle"):
        sub = modes.add_parser(name)
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=int, required=True)
        sub.add_argument("--source", default="", help="local address to connect from")
        sub.add_argument("--starttls", action="store_true", help="STARTTLS in every session")
        sub.add_argument("--concurrency", type=int, default=20, help="sessions at a time")
    send = modes.choices["send"]
    send.add_argument("--sessions", type=int, default=1000, help="sessions in all")
    send.add_argument("--messages", type=int, default=1, help="messages per session")
    send.add_argument("--size", type=int, default=2048, help="octets per message")
    send.add_argument("--rcpt", default="user@example.com")
    send.add_argument("--duration", type=float, default=0.0, help="seconds (instead of a count)")
    send.add_argument("--processes", type=int, default=2)
    idle = modes.choices["idle"]
    idle.add_argument("--connections", type=int, default=1000)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    raise_file_limit()
    if args.mode == "idle":
        asyncio.run(idle_main(args))
        return 0
    print(json.dumps(run_send(args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
