# -*- test-case-name: tests.test_gateway -*-
"""
C{twistd esa-tls}: command-line options and the service they make.
"""

from __future__ import annotations

import sys

from twisted.application.service import IService
from twisted.python import usage

from esa_tls.config.errors import ConfigError


class Options(usage.Options):
    """
    C{twistd -n esa-tls [--config FILE]}.
    """

    synopsis = "[--config FILE] [--workers N]"
    longdesc = (
        "Run the esa_tls mail gateway.  Without --config the embedded default is used: "
        "listener InboundMail on 127.0.0.1 port 2525 accepting mail for example.com, "
        "data under ./var."
    )
    optParameters = [
        ["config", "c", None, "The TOML configuration file (default: the embedded default)."],
        [
            "workers",
            "w",
            None,
            "Reactor processes sharing the listeners, spool and limits "
            "(default: the number of cores; 1: a single process).",
        ],
    ]

    def postOptions(self) -> None:
        from esa_tls.workers import default_workers

        value = self["workers"]
        if value is None:
            self["workers"] = default_workers()
            return
        try:
            workers = int(value)
        except ValueError:
            raise usage.UsageError(f"--workers: not a number: {value!r}") from None
        if not 1 <= workers <= 256:
            raise usage.UsageError(f"--workers: {workers} is not in 1-256")
        self["workers"] = workers


def makeService(options: Options) -> IService:
    """
    Load and validate the whole configuration first: nothing starts
    half-configured.  A bad file stops C{twistd} with the loader's message,
    one line per fault.
    """
    from twisted.internet import reactor

    from esa_tls.heap import freeze_startup_heap
    from esa_tls.service import GatewayService

    workers = options["workers"]
    try:
        if workers > 1:
            service = _multi_worker(options["config"], workers)
        else:
            service = GatewayService.from_file(options["config"])
    except ConfigError as e:
        sys.stderr.write(f"esa-tls: configuration error\n{e}\n")
        raise SystemExit(2) from None
    reactor.callWhenRunning(freeze_startup_heap)
    return service


def _multi_worker(config: str | None, workers: int) -> IService:
    """
    C{--workers N} with N > 1: the listeners are bound here, before the
    reactor runs (see L{esa_tls.workers}); failing to bind stops start-up.
    """
    from esa_tls.workers import multi_worker_gateway

    try:
        service: IService = multi_worker_gateway(config, workers)
    except OSError as e:
        sys.stderr.write(f"esa-tls: cannot listen: {e.strerror or e}\n")
        raise SystemExit(1) from None
    return service
