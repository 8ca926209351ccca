# -*- test-case-name: tests.test_heap -*-
"""
Keep Python's full garbage collections off the gateway's latency path.

The cyclic collector's oldest generation is collected whenever it has
grown by a quarter, and a full collection walks every container object
alive: the modules, classes, functions and configuration a gateway loads
at start-up, about 200,000 objects.  Under the benchmark's cleartext load
such a collection took 31 ms, during which the reactor served no session,
so every message that finished DATA meanwhile waited that long for its
250 (issue 7: p99 end of DATA to 250 <= 20 ms).  With the start-up heap
frozen the same collections take under half a millisecond.

Nothing is lost by freezing: objects freed by reference counting (nearly
all of them) are still freed, and only a reference cycle made entirely of
start-up objects would never be collected, which is what the gateway's
start-up objects are for anyway: they live until the process ends.  Only
the process that runs the gateway freezes (the C{twistd} plugin and each
worker); a program that imports the library decides for itself.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_heap"]


def freeze_startup_heap() -> None:
    """
    Collect what start-up left as garbage, then move every object still
    alive into the permanent generation that collections skip.  Call once,
    when the gateway is built and about to serve.
    """
    gc.collect()
    gc.freeze()
