"""Checks of the evaluation, early-stopping and loss-hyperparameter arguments, before anything is compiled.

:func:`evaluation` checks ``eval_data``, ``metrics``, ``eval_every``,
``monitor``, ``mode``, ``patience``, ``min_delta`` and ``keep_best`` and
returns the static :class:`gdjax._evaluation.Evaluation` (the monitor is
checked by :func:`resolve_monitor` once the loss's aux outputs are known)
and the evaluation data placed on the device. :func:`loss_keywords` checks
that the loss takes the keywords of ``loss_hyperparams``; :func:`metric_shapes`
checks each metric on one batch's shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from gdjax import _sources, _validate
from gdjax._caches import callable_key
from gdjax._evaluation import MAXIMISED, Evaluation
from gdjax._types import PyTree
from gdjax.data import Batch, DataIterator, _build


def evaluation(
    it: DataIterator,
    *,
    eval_data: Any,
    metrics: Any,
    eval_every: Any,
    monitor: Any,
    mode: Any,
    patience: Any,
    min_delta: Any,
    keep_best: Any,
    tol: float | None,
) -> tuple[Evaluation, PyTree]:
    """Check the evaluation arguments; return the evaluation (monitor not yet resolved) and the placed eval data."""
    data = _eval_data(it, eval_data)
    names, fns = _metrics(metrics)
    eval_every = _validate.check_positive_int(eval_every, "eval_every", low=0)
    if patience is not None:
        patience = _validate.check_positive_int(patience, "patience", low=1)
        if eval_every == 0:
            raise ValueError(
                f"patience={patience} stops a run after evaluations without improvement, but eval_every=0 evaluates "
                f"only at the end. Set eval_every=1 (or more), or drop patience."
            )
    if tol is not None and eval_every == 0:
        raise ValueError(
            "tol is compared with the full-data loss measured at evaluations, but eval_every=0 evaluates only at the "
            "end. Set eval_every=1 (or more), or drop tol."
        )
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'min', 'max' or 'auto' (from the monitor's name); got {mode!r}.")
    if monitor is not None and not isinstance(monitor, str):
        raise TypeError(f"monitor must be the name of an evaluated value, such as 'eval_loss'; got {monitor!r}.")
    delta = _validate.check_hyperparam(min_delta, "min_delta")
    if delta.ndim != 0:
        raise ValueError(f"min_delta must be one number; got shape {delta.shape}.")
    return (
        Evaluation(
            metric_names=names,
            metric_fns=fns,
            metric_keys=tuple(callable_key(f) for f in fns),
            has_eval=data is not None,
            eval_every=eval_every,
            monitor=monitor if monitor is not None else ("eval_loss" if data is not None else "loss"),
            mode=mode,
            patience=patience,
            min_delta=float(delta),
            keep_best=_validate.check_flag(keep_best, "keep_best"),
        ),
        data,
    )


def _eval_data(it: DataIterator, eval_data: Any) -> PyTree:
    """The evaluation data, checked like training data and against its structure and feature shapes.

    Arrays go on the device when the training data is there; beside streamed training data they are placed
    or streamed by size (``on_device=None``). A :class:`DataIterator` keeps its placement. Structure, shapes
    and dtypes are compared first, before the values are read.
    """
    if eval_data is None:
        return None
    if not isinstance(eval_data, DataIterator):
        raw = _sources.as_tree(eval_data, "eval_data")
        if all(hasattr(x, "shape") and hasattr(x, "dtype") for _, x in _validate.leaves_with_paths(raw, "eval_data")):
            _like_training(it, raw)  # cheap: before every value is checked
        eval_data = _build(raw, None, False, False, True if it.on_device else None, root="eval_data")
    _like_training(it, eval_data.data)
    return eval_data.data if eval_data.on_device else eval_data


def _like_training(it: DataIterator, data: PyTree) -> None:
    """Refuse evaluation data of another structure, example shape or dtype than the training data."""
    ours: Any = jax.tree.structure(data)
    theirs = jax.tree.structure(it.data)
    if ours != theirs:
        raise ValueError(
            f"eval_data must have the structure of the training data ({_shapes(it.data)}); got "
            f"{_shapes(data)}. Split both from one data set, e.g. {{'x': X_val, 'y': y_val}} beside "
            f"{{'x': X, 'y': y}}."
        )
    leaves = jax.tree_util.tree_flatten_with_path(data)[0]
    for (path, ev), train in zip(leaves, jax.tree.leaves(it.data), strict=True):
        ev_dtype, train_dtype = (jax.dtypes.canonicalize_dtype(x.dtype) for x in (ev, train))
        if tuple(ev.shape[1:]) != tuple(train.shape[1:]) or ev_dtype != train_dtype:
            name = "eval_data" + jax.tree_util.keystr(path)
            raise ValueError(
                f"{name} has examples of shape {tuple(ev.shape[1:])} and dtype {ev_dtype}, but the training data's "
                f"are {tuple(train.shape[1:])} and {train_dtype}. Give evaluation examples shaped like the "
                f"training examples."
            )


def _shapes(tree: PyTree) -> str:
    return str(jax.tree.map(lambda x: f"{getattr(x, 'dtype', '?')}{list(np.shape(x)[1:])} per example", tree))


def _metrics(metrics: Any) -> tuple[tuple[str, ...], tuple[Callable[..., Any], ...]]:
    if metrics is None:
        return (), ()
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"metrics must be a dict from names to functions fn(params, example) -> scalar, such as "
            f"{{'acc': accuracy}}; got {type(metrics).__name__}."
        )
    for name, fn in metrics.items():
        if not isinstance(name, str) or not name or name.startswith(("eval_", "aux")) or name == "loss":
            raise ValueError(
                f"metrics names must be non-empty strings other than 'loss' and not starting with 'eval_' or "
                f"'aux' (those name the evaluation data's values and the loss's aux); got {name!r}."
            )
        if not callable(fn):
            raise TypeError(f"metrics[{name!r}] must be a function fn(params, example) -> scalar; got {fn!r}.")
    return tuple(metrics), tuple(metrics.values())


def resolve_monitor(ev: Evaluation) -> Evaluation:
    """Check the monitor against the evaluated names; resolve ``mode="auto"``."""
    names = ev.names()
    if ev.monitor not in names:
        hint = (
            " (pass eval_data= to evaluate held-out data)" if ev.monitor.startswith("eval_") and not ev.has_eval else ""
        )
        raise ValueError(f"monitor={ev.monitor!r} is not evaluated{hint}; the values evaluated are {list(names)}.")
    mode = ev.mode
    if mode == "auto":
        base = ev.monitor.removeprefix("eval_")
        mode = "max" if any(word in base.lower() for word in MAXIMISED) else "min"
    return dataclasses.replace(ev, mode=mode)


def metric_shapes(
    ev: Evaluation, params: PyTree, it: DataIterator, *, batched: bool, model_state: PyTree = None, model: Any = None
) -> None:
    """Check each metric on one batch's shapes: it must return a real scalar (per example, or per batch).

    ``params`` are the trained leaves and ``model(params)`` the whole model
    the metrics are given; with a ``model_state`` they take it as a keyword too.
    """
    model = model or (lambda p: p)
    example = jax.tree.map(lambda x: jax.ShapeDtypeStruct((it.batch_size, *x.shape[1:]), x.dtype), it.data)
    keywords = {} if model_state is None else {"model_state": model_state}
    for name, fn in zip(ev.metric_names, ev.metric_fns, strict=True):
        form = "fn(params, batch" if batched else "fn(params, example"
        form += ", model_state=...)" if keywords else ")"
        call = lambda p, x, fn=fn: fn(model(p), x, **keywords)  # noqa: E731
        try:
            if batched:
                batch = Batch(example, jax.ShapeDtypeStruct((it.batch_size,), bool))  # type: ignore[arg-type]
                out = jax.eval_shape(call, params, batch)
                shape = out.shape
            else:
                out = jax.eval_shape(jax.vmap(call, in_axes=(None, 0)), params, example)
                shape = out.shape[1:]
        except Exception as exc:
            raise TypeError(
                f"metrics[{name!r}] failed when called as {form} on the training data's shapes: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        kind = np.dtype(out.dtype).kind if hasattr(out, "dtype") else "?"
        if shape != () or kind not in "biuf":
            raise TypeError(
                f"metrics[{name!r}] must return a real scalar ({form}; gdjax takes the masked mean over the data "
                f"set); it returned shape {tuple(shape)} and dtype {getattr(out, 'dtype', type(out).__name__)}."
            )


def loss_keywords(loss_fn: Callable[..., Any], names: Any, also: Any = ()) -> None:
    """Fail now if ``loss_fn`` cannot take the keywords of ``loss_hyperparams`` (with ``also``: key, model_state)."""
    why = _validate.keyword_refusal(loss_fn, names, also)
    if why is not None:
        raise TypeError(
            f"loss_hyperparams names {sorted(names)}, but loss_fn cannot take them as keywords ({why}). Define it as "
            f"def loss_fn(params, example, *, {', '.join(names)}): ... ."
        )


def loss_mapping(values: Any) -> dict[str, Any]:
    """``loss_hyperparams`` as a dict of keyword names to (unchecked) values; None is empty."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise TypeError(
            f"loss_hyperparams must be a dict from the loss's keyword names to values, such as "
            f"loss_hyperparams={{'l2': 1e-3}}; got {type(values).__name__}."
        )
    for name in values:
        if not isinstance(name, str) or not name.isidentifier():
            raise TypeError(f"loss_hyperparams keys must be keyword names (str); got {name!r}.")
    return dict(values)


def loss_values(values: Any, *, allow_arrays: bool) -> dict[str, np.ndarray]:
    """``loss_hyperparams`` checked: names to finite numbers (or 1-D arrays where ``allow_arrays``)."""
    out = {}
    for name, value in loss_mapping(values).items():
        arr = _validate.check_hyperparam(value, f"loss_hyperparams[{name!r}]", signed=True)
        if arr.ndim != 0 and not allow_arrays:
            raise ValueError(
                f"loss_hyperparams[{name!r}] must be a single number in fit; got shape {arr.shape}. "
                f"Use gd.sweep for many."
            )
        out[name] = arr
    return out
