# -*- test-case-name: tests.test_alerts_hooks -*-
"""
The webhook hook: an HTTP(S) C{POST} of the alert's JSON (L{Alert.to_json})
to a URL, through treq.

HTTPS URLs are verified the way a browser would (Twisted's
C{BrowserLikePolicyForHTTPS}: the platform CAs and the host name), unless
the gateway gives another C{contextFactory}.  Any 2xx answer is success;
anything else, a connection failure or the timeout is a failed hook, which
the dispatcher logs.  Redirects are not followed: a webhook that moved
should be reconfigured, not silently chased.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import Agent
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from esa_tls.alerts.alert import Alert
from esa_tls.interfaces import IAlertHook

__all__ = ["WebhookAlertHook", "WebhookFailed"]

_USER_AGENT = "esa_tls alert webhook"


class WebhookFailed(Exception):
    """
    The webhook answered with a status other than 2xx.

    @ivar code: the HTTP status.
    """

    def __init__(self, url: str, code: int, phrase: bytes) -> None:
        super().__init__(f"{url} answered {code} {phrase.decode('latin-1')}")
        self.code = code


@implementer(IAlertHook)
class WebhookAlertHook:
    """
    POSTs each alert as JSON to C{url}.
    """

    name = "webhook"

    def __init__(
        self,
        reactor: Any,
        url: str,
        *,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        contextFactory: IPolicyForHTTPS | None = None,
    ) -> None:
        """
        @param reactor: provides C{IReactorTCP}, C{IReactorTime} (and
            C{IReactorSSL} for HTTPS).
        @param url: an C{http://} or C{https://} URL.
        @param timeout: seconds for the whole exchange.
        @param headers: extra request headers (an C{Authorization} token,
            say).
        @param contextFactory: the TLS policy for HTTPS URLs.
        """
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"a webhook URL must be http:// or https://, not {url!r}")
        self._reactor = reactor
        self.url = url
        self.timeout = timeout
        self.headers = dict(headers or {})
        agent = (
            Agent(reactor)
            if contextFactory is None
            else Agent(reactor, contextFactory=contextFactory)
        )
        self._client = HTTPClient(agent)

    def alert(self, alert: object) -> Deferred[int]:
        """
        POST the alert.

        @return: a L{Deferred} firing with the HTTP status when it is 2xx,
            else failing (L{WebhookFailed}, a connection error, or a
            timeout).
        """
        assert isinstance(alert, Alert)
        headers: dict[bytes | str, bytes | str] = {
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
        }
        headers.update(self.headers)
        d: Deferred[Any] = self._client.post(
            self.url,
            data=alert.to_json_bytes(),
            headers=headers,
            allow_redirects=False,
        )

        def answered(response: Any) -> Deferred[int]:
            # Read the body so that the connection is released either way.
            body = treq.content(response)
            code: int = response.code
            if 200 <= code < 300:
                return body.addCallback(lambda _: code)

            def fail(_: object) -> int:
                raise WebhookFailed(self.url, code, response.phrase)

            return body.addCallback(fail)

        d.addCallback(answered)
        d.addTimeout(self.timeout, IReactorTime(self._reactor))
        return d
