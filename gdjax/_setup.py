"""Argument checks and configuration shared by ``fit`` and ``sweep``.

Everything here runs on the host before anything is compiled: the loss is
checked with ``jax.eval_shape`` on one example, so a wrong return type or a
params/data mismatch fails with a plain sentence instead of a trace.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gdjax import _checks, _optimizer
from gdjax._engine import Config, capacity, check_steps, signature, unroll_for
from gdjax.checkpoint import Checkpointer, digest, function_digest
from gdjax.data import Batch, DataIterator
from gdjax.step import BATCHED_FORMS, accumulation_dtype, batch_loss

PyTree = Any


def check_data(data: Any) -> DataIterator:
    if not isinstance(data, DataIterator):
        raise TypeError(
            f"data must be a gdjax DataIterator; got {type(data).__name__}. Wrap your arrays with "
            f"gd.minibatch(data, batch_size=32), gd.stochastic(data) or gd.full_batch(data)."
        )
    return data


def check_params(params: PyTree, name: str = "params") -> None:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
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


def is_factory(optimizer: Any) -> bool:
    if isinstance(optimizer, optax.GradientTransformation):
        return False
    if callable(optimizer):
        return True
    raise TypeError(
        f"optimizer must be an optax GradientTransformation (optax.sgd(0.1)) or a factory "
        f"(optax.sgd, with learning_rate=...); got {type(optimizer).__name__}."
    )


def hyperparameters(
    optimizer: Any, learning_rate: Any, hyperparams: Mapping[str, Any] | None, *, allow_arrays: bool
) -> dict[str, Any]:
    """Collect ``learning_rate`` and ``hyperparams`` into one checked mapping of numpy values."""
    factory = is_factory(optimizer)
    hyperparams = _checks.check_hyperparams(hyperparams)
    if "learning_rate" in hyperparams and learning_rate is not None:
        raise ValueError("learning_rate is given twice: as learning_rate= and in hyperparams. Give it once.")
    if learning_rate is not None:
        hyperparams = {"learning_rate": learning_rate, **hyperparams}
    if not factory:
        if hyperparams:
            raise ValueError(
                f"optimizer is already built (a GradientTransformation), so {sorted(hyperparams)} cannot be "
                f"applied. Pass the factory instead, e.g. optimizer=optax.sgd, learning_rate=0.1."
            )
        return {}
    if not hyperparams:
        raise ValueError(
            f"optimizer {getattr(optimizer, '__name__', optimizer)!r} is a factory, so it needs its values: "
            f"pass learning_rate=... (and hyperparams={{...}} for others), or pass a built optimizer."
        )
    _optimizer.check_keywords(optimizer, hyperparams)
    out = {}
    for name, value in hyperparams.items():
        arr = _checks.check_hyperparam(value, name)
        if arr.ndim != 0 and not allow_arrays:
            raise ValueError(f"{name} must be a single number in fit; got shape {arr.shape}. Use gd.sweep for many.")
        out[name] = arr
    return out


def loss_dtype(loss_fn: Callable, params: PyTree, it: DataIterator, *, has_aux: bool, batched: bool) -> Any:
    """Check the loss on one batch with ``eval_shape`` and return its dtype."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(params, example); got {type(loss_fn).__name__}.")
    for flag, value in (("has_aux", has_aux), ("batched", batched)):
        if not isinstance(value, bool | np.bool_):
            raise TypeError(f"{flag} must be True or False; got {type(value).__name__} {value!r}.")
    example = jax.tree.map(lambda x: jax.ShapeDtypeStruct((it.batch_size, *x.shape[1:]), x.dtype), it.data)
    batch = Batch(example, jax.ShapeDtypeStruct((it.batch_size,), bool))
    try:
        out = jax.eval_shape(batch_loss(loss_fn, has_aux=has_aux, batched=batched), params, batch)
    except Exception as exc:
        # does the other form work? then the flag is what is wrong
        try:
            jax.eval_shape(batch_loss(loss_fn, has_aux=has_aux, batched=not batched), params, batch)
            other = True
        except Exception:
            other = False
        if batched:
            raise _batched_mismatch(params, it, exc, per_example=other) from exc
        if isinstance(exc, TypeError) and "loss_fn must return" in str(exc) and not other:
            raise
        raise _mismatch(params, it, exc, batched=other) from exc
    return out[0].dtype


def _shapes(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: f"{getattr(x, 'dtype', '?')}{list(getattr(x, 'shape', ()))}", tree)


def _mismatch(params: PyTree, it: DataIterator, exc: Exception, *, batched: bool = False) -> TypeError:
    example = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), it.data)
    hint = (
        " It works when given a whole gd.Batch: if it is written per batch, loss_fn(params, batch) applying "
        "batch.mask, pass batched=True."
        if batched
        else ""
    )
    return TypeError(
        f"loss_fn(params, example) failed on these structures: params = {_shapes(params)}, "
        f"example = {_shapes(example)}. Make the loss accept them.{hint} The error was: {type(exc).__name__}: {exc}"
    )


def _batched_mismatch(params: PyTree, it: DataIterator, exc: Exception, *, per_example: bool) -> TypeError:
    data = jax.tree.map(lambda x: jax.ShapeDtypeStruct((it.batch_size, *x.shape[1:]), x.dtype), it.data)
    hint = (
        "loss_fn works on one example: drop batched=True. "
        if per_example
        else f"Make it accept batch.data = {_shapes(data)} and params = {_shapes(params)}. "
    )
    return TypeError(
        f"loss_fn(params, batch) failed with batched=True. {BATCHED_FORMS} {hint}"
        f"The error was: {type(exc).__name__}: {exc}"
    )


