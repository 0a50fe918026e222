"""The per-member histories of finished runs, computed on the host from their run states.

:func:`histories` turns the run states of ``M`` members (the program's
window sums, evaluation rows, flags and monitor, moved to the host in one
transfer) into per-member numpy arrays, which :class:`gdjax.FitResult` (one
member) and :class:`gdjax.SweepResult` hold.

The evaluation history is indexed by ``history_epochs``, shared by every
member: the epochs ``eval_every, 2 * eval_every, ...`` up to the last epoch
any member ran and, when ``eval_every`` is not 1, that last epoch too (its
values are each member's final evaluation, taken when the run finished). A
member that stopped earlier (converged, diverged or early-stopped) has NaN
at the scheduled epochs after it stopped.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from gdjax._run import Config, RunState
from gdjax._types import ceil_div


class Histories(NamedTuple):
    """Per-member arrays of a finished run (leading axis ``M``)."""

    losses: np.ndarray
    step_aux: dict[str, np.ndarray]
    epoch_losses: np.ndarray
    history: dict[str, np.ndarray]
    history_epochs: np.ndarray
    final_metrics: dict[str, np.ndarray]
    initial_loss: np.ndarray
    final_loss: np.ndarray
    diverged: np.ndarray
    diverged_at: np.ndarray
    converged: np.ndarray
    stopped_early: np.ndarray
    best_epoch: np.ndarray
    best_value: np.ndarray
    num_steps: np.ndarray
    num_epochs: np.ndarray


def stop_position(run_epoch: int, diverged_at: int, steps_per_epoch: int) -> int:
    """Step positions a run went through (including a rejected one)."""
    if diverged_at >= 0:
        return min(diverged_at + 1, run_epoch * steps_per_epoch)
    return run_epoch * steps_per_epoch


def window_means(sums: np.ndarray, positions: list[int], log_every: int) -> np.ndarray:
    """Each run's window sums (runs first, windows last) as means over ``positions`` step positions; NaN after.

    The windows are as many as the most positions any run went through.
    """
    width = ceil_div(max(positions), log_every) if positions else 0
    means = sums[..., :width] / sums.dtype.type(log_every) if log_every > 1 else sums[..., :width].copy()
    for k, pos in enumerate(positions):
        count, last = ceil_div(pos, log_every), pos % log_every
        if last:  # the run's last window is partial: divide its sum by its own size
            means[k, ..., count - 1] = sums[k, ..., count - 1] / sums.dtype.type(last)
        means[k, ..., count:] = np.nan
    return means


def evaluation_epochs(eval_every: int, last_epoch: int, first: int = 0) -> tuple[np.ndarray, bool]:
    """The epochs of the evaluation history, and whether the last one is the final evaluation added at the end.

    ``first`` is the epoch the run started at (that of a run it continues).
    """
    start = (first // eval_every + 1) * eval_every if eval_every else 0
    scheduled = np.arange(start, last_epoch + 1, eval_every, dtype=np.int64) if eval_every else np.zeros(0, int)
    extra = eval_every != 1 and last_epoch > first and (not scheduled.size or scheduled[-1] != last_epoch)
    return (np.append(scheduled, last_epoch) if extra else scheduled), bool(extra)


def histories(cfg: Config, steps_per_epoch: int, run: RunState, *, members: bool = True) -> Histories:
    """The per-member histories of ``run`` (``members=False``: a run without a member axis, as one member)."""
    light = run._replace(watch=run.watch._replace(best_params=None))  # parameters stay where they are
    fields, step = jax.device_get((tuple(light)[1:], run.train.step))  # one transfer
    if not members:
        fields, step = jax.tree.map(lambda x: np.asarray(x)[None], (fields, step))
    host = RunState(run.train._replace(step=step), *fields)
    ev = cfg.evaluation
    num_epochs = np.asarray(host.epoch, np.int64)
    diverged_at = np.asarray(host.diverged_at, np.int64)
    first = int(np.max(host.first)) if np.size(host.first) else 0
    origin = first * steps_per_epoch  # the step positions of this run's history start there
    positions = [
        stop_position(int(e), int(d), steps_per_epoch) - origin for e, d in zip(num_epochs, diverged_at, strict=True)
    ]
    count = len(positions)
    losses = window_means(np.asarray(host.loss_sums), positions, cfg.log_every)
    aux = window_means(np.asarray(host.aux_sums), positions, cfg.log_every)
    epochs_run = int(num_epochs.max()) - first if count else 0
    rows = np.moveaxis(np.asarray(host.evals)[:, :, :epochs_run], 1, 2)  # (M, epochs, columns)
    last = np.asarray(host.last)
    epochs, extra = evaluation_epochs(ev.eval_every, first + epochs_run, first)
    scheduled = rows[:, epochs[: len(epochs) - extra] - first - 1]
    table = np.concatenate([scheduled, last[:, None]], 1) if extra else scheduled
    return Histories(
        losses=losses,
        step_aux=_step_aux(cfg, aux),
        epoch_losses=rows[:, :, 0],
        history=ev.split(table),
        history_epochs=epochs,
        final_metrics=ev.split(last),
        initial_loss=np.asarray(host.initial_loss),
        final_loss=last[:, 0],
        diverged=np.asarray(host.diverged),
        diverged_at=diverged_at,
        converged=np.asarray(host.converged),
        stopped_early=np.asarray(host.watch.stopped),
        best_epoch=np.asarray(host.watch.best_epoch, np.int64),
        best_value=np.where(np.asarray(host.watch.best_epoch) >= 0, np.asarray(host.watch.best), np.nan),
        num_steps=np.asarray(host.train.step, np.int64),
        num_epochs=num_epochs,
    )


def _step_aux(cfg: Config, aux: np.ndarray) -> dict[str, np.ndarray]:
    """``(M, elements, windows)`` as ``name -> (M, windows, *shape)``, names without the ``aux/`` prefix."""
    out: dict[str, Any] = {}
    at = 0
    for name, shape in cfg.evaluation.aux:
        size = int(np.prod(shape))
        part = np.moveaxis(aux[:, at : at + size], 1, -1)
        out[name.removeprefix("aux/") if name != "aux" else name] = part.reshape(*part.shape[:-1], *shape)
        at += size
    return out
