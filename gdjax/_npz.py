"""The checkpoint file format: an ``.npz`` of plain arrays and a JSON description, read without trusting it.

Reading never unpickles and never trusts the file: it opens the zip with
:mod:`zipfile`, checks each member's ``.npy`` header against the member's
real size before reading any data (a damaged header cannot make it allocate
more than the file holds), lets the zip's CRC-32 check every byte, and checks
the JSON description field by field; anything unreadable or inconsistent is a
:class:`CheckpointError`. Writing goes to a temporary file in the same folder,
flushed to disk, then ``os.replace``-d into place.

The description also records each leaf's path in the tree (a list of
``[kind, key]`` steps, ``kind`` one of ``"dict"``, ``"attr"`` and
``"index"``), so a file can be read without a template of its structure
(:func:`read`, and :func:`gdjax.checkpoint.load`); files written without
paths are still read by :func:`restore`, which takes a template.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from gdjax import _distributed
from gdjax._types import PyTree

META = "__meta__"
FORMAT = 1
#: The kinds of a step in a leaf's recorded path: a dict key, an attribute (named tuples, dataclasses,
#: Equinox modules) and a position (tuples, lists, nodes registered without keys).
PATH_KINDS = ("dict", "attr", "index")

#: A leaf's path: ``(kind, key)`` steps from the root of the tree.
KeyPath = tuple[tuple[str, Any], ...]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (a damaged or foreign file)."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint whose structure, shapes or dtypes differ from what is expected."""


def _to_host(leaf: Any) -> np.ndarray:
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        raise TypeError("checkpoints do not store typed PRNG keys in the state; store jax.random.key_data(key).")
    return np.asarray(jax.device_get(leaf))


def _step(key: Any) -> list[Any]:
    """One step of a leaf's path as JSON: ``[kind, key]`` (keys of other types by their ``str``)."""
    tu = jax.tree_util
    if isinstance(key, tu.DictKey):
        k = key.key
        if isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
            return ["dict", int(k)]
        return ["dict", k if isinstance(k, str) else str(k)]
    if isinstance(key, tu.GetAttrKey):
        return ["attr", key.name]
    if isinstance(key, tu.SequenceKey):
        return ["index", key.idx]
    if isinstance(key, tu.FlattenedIndexKey):
        return ["index", key.key]
    return ["dict", str(key)]  # a node registered with keys of its own type


def key_path(keys: Any) -> KeyPath:
    """A path of ``jax.tree_util`` keys as :func:`save` records it (and :func:`read` returns it)."""
    return tuple((kind, key) for kind, key in map(_step, keys))


def save(path: str | os.PathLike, tree: PyTree, metadata: dict[str, Any] | None = None) -> None:
    """Write ``tree`` (and JSON-able ``metadata``) to ``path`` atomically, each leaf with its path.

    Raises:
      TypeError: a leaf is not an array of numbers, or ``metadata`` is not JSON-able.
    """
    path = Path(path)
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    arrays = {f"leaf_{i:05d}": _to_host(x) for i, (_, x) in enumerate(flat)}
    meta = {
        "format": FORMAT,
        "treedef": str(treedef),
        "leaves": [[list(a.shape), str(a.dtype)] for a in arrays.values()],
        "paths": [[_step(k) for k in keys] for keys, _ in flat],
        "metadata": metadata or {},
    }
    arrays[META] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types the first keyword
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
    """The metadata stored with a checkpoint, without loading its arrays.

    Raises:
      CheckpointError: the file is not a readable checkpoint.
    """
    return _load(Path(path), arrays=False)[1]["metadata"]


def read(path: str | os.PathLike) -> tuple[list[np.ndarray], list[KeyPath] | None, dict[str, Any]]:
    """A checkpoint without a template: its leaves in order, their paths (None if not recorded), its metadata.

    Raises:
      CheckpointError: the file is not a readable checkpoint.
    """
    arrays, meta = _load(Path(path))
    leaves = [arrays[f"leaf_{i:05d}"] for i in range(len(arrays))]
    paths = meta.get("paths")
    if paths is not None:
        paths = [tuple((kind, key) for kind, key in p) for p in paths]
    return leaves, paths, meta["metadata"]


_MEMBER = re.compile(r"(leaf_\d{5}|__meta__)\.npy")