def config(
    loss_fn: Callable,
    optimizer: Any,
    params: PyTree,
    it: DataIterator,
    *,
    epochs: int,
    log_every: int,
    has_aux: bool,
    batched: bool,
    members: int = 1,
) -> Config:
    """The run's static configuration (cached: equal configurations share compiled programs).

    ``members`` is the number of runs one program holds (a sweep's chunk),
    which bounds how many epochs of history fit in it.
    """
    epoch_capacity = capacity(epochs, it.num_batches, log_every, members, itemsize=8)
    sig = (
        loss_fn,
        optimizer,
        has_aux,
        batched,
        log_every,
        epoch_capacity,
        signature(params),
        signature(it),
    )
    cfg = _CONFIGS.get(sig)
    if cfg is None:
        cfg = _make_config(
            loss_fn,
            optimizer,
            params,
            it,
            epoch_capacity=epoch_capacity,
            log_every=log_every,
            has_aux=has_aux,
            batched=batched,
        )
        if len(_CONFIGS) >= 256:
            _CONFIGS.pop(next(iter(_CONFIGS)))
        _CONFIGS[sig] = cfg
    return cfg


_CONFIGS: dict[Any, Config] = {}


def _make_config(loss_fn, optimizer, params, it, *, epoch_capacity, log_every, has_aux, batched) -> Config:
    dtype = loss_dtype(loss_fn, params, it, has_aux=has_aux, batched=batched)
    return Config(
        loss_fn=loss_fn,
        optimizer=optimizer,
        factory=is_factory(optimizer),
        has_aux=bool(has_aux),
        batched=bool(batched),
        log_every=log_every,
        epoch_capacity=epoch_capacity,
        loss_dtype=accumulation_dtype(dtype),
        unroll=unroll_for(params, it.batch_size),
    )


def common(loss_fn, params, optimizer, data, epochs, key, tol, log_every, progress):
    """Check the arguments ``fit`` and ``sweep`` share; return (it, epochs, key, tol, log_every)."""
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False; got {progress!r}.")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(params, example); got {type(loss_fn).__name__}.")
    it = check_data(data)
    epochs = _checks.check_positive_int(epochs, "epochs", low=1)
    check_steps(epochs, it.num_batches)
    key = _checks.check_key(key)
    tol = _checks.check_tol(tol)
    log_every = _checks.check_positive_int(log_every, "log_every", low=1)
    is_factory(optimizer)
    return it, epochs, key, tol, log_every


def float_array(value: Any) -> jax.Array:
    """A hyperparameter as a JAX array of the default float dtype."""
    return jnp.asarray(value, dtype=jnp.result_type(float))


def describe(fn: Any) -> Any:
    """A JSON-able name for a function or factory (``functools.partial`` arguments included)."""
    if isinstance(fn, functools.partial):
        return {"partial": describe(fn.func), "args": repr(fn.args), "keywords": repr(sorted(fn.keywords.items()))}
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def checkpointer(
    checkpoint: Any,
    checkpoint_every: Any,
    *,
    optimizer: Any,
    settings: Callable[[], dict[str, Any]],
    prefix: str = "",
) -> Checkpointer | None:
    """Check the checkpoint arguments and build the :class:`Checkpointer` (None without ``checkpoint``).

    ``settings()`` describes the run (called only with a checkpoint: it
    hashes the data). The folder is created and tried for writing here; the
    caller then runs under ``checkpoint.holding([...])``, which locks the
    folder and refuses one holding another run's checkpoints, all before
    anything is compiled.
    """
    if checkpoint is None:
        if checkpoint_every is not None:
            raise ValueError("checkpoint_every is set but checkpoint is not: pass checkpoint='some/folder' too.")
        return None
    if not isinstance(checkpoint, str | os.PathLike):
        raise TypeError(f"checkpoint must be a folder path (str or Path); got {type(checkpoint).__name__}.")
    every = 1 if checkpoint_every is None else _checks.check_positive_int(checkpoint_every, "checkpoint_every")
    if not is_factory(optimizer):
        raise ValueError(
            "checkpoint= needs the optimizer as a factory with its values (optimizer=optax.sgd, "
            "learning_rate=0.1), so that the checkpoint can record them; a built optimizer hides them."
        )
    return Checkpointer(checkpoint, {**settings(), "x64": bool(jax.config.jax_enable_x64)}, every=every, prefix=prefix)


def data_settings(it: DataIterator) -> dict[str, Any]:
    """The iterator's shape and a digest of its data, for checkpoint settings."""
    n, b, shuffle, drop = it.spec
    return {"num_examples": n, "batch_size": b, "shuffle": shuffle, "drop_remainder": drop, "digest": digest(it.data)}


def run_settings(kind: str, loss_fn: Callable, optimizer: Any, it: DataIterator, key: jax.Array, **values: Any) -> dict:
    """The JSON-able description of a run that a checkpoint must match to be resumed."""
    return {
        "kind": kind,
        "loss_fn": describe(loss_fn),
        "loss_fn_digest": function_digest(loss_fn),  # a closure of the same name over other values differs
        "optimizer": describe(optimizer),
        "data": data_settings(it),
        "key": digest(key),
        **values,
    }
