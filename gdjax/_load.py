"""Reading a run back from its checkpoint folder without the code that trained it.

A checkpoint of ``fit(..., checkpoint=DIR)`` or ``sweep(..., checkpoint=DIR)``
holds the pytree ``(run state, drained history)``; :mod:`gdjax._npz` records
each leaf's path in it, and the checkpoint hook records in the metadata what
else reading needs (the evaluation's column names, ``log_every``, the steps
per epoch, the real member count of a sweep chunk). :func:`load` rebuilds the
parameters, the train state and the history from that alone: no loss,
optimizer or model class. It finds the folder's files and checks what every
checkpoint records with :mod:`gdjax._checkpoint_files`, and rebuilds the
trees from their leaves' paths with :mod:`gdjax._key_paths`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gdjax import _key_paths
from gdjax._checkpoint_files import ANY, CHUNK, checkpoint_files, history_layout, run_metadata
from gdjax._npz import CheckpointError, KeyPath, read
from gdjax._types import PyTree
from gdjax.step import TrainState

# where the parts of the saved tree ``(run state, drained history)`` are
_RUN: KeyPath = (("index", 0),)
_TRAIN: KeyPath = (*_RUN, ("attr", "train"))
_DRAINED: KeyPath = (("index", 1),)


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A run read back from its checkpoint folder by :func:`load`.

    Attributes:
      params: the parameters: nested dicts (dict keys and attribute names)
        and lists (positions) rebuilt from the recorded paths, or the
        structure of ``like``. For a sweep every leaf has a leading member
        axis (padding rows dropped, chunks in order).
      state: the :class:`gdjax.TrainState`: ``params`` as above,
        ``opt_state`` rebuilt from its paths as nested dicts and lists
        (None where it holds no arrays), ``step``, ``model_state`` (None
        without one).
      epoch: the epoch the checkpoint was taken after (a sweep: the latest
        of its members).
      epochs: the epoch each member reached: ``()`` for a fit, ``(M,)`` for
        a sweep.
      history: name -> the evaluation after each epoch of ``history_epochs``
        (``(E,)`` for a fit, ``(M, E)`` for a sweep; NaN where not
        evaluated). The names are the run's (``"loss"``, the metrics,
        ``"eval_loss"``, ...); a name with several values (an aux output)
        has them on a last axis. A checkpoint without names has ``"col0"``,
        ``"col1"``, ...
      history_epochs: ``(E,)``, the epochs ``first_epoch + 1 .. epoch``.
      losses: the mean step loss per window of ``log_every`` steps, as
        :attr:`gdjax.FitResult.losses` (a sweep: ``(M, windows)``, NaN
        after a member stopped).
      first_epoch: the epoch the run started at (0, or that of a run it continued).
      members: a sweep's member indices that were loaded (all of them,
        unless it was interrupted before its last chunks began); None for a fit.
      kind: ``"fit"`` or ``"sweep"``.
      settings: the run settings the checkpoint recorded.
      environment: the versions and backend it was written with.
      files: the checkpoint files read (one per chunk of a sweep).
    """

    params: PyTree
    state: TrainState
    epoch: int
    epochs: np.ndarray
    history: dict[str, np.ndarray]
    history_epochs: np.ndarray
    losses: np.ndarray
    first_epoch: int
    members: np.ndarray | None
    kind: str
    settings: dict[str, Any]
    environment: dict[str, Any]
    files: tuple[Path, ...]


@dataclasses.dataclass
class _Chunk:
    """One checkpoint file, read and checked: a fit's, or one chunk's of a sweep (leading axis: its rows).

    ``leaves`` are ``(path, array)`` under the saved tree's root; ``rows`` the
    evaluation rows ``(rows, epochs, columns)`` from the run's first epoch to
    the checkpoint's, ``losses`` the step-loss window means ``(rows, windows)``
    and ``epochs`` each row's epoch (a fit has one row).
    """

    path: Path
    number: int | None
    leaves: list[tuple[KeyPath, np.ndarray]]
    meta: dict[str, Any]
    layout: dict[str, int]
    run: dict[str, Any]
    names: list[str] = dataclasses.field(default_factory=list)
    rows: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0, 0)))
    losses: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    epochs: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    def under(self, prefix: KeyPath) -> list[tuple[KeyPath, np.ndarray]]:
        """The leaves below ``prefix``, with their paths from there."""
        n = len(prefix)
        return [(p[n:], a) for p, a in self.leaves if p[:n] == prefix]

    def one(self, prefix: KeyPath) -> np.ndarray:
        """The one leaf at ``prefix`` (a CheckpointError where there is none)."""
        found = [a for p, a in self.leaves if p == prefix]
        if len(found) != 1:
            raise CheckpointError(f"checkpoint {self.path} cannot be read (it has no {_key_paths.keystr(prefix)}).")
        return found[0]


