"""Checkpoints: atomic save and restore of state pytrees, no pickle.

A checkpoint is one ``.npz`` file: the pytree's leaves as arrays named
``leaf_00000``, ``leaf_00001``, ... and a JSON document (stored as a byte
array) with the tree's structure, each leaf's shape and dtype, and whatever
metadata the caller adds. Writing goes to a temporary file in the same folder,
flushed to disk, then ``os.replace``-d into place, so a process killed at any
moment leaves either the previous checkpoint or the new one, never a torn
file. Reading never unpickles and never trusts the file: it opens the zip
with :mod:`zipfile`, checks each member's ``.npy`` header against the
member's real size before reading any data (a damaged header cannot make it
allocate more than the file holds), lets the zip's CRC-32 check every byte,
and checks the JSON description field by field; anything unreadable or
inconsistent is a :class:`CheckpointError`. The tree is rebuilt from a
template of the expected structure, checking that every leaf matches.

:class:`Checkpointer` is what ``fit(..., checkpoint=DIR)`` and
``sweep(..., checkpoint=DIR)`` use: it names files by epoch, keeps the newest
few, skips damaged files and entries that are not regular files, and refuses
a folder written by a different run configuration. :class:`FolderLock` keeps
two runs out of one folder. :func:`load` reads a run back from its folder
without the code that trained it (each file records its leaves' paths and
the run's layout).

Example:
  >>> import tempfile, pathlib, jax.numpy as jnp
  >>> from gdjax import checkpoint
  >>> path = pathlib.Path(tempfile.mkdtemp()) / "state.npz"
  >>> checkpoint.save(path, {"w": jnp.arange(3.0)}, {"note": "hi"})
  >>> tree, meta = checkpoint.restore(path, {"w": jnp.zeros(3)})
  >>> tree["w"].tolist(), meta["note"]
  ([0.0, 1.0, 2.0], 'hi')
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from gdjax._checkpoint_files import ANY, checkpoint_files, run_metadata
from gdjax._digest import digest, function_digest
from gdjax._load import Loaded, load
from gdjax._lock import CheckpointInUseError, FolderLock
from gdjax._npz import CheckpointError, CheckpointMismatchError, read_metadata, restore, save
from gdjax._types import PyTree, x64_enabled

__all__ = [
    "CheckpointError",
    "CheckpointInUseError",
    "CheckpointMismatchError",
    "Checkpointer",
    "FolderLock",
    "Loaded",
    "digest",
    "environment",
    "function_digest",
    "load",
    "read_metadata",
    "restore",
    "save",
]


def environment() -> dict[str, str]:
    """The versions and backend that results depend on, for summaries and checkpoints."""
    import optax

    from gdjax import __version__

    return {
        "gdjax": __version__,
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", jax.__version__),
        "optax": optax.__version__,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "devices": str(jax.device_count()),
        "x64": str(x64_enabled()),
    }


@contextlib.contextmanager
def holding(checkpointers: Sequence[Checkpointer | None]) -> Iterator[None]:
    """Hold the lock of the checkpointers' folder (one for all of them) for the block.

    Under the lock, each checkpointer first checks that the folder holds no
    other run's checkpoints (:meth:`Checkpointer.check_folder`). Without
    checkpointers (``[None]``) it does nothing.
    """
    ckpts = [c for c in checkpointers if c is not None]
    if not ckpts:
        yield
        return
    if len({c.folder for c in ckpts}) != 1:
        raise ValueError("holding() takes checkpointers of one folder.")
    if not ckpts[0].writer:  # across processes the run's first process holds the lock and writes; others read
        for c in ckpts:
            c.check_folder()
        yield
        return
    with FolderLock(ckpts[0].folder) as lock:
        try:
            for c in ckpts:
                c.lock = lock
            for c in ckpts:
                c.check_folder()
            yield
        finally:
            for c in ckpts:
                c.lock = None


def _differences(theirs: Any, ours: Any, name: str = "") -> list[str]:
    """``name: X there, Y now`` for each differing setting, nested dicts by their differing keys; the kind first."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        keys = sorted(set(theirs) | set(ours), key=lambda k: (k != "kind", k))
        return [d for k in keys for d in _differences(theirs.get(k), ours.get(k), f"{name}.{k}" if name else k)]
    return [] if theirs == ours else [f"{name}: {theirs!r} there, {ours!r} now"]


