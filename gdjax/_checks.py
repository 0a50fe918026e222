"""Input checks shared by the public functions.

Every check runs on the host before anything is traced or compiled and raises
``ValueError`` or ``TypeError`` with a sentence that names the argument, says
what was wrong and how to fix it.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_warned_x64: set[str] = set()


def leaf_name(path: tuple) -> str:
    """A readable name for a pytree path, such as ``data['x']``."""
    return "data" + jax.tree_util.keystr(path) if path else "data"


def check_key(key: Any, name: str = "key") -> jax.Array:
    """Return ``key`` if it is a JAX PRNG key (typed or raw uint32[2])."""
    if isinstance(key, jax.Array | np.ndarray):
        dtype = key.dtype
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if dtype == np.uint32 and key.shape == (2,):
            return jnp.asarray(key)
    if np.ndim(key) == 0:
        shown = f"{type(key).__name__} {key!r}"
    else:
        shown = f"{getattr(key, 'dtype', type(key).__name__)} array of shape {np.shape(key)}"
    raise TypeError(
        f"{name} must be a single JAX PRNG key such as jax.random.key(0); got {shown}. "
        f"Make one with {name}=jax.random.key(seed)."
    )


def check_positive_int(value: Any, name: str, *, low: int = 1, high: int | None = None) -> int:
    """Return ``value`` as int if it is an integer in ``[low, high]`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral | np.integer):
        raise TypeError(f"{name} must be an integer; got {type(value).__name__} {value!r}.")
    value = int(value)
    if value < low or (high is not None and value > high):
        span = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {span}; got {value}.")
    return value


def check_tol(tol: Any) -> float | None:
    """Return ``tol`` as a float, or None; it must be finite and >= 0."""
    if tol is None:
        return None
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol must be a number or None; got {type(tol).__name__} {tol!r}.")
    with np.errstate(over="ignore"):
        used = float(np.asarray(tol).astype(jnp.result_type(float)))
    if not math.isfinite(used) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0 (the full-data loss to stop at); got {tol}.")
    return float(tol)


def check_hyperparams(hyperparams: Any) -> dict[str, Any]:
    """``hyperparams`` as a dict from keyword names to values (None: empty)."""
    if hyperparams is None:
        return {}
    if not isinstance(hyperparams, Mapping):
        raise TypeError(
            f"hyperparams must be a dict from the optimizer's keyword names to values, such as "
            f"hyperparams={{'momentum': 0.9}}; got {type(hyperparams).__name__} {hyperparams!r}."
        )
    for name in hyperparams:
        if not isinstance(name, str):
            raise TypeError(f"hyperparams keys must be keyword names (str); got {name!r}.")
    return dict(hyperparams)


def _not_numeric(name: str, got: str) -> TypeError:
    keyword = name.removeprefix("hyperparams[").removesuffix("]").strip("'\"")
    fix = (
        ""
        if keyword.startswith("learning_rate")
        else f" Fix options that are not numbers in the factory instead: pass functools.partial(factory, "
        f"{keyword}=...) as the optimizer, such as functools.partial(optax.sgd, nesterov=True)."
    )
    return TypeError(
        f"{name} must be a number or array of numbers (only numeric hyperparameters can be traced); got {got}.{fix}"
    )


def check_hyperparam(value: Any, name: str) -> np.ndarray:
    """A hyperparameter value or array as float numpy; finite and >= 0."""
    if isinstance(value, bool | np.bool_):
        raise _not_numeric(name, f"bool {value!r}")
    try:
        kind = np.asarray(value).dtype.kind
        arr = np.asarray(value, dtype=np.float64) if kind in "iuf" else None
    except (TypeError, ValueError):
        arr = None
    if arr is None:
        raise _not_numeric(name, f"{type(value).__name__} {value!r}")
    with np.errstate(over="ignore"):
        used = arr.astype(jnp.result_type(float))  # the dtype the compiled program will see
    bad = ~np.isfinite(used) | (arr < 0)
    if bad.any():
        if arr.ndim == 0:
            hint = f" (it overflows {used.dtype})" if np.isfinite(arr) and arr >= 0 else ""
            raise ValueError(f"{name} must be finite and >= 0; got {arr.item()}{hint}.")
        i = int(np.flatnonzero(bad.ravel())[0])
        raise ValueError(
            f"{name} must be finite and >= 0 everywhere; entry {i} is {arr.ravel()[i]}"
            f"{f' (it overflows {used.dtype})' if np.isfinite(arr.ravel()[i]) and arr.ravel()[i] >= 0 else ''}. "
            f"Remove it or replace it with a positive value."
        )
    return arr


def check_leaf(path: tuple, leaf: Any) -> Any:
    """Check one data leaf on the host; float64 becomes float32 unless x64 is on."""
    name = leaf_name(path)
    try:
        arr = np.asarray(leaf) if not isinstance(leaf, jax.Array) else leaf
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
        raise ValueError(f"{name} is a scalar; every leaf of data needs a leading axis of examples.")
    if arr.shape[0] == 0:
        raise ValueError(f"data is empty: {name} has a leading axis of length 0. Pass at least one example.")
    if any(s == 0 for s in arr.shape[1:]):
        raise ValueError(
            f"{name} has shape {tuple(arr.shape)}: a trailing axis of length 0 (zero features). "
            f"Every example needs at least one value."
        )
    if jnp.issubdtype(dtype, jnp.floating):
        arr = _check_floats(name, arr, dtype)
    elif jnp.issubdtype(dtype, jnp.integer):
        arr = _check_integers(name, arr, dtype)
    return arr


#: Rows per block when data is checked on the host: the checks make no temporaries of the data's size.
_BLOCK_ELEMENTS = 1 << 20


def _blocks(arr: Any):
    """Row blocks of ``arr`` as numpy arrays, each about :data:`_BLOCK_ELEMENTS` values."""
    per_row = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)))
    rows = max(1, _BLOCK_ELEMENTS // per_row)
    for start in range(0, arr.shape[0], rows):
        yield start, np.asarray(arr[start : start + rows]).reshape(-1, per_row)


def _check_floats(name: str, arr: Any, dtype: np.dtype) -> Any:
    """Refuse NaN/inf, and values that overflow the float32 gdjax would use; float64 becomes float32 without x64."""
    narrow = dtype == np.float64 and not jax.config.jax_enable_x64
    limit = float(np.finfo(np.float32).max)
    bad_rows, first_bad, big_rows, first_big, biggest = 0, None, 0, None, 0.0
    for start, block in _blocks(arr):
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            bad_rows += int((~finite).sum())
            first_bad = start + int(np.flatnonzero(~finite)[0]) if first_bad is None else first_bad
        if narrow:
            size = np.abs(np.where(np.isfinite(block), block, 0)).max(axis=1)
            big = size > limit
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
                stacklevel=5,
            )
        arr = np.asarray(arr, np.float32)
    return arr


def _check_integers(name: str, arr: Any, dtype: np.dtype) -> Any:
    """64-bit integers become 32-bit without x64, where that keeps every value; else a clear error."""
    if dtype.itemsize < 8 or jax.config.jax_enable_x64:
        return arr
    narrow = np.dtype(np.int32 if dtype.kind == "i" else np.uint32)
    info = np.iinfo(narrow)
    low, high = None, None
    for _, block in _blocks(arr):
        lo, hi = block.min(), block.max()
        low = lo if low is None else min(low, lo)
        high = hi if high is None else max(high, hi)
    if low < info.min or high > info.max:
        raise ValueError(
            f"{name} is {dtype} with values from {low} to {high}, outside {narrow}'s range [{info.min}, {info.max}]; "
            f"JAX's x64 mode is off, so they would wrap around silently. Convert them to float "
            f"(data.astype('float32'), or rescale timestamps and ids first), or enable "
            f"jax.config.update('jax_enable_x64', True)."
        )
    return np.asarray(arr, narrow)
