"""The compiled training program: everything here is traced, nothing runs on the host.

A run is a :class:`RunState` (train state, epoch, history buffers,
convergence, divergence and early-stopping state) made by :func:`start` and
advanced by :func:`train`: a ``lax.while_loop`` over epochs whose body draws
the epoch's order, runs a ``lax.scan`` over its batches and then, every
``eval_every`` epochs, evaluates the parameters (:mod:`gdjax._evaluation`:
the full-data loss, the metrics and aux on the training and evaluation data)
inside a ``lax.cond`` on the shared epoch counter, so epochs without an
evaluation skip it, members or not. With ``eval_every`` other than 1 the
final parameters are evaluated once more when the run finishes.

A :class:`Layout` says how the runs of one program are laid out: one
run (``fit``), or a member axis (``sweep``), with the initial parameters and
the order keys shared or per member, and the members split over a device mesh.
For a sweep only the epoch body is vmapped: the loop and its epoch counter
stay shared, so each epoch's order is drawn and each batch gathered once for
all members. :func:`start_program` and :func:`train_program` are the two
programs the host driver (:mod:`gdjax._runner`) compiles and calls.

Everything that changes between calls of the same shapes is a traced input
(:class:`Inputs`: hyperparameters, key, ``tol``; the epoch bound; the run
state), so those calls share one compiled program. The history buffers hold
``epoch_capacity`` epochs from epoch ``base`` on; the host moves a full
segment off the device (:class:`gdjax._runner.HostHistory`), so memory
follows the epochs that run, whatever ``epochs`` is.

Divergence: the steps run in windows of at most :data:`WINDOW_STEPS`
plain steps, with no bookkeeping in them; one check of the window's losses
follows. A run whose loss went non-finite in the window goes back to its
parameters at the window's start (whose loss on the window's first batch was
finite, unless that was the bad one), sets ``diverged`` with the first bad
step in ``diverged_at``, records NaN from that step to the end of the epoch
and stops at its end. Once an epoch all parameters are checked as well, and
at an evaluation the full-data loss; a run failing that goes back to its
parameters at the start of the epoch. So a diverged run always returns
finite parameters with a finite full-data loss, and a step costs what the
expert's hand-written step costs: no copy of the last good state, no select.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from gdjax import _blocks, _data_parallel, _evaluation
from gdjax._run import (
    AXIS,
    LOSS_STREAM,
    Config,
    Inputs,
    Layout,
    RunState,
    _Member,
    windows,
)
from gdjax._types import PyTree
from gdjax.data import Batch, DataIterator
from gdjax.step import TrainState, make_step


def rows(cfg: Config, it: DataIterator, data: PyTree = None) -> _blocks.Rows:
    """The training data (or another data set shaped like it) as full-data passes read it, in blocks."""
    read: Callable[..., PyTree]
    if data is None or isinstance(data, DataIterator):
        source = it if data is None else data
        read, n, whole = source.read, source.num_examples, source.data
    else:
        read, n, whole = _blocks.slicer(data), jax.tree.leaves(data)[0].shape[0], data
    if cfg.data_sharding is not None:  # data parallel: each device measures its share of the block's rows
        streamed = isinstance(data, DataIterator | None) and not (it if data is None else data).on_device
        read = functools.partial(_split_read, cfg.data_sharding, read, streamed)
    return _blocks.Rows(read, n, _blocks.block_rows(whole, it.batch_size, cfg.block_elements))


def _split_read(data_sharding: Any, read: Callable, streamed: bool, *args: Any) -> PyTree:
    block = read(*args)
    return _data_parallel.split(data_sharding, _data_parallel.whole(data_sharding, block) if streamed else block)


def full_loss(cfg: Config, it: DataIterator, train: TrainState, loss_hparams: dict[str, jax.Array]) -> jax.Array:
    """Mean loss over every example of the data set (as evaluated: no key, the model state unchanged), in blocks."""
    objective = cfg.inference(loss_hparams, train.model_state)
    loss = lambda batch: jnp.reshape(objective(train.params, batch)[0], (1,)).astype(cfg.loss_dtype)  # noqa: E731
    return _blocks.mean(loss, rows(cfg, it))[0]


def _row(cfg: Config, it: DataIterator, eval_data: PyTree, train: TrainState, member: _Member) -> jax.Array:
    """The evaluation row of ``train``'s params and model state (see :func:`gdjax._evaluation.evaluate`)."""
    sets = (rows(cfg, it),) if eval_data is None else (rows(cfg, it), rows(cfg, it, eval_data))
    objective = cfg.inference(member.loss_hparams, train.model_state)
    keywords = {"model_state": train.model_state} if cfg.stateful else {}
    model = cfg.model(train.params)
    return _evaluation.evaluate(
        cfg.evaluation, objective, cfg.batched, sets, train.params, cfg.loss_dtype, model, keywords
    )


