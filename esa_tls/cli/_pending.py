# -*- test-case-name: tests.test_cli_commit -*-
"""
Pending changes and C{commit}: how an edit reaches the configuration file.

The ESA keeps every change pending until C{commit}, so an administrator can
make several related changes (a new certificate, then the listener that uses
it, then TLS on) and have the gateway see them all at once or not at all.
Here the pending copy is the whole TOML text, kept in memory by the
interactive shell and in C{FILE.pending} next to the file between direct
invocations (C{esa-tls --config F listenerconfig} now, C{esa-tls --config F
commit} later).

The pending file's first line records a digest of the configuration file it
was made from.  If the file changed since (edited by hand, or another
administrator committed), committing the pending copy would silently undo
that change, so it is refused until the administrator C{clear}s it.

Committing validates the whole text with the gateway's own loader, then
replaces the file atomically (a temporary file, C{fsync}, C{rename}, then an
C{fsync} of the directory), keeping the previous file as C{FILE.bak}: after
a crash at any moment the file is either the old one or the new one, never a
mix, and the old one can be restored by hand.  The new file, the backup
and the pending file keep the file's mode, owner and group.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import stat
from datetime import UTC, datetime

from attrs import frozen

from esa_tls.config.defaults import DEFAULT_CONFIG
from esa_tls.config.errors import ConfigError
from esa_tls.config.load import LoadResult, parse_config_with_warnings
from esa_tls.durable import fsync_directory, write_atomically

__all__ = [
    "CommitResult",
    "PendingConfig",
    "PendingError",
]

_HEADER = re.compile(r"# esa-tls pending changes \(base (?P<digest>[0-9a-f]{64}|none)\)")
_NO_FILE = "none"


class PendingError(Exception):
    """
    The pending changes cannot be used; C{str()} tells the administrator
    what to do.
    """


def _digest(data: bytes | None) -> str:
    return _NO_FILE if data is None else hashlib.sha256(data).hexdigest()


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


@frozen
class CommitResult:
    """
    What a commit did.

    @ivar committed: whether the file was written (C{False}: there was
        nothing to commit).
    @ivar when: the time of the commit.
    @ivar backup: the backup of the previous file, if there was one.
    @ivar loaded: the validated configuration and its warnings.
    """

    committed: bool
    when: datetime
    backup: str | None = None
    loaded: LoadResult | None = None


class PendingConfig:
    """
    The configuration text with the changes not committed yet.

    @ivar path: the configuration file.
    @ivar pending_path: where pending changes wait between invocations.
    @ivar text: the configuration text including pending changes.
    @ivar base_text: the text of the configuration file the pending changes
        were made from (the embedded default when the file does not exist
        yet).
    @ivar loaded_from_disk: whether pending changes from an earlier
        invocation were found in L{pending_path}.
    """

    def __init__(self, path: str, base: bytes | None, text: str, loaded_from_disk: bool) -> None:
        self.path = path
        self.pending_path = path + ".pending"
        self.base_digest = _digest(base)
        self.base_text = DEFAULT_CONFIG if base is None else base.decode("utf-8")
        self.exists = base is not None
        self.text = text
        self.loaded_from_disk = loaded_from_disk
        #: The digest of L{pending_path} as this copy last read or wrote it
        #: (L{_NO_FILE}: there was none), to notice another command's save.
        self.pending_digest = _NO_FILE

    @classmethod
    def open(cls, path: str) -> PendingConfig:
        """
        The configuration C{path} with the changes pending for it.

        @raise PendingError: the pending changes were made from a different
            version of the file, or the file cannot be read.
        """
        try:
            base = _read(path)
        except OSError as e:
            raise PendingError(f"cannot read {path}: {e.strerror}") from e
        if base is not None:
            try:
                base.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PendingError(f"{path} is not UTF-8 text (TOML is UTF-8)") from e
        self = cls(path, base, "", False)
        self.text = self.base_text
        try:
            pending = _read(self.pending_path)
        except OSError as e:
            raise PendingError(f"cannot read {self.pending_path}: {e.strerror}") from e
        if pending is None:
            return self
        self.pending_digest = _digest(pending)
        first, _, rest = pending.decode("utf-8", "replace").partition("\n")
        match = _HEADER.match(first)
        if match is None:
            raise PendingError(
                f"{self.pending_path} is not a pending-changes file of esa-tls; "
                "remove it or run 'clear'"
            )
        if match.group("digest") != self.base_digest:
            raise PendingError(
                f"{path} has changed since the pending changes in {self.pending_path} "
                "were made; committing them would undo that change.  Run 'clear' "
                "to discard them, then make them again."
            )
        self.text = rest
        self.loaded_from_disk = True
        return self

    @property
    def changed(self) -> bool:
        """
        Whether there is anything to commit.
        """
        return self.text != self.base_text

    @property
    def base_dir(self) -> str:
        """
        The directory relative paths in the file are relative to.
        """
        return os.path.dirname(os.path.abspath(self.path))

    def validate(self, text: str | None = None) -> LoadResult:
        """
        Validate the pending text (or C{text}) with the gateway's loader, as
        if it were the file.

        @raise esa_tls.config.errors.ConfigError: listing every fault.
        """
        return parse_config_with_warnings(
            self.text if text is None else text, self.path, self.base_dir
        )

    def save(self) -> None:
        """
        Keep the pending changes in L{pending_path} for a later invocation;
        remove that file when there are none.
        """
        self.check_not_overtaken()
        if not self.changed:
            self.forget()
            return
        header = f"# esa-tls pending changes (base {self.base_digest})\n"
        data = (header + self.text).encode("utf-8")
        write_atomically(self.pending_path, data, self._mode(), self._owner())
        self.pending_digest = _digest(data)
        self.loaded_from_disk = True

    def check_not_overtaken(self) -> None:
        """
        Refuse to write over pending changes another command saved since
        this copy read them: a dialog in one terminal and C{set} in another
        would otherwise keep only the last one's changes, silently.  (The
        window between this check and the write is a few system calls; the
        one it closes lasts as long as a dialog.)

        @raise PendingError: L{pending_path} is not what this copy last
            read or wrote.
        """
        try:
            now = _digest(_read(self.pending_path))
        except OSError as e:
            raise PendingError(f"cannot read {self.pending_path}: {e.strerror}") from e
        if now != self.pending_digest:
            raise PendingError(
                f"{self.pending_path} was changed by another esa-tls command while this one "
                "ran; this one's changes were not kept, so as not to undo those.  Look at "
                "the pending changes ('esa-tls --config FILE cli'), then make yours again."
            )

    def forget(self) -> None:
        """
        Remove L{pending_path} if it exists and holds what this copy last
        read or wrote: pending changes another command saved since are
        left alone (L{discard} drops them too).
        """
        try:
            if _digest(_read(self.pending_path)) != self.pending_digest:
                return
        except OSError:
            return
        self._unlink()

    def _unlink(self) -> None:
        self.pending_digest = _NO_FILE
        try:
            os.unlink(self.pending_path)
        except FileNotFoundError:
            return
        fsync_directory(self.base_dir)

    def discard(self) -> bool:
        """
        Drop the pending changes, in memory and on disk.

        @return: whether there were any.
        """
        had = self.changed or os.path.exists(self.pending_path)
        self.text = self.base_text
        self._unlink()
        self.loaded_from_disk = False
        return had

    def _mode(self) -> int:
        try:
            return stat.S_IMODE(os.stat(self.path).st_mode)
        except OSError:
            return 0o644

    def _owner(self) -> tuple[int, int] | None:
        """
        The owner and group of the file, for what is written in its place:
        after C{sudo esa-tls commit} the gateway, running as its own user,
        must still be able to read it at the reload.
        """
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_uid, info.st_gid

    def commit(self, comment: str = "") -> CommitResult:
        """
        Validate the pending text and make it the configuration file.

        @param comment: why; recorded with the time, the user and the digest
            in C{FILE.history}.
        @raise esa_tls.config.errors.ConfigError: the pending text is not a
            valid configuration, or a certificate a listener serves fails
            validation; nothing was written.
        @raise PendingError: the file changed since the pending changes were
            made, or another command saved pending changes since this copy
            read them; nothing was written.
        """
        now = datetime.now(UTC)
        current = _read(self.path)
        if _digest(current) != self.base_digest:
            raise PendingError(
                f"{self.path} has changed since these changes were started; "
                "nothing was committed.  Run 'clear' and make the changes again."
            )
        self.check_not_overtaken()
        if not self.changed:
            self.forget()
            return CommitResult(False, now)
        loaded = self.validate()
        # As the gateway would at start-up or reload: a certificate a
        # listener serves must pass validation.
        from esa_tls.tls.store import certificate_faults

        faults = certificate_faults(loaded.config, self.text)
        if faults:
            raise ConfigError(faults)
        target = os.path.realpath(self.path)
        mode, owner = self._mode(), self._owner()
        backup = None
        if current is not None:
            backup = self.path + ".bak"
            write_atomically(backup, current, mode, owner)
        data = self.text.encode("utf-8")
        write_atomically(target, data, mode, owner)
        self.forget()
        self._record(now, data, comment)
        self.base_digest = _digest(data)
        self.base_text = self.text
        self.exists = True
        self.loaded_from_disk = False
        return CommitResult(True, now, backup, loaded)

    def _record(self, when: datetime, data: bytes, comment: str) -> None:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        line = (
            f"{when.strftime('%Y-%m-%dT%H:%M:%SZ')} user={user} "
            f"sha256={_digest(data)} comment={' '.join(comment.split())}\n"
        )
        with open(self.path + ".history", "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
