"""
The receiving side: listener factories and the hardened ESMTP session.
"""
