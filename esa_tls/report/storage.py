# -*- test-case-name: tests.test_report_counters -*-
"""
How the TLS counters are kept on disk, under C{data_dir/reports/}.

One file per time bucket (an hour by default) per worker process::

    tls-001800000000-0.json     bucket starting at POSIX time 1800000000,
                                written by worker "0"
    tls-totals-0.json           worker "0"'s counts since the data
                                directory was made (for /metrics)

Buckets in the past never change, so a flush rewrites only the buckets
that changed since the last one (normally just the current hour), and a
reader for C{--since 24h} opens about 25 files per worker, whatever the
retention.  Each worker writes only its own files, so several processes
sharing a data directory (issue 7) never overwrite each other's counts;
readers add them up.  Every file is replaced atomically (written aside,
fsync'd, renamed, directory fsync'd): a crash leaves the old version or
the new one, never a torn file.

A bucket file is JSON::

    {"format": 1, "bucket": 1800000000, "seconds": 3600, "worker": "0",
     "columns": ["required_success", ...],
     "rows": [["incoming", "sender.example", "192.0.2.1", [1, 0, ...]],
              ["outgoing", "partner.example", "", [0, 2, ...]]]}

The totals file has the same C{columns}, and C{rows} of
C{[direction, domain, counts]}.  Everything here blocks: call it from a
thread (the live counters do), or from a command-line tool.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.logger import Logger

from esa_tls.durable import write_atomically
from esa_tls.report.counts import COLUMNS, Direction, TLSCounts

__all__ = [
    "FORMAT",
    "Key",
    "ReportFormatError",
    "bucket_path",
    "decode_bucket",
    "decode_totals",
    "encode_bucket",
    "encode_totals",
    "list_buckets",
    "read_buckets",
    "read_totals",
    "report_directory",
    "totals_path",
    "valid_worker",
    "write_atomically",
]

log = Logger()

FORMAT = 1

#: A row of the report: direction, domain, and for incoming rows the
#: sender's IP address (C{""} for outgoing rows).
Key = tuple[Direction, str, str]

_BUCKET_FILE = re.compile(r"\Atls-(\d{12})-([A-Za-z0-9_.]+)\.json\Z")
_TOTALS_FILE = re.compile(r"\Atls-totals-([A-Za-z0-9_.]+)\.json\Z")
_WORKER = re.compile(r"\A[A-Za-z0-9_.]{1,64}\Z")


class ReportFormatError(ValueError):
    """
    A report file is not one this version can read.
    """


def report_directory(data_dir: str) -> str:
    """
    @return: C{data_dir/reports}.
    """
    return os.path.join(data_dir, "reports")


def valid_worker(worker: str) -> bool:
    """
    Whether C{worker} can name files: letters, digits, C{_} and C{.}.
    """
    return bool(_WORKER.match(worker))


def bucket_path(directory: str, bucket: int, worker: str) -> str:
    return os.path.join(directory, f"tls-{bucket:012d}-{worker}.json")


def totals_path(directory: str, worker: str) -> str:
    return os.path.join(directory, f"tls-totals-{worker}.json")


def _dumps(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode(
        "ascii"
    )


def encode_bucket(bucket: int, seconds: int, worker: str, rows: Mapping[Key, TLSCounts]) -> bytes:
    return _dumps(
        {
            "format": FORMAT,
            "bucket": bucket,
            "seconds": seconds,
            "worker": worker,
            "columns": list(COLUMNS),
            "rows": [
                [direction.value, domain, ip, list(counts.as_tuple())]
                for (direction, domain, ip), counts in sorted(
                    rows.items(), key=lambda item: (item[0][0].value, item[0][1], item[0][2])
                )
            ],
        }
    )


def _document(data: bytes) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except ValueError as e:
        raise ReportFormatError(f"not JSON: {e}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ReportFormatError("not a TLS report file of format 1")
    columns = document.get("columns")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise ReportFormatError("no columns")
    if not isinstance(document.get("rows"), list):
        raise ReportFormatError("no rows")
    return document


def _counts(values: object, columns: list[str]) -> TLSCounts:
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
    ):
        raise ReportFormatError(f"bad counts {values!r}")
    return TLSCounts.from_sequence(values, columns)


def decode_bucket(data: bytes) -> tuple[int, int, dict[Key, TLSCounts]]:
    """
    @return: the bucket's start, its length in seconds, and its rows.
    @raise ReportFormatError: the data is not a bucket file.
    """
    document = _document(data)
    bucket, seconds = document.get("bucket"), document.get("seconds")
    if not isinstance(bucket, int) or not isinstance(seconds, int) or seconds <= 0:
        raise ReportFormatError("bad bucket or seconds")
    rows: dict[Key, TLSCounts] = {}
    for row in document["rows"]:
        try:
            direction, domain, ip, values = row
            key: Key = (Direction(direction), str(domain), str(ip))
        except (TypeError, ValueError):
            raise ReportFormatError(f"bad row {row!r}") from None
        rows[key] = rows.get(key, TLSCounts()) + _counts(values, document["columns"])
    return bucket, seconds, rows


def encode_totals(worker: str, rows: Mapping[tuple[Direction, str], TLSCounts]) -> bytes:
    return _dumps(
        {
            "format": FORMAT,
            "worker": worker,
            "columns": list(COLUMNS),
            "rows": [
                [direction.value, domain, list(counts.as_tuple())]
                for (direction, domain), counts in sorted(
                    rows.items(), key=lambda item: (item[0][0].value, item[0][1])
                )
            ],
        }
    )


def decode_totals(data: bytes) -> dict[tuple[Direction, str], TLSCounts]:
    document = _document(data)
    rows: dict[tuple[Direction, str], TLSCounts] = {}
    for row in document["rows"]:
        try:
            direction, domain, values = row
            key = (Direction(direction), str(domain))
        except (TypeError, ValueError):
            raise ReportFormatError(f"bad row {row!r}") from None
        rows[key] = rows.get(key, TLSCounts()) + _counts(values, document["columns"])
    return rows


def list_buckets(directory: str) -> list[tuple[int, str, str]]:
    """
    @return: C{(bucket, worker, path)} of every bucket file, oldest first;
        empty when the directory does not exist.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out: list[tuple[int, str, str]] = []
    for name in names:
        match = _BUCKET_FILE.match(name)
        if match is not None:
            out.append((int(match.group(1)), match.group(2), os.path.join(directory, name)))
    return sorted(out)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def read_buckets(
    directory: str,
    since: float | None = None,
    *,
    exclude_worker: str | None = None,
) -> Iterable[tuple[int, int, Key, TLSCounts]]:
    """
    Read the bucket files that overlap C{since} or later.

    @param since: POSIX time; C{None} for every bucket kept.
    @param exclude_worker: leave this worker's files out (the live counters
        add their own from memory).
    @return: C{(bucket, seconds, key, counts)} for every row; unreadable
        files are logged and skipped.
    """
    out: list[tuple[int, int, Key, TLSCounts]] = []
    for bucket, worker, path in list_buckets(directory):
        if worker == exclude_worker:
            continue
        # A bucket is at most a day long: skip files that cannot overlap.
        if since is not None and bucket + 86400 <= since:
            continue
        data = _read(path)
        if data is None:
            continue
        try:
            start, seconds, rows = decode_bucket(data)
        except ReportFormatError as e:
            log.warn("Skipping report file {path}: {problem}", path=path, problem=str(e))
            continue
        if since is not None and start + seconds <= since:
            continue
        out.extend((start, seconds, key, counts) for key, counts in rows.items())
    return out


def read_totals(
    directory: str, *, exclude_worker: str | None = None
) -> dict[tuple[Direction, str], TLSCounts]:
    """
    The totals of every worker (but C{exclude_worker}), added up.
    """
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return {}
    out: dict[tuple[Direction, str], TLSCounts] = {}
    for name in names:
        match = _TOTALS_FILE.match(name)
        if match is None or match.group(1) == exclude_worker:
            continue
        path = os.path.join(directory, name)
        data = _read(path)
        if data is None:
            continue
        try:
            rows = decode_totals(data)
        except ReportFormatError as e:
            log.warn("Skipping report file {path}: {problem}", path=path, problem=str(e))
            continue
        for key, counts in rows.items():
            out[key] = out.get(key, TLSCounts()) + counts
    return out
