"""
What OpenSSL's certificate verification errors mean, in words.

Both directions report them: the listener when a client certificate fails
(C{ICID n TLS failed} lines), the delivery client when a server's chain
does (C{DCID n TLS failed}, alerts).  One table, so that the same failure
reads the same in the inbound and the outbound lines.
"""

from __future__ import annotations

__all__ = ["VERIFY_ERROR_TEXTS"]

#: C{X509_V_ERR_*} number to OpenSSL's own text for it, for the errors a
#: mail gateway meets; callers word the rest themselves.
VERIFY_ERROR_TEXTS: dict[int, str] = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
    27: "certificate not trusted",
    28: "certificate rejected",
}
