"""
The gateway process freezes its start-up heap, so that full garbage
collections under load walk only what sessions allocated (issue 7: p99).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from esa_tls.heap import freeze_startup_heap
from tests.support import BASE, PUBLIC

_PROBE = """
import gc, sys
from twisted.internet import reactor
from esa_tls import tap
options = tap.Options()
options.parseOptions(["--config", sys.argv[1], "--workers", "1"])
tap.makeService(options)
print(gc.get_freeze_count())
reactor.callWhenRunning(lambda: (print(gc.get_freeze_count()), reactor.stop()))
reactor.run()
"""


class FreezeStartupHeapTests(TestCase):
    def setUp(self) -> None:
        gc.unfreeze()
        self.addCleanup(gc.unfreeze)

    def test_fullCollectionSkipsStartupObjects(self) -> None:
        """
        After L{freeze_startup_heap} every object alive is in the permanent
        generation, and a full collection tracks only what came after.
        """
        before = len(gc.get_objects())
        freeze_startup_heap()
        self.assertGreaterEqual(gc.get_freeze_count(), before // 2)
        self.assertLess(len(gc.get_objects()), before // 10)

    def test_twistdPluginFreezesWhenRunning(self) -> None:
        """
        The service C{twistd esa-tls} makes freezes the heap once the
        reactor runs, with the gateway built: not before (start-up still
        allocates), and in the gateway's own process only.
        """
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        path = os.path.join(data_dir, "gateway.toml")
        with open(path, "w") as f:
            f.write(BASE.format(data_dir=data_dir, system_extra="") + PUBLIC)
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, path],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        built, running = (int(n) for n in done.stdout.split())
        self.assertEqual(built, 0)
        self.assertGreater(running, 10000)