class Checkpointer:
    """Checkpoints of one run in a folder: ``{prefix}epoch-00000012.npz``, the newest ``keep`` kept.

    Args:
      folder: where the files go (created if needed).
      settings: a JSON-able description of the run; a checkpoint is only
        resumed by a run with equal settings.
      every: save every this many epochs (and at the end).
      keep: how many of the newest checkpoints to keep.
      prefix: file name prefix (a sweep uses one per chunk of members).

    Files that cannot be read or are inconsistent, and entries that are not
    regular files (folders, FIFOs), are skipped: :meth:`restore` falls back to
    the checkpoint before. Temporary files left by a killed process are only
    deleted while :attr:`lock` (a held :class:`FolderLock`) shows that no other
    run writes here; see :func:`holding`.

    Raises:
      ValueError: ``folder`` is a file, or cannot be created or written.
    """

    def __init__(
        self, folder: str | os.PathLike, settings: dict[str, Any], *, every: int, keep: int = 2, prefix: str = ""
    ) -> None:
        self.folder = Path(folder)
        self.settings = json.loads(json.dumps(settings, sort_keys=True))
        self.every, self.keep, self.prefix = every, keep, prefix
        self.lock: FolderLock | None = None
        #: False in the processes of a run over several that only read: the first one writes (see :func:`holding`).
        self.writer = True
        self._prepare()

    def _prepare(self) -> None:
        """Create the folder and try writing in it now, not after the first epochs of training."""
        name = str(self.folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"checkpoint={name!r} is a file; give a folder.")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(
                f"checkpoint={name!r} cannot be created ({exc}); give a folder path this process can create."
            ) from None
        try:
            fd, probe = tempfile.mkstemp(prefix=".gdjax-probe-", dir=self.folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ValueError(
                f"checkpoint={name!r} cannot be written ({exc}); give a folder this process can write."
            ) from None

    def _files(self, prefix: str | None = None) -> list[tuple[int, Path]]:
        """Checkpoint files with ``prefix`` (default this run's; ``ANY`` for every run's), oldest first.

        Entries that are not regular files are left out.
        """
        return checkpoint_files(self.folder, re.escape(self.prefix) if prefix is None else prefix)

    #: A pattern for the prefix of any run's checkpoints: a fit's (none) or a sweep chunk's.
    ANY = ANY

    def check_folder(self) -> None:
        """Raise ValueError if the folder holds checkpoints of another configuration.

        Every run's files count, not only this prefix's: a fit is refused a
        folder holding a sweep's chunks, and the other way round.
        """
        newest: dict[str, tuple[int, Path]] = {}
        for epoch, path in self._files(self.ANY):
            newest[path.name[: -len("epoch-00000000.npz")]] = (epoch, path)
        for prefix in sorted(newest, key=lambda p: p != self.prefix):
            for epoch, path in reversed(self._files(re.escape(prefix))):
                try:
                    meta = self._run_metadata(path, epoch, read_metadata(path))
                except CheckpointError:
                    continue  # damaged: restore() falls back past it too
                self._check(path, meta)
                break

    #: The metadata :meth:`save` wrote, checked (a CheckpointError, so damaged, where it is not).
    _run_metadata = staticmethod(run_metadata)

    def _check(self, path: Path, meta: dict[str, Any]) -> None:
        theirs = {"processes": 1, "devices": 1, **meta["settings"]}  # written before fits recorded them: one
        if theirs != self.settings:
            diffs = [d for d in _differences(theirs, self.settings) if not d.startswith("loss_fn_digest:")]
            if theirs.get("loss_fn_digest") != self.settings.get("loss_fn_digest") and not any(
                d.startswith("loss_fn:") for d in diffs
            ):
                diffs.insert(
                    0,
                    f"loss_fn: {self.settings.get('loss_fn')!r} has the name of the loss there but other code, "
                    f"defaults or captured values"
                    + ("" if "loss_fn_digest" in theirs else " (or the folder predates loss digests)"),
                )
            raise ValueError(
                f"checkpoint folder {str(self.folder)!r} holds a run with other settings ({'; '.join(diffs[:4])}"
                f"{'; ...' if len(diffs) > 4 else ''}). Use another folder, or delete it to start again."
            )

    def restore(self, like: PyTree | Callable[[int, dict[str, Any]], PyTree]) -> tuple[PyTree, dict] | None:
        """The newest readable checkpoint in the structure of ``like`` and its metadata, or None if there is none.

        ``like`` may be a function of the checkpoint's epoch and metadata that
        returns the structure (a run's saved history grows with its epochs).
        """
        for epoch, path in reversed(self._files()):
            try:  # the name's epoch must be the one inside, or the expected structure is another's
                found = self._run_metadata(path, epoch, read_metadata(path))
                tree, meta = restore(path, like(epoch, found) if callable(like) else like)
            except CheckpointMismatchError as exc:
                raise ValueError(
                    f"{exc} The run's parameters or settings changed in a way the recorded settings do not show "
                    f"(a function recorded by name only?). Use another folder, or delete this one to start again."
                ) from None
            except CheckpointError as exc:
                self._set_aside(path, exc)  # a damaged file (not written by save): fall back to the one before
                continue
            self._check(path, meta)
            return tree, meta
        return None

    def _set_aside(self, path: Path, exc: Exception) -> None:
        """Rename a damaged checkpoint to ``*.damaged`` (kept, never read again) and warn.

        Left in place, it would stay "newest" and the clean-up after the next
        save would delete the new, good checkpoints instead.
        """
        aside = path.with_name(path.name + ".damaged")
        try:
            os.replace(path, aside)
            where = f"renamed to {aside.name}"
        except OSError:
            where = "left in place (it could not be renamed)"
        warnings.warn(
            f"checkpoint {path} is damaged and was skipped ({str(exc).split('; delete it')[0]}); {where}. The run "
            f"resumes from the checkpoint "
            f"before it, or from the start if there is none.",
            RuntimeWarning,
            stacklevel=3,
        )

    def save(self, tree: PyTree, epoch: int, extra: dict[str, Any] | None = None) -> Path | None:
        """Write the checkpoint of ``epoch`` and drop all but the newest ``keep``; returns its path.

        Where something that is not a regular file (a folder, a FIFO) has the
        checkpoint's name, nothing is written (a RuntimeWarning says so; the
        run goes on, and a resumed run starts from the checkpoint before) and
        None is returned.
        """
        path = self.folder / f"{self.prefix}epoch-{epoch:08d}.npz"
        if path.exists() and not path.is_file():
            warnings.warn(
                f"checkpoint {path} not written: something that is not a regular file has its name. "
                f"Remove it to have this epoch saved.",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        save(path, tree, {"settings": self.settings, "epoch": epoch, "environment": environment(), **(extra or {})})
        for _, old in self._files()[: -self.keep]:
            with contextlib.suppress(OSError):  # clean-up only: a file that cannot go stays
                old.unlink(missing_ok=True)
        if self.lock is not None and self.lock.held:  # no other run writes here: temporaries are stale
            self._remove_stale()
        return path

    def _remove_stale(self) -> None:
        """Delete the temporary files a process killed mid-write left (regular files only)."""
        start = f".{self.prefix}epoch-"
        with contextlib.suppress(OSError), os.scandir(self.folder) as entries:
            for e in entries:
                if e.name.startswith(start) and e.name.endswith(".tmp") and e.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(e.path)
