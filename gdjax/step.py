"""The pure training step.

``make_step(loss_fn, optimizer)`` returns ``step(state, batch) -> (state,
metrics)``: one gradient of the mask-weighted mean loss over the batch and one
optimizer update. It has no hidden state and does not ``jit`` itself; the
caller decides where to ``jit``, ``scan`` or ``vmap`` it.

``loss_fn(params, example) -> scalar`` is the loss of one example (a slice of
the data without its leading axis). The step maps it over the batch with
``vmap`` and takes ``sum(mask * loss) / sum(mask)``, so a padded ragged batch
gives exactly the mean over its real examples. With ``batched=True``,
``loss_fn(params, batch)`` receives the whole :class:`gdjax.Batch` and must
weight by ``batch.mask`` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gdjax._types import PyTree
from gdjax.data import Batch

__all__ = ["TrainState", "batch_loss", "init", "make_step"]


class TrainState(NamedTuple):
    """Everything a step changes.

    Attributes:
      params: the model parameters (any pytree).
      opt_state: the optimizer's state.
      step: int32 scalar, the number of updates taken.
    """

    params: PyTree
    opt_state: optax.OptState
    step: jax.Array


def init(params: PyTree, optimizer: optax.GradientTransformation) -> TrainState:
    """The state before the first step.

    Example:
      >>> import jax.numpy as jnp, optax, gdjax as gd
      >>> state = gd.init({"w": jnp.zeros(3)}, optax.sgd(0.1))
      >>> int(state.step)
      0
    """
    _check_optimizer(optimizer)
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def _check_optimizer(optimizer: Any) -> None:
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be an optax.GradientTransformation such as optax.sgd(0.1); got "
            f"{type(optimizer).__name__}. If you passed a factory like optax.sgd, call it with a learning rate."
        )


def accumulation_dtype(dtype: Any) -> Any:
    """The dtype sums and means of ``dtype`` values are taken in: float32 at least.

    float16 and bfloat16 cannot count past 65504 (or 256 exactly), so a mean
    over a large data set taken in them is NaN or 0.
    """
    return jnp.promote_types(dtype, jnp.float32)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over the leading (batch) axis of the entries the mask keeps; trailing axes stay.

    Taken in :func:`accumulation_dtype` in one reduction: each kept term is
    divided by ``scale``, the power of two at or above the count (exact), the
    sum divided by the count and multiplied back by ``scale``. So a mean of
    ones is exactly 1, and a sum that would overflow although the mean is
    representable (1e34 per example over 1e5 examples) does not.
    """
    acc = accumulation_dtype(values.dtype)
    count = jnp.maximum(jnp.sum(mask, dtype=jnp.int32), 1).astype(acc)
    scale = jnp.exp2(jnp.ceil(jnp.log2(count)))
    keep = mask.reshape(mask.shape + (1,) * (values.ndim - 1))
    total = jnp.sum(jnp.where(keep, values.astype(acc) / scale, 0), axis=0)
    return total / count * scale


def batch_loss(loss_fn: Callable, *, has_aux: bool = False, batched: bool = False) -> Callable:
    """Turn a per-example loss into ``f(params, batch) -> (loss, aux)``.

    ``aux`` is the masked mean over the batch's real examples of each leaf of
    the per-example auxiliary output, in float32 at least: an int or bool
    leaf becomes the fraction (or mean count) over real examples, so padding
    rows of a ragged batch never count (``None`` without ``has_aux``; with
    ``batched=True`` the loss's own aux, as it returned it).

    Raises:
      TypeError: at trace time, if ``loss_fn`` does not return a float scalar.
    """

    def split(out: Any) -> tuple[Any, Any]:
        if not has_aux:
            return out, None
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise TypeError(
                f"loss_fn must return (loss, aux) with has_aux=True; it returned {_describe(out)}. "
                f"Return a pair, or drop has_aux."
            )
        return out[0], out[1]

    def call(params: PyTree, x: PyTree) -> Any:
        try:
            return loss_fn(params, x)
        except Exception as exc:  # the error stays the user's; the note says which form gdjax called
            exc.add_note(f"gdjax called loss_fn with batched={batched}. {BATCHED_FORMS}")
            raise

    def per_example(params: PyTree, example: PyTree) -> tuple[jax.Array, Any]:
        loss, aux = split(call(params, example))
        check_scalar_loss(loss, has_aux=has_aux)
        return loss, aux

    def fn(params: PyTree, batch: Batch) -> tuple[jax.Array, Any]:
        if batched:
            loss, aux = split(call(params, batch))
            check_scalar_loss(loss, has_aux=has_aux, batched=True)
            return loss, aux
        losses, aux = jax.vmap(per_example, in_axes=(None, 0))(params, batch.data)
        loss = masked_mean(losses, batch.mask)
        if aux is not None:
            aux = jax.tree.map(lambda a: masked_mean(jnp.asarray(a), batch.mask), aux)
        return loss, aux

    return fn


