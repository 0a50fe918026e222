"""Argument checks shared by the public functions.

Every check runs on the host before anything is traced or compiled and raises
``ValueError`` or ``TypeError`` with a sentence that names the argument, says
what was wrong and how to fix it. The data's own checks are in
:mod:`gdjax._validate_data`, the loss's in :mod:`gdjax._validate_loss`, the
optimizer's in :mod:`gdjax._optimizer`.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gdjax import data as _data  # a module: data.py imports this one too
from gdjax._types import PyTree

if TYPE_CHECKING:
    from gdjax.data import DataIterator

#: The most step positions a run may have: the step counter and positions are int32.
MAX_STEPS = 2**31 - 1


def check_key(key: Any, name: str = "key") -> jax.Array:
    """Return ``key`` if it is a JAX PRNG key (typed or raw uint32[2])."""
    if isinstance(key, jax.Array | np.ndarray):
        dtype = key.dtype
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) and key.shape == ():
            return jnp.asarray(key)
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


def check_hyperparam(value: Any, name: str, *, signed: bool = False) -> np.ndarray:
    """A hyperparameter value or array as float numpy; finite, and >= 0 unless ``signed``."""
    if isinstance(value, bool | np.bool_):
        raise _not_numeric(name, f"bool {value!r}")
    try:
        kind = np.asarray(value).dtype.kind
        arr = np.asarray(value, dtype=np.float64) if kind in "iuf" else None
    except (TypeError, ValueError):
        arr = None
    if arr is None:
        raise _not_numeric(name, f"{type(value).__name__} {value!r}")
    with np.errstate(over="ignore", under="ignore"):
        used = arr.astype(jnp.result_type(float))  # the dtype the compiled program will see
    lost = (arr != 0) & (used == 0)
    if lost.any():
        i = int(np.flatnonzero(lost.ravel())[0])
        where = "" if arr.ndim == 0 else f" (entry {i})"
        raise ValueError(
            f"{name}{where} is {arr.ravel()[i]:g}, which is 0 in {used.dtype}, the dtype the program uses; pass "
            f"0 if you mean it, a value of at least {float(np.finfo(used.dtype).smallest_subnormal):g}, or enable "
            f"jax.config.update('jax_enable_x64', True)."
        )
    low = -np.inf if signed else 0
    bad = ~np.isfinite(used) | (arr < low)
    rule = "finite" if signed else "finite and >= 0"
    if bad.any():
        if arr.ndim == 0:
            hint = f" (it overflows {used.dtype})" if np.isfinite(arr) and arr >= low else ""
            raise ValueError(f"{name} must be {rule}; got {arr.item()}{hint}.")
        i = int(np.flatnonzero(bad.ravel())[0])
        value = arr.ravel()[i]
        raise ValueError(
            f"{name} must be {rule} everywhere; entry {i} is {value}"
            f"{f' (it overflows {used.dtype})' if np.isfinite(value) and value >= low else ''}. "
            f"Remove it or replace it with a {'finite' if signed else 'positive'} value."
        )
    return arr


def check_data(data: Any) -> DataIterator:
    if not isinstance(data, _data.DataIterator):
        raise TypeError(
            f"data must be a gdjax DataIterator; got {type(data).__name__}. Wrap your arrays with "
            f"gd.minibatch(data, batch_size=32), gd.stochastic(data) or gd.full_batch(data)."
        )
    return data


def leaves_with_paths(tree: PyTree, name: str) -> list[tuple[Any, Any]]:
    """``tree``'s (path, leaf) pairs; a tree JAX cannot flatten (dict keys of mixed types) is a TypeError."""
    try:
        return jax.tree_util.tree_flatten_with_path(tree)[0]
    except (ValueError, TypeError) as exc:
        raise TypeError(
            f"{name} cannot be flattened as a pytree ({exc}). Its dict keys must be of one sortable type, such as "
            f"all strings: {{'x': X, 'y': y}}."
        ) from None


def check_params(params: PyTree, name: str = "params") -> None:
    leaves = leaves_with_paths(params, name)
    if not leaves:
        raise ValueError(f"{name} is empty: there is nothing to train. Pass a pytree of float arrays.")
    for path, leaf in leaves:
        dtype = getattr(leaf, "dtype", None)
        if callable(leaf) and dtype is None:
            raise TypeError(
                f"{name}{jax.tree_util.keystr(path)} is a function, not parameters; call your init function and "
                f"pass what it returns (params=init(jax.random.key(0))); gd.sweep also takes the function itself."
            )
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"{name}{jax.tree_util.keystr(path)} must be a float array to be trained; got "
                f"{dtype if dtype is not None else type(leaf).__name__}. Use jnp.asarray(value, jnp.float32)."
            )
        if not isinstance(leaf, jax.ShapeDtypeStruct) and not np.isfinite(np.asarray(leaf, np.float32)).all():
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)} holds NaN or inf before training; "
                f"initialise it with finite values."
            )


def check_flag(value: Any, name: str) -> bool:
    """``value`` as a bool; anything but True or False (numpy's included) is refused."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False; got {type(value).__name__} {value!r}.")
    return bool(value)


def check_loss_fn(loss_fn: Any) -> Callable[..., Any]:
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(params, example); got {type(loss_fn).__name__}.")
    return loss_fn


def check_steps(epochs: int, steps_per_epoch: int) -> int:
    """The run's total step count; runs whose count would overflow the int32 step counter are refused."""
    if epochs * steps_per_epoch > MAX_STEPS:
        raise ValueError(
            f"epochs={epochs} with {steps_per_epoch} steps per epoch is {epochs * steps_per_epoch} steps, more than "
            f"the {MAX_STEPS} (2**31 - 1) a run can count. Use at most {MAX_STEPS // steps_per_epoch} epochs, or a "
            f"larger batch size."
        )
    return epochs * steps_per_epoch


class RunArgs(NamedTuple):
    """The arguments ``fit`` and ``sweep`` share, checked."""

    it: DataIterator
    epochs: int
    key: jax.Array
    tol: float | None
    log_every: int


def run_arguments(loss_fn: Any, data: Any, epochs: Any, key: Any, tol: Any, log_every: Any, progress: Any) -> RunArgs:
    """Check the arguments ``fit`` and ``sweep`` share."""
    check_flag(progress, "progress")
    check_loss_fn(loss_fn)
    it = check_data(data)
    epochs = check_positive_int(epochs, "epochs", low=1)
    check_steps(epochs, it.num_batches)
    return RunArgs(it, epochs, check_key(key), check_tol(tol), check_positive_int(log_every, "log_every", low=1))


def keyword_refusal(fn: Callable[..., Any], names: Any, also: Any = ()) -> str | None:
    """Why ``fn(params, x, **names)`` cannot be called, by its signature (None: it can, or it cannot tell).

    ``also`` names the other keywords gdjax passes with them (the loss's hyperparameters, ``key``,
    ``model_state``): the call is checked with all of them, and a refusal is blamed on ``names`` only
    when ``also`` alone would be accepted, so the check of ``also`` reports its own.
    """
    if not names:
        return None
    together = _refusal(fn, [*names, *also])
    if together is None:
        return None
    alone = _refusal(fn, names)
    if alone is not None or not also:
        return alone if alone is not None else together
    return together if _refusal(fn, also) is None else None


def _refusal(fn: Callable[..., Any], names: Any) -> str | None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins and odd callables: tracing tells
        return None
    try:
        signature.bind(None, None, **dict.fromkeys(names))
    except TypeError as exc:
        return str(exc)
    return None
