"""
The program of a gateway's worker process: C{python -m esa_tls.worker}.

L{esa_tls.workers.WorkerPool} starts workers with this module rather than
with C{-m esa_tls.workers}: a module run with C{-m} becomes C{__main__},
so the gateway's own import of C{esa_tls.workers} would load a second copy
of it (compiled from source at every start, since C{__main__} has no
cached bytecode), and the worker's log events from it would be named
C{__main__} instead of C{esa_tls.workers}.

A SIGHUP comes to every worker when the gateway reloads, and a worker
takes about a second to start: until its gateway service installs its own
handler, the default action would end the process.  So the very first
thing a worker does is note any SIGHUP, before the imports that take that
second; the worker then reloads once it has started
(L{esa_tls.workers.worker_main}).
"""

import signal

#: SIGHUPs that arrived before the gateway service took over the signal.
hangups: list[int] = []


def _noted(signum: int, frame: object) -> None:
    hangups.append(signum)


if __name__ == "__main__":
    signal.signal(signal.SIGHUP, _noted)

    from esa_tls.workers import worker_main

    raise SystemExit(worker_main(hangups=hangups))
