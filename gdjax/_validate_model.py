"""Checks of what a run starts from: the model, its state, a run it continues; before anything is compiled.

``params`` may be any pytree (an Equinox module included): its float arrays
are trained, the other leaves held static (:mod:`gdjax._trainable`). It may
also be a :class:`gdjax.TrainState` (``res.state``): the run then continues
that one, with its optimizer state, step count and model state, from the
epoch its step count ends (:class:`Start`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gdjax import _validate
from gdjax._trainable import Static, describe_leaves, has_static, split
from gdjax._types import PyTree
from gdjax.step import TrainState


class Start(NamedTuple):
    """Where a run starts.

    Attributes:
      init: a :class:`gdjax.TrainState` of the trained leaves; its
        ``opt_state`` and ``step`` are None for a new run.
      static: the leaves held static, or None when every leaf is trained.
      first: the epoch the run starts at (0 for a new run).
    """

    init: TrainState
    static: Static | None
    first: int

    @property
    def continuing(self) -> bool:
        return self.init.step is not None


def start(params: Any, model_state: Any, steps_per_epoch: int, *, name: str = "params", members: bool = False) -> Start:
    """Check and split what a run starts from (``members``: a sweep's state, with a leading member axis).

    Raises:
      TypeError, ValueError: nothing to train, a non-finite value, a model
        state given twice, or a state whose step count is not a whole number
        of epochs of this data.
    """
    if params is None:
        raise ValueError(
            f"{name} is None: pass the initial parameters (or, in gd.sweep, init=your_init with seeds=[...] to "
            f"initialise each member from its seed)."
        )
    if isinstance(params, TrainState):
        return _continuing(params, model_state, steps_per_epoch, name=name, members=members)
    leaves = [leaf for _, leaf in _validate.leaves_with_paths(params, name)]  # mixed dict keys: a plain error
    if callable(params) and len(leaves) == 1 and leaves[0] is params:  # a function, not a model holding arrays
        raise TypeError(
            f"{name} is a function, not parameters. gdjax takes the parameters (params=init(jax.random.key(0))); "
            f"to initialise each sweep member from its own seed, pass params=None, init=your_init and seeds=[...]."
        )
    _refuse_nnx_statistics(params, name)
    trained, static = _split(params, name)
    check_model_state(model_state)
    return Start(TrainState(trained, None, None, model_state), static, 0)  # type: ignore[arg-type]


def _split(params: Any, name: str) -> tuple[PyTree, Static | None]:
    leaves = _validate.leaves_with_paths(params, name)
    trained, static = split(params)
    if not jax.tree.leaves(trained):
        kinds = sorted({type(x).__name__ if not hasattr(x, "dtype") else str(x.dtype) for _, x in leaves})
        raise ValueError(
            f"{name} has no float arrays to train (its leaves are {kinds or 'none'}). gdjax trains the float "
            f"arrays of params and holds every other leaf static; pass the model or pytree that holds the weights."
        )
    _validate.check_params(trained, name)
    return trained, Static(static) if has_static(params) else None


def _refuse_nnx_statistics(params: Any, name: str) -> None:
    """A Flax NNX module with batch statistics would have them trained as parameters: refuse it, with the recipe."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is None or not isinstance(params, nnx.Module):
        return
    if jax.tree.leaves(nnx.state(params, nnx.BatchStat)):
        raise TypeError(
            f"{name} is a Flax NNX module holding batch statistics (nnx.BatchStat): passed whole, they would be "
            f"trained by gradient like parameters. Split them off and pass them as the model state: graphdef, "
            f"params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat); a loss_fn(params, batch, *, "
            f"model_state) that calls nnx.merge(graphdef, params, model_state, copy=True); and gd.fit(loss_fn, "
            f"params, ..., model_state=batch_stats) (see examples/flax_nnx_cnn.py)."
        )


def check_model_state(model_state: Any) -> None:
    """A model state must be a pytree of arrays, finite where float."""
    if model_state is None:
        return
    for path, leaf in _validate.leaves_with_paths(model_state, "model_state"):
        where = f"model_state{jax.tree_util.keystr(path)}"
        if not hasattr(leaf, "dtype") or not hasattr(leaf, "shape"):
            raise TypeError(
                f"{where} is of type {type(leaf).__name__}; a model state holds arrays only (batch statistics, "
                f"counters): make a number an array (jnp.asarray(value)), and keep other values in the loss function."
            )
        if not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) and np.dtype(leaf.dtype).kind not in "biufc":
            raise TypeError(
                f"{where} has dtype {leaf.dtype}, which JAX cannot carry; a model state holds arrays of numbers "
                f"(or PRNG keys). Keep other values in the loss function."
            )
        if jnp.issubdtype(leaf.dtype, jnp.inexact) and not np.isfinite(np.asarray(leaf)).all():
            raise ValueError(f"{where} holds NaN or inf before training; start from finite values.")


