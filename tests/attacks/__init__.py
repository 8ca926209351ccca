"""
The attack suite (issue 8, inbound half): hostile clients against a real
listener over real loopback sockets, each attack a test that fails if the
defence it targets is removed.  See C{docs/SECURITY.md} for the threat model
and the guarantee each test holds.
"""
