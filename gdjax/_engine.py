"""The compiled training programs behind ``fit`` (one member) and ``sweep`` (many).

A run is a :class:`RunState` (train state, epoch, loss history buffers,
convergence and divergence flags) made by :func:`start` and advanced by
:func:`train`: a ``lax.while_loop`` over epochs whose body draws the epoch's
order, runs a ``lax.scan`` over its batches and then measures the full-data
loss. For a sweep the members' states are stacked and only the epoch body is
vmapped: the loop and its epoch counter stay shared, so each epoch's order is
drawn and each batch gathered once for all members. :func:`execute` compiles
both programs once (:func:`executable` caches them) and runs them, in chunks
of epochs when a progress bar or checkpoints need it.

Everything that changes between calls of the same shapes is a traced
argument (hyperparameters, key, epochs, tol, the starting state), so those
calls share one compiled program. The history buffers are sized for
``epoch_capacity`` epochs, the requested count rounded up to a power of two,
so most changes of ``epochs`` do not compile again either.

Divergence: every step's mini-batch loss vouches for the parameters it was
computed with. A non-finite loss sends the run back to the last parameters
whose loss was finite (one step earlier), sets ``diverged`` with the step in
``diverged_at``, records NaN for the rest of the epoch and stops the run at
its end. Once an epoch, all parameters and the full-data loss are checked as
well; a run failing that goes back to its parameters at the start of the
epoch. So a diverged run always returns finite parameters with a finite
full-data loss, and the per-step check costs no reduction over the
parameters (it used to cost two thirds of a single-sample SGD sweep's time).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gdjax import progress
from gdjax.data import Batch, DataIterator
from gdjax.step import TrainState, batch_loss, make_step

PyTree = Any


class Config(NamedTuple):
    """The static part of a run: equal configs share compiled programs."""

    loss_fn: Callable
    optimizer: Any  # a GradientTransformation, or a factory when ``factory``
    factory: bool
    has_aux: bool
    batched: bool
    log_every: int
    epoch_capacity: int
    loss_dtype: Any
    unroll: int = 1

    def build(self, hparams: dict[str, jax.Array]) -> optax.GradientTransformation:
        """The optimizer for these (possibly traced) hyperparameters."""
        return self.optimizer(**hparams) if self.factory else self.optimizer


class RunState(NamedTuple):
    """Everything a run carries from one epoch to the next.

    Attributes:
      train: the :class:`gdjax.TrainState`.
      epoch: epochs completed.
      base: the first epoch the history buffers hold: a long run moves its
        history to the host every ``epoch_capacity`` epochs (see
        :class:`HostHistory`) so that its memory follows the epochs run.
      loss_sums: per window of ``log_every`` step positions from epoch
        ``base`` on, the sum of the step losses (NaN after a divergence).
      epoch_losses: full-data loss after each epoch from ``base`` on (NaN
        where not run).
      initial_loss: full-data loss before the first step.
      last_loss: full-data loss of ``train.params``.
      converged: the full-data loss reached ``tol``.
      diverged: a step produced a non-finite loss or parameters.
      diverged_at: the step position rejected, or -1.
    """

    train: TrainState
    epoch: jax.Array
    base: jax.Array
    loss_sums: jax.Array
    epoch_losses: jax.Array
    initial_loss: jax.Array
    last_loss: jax.Array
    converged: jax.Array
    diverged: jax.Array
    diverged_at: jax.Array


#: Steps whose parameter count times batch size is at most this are unrolled
#: ``SMALL_STEP_UNROLL`` times in the scan: for such small steps the loop's own
#: overhead dominates (measured: 35% less time for linear regression with
#: D=64 and batch 32 on a 2-core CPU), while for large ones unrolling only
#: lengthens compilation.
SMALL_STEP_WORK = 2**16
SMALL_STEP_UNROLL = 4


def unroll_for(params: PyTree, batch_size: int) -> int:
    """How many steps the epoch's scan unrolls for these params and batch size."""
    size = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    return SMALL_STEP_UNROLL if size * batch_size <= SMALL_STEP_WORK else 1


