"""Sets of ``.npy`` files written atomically under a JSON manifest, and read back memory-mapped.

An *entry* of a folder is a manifest ``<name>.json`` and the ``.npy`` files it
lists. The manifest is written last and holds a ``key`` (what the files were
made from); an entry is valid only when its manifest exists, its key equals
the one asked for, and every file it lists has the shape and dtype it says.
A writer first removes the old manifest, writes every file under a temporary
name (``.x.npy.<random>.tmp``), and only once all are complete and flushed to
disk moves them to their names (``os.replace``) and writes the manifest the
same way: an interrupted write (an exception, Ctrl-C, a full disk, a killed
process) leaves no valid entry, never one with some files old and some new.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Entry", "EntryWriter", "open_entry", "remove_entry"]

_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}  # a file system that cannot reserve space up front


class Entry(NamedTuple):
    """A valid entry: its manifest and its arrays, memory-mapped read-only."""

    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        """The arrays' size in bytes (their files are a header larger)."""
        return sum(a.nbytes for a in self.arrays.values())


def _manifest(folder: Path, name: str) -> Path:
    return folder / f"{name}.json"


def open_entry(folder: Path, name: str, key: dict[str, Any]) -> Entry | None:
    """The entry ``name`` of ``folder`` if it is valid for ``key``, else None (never an error)."""
    try:
        manifest = json.loads(_manifest(folder, name).read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or manifest.get("key") != key:
            return None
        arrays = {}
        for array, spec in manifest["files"].items():
            arr = np.load(folder / Path(spec["file"]).name, mmap_mode="r", allow_pickle=False)
            if arr.shape != tuple(spec["shape"]) or arr.dtype != np.dtype(spec["dtype"]):
                return None
            arrays[array] = arr
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing, damaged or foreign: not valid
        return None
    return Entry(manifest, arrays)


def remove_entry(folder: Path, name: str) -> None:
    """Make the entry invalid (its manifest goes first), then remove the files it lists."""
    path = _manifest(folder, name)
    try:
        files = json.loads(path.read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        files = {}
    path.unlink(missing_ok=True)
    for spec in files.values() if isinstance(files, dict) else ():
        with contextlib.suppress(OSError, TypeError, KeyError):
            (folder / Path(spec["file"]).name).unlink(missing_ok=True)


def _reserve(path: Path) -> None:
    """Allocate the file's blocks now: a full disk is an ``OSError`` here, not a SIGBUS while writing the map."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in _NO_FALLOCATE:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        os.close(fd)


def _temporary(folder: Path, file: str) -> Path:
    """A new temporary name for ``file`` in ``folder`` (created with the usual permissions, unlike mkstemp's 0600)."""
    return folder / f".{file}.{secrets.token_hex(8)}.tmp"


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = _temporary(path.parent, path.name)
    try:
        with tmp.open("x", encoding="utf-8") as f:
            json.dump(value, f, indent=1, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class EntryWriter:
    """Writes one entry atomically; use as a context manager, create arrays, fill them, then :meth:`commit`.

    Leaving the ``with`` block without a commit (an exception) removes the
    temporary files: the entry is then absent, as it was made invalid on
    entering.

    Example:
      >>> import tempfile
      >>> folder = Path(tempfile.mkdtemp())
      >>> with EntryWriter(folder, "demo") as w:
      ...     w.array("x", "x.npy", (2, 3), np.float32)[:] = 1.0
      ...     w.commit({"key": {"k": 1}})
      >>> open_entry(folder, "demo", {"k": 1}).arrays["x"].sum(), open_entry(folder, "demo", {"k": 2})
      (np.float32(6.0), None)
    """

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name = folder, name
        self._temporary: list[Path] = []  # removed if the entry is not committed
        self._arrays: dict[str, tuple[Path, str, np.memmap]] = {}  # array -> (temporary path, file name, map)

    def __enter__(self) -> EntryWriter:
        remove_entry(self.folder, self.name)
        return self

    def array(self, array: str, file: str, shape: tuple[int, ...], dtype: Any) -> np.memmap:
        """A new array of zeros, memory-mapped from a temporary file that :meth:`commit` renames to ``file``.

        The caller must not keep it past the commit (it is unmapped once
        nothing refers to it; a mapped file cannot be renamed on Windows).
        """
        tmp = _temporary(self.folder, file)
        tmp.touch(exist_ok=False)
        self._temporary.append(tmp)
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=shape)
        _reserve(tmp)
        self._arrays[array] = (tmp, file, arr)
        return arr

    def commit(self, manifest: dict[str, Any]) -> None:
        """Flush the arrays to disk, move them to their names, then write the manifest (with ``files`` added)."""
        files, moves = {}, []
        for array, (tmp, file, arr) in self._arrays.items():
            arr.flush()
            files[array] = {"file": file, "shape": list(arr.shape), "dtype": arr.dtype.str}
            moves.append((tmp, self.folder / file))
        self._arrays.clear()  # the writer's references to the maps go
        for tmp, final in moves:
            os.replace(tmp, final)
            self._temporary.remove(tmp)
        _write_json(_manifest(self.folder, self.name), {**manifest, "files": files})

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._arrays.clear()
        for tmp in self._temporary:
            tmp.unlink(missing_ok=True)
        self._temporary.clear()