def load(folder: str | os.PathLike, *, like: PyTree = None) -> Loaded:
    """Read a run's parameters, state, epoch and history from its checkpoint folder, without training code.

    ``folder`` is what ``gd.fit(..., checkpoint=folder)`` or
    ``gd.sweep(..., checkpoint=folder)`` wrote, finished or interrupted.
    The newest readable checkpoint is read (of each chunk of a sweep); a
    damaged one is skipped with a RuntimeWarning, as when a run resumes
    (but left in place: loading changes nothing in the folder), and the one
    before it is read.

    Args:
      folder: the checkpoint folder.
      like: optional, the parameters (or a model) the run started from:
        ``params`` is then rebuilt in its structure, its trained leaves (the
        float arrays) replaced by the stored ones in order and its other
        leaves (an Equinox model's activation functions, say) kept. For a
        sweep, ``like`` is one member's; the stored leaves keep their
        member axis.

    Returns:
      A :class:`Loaded`.

    Raises:
      FileNotFoundError: ``folder`` does not exist, or holds no checkpoints.
      ValueError: ``folder`` is a file; its checkpoints are of different
        runs or predate ``load``; or ``like``'s trained leaves differ in
        number, place or shape from the stored ones.
      CheckpointError: every checkpoint (of some chunk) is damaged.

    Example:
      >>> import tempfile, jax, numpy as np, optax, gdjax as gd
      >>> prob = gd.problems.linear_regression(n=64, d=3, key=jax.random.key(0))
      >>> model, folder = gd.models.linear(), tempfile.mkdtemp()
      >>> res = gd.fit(model.loss, model.init(None, 3), optax.sgd, gd.minibatch(prob.data, 16),
      ...              epochs=3, key=jax.random.key(1), learning_rate=0.1, checkpoint=folder)
      >>> run = gd.checkpoint.load(folder)  # no loss, no optimizer, no model needed
      >>> run.kind, run.epoch, sorted(run.params)
      ('fit', 3, ['b', 'w'])
      >>> all(np.array_equal(run.params[k], res.params[k]) for k in res.params)
      True
      >>> np.array_equal(run.history["loss"], res.epoch_losses), run.history_epochs.tolist()
      (True, [1, 2, 3])
    """
    chunks = _newest(_folder(folder))
    settings = chunks[0].meta["settings"]
    if any(c.meta["settings"] != settings for c in chunks):
        raise ValueError(
            f"checkpoint folder {str(folder)!r} holds checkpoints of different runs (their settings differ); "
            f"load reads one run's."
        )
    sweep = chunks[0].number is not None
    if any((c.number is not None) != sweep for c in chunks):
        raise ValueError(f"checkpoint folder {str(folder)!r} holds both a fit's and a sweep's checkpoints.")
    return _sweep(chunks, like) if sweep else _fit(chunks[0], like)


def _folder(folder: str | os.PathLike) -> Path:
    path = Path(folder)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint folder {str(folder)!r} does not exist.")
    if not path.is_dir():
        raise ValueError(f"checkpoint={str(folder)!r} is a file; give the folder that fit or sweep wrote.")
    return path


def _newest(folder: Path) -> list[_Chunk]:
    """The newest readable checkpoint of each series in ``folder`` (a fit's, or each sweep chunk's), in order."""
    series: dict[str, list[tuple[int, Path]]] = {}
    for epoch, path in checkpoint_files(folder, ANY):
        series.setdefault(path.name[: -len("epoch-00000000.npz")], []).append((epoch, path))
    if not series:
        raise FileNotFoundError(
            f"checkpoint folder {str(folder)!r} holds no checkpoints (files named epoch-*.npz or "
            f"chunk-*-epoch-*.npz, written by gd.fit or gd.sweep with checkpoint=)."
        )
    out = []
    for prefix in sorted(series):
        errors = []
        for epoch, path in reversed(series[prefix]):
            try:
                out.append(_read(path, epoch, prefix))
                break
            except CheckpointError as exc:
                errors.append(exc)
                warnings.warn(
                    f"checkpoint {path} is damaged and was skipped ({str(exc).split('; delete it')[0]}); "
                    f"the one before it is read, if any.",
                    RuntimeWarning,
                    stacklevel=3,
                )
        else:
            which = f"chunk {prefix[6:11]}'s" if prefix else "the"
            raise CheckpointError(
                f"every one of {which} {len(errors)} checkpoint(s) in {str(folder)!r} is damaged (the newest: "
                f"{str(errors[0]).split('; delete it')[0]})."
            )
    return out