#: The most step positions a run may have: the step counter and positions are int32.
MAX_STEPS = 2**31 - 1
#: The most bytes of loss history one compiled program keeps (all its members together). A run whose whole
#: history would need more keeps ``epoch_capacity`` epochs of it in the program and moves it to the host
#: whenever that segment is full, so memory follows the epochs that actually run (``tol`` may stop early).
HISTORY_BYTES = 32 << 20


def capacity(epochs: int, steps_per_epoch: int = 1, log_every: int = 1, members: int = 1, itemsize: int = 4) -> int:
    """Epochs of history a program holds: the next power of two of ``epochs``, halved to fit :data:`HISTORY_BYTES`."""
    cap = 1 << max(0, epochs - 1).bit_length()
    while cap > 1 and members * itemsize * (cap + _windows(cap, steps_per_epoch, log_every)) > HISTORY_BYTES:
        cap //= 2
    return cap


def _windows(epoch_capacity: int, steps_per_epoch: int, log_every: int) -> int:
    # a segment that starts mid-window touches one window more than its length covers
    return -(-epoch_capacity * steps_per_epoch // log_every) + (log_every > 1)


def num_windows(cfg: Config, steps_per_epoch: int) -> int:
    """Entries of the in-program step-loss history."""
    return _windows(cfg.epoch_capacity, steps_per_epoch, cfg.log_every)


def check_steps(epochs: int, steps_per_epoch: int) -> None:
    """Refuse runs whose step count would overflow the int32 step counter, before compiling."""
    if epochs * steps_per_epoch > MAX_STEPS:
        raise ValueError(
            f"epochs={epochs} with {steps_per_epoch} steps per epoch is {epochs * steps_per_epoch} steps, more than "
            f"the {MAX_STEPS} (2**31 - 1) a run can count. Use at most {MAX_STEPS // steps_per_epoch} epochs, or a "
            f"larger batch size."
        )


def full_loss(cfg: Config, it: DataIterator, params: PyTree) -> jax.Array:
    """Mean loss over every example of the data set."""
    objective = batch_loss(cfg.loss_fn, has_aux=cfg.has_aux, batched=cfg.batched)
    mask = jnp.ones((it.num_examples,), bool)
    return objective(params, Batch(it.data, mask))[0]


def _all_finite(tree: PyTree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return functools.reduce(jnp.logical_and, leaves, jnp.array(True))


def start(cfg: Config, it: DataIterator, params: PyTree, hparams: dict[str, jax.Array]) -> RunState:
    """The run state before the first epoch (traceable)."""
    dtype = cfg.loss_dtype
    train = TrainState(params, cfg.build(hparams).init(params), jnp.zeros((), jnp.int32))
    initial = full_loss(cfg, it, params).astype(dtype)
    return RunState(
        train=train,
        epoch=jnp.zeros((), jnp.int32),
        base=jnp.zeros((), jnp.int32),
        loss_sums=jnp.zeros((num_windows(cfg, it.num_batches),), dtype),
        epoch_losses=jnp.full((cfg.epoch_capacity,), jnp.nan, dtype),
        initial_loss=initial,
        last_loss=initial,
        converged=jnp.array(False),
        diverged=jnp.array(False),
        diverged_at=jnp.array(-1, jnp.int32),
    )


def _epoch(
    cfg: Config,
    it: DataIterator,
    run: RunState,
    hparams: dict[str, jax.Array],
    idx: jax.Array,
    mask: jax.Array,
    epoch: jax.Array,
    tol: jax.Array,
) -> RunState:
    """One epoch of one member over the given batch indices; a no-op for a stopped member."""
    steps = it.num_batches
    step = make_step(cfg.loss_fn, cfg.build(hparams), has_aux=cfg.has_aux, batched=cfg.batched)
    nan = jnp.array(jnp.nan, cfg.loss_dtype)
    pos = epoch * steps + jnp.arange(steps, dtype=jnp.int32)

    def one_step(carry, xs):
        state, last_good, diverged, diverged_at = carry
        b_idx, b_mask, b_pos = xs
        new, metrics = step(state, it.gather(b_idx, b_mask))
        loss = metrics["loss"].astype(cfg.loss_dtype)
        # The loss of ``state`` on this batch vouches for ``state``: keep it as the fallback and move on;
        # a non-finite loss sends the member back to the last state whose loss was finite, for good.
        ok = ~diverged & jnp.isfinite(loss)
        pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(ok, x, y), a, b)  # noqa: E731
        newly = ~diverged & ~ok
        return (
            (pick(new, last_good), pick(state, last_good), diverged | newly, jnp.where(newly, b_pos, diverged_at)),
            jnp.where(diverged, nan, loss),
        )

    (state, _, diverged, diverged_at), losses = jax.lax.scan(
        one_step, (run.train, run.train, run.diverged, run.diverged_at), (idx, mask, pos), unroll=cfg.unroll
    )
    if cfg.log_every == 1:
        sums = jax.lax.dynamic_update_slice(run.loss_sums, losses, ((epoch - run.base) * steps,))
    else:
        sums = run.loss_sums.at[pos // cfg.log_every - run.base * steps // cfg.log_every].add(losses)
    # Once an epoch, every parameter and the full-data loss are checked too (a parameter the loss does
    # not use can go non-finite unseen); failing that, the member returns to the start of the epoch.
    loss = full_loss(cfg, it, state.params).astype(cfg.loss_dtype)
    bad = ~jnp.isfinite(loss) | ~_all_finite(state.params)
    state = jax.tree.map(lambda x, y: jnp.where(bad, x, y), run.train, state)
    loss = jnp.where(bad, run.last_loss, loss)
    new = RunState(
        train=state,
        epoch=run.epoch + 1,
        base=run.base,
        loss_sums=sums,
        epoch_losses=run.epoch_losses.at[epoch - run.base].set(loss),
        initial_loss=run.initial_loss,
        last_loss=loss,
        converged=~bad & ~diverged & (loss <= tol),
        diverged=diverged | bad,
        diverged_at=jnp.where(bad & ~diverged, pos[-1], diverged_at),
    )
    active = _active(run)
    return jax.tree.map(lambda a, b: jnp.where(active, a, b), new, run)


def _active(run: RunState) -> jax.Array:
    return ~run.converged & ~run.diverged


def train(
    cfg: Config,
    it: DataIterator,
    run: RunState,
    hparams: dict[str, jax.Array],
    key: jax.Array,
    epochs: jax.Array,
    tol: jax.Array,
    *,
    members: bool = False,
    keys_batched: bool = False,
) -> RunState:
    """Advance ``run`` until ``epochs`` epochs, convergence or divergence (traceable).

    With ``members=True``, ``run`` and ``hparams`` carry a leading member
    axis (and ``key`` too with ``keys_batched``). The loop over epochs stays
    outside ``vmap`` with one shared epoch counter, so with a shared key each
    epoch's order is drawn once and each batch gathered once for all members;
    members that have stopped are carried unchanged until all have.
    """

    def body(carry: tuple[jax.Array, RunState]) -> tuple[jax.Array, RunState]:
        epoch, run = carry
        orders = jax.vmap(it.epoch_indices, (0, None)) if keys_batched else it.epoch_indices
        idx, mask = orders(key, epoch)
        one = functools.partial(_epoch, cfg, it)
        if members:
            ax = 0 if keys_batched else None
            one = jax.vmap(one, in_axes=(0, 0, ax, ax, None, None))
        return epoch + 1, one(run, hparams, idx, mask, epoch, tol)

    def going(carry: tuple[jax.Array, RunState]) -> jax.Array:
        epoch, run = carry
        room = epoch < jnp.max(run.base) + cfg.epoch_capacity  # the history buffers end there
        return (epoch < epochs) & room & jnp.any(_active(run))

    return jax.lax.while_loop(going, body, (jnp.max(run.epoch), run))[1]


def start_members(
    cfg: Config, it: DataIterator, params: PyTree, hparams: dict[str, jax.Array], *, params_batched: bool
) -> RunState:
    """The starting states of many members (leading axis of ``hparams``), traceable."""
    return jax.vmap(functools.partial(start, cfg, it), in_axes=(0 if params_batched else None, 0))(params, hparams)


_EXECUTABLES: dict[Any, Any] = {}
_MAX_EXECUTABLES = 64


def signature(tree: PyTree) -> Any:
    """A hashable description of a pytree's structure, shapes, dtypes and shardings."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((jax.typeof(x), getattr(x, "sharding", None)) for x in leaves)


def execute(
    static: Any,
    start_fn: Callable,
    start_args: tuple,
    train_fn: Callable,
    train_tail: Callable[[int], tuple],
    epochs: int,
    bar: progress.ProgressBar | None,
    checkpointer: Any = None,
) -> tuple[RunState, float, float, int]:
    """Compile (once) and run ``start_fn`` then ``train_fn``.

    ``start_fn(static, it, params, hparams)`` makes the starting state;
    ``train_fn(static, it, run, hparams, *train_tail(target))`` advances it
    to ``target`` epochs. With a bar or a checkpointer,
    :func:`gdjax.progress.drive` calls the same compiled training program in
    chunks of epochs; a checkpointer first restores the newest checkpoint,
    then saves one every ``checkpointer.every`` epochs and at the end.

    Returns:
      ``(run, compile_seconds, run_seconds, resumed_from_epoch)``.
    """
    it, _, hparams = start_args
    cfg: Config = static if isinstance(static, Config) else static.cfg
    history = HostHistory(cfg, it.num_batches)
    start_program, compile_time = executable(start_fn, static, *start_args)
    t0 = time.perf_counter()
    run = jax.block_until_ready(start_program(*start_args))
    resumed = 0
    if checkpointer is not None:
        restored = checkpointer.restore(lambda epoch: (run, history.template(run, epoch)))
        if restored is not None:
            run = history.restore(*restored)
            resumed = int(np.max(np.asarray(run.epoch)))
    run_time = time.perf_counter() - t0
    train_program, seconds = executable(train_fn, static, it, run, hparams, *train_tail(epochs))

    def advance(run: RunState, target: int) -> RunState:
        """Run to ``target`` epochs, moving each full segment of history to the host on the way."""
        while True:
            limit = history.limit()
            run = train_program(it, run, hparams, *train_tail(min(target, limit)))
            if target < limit:
                return run
            done = int(np.max(jax.device_get(run.epoch)))
            if done == limit:
                run = history.drain(run)
            if done >= target or done < limit:  # there, or every member stopped
                return run

    t0 = time.perf_counter()
    run = progress.drive(
        advance,
        run,
        epochs,
        bar,
        program=train_program,
        every=checkpointer.every if checkpointer is not None else None,
        on_chunk=(lambda r, done: checkpointer.save((r, history.drained(r)), done)) if checkpointer else None,
    )
    return history.join(run), compile_time + seconds, run_time + time.perf_counter() - t0, resumed


def pad_history(run: RunState, runs: list) -> RunState:
    """``run``'s history padded to the longest of ``runs`` (chunks that stopped early drained fewer segments)."""
    width = lambda name: max(np.shape(getattr(r[0], name))[-1] for r in runs)  # noqa: E731
    pad = lambda x, n, fill: np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])], constant_values=fill)  # noqa: E731
    return run._replace(
        loss_sums=pad(run.loss_sums, width("loss_sums"), 0),
        epoch_losses=pad(run.epoch_losses, width("epoch_losses"), np.nan),
    )


