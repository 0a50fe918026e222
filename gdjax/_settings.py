"""What a checkpoint records of a run, and the checkpointer a run with ``checkpoint=`` uses.

A checkpoint is resumed only by a run with equal settings: the kind (fit or
sweep), the loss's name and a digest of its code and captured values, the
optimizer, the data's shape and digest, the key, the hyperparameters and
every option that changes the result.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from gdjax import _validate
from gdjax._optimizer import is_factory
from gdjax._run import Config
from gdjax._trainable import describe_leaves
from gdjax._types import x64_enabled
from gdjax._validate import RunArgs
from gdjax._validate_model import Start
from gdjax.checkpoint import Checkpointer, digest, function_digest
from gdjax.data import DataIterator


def describe(fn: Any) -> Any:
    """A JSON-able name for a function or factory (``functools.partial`` arguments included)."""
    if isinstance(fn, functools.partial):
        return {"partial": describe(fn.func), "args": repr(fn.args), "keywords": repr(sorted(fn.keywords.items()))}
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def checkpointer(
    checkpoint: Any,
    checkpoint_every: Any,
    *,
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
    if not os.fspath(checkpoint):
        raise ValueError("checkpoint is empty; give a folder path (checkpoint='runs/ckpt'), not ''.")
    every = 1 if checkpoint_every is None else _validate.check_positive_int(checkpoint_every, "checkpoint_every")
    return Checkpointer(checkpoint, {**settings(), "x64": x64_enabled()}, every=every, prefix=prefix)


def data_settings(it: DataIterator) -> dict[str, Any]:
    """The iterator's shape and a digest of its data, for checkpoint settings."""
    n, b, shuffle, drop = it.spec
    return {"num_examples": n, "batch_size": b, "shuffle": shuffle, "drop_remainder": drop, "digest": digest(it.data)}


def params_settings(params: Any) -> dict[str, Any]:
    """The initial params as checkpoint settings: their structure, dtypes and shapes (readable), and a digest."""
    shapes = jax.tree.map(lambda x: f"{getattr(x, 'dtype', type(x).__name__)}{list(np.shape(x))}", params)
    return {"shapes": str(shapes), "digest": digest(params)}


def start_settings(start: Start) -> dict[str, Any]:
    """What a run starts from, as checkpoint settings: the trained params, the static leaves, the model state,
    and for a continued run its optimizer state and first epoch.

    Raises:
      TypeError: the model state holds a typed PRNG key, which a checkpoint cannot store (before compiling).
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(start.init.model_state)[0]:
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key):
            raise TypeError(
                f"model_state{jax.tree_util.keystr(path)} is a typed PRNG key, which checkpoints do not store: "
                f"keep jax.random.key_data(key) in the model state and wrap it back with jax.random.wrap_key_data "
                f"in the loss, or use with_key=True for the loss's randomness."
            )
    out = params_settings(start.init.params)
    if start.static is not None:
        out["static"] = start.static.describe()
    if start.init.model_state is not None:
        out["model_state"] = params_settings(start.init.model_state)
    if start.continuing:
        out["opt_state"] = params_settings(start.init.opt_state)
        out["first_epoch"] = start.first
    return out


def optimizer_settings(optimizer: Any, params: Any) -> Any:
    """A factory by name; a built optimizer by its state's structure, shapes and dtypes (its values are hidden)."""
    if is_factory(optimizer):
        return describe(optimizer)
    shapes = jax.eval_shape(optimizer.init, params)
    parts = shapes if isinstance(shapes, tuple) else (shapes,)
    return {
        "built": describe(optimizer.init),
        "state": [type(p).__name__ for p in parts] + describe_leaves(shapes),
        "values": "not recorded: a built optimizer hides its values (pass the factory to record them)",
    }


def run_settings(
    kind: str,
    cfg: Config,
    args: RunArgs,
    trained: Any,
    params: dict[str, Any],
    hyperparams: dict[str, Any],
    loss_hyperparams: dict[str, Any],
    eval_data: Any,
    **extra: Any,
) -> dict:
    """The JSON-able description of a run that a checkpoint must match to be resumed.

    ``trained`` are the trained leaves of the params (a built optimizer is
    recorded by the state it makes for them), ``params`` what the run starts
    from (:func:`start_settings`); the optimizer's and the loss's values are
    numbers (a fit) or arrays of one per member (a sweep).
    """
    as_lists = lambda values: {k: np.asarray(v).tolist() for k, v in values.items()}  # noqa: E731
    return {
        "kind": kind,
        "loss_fn": describe(cfg.loss_fn),
        "loss_fn_digest": function_digest(cfg.loss_fn),  # a closure of the same name over other values differs
        "optimizer": optimizer_settings(cfg.optimizer, trained),
        "data": data_settings(args.it),
        "key": digest(args.key),
        "hyperparams": as_lists(hyperparams),
        "tol": args.tol,
        "log_every": args.log_every,
        "has_aux": cfg.has_aux,
        "batched": cfg.batched,
        "with_key": cfg.with_key,
        "params": params,
        "evaluation": evaluation_settings(cfg.evaluation, eval_data, as_lists(loss_hyperparams)),
        "processes": jax.process_count(),  # a run split over processes resumes with as many
        **extra,
    }


def evaluation_settings(ev: Any, eval_data: Any, loss_hparams: dict[str, Any]) -> dict[str, Any]:
    """The evaluation options a checkpoint records: metrics (by name and digest), data, monitor, loss values."""
    return {
        "metrics": {name: function_digest(fn) for name, fn in zip(ev.metric_names, ev.metric_fns, strict=True)},
        "eval_data": None
        if eval_data is None
        else digest(eval_data.data if isinstance(eval_data, DataIterator) else eval_data),
        "eval_every": ev.eval_every,
        "monitor": ev.monitor,
        "mode": ev.mode,
        "patience": ev.patience,
        "min_delta": ev.min_delta,
        "keep_best": ev.keep_best,
        "loss_hyperparams": loss_hparams,
    }


def fit_settings(
    cfg: Config,
    args: RunArgs,
    start: Start,
    hyperparams: dict[str, Any],
    loss_hyperparams: dict[str, Any],
    eval_data: Any,
    devices: int = 1,
) -> dict[str, Any]:
    """What a fit's checkpoints record, and what processes compare (it hashes the data and params: called only then).

    ``devices``: the devices a data-parallel fit splits its batches over (1: one device).
    """
    trained = start.init.params
    params = start_settings(start)
    return run_settings("fit", cfg, args, trained, params, hyperparams, loss_hyperparams, eval_data, devices=devices)


def sweep_settings(
    cfg: Config, args: RunArgs, starts: Any, table: Any, eval_data: Any, where: dict[str, int]
) -> dict[str, Any]:
    """What a sweep's checkpoints record (called only with a checkpoint, once: it hashes the data).

    ``starts`` is the sweep's :class:`gdjax._starts.Starts`, ``table`` its
    :class:`gdjax._plan.Members`, ``where`` its rows per chunk and device count.
    """
    params = start_settings(starts.start)
    if starts.init is not None:
        params = {"init": describe(starts.init), "init_digest": function_digest(starts.init), **params}
    return run_settings(
        "sweep",
        cfg,
        args,
        starts.one()[0],
        params,
        table.hyperparams,
        table.loss_hyperparams,
        eval_data,
        seeds=None if table.seeds is None else table.seeds.tolist(),
        chunk=where["chunk"],
        devices=where["devices"],
    )
