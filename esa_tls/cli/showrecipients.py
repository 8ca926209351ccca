# -*- test-case-name: tests.test_outbound_cli -*-
"""
List the recipients still in the queue, with their state and last error.

C{esa-tls showrecipients [--domain DOMAIN] [--sender ADDRESS] [--json]}
reads the spool (C{data_dir/spool}) without changing it and prints, per
message, the ESA's C{MID / Bytes / Sender / Subject} line, then one line
per recipient not yet delivered or bounced: C{[RID] [attempts]}, the
address, its state (queued or deferred), when it is next tried, and the
last error.  Exit status 0.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import json
import os
import time
from typing import Any

from esa_tls.cli.main import CommandContext
from esa_tls.printable import printable
from esa_tls.spool.fileformat import (
    MAX_HEADER_LENGTH,
    SpoolFormatError,
    decode_message_header,
    decode_recipient_states,
    recipient_record,
)
from esa_tls.spool.store import open_regular
from esa_tls.spool.values import FINAL_STATUSES, RecipientState

__all__ = ["add_arguments", "read_queue", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domain", help="only recipients in this domain")
    parser.add_argument("--sender", help="only messages from this envelope sender")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _subject(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            head = f.read(65536)
    except OSError:
        return ""
    end = head.find(b"\r\n\r\n")
    headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(
        head if end < 0 else head[: end + 4]
    )
    return str(headers.get("Subject", ""))


def read_queue(spool_dir: str, unreadable: list[int] | None = None) -> list[dict[str, Any]]:
    """
    The queued messages of the spool in C{spool_dir}, read without
    touching it (safe while the gateway runs): one dict per message with
    C{mid}, C{size}, C{sender}, C{subject} and C{recipients} (the
    unfinished ones, as L{RecipientState} fields).

    @param unreadable: receives the MID of each message whose file or
        recipient states cannot be read or decoded (one the gateway will
        move to C{corrupt/}); one removed while it was being read is not
        counted.
    """
    queue_dir = os.path.join(spool_dir, "queue")
    state_dir = os.path.join(spool_dir, "state")
    try:
        names = os.listdir(queue_dir)
    except FileNotFoundError:
        return []
    messages = []
    for name in names:
        if not name.endswith(".msg") or not name[:-4].isdigit():
            continue
        mid = int(name[:-4])
        path = os.path.join(queue_dir, name)
        try:
            # Not open(): a FIFO in the queue would block it for ever.
            fd, _ = open_regular(path)
            with open(fd, "rb") as f:
                header = decode_message_header(f.readline(MAX_HEADER_LENGTH))
        except FileNotFoundError:
            continue
        except (OSError, SpoolFormatError):
            if unreadable is not None:
                unreadable.append(mid)
            continue
        states = {
            rid: RecipientState(rid=rid, address=address)
            for rid, address in enumerate(header.envelope.rcpt_to)
        }
        try:
            fd, _ = open_regular(os.path.join(state_dir, f"{mid}.json"))
            with open(fd, "rb") as f:
                states.update(decode_recipient_states(f.read(), mid))
        except FileNotFoundError:
            pass
        except (OSError, SpoolFormatError):
            if unreadable is not None:
                unreadable.append(mid)
            continue
        pending = [s for _, s in sorted(states.items()) if s.status not in FINAL_STATUSES]
        if not pending:
            continue
        messages.append(
            {
                "mid": mid,
                "size": header.body_size,
                "sender": header.envelope.mail_from,
                "subject": _subject(path, header.body_offset),
                "received_at": header.envelope.received_at,
                "recipients": [recipient_record(s) for s in pending],
            }
        )
    return sorted(messages, key=lambda m: int(m["mid"]))


def _when(timestamp: float, now: float) -> str:
    if timestamp <= now:
        return "now"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def run(options: argparse.Namespace, context: CommandContext) -> int:
    config = context.load_config()
    unreadable: list[int] = []
    messages = read_queue(
        os.path.join(os.path.abspath(config.system.data_dir), "spool"), unreadable
    )
    if unreadable:
        # On stderr, so the listing (and --json) stays what scripts parse.
        print(
            f"warning: {len(unreadable)} queued message(s) could not be read "
            f"(MID {', '.join(str(m) for m in sorted(unreadable))}) and are not listed; "
            "the gateway moves such files to spool/corrupt/ and logs why",
            file=context.stderr,
        )
    domain = options.domain.lower().rstrip(".") if options.domain else None
    selected = []
    for message in messages:
        if options.sender is not None and message["sender"] != options.sender:
            continue
        recipients = [
            r
            for r in message["recipients"]
            if domain is None or r["address"].rpartition("@")[2].lower() == domain
        ]
        if recipients:
            selected.append(dict(message, recipients=recipients))
    out = context.stdout
    if options.json:
        out.write(json.dumps(selected, indent=1) + "\n")
        return 0
    if not selected:
        print("There are no messages in the queue.", file=out)
        return 0
    now = time.time()
    print(f"{'MID/':<12}{'Bytes/':<10}{'Sender/':<32}Subject", file=out)
    print(f"{'[RID]':<12}{'[Atmps]':<10}{'Recipient':<32}State", file=out)
    for message in selected:
        sender = printable(message["sender"]) or "<>"
        subject = printable(message["subject"])
        print(f"{message['mid']:<12}{message['size']:<10}{sender:<32}{subject}", file=out)
        for r in message["recipients"]:
            state = r["status"]
            if state == "deferred":
                state += f", next try {_when(r['next_attempt'], now)}"
            print(
                f"{'[' + str(r['rid']) + ']':<12}{'[' + str(r['attempts']) + ']':<10}"
                f"{printable(r['address']):<32}{state}",
                file=out,
            )
            if r["last_error"]:
                print(f"{'':<22}last error: {printable(r['last_error'])}", file=out)
    total = sum(len(m["recipients"]) for m in selected)
    print(f"\n{len(selected)} message(s), {total} recipient(s) pending.", file=out)
    return 0
