"""What ``fit`` and ``sweep`` return, built by one function over a member axis.

:func:`histories` turns the run states of ``M`` members (the program's loss
sums, epoch losses and flags, on the host) into per-member arrays; a
:class:`SweepResult` holds them as they are and a :class:`FitResult` is the
one-member view. Text views of a sweep (``summary``, ``to_rows``) are made
by :mod:`gdjax.cli.report`, beside the command line that prints them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np

from gdjax._program import Config, RunState
from gdjax._types import PyTree, ceil_div
from gdjax.data import DataIterator
from gdjax.step import TrainState

__all__ = ["FitResult", "SweepResult"]


class Histories(NamedTuple):
    """Per-member arrays of a finished run (leading axis ``M``)."""

    losses: np.ndarray
    epoch_losses: np.ndarray
    initial_loss: np.ndarray
    final_loss: np.ndarray
    diverged: np.ndarray
    diverged_at: np.ndarray
    converged: np.ndarray
    num_steps: np.ndarray
    num_epochs: np.ndarray


def stop_position(run_epoch: int, diverged_at: int, steps_per_epoch: int) -> int:
    """Step positions a run went through (including a rejected one)."""
    if diverged_at >= 0:
        return min(diverged_at + 1, run_epoch * steps_per_epoch)
    return run_epoch * steps_per_epoch


def window_means(sums: np.ndarray, positions: int, log_every: int) -> np.ndarray:
    """Turn window sums over ``positions`` step positions into window means."""
    count = ceil_div(positions, log_every)
    sizes = np.minimum(log_every, positions - log_every * np.arange(count))
    return sums[..., :count] / sizes


def histories(cfg: Config, steps_per_epoch: int, run: RunState, *, members: bool = True) -> Histories:
    """The per-member histories of ``run`` (``members=False``: a run without a member axis, as one member)."""
    fields, step = jax.device_get((tuple(run)[1:], run.train.step))  # one transfer; the params stay where they are
    if not members:
        fields, step = jax.tree.map(lambda x: np.asarray(x)[None], (fields, step))
    host = RunState(run.train._replace(step=step), *fields)
    num_epochs = np.asarray(host.epoch, np.int64)
    diverged_at = np.asarray(host.diverged_at, np.int64)
    positions = [stop_position(int(e), int(d), steps_per_epoch) for e, d in zip(num_epochs, diverged_at, strict=True)]
    width = ceil_div(max(positions), cfg.log_every) if positions else 0
    losses = np.full((len(positions), width), np.nan, host.loss_sums.dtype)
    for k, pos in enumerate(positions):
        means = window_means(host.loss_sums[k], pos, cfg.log_every)
        losses[k, : len(means)] = means
    epochs_run = int(num_epochs.max()) if len(num_epochs) else 0
    return Histories(
        losses=losses,
        epoch_losses=np.asarray(host.epoch_losses)[:, :epochs_run],
        initial_loss=np.asarray(host.initial_loss),
        final_loss=np.asarray(host.last_loss),
        diverged=np.asarray(host.diverged),
        diverged_at=diverged_at,
        converged=np.asarray(host.converged),
        num_steps=np.asarray(host.train.step, np.int64),
        num_epochs=num_epochs,
    )


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What a :func:`gdjax.fit` run returns.

    Attributes:
      params: the trained parameters (if it diverged, the last ones that
        passed the divergence checks: finite, with a finite loss).
      state: the final :class:`gdjax.TrainState` (params, optimizer state, step).
      losses: per logged window, the mean mini-batch loss of its steps
        (one entry per step with ``log_every=1``); NaN after a divergence.
      epoch_losses: the full-data loss after each epoch run.
      initial_loss: the full-data loss before training.
      final_loss: the full-data loss of ``params`` (after the last epoch run).
      num_steps: parameter updates taken.
      num_epochs: epochs run (fewer than asked if it converged or diverged).
      converged: the full-data loss reached ``tol``.
      diverged: a step's loss was non-finite (the run went back to the last
        parameters whose loss was finite), or at an epoch's end a parameter
        or the full-data loss was (it went back to the epoch's start);
        training stopped at the end of that epoch.
      diverged_at: the rejected step, or None.
      log_every: steps per entry of ``losses``.
      steps_per_epoch: batches per epoch.
      batch_size: examples per batch.
      examples_per_epoch: examples with weight in one epoch.
      hyperparams: the optimizer values used (factory form), as floats.
      wall_time: seconds the compiled run took, compilation excluded.
      compile_time: seconds spent tracing and compiling (about 0 when cached).
      resumed_from: the epoch a checkpoint resumed this run from (0: from the start).
    """

    params: PyTree
    state: TrainState
    losses: np.ndarray
    epoch_losses: np.ndarray
    initial_loss: float
    final_loss: float
    num_steps: int
    num_epochs: int
    converged: bool
    diverged: bool
    diverged_at: int | None
    log_every: int
    steps_per_epoch: int
    batch_size: int
    examples_per_epoch: int
    hyperparams: dict[str, float]
    wall_time: float
    compile_time: float
    resumed_from: int = 0

    @property
    def examples_seen(self) -> int:
        """Examples processed, counting each step's real (unpadded) examples."""
        full, part = divmod(self.num_steps, self.steps_per_epoch)
        return full * self.examples_per_epoch + min(part * self.batch_size, self.examples_per_epoch)

    @classmethod
    def build(
        cls, cfg: Config, it: DataIterator, run: RunState, hyperparams: dict[str, Any], **extra: Any
    ) -> FitResult:
        """The one-member view of :func:`histories` for a run without a member axis."""
        h = histories(cfg, it.num_batches, run, members=False)
        at = int(h.diverged_at[0])
        return cls(
            params=run.train.params,
            state=run.train,
            losses=h.losses[0],
            epoch_losses=h.epoch_losses[0],
            initial_loss=float(h.initial_loss[0]),
            final_loss=float(h.final_loss[0]),
            num_steps=int(h.num_steps[0]),
            num_epochs=int(h.num_epochs[0]),
            converged=bool(h.converged[0]),
            diverged=bool(h.diverged[0]),
            diverged_at=at if at >= 0 else None,
            log_every=cfg.log_every,
            steps_per_epoch=it.num_batches,
            batch_size=it.batch_size,
            examples_per_epoch=it.examples_per_epoch,
            hyperparams={k: float(v) for k, v in hyperparams.items()},
            **extra,
        )


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """The results of every member of a sweep, stacked along a leading member axis.

    Attributes:
      hyperparams: name -> ``(M,)`` values per member (``learning_rate``
        first when swept).
      seeds: ``(M,)`` seed per member, or None without seeds.
      params: the final parameters, each leaf with a leading axis ``M``
        (for diverged members, the last ones that passed the divergence checks).
      state: the final :class:`gdjax.TrainState` of every member (leading axis ``M``).
      losses: ``(M, W)`` mean step loss per window of ``log_every`` steps;
        NaN after a member stopped or diverged.
      epoch_losses: ``(M, E)`` full-data loss after each epoch; NaN where a
        member did not run that epoch.
      initial_loss: ``(M,)`` full-data loss before training.
      final_loss: ``(M,)`` full-data loss of each member's final params.
      diverged: ``(M,)`` bool, the member hit a non-finite loss or params.
      diverged_at: ``(M,)`` the rejected step, -1 where none.
      converged: ``(M,)`` bool, the member reached ``tol``.
      num_steps: ``(M,)`` updates taken.
      num_epochs: ``(M,)`` epochs run.
      log_every, steps_per_epoch, batch_size, examples_per_epoch: as in
        :class:`gdjax.FitResult`.
      wall_time: seconds the compiled runs took (compilation excluded).
      compile_time: seconds spent compiling (about 0 when cached).
      devices: devices the members were split over.
      resumed_from: ``(M,)`` the epoch a checkpoint resumed each member from
        (0: from the start). Each chunk of members (``chunk_size``) has its own
        checkpoints, so members of one chunk share a value; members of a chunk
        that had finished when the sweep was stopped show the final epoch.
    """

    hyperparams: dict[str, np.ndarray]
    seeds: np.ndarray | None
    params: PyTree
    state: TrainState
    losses: np.ndarray
    epoch_losses: np.ndarray
    initial_loss: np.ndarray
    final_loss: np.ndarray
    diverged: np.ndarray
    diverged_at: np.ndarray
    converged: np.ndarray
    num_steps: np.ndarray
    num_epochs: np.ndarray
    log_every: int
    steps_per_epoch: int
    batch_size: int
    examples_per_epoch: int
    wall_time: float
    compile_time: float
    devices: int
    resumed_from: np.ndarray

    @classmethod
    def build(cls, cfg: Config, it: DataIterator, run: RunState, **extra: Any) -> SweepResult:
        """The result of a sweep from the stacked run states of every member."""
        h = histories(cfg, it.num_batches, run)
        return cls(
            params=run.train.params,
            state=run.train,
            log_every=cfg.log_every,
            steps_per_epoch=it.num_batches,
            batch_size=it.batch_size,
            examples_per_epoch=it.examples_per_epoch,
            **h._asdict(),
            **extra,
        )

    @property
    def num_members(self) -> int:
        return len(self.final_loss)

    @property
    def learning_rates(self) -> np.ndarray | None:
        """Each member's learning rate, or None if it was not swept."""
        return self.hyperparams.get("learning_rate")

    @property
    def healthy(self) -> np.ndarray:
        """Members that did not diverge and ended with a finite loss."""
        return ~self.diverged & np.isfinite(self.final_loss)

    @property
    def best_index(self) -> int | None:
        """The healthy member with the lowest final full-data loss (None if every member diverged)."""
        if not self.healthy.any():
            return None
        return int(np.argmin(np.where(self.healthy, self.final_loss, np.inf)))

    @property
    def best_hyperparams(self) -> dict[str, float] | None:
        """The hyperparameters (and seed) of the best member."""
        k = self.best_index
        if k is None:
            return None
        best = {name: float(v[k]) for name, v in self.hyperparams.items()}
        if self.seeds is not None:
            best["seed"] = int(self.seeds[k])
        return best

    @property
    def best_params(self) -> PyTree | None:
        """The final parameters of the best member."""
        k = self.best_index
        return None if k is None else self.member_params(k)

    def member_params(self, k: int) -> PyTree:
        """The final parameters of member ``k``."""
        return jax.tree.map(lambda x: x[k], self.params)

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per member: its hyperparameters, seed, losses and flags (for pandas or CSV).

        See :func:`gdjax.cli.report.rows`.
        """
        from gdjax.cli import report

        return report.rows(self)

    def summary(self, max_rows: int = 20) -> str:
        """A readable table: one line per member (at most ``max_rows``), then the best.

        See :func:`gdjax.cli.report.summary`.
        """
        from gdjax.cli import report

        return report.summary(self, max_rows)