def _all_finite(tree: PyTree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return functools.reduce(jnp.logical_and, leaves, jnp.array(True))


def start(cfg: Config, it: DataIterator, init: TrainState, member: _Member, first: jax.Array) -> RunState:
    """The state of one run before its first epoch (a new run, or one continuing ``init`` from epoch ``first``)."""
    dtype, width = cfg.loss_dtype, cfg.evaluation.width
    params = init.params
    opt_state = cfg.build(member.hparams).init(params) if init.opt_state is None else init.opt_state
    step = jnp.zeros((), jnp.int32) if init.step is None else jnp.asarray(init.step, jnp.int32)
    train = TrainState(params, opt_state, step, init.model_state)
    initial = full_loss(cfg, it, train, member.loss_hparams)
    count = windows(cfg.epoch_capacity, it.num_batches, cfg.log_every)
    return RunState(
        train=train,
        epoch=first,
        base=first,
        first=first,
        loss_sums=jnp.zeros((count,), dtype),
        aux_sums=jnp.zeros((cfg.aux_size, count), dtype),
        evals=jnp.full((width, cfg.epoch_capacity), jnp.nan, dtype),
        initial_loss=initial,
        last=jnp.full((width,), jnp.nan, dtype).at[0].set(initial),
        converged=jnp.array(False),
        diverged=jnp.array(False),
        diverged_at=jnp.array(-1, jnp.int32),
        watch=_evaluation.start_watch(cfg.evaluation, params, init.model_state, dtype),
    )


def _steps(cfg: Config, it: DataIterator, run: RunState, member: _Member, key, idx, mask, pos, epoch) -> tuple:
    """The epoch's steps, in windows: plain steps, then one finiteness check per window (see the module docstring)."""
    step = make_step(
        cfg.bind(member.loss_hparams),
        cfg.build(member.hparams),
        has_aux=cfg.has_aux,
        batched=cfg.batched,
        with_key=cfg.with_key,
        stateful=cfg.stateful,
    )
    loss_key = jax.random.fold_in(key, LOSS_STREAM) if cfg.with_key else None
    nan = jnp.array(jnp.nan, cfg.loss_dtype)

    def plain(state: TrainState, xs: tuple) -> tuple:
        b_data, b_mask, _ = xs  # the batch's indices into the data, or for streamed data its examples
        # Without padding every mask is all True: a constant one lets XLA drop the masking from the step.
        b_mask = b_mask if it.padded else jnp.ones_like(b_mask)
        b_data, b_mask = _data_parallel.split(cfg.data_sharding, (b_data, b_mask))  # data parallel: rows split
        batch = it.gather(b_data, b_mask) if it.on_device else Batch(b_data, b_mask)
        batch = _data_parallel.split(cfg.data_sharding, batch)
        new, metrics = step(state, batch, loss_key)
        if not cfg.with_key:  # only the keys read the step count: count the window's steps once, at its end
            new = new._replace(step=state.step)
        aux = _evaluation.flatten_aux(metrics.get("aux"), cfg.loss_dtype)
        return new, (metrics["loss"].astype(cfg.loss_dtype), aux)

    def window(carry: tuple, xs: tuple) -> tuple:
        """Plain steps, then one check: a run whose loss went non-finite in them goes back to their start."""
        state, diverged, diverged_at = carry
        scanned: tuple[TrainState, tuple[jax.Array, jax.Array]] = jax.lax.scan(plain, state, xs, unroll=cfg.unroll)
        fast, (losses, aux) = scanned
        fast = fast if cfg.with_key else fast._replace(step=fast.step + losses.shape[0])
        finite = jnp.isfinite(losses)
        newly = ~diverged & ~jnp.all(finite)
        first = jnp.argmin(finite)  # the first step whose loss was not finite
        after = diverged | (newly & (jnp.arange(losses.shape[0]) >= first))  # steps whose losses are NaN
        out = (jnp.where(after, nan, losses), jnp.where(after[:, None], nan, aux))
        back = diverged | newly
        state = jax.tree.map(lambda x, y: jnp.where(back, x, y), state, fast)
        return (state, back, jnp.where(newly, xs[2][first], diverged_at)), out

    init = (run.train, run.diverged, run.diverged_at)
    if it.on_device:
        carry, (losses, aux) = _windows(window, init, (idx, mask, pos), _window_steps(it, cfg.unroll))
    else:
        streamed = (idx, mask, pos), key, epoch, cfg.unroll, cfg.data_sharding
        carry, (losses, aux) = _streamed_steps(it, window, init, *streamed)
    state, diverged, diverged_at = carry
    return state, diverged, diverged_at, losses, aux


#: Steps between finiteness checks (a multiple of the scan's unroll): a run whose loss goes non-finite goes
#: back at most this many steps; a check costs a reduction of the window's losses and one select of the state.
WINDOW_STEPS = 64


def _window_steps(it: DataIterator, unroll: int) -> int:
    """Steps per window: at most :data:`WINDOW_STEPS` and a streamed read's batches, whole groups of the unroll.

    The same for data on the device and streamed, so the two compile their steps alike, to the same bits:
    every step sits in the unrolled code of the same window at the same place.
    """
    k = min(it.num_batches, WINDOW_STEPS, it.chunk_steps)
    k = k // unroll * unroll if k >= unroll else 1 << (k.bit_length() - 1)
    return k if unroll % k == 0 or k % unroll == 0 else 1


def _windows(window: Callable, init: tuple, xs: tuple, k: int) -> tuple:
    """``window`` over ``xs`` cut into windows of ``k`` steps (the last one shorter); outputs joined."""
    steps = xs[-1].shape[0]  # positions: one per step
    full, rest = divmod(steps, k)
    outs, carry = [], init
    if full:
        shaped = lambda a: a[: full * k].reshape(full, k, *a.shape[1:])  # noqa: E731
        carry, out = jax.lax.scan(window, carry, jax.tree.map(shaped, xs))
        outs.append(jax.tree.map(lambda a: a.reshape(full * k, *a.shape[2:]), out))
    if rest:
        carry, out = window(carry, jax.tree.map(lambda a: a[full * k :], xs))
        outs.append(out)
    return carry, jax.tree.map(lambda *a: jnp.concatenate(a), *outs)


def _streamed_steps(
    it: DataIterator, window: Callable, init: tuple, xs: tuple, key, epoch, unroll: int, data_sharding: Any = None
) -> tuple:
    """The epoch's steps over streamed data: a scan over blocks of ``it.chunk_steps`` batches read from the host.

    Each block's read names the next block's indices (for the last, the next epoch's first), so the host
    reads it while this one computes. A block is a window of the finiteness check.
    """
    idx, mask, pos = xs
    steps, b = it.num_batches, it.batch_size
    w = _window_steps(it, unroll)
    k = max(w, it.chunk_steps // w * w)  # a block is whole windows; the epoch's last block ends with the rest
    full, rest = divmod(steps, k)
    ahead, ahead_mask = it.epoch_indices(key, epoch + 1, count=k)
    upcoming = jnp.where(ahead_mask, ahead, -1)

    def block(carry, xs):
        b_idx, b_mask, b_pos, b_next = xs
        batches = it.gather(b_idx, b_mask, b_next).data  # (steps of the block, batch, ...)
        batches = _data_parallel.whole(data_sharding, batches)  # each step splits its batch
        return _windows(window, carry, (batches, b_mask, b_pos), w)

    outs = []
    carry = init
    if full:
        shaped = lambda a: a[: full * k].reshape(full, k, *a.shape[1:])  # noqa: E731
        after = jnp.full((k, b), -1, jnp.int32).at[:rest].set(idx[full * k :]) if rest else upcoming
        nexts = jnp.concatenate([shaped(idx)[1:], after[None]])
        carry, out = jax.lax.scan(block, carry, (shaped(idx), shaped(mask), shaped(pos), nexts))
        outs.append(jax.tree.map(lambda a: a.reshape(full * k, *a.shape[2:]), out))
    if rest:
        carry, out = block(carry, (idx[full * k :], mask[full * k :], pos[full * k :], upcoming))
        outs.append(out)
    return carry, jax.tree.map(lambda *a: jnp.concatenate(a), *outs)


def _log(cfg: Config, run: RunState, losses: jax.Array, aux: jax.Array, epoch, pos, steps: int) -> tuple:
    """The window sums with this epoch's step losses (and aux, ``(steps, elements)``) added, if the run is active.

    Only the epoch's part of the buffers is read and written: a stopped run's is written back unchanged.
    """
    going = active(run)
    if cfg.log_every == 1:
        at = (epoch - run.base) * steps
        zero = jnp.zeros_like(at)
        old, old_aux = (
            jax.lax.dynamic_slice(run.loss_sums, (at,), (steps,)),
            jax.lax.dynamic_slice(run.aux_sums, (zero, at), (run.aux_sums.shape[0], steps)),
        )
        return (
            jax.lax.dynamic_update_slice(run.loss_sums, jnp.where(going, losses, old), (at,)),
            jax.lax.dynamic_update_slice(run.aux_sums, jnp.where(going, aux.T, old_aux), (zero, at)),
        )
    window = (pos - run.first * steps) // cfg.log_every - (run.base - run.first) * steps // cfg.log_every
    return (
        run.loss_sums.at[window].add(jnp.where(going, losses, 0)),
        run.aux_sums.at[:, window].add(jnp.where(going, aux.T, 0)),
    )


def _epoch(
    cfg: Config,
    it: DataIterator,
    shared: Inputs,
    run: RunState,
    member: _Member,
    key,
    idx,
    mask,
    epoch,
) -> RunState:
    """One epoch of one run over the given batch indices; a no-op for a stopped run."""
    steps, ev = it.num_batches, cfg.evaluation
    pos = epoch * steps + jnp.arange(steps, dtype=jnp.int32)
    state, diverged, diverged_at, losses, aux = _steps(cfg, it, run, member, key, idx, mask, pos, epoch)
    sums, aux_sums = _log(cfg, run, losses, aux, epoch, pos, steps)
    done = epoch + 1
    nan_row = jnp.full((ev.width,), jnp.nan, cfg.loss_dtype)
    evaluate = lambda train: _row(cfg, it, shared.eval_data, train, member)  # noqa: E731
    # An evaluation is decided by the shared epoch counter, so under a sweep's vmap the cond stays a cond
    # and epochs without one skip it for every member.
    if ev.eval_every == 0:
        evaluated, row = jnp.array(False), nan_row
    elif ev.eval_every == 1:
        evaluated, row = jnp.array(True), evaluate(state)
    else:
        evaluated = done % ev.eval_every == 0
        row = jax.lax.cond(evaluated, evaluate, lambda _: nan_row, state)
    # Every parameter is checked once an epoch (one the loss does not use can go non-finite unseen), and the
    # full-data loss at an evaluation; failing that, the run returns to the start of the epoch.
    bad = ~_all_finite(state.params) | (evaluated & ~jnp.isfinite(row[0]))
    state = jax.tree.map(lambda x, y: jnp.where(bad, x, y), run.train, state)
    row = jnp.where(bad, run.last if ev.eval_every == 1 else nan_row, row)  # the row of the params gone back to
    counts = evaluated & ~bad & ~diverged
    new = run._replace(
        train=state,
        epoch=done,
        loss_sums=sums,
        aux_sums=aux_sums,
        evals=run.evals.at[:, epoch - run.base].set(jnp.where(active(run), row, run.evals[:, epoch - run.base])),
        last=jnp.where(evaluated | bad, row, run.last),
        converged=counts & (row[0] <= shared.tol),
        diverged=diverged | bad,
        diverged_at=jnp.where(bad & ~diverged, pos[-1], diverged_at),
        watch=_evaluation.watch(ev, run.watch, row, state.params, state.model_state, done, counts),
    )
    # A stopped run stays as it was. The history buffers are left out of this select (it would read and write
    # them whole every epoch): their epoch's part was written only for an active run.
    bare = lambda r: r._replace(loss_sums=None, aux_sums=None, evals=None)  # noqa: E731
    kept = jax.tree.map(lambda a, b: jnp.where(active(run), a, b), bare(new), bare(run))
    return kept._replace(loss_sums=new.loss_sums, aux_sums=new.aux_sums, evals=new.evals)


def _final(cfg: Config, it: DataIterator, shared: Inputs, run: RunState, member: _Member) -> RunState:
    """Evaluate the final parameters: ``last`` becomes their row, and they may be the monitor's best."""
    row = _row(cfg, it, shared.eval_data, run.train, member)
    train = run.train
    best = _evaluation.best_of(
        cfg.evaluation, run.watch, row, train.params, train.model_state, run.epoch, ~run.diverged
    )
    return run._replace(last=row, watch=best)


def active(run: RunState) -> jax.Array:
    """Runs that have neither converged, diverged nor stopped early (works on host arrays too)."""
    return ~run.converged & ~run.diverged & ~run.watch.stopped


def _member(inputs: Inputs) -> _Member:
    return _Member(inputs.hparams, inputs.loss_hparams)


def train(layout: Layout, inputs: Inputs, run: RunState, epochs: jax.Array) -> RunState:
    """Advance ``run`` until ``epochs`` epochs, the end of the history buffers, or every run stopping.

    With a member axis the loop over epochs stays outside ``vmap`` with one
    shared epoch counter, so with a shared key each epoch's order is drawn
    once and each batch gathered once for all members; members that have
    stopped are carried unchanged until all have. When every run has
    finished (``inputs.epochs`` reached, or all stopped) and ``eval_every``
    is not 1, the final parameters are evaluated.
    """
    cfg, it = layout.cfg, inputs.it
    one = functools.partial(_epoch, cfg, it, inputs)
    final = functools.partial(_final, cfg, it, inputs)
    orders = it.epoch_indices
    if layout.members:
        ax = 0 if layout.keys_batched else None
        one = jax.vmap(one, in_axes=(0, 0, ax, ax, ax, None))
        final = jax.vmap(final)
        orders = jax.vmap(it.epoch_indices, (0, None)) if layout.keys_batched else orders

    def body(carry: tuple[jax.Array, RunState]) -> tuple[jax.Array, RunState]:
        epoch, run = carry
        idx, mask = orders(inputs.key, epoch)
        return epoch + 1, one(run, _member(inputs), inputs.key, idx, mask, epoch)

    def going(carry: tuple[jax.Array, RunState]) -> jax.Array:
        epoch, run = carry
        room = epoch < jnp.max(run.base) + cfg.epoch_capacity  # the history buffers end there
        return (epoch < epochs) & room & jnp.any(active(run))

    epoch, run = jax.lax.while_loop(going, body, (jnp.max(run.epoch), run))
    every = cfg.evaluation.eval_every
    if every == 1:
        return run  # every epoch was evaluated: ``last`` is current
    # ``last`` is current for a run whose last epoch was evaluated and passed its checks
    stale = jnp.any(run.diverged | (run.epoch % every != 0)) if every else jnp.array(True)
    finished = (epoch >= inputs.epochs) | ~jnp.any(active(run))
    return jax.lax.cond(finished & stale, lambda r: final(r, _member(inputs)), lambda r: r, run)


def _start(layout: Layout, inputs: Inputs) -> RunState:
    one = functools.partial(start, layout.cfg, inputs.it)
    if layout.members:
        one = jax.vmap(one, in_axes=(0 if layout.params_batched else None, 0, None))
    return one(inputs.init, _member(inputs), inputs.first)


def _input_specs(layout: Layout) -> Inputs:
    split = lambda batched: P(AXIS) if batched else P()  # noqa: E731
    specs: Any = (P(), split(layout.params_batched), P(AXIS), split(layout.keys_batched), P(), P(AXIS), P(), P(), P())
    return Inputs(*specs)  # the same structure, holding a PartitionSpec per input


def start_program(layout: Layout, inputs: Inputs) -> RunState:
    """The starting state of every run of the layout (the program :mod:`gdjax._runner` compiles first)."""
    if layout.mesh is None or not layout.members:
        return _data_parallel.replicated(layout.mesh, _start(layout, inputs))
    return _sharded(layout, _start, (_input_specs(layout),))(inputs)


def train_program(layout: Layout, inputs: Inputs, run: RunState, epochs: jax.Array) -> RunState:
    """:func:`train` for the layout, split over its mesh (the program the runner calls in chunks of epochs)."""
    if layout.mesh is None or not layout.members:
        return _data_parallel.replicated(layout.mesh, train(layout, inputs, run, epochs))
    return _sharded(layout, train, (_input_specs(layout), P(AXIS), P()))(inputs, run, epochs)


def _sharded(layout: Layout, f: Callable[..., RunState], in_specs: tuple) -> Callable[..., RunState]:
    """``f`` split over the layout's mesh: members never communicate; shared inputs stay replicated."""
    body = functools.partial(f, layout)
    return jax.shard_map(body, mesh=layout.mesh, in_specs=in_specs, out_specs=P(AXIS), check_vma=False)
