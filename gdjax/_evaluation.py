"""Evaluation inside the compiled run: what is measured, and the monitor that early stopping watches.

An :class:`Evaluation` is static (part of a run's configuration): the
metrics, whether there is evaluation data, how often to evaluate, the aux
outputs' layout and the monitor. At an evaluation, :func:`evaluate` measures
one *row* of values on the parameters: for the training data and then for
the evaluation data, the loss, each metric and each aux element, all masked
means over the data set. :meth:`Evaluation.columns` names them: ``"loss"``,
``"acc"``, ``"aux/<name>"``, then ``"eval_loss"``, ``"eval_acc"``,
``"eval_aux/<name>"``.

:func:`watch` is the early-stopping rule (Keras's vocabulary): a value
improves on the best when it is lower than ``best - min_delta`` (mode
``"min"``) or higher than ``best + min_delta`` (``"max"``); after
``patience`` evaluations without improvement the run stops.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gdjax import _blocks
from gdjax._types import PyTree
from gdjax.data import Batch
from gdjax.step import masked_mean

#: Words in a monitored name that make ``mode="auto"`` maximise it (as Keras's ``auto`` does for accuracy).
MAXIMISED = ("acc", "auc", "f1", "precision", "recall")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What a run evaluates, how often, and what it monitors (static).

    Attributes:
      metric_names: the metrics' names, in order.
      metric_fns: ``fn(params, example) -> scalar`` per metric (compared by key).
      metric_keys: hashable identities of the metric functions.
      has_eval: there is evaluation data.
      eval_every: epochs between evaluations (0: only at the end).
      aux: ``(name, shape)`` of each aux leaf after its masked mean.
      monitor: the column early stopping and model selection watch.
      mode: ``"min"`` or ``"max"``.
      patience: evaluations without improvement before stopping (None: never stop).
      min_delta: the least change that counts as an improvement.
      keep_best: keep the parameters of the best evaluation.
    """

    metric_names: tuple[str, ...] = ()
    metric_fns: tuple[Callable[..., Any], ...] = dataclasses.field(default=(), compare=False)
    metric_keys: tuple[Hashable, ...] = ()
    has_eval: bool = False
    eval_every: int = 1
    aux: tuple[tuple[str, tuple[int, ...]], ...] = ()
    monitor: str = "loss"
    mode: str = "min"
    patience: int | None = None
    min_delta: float = 0.0
    keep_best: bool = False

    def columns(self) -> tuple[str, ...]:
        """The names of a row's values, one per scalar (an aux leaf of shape ``s`` takes ``prod(s)``)."""
        one = ["loss", *self.metric_names]
        for name, shape in self.aux:
            one += [name] * math.prod(shape)
        return tuple(one) + (tuple("eval_" + c for c in one) if self.has_eval else ())

    def names(self) -> tuple[str, ...]:
        """The distinct names of :meth:`columns`, in order (the keys of a result's ``history``)."""
        return tuple(dict.fromkeys(self.columns()))

    @property
    def width(self) -> int:
        return len(self.columns())

    @property
    def monitor_index(self) -> int:
        return self.columns().index(self.monitor)

    def split(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``(..., width)`` as ``name -> (...)`` (or ``(..., *shape)`` for an aux leaf)."""
        out: dict[str, np.ndarray] = {}
        at = 0
        for prefix in ("", "eval_") if self.has_eval else ("",):
            for name, shape in [("loss", ()), *((m, ()) for m in self.metric_names), *self.aux]:
                size = math.prod(shape)
                out[prefix + name] = rows[..., at : at + size].reshape(*rows.shape[:-1], *shape)
                at += size
        return out


def flatten_aux(aux: PyTree, dtype: Any) -> jax.Array:
    """The aux leaves (already batch means) as one vector of ``dtype``."""
    leaves = [jnp.ravel(x).astype(dtype) for x in jax.tree.leaves(aux)]
    return jnp.concatenate(leaves) if leaves else jnp.zeros((0,), dtype)


def aux_layout(aux_shapes: PyTree) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``(name, shape)`` of each aux leaf: ``aux`` for a lone array, ``aux/<key>/<key>`` inside containers."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(aux_shapes)[0]:
        keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        out.append(("/".join(["aux", *keys]), tuple(int(s) for s in np.shape(leaf))))
    return tuple(out)


def evaluate(
    ev: Evaluation,
    objective: Callable[[PyTree, Batch], tuple[jax.Array, Any]],
    batched: bool,
    data_sets: tuple[_blocks.Rows, ...],
    params: PyTree,
    dtype: Any,
    model: PyTree = None,
    metric_keywords: dict[str, Any] | None = None,
) -> jax.Array:
    """One row: per data set, the loss, the metrics and the aux elements, each a masked mean (traced).

    ``objective(params, batch)`` is the loss in inference mode; the metrics
    are called with ``model`` (the whole model, default ``params``) and
    ``metric_keywords`` (the model state). Each data set is read in blocks
    (:mod:`gdjax._blocks`), so the pass holds one block's temporaries.
    """
    model = params if model is None else model
    keywords = metric_keywords or {}

    def measure(batch: Batch) -> jax.Array:
        loss, aux = objective(params, batch)
        values = [jnp.reshape(loss, (1,)).astype(dtype)]
        for fn in ev.metric_fns:
            if batched:
                value = fn(model, batch, **keywords)
            else:
                one = lambda m, x, fn=fn: fn(m, x, **keywords)  # noqa: E731
                value = masked_mean(jax.vmap(one, in_axes=(None, 0))(model, batch.data), batch.mask)
            values.append(jnp.reshape(value, (1,)).astype(dtype))
        values.append(flatten_aux(aux, dtype))
        return jnp.concatenate(values)

    return jnp.concatenate([_blocks.mean(measure, data) for data in data_sets])


class Watch(NamedTuple):
    """The monitor's state in a run.

    Attributes:
      best: the best monitored value so far (+inf or -inf before any).
      best_epoch: the epoch after which it was measured, or -1.
      best_params: the parameters then (only with ``keep_best``; else None).
      best_model_state: the model state then (with ``keep_best`` and a model state; else None).
      wait: evaluations since the last improvement.
      stopped: patience ran out.
    """

    best: Any
    best_epoch: Any
    best_params: Any
    wait: Any
    stopped: Any
    best_model_state: Any = None


def start_watch(ev: Evaluation, params: PyTree, model_state: PyTree, dtype: Any) -> Watch:
    worst = jnp.inf if ev.mode == "min" else -jnp.inf
    return Watch(
        best=jnp.array(worst, dtype),
        best_epoch=jnp.array(-1, jnp.int32),
        best_params=params if ev.keep_best else None,
        wait=jnp.zeros((), jnp.int32),
        stopped=jnp.array(False),
        best_model_state=model_state if ev.keep_best else None,
    )


def watch(
    ev: Evaluation, w: Watch, row: jax.Array, params: PyTree, model_state: PyTree, epoch: jax.Array, counts: jax.Array
) -> Watch:
    """Update the monitor with an evaluation ``row`` of ``params`` after ``epoch`` epochs (where ``counts``)."""
    value = row[ev.monitor_index]
    better = value < w.best - ev.min_delta if ev.mode == "min" else value > w.best + ev.min_delta
    better = counts & better  # a NaN never improves
    wait = jnp.where(better, 0, w.wait + counts.astype(jnp.int32))
    stopped = w.stopped | (counts & (wait >= ev.patience)) if ev.patience is not None else w.stopped
    best_params, best_state = w.best_params, w.best_model_state
    if ev.keep_best:
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(better, a, b), new, old)  # noqa: E731
        best_params, best_state = keep(params, best_params), keep(model_state, best_state)
    return Watch(
        best=jnp.where(better, value, w.best),
        best_epoch=jnp.where(better, epoch, w.best_epoch),
        best_params=best_params,
        wait=wait,
        stopped=stopped,
        best_model_state=best_state,
    )


def best_of(
    ev: Evaluation, w: Watch, row: jax.Array, params: PyTree, model_state: PyTree, epoch: jax.Array, counts: jax.Array
) -> Watch:
    """The monitor after a final evaluation: the best may change; patience does not (calling it twice is harmless)."""
    after = watch(ev, w, row, params, model_state, epoch, counts)
    return after._replace(wait=w.wait, stopped=w.stopped)
