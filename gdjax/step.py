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

Randomness and model state (dropout, batch norm): with ``with_key=True`` the
loss takes ``key=``, a PRNG key for this step (``fold_in(key, state.step)``
of the key the step is given; per example, folded in again with the
example's position in the batch), and ``key=None`` where gdjax evaluates
(inference). With ``stateful=True`` it takes ``model_state=`` and returns
``(loss, new_model_state)`` (with ``has_aux``, ``(loss, (new_model_state,
aux))``); the new state is kept in :attr:`TrainState.model_state`, never
differentiated. Per example, the new state is the masked mean of the
examples' new states (float leaves; other leaves are the first example's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gdjax._types import PyTree
from gdjax.data import Batch

__all__ = ["TrainState", "batch_loss", "init", "make_step", "masked_mean"]


class TrainState(NamedTuple):
    """Everything a step changes.

    Attributes:
      params: the model parameters (any pytree).
      opt_state: the optimizer's state.
      step: int32 scalar, the number of updates taken.
      model_state: what the loss carries from step to step besides the
        parameters (batch-norm statistics), or None.
    """

    params: PyTree
    opt_state: optax.OptState
    step: jax.Array
    model_state: PyTree = None


def init(params: PyTree, optimizer: optax.GradientTransformation, model_state: PyTree = None) -> TrainState:
    """The state before the first step (``model_state``: the loss's initial model state, if it has one).

    Example:
      >>> import jax.numpy as jnp, optax, gdjax as gd
      >>> state = gd.init({"w": jnp.zeros(3)}, optax.sgd(0.1))
      >>> int(state.step)
      0
    """
    _check_optimizer(optimizer)
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), model_state)


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
    representable (1e34 per example over 1e5 examples) does not. Use it in a
    ``batched=True`` loss to weight by ``batch.mask``.

    Example:
      >>> import jax.numpy as jnp, gdjax as gd
      >>> float(gd.masked_mean(jnp.array([1.0, 3.0, 100.0]), jnp.array([True, True, False])))
      2.0
    """
    acc = accumulation_dtype(values.dtype)
    whole = jnp.maximum(jnp.sum(mask, dtype=jnp.int32), 1)
    count = whole.astype(acc)
    # the power of two at or above the count, in integer ops (cheap: XLA fuses them into their users)
    scale = jnp.left_shift(jnp.int32(1), 32 - jax.lax.clz(whole - 1)).astype(acc)
    keep = mask.reshape(mask.shape + (1,) * (values.ndim - 1))
    total = jnp.sum(jnp.where(keep, values.astype(acc) / scale, 0), axis=0)
    return total / count * scale


def batch_loss(
    loss_fn: Callable, *, has_aux: bool = False, batched: bool = False, with_key: bool = False, stateful: bool = False
) -> Callable:
    """Turn a per-example loss into ``f(params, batch, key=None, model_state=None) -> (loss, (aux, model_state))``.

    ``aux`` is the masked mean over the batch's real examples of each leaf of
    the per-example auxiliary output, in float32 at least: an int or bool
    leaf becomes the fraction (or mean count) over real examples, so padding
    rows never count (``None`` without ``has_aux``; with ``batched=True``
    the loss's own aux, as it returned it). ``model_state`` is the loss's new
    model state with ``stateful`` (see the module docstring), else the one
    given. ``key`` is passed to the loss with ``with_key`` (per example,
    ``fold_in(key, position)``; None stays None).

    Raises:
      TypeError: at trace time, if ``loss_fn`` does not return a float scalar
        (or the pair ``stateful``/``has_aux`` ask for, with a new model state
        shaped like the old).
    """
    form = LossForm(has_aux, batched, with_key, stateful)

    def call(params: PyTree, x: PyTree, key: Any, model_state: Any) -> Any:
        keywords: dict[str, Any] = {}
        if with_key:
            keywords["key"] = key
        if stateful:
            keywords["model_state"] = model_state
        try:
            return loss_fn(params, x, **keywords)
        except Exception as exc:  # the error stays the user's; the note says which form gdjax called
            exc.add_note(f"gdjax called loss_fn with {form.describe()}. {BATCHED_FORMS}")
            raise

    def per_example(params: PyTree, example: PyTree, key: Any, model_state: Any) -> tuple[jax.Array, Any, Any]:
        loss, aux, new = form.split(call(params, example, key, model_state), model_state)
        check_scalar_loss(loss, has_aux=has_aux)
        return loss, aux, new

    def fn(params: PyTree, batch: Batch, key: Any = None, model_state: Any = None) -> tuple[jax.Array, Any]:
        if batched:
            loss, aux, new = form.split(call(params, batch, key, model_state), model_state)
            check_scalar_loss(loss, has_aux=has_aux, batched=True)
            return loss, (aux, new)
        size = batch.mask.shape[0]
        keys = None if key is None else jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(size))
        in_axes = (None, 0, None if keys is None else 0, None)
        losses, aux, new = jax.vmap(per_example, in_axes=in_axes)(params, batch.data, keys, model_state)
        loss = masked_mean(losses, batch.mask)
        if aux is not None:
            aux = jax.tree.map(lambda a: masked_mean(jnp.asarray(a), batch.mask), aux)
        if stateful:
            new = jax.tree.map(lambda a, old: _state_mean(a, old, batch.mask), new, model_state)
        return loss, (aux, new)

    return fn


def _state_mean(new: jax.Array, old: Any, mask: jax.Array) -> jax.Array:
    """The examples' new values of one model-state leaf: their masked mean (float), or the first example's."""
    if jnp.issubdtype(new.dtype, jnp.inexact):
        return masked_mean(new, mask).astype(new.dtype)
    return new[0]


class LossForm(NamedTuple):
    """How gdjax calls a loss and reads what it returns."""

    has_aux: bool = False
    batched: bool = False
    with_key: bool = False
    stateful: bool = False

    def describe(self) -> str:
        parts = [f"batched={self.batched}"]
        if self.with_key:
            parts.append("key=")
        if self.stateful:
            parts.append("model_state=")
        return ", ".join(parts)

    def returns(self) -> str:
        if self.stateful and self.has_aux:
            return "(loss, (new_model_state, aux))"
        if self.stateful:
            return "(loss, new_model_state)"
        return "(loss, aux)" if self.has_aux else "loss"

    def split(self, out: Any, model_state: Any) -> tuple[Any, Any, Any]:
        """``(loss, aux, new_model_state)`` from what the loss returned (checked)."""
        if not (self.has_aux or self.stateful):
            return out, None, model_state
        flags = " and ".join(n for n, on in (("model_state", self.stateful), ("has_aux=True", self.has_aux)) if on)
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise TypeError(
                f"loss_fn must return {self.returns()} with {flags}; it returned {_describe(out)}. "
                f"Return {self.returns()}, or drop {flags}."
            )
        loss, rest = out
        if not self.stateful:
            return loss, rest, model_state
        if self.has_aux:
            if not (isinstance(rest, tuple | list) and len(rest) == 2):
                raise TypeError(
                    f"loss_fn must return {self.returns()} with {flags}; its second item is {_describe(rest)}, "
                    f"not the pair (new_model_state, aux)."
                )
            new, aux = rest
        else:
            new, aux = rest, None
        _check_model_state(new, model_state)
        return loss, aux, new


def _check_model_state(new: Any, old: Any) -> None:
    """Raise TypeError unless ``new`` has the structure, shapes and dtypes of ``old`` (works on tracers)."""
    new_def: Any = jax.tree.structure(new)
    old_leaves, old_def = jax.tree.flatten(old)
    problem = None
    if new_def != old_def:
        problem = f"its structure is {new_def}, the model state's is {old_def}"
    else:
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(new)[0], old_leaves, strict=True):
            sa, sb = (jnp.shape(a), jnp.result_type(a)), (jnp.shape(b), jnp.result_type(b))
            if sa != sb:
                where = jax.tree_util.keystr(path)
                problem = f"model_state{where} is {sa[1]}{list(sa[0])} where it was {sb[1]}{list(sb[0])}"
                break
    if problem is not None:
        raise TypeError(
            f"loss_fn must return the new model state shaped like the model_state it was given, as "
            f"(loss, new_model_state), or (loss, (new_model_state, aux)) with has_aux=True (the state first); "
            f"{problem}. Return the updated state (or the one given, unchanged)."
        )


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
    with_key: bool = False,
    stateful: bool = False,
) -> Callable[..., tuple[TrainState, dict[str, Any]]]:
    """Build the pure step ``step(state, batch) -> (state, metrics)`` (``step(state, batch, key)`` with a key).

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
      with_key: ``loss_fn`` takes ``key=``; the step is called as
        ``step(state, batch, key)`` with the run's key, and passes the loss
        ``fold_in(key, state.step)`` (per example, folded in again with the
        example's position), so a run is reproducible and resumes exactly.
      stateful: ``loss_fn`` takes ``model_state=`` (``state.model_state``,
        see :func:`init`) and returns ``(loss, new_model_state)`` (with
        ``has_aux``: ``(loss, (new_model_state, aux))``); the step keeps the
        new one in ``state.model_state``.

    Returns:
      A pure function; ``metrics["loss"]`` is the batch's mean loss before
      the update. Wrap it in ``jax.jit`` yourself.

    Raises:
      TypeError: a bad optimizer or loss; when called, a missing key or
        model state.

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
    objective = batch_loss(loss_fn, has_aux=has_aux, batched=batched, with_key=with_key, stateful=stateful)

    def step(state: TrainState, batch: Batch, key: jax.Array | None = None) -> tuple[TrainState, dict[str, Any]]:
        check_trainable(state.params)
        if with_key and key is None:
            raise TypeError("this step was made with with_key=True: call it as step(state, batch, key).")
        if stateful and state.model_state is None:
            raise TypeError(
                "this step was made with stateful=True, but state.model_state is None: make the state with "
                "gd.init(params, optimizer, model_state)."
            )
        step_key = jax.random.fold_in(key, state.step) if with_key and key is not None else None
        grad = jax.value_and_grad(objective, has_aux=True)
        (loss, (aux, model_state)), grads = grad(state.params, batch, step_key, state.model_state)
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
        return TrainState(params, opt_state, state.step + 1, model_state), metrics

    return step
