"""The compiled training program: everything here is traced, nothing runs on the host.

A run is a :class:`RunState` (train state, epoch, loss history buffers,
convergence and divergence flags) made by :func:`start` and advanced by
:func:`train`: a ``lax.while_loop`` over epochs whose body draws the epoch's
order, runs a ``lax.scan`` over its batches and then measures the full-data
loss. A :class:`Layout` says how the runs of one program are laid out: one
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

Divergence: every step's mini-batch loss vouches for the parameters it was
computed with. A non-finite loss sends the run back to the last parameters
whose loss was finite (one step earlier), sets ``diverged`` with the step in
``diverged_at``, records NaN for the rest of the epoch and stops the run at
its end. Once an epoch, all parameters and the full-data loss are checked as
well; a run failing that goes back to its parameters at the start of the
epoch. So a diverged run always returns finite parameters with a finite
full-data loss, and the per-step check costs no reduction over the
parameters.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from gdjax._caches import callable_key
from gdjax._types import HostOrDevice, PyTree, ceil_div
from gdjax.data import Batch, DataIterator
from gdjax.step import TrainState, batch_loss, make_step

#: The name of the mesh axis a sweep's members are split along.
AXIS = "members"
#: The most step positions a run may have: the step counter and positions are int32.
MAX_STEPS = 2**31 - 1
#: The most bytes of loss history one compiled program keeps (all its members together). A run whose whole
#: history would need more keeps ``epoch_capacity`` epochs of it in the program and moves it to the host
#: whenever that segment is full.
HISTORY_BYTES = 32 << 20
#: Steps whose parameter count times batch size is at most this are unrolled ``SMALL_STEP_UNROLL`` times in
#: the scan: for such small steps the loop's own overhead dominates (measured: 35% less time for linear
#: regression with D=64 and batch 32 on a 2-core CPU); for large ones unrolling only lengthens compilation.
SMALL_STEP_WORK = 2**16
SMALL_STEP_UNROLL = 4


@dataclasses.dataclass(frozen=True)
class Config:
    """The static part of a run: equal configs share compiled programs.

    The loss and optimizer compare by :func:`gdjax._caches.callable_key`, so
    an equal ``functools.partial`` made anew at every call shares them too.
    """

    loss_fn: Callable[..., Any] = dataclasses.field(compare=False)
    optimizer: Any = dataclasses.field(compare=False)  # a GradientTransformation, or a factory when ``factory``
    loss_key: Hashable
    optimizer_key: Hashable
    factory: bool
    has_aux: bool
    batched: bool
    log_every: int
    epoch_capacity: int
    loss_dtype: Any
    unroll: int = 1

    @classmethod
    def make(cls, loss_fn: Callable[..., Any], optimizer: Any, **values: Any) -> Config:
        return cls(loss_fn, optimizer, callable_key(loss_fn), callable_key(optimizer), **values)

    def build(self, hparams: dict[str, jax.Array]) -> optax.GradientTransformation:
        """The optimizer for these (possibly traced) hyperparameters."""
        return self.optimizer(**hparams) if self.factory else self.optimizer


class RunState(NamedTuple):
    """Everything a run carries from one epoch to the next.

    Attributes:
      train: the :class:`gdjax.TrainState`.
      epoch: epochs completed.
      base: the first epoch the history buffers hold.
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
    epoch: HostOrDevice
    base: HostOrDevice
    loss_sums: HostOrDevice
    epoch_losses: HostOrDevice
    initial_loss: HostOrDevice
    last_loss: HostOrDevice
    converged: HostOrDevice
    diverged: HostOrDevice
    diverged_at: HostOrDevice


class Layout(NamedTuple):
    """How one program lays out its runs (static: part of the compiled program's identity).

    Attributes:
      cfg: the run's :class:`Config`.
      members: a leading member axis (a sweep) or one run (a fit).
      params_batched: each member starts from its own parameters.
      keys_batched: each member has its own order key.
      mesh: the devices the members are split over, or None for one device.
    """

    cfg: Config
    members: bool = False
    params_batched: bool = False
    keys_batched: bool = False
    mesh: Mesh | None = None


class Inputs(NamedTuple):
    """The traced inputs of a run: changing them compiles nothing new."""

    it: DataIterator
    params: PyTree
    hparams: dict[str, jax.Array]
    key: jax.Array
    tol: jax.Array


