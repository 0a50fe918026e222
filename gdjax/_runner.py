"""The host driver: compiles the programs of :mod:`gdjax._program` once and runs them in chunks of epochs.

:func:`run` takes one :class:`~gdjax._run.Layout` and its
:class:`~gdjax._run.Inputs` (a fit, or one chunk of a sweep's members),
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

from gdjax import _distributed, _stream
from gdjax._caches import BoundedCache
from gdjax._program import active, start_program, train_program
from gdjax._run import EPOCH_FIELDS, WINDOW_FIELDS, Inputs, Layout, RunState
from gdjax._run import windows as _windows
from gdjax._types import PyTree


class Status(NamedTuple):
    """Where a run stands after a chunk of epochs, as the hooks see it.

    Attributes:
      epochs_done: epochs the (shared) epoch loop has run.
      epochs: epochs asked for.
      running: real members still training (padding excluded).
      diverged: real members that diverged.
      members: real members (1 for a fit).
      first: the epoch the run started at (0, or that of the run it continues).
    """

    epochs_done: int
    epochs: int
    running: int
    diverged: int
    members: int
    first: int = 0

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


def run(
    layout: Layout, inputs: Inputs, epochs: int, *, first: int = 0, members: int = 1, hooks: Sequence[Hook] = ()
) -> Outcome:
    """Compile (once), start and train one layout's runs to epoch ``epochs``.

    Args:
      layout: how the runs are laid out (one, or a member axis on a mesh).
      inputs: the traced inputs, already placed on the devices.
      epochs: the epoch to train to (at most: runs stop on ``tol`` or divergence).
      first: the epoch the runs start at (that of the state they continue).
      members: real members (a padded sweep chunk has more rows).
      hooks: called around the run (progress, checkpoints).
    """
    readers = _stream.readers(inputs)
    try:
        return _run(layout, inputs, epochs, first, members, hooks, readers)
    except (jax.errors.JaxRuntimeError, ValueError) as exc:
        if not (_spans(layout) and _distributed.is_lost(exc)):
            raise
        raise _distributed.lost(exc) from exc
    finally:
        for reader in readers:
            reader.close()  # let the read-ahead thread go


def _run(
    layout: Layout,
    inputs: Inputs,
    epochs: int,
    first: int,
    members: int,
    hooks: Sequence[Hook],
    readers: list[_stream.Reader],
) -> Outcome:
    history = HostHistory(layout.cfg.epoch_capacity, inputs.it.num_batches, layout.cfg.log_every, first)
    start, compile_time = compiled(start_program, layout, inputs)
    t0 = time.perf_counter()
    state = _stream.wait(lambda: start.program(inputs), readers)
    for hook in hooks:
        state = hook.start(state, history)
    if hooks and _spans(layout):  # every process restored from its view of the folder: it must be the same one
        mine = max(int(np.max(np.asarray(s.data))) for s in state.epoch.addressable_shards)
        _distributed.check_same(
            mine,
            "the epoch of the newest checkpoint",
            "every process must see the same checkpoint folder (a file system they share); delete it to start again.",
        )
    resumed = int(np.max(_distributed.to_host(state.epoch))) if hooks else first  # only a hook can restore
    if resumed > epochs:
        raise ValueError(
            f"the checkpoint holds this run at epoch {resumed}, past the {epochs} asked for: pass epochs={resumed} "
            f"or more to go on from it (only epochs may differ), or use another folder."
        )
    start_time = time.perf_counter() - t0
    bound = _scalar(layout, epochs)
    train, seconds = compiled(train_program, layout, inputs, state, bound)
    t0 = time.perf_counter()
    state = _drive(layout, inputs, train, state, epochs, members, history, hooks, readers)
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
    readers: list[_stream.Reader],
) -> RunState:
    """Call the training program chunk by chunk until the run has finished."""
    first = history.first
    status = _status(state, epochs, members, first) if hooks else Status(first, epochs, members, 0, members, first)
    while not status.finished:
        wishes = [hook.stop_at(status, train.seconds_per_epoch) for hook in hooks]
        target = min([epochs, history.limit(), *(w for w in wishes if w is not None)])
        if hooks and _spans(layout):  # the processes call the program (and gather) alike: process 0's timing rules
            target = _distributed.from_first(target)
        t0 = time.perf_counter()
        bound = _scalar(layout, target)
        state = _stream.wait(lambda: train.program(inputs, state, bound), readers)  # noqa: B023 (called at once)
        seconds = time.perf_counter() - t0
        if not hooks and target == epochs < history.limit():
            return state  # one call did it all: no status to compute
        ran = -status.epochs_done
        status = _status(state, epochs, members, first)
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


def _spans(layout: Layout) -> bool:
    """Whether the layout's devices belong to several processes (each runs this driver in step with the others)."""
    return layout.mesh is not None and _distributed.spans(list(layout.mesh.devices.flat))


