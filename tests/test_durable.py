"""
Whole-file durable writes.
"""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from esa_tls.durable import write_atomically


class WriteAtomicallyTests(SynchronousTestCase):
    def test_replaces(self) -> None:
        """
        The file holds the new bytes, has the asked mode, and no temporary
        file is left beside it.
        """
        directory = os.path.abspath(self.mktemp())
        path = os.path.join(directory, "sub", "key.pem")
        write_atomically(path, b"old")
        write_atomically(path, b"new", mode=0o600)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"new")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["key.pem"])

    def test_failureKeepsOld(self) -> None:
        """
        When the data cannot be written, the old file is untouched and no
        temporary file remains.
        """
        directory = os.path.abspath(self.mktemp())
        path = os.path.join(directory, "counter")
        write_atomically(path, b"1\n")
        self.assertRaises(TypeError, write_atomically, path, "not bytes")  # type: ignore[arg-type]
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"1\n")
        self.assertEqual(os.listdir(directory), ["counter"])
