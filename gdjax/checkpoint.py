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
two runs out of one folder.

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
import dis
import functools
import hashlib
import json
import math
import os
import re
import stat
import tempfile
import types
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, FolderLock does nothing
    fcntl = None

__all__ = [
    "CheckpointError",
    "CheckpointInUseError",
    "CheckpointMismatchError",
    "Checkpointer",
    "FolderLock",
    "environment",
    "function_digest",
    "restore",
    "save",
]

PyTree = Any
_META = "__meta__"
_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (a damaged or foreign file)."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint whose structure, shapes or dtypes differ from what is expected."""


class CheckpointInUseError(ValueError):
    """The checkpoint folder is locked by another run (another process, or another call in this one)."""


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
    """The metadata stored with a checkpoint, without loading its arrays.

    Raises:
      CheckpointError: the file is not a readable checkpoint.
    """
    return _load(Path(path), arrays=False)[1]["metadata"]


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
    if type(meta.get("format")) is not int or meta["format"] != _FORMAT:
        raise ValueError(f"format {meta.get('format')!r}, not {_FORMAT}")
    if not isinstance(meta.get("treedef"), str):
        raise ValueError("no tree structure (treedef) in the description")
    leaves = meta.get("leaves")
    if not isinstance(leaves, list) or not all(
        isinstance(x, list) and len(x) == 2 and _is_shape(x[0]) and isinstance(x[1], str) for x in leaves
    ):
        raise ValueError("the description's leaves are not a list of [shape, dtype]")
    if not isinstance(meta.get("metadata"), dict):
        raise ValueError("the description has no metadata object")
    return meta


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


#: How many levels of functions captured by functions :func:`function_digest` follows.
_DIGEST_DEPTH = 8
_SCALARS = (bool, int, float, complex, str, bytes, type(None), type(Ellipsis))


def function_digest(fn: Any) -> str:
    """A SHA-256 of what a function computes, as far as Python lets it be seen.

    It covers the function's code (bytecode, constants and names, nested
    functions included; not its docstring or line numbers), its defaults and
    closure values, a ``functools.partial``'s function, arguments and keywords,
    and the values of the module globals its code reads; functions found there
    are followed in turn (a closure over another function, a helper of the same
    module), up to 8 levels. Numbers, strings, arrays, and tuples, lists and
    dicts of them count by value; modules, classes and functions of other
    modules (libraries) by name; any other object by its type only, so a change
    inside such an object (a captured model instance, say) goes unnoticed.
    The bytecode is the running Python's: another Python version gives another
    digest.

    Example:
      >>> from gdjax.checkpoint import function_digest
      >>> scaled = lambda s: lambda x: s * x
      >>> function_digest(scaled(1.0)) == function_digest(scaled(1.0)) != function_digest(scaled(2.0))
      True
    """
    h = hashlib.sha256()
    _feed(h, fn, 0, set())
    return h.hexdigest()


def _name(obj: Any) -> str:
    kind = obj if isinstance(obj, type | types.FunctionType) else type(obj)
    return f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', '?')}"


def _feed(h: Any, obj: Any, depth: int, seen: set[int]) -> None:
    def put(*parts: Any) -> None:
        h.update(repr(parts).encode() + b"\0")

    if isinstance(obj, _SCALARS):
        put("value", type(obj).__name__, obj)
    elif isinstance(obj, np.ndarray | np.generic | jax.Array):
        put("array", digest(obj))
    elif isinstance(obj, types.ModuleType):
        put("module", obj.__name__)
    elif isinstance(obj, type):
        put("class", _name(obj))
    elif id(obj) in seen or depth > _DIGEST_DEPTH:
        put("seen" if id(obj) in seen else "too deep", _name(obj))
    else:
        seen.add(id(obj))
        inner = functools.partial(_feed, h, depth=depth + 1, seen=seen)
        if isinstance(obj, functools.partial):
            put("partial")
            for x in (obj.func, obj.args, obj.keywords):
                inner(x)
        elif isinstance(obj, types.MethodType):
            put("method")
            inner(obj.__func__)
            inner(obj.__self__)
        elif isinstance(obj, types.FunctionType):
            put("function", _name(obj))
            _feed_code(h, obj.__code__, doc=obj.__doc__)
            inner(obj.__defaults__)
            inner(obj.__kwdefaults__)
            for cell in obj.__closure__ or ():
                try:
                    inner(cell.cell_contents)
                except ValueError:  # a cell not yet filled
                    put("empty cell")
            for name in sorted(_globals_read(obj.__code__)):
                value = obj.__globals__.get(name, _MISSING)
                if value is _MISSING:  # a builtin
                    put("global", name)
                elif callable(value) and getattr(value, "__module__", None) != obj.__module__:
                    put("global", name, _name(value))  # another module's function: by name
                else:
                    put("global", name)
                    inner(value)
        elif isinstance(obj, tuple | list):
            put(type(obj).__name__, len(obj))
            for x in obj:
                inner(x)
        elif isinstance(obj, dict):
            put("dict", len(obj))
            for k, v in sorted(obj.items(), key=lambda kv: repr(kv[0])):
                inner(k)
                inner(v)
        elif callable(getattr(obj, "__wrapped__", None)):  # jax.jit, functools.wraps and the like
            put("wrapped", _name(obj))
            inner(obj.__wrapped__)
        else:
            put("object", _name(obj))  # not digested: only its type counts (see the docstring)


