"""The static configuration of a run, checked once and cached.

:func:`config` checks the loss on one batch's shapes (``jax.eval_shape``),
decides the loss dtype, the history capacity and the scan's unrolling, and
caches the result, so a second call with the same loss, optimizer, shapes
and options costs a look-up. :func:`inputs` turns the traced values (the
hyperparameters and ``tol``) into arrays of the dtypes the program uses.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gdjax import _validate, _validate_eval
from gdjax._caches import BoundedCache, callable_key
from gdjax._evaluation import Evaluation, aux_layout
from gdjax._optimizer import is_factory
from gdjax._run import Config, Inputs, capacity, unroll_for, with_static
from gdjax._runner import signature
from gdjax._trainable import Static, combine
from gdjax._types import PyTree
from gdjax._validate import RunArgs
from gdjax._validate_loss import loss_dtype
from gdjax.data import DataIterator
from gdjax.step import TrainState, accumulation_dtype


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
    evaluation: Evaluation | None = None,
    loss_hparams: tuple[str, ...] = (),
    with_key: bool = False,
    model_state: PyTree = None,
    static: Static | None = None,
) -> Config:
    """The run's static configuration (cached: equal configurations share compiled programs).

    ``members`` is the number of runs one program holds (a sweep's chunk),
    which bounds how many epochs of history fit in it. ``evaluation`` comes
    from :func:`gdjax._validate_eval.evaluation`; here it gets the loss's aux
    layout and its monitor is checked. ``params`` are the trained leaves
    (``static`` holds the others); ``model_state`` is the loss's initial model
    state, or None when the loss has none.
    """
    evaluation = Evaluation() if evaluation is None else evaluation
    stateful = model_state is not None
    sig = (
        callable_key(loss_fn),
        has_aux,
        batched,
        evaluation,
        loss_hparams,
        with_key,
        static,
        signature(params),
        signature(model_state),
        signature(it),
    )
    checked = _CHECKED.get(sig)
    if checked is None:
        _validate.check_params(params)
        bound = loss_fn if static is None else functools.partial(with_static, loss_fn, static.tree)
        dtype, aux = loss_dtype(
            bound,
            params,
            it,
            has_aux=has_aux,
            batched=batched,
            loss_hparams=loss_hparams,
            with_key=with_key,
            model_state=model_state,
            stateful=stateful,
        )
        ev = _validate_eval.resolve_monitor(dataclasses.replace(evaluation, aux=aux_layout(aux)))
        model = None if static is None else functools.partial(combine, static=static.tree)
        _validate_eval.metric_shapes(ev, params, it, batched=batched, model_state=model_state, model=model)
        checked = (dtype, ev)
        _CHECKED.put(sig, checked)
    dtype, ev = checked
    aux_size = sum(math.prod(shape) for _, shape in ev.aux)
    acc = accumulation_dtype(dtype)
    return Config.make(
        loss_fn,
        optimizer,
        factory=is_factory(optimizer),
        has_aux=bool(has_aux),
        batched=bool(batched),
        log_every=log_every,
        epoch_capacity=capacity(
            epochs, it.num_batches, log_every, members, itemsize=np.dtype(acc).itemsize, columns=ev.width, aux=aux_size
        ),
        loss_dtype=acc,
        unroll=unroll_for(params, it.batch_size),
        evaluation=ev,
        loss_hparams=loss_hparams,
        with_key=bool(with_key),
        stateful=stateful,
        static=static,
    )


#: Losses, metrics and aux already checked on these shapes (``eval_shape`` costs milliseconds).
_CHECKED: BoundedCache[tuple[Any, Evaluation]] = BoundedCache("checked configurations", 256)


def float_array(value: Any) -> jax.Array:
    """A hyperparameter as a JAX array of the default float dtype."""
    return jnp.asarray(value, dtype=jnp.result_type(float))


def hparam_arrays(values: Mapping[str, Any] | None) -> dict[str, jax.Array]:
    """Hyperparameter values (numbers or per-member arrays) as arrays of the default float dtype."""
    return {k: float_array(v) for k, v in (values or {}).items()}


def tol_array(cfg: Config, tol: float | None) -> jax.Array:
    """``tol`` in the loss's dtype; -inf (never reached) without one."""
    return jnp.asarray(-np.inf if tol is None else tol, cfg.loss_dtype)


def inputs(
    cfg: Config,
    args: RunArgs,
    init: TrainState,
    hparams: Mapping[str, Any],
    loss_hparams: Mapping[str, Any],
    eval_data: PyTree,
    key: jax.Array | None = None,
    first: int = 0,
) -> Inputs:
    """The traced inputs of a run (``key`` overrides ``args.key``: a sweep's per-member order keys).

    ``init`` is where the run starts (:class:`gdjax._run.Inputs`);
    ``first`` the epoch it starts at; it trains to ``first + args.epochs``.
    """
    return Inputs(
        it=args.it,
        init=init,
        hparams=hparam_arrays(hparams),
        key=args.key if key is None else key,
        tol=tol_array(cfg, args.tol),
        loss_hparams=hparam_arrays(loss_hparams),
        eval_data=eval_data,
        epochs=jnp.asarray(first + args.epochs, jnp.int32),
        first=jnp.asarray(first, jnp.int32),
    )
