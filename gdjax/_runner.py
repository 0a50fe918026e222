"""The host driver: compiles the programs of :mod:`gdjax._program` once and runs them in chunks of epochs.

:func:`run` takes one :class:`~gdjax._program.Layout` and its
:class:`~gdjax._program.Inputs` (a fit, or one chunk of a sweep's members),
makes the starting state, lets each :class:`Hook` replace it (a checkpoint
restores), then calls the training program up to the next epoch that some
hook or the history buffers ask to stop at, computes a :class:`Status` once
per chunk and hands it to every hook (the progress bar redraws, the
checkpoint saves). Without hooks a run is one call of one program.

Compiled programs are cached per layout and argument shapes in a bounded
cache (:mod:`gdjax._caches`), each with the time one of its epochs took, so a
progress bar sizes its first chunk from the last run of the same program.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gdjax._caches import BoundedCache
from gdjax._program import (
    EPOCH_FIELDS,
    WINDOW_FIELDS,
    Inputs,
    Layout,
    RunState,
    active,
    start_program,
    train_program,
)
from gdjax._types import PyTree


class Status(NamedTuple):
    """Where a run stands after a chunk of epochs, as the hooks see it.

    Attributes:
      epochs_done: epochs the (shared) epoch loop has run.
      epochs: epochs asked for.
      running: real members still training (padding excluded).
      diverged: real members that diverged.
      members: real members (1 for a fit).
    """

    epochs_done: int
    epochs: int
    running: int
    diverged: int
    members: int

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.epochs or self.running == 0


class Hook:
    """Something the runner calls around a run: override what you need (each default does nothing)."""

    def start(self, run: RunState, history: HostHistory) -> RunState:
        """Called once before training; may return another starting state (a restored checkpoint)."""
        return run

    def stop_at(self, status: Status, seconds_per_epoch: float | None) -> int | None:
        """The epoch the next chunk should end at (None: no wish)."""
        return None

    def after(self, run: RunState, history: HostHistory, status: Status) -> None:
        """Called after every chunk of epochs."""

    def close(self, status: Status) -> None:
        """Called once when the run has finished."""


@dataclasses.dataclass
class Compiled:
    """A compiled program, and the seconds one of its epochs took when last run (None before)."""

    program: Callable[..., Any]
    seconds_per_epoch: float | None = None


_COMPILED: BoundedCache[Compiled] = BoundedCache("compiled programs", 64)


def signature(tree: PyTree) -> Any:
    """A hashable description of a pytree's structure, shapes, dtypes and shardings."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((jax.typeof(x), getattr(x, "sharding", None)) for x in leaves)


def compiled(fn: Callable[..., Any], layout: Layout, *args: Any) -> tuple[Compiled, float]:
    """The compiled ``fn(layout, *args)`` for these argument shapes, and the seconds spent compiling it now.

    ``jax.jit`` would also cache, but asking it for the executable retraces
    the program on every call (milliseconds); this cache costs a look-up.
    """
    sig = (fn, layout, signature(args))
    entry = _COMPILED.get(sig)
    if entry is not None:
        return entry, 0.0
    t0 = time.perf_counter()
    entry = Compiled(jax.jit(fn, static_argnums=0).lower(layout, *args).compile())
    _COMPILED.put(sig, entry)
    return entry, time.perf_counter() - t0


class Outcome(NamedTuple):
    """What :func:`run` returns: the final state (whole history on the host if it was drained) and timings."""

    run: RunState
    compile_time: float
    run_time: float
    resumed_from: int


def run(layout: Layout, inputs: Inputs, epochs: int, *, members: int = 1, hooks: Sequence[Hook] = ()) -> Outcome:
    """Compile (once), start and train one layout's runs to ``epochs`` epochs.

    Args:
      layout: how the runs are laid out (one, or a member axis on a mesh).
      inputs: the traced inputs, already placed on the devices.
      epochs: epochs to train (at most: runs stop on ``tol`` or divergence).
      members: real members (a padded sweep chunk has more rows).
      hooks: called around the run (progress, checkpoints).
    """
    history = HostHistory(layout.cfg.epoch_capacity, inputs.it.num_batches, layout.cfg.log_every)
    start, compile_time = compiled(start_program, layout, inputs)
    t0 = time.perf_counter()
    state = jax.block_until_ready(start.program(inputs))
    for hook in hooks:
        state = hook.start(state, history)
    resumed = int(np.max(jax.device_get(state.epoch))) if hooks else 0  # only a hook can restore
    start_time = time.perf_counter() - t0
    bound = _scalar(layout, epochs)
    train, seconds = compiled(train_program, layout, inputs, state, bound)
    t0 = time.perf_counter()
    state = _drive(layout, inputs, train, state, epochs, members, history, hooks)
    return Outcome(history.join(state), compile_time + seconds, start_time + time.perf_counter() - t0, resumed)


def _drive(
    layout: Layout,
    inputs: Inputs,
    train: Compiled,
    state: RunState,
    epochs: int,
    members: int,
    history: HostHistory,
    hooks: Sequence[Hook],
) -> RunState:
    """Call the training program chunk by chunk until the run has finished."""
    status = _status(state, epochs, members) if hooks else Status(0, epochs, members, 0, members)
    while not status.finished:
        wishes = [hook.stop_at(status, train.seconds_per_epoch) for hook in hooks]
        target = min([epochs, history.limit(), *(w for w in wishes if w is not None)])
        t0 = time.perf_counter()
        state = jax.block_until_ready(train.program(inputs, state, _scalar(layout, target)))
        seconds = time.perf_counter() - t0
        if not hooks and target == epochs < history.limit():
            return state  # one call did it all: no status to compute
        ran = -status.epochs_done
        status = _status(state, epochs, members)
        ran += status.epochs_done
        if status.epochs_done == history.limit():
            state = history.drain(state)
        if ran > 0:
            train.seconds_per_epoch = seconds / ran
        for hook in hooks:
            hook.after(state, history, status)
    for hook in hooks:
        hook.close(status)
    return state