_MISSING = object()


def _feed_code(h: Any, code: types.CodeType, doc: Any = None) -> None:
    h.update(repr(("code", code.co_name, code.co_argcount, code.co_kwonlyargcount, code.co_names)).encode())
    h.update(code.co_code)
    for i, const in enumerate(code.co_consts):
        if isinstance(const, types.CodeType):
            _feed_code(h, const)
        elif not (i == 0 and doc is not None and const is doc):
            h.update(_const(const).encode() + b"\0")


def _const(c: Any) -> str:
    """A constant's text, the same in every process (frozensets are sorted: string hashes vary)."""
    if isinstance(c, frozenset):
        return "frozenset(" + ",".join(sorted(_const(x) for x in c)) + ")"
    if isinstance(c, tuple):
        return "(" + ",".join(_const(x) for x in c) + ")"
    return f"{type(c).__name__}:{c!r}"


def _globals_read(code: types.CodeType) -> set[str]:
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _globals_read(const)
    return names


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
            fd = os.open(self.folder / self.NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_NONBLOCK", 0), 0o644)
        except OSError as exc:
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

    def _files(self) -> list[tuple[int, Path]]:
        """This run's checkpoint files, oldest first; entries that are not regular files are left out."""
        pattern = re.compile(re.escape(self.prefix) + r"epoch-(\d{8})\.npz")
        try:
            with os.scandir(self.folder) as entries:
                found = [(int(m.group(1)), Path(e.path)) for e in entries if (m := pattern.fullmatch(e.name))]
        except OSError:
            return []
        return sorted((epoch, path) for epoch, path in found if path.is_file())

    def check_folder(self) -> None:
        """Raise ValueError if the folder holds checkpoints of another configuration."""
        for epoch, path in reversed(self._files()):
            try:
                meta = self._run_metadata(path, epoch, read_metadata(path))
            except CheckpointError:
                continue  # damaged: restore() falls back past it too
            self._check(path, meta)
            return

    @staticmethod
    def _run_metadata(path: Path, epoch: int, meta: dict[str, Any]) -> dict[str, Any]:
        """The metadata :meth:`save` wrote, checked (a CheckpointError, so damaged, where it is not)."""
        if not isinstance(meta.get("settings"), dict) or type(meta.get("epoch")) is not int or meta["epoch"] != epoch:
            raise CheckpointError(f"checkpoint {path} cannot be read (its run settings or epoch are missing or wrong).")
        return meta

    def _check(self, path: Path, meta: dict[str, Any]) -> None:
        theirs = meta["settings"]
        if theirs != self.settings:
            keys = sorted(set(theirs) | set(self.settings))
            diffs = [
                f"{k}: {theirs.get(k)!r} there, {self.settings.get(k)!r} now"
                for k in keys
                if theirs.get(k) != self.settings.get(k) and k != "loss_fn_digest"
            ]
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

    def restore(self, like: PyTree | Callable[[int], PyTree]) -> PyTree | None:
        """The newest readable checkpoint in the structure of ``like``, or None if there is none.

        ``like`` may be a function of the checkpoint's epoch that returns the
        structure (a run's saved history grows with its epochs).
        """
        for epoch, path in reversed(self._files()):
            try:
                tree, meta = restore(path, like(epoch) if callable(like) else like)
            except CheckpointMismatchError as exc:
                raise ValueError(
                    f"{exc} The run's parameters or settings changed in a way the recorded settings do not show "
                    f"(a function recorded by name only?). Use another folder, or delete this one to start again."
                ) from None
            except CheckpointError:
                continue  # a damaged file (not written by save): fall back to the one before
            try:
                meta = self._run_metadata(path, epoch, meta)
            except CheckpointError:
                continue
            self._check(path, meta)
            return tree
        return None

    def save(self, tree: PyTree, epoch: int) -> Path | None:
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
        save(path, tree, {"settings": self.settings, "epoch": epoch, "environment": environment()})
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
