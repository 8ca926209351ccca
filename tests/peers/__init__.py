"""
Harnesses that run real peers for interoperability tests: a Postfix
instance (L{tests.peers.postfix}), a DNS server (L{tests.peers.dns}) and
scripted SMTP servers that misbehave on purpose (L{tests.peers.hostile}).

Each harness binds 127.0.0.1 on port 0 and registers its own clean-up with
the test case, so tests stay independent under C{trial -j}.
"""
