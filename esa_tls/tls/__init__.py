"""
Certificates and server-side TLS for esa_tls listeners (ESA C{certconfig}).

L{esa_tls.tls.certificates} loads and checks certificate files,
L{esa_tls.tls.demo} makes the insecure C{Demo} certificate every gateway has,
L{esa_tls.tls.server} builds the pyOpenSSL contexts a listener serves with,
and L{esa_tls.tls.store} ties them together as an
L{esa_tls.interfaces.ICertificateStore} that can be reloaded in service.
"""
