"""``sweep``: many training runs at once, one compiled program.

``sweep`` runs one :func:`gdjax.fit` per *member* (a learning rate, a setting
of other hyperparameters, a seed) with ``jax.vmap`` over the members, inside
one ``jit``. By default every member sees the same data order, so each batch
is gathered once for all members and the comparison is controlled.

Contract:

* member ``k`` gives the result of ``fit`` with its hyperparameters (and,
  with seeds, the keys from :func:`seed_keys`) to float tolerance while the
  run is stable (rounding differences grow where it is not: at the edge of
  stability, or diverging); its bits depend on its own values and the
  number of rows of the program (members or ``chunk_size``, rounded up to
  the device count), not on its position or the other members;
* new values, a new key or new seeds with the same shapes reuse the compiled
  program; with ``chunk_size`` so does a new number of members;
* a member whose loss or parameters become non-finite is frozen at its last
  finite parameters and flagged in ``diverged``; nothing is reduced across
  members inside the program, so it cannot touch the others;
* with several devices, the member axis is split across them with
  ``jax.shard_map`` over a one-axis ``Mesh`` (members padded to a multiple of
  the device count, the padding dropped from the results); the devices may
  belong to several processes (``jax.distributed``), each running the same
  call and getting every member's results.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gdjax import (
    _config,
    _distributed,
    _hooks,
    _optimizer,
    _plan,
    _runner,
    _settings,
    _starts,
    _validate,
    _validate_eval,
    _validate_model,
)
from gdjax._run import AXIS, Inputs, Layout
from gdjax._starts import seed_keys
from gdjax._types import PyTree
from gdjax.checkpoint import Checkpointer, holding
from gdjax.data import DataIterator
from gdjax.progress import ProgressBar
from gdjax.results import SweepResult

__all__ = ["SweepResult", "seed_keys", "sweep"]


def sweep(
    loss_fn: Callable,
    params: PyTree | None,
    optimizer_fn: Callable[..., optax.GradientTransformation],
    data: DataIterator,
    *,
    learning_rates: Any = None,
    hyperparams: Mapping[str, Any] | None = None,
    grid: bool = False,
    seeds: int | Sequence[int] | None = None,
    epochs: int,
    key: jax.Array,
    tol: float | None = None,
    log_every: int = 1,
    chunk_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    has_aux: bool = False,
    batched: bool = False,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    eval_data: PyTree | DataIterator | None = None,
    metrics: Mapping[str, Callable[..., Any]] | None = None,
    eval_every: int = 1,
    monitor: str | None = None,
    mode: str = "auto",
    patience: int | None = None,
    min_delta: float = 0.0,
    keep_best: bool = False,
    loss_hyperparams: Mapping[str, Any] | None = None,
    init: Callable[[jax.Array], PyTree] | None = None,
    with_key: bool = False,
    model_state: PyTree = None,
) -> SweepResult:
    """Train one model per hyperparameter setting (and seed), all in one compiled program.

    Args:
      loss_fn: ``loss_fn(params, example) -> scalar``, as for :func:`gdjax.fit`.
      params: initial parameters shared by every member (any pytree, an
        Equinox module included, as for :func:`gdjax.fit`); None with
        ``init``; or a sweep's ``state`` to continue it (the same members).
      optimizer_fn: an optax factory such as ``optax.sgd`` or ``optax.adam``;
        member ``k`` uses ``optimizer_fn(learning_rate=lr_k, **hyperparams_k)``.
        A factory with a ``total_steps`` (or ``num_steps``) parameter gets
        the run's total number of steps, so a schedule's peak can be swept:
        ``lambda learning_rate, total_steps: optax.sgd(
        optax.cosine_onecycle_schedule(total_steps, learning_rate))``.
        Where optax needs the value in Python (warmup-cosine and SGDR test
        their peak; a clear error says so), scale a schedule of peak 1 by
        the learning rate (``examples/schedule_sweep.py``).
      data: a :class:`gdjax.DataIterator`.
      learning_rates: 1-D array of learning rates.
      hyperparams: name -> 1-D array (swept) or number (fixed), passed to
        ``optimizer_fn`` as keywords.
      grid: combine ``learning_rates``, ``hyperparams`` and
        ``loss_hyperparams`` as a Cartesian product instead of zipping them.
      seeds: a count or 1-D array of seeds; each seed gets its own
        initialisation (when ``params`` is a function) and data order, and
        is combined with every hyperparameter setting.
      epochs: epochs per member (at most, with ``tol``).
      key: PRNG key; without seeds every member uses it for the data order.
      tol: a member stops once its full-data loss is ``<= tol``; the program
        stops when every member has converged or diverged.
      log_every: average step losses over windows of this many steps.
      chunk_size: run at most this many members at a time (one compiled
        program for every chunk) to bound memory.
      devices: devices to split the members over; default all of
        ``jax.devices()`` (one device: no splitting). After
        ``jax.distributed.initialize`` that is every process's devices:
        every process makes the same call (compared before compiling), gets
        the whole result, the same bits as one process with as many
        devices; the first process draws the bar and writes checkpoints.
      has_aux: ``loss_fn`` returns ``(loss, aux)``.
      batched: ``loss_fn`` takes a whole :class:`gdjax.Batch`.
      progress: show one progress bar for the whole sweep on standard error
        (see :mod:`gdjax.progress`); the results are the same.
      checkpoint: a folder to save the sweep's state in, as for
        :func:`gdjax.fit` (one file series per chunk of members, one lock
        for the whole sweep); called again with the same arguments, the sweep
        resumes from it (``SweepResult.resumed_from`` says where).
      checkpoint_every: save every this many epochs (default 1), and at the end.
      eval_data, metrics, eval_every, monitor, mode, patience, min_delta,
        keep_best: evaluation and early stopping, per member, as for
        :func:`gdjax.fit`. A member that stops early is frozen like a
        converged one while the others go on; :attr:`SweepResult.best_index`
        ranks the members by the monitored value.
      loss_hyperparams: name -> 1-D array (swept) or number (fixed), passed
        to the loss as keywords (``loss_fn(params, example, *, l2)``);
        zipped or combined with ``grid`` like ``hyperparams``, and traced.
      init: ``init(key) -> params``, called with each seed's ``init_key``
        (see :func:`seed_keys`) under ``vmap``; needs ``seeds`` and
        ``params=None``. Leaves that are not float arrays must not depend on
        the key (they are held static, taken from the first member's).
      with_key, model_state: a key per step and a model state in the loss,
        per member, as for :func:`gdjax.fit` (every member starts from
        ``model_state`` and carries its own).

    Returns:
      A :class:`SweepResult`.

    Raises:
      TypeError, ValueError: bad arguments, before anything is compiled.

    Example:
      >>> import jax, numpy as np, optax, gdjax as gd
      >>> prob = gd.problems.linear_regression(n=256, d=4, key=jax.random.key(0))
      >>> model = gd.models.linear()
      >>> sw = gd.sweep(model.loss, model.init(jax.random.key(1), 4), optax.sgd,
      ...               gd.full_batch(prob.data), learning_rates=np.geomspace(0.01, 10, 8),
      ...               epochs=50, key=jax.random.key(2))
      >>> sw.final_loss.shape, bool(sw.diverged[-1]), bool(sw.diverged[0])
      ((8,), True, False)
    """
    _optimizer.require_factory(optimizer_fn)
    args = _validate.run_arguments(loss_fn, data, epochs, key, tol, log_every, progress)
    table = _plan.members(learning_rates, hyperparams, grid=grid, seeds=seeds, loss_hyperparams=loss_hyperparams)
    _starts.check_init(init, params, seeds)
    with_key = _validate.check_flag(with_key, "with_key")
    starts = _starts.Starts(params, init, table, args.key, model_state, args.it.num_batches)
    st = starts.start
    total = _validate.check_steps(st.first + args.epochs, args.it.num_batches)  # the schedules' total_steps
    stateful = st.init.model_state is not None
    _validate_model.loss_keywords(loss_fn, with_key=with_key, stateful=stateful, also=table.loss_hyperparams)
    optimizer_fn = _optimizer.with_total_steps(optimizer_fn, total, table.hyperparams)
    _optimizer.check_keywords(optimizer_fn, table.hyperparams, learning_rate="learning_rates")
    also = _validate_model.model_keywords(with_key=with_key, stateful=stateful)
    _validate_eval.loss_keywords(loss_fn, table.loss_hyperparams, also)
    evaluation, eval_arrays = _validate_eval.evaluation(
        args.it,
        eval_data=eval_data,
        metrics=metrics,
        eval_every=eval_every,
        monitor=monitor,
        mode=mode,
        patience=patience,
        min_delta=min_delta,
        keep_best=keep_best,
        tol=args.tol,
    )
    if chunk_size is not None:
        chunk_size = _validate.check_positive_int(chunk_size, "chunk_size", low=1)
    devs = _plan.check_devices(devices)
    rows = _plan.chunk_rows(table.size, chunk_size, len(devs))
    chunks = _plan.chunks(table.size, rows)
    one, one_state = starts.one()
    _optimizer.check_traceable(optimizer_fn, one, table.hyperparams)
    first_values = {k: v[0] for k, v in table.hyperparams.items()}
    _validate_model.check_opt_state(lambda: _optimizer.build(optimizer_fn, first_values), st, members=True)
    cfg = _config.config(
        loss_fn,
        optimizer_fn,
        one,
        args.it,
        epochs=args.epochs,
        log_every=args.log_every,
        has_aux=has_aux,
        batched=batched,
        members=rows,
        evaluation=evaluation,
        loss_hparams=tuple(table.loss_hyperparams),
        with_key=with_key,
        model_state=one_state,
        static=st.static,
    )
    mesh = Mesh(np.array(devs), (AXIS,)) if len(devs) > 1 else None
    layout = Layout(cfg, True, starts.params_batched, starts.keys_batched, mesh)
    where = {"chunk": rows, "devices": len(devs)}
    settings = functools.cache(
        functools.partial(_settings.sweep_settings, cfg, args, starts, table, eval_arrays, where)
    )
    if _distributed.spans(devs):  # every process of the run compares its arguments with the others'
        asked = {"epochs": args.epochs, "checkpoint": checkpoint, "every": checkpoint_every, "progress": progress}
        _distributed.agree("gd.sweep", settings(), **asked)
    ckpts = [
        _settings.checkpointer(checkpoint, checkpoint_every, settings=settings, prefix=f"chunk-{c.number:05d}-")
        for c in chunks
    ]
    writer = _distributed.is_writer(devs)
    for ckpt in ckpts:
        if ckpt is not None:
            ckpt.writer = writer
    with holding(ckpts):  # one lock on the folder for every chunk, until sweep returns or raises
        outs = [
            _run_chunk(
                layout,
                args,
                table,
                starts,
                c,
                len(chunks),
                devs[0],
                eval_data=eval_arrays,
                progress=progress,
                writer=writer,
                checkpointer=ckpts[c.number],
            )
            for c in chunks
        ]
    return _result(layout, args, table, chunks, outs, devices=devs)


def _result(
    layout: Layout,
    args: _validate.RunArgs,
    table: _plan.Members,
    chunks: list[_plan.Chunk],
    outs: list[_runner.Outcome],
    *,
    devices: list[jax.Device],
) -> SweepResult:
    """Join the chunks (on the host, unless one unpadded chunk ran) into the sweep's result."""
    if len(chunks) == 1 and chunks[0].real == len(chunks[0].rows) and not _distributed.spans(devices):
        run = outs[0].run  # device arrays, split over the devices as computed
    else:
        run = _runner.join([(o.run, c.real) for o, c in zip(outs, chunks, strict=True)])
    resumed = [np.full(c.real, o.resumed_from, np.int64) for o, c in zip(outs, chunks, strict=True)]
    return SweepResult.build(
        layout.cfg,
        args.it,
        run,
        hyperparams=table.hyperparams,
        loss_hyperparams=table.loss_hyperparams,
        seeds=table.seeds,
        wall_time=sum(o.run_time for o in outs),
        compile_time=sum(o.compile_time for o in outs),
        devices=len(devices),
        resumed_from=np.concatenate(resumed),
    )


def _run_chunk(
    layout: Layout,
    args: _validate.RunArgs,
    table: _plan.Members,
    starts: _starts.Starts,
    chunk: _plan.Chunk,
    num_chunks: int,
    device: jax.Device,
    *,
    eval_data: PyTree,
    progress: bool,
    writer: bool,
    checkpointer: Checkpointer | None,
) -> _runner.Outcome:
    """Place one chunk's inputs on its devices and run it (from the sweep's first epoch, ``args.epochs`` more)."""
    rows = lambda values: {k: v[chunk.rows] for k, v in values.items()}  # noqa: E731
    first = starts.start.first
    inputs = _config.inputs(
        layout.cfg,
        args,
        starts.state(chunk),
        rows(table.hyperparams),
        rows(table.loss_hyperparams),
        eval_data,
        key=starts.keys(chunk),
        first=first,
    )
    desc = "sweep" if num_chunks == 1 else f"sweep, chunk {chunk.number + 1}/{num_chunks}"
    bar = ProgressBar(args.epochs, desc, members=chunk.real, quiet=not writer) if progress else None
    hooks = _hooks.hooks(bar, checkpointer, layout.cfg.evaluation.columns())
    last = first + args.epochs
    return _runner.run(layout, _place(layout, inputs, device), last, first=first, members=chunk.real, hooks=hooks)


def _place(layout: Layout, inputs: Inputs, device: jax.Device) -> Inputs:
    """Put one chunk's inputs where they run: split over the mesh, or on the one device."""
    if layout.mesh is None:
        return jax.device_put(inputs, device)
    split, whole = NamedSharding(layout.mesh, P(AXIS)), NamedSharding(layout.mesh, P())
    put = lambda tree, batched: _distributed.put(tree, split if batched else whole)  # noqa: E731
    return Inputs(
        it=put(inputs.it, False),
        init=put(inputs.init, layout.params_batched),
        hparams=put(inputs.hparams, True),
        key=put(inputs.key, layout.keys_batched),
        tol=put(inputs.tol, False),
        loss_hparams=put(inputs.loss_hparams, True),
        eval_data=put(inputs.eval_data, False),
        epochs=put(inputs.epochs, False),
        first=put(inputs.first, False),
    )
