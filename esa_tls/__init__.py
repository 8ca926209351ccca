"""
esa_tls: Cisco ESA-style mail gateway TLS controls for Twisted.

Named listeners, a Host Access Table of sender groups and mail flow policies,
inbound TLS set to No / Preferred / Required, certificates (with an insecure
demonstration certificate), and outbound delivery that enforces each
destination domain's TLS requirement.
"""

__version__ = "0.1.0"