def unroll_for(params: PyTree, batch_size: int) -> int:
    """How many steps the epoch's scan unrolls for these params and batch size."""
    size = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    return SMALL_STEP_UNROLL if size * batch_size <= SMALL_STEP_WORK else 1


def capacity(epochs: int, steps_per_epoch: int = 1, log_every: int = 1, members: int = 1, itemsize: int = 8) -> int:
    """Epochs of history a program holds: the next power of two of ``epochs``, halved to fit :data:`HISTORY_BYTES`."""
    cap = 1 << max(0, epochs - 1).bit_length()
    while cap > 1 and members * itemsize * (cap + windows(cap, steps_per_epoch, log_every)) > HISTORY_BYTES:
        cap //= 2
    return cap


def windows(epoch_capacity: int, steps_per_epoch: int, log_every: int) -> int:
    """Entries of the in-program step-loss history (a segment that starts mid-window touches one more)."""
    return ceil_div(epoch_capacity * steps_per_epoch, log_every) + (log_every > 1)


def full_loss(cfg: Config, it: DataIterator, params: PyTree) -> jax.Array:
    """Mean loss over every example of the data set."""
    objective = batch_loss(cfg.loss_fn, has_aux=cfg.has_aux, batched=cfg.batched)
    mask = jnp.ones((it.num_examples,), bool)
    return objective(params, Batch(it.data, mask))[0].astype(cfg.loss_dtype)


def _all_finite(tree: PyTree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return functools.reduce(jnp.logical_and, leaves, jnp.array(True))


def start(cfg: Config, it: DataIterator, params: PyTree, hparams: dict[str, jax.Array]) -> RunState:
    """The state of one run before its first epoch."""
    dtype = cfg.loss_dtype
    initial = full_loss(cfg, it, params)
    zero = jnp.zeros((), jnp.int32)
    return RunState(
        train=TrainState(params, cfg.build(hparams).init(params), zero),
        epoch=zero,
        base=zero,
        loss_sums=jnp.zeros((windows(cfg.epoch_capacity, it.num_batches, cfg.log_every),), dtype),
        epoch_losses=jnp.full((cfg.epoch_capacity,), jnp.nan, dtype),
        initial_loss=initial,
        last_loss=initial,
        converged=jnp.array(False),
        diverged=jnp.array(False),
        diverged_at=jnp.array(-1, jnp.int32),
    )


def _steps(cfg: Config, it: DataIterator, run: RunState, hparams: dict, idx, mask, pos) -> tuple:
    """The epoch's scan over its batches, with the per-step divergence fallback."""
    step = make_step(cfg.loss_fn, cfg.build(hparams), has_aux=cfg.has_aux, batched=cfg.batched)
    nan = jnp.array(jnp.nan, cfg.loss_dtype)

    def one_step(carry, xs):
        state, last_good, diverged, diverged_at = carry
        b_idx, b_mask, b_pos = xs
        new, metrics = step(state, it.gather(b_idx, b_mask))
        loss = metrics["loss"].astype(cfg.loss_dtype)
        # The loss of ``state`` on this batch vouches for ``state``: keep it as the fallback and move on;
        # a non-finite loss sends the run back to the last state whose loss was finite, for good.
        ok = ~diverged & jnp.isfinite(loss)
        pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(ok, x, y), a, b)  # noqa: E731
        newly = ~diverged & ~ok
        carry = (pick(new, last_good), pick(state, last_good), diverged | newly, jnp.where(newly, b_pos, diverged_at))
        return carry, jnp.where(diverged, nan, loss)

    init = (run.train, run.train, run.diverged, run.diverged_at)
    (state, _, diverged, diverged_at), losses = jax.lax.scan(one_step, init, (idx, mask, pos), unroll=cfg.unroll)
    return state, diverged, diverged_at, losses


