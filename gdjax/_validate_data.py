"""Checks of the data a :class:`gdjax.DataIterator` is built from, on the host, in blocks.

Each leaf must be a real-valued array with a leading axis of examples, no
zero-length axis, no NaN or inf, and (without JAX's x64 mode) values that fit
the 32-bit dtype JAX will use. The values are read in blocks of rows, so the
checks make no temporaries of the data's size (a memmap is read once, in
pieces). Errors name the leaf (``data['x']``), the first bad row and the fix.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gdjax import _validate
from gdjax._types import x64_enabled

_warned_x64: set[str] = set()


def leaf_name(path: tuple, root: str = "data") -> str:
    """A readable name for a pytree path, such as ``data['x']`` (``root`` names the argument)."""
    return root + jax.tree_util.keystr(path) if path else root


def check_tree(data: Any, root: str = "data", convert: bool = True) -> list[tuple[tuple, Any]]:
    """Check ``data`` (the argument named ``root``) and return its (path, host or device array) leaves.

    With ``convert``, 64-bit leaves become the 32-bit arrays JAX will use (without x64); streamed data
    is converted block by block as it is read instead.
    """
    paths = _validate.leaves_with_paths(data, root)
    if not paths:
        raise ValueError(
            f"{root} is empty: it has no arrays. Pass a pytree of arrays with a leading axis of examples, "
            "such as {'x': X, 'y': y}."
        )
    leaves = [(path, check_leaf(path, leaf, root, convert)) for path, leaf in paths]
    lengths = {leaf_name(path, root): arr.shape[0] for path, arr in leaves}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(
            f"{root} leaves must share the leading axis (one row per example), but {shown}. Make them the same length."
        )
    return leaves


def check_leaf(path: tuple, leaf: Any, root: str = "data", convert: bool = True) -> Any:
    """Check one data leaf on the host; with ``convert``, float64 becomes float32 unless x64 is on.

    An array-like with ``shape``, ``dtype`` and row slicing (a memmap, a source's leaf) is read in blocks, never whole.
    """
    name = leaf_name(path, root)
    try:
        array_like = isinstance(leaf, jax.Array | np.ndarray) or (hasattr(leaf, "shape") and hasattr(leaf, "dtype"))
        arr = leaf if array_like else np.asarray(leaf)
    except Exception as exc:
        raise TypeError(f"{name} must be an array; got {type(leaf).__name__} ({exc}).") from None
    dtype = np.dtype(arr.dtype) if not jax.dtypes.issubdtype(arr.dtype, jax.dtypes.prng_key) else None
    real = dtype is not None and any(jnp.issubdtype(dtype, t) for t in (jnp.floating, jnp.integer, jnp.bool_))
    if not real:
        kind = "complex" if dtype is not None and dtype.kind == "c" else str(arr.dtype)
        raise TypeError(
            f"{name} has dtype {kind}; gdjax needs real numbers (float, int or bool). "
            f"Convert it, for example with .astype('float32')."
        )
    if arr.ndim == 0:
        raise ValueError(f"{name} is a scalar; every leaf of {root} needs a leading axis of examples.")
    if arr.shape[0] == 0:
        raise ValueError(f"{root} is empty: {name} has a leading axis of length 0. Pass at least one example.")
    if any(s == 0 for s in arr.shape[1:]):
        raise ValueError(
            f"{name} has shape {tuple(arr.shape)}: a trailing axis of length 0 (zero features). "
            f"Every example needs at least one value."
        )
    assert dtype is not None  # a key was refused above
    if jnp.issubdtype(dtype, jnp.floating):
        arr = _check_floats(name, arr, dtype, convert)
    elif jnp.issubdtype(dtype, jnp.integer):
        arr = _check_integers(name, arr, dtype, convert)
    return arr


#: Rows per block when data is checked on the host: the checks make no temporaries of the data's size.
_BLOCK_ELEMENTS = 1 << 20


def _blocks(arr: Any) -> Iterator[tuple[int, np.ndarray]]:
    """Row blocks of ``arr`` as numpy arrays, each about :data:`_BLOCK_ELEMENTS` values."""
    per_row = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)))
    rows = max(1, _BLOCK_ELEMENTS // per_row)
    for start in range(0, arr.shape[0], rows):
        yield start, np.asarray(arr[start : start + rows]).reshape(-1, per_row)


def _check_floats(name: str, arr: Any, dtype: np.dtype, convert: bool = True) -> Any:
    """Refuse NaN/inf, and values that overflow the float32 gdjax would use; float64 becomes float32 without x64."""
    narrow = dtype == np.float64 and not x64_enabled()
    bad_rows, first_bad, big_rows, first_big, biggest = 0, None, 0, None, 0.0
    for start, block in _blocks(arr):
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            bad_rows += int((~finite).sum())
            first_bad = start + int(np.flatnonzero(~finite)[0]) if first_bad is None else first_bad
        if narrow:
            finite_block = np.where(np.isfinite(block), block, 0)
            size = np.abs(finite_block).max(axis=1)
            with np.errstate(over="ignore"):  # values that round to float32's largest are fine: only inf is not
                big = np.isinf(finite_block.astype(np.float32)).any(axis=1)
            if big.any():
                big_rows += int(big.sum())
                first_big = start + int(np.flatnonzero(big)[0]) if first_big is None else first_big
                biggest = max(biggest, float(size.max()))
    if first_bad is not None:
        raise ValueError(
            f"{name} has a non-finite value (NaN or inf) in row {first_bad} "
            f"({bad_rows} bad rows in all). Clean or drop those rows first."
        )
    if first_big is not None:
        raise ValueError(
            f"{name} is float64 with values as large as {biggest:.3g} (first in row {first_big}, {big_rows} rows in "
            f"all), which overflow float32 (at most about 3.4e38), the dtype gdjax uses while JAX's x64 mode is off. "
            f"Rescale the data, or enable jax.config.update('jax_enable_x64', True)."
        )
    if narrow:
        if name not in _warned_x64:
            _warned_x64.add(name)
            warnings.warn(
                f"{name} is float64 but JAX's x64 mode is off, so gdjax uses float32. "
                f"Enable jax.config.update('jax_enable_x64', True) to keep float64.",
                UserWarning,
                stacklevel=_caller_outside(),
            )
        arr = np.asarray(arr, np.float32) if convert else arr
    return arr


def _caller_outside() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside gdjax (counted from the warner)."""
    level = 1
    frame: Any = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("gdjax"):
        level, frame = level + 1, frame.f_back
    return level


def _check_integers(name: str, arr: Any, dtype: np.dtype, convert: bool = True) -> Any:
    """64-bit integers become 32-bit without x64, where that keeps every value; else a clear error."""
    if dtype.itemsize < 8 or x64_enabled():
        return arr
    narrow = np.dtype(np.int32 if dtype.kind == "i" else np.uint32)
    info = np.iinfo(narrow)
    low, high = info.min, info.max
    for i, (_, block) in enumerate(_blocks(arr)):
        lo, hi = int(block.min()), int(block.max())
        low, high = (lo, hi) if i == 0 else (min(low, lo), max(high, hi))
    if low < info.min or high > info.max:
        raise ValueError(
            f"{name} is {dtype} with values from {low} to {high}, outside {narrow}'s range [{info.min}, {info.max}]; "
            f"JAX's x64 mode is off, so they would wrap around silently. Convert them to float "
            f"(data.astype('float32'), or rescale timestamps and ids first), or enable "
            f"jax.config.update('jax_enable_x64', True)."
        )
    return np.asarray(arr, narrow) if convert else arr
