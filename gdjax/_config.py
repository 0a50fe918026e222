"""The static configuration of a run, checked once and cached.

:func:`config` checks the loss on one batch's shapes (``jax.eval_shape``),
decides the loss dtype, the history capacity and the scan's unrolling, and
caches the result, so a second call with the same loss, optimizer, shapes
and options costs a look-up. :func:`inputs` turns the traced values (the
hyperparameters and ``tol``) into arrays of the dtypes the program uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gdjax import _validate
from gdjax._caches import BoundedCache, callable_key
from gdjax._optimizer import is_factory
from gdjax._program import Config, capacity, unroll_for
from gdjax._runner import signature
from gdjax._types import PyTree
from gdjax._validate_loss import loss_dtype
from gdjax.data import DataIterator
from gdjax.step import accumulation_dtype


def config(
    loss_fn: Callable[..., Any],
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
        callable_key(loss_fn),
        callable_key(optimizer),
        has_aux,
        batched,
        log_every,
        epoch_capacity,
        signature(params),
        signature(it),
    )
    cfg = _CONFIGS.get(sig)
    if cfg is None:
        _validate.check_params(params)
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
        _CONFIGS.put(sig, cfg)
    return cfg


#: Configurations already checked (the loss's eval_shape check costs milliseconds).
_CONFIGS: BoundedCache[Config] = BoundedCache("checked configurations", 256)


def _make_config(
    loss_fn: Callable[..., Any],
    optimizer: Any,
    params: PyTree,
    it: DataIterator,
    *,
    epoch_capacity: int,
    log_every: int,
    has_aux: bool,
    batched: bool,
) -> Config:
    dtype = loss_dtype(loss_fn, params, it, has_aux=has_aux, batched=batched)
    return Config.make(
        loss_fn,
        optimizer,
        factory=is_factory(optimizer),
        has_aux=bool(has_aux),
        batched=bool(batched),
        log_every=log_every,
        epoch_capacity=epoch_capacity,
        loss_dtype=accumulation_dtype(dtype),
        unroll=unroll_for(params, it.batch_size),
    )


def float_array(value: Any) -> jax.Array:
    """A hyperparameter as a JAX array of the default float dtype."""
    return jnp.asarray(value, dtype=jnp.result_type(float))


def hparam_arrays(values: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Hyperparameter values (numbers or per-member arrays) as arrays of the default float dtype."""
    return {k: float_array(v) for k, v in values.items()}


def tol_array(cfg: Config, tol: float | None) -> jax.Array:
    """``tol`` in the loss's dtype; -inf (never reached) without one."""
    return jnp.asarray(-np.inf if tol is None else tol, cfg.loss_dtype)
