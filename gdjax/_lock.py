"""One run per checkpoint folder: an exclusive ``fcntl.flock`` on a lock file in it."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

fcntl: Any
try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, FolderLock does nothing
    fcntl = None


class CheckpointInUseError(ValueError):
    """The checkpoint folder is locked by another run (another process, or another call in this one)."""


class FolderLock:
    """An exclusive lock on a checkpoint folder for the length of a run: ``with FolderLock(folder): ...``.

    It is ``fcntl.flock`` on the file ``.gdjax-lock`` in the folder, which
    also records the holder's process id. The lock belongs to one open file
    description, so it keeps out another process and also a second
    ``FolderLock`` in the same process; the system drops it when the holding
    process dies, so a killed run leaves nothing to clean up. ``fit`` and
    ``sweep`` take one per call (a sweep's chunks share it). Where ``fcntl``
    is missing (Windows) it locks nothing.

    Raises:
      CheckpointInUseError: another run holds the folder.
      ValueError: the lock file cannot be opened.
    """

    NAME = ".gdjax-lock"

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._fd: int | None = None
        self.held = False

    def acquire(self) -> FolderLock:
        if self.held:
            raise RuntimeError(f"FolderLock({str(self.folder)!r}) is already held.")
        if fcntl is not None:
            self._fd = self._lock()
        self.held = True
        return self

    def _lock(self) -> int:
        folder = str(self.folder)
        try:
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(self.folder / self.NAME, flags, 0o644)  # never through a symbolic link: it is not ours
        except OSError as exc:
            if (self.folder / self.NAME).is_symlink():
                raise ValueError(
                    f"checkpoint folder {folder!r}: its lock file {self.NAME} is a symbolic link; gdjax does not "
                    f"write through it (it would empty the file it points to). Remove the link."
                ) from None
            raise ValueError(
                f"checkpoint folder {folder!r}: its lock file {self.NAME} cannot be opened ({exc}); "
                f"give a folder this process can write."
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError(f"checkpoint folder {folder!r}: {self.NAME} is not a regular file; remove it.")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
                who = f"process {pid}" if pid.isdigit() else "a process that has not recorded its id yet"
                if pid == str(os.getpid()):
                    who = f"another call in this process, {pid}"
                raise CheckpointInUseError(
                    f"checkpoint folder {folder!r} is in use by another run ({who}, which holds its lock file "
                    f"{self.NAME}). Wait for that run to end or stop it, or give this run another folder."
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def release(self) -> None:
        fd, self._fd, self.held = self._fd, None, False
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
