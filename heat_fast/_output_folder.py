"""One run per output folder: an exclusive lock held for the life of a run.

:func:`claim` creates the folder if needed and takes an exclusive POSIX record lock
(``lockf``) on ``FOLDER/.heat-fast.lock``, which records who holds it (command, pid, host,
start time). A second run, in another process or this one, is refused with
:class:`OutputFolderError` naming the holder. The kernel drops the lock when its process
ends however it ends, and forked children (data-loader workers) do not inherit it, so a lock
file left by a killed run is taken over at once, with a note. :meth:`Claim.remove_stale_temp_files` deletes the temporary files
of saves a killed run left behind (safe only while holding the lock). :meth:`Claim.release`
removes the lock file (and the folder, when the claim created it and nothing was written).
Needs ``fcntl`` (POSIX).
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import os
import re
import socket
from pathlib import Path
from typing import Optional, Set, Tuple, Union

from heat_fast._files import TEMP_SUFFIX

LOCK_NAME = ".heat-fast.lock"
_TEMP_FILE = re.compile(r"^\..+\.\d+" + re.escape(TEMP_SUFFIX) + "$")
# (device, inode) of the lock files this process holds: a POSIX lock is the process's, so a
# second claim here would succeed, and closing its file would drop the first claim's lock
_HELD: Set[Tuple[int, int]] = set()


class OutputFolderError(ValueError):
    """An output folder cannot be used: a file, not writable, or in use by another run."""


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


def _create(folder: Path, flag: str) -> bool:
    """Make ``folder`` (and its parents); True when it did not exist before."""
    existed = folder.is_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputFolderError(f"{flag} {folder} is a file, not a folder: choose another "
                                f"{flag}") from None
    except NotADirectoryError:
        raise OutputFolderError(f"{flag} {folder}: a part of that path is a file, not a folder: "
                                f"choose another {flag}") from None
    except OSError as error:
        raise OutputFolderError(f"cannot create {flag} {folder} ({_reason(error)}): choose a "
                                f"folder you can write, or fix its permissions") from None
    return not existed


class Claim:
    """The lock on an output folder; :meth:`release` gives it up."""

    def __init__(self, folder: Path, fd: int, created: bool, taken_over: Optional[str]):
        self.folder, self._fd, self._created = folder, fd, created
        self.taken_over = taken_over  # who held the lock before, when its run was killed
        stat = os.fstat(fd)
        self._key = (stat.st_dev, stat.st_ino)
        _HELD.add(self._key)

    @property
    def note(self) -> Optional[str]:
        """A line for the user when a dead run's lock was taken over, else None."""
        if self.taken_over is None:
            return None
        return (f"note: {self.folder} was still locked by {self.taken_over}, which is no longer "
                "running (killed or crashed); took the lock over")

    def remove_stale_temp_files(self) -> Optional[str]:
        """Delete the temporary files (``.NAME.PID.tmp``) that atomic writes of a killed
        process left in the folder; return a note naming them, or None."""
        removed = [p for p in sorted(self.folder.iterdir())
                   if _TEMP_FILE.match(p.name) and p.is_file()]
        for path in removed:
            path.unlink(missing_ok=True)
        if not removed:
            return None
        return (f"note: removed {len(removed)} temporary file(s) that an interrupted save left "
                f"in {self.folder}: {', '.join(p.name for p in removed)}")

    def release(self) -> None:
        """Remove the lock file and unlock; remove the folder if this claim created it and it
        is empty. Safe to call twice."""
        if self._fd < 0:
            return
        try:
            (self.folder / LOCK_NAME).unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = -1
            _HELD.discard(self._key)
        if self._created:
            try:
                self.folder.rmdir()
            except OSError:  # it holds files now: the run wrote them
                pass

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *_exc) -> None:
        self.release()


def _holder_line(command: str) -> str:
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"{command} (pid {os.getpid()} on {socket.gethostname()}, started {started})"


def _busy(folder: Path, flag: str, holder: str) -> OutputFolderError:
    return OutputFolderError(f"{flag} {folder} is in use by another run: {holder or 'unknown'}; "
                             f"wait for it to finish, or choose another {flag}")


def _open_lock(path: Path, folder: Path, flag: str) -> int:
    try:
        stat = path.stat()
    except OSError:
        pass
    else:
        if (stat.st_dev, stat.st_ino) in _HELD:
            raise _busy(folder, flag, path.read_text(errors="replace").strip())
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise OutputFolderError(f"cannot write in {flag} {folder} ({_reason(error)}): choose a "
                                "folder you can write, or fix its permissions") from None


def claim(folder: Union[str, os.PathLike], command: str, flag: str = "--out") -> Claim:
    """Create ``folder`` if needed and lock it for this process (module docstring).
    ``command`` (e.g. "heat-fast train") is recorded for a refused second run; ``flag``
    names the option in messages. Raises :class:`OutputFolderError`."""
    folder = Path(folder)
    created = _create(folder, flag)
    path, fd = folder / LOCK_NAME, -1
    try:
        while True:
            fd = _open_lock(path, folder, flag)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
                os.close(fd)
                fd = -1
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise OutputFolderError(f"cannot lock {flag} {folder} "
                                            f"({_reason(error)})") from None
                raise _busy(folder, flag, holder) from None
            try:
                same_file = os.fstat(fd).st_ino == path.stat().st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(fd)  # the holder removed the file between our open and lock: retry
            fd = -1
        previous = os.read(fd, 4096).decode("utf-8", "replace").strip() or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (_holder_line(command) + "\n").encode("utf-8"), 0)
        os.fsync(fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if created:
            path.unlink(missing_ok=True)
            folder.rmdir()
        raise
    return Claim(folder, fd, created, previous)