def _read(path: Path, epoch: int, prefix: str) -> _Chunk:
    """One checkpoint file, checked (a CheckpointError where it is damaged or inconsistent)."""
    leaves, paths, meta = read(path)
    meta = run_metadata(path, epoch, meta)
    layout = history_layout(meta)
    run = meta.get("run")
    if paths is None or not isinstance(run, dict):
        raise ValueError(
            f"checkpoint {path} was written by an earlier gdjax, which did not record what load needs (the "
            f"leaves' paths, the run's layout). Read it with gdjax.checkpoint.restore and a template, or resume "
            f"the run with this gdjax to write a new one."
        )
    match = CHUNK.fullmatch(prefix)
    number = int(match.group(1)) if match else None
    checks = {
        "log_every": lambda v: type(v) is int and v > 0,
        "steps_per_epoch": lambda v: type(v) is int and v > 0,
        "members": lambda v: type(v) is int and v > 0,
        "columns": lambda v: v is None or (isinstance(v, list) and all(isinstance(c, str) for c in v)),
    }
    bad = [k for k, ok in checks.items() if not ok(run.get(k))]
    if bad or run.get("chunk") != number:
        raise CheckpointError(f"checkpoint {path} cannot be read (its run layout {bad or ['chunk']} is wrong).")
    c = _Chunk(path, number, list(zip(paths, leaves, strict=True)), meta, layout, run)
    rows, sums = _history(c, epoch)
    epochs = np.asarray(c.one((*_RUN, ("attr", "epoch"))), np.int64)
    diverged_at = np.asarray(c.one((*_RUN, ("attr", "diverged_at"))), np.int64)
    if number is None:  # a fit: one row
        rows, sums, epochs, diverged_at = rows[None], sums[None], epochs[None], diverged_at[None]
    if (
        epochs.ndim != 1
        or rows.shape[0] != len(epochs)
        or sums.shape[0] != len(epochs)
        or diverged_at.shape != epochs.shape
    ):
        raise CheckpointError(f"checkpoint {path} cannot be read (its members' arrays disagree).")
    c.names, c.rows, c.epochs = _names(c, rows.shape[-1]), rows, epochs
    c.losses = _losses(c, sums, epochs, diverged_at)
    return c


def _history(c: _Chunk, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, windows)``: the chunk's evaluation rows ``(members, E, columns)`` and step-loss window sums.

    The history of a run is its drained segments (``first`` to ``base``)
    followed by its buffers (from ``base`` on), as the runner joins them.
    """
    first, base = c.layout["first"], c.layout["base"]
    drained, buffer = c.one((*_DRAINED, ("dict", "evals"))), c.one((*_RUN, ("attr", "evals")))
    if drained.ndim != buffer.ndim or drained.shape[-1] != base - first or not 0 <= epoch - base <= buffer.shape[-1]:
        raise CheckpointError(f"checkpoint {c.path} cannot be read (its history disagrees with its layout).")
    evals = np.concatenate([drained, buffer[..., : epoch - base]], -1)
    sums = np.concatenate([c.one((*_DRAINED, ("dict", "loss_sums"))), c.one((*_RUN, ("attr", "loss_sums")))], -1)
    return np.swapaxes(evals, -1, -2), sums


def _losses(c: _Chunk, sums: np.ndarray, epochs: np.ndarray, diverged_at: np.ndarray) -> np.ndarray:
    """``(members, windows)``: each member's mean step loss per window of ``log_every`` steps (NaN after it stopped).

    As :func:`gdjax._history.histories`: a member went through its epochs'
    step positions, or up to and including the step rejected as divergent.
    """
    steps, every, first = c.run["steps_per_epoch"], c.run["log_every"], c.layout["first"]
    positions = [
        (min(int(d) + 1, int(e) * steps) if d >= 0 else int(e) * steps) - first * steps
        for e, d in zip(epochs, diverged_at, strict=True)
    ]
    counts = [-(-max(p, 0) // every) for p in positions]
    if max(counts, default=0) > sums.shape[-1]:
        raise CheckpointError(f"checkpoint {c.path} cannot be read (its loss history is shorter than its epochs).")
    out = np.full((len(positions), max(counts, default=0)), np.nan, np.result_type(sums.dtype, np.float32))
    for m, (p, n) in enumerate(zip(positions, counts, strict=True)):
        sizes = np.minimum(every, p - every * np.arange(n))
        out[m, :n] = sums[m, :n] / sizes
    return out


def _names(c: _Chunk, width: int) -> list[str]:
    columns = c.run["columns"]
    if columns is None:
        return [f"col{i}" for i in range(width)]
    if len(columns) != width:
        raise CheckpointError(f"checkpoint {c.path}: {len(columns)} column names for {width} columns.")
    return columns


def _split(names: Sequence[str], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Rows ``(..., columns)`` as ``name -> (...)``, a name of several columns as ``(..., count)``."""
    out = {}
    for name in dict.fromkeys(names):
        at = [i for i, n in enumerate(names) if n == name]
        out[name] = rows[..., at[0]] if len(at) == 1 else rows[..., at]
    return out


