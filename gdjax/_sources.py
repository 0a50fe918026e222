"""Where a data set lives: on the device, or read from the host (numpy arrays, memmaps, random-access sources).

:func:`as_tree` turns a random-access source (an object with ``__len__``
and ``__getitem__`` of an index array returning the pytree of those
examples, such as a grain data source or a thin adapter over an h5py file)
into a pytree of :class:`SourceLeaf` array-likes, so every check and every
read works on leaves with a ``shape``, a ``dtype`` and row indexing.
:func:`place` decides where data lives (``on_device=None``: by its size
against the device's free memory) and :func:`reader` makes the host reader a
streamed iterator reads through.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from gdjax import _stream, _validate_data
from gdjax._types import PyTree

#: With ``on_device=None`` data is placed on the device when it takes at most this share of its free memory.
DEVICE_SHARE = 0.5


class SourceLeaf:
    """One leaf of a random-access source, as an array-like: ``shape``, ``dtype`` and rows by slice or index."""

    def __init__(self, source: Any, n: int, index: int, shape: tuple[int, ...], dtype: np.dtype):
        self.source, self.index = source, index
        self.shape, self.dtype = (n, *shape), np.dtype(dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        idx = np.arange(self.shape[0])[key] if isinstance(key, slice) else np.asarray(key)
        try:
            return np.asarray(jax.tree.leaves(self.source[idx])[self.index])
        except Exception as exc:
            shown = f"rows {idx[0]} to {idx[-1]}" if len(idx) else "no rows"
            exc.add_note(
                f"gdjax: raised by the data source when asked for {shown} (its len() is {self.shape[0]}: every "
                "index below it must be readable)."
            )
            raise

    def __repr__(self) -> str:
        return f"SourceLeaf({type(self.source).__name__}, shape={self.shape}, dtype={self.dtype})"


def is_source(data: Any) -> bool:
    """Whether ``data`` is a random-access source rather than a pytree of arrays."""
    if hasattr(data, "shape") or isinstance(data, dict | list | tuple) or data is None:
        return False
    return jax.tree.leaves(data) == [data] and not np.isscalar(data)


def as_tree(data: Any, root: str = "data") -> PyTree:
    """``data`` as a pytree of array-likes (a random-access source becomes a pytree of :class:`SourceLeaf`)."""
    if not is_source(data):
        return data
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise TypeError(
            f"{root} is a {type(data).__name__}, which is neither a pytree of arrays nor a random-access source. Pass "
            "arrays such as {'x': X, 'y': y}, or an object with __len__ and __getitem__(index array) -> those arrays."
        )
    n = len(data)
    if n == 0:
        raise ValueError(f"{root} is empty: len({root}) is 0. Pass at least one example.")
    try:
        probe = data[np.array([0])]
    except Exception as exc:
        raise TypeError(
            f"{root}[np.array([0])] failed ({type(exc).__name__}: {exc}); a random-access source must accept an "
            "index array and return the pytree of those examples, each leaf with a leading axis of len(index)."
        ) from exc
    leaves, treedef = jax.tree.flatten(probe)
    shapes = [np.shape(x) for x in leaves]
    if not leaves or any(len(s) == 0 or s[0] != 1 for s in shapes):
        raise ValueError(
            f"{root}[np.array([0])] returned {jax.tree.map(np.shape, probe)}; expected a pytree of arrays, each with "
            "a leading axis of 1 (one row per index)."
        )
    views = [
        SourceLeaf(data, n, i, s[1:], np.asarray(x).dtype) for i, (x, s) in enumerate(zip(leaves, shapes, strict=True))
    ]
    return jax.tree.unflatten(treedef, views)


def nbytes(tree: PyTree) -> int:
    """Bytes of the data's leaves (as stored)."""
    return sum(int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def free_bytes(device: Any = None) -> int:
    """Free memory of ``device`` (default: JAX's first): its allocator's limit less use, else the host's available."""
    device = jax.local_devices()[0] if device is None else device
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def place(on_device: Any, tree: PyTree, root: str = "data") -> bool:
    """Whether the data goes on the device: ``on_device`` if given, else by size; too large for True is an error."""
    if on_device is not None and not isinstance(on_device, bool):
        raise TypeError(f"on_device must be True, False or None (decide by size); got {on_device!r}.")
    size, free = nbytes(tree), free_bytes()
    if on_device is None:
        sourced = any(isinstance(x, SourceLeaf) for x in jax.tree.leaves(tree))
        return not sourced and size <= DEVICE_SHARE * free
    if on_device and size > free:
        raise ValueError(
            f"{root} takes {_gib(size)} but the device has {_gib(free)} free, so on_device=True cannot hold it. "
            "Pass on_device=False to stream it from the host (or None to decide by size)."
        )
    return on_device


def stream(tree: PyTree, batch_size: int) -> _stream.Stream:
    """How a compiled program reads the host data ``tree`` (checked): its reader, and the static spec."""
    leaves, treedef = jax.tree.flatten(tree)
    rows = _stream.example_layout(leaves)
    row_bytes = _stream.row_bytes(rows)
    check_batch(batch_size * row_bytes, batch_size)
    chunk = _stream.read_batches(row_bytes, batch_size)
    read = reader(tree, [dt for _, dt in rows])
    read.data = tree
    return _stream.Stream(read.token, _stream.Spec(treedef, rows, chunk), read)


def check_batch(batch_bytes: int, batch_size: int) -> None:
    """Refuse streaming batches too large to hold: a streamed step holds its batch on the host and on the device."""
    free = free_bytes()
    if 3 * batch_bytes > free:
        raise ValueError(
            f"a batch of {batch_size} examples takes {_gib(batch_bytes)}; streamed, each step holds it about three "
            f"times (read on the host, handed over, on the device), more than the {_gib(free)} free. Streaming "
            "helps when batches are small next to the data: use gd.minibatch with a smaller batch_size "
            "(full_batch reads every example at every step)."
        )


def load(tree: PyTree) -> PyTree:
    """The data read whole into host arrays (for a random-access source placed on the device)."""
    leaves, treedef = jax.tree.flatten(tree)
    if not any(isinstance(x, SourceLeaf) for x in leaves):
        return tree
    read = _read_rows(tree)  # a plain read: no reader (token, read-ahead) for a one-off load
    n = leaves[0].shape[0]
    out = [np.empty(x.shape, x.dtype) for x in leaves]
    step = max(1, (64 << 20) // max(1, nbytes(tree) // n))
    for s in range(0, n, step):
        for dst, src in zip(out, read(np.arange(s, min(n, s + step))), strict=True):
            dst[s : s + len(src)] = src
    return jax.tree.unflatten(treedef, out)


def _rows(leaf: Any, idx: np.ndarray) -> np.ndarray:
    """The rows of an array-like at ``idx``: a view for a contiguous run of rows, else one gather."""
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx) and (len(idx) == 1 or np.all(np.diff(idx) == 1)):
        return np.asarray(leaf[int(idx[0]) : int(idx[-1]) + 1])
    if isinstance(leaf, np.ndarray):  # np.take on the plain view: a memmap's own indexing is about 2x slower
        return np.take(leaf.view(np.ndarray), idx, axis=0)
    return np.asarray(leaf[idx])


def _sorted_read(source: Any) -> Any:
    """``read`` of a random-access source: asked for sorted, distinct indices (as h5py needs), then reordered."""

    def read(idx: np.ndarray) -> list[np.ndarray]:
        order, inverse = np.unique(idx, return_inverse=True)
        return [np.asarray(x)[inverse.reshape(-1)] for x in jax.tree.leaves(source[order])]

    return read


def _read_rows(tree: PyTree) -> Callable[[np.ndarray], list[np.ndarray]]:
    """``read(indices)``: the data's leaves at ``indices`` (one read of the source for a random-access source)."""
    leaves = jax.tree.leaves(tree)
    sources = {id(x.source) for x in leaves if isinstance(x, SourceLeaf)}
    if len(sources) == 1 and all(isinstance(x, SourceLeaf) for x in leaves):
        return _sorted_read(leaves[0].source)
    arrays = [np.asarray(x) if isinstance(x, jax.Array) else x for x in leaves]
    return lambda idx: [_rows(x, idx) for x in arrays]


def reader(tree: PyTree, dtypes: list[np.dtype] | None = None) -> _stream.Reader:
    """The host reader of the data's leaves, with its read-ahead."""
    leaves = jax.tree.leaves(tree)
    dtypes = [np.dtype(x.dtype) for x in leaves] if dtypes is None else dtypes
    rows = [tuple(x.shape[1:]) for x in leaves]
    names = [_validate_data.leaf_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    return _stream.Reader(_read_rows(tree), dtypes, rows, names)
