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

    synopsis = "[--config FILE]"
    longdesc = (
        "Run the esa_tls mail gateway.  Without --config the embedded default is used: "
        "listener InboundMail on 127.0.0.1 port 2525 accepting mail for example.com, "
        "data under ./var."
    )
    optParameters = [
        ["config", "c", None, "The TOML configuration file (default: the embedded default)."],
    ]


def makeService(options: Options) -> IService:
    """
    Load and validate the whole configuration first: nothing starts
    half-configured.  A bad file stops C{twistd} with the loader's message,
    one line per fault.
    """
    from esa_tls.service import GatewayService

    try:
        return GatewayService.from_file(options["config"])
    except ConfigError as e:
        sys.stderr.write(f"esa-tls: configuration error\n{e}\n")
        raise SystemExit(2) from None
