"""
The Host Access Table (HAT): which sender group, and so which mail flow
policy, a connecting host belongs to.

L{esa_tls.hat.syntax} parses the ESA sender entries, L{esa_tls.hat.table}
evaluates a listener's sender groups, and L{esa_tls.hat.predefined} holds the
ESA's factory sender groups and policies.
"""