class HostHistory:
    """The loss history a long run has moved off the device, one segment of ``epoch_capacity`` epochs at a time.

    The program's buffers hold the history from epoch ``base`` on; when the
    run reaches ``base + epoch_capacity`` epochs, :meth:`drain` copies them
    here and empties them, so the program's memory stays bounded whatever
    ``epochs`` is, and the host holds only the epochs that ran.
    """

    def __init__(self, cfg: Config, steps_per_epoch: int) -> None:
        self.cfg, self.steps = cfg, steps_per_epoch
        self.sums: list[np.ndarray] = []
        self.losses: list[np.ndarray] = []
        self.base = 0

    def limit(self) -> int:
        """The epoch at which the program's history buffers are full."""
        return self.base + self.cfg.epoch_capacity

    def _window(self, epoch: int) -> int:
        return epoch * self.steps // self.cfg.log_every

    def drain(self, run: RunState) -> RunState:
        """Move the full segment's history to the host; the window a segment ends inside is carried on."""
        epoch = self.limit()
        done = self._window(epoch) - self._window(self.base)
        sums, losses = np.asarray(run.loss_sums), np.asarray(run.epoch_losses)
        self.sums.append(sums[..., :done])
        self.losses.append(losses)
        fresh_sums = np.zeros_like(sums)
        if done < sums.shape[-1]:
            fresh_sums[..., 0] = sums[..., done]  # the window the segment ended inside (0 if none)
        self.base = epoch
        put = lambda new, old: jax.device_put(new, old.sharding)  # noqa: E731
        return run._replace(
            base=put(np.full_like(np.asarray(run.base), epoch), run.base),
            loss_sums=put(fresh_sums, run.loss_sums),
            epoch_losses=put(np.full_like(losses, np.nan), run.epoch_losses),
        )

    def drained(self, run: RunState) -> tuple[np.ndarray, np.ndarray]:
        """The history on the host so far, as two arrays (what a checkpoint stores beside the run)."""
        lead = np.shape(run.initial_loss)
        empty = lambda: np.zeros((*lead, 0), self.cfg.loss_dtype)  # noqa: E731
        join = lambda parts: np.concatenate(parts, -1) if parts else empty()  # noqa: E731
        return join(self.sums), join(self.losses)

    def template(self, run: RunState, epoch: int) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
        """The shapes :meth:`drained` had when a checkpoint of ``epoch`` epochs was saved."""
        base = epoch // self.cfg.epoch_capacity * self.cfg.epoch_capacity
        lead = np.shape(run.initial_loss)
        dtype = self.cfg.loss_dtype
        return (
            jax.ShapeDtypeStruct((*lead, self._window(base)), dtype),
            jax.ShapeDtypeStruct((*lead, base), dtype),
        )

    def restore(self, run: RunState, drained: tuple[Any, Any]) -> RunState:
        """Take back the host history saved with a checkpoint; returns the run."""
        sums, losses = (np.asarray(x) for x in drained)
        self.sums, self.losses = ([sums], [losses]) if losses.shape[-1] else ([], [])
        self.base = int(np.max(np.asarray(run.base)))
        return run

    def join(self, run: RunState) -> RunState:
        """The run with its whole history (host segments, then the program's buffers) as numpy arrays."""
        if not self.losses:
            return run
        sums, losses = self.drained(run)
        return run._replace(
            loss_sums=np.concatenate([sums, np.asarray(run.loss_sums)], -1),
            epoch_losses=np.concatenate([losses, np.asarray(run.epoch_losses)], -1),
        )


