"""Checkpoints: atomic save and restore of state pytrees, no pickle.

A checkpoint is one ``.npz`` file: the pytree's leaves as arrays named
``leaf_00000``, ``leaf_00001``, ... and a JSON document (stored as a byte
array) with the tree's structure, each leaf's shape and dtype, and whatever
metadata the caller adds. Writing goes to a temporary file in the same folder,
flushed to disk, then ``os.replace``-d into place, so a process killed at any
moment leaves either the previous checkpoint or the new one, never a torn
file. Reading uses ``numpy.load(allow_pickle=False)`` and rebuilds the tree
from a template of the expected structure, checking that every leaf matches.

:class:`Checkpointer` is what ``fit(..., checkpoint=DIR)`` and
``sweep(..., checkpoint=DIR)`` use: it names files by epoch, keeps the newest
few, and refuses a folder written by a different run configuration.

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

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["CheckpointError", "CheckpointMismatchError", "Checkpointer", "environment", "restore", "save"]

PyTree = Any
_META = "__meta__"
_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (a damaged or foreign file)."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint whose structure, shapes or dtypes differ from what is expected."""


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
        "x64": str(bool(jax.config.jax_enable_x64)),
    }


def _to_host(leaf: Any) -> np.ndarray:
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        raise TypeError("checkpoints do not store typed PRNG keys in the state; store jax.random.key_data(key).")
    return np.asarray(jax.device_get(leaf))


def save(path: str | os.PathLike, tree: PyTree, metadata: dict[str, Any] | None = None) -> None:
    """Write ``tree`` (and JSON-able ``metadata``) to ``path`` atomically.

    Raises:
      TypeError: a leaf is not an array of numbers, or ``metadata`` is not JSON-able.
    """
    path = Path(path)
    leaves, treedef = jax.tree.flatten(tree)
    arrays = {f"leaf_{i:05d}": _to_host(x) for i, x in enumerate(leaves)}
    meta = {
        "format": _FORMAT,
        "treedef": str(treedef),
        "leaves": [[list(a.shape), str(a.dtype)] for a in arrays.values()],
        "metadata": metadata or {},
    }
    arrays[_META] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata stored with a checkpoint, without loading its arrays."""
    return _load(Path(path))[1]["metadata"]


def _load(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(bytes(arrays.pop(_META)).decode())
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc}); delete it to start again.") from exc
    if meta.get("format") != _FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')}, not {_FORMAT}.")
    return arrays, meta


def restore(path: str | os.PathLike, like: PyTree) -> tuple[PyTree, dict[str, Any]]:
    """Read a checkpoint into the structure of ``like``; returns ``(tree, metadata)``.

    Raises:
      CheckpointError: unreadable, or its structure, shapes or dtypes differ from ``like``'s.
    """
    path = Path(path)
    arrays, meta = _load(path)
    leaves, treedef = jax.tree.flatten(like)
    if meta["treedef"] != str(treedef) or len(arrays) != len(leaves):
        raise CheckpointMismatchError(
            f"checkpoint {path} holds a different structure: {meta['treedef']} with {len(arrays)} leaves, "
            f"expected {treedef} with {len(leaves)}."
        )
    out = []
    for i, leaf in enumerate(leaves):
        a = arrays[f"leaf_{i:05d}"]
        stored = np.dtype(jax.numpy.dtype(meta["leaves"][i][1]))
        if a.dtype != stored and a.dtype.itemsize == stored.itemsize:
            a = a.view(stored)  # numpy keeps bfloat16 and friends as raw bytes ('V2'): view them back
        want = (tuple(np.shape(leaf)), np.dtype(leaf.dtype))
        if (a.shape, a.dtype) != want:
            raise CheckpointMismatchError(
                f"checkpoint {path}: leaf {i} is {a.dtype}{list(a.shape)}, expected {want[1]}{list(want[0])}."
            )
        sharding = getattr(leaf, "sharding", None)
        out.append(jax.device_put(a, sharding) if sharding is not None else a)
    return jax.tree.unflatten(treedef, out), meta["metadata"]


def digest(tree: PyTree) -> str:
    """A SHA-256 of a pytree's structure, shapes, dtypes and bytes."""
    h = hashlib.sha256()
    leaves, treedef = jax.tree.flatten(tree)
    h.update(str(treedef).encode())
    for leaf in leaves:
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        a = np.ascontiguousarray(jax.device_get(leaf))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class Checkpointer:
    """Checkpoints of one run in a folder: ``{prefix}epoch-00000012.npz``, the newest ``keep`` kept.

    Args:
      folder: where the files go (created if needed).
      settings: a JSON-able description of the run; a checkpoint is only
        resumed by a run with equal settings.
      every: save every this many epochs (and at the end).
      keep: how many of the newest checkpoints to keep.
      prefix: file name prefix (a sweep uses one per chunk of members).
    """

    def __init__(
        self, folder: str | os.PathLike, settings: dict[str, Any], *, every: int, keep: int = 2, prefix: str = ""
    ) -> None:
        self.folder = Path(folder)
        self.settings = json.loads(json.dumps(settings, sort_keys=True))
        self.every, self.keep, self.prefix = every, keep, prefix
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"checkpoint={str(self.folder)!r} is a file; give a folder.")

    def _files(self) -> list[tuple[int, Path]]:
        pattern = re.compile(re.escape(self.prefix) + r"epoch-(\d{8})\.npz$")
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := pattern.match(p.name))]
        return sorted(found)

    def check_folder(self) -> None:
        """Raise ValueError if the folder holds checkpoints of another configuration."""
        for _, path in reversed(self._files()):
            try:
                meta = read_metadata(path)
            except CheckpointError:
                continue  # damaged: restore() falls back past it too
            self._check(path, meta)
            return

    def _check(self, path: Path, meta: dict[str, Any]) -> None:
        theirs = meta.get("settings", {})
        if theirs != self.settings:
            keys = sorted(set(theirs) | set(self.settings))
            diffs = [
                f"{k}: {theirs.get(k)!r} there, {self.settings.get(k)!r} now"
                for k in keys
                if theirs.get(k) != self.settings.get(k)
            ]
            raise ValueError(
                f"checkpoint folder {str(self.folder)!r} holds a run with other settings ({'; '.join(diffs[:4])}"
                f"{'; ...' if len(diffs) > 4 else ''}). Use another folder, or delete it to start again."
            )

    def restore(self, like: PyTree) -> PyTree | None:
        """The newest readable checkpoint in the structure of ``like``, or None if there is none."""
        for _, path in reversed(self._files()):
            try:
                tree, meta = restore(path, like)
            except CheckpointMismatchError as exc:
                raise ValueError(
                    f"{exc} The run's parameters or settings changed in a way the recorded settings do not show "
                    f"(a function recorded by name only?). Use another folder, or delete this one to start again."
                ) from None
            except CheckpointError:
                continue  # a damaged file (not written by save): fall back to the one before
            self._check(path, meta)
            return tree
        return None

    def save(self, tree: PyTree, epoch: int) -> Path:
        """Write the checkpoint of ``epoch`` and drop all but the newest ``keep``."""
        path = self.folder / f"{self.prefix}epoch-{epoch:08d}.npz"
        save(path, tree, {"settings": self.settings, "epoch": epoch, "environment": environment()})
        for _, old in self._files()[: -self.keep]:
            old.unlink(missing_ok=True)
        for stale in self.folder.glob(f".{self.prefix}epoch-*.tmp"):
            stale.unlink(missing_ok=True)  # left by a process killed mid-write
        return path
