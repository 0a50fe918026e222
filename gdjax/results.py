"""What ``fit`` and ``sweep`` return, built by one function over a member axis.

:func:`gdjax._history.histories` turns the run states of ``M`` members into
per-member arrays; a :class:`SweepResult` holds them as they are and a
:class:`FitResult` is the one-member view. Text views of a sweep (``summary``, ``to_rows``) are made
by :mod:`gdjax.cli.report`, beside the command line that prints them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from gdjax._history import histories
from gdjax._run import Config, RunState
from gdjax._types import PyTree
from gdjax.data import DataIterator
from gdjax.step import TrainState

__all__ = ["FitResult", "SweepResult"]


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What a :func:`gdjax.fit` run returns.

    Attributes:
      params: the trained parameters (if it diverged, the last ones that
        passed the divergence checks: finite, with a finite loss), as the
        whole model (an Equinox module with its static leaves).
      state: the final :class:`gdjax.TrainState` (params, optimizer state,
        step, model state); pass it to :func:`gdjax.fit` as ``params`` to
        continue the run.
      losses: per logged window, the mean mini-batch loss of its steps
        (one entry per step with ``log_every=1``); NaN after a divergence.
      epoch_losses: the full-data loss after each epoch run (NaN after epochs
        that were not evaluated, with ``eval_every`` other than 1).
      history: name -> one value per evaluation: ``"loss"`` (full-data
        training loss), each metric, ``"aux/<name>"`` (each aux output's mean
        over the training data), and with ``eval_data`` the same prefixed
        ``eval_`` (``"eval_loss"``, ``"eval_acc"``, ``"eval_aux/<name>"``).
      history_epochs: the epoch after which each evaluation was taken
        (``eval_every``, ``2 * eval_every``, ... and, unless ``eval_every``
        is 1, the last epoch, evaluated when the run finished).
      final_metrics: name -> the value for the final ``params`` (the keys of ``history``).
      step_aux: aux name -> per logged window, the mean of that aux output
        over the window's steps (beside ``losses``; NaN after a divergence).
      initial_loss: the full-data loss before training.
      final_loss: the full-data loss of ``params`` (after the last epoch run).
      monitor, mode: the value early stopping and ``best_*`` watch, and
        whether lower (``"min"``) or higher (``"max"``) is better.
      best_epoch: the epoch after which the best monitored evaluation was
        taken (None if no evaluation was finite).
      best_value: the monitored value then (None likewise).
      best_params: the parameters then (with ``keep_best=True``; else None).
      best_model_state: the model state then (with ``keep_best`` and a model state).
      stopped_early: ``patience`` evaluations passed without improvement.
      num_steps: parameter updates taken (counting those of the run it continues).
      num_epochs: the epoch the run ended at (fewer than asked if it
        converged or diverged; counting from the start of the run it continues).
      first_epoch: the epoch it started at (0, or that of the state it continued).
      converged: the full-data loss reached ``tol``.
      diverged: a step's loss was non-finite (the run went back to its
        parameters at the start of that window of at most 64 steps), or at an epoch's end a parameter
        or the full-data loss was (it went back to the epoch's start);
        training stopped at the end of that epoch.
      diverged_at: the rejected step, or None.
      log_every: steps per entry of ``losses``.
      steps_per_epoch: batches per epoch.
      batch_size: examples per batch.
      examples_per_epoch: examples with weight in one epoch.
      hyperparams: the optimizer values used (factory form), as floats.
      loss_hyperparams: the loss's keyword values, as floats.
      wall_time: seconds the compiled run took, compilation excluded.
      compile_time: seconds spent tracing and compiling (about 0 when cached).
      resumed_from: the epoch a checkpoint resumed this run from (0: from the start).
      on_device: the training data was on the device (False: streamed from the host, see :func:`gdjax.minibatch`).
    """

    params: PyTree
    state: TrainState
    losses: np.ndarray
    epoch_losses: np.ndarray
    history: dict[str, np.ndarray]
    history_epochs: np.ndarray
    final_metrics: dict[str, Any]
    step_aux: dict[str, np.ndarray]
    initial_loss: float
    final_loss: float
    num_steps: int
    num_epochs: int
    converged: bool
    diverged: bool
    diverged_at: int | None
    monitor: str
    mode: str
    best_epoch: int | None
    best_value: float | None
    best_params: PyTree | None
    stopped_early: bool
    log_every: int
    steps_per_epoch: int
    batch_size: int
    examples_per_epoch: int
    hyperparams: dict[str, float]
    loss_hyperparams: dict[str, float]
    wall_time: float
    compile_time: float
    resumed_from: int = 0
    best_model_state: PyTree | None = None
    first_epoch: int = 0
    on_device: bool = True

    @property
    def examples_seen(self) -> int:
        """Examples processed, counting each step's real (unpadded) examples."""
        full, part = divmod(self.num_steps, self.steps_per_epoch)
        return full * self.examples_per_epoch + min(part * self.batch_size, self.examples_per_epoch)

    @classmethod
    def build(
        cls,
        cfg: Config,
        it: DataIterator,
        run: RunState,
        hyperparams: dict[str, Any],
        loss_hyperparams: dict[str, Any],
        **extra: Any,
    ) -> FitResult:
        """The one-member view of :func:`gdjax._history.histories` for a run without a member axis."""
        h = histories(cfg, it.num_batches, run, members=False)
        at, best = int(h.diverged_at[0]), int(h.best_epoch[0])
        ev = cfg.evaluation
        first = lambda d: {k: v[0] for k, v in d.items()}  # noqa: E731
        train = run.train._replace(params=cfg.model(run.train.params))
        return cls(
            params=train.params,
            state=train,
            losses=h.losses[0],
            epoch_losses=h.epoch_losses[0],
            history=first(h.history),
            history_epochs=h.history_epochs,
            final_metrics={k: v.item() if v.ndim == 0 else v for k, v in first(h.final_metrics).items()},
            step_aux=first(h.step_aux),
            initial_loss=float(h.initial_loss[0]),
            final_loss=float(h.final_loss[0]),
            num_steps=int(h.num_steps[0]),
            num_epochs=int(h.num_epochs[0]),
            converged=bool(h.converged[0]),
            diverged=bool(h.diverged[0]),
            diverged_at=at if at >= 0 else None,
            monitor=ev.monitor,
            mode=ev.mode,
            best_epoch=best if best >= 0 else None,
            best_value=float(h.best_value[0]) if best >= 0 else None,
            best_params=cfg.model(run.watch.best_params) if ev.keep_best and best >= 0 else None,
            best_model_state=run.watch.best_model_state if ev.keep_best and best >= 0 else None,
            first_epoch=int(np.max(jax.device_get(run.first))),
            on_device=it.on_device,
            stopped_early=bool(h.stopped_early[0]),
            log_every=cfg.log_every,
            steps_per_epoch=it.num_batches,
            batch_size=it.batch_size,
            examples_per_epoch=it.examples_per_epoch,
            hyperparams={k: float(v) for k, v in hyperparams.items()},
            loss_hyperparams={k: float(v) for k, v in loss_hyperparams.items()},
            **extra,
        )


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """The results of every member of a sweep, stacked along a leading member axis.

    Attributes:
      hyperparams: name -> ``(M,)`` optimizer values per member
        (``learning_rate`` first when swept).
      loss_hyperparams: name -> ``(M,)`` loss keyword values per member.
      seeds: ``(M,)`` seed per member, or None without seeds.
      params: the final parameters, each trained leaf with a leading axis
        ``M`` (for diverged members, the last ones that passed the divergence
        checks); the static leaves of a model are shared.
      state: the final :class:`gdjax.TrainState` of every member (leading
        axis ``M``); pass it to :func:`gdjax.sweep` as ``params``, with the
        same members, to continue the sweep.
      losses: ``(M, W)`` mean step loss per window of ``log_every`` steps;
        NaN after a member stopped or diverged.
      epoch_losses: ``(M, E)`` full-data loss after each epoch; NaN where a
        member did not run or evaluate that epoch.
      history: name -> ``(M, K)``, one value per evaluation (the names of
        :attr:`gdjax.FitResult.history`); NaN after a member stopped.
      history_epochs: ``(K,)`` the epoch after which each evaluation was
        taken, shared by the members (see :mod:`gdjax._history`: the last,
        when ``eval_every`` is not 1, holds each member's final evaluation).
      final_metrics: name -> ``(M,)`` the values for each member's final params.
      step_aux: aux name -> ``(M, W)`` per-window means of that aux output.
      initial_loss: ``(M,)`` full-data loss before training.
      final_loss: ``(M,)`` full-data loss of each member's final params.
      diverged: ``(M,)`` bool, the member hit a non-finite loss or params.
      diverged_at: ``(M,)`` the rejected step, -1 where none.
      converged: ``(M,)`` bool, the member reached ``tol``.
      stopped_early: ``(M,)`` bool, ``patience`` ran out for the member.
      monitor, mode: the value model selection and early stopping watch,
        and whether lower or higher is better.
      best_epoch: ``(M,)`` the epoch of each member's best monitored evaluation (-1: none).
      best_value: ``(M,)`` that value (NaN: none).
      best_epoch_params: with ``keep_best=True``, each member's parameters
        at its best epoch (leading axis ``M``); else None.
      best_epoch_model_state: likewise, each member's model state then.
      num_steps: ``(M,)`` updates taken.
      num_epochs: ``(M,)`` epochs run.
      log_every, steps_per_epoch, batch_size, examples_per_epoch: as in
        :class:`gdjax.FitResult`.
      wall_time: seconds the compiled runs took (compilation excluded).
      compile_time: seconds spent compiling (about 0 when cached).
      devices: devices the members were split over.
      on_device: the training data was on the device (False: streamed from the host).
      resumed_from: ``(M,)`` the epoch a checkpoint resumed each member from
        (0: from the start). Each chunk of members (``chunk_size``) has its own
        checkpoints, so members of one chunk share a value; members of a chunk
        that had finished when the sweep was stopped show the final epoch.
    """

    hyperparams: dict[str, np.ndarray]
    loss_hyperparams: dict[str, np.ndarray]
    seeds: np.ndarray | None
    params: PyTree
    state: TrainState
    losses: np.ndarray
    epoch_losses: np.ndarray
    history: dict[str, np.ndarray]
    history_epochs: np.ndarray
    final_metrics: dict[str, np.ndarray]
    step_aux: dict[str, np.ndarray]
    initial_loss: np.ndarray
    final_loss: np.ndarray
    diverged: np.ndarray
    diverged_at: np.ndarray
    converged: np.ndarray
    stopped_early: np.ndarray
    monitor: str
    mode: str
    best_epoch: np.ndarray
    best_value: np.ndarray
    best_epoch_params: PyTree | None
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
    best_epoch_model_state: PyTree | None = None
    first_epoch: int = 0
    on_device: bool = True

    @classmethod
    def build(cls, cfg: Config, it: DataIterator, run: RunState, **extra: Any) -> SweepResult:
        """The result of a sweep from the stacked run states of every member."""
        h = histories(cfg, it.num_batches, run)
        ev = cfg.evaluation
        train = run.train._replace(params=cfg.model(run.train.params))
        return cls(
            params=train.params,
            state=train,
            monitor=ev.monitor,
            mode=ev.mode,
            best_epoch_params=cfg.model(run.watch.best_params) if ev.keep_best else None,
            best_epoch_model_state=run.watch.best_model_state if ev.keep_best else None,
            first_epoch=int(np.max(jax.device_get(run.first))),
            log_every=cfg.log_every,
            steps_per_epoch=it.num_batches,
            batch_size=it.batch_size,
            examples_per_epoch=it.examples_per_epoch,
            on_device=it.on_device,
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
    def selection(self) -> np.ndarray:
        """``(M,)`` the monitored value each member is ranked by: of its best epoch with ``keep_best``, else final.

        That is the value of the parameters :attr:`best_params` returns.
        """
        if self.best_epoch_params is not None:
            return self.best_value
        return np.asarray(self.final_metrics[self.monitor], np.float64)

    @property
    def best_index(self) -> int | None:
        """The healthy member with the best :attr:`selection` (lowest, or highest with ``mode="max"``).

        Without evaluation options that is the lowest final full-data loss.
        None if no healthy member has a finite value.
        """
        value = np.asarray(self.selection, np.float64)
        ok = self.healthy & np.isfinite(value)
        if not ok.any():
            return None
        if self.mode == "max":
            return int(np.argmax(np.where(ok, value, -np.inf)))
        return int(np.argmin(np.where(ok, value, np.inf)))

    @property
    def best_hyperparams(self) -> dict[str, float] | None:
        """The hyperparameters (optimizer and loss) and seed of the best member."""
        k = self.best_index
        if k is None:
            return None
        best = {name: float(v[k]) for name, v in {**self.hyperparams, **self.loss_hyperparams}.items()}
        if self.seeds is not None:
            best["seed"] = int(self.seeds[k])
        return best

    @property
    def best_params(self) -> PyTree | None:
        """The parameters of the best member: at its best epoch with ``keep_best``, else its final ones."""
        k = self.best_index
        return None if k is None else self.member_params(k, best=self.best_epoch_params is not None)

    def member_params(self, k: int, *, best: bool = False) -> PyTree:
        """The final parameters of member ``k`` (``best=True``: at its best epoch; needs ``keep_best``)."""
        if best and self.best_epoch_params is None:
            raise ValueError("best=True needs the sweep to be run with keep_best=True.")
        from gdjax._trainable import is_trained

        tree = self.best_epoch_params if best else self.params
        return jax.tree.map(lambda x: x[k] if is_trained(x) else x, tree)

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