def _describe(out: Any) -> str:
    """What a loss returned, in user terms (an array's shape and dtype, not a tracer's class)."""
    if hasattr(out, "shape") and hasattr(out, "dtype"):
        return f"one array of shape {tuple(out.shape)} and dtype {out.dtype}"
    if isinstance(out, tuple | list):
        return f"a {type(out).__name__} of {len(out)} items"
    return type(out).__name__


def check_scalar_loss(loss: Any, *, has_aux: bool, batched: bool = False) -> None:
    """Raise TypeError unless ``loss`` is a float scalar (works on tracers and shapes)."""
    shape = getattr(loss, "shape", None)
    dtype = getattr(loss, "dtype", None)
    if shape is None or dtype is None or tuple(shape) != () or not jnp.issubdtype(dtype, jnp.floating):
        got = f"shape {tuple(shape)} dtype {dtype}" if shape is not None else type(loss).__name__
        hint = (
            " With has_aux=True it must return (loss, aux)."
            if has_aux
            else " If it returns (loss, aux), pass has_aux=True; if it returns one value per example, reduce it."
        )
        if batched:
            raise TypeError(
                f"loss_fn must return a float scalar (the mean loss of the batch, with batched=True); it returned "
                f"{got}.{hint} {BATCHED_FORMS}"
            )
        raise TypeError(f"loss_fn must return a float scalar (the loss of one example); it returned {got}.{hint}")


#: The two forms of loss function, for error messages.
BATCHED_FORMS = (
    "By default loss_fn(params, example) is the loss of one example and gdjax averages it over the batch; "
    "with batched=True, loss_fn(params, batch) takes a whole gd.Batch (batch.data with a leading axis of "
    "examples) and returns its mean loss, weighting by batch.mask itself."
)


def check_trainable(params: PyTree, name: str = "state.params") -> None:
    """Raise TypeError unless every leaf of ``params`` is a float array (works on tracers and shapes)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            got = dtype if dtype is not None else type(leaf).__name__
            raise TypeError(
                f"{name}{jax.tree_util.keystr(path)} has dtype {got}, which has no gradient; "
                f"make it a float array with jnp.asarray(x, jnp.float32), or hold integer leaves that are not "
                f"trained outside params."
            )


def make_step(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    batched: bool = False,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, Any]]]:
    """Build the pure step ``step(state, batch) -> (state, metrics)``.

    Args:
      loss_fn: ``loss_fn(params, example) -> scalar`` (or ``(scalar, aux)``
        with ``has_aux``); with ``batched=True``, ``loss_fn(params, batch)``.
      optimizer: any optax ``GradientTransformation``; its ``update`` is given
        the params, so optimizers that need them (weight decay, lookahead...)
        work.
      has_aux: ``loss_fn`` returns ``(loss, aux)``; ``metrics["aux"]`` holds
        the masked mean of each ``aux`` leaf over the batch's real examples
        (an int or bool leaf as a float fraction: padding rows never count).
        With ``batched=True``, the aux as ``loss_fn`` returned it.
      batched: ``loss_fn`` takes the whole batch and applies the mask itself.

    Returns:
      A pure function; ``metrics["loss"]`` is the batch's mean loss before
      the update. Wrap it in ``jax.jit`` yourself.

    Example:
      >>> import jax, jax.numpy as jnp, optax, gdjax as gd
      >>> data = {"x": jnp.arange(8.0), "y": 2 * jnp.arange(8.0)}
      >>> loss = lambda p, ex: (p * ex["x"] - ex["y"]) ** 2
      >>> opt = optax.sgd(0.01)
      >>> step = jax.jit(gd.make_step(loss, opt))
      >>> state = gd.init(jnp.zeros(()), opt)
      >>> for batch in gd.minibatch(data, 4).iterate(jax.random.key(0)):
      ...     state, metrics = step(state, batch)
      >>> int(state.step)
      2
    """
    _check_optimizer(optimizer)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(params, example); got {type(loss_fn).__name__}.")
    objective = batch_loss(loss_fn, has_aux=has_aux, batched=batched)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Any]]:
        check_trainable(state.params)
        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        # a hyperparameter of another float dtype (a traced float64 learning rate with float32 params, say)
        # must not promote the optimizer state: scans and checkpoints need it to keep its type
        opt_state = jax.tree.map(
            lambda new, old: new.astype(old.dtype) if hasattr(old, "dtype") and hasattr(new, "astype") else new,
            opt_state,
            state.opt_state,
        )
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss}
        if has_aux:
            metrics["aux"] = aux
        return TrainState(params, opt_state, state.step + 1), metrics

    return step
