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

The answer's body is read (so that the server sees a whole exchange) but
only up to L{MAX_ANSWER_BYTES}, and thrown away; a longer one fails the
hook, and so does the timeout, and either closes the connection: a broken
or hostile endpoint that streams without end must not fill our memory or
keep a connection open after we gave up on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from zope.interface import implementer

from esa_tls.alerts.alert import Alert
from esa_tls.interfaces import IAlertHook

__all__ = ["MAX_ANSWER_BYTES", "WebhookAlertHook", "WebhookFailed"]

_USER_AGENT = "esa_tls alert webhook"

#: The most of an answer's body the hook reads; a webhook answers with a
#: few bytes of status, if anything.
MAX_ANSWER_BYTES = 64 * 1024


class WebhookFailed(Exception):
    """
    The webhook answered with a status other than 2xx.

    @ivar code: the HTTP status.
    """

    def __init__(self, url: str, code: int, phrase: bytes, why: str = "") -> None:
        super().__init__(f"{url} answered {code} {phrase.decode('latin-1')}{why}")
        self.code = code


class _AnswerTooLong(Exception):
    pass


class _Discard(Protocol):
    """
    Reads an answer's body up to L{MAX_ANSWER_BYTES} and drops it; fires
    C{done} with C{None} at its end, or fails it with L{_AnswerTooLong}
    (closing the connection) past the limit.
    """

    def __init__(self, done: Deferred[None]) -> None:
        self.done = done
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > MAX_ANSWER_BYTES and not self.done.called:
            self.close()
            self.done.errback(_AnswerTooLong())

    def close(self) -> None:
        # The body's transport is Twisted's producer proxy, whose
        # stopProducing closes the connection.
        if self.transport is not None:
            IPushProducer(self.transport).stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


def _read_answer(response: IResponse) -> Deferred[None]:
    """
    Read and drop C{response}'s body (L{_Discard}); cancelling the
    L{Deferred} closes the connection.
    """
    protocol: list[_Discard] = []
    done: Deferred[None] = Deferred(lambda _: protocol[0].close())
    protocol.append(_Discard(done))
    response.deliverBody(protocol[0])
    return done


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
            code: int = response.code

            def read(_: object) -> int:
                if not 200 <= code < 300:
                    raise WebhookFailed(self.url, code, response.phrase)
                return code

            def too_long(failure: Failure) -> int:
                failure.trap(_AnswerTooLong)
                raise WebhookFailed(
                    self.url,
                    code,
                    response.phrase,
                    f", with an answer too long (over {MAX_ANSWER_BYTES} bytes)",
                )

            return _read_answer(response).addCallbacks(read, too_long)

        d.addCallback(answered)
        d.addTimeout(self.timeout, IReactorTime(self._reactor))
        return d
