"""
The C{twistd esa-tls} plugin.  Kept import-light: L{ServiceMaker} imports
L{esa_tls.tap} only when the plugin is used.
"""

from twisted.application.service import ServiceMaker

esaTLS = ServiceMaker(
    "esa-tls",
    "esa_tls.tap",
    "Mail gateway with Cisco ESA-style listeners, HAT and TLS controls",
    "esa-tls",
)