def _load(path: Path, *, arrays: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The file's leaf arrays (none without ``arrays``) and its checked description.

    Any failure (an unreadable file, a zip or CRC error, a header or
    description that is missing a field, has one of the wrong type, or
    disagrees with the data) is a :class:`CheckpointError`: the file is
    damaged, whatever the exception underneath.
    """
    try:
        members = _read_zip(path, only=None if arrays else "__meta__")
        raw = members.pop("__meta__", None)
        if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError("no description (__meta__) of uint8 bytes")
        meta = _check_meta(json.loads(raw.tobytes().decode()))
        if arrays:
            members = _check_leaves(members, meta["leaves"])
    except CheckpointError:
        raise
    except Exception as exc:  # a damaged file can fail in any way: zipfile, zlib, EOF, JSON, numpy, ...
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); delete it to start again."
        ) from exc
    return members, meta


def _read_zip(path: Path, only: str | None) -> dict[str, np.ndarray]:
    # O_NONBLOCK: opening a FIFO named like a checkpoint must not wait for a writer
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        with zipfile.ZipFile(f) as z:
            entries = z.infolist()
            names = [e.filename for e in entries]
            if len(set(names)) != len(names) or not all(_MEMBER.fullmatch(n) for n in names):
                raise ValueError(f"unexpected members {names[:5]}")
            for e in entries:  # np.savez stores members uncompressed: their sizes are bounded by the file's
                if e.compress_type != zipfile.ZIP_STORED or e.compress_size != e.file_size:
                    raise ValueError(f"member {e.filename} is compressed or has inconsistent sizes")
            if sum(e.file_size for e in entries) > info.st_size:
                raise ValueError(f"members claim more bytes than the file's {info.st_size}")
            return {e.filename[:-4]: _read_npy(z, e) for e in entries if only is None or e.filename[:-4] == only}


def _read_npy(z: zipfile.ZipFile, entry: zipfile.ZipInfo) -> np.ndarray:
    """One ``.npy`` member, its header checked against its size before any data is read."""
    fmt = np.lib.format
    with z.open(entry) as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"{entry.filename}: .npy version {version}")
        if dtype.hasobject or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError(f"{entry.filename}: header declares {dtype}{list(shape)}")
        size = math.prod(shape) * dtype.itemsize
        if size != entry.file_size - f.tell():
            raise ValueError(
                f"{entry.filename}: header declares {dtype}{list(shape)} ({size} bytes), "
                f"the member holds {entry.file_size - f.tell()}"
            )
        data = bytearray(f.read(size))
        if len(data) != size or f.read(1):  # reading to the end also has zipfile check the CRC-32
            raise ValueError(f"{entry.filename}: size changed while reading")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def _is_shape(x: Any) -> bool:
    return isinstance(x, list) and all(type(n) is int and n >= 0 for n in x)


def _check_meta(meta: Any) -> dict[str, Any]:
    """The JSON description, checked field by field (ValueError on a missing or mistyped one)."""
    if not isinstance(meta, dict):
        raise ValueError(f"the description is a {type(meta).__name__}, not an object")
    if type(meta.get("format")) is not int or meta["format"] != FORMAT:
        raise ValueError(f"format {meta.get('format')!r}, not {FORMAT}")
    if not isinstance(meta.get("treedef"), str):
        raise ValueError("no tree structure (treedef) in the description")
    leaves = meta.get("leaves")
    if not isinstance(leaves, list) or not all(
        isinstance(x, list) and len(x) == 2 and _is_shape(x[0]) and isinstance(x[1], str) for x in leaves
    ):
        raise ValueError("the description's leaves are not a list of [shape, dtype]")
    if not isinstance(meta.get("metadata"), dict):
        raise ValueError("the description has no metadata object")
    if "paths" in meta:  # files written before paths were recorded have none
        paths = meta["paths"]
        if not isinstance(paths, list) or len(paths) != len(leaves) or not all(map(_is_path, paths)):
            raise ValueError("the description's paths are not a list of [kind, key] steps per leaf")
    return meta


def _is_path(path: Any) -> bool:
    """Whether ``path`` is a leaf's path as :func:`save` records it."""

    def step(x: Any) -> bool:
        if not (isinstance(x, list) and len(x) == 2 and x[0] in PATH_KINDS):
            return False
        kind, key = x
        if kind == "dict":
            return isinstance(key, str) or type(key) is int
        if kind == "attr":
            return isinstance(key, str)
        return type(key) is int and key >= 0

    return isinstance(path, list) and all(map(step, path))


def _check_leaves(arrays: dict[str, np.ndarray], leaves: list) -> dict[str, np.ndarray]:
    """The arrays, checked against the description's shapes and dtypes (bfloat16 & co. viewed back)."""
    if sorted(arrays) != [f"leaf_{i:05d}" for i in range(len(leaves))]:
        raise ValueError(f"{len(arrays)} arrays for {len(leaves)} described leaves")
    out = {}
    for i, (shape, name) in enumerate(leaves):
        a, stored = arrays[f"leaf_{i:05d}"], np.dtype(jax.numpy.dtype(name))
        if a.dtype != stored and a.dtype.kind == "V" and a.dtype.itemsize == stored.itemsize:
            a = a.view(stored)  # numpy keeps bfloat16 and friends as raw bytes ('V2'): view them back
        if a.dtype != stored or list(a.shape) != shape:
            raise ValueError(f"leaf {i} is {a.dtype}{list(a.shape)}, described as {name}{shape}")
        out[f"leaf_{i:05d}"] = a
    return out


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
        want = (tuple(np.shape(leaf)), np.dtype(leaf.dtype))
        if (a.shape, a.dtype) != want:
            raise CheckpointMismatchError(
                f"checkpoint {path}: leaf {i} is {a.dtype}{list(a.shape)}, expected {want[1]}{list(want[0])}."
            )
        sharding = getattr(leaf, "sharding", None)
        out.append(_distributed.put_leaf(a, sharding) if sharding is not None else a)
    return jax.tree.unflatten(treedef, out), meta["metadata"]