def executable(fn: Callable, cfg: Config, *args: Any) -> tuple[Callable, float]:
    """The compiled ``fn(cfg, *args)`` for these argument shapes, and the seconds spent compiling it.

    ``jax.jit`` would also cache, but asking it for the executable retraces
    the program on every call (milliseconds); this cache costs a dict look-up.
    """
    sig = (fn, cfg, signature(args))
    exe = _EXECUTABLES.get(sig)
    if exe is not None:
        return exe, 0.0
    t0 = time.perf_counter()
    exe = jax.jit(fn, static_argnums=0).lower(cfg, *args).compile()
    if len(_EXECUTABLES) >= _MAX_EXECUTABLES:
        _EXECUTABLES.pop(next(iter(_EXECUTABLES)))
    _EXECUTABLES[sig] = exe
    return exe, time.perf_counter() - t0


def stop_position(run_epoch: int, diverged_at: int, steps_per_epoch: int) -> int:
    """Step positions a run went through (including a rejected one)."""
    if diverged_at >= 0:
        return min(diverged_at + 1, run_epoch * steps_per_epoch)
    return run_epoch * steps_per_epoch


def window_means(sums: np.ndarray, positions: int, log_every: int) -> np.ndarray:
    """Turn window sums over ``positions`` step positions into window means."""
    count = -(-positions // log_every)
    sizes = np.minimum(log_every, positions - log_every * np.arange(count))
    return sums[..., :count] / sizes
