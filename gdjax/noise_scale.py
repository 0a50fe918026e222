"""``noise_scale``: the simple gradient noise scale ``B_simple = tr(Sigma) / |G|^2`` of McCandlish et al. (2018).

``G`` is the full-data mean gradient and ``Sigma`` the covariance of the
per-example gradients ``g_i`` over the ``N`` examples. A mini-batch gradient
of ``B`` examples drawn at random has noise ``tr(Sigma) / B`` around ``G``:
below ``B_simple`` the noise dominates the signal and a larger batch buys
nearly proportionally fewer steps; above it, larger batches stop paying
("An Empirical Model of Large-Batch Training", McCandlish, Kaplan, Amodei
et al., 2018, arXiv:1812.06162). It is the critical batch size's first
estimate.

Per-example gradients come from ``jax.vmap`` of ``jax.grad`` of the loss of
one example (a batch of one for a ``batched=True`` loss), a block of rows at
a time inside a ``lax.scan`` (:mod:`gdjax._blocks`), so memory does not grow
with the data: a block holds at most about ``_blocks.BLOCK_ELEMENTS`` values
of data and of gradients together. Two passes, in one compiled program:
the first sums the gradients (``G``), the second the squared distances
``|g_i - G|^2`` (``tr(Sigma)``), which, unlike ``mean |g_i|^2 - |G|^2``,
loses no precision to cancellation when the noise is small next to ``G``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple, overload

import jax
import jax.numpy as jnp

from gdjax import _blocks, _measure, _validate
from gdjax._run import Layout
from gdjax._types import PyTree
from gdjax.data import Batch, DataIterator
from gdjax.step import masked_mean

__all__ = ["NoiseScaleInfo", "noise_scale"]


class NoiseScaleInfo(NamedTuple):
    """What :func:`noise_scale` measured, with ``return_info=True``.

    Attributes:
      value: ``B_simple = trace_sigma / grad_norm_sq`` (inf when ``grad_norm_sq`` is 0).
      trace_sigma: ``tr(Sigma) = mean_i |g_i - G|^2``, the population covariance over the ``N`` examples
        (multiply by ``N / (N - 1)`` for the unbiased estimate of a larger population's).
      grad_norm_sq: ``|G|^2``, the squared norm of the full-data mean gradient.
      loss: the full-data mean loss at the params.
      num_examples: ``N``.
    """

    value: float
    trace_sigma: float
    grad_norm_sq: float
    loss: float
    num_examples: int


@overload
def noise_scale(
    loss_fn: Callable[..., Any],
    params: PyTree,
    data: PyTree | DataIterator,
    *,
    batched: bool = ...,
    has_aux: bool = ...,
    with_key: bool = ...,
    loss_hyperparams: Mapping[str, float] | None = ...,
    model_state: PyTree = ...,
    return_info: Literal[False] = ...,
) -> float: ...


@overload
def noise_scale(
    loss_fn: Callable[..., Any],
    params: PyTree,
    data: PyTree | DataIterator,
    *,
    batched: bool = ...,
    has_aux: bool = ...,
    with_key: bool = ...,
    loss_hyperparams: Mapping[str, float] | None = ...,
    model_state: PyTree = ...,
    return_info: Literal[True],
) -> NoiseScaleInfo: ...


def noise_scale(
    loss_fn: Callable[..., Any],
    params: PyTree,
    data: PyTree | DataIterator,
    *,
    batched: bool = False,
    has_aux: bool = False,
    with_key: bool = False,
    loss_hyperparams: Mapping[str, float] | None = None,
    model_state: PyTree = None,
    return_info: bool = False,
) -> float | NoiseScaleInfo:
    """The simple noise scale ``B_simple = tr(Sigma) / |G|^2`` of the loss at ``params``.

    ``G = mean_i g_i`` is the full-data gradient and ``tr(Sigma) = mean_i
    |g_i - G|^2`` the trace of the per-example gradients' covariance over
    the ``N`` examples: the population covariance of the data set, which is
    the covariance of one example drawn from it at random (as training
    draws them). It is independent of the examples' order.

    Args:
      loss_fn: ``loss_fn(params, example) -> scalar`` (or as ``batched``,
        ``has_aux``, ``with_key`` and ``model_state`` say, as in
        :func:`gdjax.fit`; a ``batched=True`` loss is called on batches of
        one example).
      params: any pytree (an Equinox module, a ``res.state``): its float
        arrays are the variables; every other leaf is held static.
      data: a pytree of arrays with a leading axis of at least 2 examples,
        or a :class:`gdjax.DataIterator` (every example counts; streamed data
        is read from where it lives, block by block).
      batched: ``loss_fn(params, batch)`` takes a :class:`gdjax.Batch`.
      has_aux: ``loss_fn`` returns ``(loss, aux)`` (aux is ignored).
      with_key: ``loss_fn`` takes ``key=`` (given None here).
      loss_hyperparams: name -> number passed to the loss as keywords.
      model_state: the loss's model state (it takes ``model_state=`` and
        returns ``(loss, new_model_state)``); held fixed.
      return_info: return a :class:`NoiseScaleInfo` instead of the float.

    Returns:
      ``B_simple`` as a Python float, in examples (a :class:`NoiseScaleInfo`
      with ``return_info``). It is ``inf`` when ``G`` is exactly 0 (at a
      minimum every batch size is noise-dominated).

    Raises:
      TypeError, ValueError: bad arguments, before anything is compiled (a
        loss that is not callable, fewer than 2 examples, params without
        float arrays); after compiling, a ValueError when the loss or the
        per-example gradients are not finite at ``params``.

    Example:
      >>> import jax, gdjax as gd
      >>> prob = gd.problems.linear_regression(n=256, d=4, noise=0.5, key=jax.random.key(0))
      >>> m = gd.models.linear()
      >>> b = gd.noise_scale(m.loss, m.init(None, 4), prob.data)  # far from the minimum: small
      >>> 0 < b < 10
      True
    """
    return_info = _validate.check_flag(return_info, "return_info")
    m = _measure.prepare(
        loss_fn,
        params,
        data,
        batched=batched,
        has_aux=has_aux,
        with_key=with_key,
        loss_hyperparams=loss_hyperparams,
        model_state=model_state,
        min_examples=2,
        why="the noise scale (a covariance of per-example gradients)",
    )
    dtype = _measure.vector_dtype(m.params)
    loss, grad_norm_sq, trace = (float(x) for x in _measure.call(_moments, m, jnp.zeros((), dtype)))
    if not math.isfinite(loss):
        raise ValueError(
            f"the loss at params is not finite (the full-data mean loss is {loss}): pass params where it is finite."
        )
    if not (math.isfinite(grad_norm_sq) and math.isfinite(trace)):
        raise ValueError(
            "the per-example gradients of the loss are not finite at these params: the loss is not differentiable "
            "there for some example (jnp.sqrt at 0, a log of 0, ...), or they overflow. Measure at other params."
        )
    value = trace / grad_norm_sq if grad_norm_sq > 0 else math.inf
    info = NoiseScaleInfo(value, trace, grad_norm_sq, loss, m.it.num_examples)
    return info if return_info else value


def _moments(
    layout: Layout,
    it: DataIterator,
    params: PyTree,
    model_state: PyTree,
    lhp: dict[str, jax.Array],
    like: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(mean loss, |G|^2, tr(Sigma))`` in two passes over blocks of rows; ``like`` has the dtype of the sums."""
    loss_fn = _measure.loss(layout.cfg, lhp, model_state)
    dtype = like.dtype
    size = sum(int(x.size) for x in jax.tree.leaves(params))
    data = _measure.rows(layout.cfg, it, per_row=size)  # a block's per-example gradients are bounded too

    def one(example: PyTree) -> tuple[jax.Array, jax.Array]:
        single = Batch(jax.tree.map(lambda x: x[None], example), jnp.ones((1,), bool))
        loss, grad = jax.value_and_grad(lambda p: loss_fn(p, single))(params)
        return loss.astype(dtype), _measure.flat(grad, dtype)

    def first(batch: Batch) -> jax.Array:
        losses, grads = jax.vmap(one)(batch.data)
        return jnp.concatenate([masked_mean(losses, batch.mask)[None], masked_mean(grads, batch.mask)])

    out = _blocks.mean(first, data)
    loss, mean = out[0], out[1:]

    def second(batch: Batch) -> jax.Array:
        _, grads = jax.vmap(one)(batch.data)
        return masked_mean(jnp.sum(jnp.square(grads - mean), axis=1), batch.mask)[None]

    trace = _blocks.mean(second, data)[0]
    return loss, jnp.vdot(mean, mean), trace