def _status(state: RunState, epochs: int, members: int, first: int) -> Status:
    epoch, running, diverged = _distributed.to_host((state.epoch, active(state), state.diverged))
    real = slice(0, members)  # padding copies of a member are not counted
    running, diverged = np.atleast_1d(running)[real], np.atleast_1d(diverged)[real]
    return Status(int(np.max(epoch)), epochs, int(running.sum()), int(diverged.sum()), members, first)


def _scalar(layout: Layout, value: int) -> jax.Array:
    """An int32 scalar where the layout's programs expect it (replicated over a mesh)."""
    x = jnp.asarray(value, jnp.int32)
    return _distributed.put(x, NamedSharding(layout.mesh, P())) if layout.mesh is not None else x


class HostHistory:
    """The history a long run has moved off the device, one segment of ``capacity`` epochs at a time.

    The program's buffers (:data:`gdjax._program.WINDOW_FIELDS`, indexed by
    logged window, and :data:`~gdjax._program.EPOCH_FIELDS`, by epoch) hold
    the history from epoch ``base`` on; when the run reaches ``base +
    capacity`` epochs, :meth:`drain` copies them here and empties them, so
    the program's memory stays bounded whatever ``epochs`` is, and the host
    holds only the epochs that ran. Windows are counted from the epoch the
    run started at (``first``).
    """

    def __init__(self, capacity: int, steps_per_epoch: int, log_every: int, first: int = 0) -> None:
        self.capacity, self.steps, self.log_every = capacity, steps_per_epoch, log_every
        self.parts: dict[str, list[np.ndarray]] = {name: [] for name in WINDOW_FIELDS + EPOCH_FIELDS}
        self.base = self.first = first

    def limit(self) -> int:
        """The epoch at which the program's history buffers are full."""
        return self.base + self.capacity

    def _window(self, epoch: int) -> int:
        return (epoch - self.first) * self.steps // self.log_every

    def drain(self, state: RunState, epoch: int | None = None, like: RunState | None = None) -> RunState:
        """Move the history up to ``epoch`` (default: the full segment's) to the host.

        The window a segment ends inside is carried on. ``like`` gives the
        buffers' new shapes and placement (a program of another capacity);
        by default they keep theirs.
        """
        epoch = self.limit() if epoch is None else epoch
        like = state if like is None else like
        done = self._window(epoch) - self._window(self.base)
        put = lambda new, old: _distributed.put(new, old.sharding) if hasattr(old, "sharding") else new  # noqa: E731
        fresh: dict[str, Any] = {}
        buffers = _distributed.to_host({name: getattr(state, name) for name in WINDOW_FIELDS + EPOCH_FIELDS})
        for name in WINDOW_FIELDS:
            sums = np.asarray(buffers[name])
            self.parts[name].append(sums[..., :done])
            empty = np.zeros(np.shape(getattr(like, name)), sums.dtype)
            if done < sums.shape[-1]:
                empty[..., 0] = sums[..., done]  # the window the segment ended inside (0 if none)
            fresh[name] = put(empty, getattr(like, name))
        for name in EPOCH_FIELDS:
            values = np.asarray(buffers[name])
            self.parts[name].append(values[..., : epoch - self.base])
            fresh[name] = put(np.full(np.shape(getattr(like, name)), np.nan, values.dtype), getattr(like, name))
        self.base = epoch
        self.capacity = np.shape(getattr(like, EPOCH_FIELDS[0]))[-1]
        base = np.full(np.shape(state.base), epoch, np.asarray(_distributed.to_host(state.base)).dtype)
        return state._replace(base=put(base, like.base), **fresh)

    def drained(self, state: RunState) -> dict[str, np.ndarray]:
        """The history on the host so far, one array per buffer (what a checkpoint stores beside the run)."""
        out = {}
        for name, parts in self.parts.items():
            like = getattr(state, name)
            out[name] = np.concatenate(parts, -1) if parts else np.zeros((*np.shape(like)[:-1], 0), like.dtype)
        return out

    def layout(self) -> dict[str, int]:
        """What a checkpoint records to read its history back: the segment's base, the capacity, the first epoch."""
        return {"base": self.base, "capacity": self.capacity, "first": self.first}

    def template(self, state: RunState, saved: dict[str, int]) -> tuple[RunState, dict[str, jax.ShapeDtypeStruct]]:
        """The shapes of the run and the drained history a checkpoint with history layout ``saved`` holds."""
        windows = lambda cap: _windows(cap, self.steps, self.log_every)  # noqa: E731
        first, base, cap = saved["first"], saved["base"], saved["capacity"]
        run: dict[str, Any] = {}
        drained = {}
        for name in self.parts:
            like = getattr(state, name)
            shape = np.shape(like)[:-1]
            width = windows(cap) if name in WINDOW_FIELDS else cap
            run[name] = jax.ShapeDtypeStruct((*shape, width), like.dtype, sharding=getattr(like, "sharding", None))
            done = (base - first) * self.steps // self.log_every if name in WINDOW_FIELDS else base - first
            drained[name] = jax.ShapeDtypeStruct((*shape, done), like.dtype)
        return state._replace(**run), drained

    def restore(self, state: RunState, drained: dict[str, Any], saved: dict[str, int], like: RunState) -> RunState:
        """Take back the run and host history saved with a checkpoint (history layout ``saved``).

        A checkpoint of a program with another capacity (another ``epochs``)
        has its buffers moved to the host, and the run gets buffers shaped
        like ``like``'s.
        """
        epochs = np.shape(drained[EPOCH_FIELDS[0]])[-1]
        self.parts = {name: [np.asarray(drained[name])] if epochs else [] for name in self.parts}
        self.first, self.base, self.capacity = saved["first"], saved["base"], saved["capacity"]
        if np.shape(getattr(state, EPOCH_FIELDS[0])) == np.shape(getattr(like, EPOCH_FIELDS[0])):
            return state
        return self.drain(state, int(np.max(_distributed.to_host(state.epoch))), like)

    def join(self, state: RunState) -> RunState:
        """The run with its whole history (host segments, then the program's buffers) as numpy arrays."""
        if not self.parts[EPOCH_FIELDS[0]]:
            return state
        done = self.drained(state)
        now = _distributed.to_host({name: getattr(state, name) for name in done})
        joined: dict[str, Any] = {name: np.concatenate([done[name], np.asarray(now[name])], -1) for name in done}
        return state._replace(**joined)


def join(outcomes: Sequence[tuple[RunState, int]]) -> RunState:
    """Join chunks of members (each with its real member count) into one run on the host.

    Padding rows are dropped; chunks that stopped early drained fewer history
    segments, so histories are padded to the longest (zeros and NaN, never read).
    """
    fills = {**dict.fromkeys(WINDOW_FIELDS, 0.0), **dict.fromkeys(EPOCH_FIELDS, np.nan)}
    widths = {name: max(np.shape(getattr(r, name))[-1] for r, _ in outcomes) for name in fills}

    def host(state: RunState, n: int) -> RunState:
        state = jax.tree.map(lambda x: np.asarray(x)[:n], _distributed.to_host(state))
        pad = lambda x, w, fill: np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, w - x.shape[-1])], constant_values=fill)  # noqa: E731
        padded: dict[str, Any] = {name: pad(getattr(state, name), widths[name], fill) for name, fill in fills.items()}
        return state._replace(**padded)

    parts = [host(state, n) for state, n in outcomes]
    joined = jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
    return joined._replace(train=joined.train._replace(params=jax.device_put(joined.train.params)))
