"""
The program of a gateway's worker process: C{python -m esa_tls.worker}.

L{esa_tls.workers.WorkerPool} starts workers with this module rather than
with C{-m esa_tls.workers}: a module run with C{-m} becomes C{__main__},
so the gateway's own import of C{esa_tls.workers} would load a second copy
of it (compiled from source at every start, since C{__main__} has no
cached bytecode), and the worker's log events from it would be named
C{__main__} instead of C{esa_tls.workers}.
"""

from esa_tls.workers import worker_main

if __name__ == "__main__":
    raise SystemExit(worker_main())
