# -*- test-case-name: tests.test_config_defaults -*-
"""
The configuration used when none is given (issue 2: a contract).

It is kept as TOML text, parsed by the same loader as any file, so that the
default can never drift from what a file may say, and so that it can be
shown to an administrator as a starting point for a real file.

What it sets up is the ESA's out-of-the-box state on a loopback address:
one public listener C{InboundMail} on 127.0.0.1 port 2525, accepting mail for
C{example.com}, with the predefined sender groups and policies, the Demo
certificate, and TLS off (the ESA default).  The host name is the machine's
own (the loader's default when C{[system] hostname} is absent); data goes to
C{./var}.
"""

from __future__ import annotations

DEFAULT_CONFIG = """\
# esa-tls embedded default configuration.
# Copy it to a file, edit, and start with `twistd -n esa-tls --config FILE`.

[system]
# hostname defaults to this machine's fully qualified name.
data_dir = "var"

[interfaces.Loopback]
address = "127.0.0.1/8"

[listeners.InboundMail]
type = "public"
interface = "Loopback"
port = 2525
protocol = "SMTP"
default_domain = ""
max_concurrency = 1000
tcp_queue = 50
domain_map = false
certificate = "Demo"
rat = ["example.com"]

# No [listeners.InboundMail.policies.*] and no [[listeners.InboundMail.hat]]:
# the ESA predefined sender groups and policies apply, TLS off.
"""
