"""The loss function checked on the shapes of one batch, before anything is compiled.

``jax.eval_shape`` runs the loss (per example under ``vmap``, or on the whole
batch with ``batched=True``) on the parameters' and data's shapes: a loss
that does not return a float scalar, does not fit the parameters, or is of
the other form than ``batched`` says fails here with a plain sentence.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gdjax._types import PyTree
from gdjax._validate import check_flag
from gdjax.data import Batch, DataIterator
from gdjax.step import BATCHED_FORMS, batch_loss


def loss_dtype(
    loss_fn: Callable[..., Any],
    params: PyTree,
    it: DataIterator,
    *,
    has_aux: bool,
    batched: bool,
    loss_hparams: tuple[str, ...] = (),
    with_key: bool = False,
    model_state: PyTree = None,
    stateful: bool = False,
) -> tuple[Any, Any]:
    """Check the loss on one batch with ``eval_shape``; return its dtype and the shapes of its aux (batch means).

    ``loss_hparams`` are the keywords the loss is called with (given float
    values here); with ``with_key`` it gets a key, with ``stateful`` the
    ``model_state`` (shapes are enough), and must return a new one like it.
    """
    has_aux, batched = check_flag(has_aux, "has_aux"), check_flag(batched, "batched")
    values = dict.fromkeys(loss_hparams, jax.ShapeDtypeStruct((), jnp.result_type(float)))
    key = jax.random.key(0) if with_key else None

    def objective(batched: bool) -> Callable[..., Any]:
        def f(params: PyTree, batch: Batch, values: dict[str, Any], key: Any, model_state: Any) -> Any:
            bound = functools.partial(loss_fn, **values) if values else loss_fn
            fn = batch_loss(bound, has_aux=has_aux, batched=batched, with_key=with_key, stateful=stateful)
            loss, (aux, _) = fn(params, batch, key, model_state)
            return loss, aux

        return f

    example = jax.tree.map(lambda x: jax.ShapeDtypeStruct((it.batch_size, *x.shape[1:]), x.dtype), it.data)
    batch = Batch(example, jax.ShapeDtypeStruct((it.batch_size,), bool))  # type: ignore[arg-type]  # shapes only
    try:
        out = jax.eval_shape(objective(batched), params, batch, values, key, model_state)
    except Exception as exc:
        if isinstance(exc, TypeError) and ("new model state" in str(exc) or "with model_state" in str(exc)):
            raise  # the form is right, what it returns is not: the message says what to fix
        # does the other form work? then the flag is what is wrong
        try:
            jax.eval_shape(objective(not batched), params, batch, values, key, model_state)
            other = True
        except Exception:
            other = False
        if batched:
            raise _batched_mismatch(params, it, exc, per_example=other) from exc
        if isinstance(exc, TypeError) and "loss_fn must return" in str(exc) and not other:
            raise
        raise _mismatch(params, it, exc, batched=other) from exc
    return out[0].dtype, out[1]


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