def _continuing(state: TrainState, model_state: Any, steps: int, *, name: str, members: bool) -> Start:
    if model_state is not None:
        raise ValueError(
            f"model_state is given, but {name} is a TrainState that carries its own (state.model_state). Give it "
            f"once: drop model_state=, or pass state._replace(model_state=...)."
        )
    if state.opt_state is None or state.step is None:
        raise TypeError(f"{name} is a TrainState without an optimizer state or step; pass a run's res.state.")
    step = np.asarray(state.step)
    if step.ndim != int(members) or not np.issubdtype(step.dtype, np.integer):
        want = "one step count per member (a sweep's state)" if members else "one step count (a fit's state)"
        raise TypeError(f"{name}.step must be {want}; got shape {step.shape} and dtype {step.dtype}.")
    last = int(step.max())
    if last % steps:
        raise ValueError(
            f"{name} has taken {last} steps, which is not a whole number of epochs of this data ({steps} steps "
            f"per epoch), so the epoch to go on from is unclear. Continue with the data and batch size it was "
            f"trained with, or start a new run from its parameters ({name}.params)."
        )
    trained, static = _split(state.params, f"{name}.params")
    check_model_state(state.model_state)
    init = TrainState(trained, state.opt_state, jnp.asarray(step, jnp.int32), state.model_state)
    return Start(init, static, last // steps)


def check_opt_state(build: Callable[[], Any], start: Start, *, name: str = "params", members: bool = False) -> None:
    """A continued run's optimizer state must have the structure, shapes and dtypes the optimizer makes."""
    if not start.continuing:
        return
    one = (lambda x: x[0]) if members else (lambda x: x)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(one(x)), x.dtype), start.init.params)
    want = jax.eval_shape(lambda p: build().init(p), params)
    got = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(one(x)), jnp.result_type(x)), start.init.opt_state)
    structure: Any = jax.tree.structure(want)
    if structure != jax.tree.structure(got) or jax.tree.leaves(want) != jax.tree.leaves(got):
        raise ValueError(
            f"{name}.opt_state does not fit this optimizer: it was made by another optimizer (or for other "
            f"parameters). The optimizer makes {_shapes(want)}; the state holds {_shapes(got)}. Continue with the "
            f"optimizer the run used, or start a new run from {name}.params."
        )


def _shapes(tree: PyTree) -> str:
    parts = tree if isinstance(tree, tuple) else (tree,)
    text = f"{[type(p).__name__ for p in parts]} with {', '.join(describe_leaves(tree, limit=6)) or 'no arrays'}"
    return text if len(text) < 400 else text[:400] + "..."


def model_keywords(*, with_key: bool, stateful: bool) -> list[str]:
    """The keywords gdjax passes a loss besides its hyperparameters."""
    return [n for n, on in (("key", with_key), ("model_state", stateful)) if on]


def loss_keywords(loss_fn: Callable[..., Any], *, with_key: bool, stateful: bool, also: Any = ()) -> None:
    """Fail now if the loss cannot take ``key=`` (``with_key``) or ``model_state=`` (and ``also``: its hyperparams)."""
    names = model_keywords(with_key=with_key, stateful=stateful)
    refusal = _validate.keyword_refusal(loss_fn, names, also)
    if refusal is not None:
        why = {"key": "with_key=True passes each step's PRNG key", "model_state": "model_state= passes the state"}
        raise TypeError(
            f"loss_fn cannot take {' and '.join(f'{n}=' for n in names)} ({refusal}); "
            f"{'; '.join(why[n] for n in names)}. Define it as def loss_fn(params, example, *, "
            f"{', '.join(names)}): ... (key is None when gdjax evaluates), or drop the option."
        )