def _fit(c: _Chunk, like: PyTree) -> Loaded:
    epoch, first = c.meta["epoch"], c.layout["first"]
    train = _train([c.under(_TRAIN)], like, members=False)
    return Loaded(
        params=train.params,
        state=train,
        epoch=epoch,
        epochs=c.epochs[0],
        history={k: v[0] for k, v in _split(c.names, c.rows).items()},
        history_epochs=np.arange(first + 1, epoch + 1, dtype=np.int64),
        losses=c.losses[0],
        first_epoch=first,
        members=None,
        kind="fit",
        settings=c.meta["settings"],
        environment=c.meta.get("environment", {}),
        files=(c.path,),
    )


def _sweep(chunks: list[_Chunk], like: PyTree) -> Loaded:
    firsts = {c.layout["first"] for c in chunks}
    sizes = {len(c.epochs) for c in chunks}
    if len(firsts) != 1 or len(sizes) != 1 or len({tuple(c.names) for c in chunks}) != 1:
        raise ValueError(f"the chunks of the sweep in {str(chunks[0].path.parent)!r} are not of one run.")
    first, size = firsts.pop(), sizes.pop()
    epoch = max(c.meta["epoch"] for c in chunks)
    real = [min(c.run["members"], size) for c in chunks]

    def joined(parts: list[np.ndarray]) -> np.ndarray:
        """Each chunk's real rows, padded with NaN along axis 1 to the longest, one after the other."""
        width = max(x.shape[1] for x in parts)
        pads = [[(0, 0), (0, width - x.shape[1])] + [(0, 0)] * (x.ndim - 2) for x in parts]
        return np.concatenate(
            [np.pad(x[:n], pad, constant_values=np.nan) for x, n, pad in zip(parts, real, pads, strict=True)]
        )

    train = _train([c.under(_TRAIN) for c in chunks], like, members=True, real=real)
    return Loaded(
        params=train.params,
        state=train,
        epoch=epoch,
        epochs=np.concatenate([c.epochs[:n] for c, n in zip(chunks, real, strict=True)]),
        history=_split(chunks[0].names, joined([c.rows for c in chunks])),
        history_epochs=np.arange(first + 1, epoch + 1, dtype=np.int64),
        losses=joined([c.losses for c in chunks]),
        first_epoch=first,
        members=np.concatenate([(c.number or 0) * size + np.arange(n) for c, n in zip(chunks, real, strict=True)]),
        kind="sweep",
        settings=chunks[0].meta["settings"],
        environment=chunks[0].meta.get("environment", {}),
        files=tuple(c.path for c in chunks),
    )


def _train(
    parts: list[list[tuple[KeyPath, np.ndarray]]], like: PyTree, *, members: bool, real: Sequence[int] = ()
) -> TrainState:
    """The train state from the leaves under ``train`` of each chunk (a sweep's joined along the member axis)."""
    if members:
        keys = [[p for p, _ in part] for part in parts]
        if any(k != keys[0] for k in keys):
            raise ValueError("the chunks of the sweep hold different structures; they are not of one run.")
        leaves = [
            (p, np.concatenate([part[i][1][:n] for part, n in zip(parts, real, strict=True)]))
            for i, (p, _) in enumerate(parts[0])
        ]
    else:
        leaves = parts[0]
    field = lambda name: [(p[1:], _key_paths.array(a)) for p, a in leaves if p[:1] == (("attr", name),)]  # noqa: E731
    params = field("params")
    step = [a for p, a in field("step") if p == ()]
    if not params or len(step) != 1:
        raise ValueError("the checkpoint holds no parameters or step: it is not of a gdjax run.")
    return TrainState(
        params=_key_paths.build(params) if like is None else _key_paths.like(like, params, members),
        opt_state=_key_paths.build(field("opt_state")),
        step=step[0],
        model_state=_key_paths.build(field("model_state")),
    )
