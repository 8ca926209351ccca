"""
Outbound delivery: from a queued message to the recipient's mail exchanger,
never in the clear where the destination's TLS setting forbids it.

The pieces, each in its own module:

  - L{esa_tls.outbound.mx}: where to connect (SMTP routes, MX, implicit MX,
    null MX) on C{twisted.names}.
  - L{esa_tls.outbound.policy}: which Destination Controls row governs a
    domain and its effective TLS setting.
  - L{esa_tls.outbound.verify}: the ESA Verify and Hosted Verify name rules.
  - L{esa_tls.outbound.tlscontext}: the client TLS connection creator that
    records certificate chain problems instead of failing the handshake, so
    that the TLS setting, not OpenSSL, decides what happens next.
  - L{esa_tls.outbound.dotstuff}: the DATA encoder (CRLF and dot-stuffing
    across any chunk boundary).
  - L{esa_tls.outbound.client}: the hardened C{ESMTPSender} that enforces one
    TLS setting on one connection.
  - L{esa_tls.outbound.attempt}: one delivery attempt of one message to one
    domain, host by host; L{esa_tls.outbound.result} holds what it returns.
  - L{esa_tls.outbound.queue}: the queue manager over the durable spool
    (limits, retries, give-up), with L{esa_tls.outbound.dsn} for bounces.
  - L{esa_tls.outbound.probe}: C{tlsverify}, a delivery that stops before
    MAIL FROM and explains what it saw.
"""
