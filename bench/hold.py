"""
C{twistd} for the benchmark's inbound rows when the gateway has no way to
discard mail: the gateway exactly as C{twistd -n esa-tls} runs it, except
that its delivery engine is held (not started), so that what is measured is
accepting mail into the durable spool, which grows meanwhile.

Used by C{bench/run} only, and only while the gateway lacks a C{/dev/null}
SMTP route (Postfix's rows use its discard transport); the table says so.

    python bench/hold.py -n --pidfile= esa-tls --config FILE [--workers N]
"""

from __future__ import annotations

import sys

from twisted.application.service import Service
from twisted.scripts.twistd import run

from esa_tls.outbound import queue

queue.QueueManager.startService = Service.startService  # type: ignore[method-assign]
queue.QueueManager.stopService = Service.stopService  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv[0] = "twistd"
    run()
