"""Input checks shared by the public functions.

Every check runs on the host before anything is traced or compiled and raises
``ValueError`` or ``TypeError`` with a sentence that names the argument, says
what was wrong and how to fix it.
"""

from __future__ import annotations

import math
import numbers
import warnings
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
    shown = f"{type(key).__name__} {key!r}" if np.ndim(key) == 0 else f"array of shape {np.shape(key)}"
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


def check_hyperparam(value: Any, name: str) -> np.ndarray:
    """A hyperparameter value or array as float numpy; finite and >= 0."""
    if isinstance(value, bool):
        raise TypeError(
            f"{name} must be a number; got bool {value!r}. Fix options that are not numbers in the factory "
            f"instead, e.g. functools.partial(optax.sgd, nesterov=True)."
        )
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or array of numbers; got {type(value).__name__} {value!r}.") from None
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
        finite = np.isfinite(np.asarray(arr, np.float32).reshape(arr.shape[0], -1)).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise ValueError(
                f"{name} has a non-finite value (NaN or inf) in row {row} "
                f"({int((~finite).sum())} bad rows in all). Clean or drop those rows first."
            )
        if dtype == np.float64 and not jax.config.jax_enable_x64:
            if name not in _warned_x64:
                _warned_x64.add(name)
                warnings.warn(
                    f"{name} is float64 but JAX's x64 mode is off, so gdjax uses float32. "
                    f"Enable jax.config.update('jax_enable_x64', True) to keep float64.",
                    UserWarning,
                    stacklevel=4,
                )
            arr = np.asarray(arr, np.float32)
    return arr