def _epoch(cfg: Config, it: DataIterator, run: RunState, hparams: dict, idx, mask, epoch, tol) -> RunState:
    """One epoch of one run over the given batch indices; a no-op for a stopped run."""
    steps = it.num_batches
    pos = epoch * steps + jnp.arange(steps, dtype=jnp.int32)
    state, diverged, diverged_at, losses = _steps(cfg, it, run, hparams, idx, mask, pos)
    if cfg.log_every == 1:
        sums = jax.lax.dynamic_update_slice(run.loss_sums, losses, ((epoch - run.base) * steps,))
    else:
        sums = run.loss_sums.at[pos // cfg.log_every - run.base * steps // cfg.log_every].add(losses)
    # Once an epoch, every parameter and the full-data loss are checked too (a parameter the loss does
    # not use can go non-finite unseen); failing that, the run returns to the start of the epoch.
    loss = full_loss(cfg, it, state.params)
    bad = ~jnp.isfinite(loss) | ~_all_finite(state.params)
    state = jax.tree.map(lambda x, y: jnp.where(bad, x, y), run.train, state)
    loss = jnp.where(bad, run.last_loss, loss)
    new = run._replace(
        train=state,
        epoch=run.epoch + 1,
        loss_sums=sums,
        epoch_losses=run.epoch_losses.at[epoch - run.base].set(loss),
        last_loss=loss,
        converged=~bad & ~diverged & (loss <= tol),
        diverged=diverged | bad,
        diverged_at=jnp.where(bad & ~diverged, pos[-1], diverged_at),
    )
    return jax.tree.map(lambda a, b: jnp.where(active(run), a, b), new, run)


def active(run: RunState) -> jax.Array:
    """Runs that have neither converged nor diverged (works on host arrays too)."""
    return ~run.converged & ~run.diverged


def train(layout: Layout, inputs: Inputs, run: RunState, epochs: jax.Array) -> RunState:
    """Advance ``run`` until ``epochs`` epochs, the end of the history buffers, or every run stopping.

    With a member axis the loop over epochs stays outside ``vmap`` with one
    shared epoch counter, so with a shared key each epoch's order is drawn
    once and each batch gathered once for all members; members that have
    stopped are carried unchanged until all have.
    """
    cfg, it = layout.cfg, inputs.it
    one = functools.partial(_epoch, cfg, it)
    orders = it.epoch_indices
    if layout.members:
        ax = 0 if layout.keys_batched else None
        one = jax.vmap(one, in_axes=(0, 0, ax, ax, None, None))
        orders = jax.vmap(it.epoch_indices, (0, None)) if layout.keys_batched else orders

    def body(carry: tuple[jax.Array, RunState]) -> tuple[jax.Array, RunState]:
        epoch, run = carry
        idx, mask = orders(inputs.key, epoch)
        return epoch + 1, one(run, inputs.hparams, idx, mask, epoch, inputs.tol)

    def going(carry: tuple[jax.Array, RunState]) -> jax.Array:
        epoch, run = carry
        room = epoch < jnp.max(run.base) + cfg.epoch_capacity  # the history buffers end there
        return (epoch < epochs) & room & jnp.any(active(run))

    return jax.lax.while_loop(going, body, (jnp.max(run.epoch), run))[1]


def _start(layout: Layout, inputs: Inputs) -> RunState:
    one = functools.partial(start, layout.cfg, inputs.it)
    if layout.members:
        one = jax.vmap(one, in_axes=(0 if layout.params_batched else None, 0))
    return one(inputs.params, inputs.hparams)


def _input_specs(layout: Layout) -> Inputs:
    split = lambda batched: P(AXIS) if batched else P()  # noqa: E731
    specs: Any = (P(), split(layout.params_batched), P(AXIS), split(layout.keys_batched), P())
    return Inputs(*specs)  # the same structure, holding a PartitionSpec per input


def start_program(layout: Layout, inputs: Inputs) -> RunState:
    """The starting state of every run of the layout (the program :mod:`gdjax._runner` compiles first)."""
    if layout.mesh is None:
        return _start(layout, inputs)
    return _sharded(layout, _start, (_input_specs(layout),))(inputs)


def train_program(layout: Layout, inputs: Inputs, run: RunState, epochs: jax.Array) -> RunState:
    """:func:`train` for the layout, split over its mesh (the program the runner calls in chunks of epochs)."""
    if layout.mesh is None:
        return train(layout, inputs, run, epochs)
    return _sharded(layout, train, (_input_specs(layout), P(AXIS), P()))(inputs, run, epochs)


def _sharded(layout: Layout, f: Callable[..., RunState], in_specs: tuple) -> Callable[..., RunState]:
    """``f`` split over the layout's mesh: members never communicate; shared inputs stay replicated."""
    body = functools.partial(f, layout)
    return jax.shard_map(body, mesh=layout.mesh, in_specs=in_specs, out_specs=P(AXIS), check_vma=False)