def _status(state: RunState, epochs: int, members: int) -> Status:
    epoch, running, diverged = jax.device_get((state.epoch, active(state), state.diverged))
    real = slice(0, members)  # padding copies of a member are not counted
    running, diverged = np.atleast_1d(running)[real], np.atleast_1d(diverged)[real]
    return Status(int(np.max(epoch)), epochs, int(running.sum()), int(diverged.sum()), members)


def _scalar(layout: Layout, value: int) -> jax.Array:
    """An int32 scalar where the layout's programs expect it (replicated over a mesh)."""
    x = jnp.asarray(value, jnp.int32)
    return jax.device_put(x, NamedSharding(layout.mesh, P())) if layout.mesh is not None else x


class HostHistory:
    """The history a long run has moved off the device, one segment of ``capacity`` epochs at a time.

    The program's buffers (:data:`gdjax._program.WINDOW_FIELDS`, indexed by
    logged window, and :data:`~gdjax._program.EPOCH_FIELDS`, by epoch) hold
    the history from epoch ``base`` on; when the run reaches ``base +
    capacity`` epochs, :meth:`drain` copies them here and empties them, so
    the program's memory stays bounded whatever ``epochs`` is, and the host
    holds only the epochs that ran.
    """

    def __init__(self, capacity: int, steps_per_epoch: int, log_every: int) -> None:
        self.capacity, self.steps, self.log_every = capacity, steps_per_epoch, log_every
        self.parts: dict[str, list[np.ndarray]] = {name: [] for name in WINDOW_FIELDS + EPOCH_FIELDS}
        self.base = 0

    def limit(self) -> int:
        """The epoch at which the program's history buffers are full."""
        return self.base + self.capacity

    def _window(self, epoch: int) -> int:
        return epoch * self.steps // self.log_every

    def drain(self, state: RunState) -> RunState:
        """Move the full segment's history to the host; the window a segment ends inside is carried on."""
        epoch = self.limit()
        done = self._window(epoch) - self._window(self.base)
        put = lambda new, old: jax.device_put(new, old.sharding)  # noqa: E731
        fresh: dict[str, Any] = {}
        for name in WINDOW_FIELDS:
            sums = np.asarray(getattr(state, name))
            self.parts[name].append(sums[..., :done])
            empty = np.zeros_like(sums)
            if done < sums.shape[-1]:
                empty[..., 0] = sums[..., done]  # the window the segment ended inside (0 if none)
            fresh[name] = put(empty, getattr(state, name))
        for name in EPOCH_FIELDS:
            values = np.asarray(getattr(state, name))
            self.parts[name].append(values)
            fresh[name] = put(np.full_like(values, np.nan), getattr(state, name))
        self.base = epoch
        return state._replace(base=put(np.full_like(np.asarray(state.base), epoch), state.base), **fresh)

    def drained(self, state: RunState) -> dict[str, np.ndarray]:
        """The history on the host so far, one array per buffer (what a checkpoint stores beside the run)."""
        out = {}
        for name, parts in self.parts.items():
            like = getattr(state, name)
            out[name] = np.concatenate(parts, -1) if parts else np.zeros((*np.shape(like)[:-1], 0), like.dtype)
        return out

    def template(self, state: RunState, epoch: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The shapes :meth:`drained` had when a checkpoint of ``epoch`` epochs was saved."""
        base = epoch // self.capacity * self.capacity
        out = {}
        for name in self.parts:
            like = getattr(state, name)
            width = self._window(base) if name in WINDOW_FIELDS else base
            out[name] = jax.ShapeDtypeStruct((*np.shape(like)[:-1], width), like.dtype)
        return out

    def restore(self, state: RunState, drained: dict[str, Any]) -> RunState:
        """Take back the host history saved with a checkpoint; returns the run."""
        epochs = np.shape(drained[EPOCH_FIELDS[0]])[-1]
        self.parts = {name: [np.asarray(drained[name])] if epochs else [] for name in self.parts}
        self.base = int(np.max(np.asarray(state.base)))
        return state

    def join(self, state: RunState) -> RunState:
        """The run with its whole history (host segments, then the program's buffers) as numpy arrays."""
        if not self.parts[EPOCH_FIELDS[0]]:
            return state
        done = self.drained(state)
        joined: dict[str, Any] = {
            name: np.concatenate([done[name], np.asarray(getattr(state, name))], -1) for name in done
        }
        return state._replace(**joined)


def join(outcomes: Sequence[tuple[RunState, int]]) -> RunState:
    """Join chunks of members (each with its real member count) into one run on the host.

    Padding rows are dropped; chunks that stopped early drained fewer history
    segments, so histories are padded to the longest (zeros and NaN, never read).
    """
    fills = {**dict.fromkeys(WINDOW_FIELDS, 0.0), **dict.fromkeys(EPOCH_FIELDS, np.nan)}
    widths = {name: max(np.shape(getattr(r, name))[-1] for r, _ in outcomes) for name in fills}

    def host(state: RunState, n: int) -> RunState:
        state = jax.tree.map(lambda x: np.asarray(x)[:n], state)
        pad = lambda x, w, fill: np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, w - x.shape[-1])], constant_values=fill)  # noqa: E731
        padded: dict[str, Any] = {name: pad(getattr(state, name), widths[name], fill) for name, fill in fills.items()}
        return state._replace(**padded)

    parts = [host(state, n) for state, n in outcomes]
    joined = jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
    return joined._replace(train=joined.train._replace(params=jax.device_put(joined.train.params)))
