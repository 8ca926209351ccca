# -*- test-case-name: tests.test_alerts_hooks -*-
"""
The log hook: one JSON object per line in C{data_dir/logs/alerts.log}, for
log shippers and C{jq}.

The line is L{Alert.to_json}: C{time}, C{timestamp}, C{severity},
C{type}, C{kind}, C{subject}, C{body}, C{fields}, C{recipients}.  The file
is opened for each alert, so an external log rotation (rename, then a new
file) needs no signal to us.
"""

from __future__ import annotations

import os

from zope.interface import implementer

from esa_tls.alerts.alert import Alert
from esa_tls.interfaces import IAlertHook

__all__ = ["LogAlertHook", "alert_log_path"]


def alert_log_path(data_dir: str) -> str:
    """
    @return: C{data_dir/logs/alerts.log}.
    """
    return os.path.join(data_dir, "logs", "alerts.log")


@implementer(IAlertHook)
class LogAlertHook:
    """
    Appends alerts to a file, one JSON line each.

    @ivar path: the file.
    """

    name = "log"

    def __init__(self, path: str) -> None:
        """
        @param path: the log file; it and its directory are created on the
            first alert if missing.
        """
        self.path = path

    def alert(self, alert: object) -> None:
        """
        Append the line (one short write: done on the calling thread, as
        the mail log is).
        """
        assert isinstance(alert, Alert)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        # JSON escapes CR and LF inside strings: one alert is one line.
        with open(self.path, "ab") as f:
            f.write(alert.to_json_bytes() + b"\n")
