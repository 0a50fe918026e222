"""What a study reads from each batch size's sweep, and McCandlish's steps/examples trade-off fitted to it.

:func:`read` turns one :class:`gdjax.SweepResult` (run with ``tol=target``)
into the batch size's row: the best member, the epochs, steps, examples and
seconds it took to reach the target. :func:`tradeoff` fits the model of
McCandlish et al. (2018), ``S = S_min (1 + B_noise / B)`` and
``E = E_min (1 + B / B_noise)``, to the measured ``(steps, examples)`` pairs.
Plain numpy: nothing here compiles.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gdjax.results import SweepResult

__all__ = ["MIN_POINTS", "Reading", "Tradeoff", "read", "tradeoff"]

#: Batch sizes that must reach the target before the trade-off is fitted (two points always fit exactly).
MIN_POINTS = 3


class Reading(NamedTuple):
    """One batch size's sweep, read against the target.

    ``member`` is the best member (None when every member diverged); the
    ``*_to_target`` values are None where no member reached the target.
    """

    member: int | None
    learning_rate: float | None
    final_loss: float | None  # the best member's full-data loss when it stopped (at the target, if it reached it)
    epochs_to_target: int | None
    steps_to_target: int | None
    examples_to_target: int | None
    seconds_to_target: float | None
    epochs_run: int  # epochs the sweep's program ran (until every member converged, diverged or ``epochs`` passed)


def read(sw: SweepResult) -> Reading:
    """The best member of a sweep run with ``tol=target``, and what it took to reach the target.

    Best: of the members that reached the target (``sw.converged``), the one
    that took the fewest epochs; among those, the lowest full-data loss at
    that epoch (the one that went furthest below the target in the same
    epochs: at one-epoch resolution, the best sign that it crossed first),
    then the smaller learning rate. When none reached it, the healthy member
    with the lowest final loss (``sw.best_index``), with no ``*_to_target``.

    ``seconds_to_target`` is the sweep's compiled run time (compilation
    excluded, all members together) times ``epochs_to_target / epochs_run``:
    the wall time the vectorised sweep took to get there.
    """
    epochs = np.asarray(sw.num_epochs, np.int64) - sw.first_epoch
    epochs_run = int(epochs.max()) if len(epochs) else 0
    lrs = sw.learning_rates
    assert lrs is not None, "a study sweeps learning rates"
    hit = np.flatnonzero(np.asarray(sw.converged) & ~np.asarray(sw.diverged))
    final = np.asarray(sw.final_loss, np.float64)
    if len(hit) == 0:
        k = sw.best_index
        if k is None:
            return Reading(None, None, None, None, None, None, None, epochs_run)
        return Reading(k, float(lrs[k]), float(final[k]), None, None, None, None, epochs_run)
    k = int(min(hit, key=lambda i: (epochs[i], final[i], lrs[i])))
    e = int(epochs[k])
    seconds = sw.wall_time * e / max(epochs_run, 1)
    return Reading(
        k, float(lrs[k]), float(final[k]), e, e * sw.steps_per_epoch, e * sw.examples_per_epoch, seconds, epochs_run
    )


class Tradeoff(NamedTuple):
    """McCandlish's model fitted: ``S(B) = min_steps (1 + critical / B)``, ``E(B) = min_examples (1 + B / critical)``.

    ``critical = min_examples / min_steps`` is the critical batch size
    (their ``B_noise``, estimated from the training runs themselves).
    """

    min_steps: float
    min_examples: float
    points: int  # the (steps, examples) pairs fitted

    @property
    def critical_batch_size(self) -> float:
        return self.min_examples / self.min_steps

    def steps(self, batch_size: np.ndarray | float) -> np.ndarray:
        return self.min_steps * (1.0 + self.critical_batch_size / np.asarray(batch_size, np.float64))

    def examples(self, batch_size: np.ndarray | float) -> np.ndarray:
        return self.min_examples * (1.0 + np.asarray(batch_size, np.float64) / self.critical_batch_size)


def tradeoff(steps: list[int | None], examples: list[int | None]) -> Tradeoff | None:
    """Fit ``S_min`` and ``E_min`` to the measured pairs (None entries skipped), or None.

    The model's closed form ``(S/S_min - 1)(E/E_min - 1) = 1`` is, multiplied
    out, ``S_min / S + E_min / E = 1``: linear in ``S_min`` and ``E_min``, so
    it is solved by least squares on that equation (each pair weighted alike,
    every residual a fraction). Needs :data:`MIN_POINTS` pairs; None when
    there are fewer, when they cannot tell the two apart, or when the fit
    has no positive ``S_min`` and ``E_min`` (the measurements show no
    trade-off of that shape, e.g. steps that do not fall as batches grow).

    Example:
      >>> b = np.array([1.0, 4.0, 16.0, 64.0])
      >>> s, e = 100 * (1 + 8 / b), 800 * (1 + b / 8)
      >>> fit = tradeoff(s.tolist(), e.tolist())
      >>> round(fit.critical_batch_size, 6), round(fit.min_steps, 6), round(fit.min_examples, 6)
      (8.0, 100.0, 800.0)
    """
    pairs = [(float(s), float(e)) for s, e in zip(steps, examples, strict=True) if s is not None and e is not None]
    if len(pairs) < MIN_POINTS:
        return None
    a = np.array([[1.0 / s, 1.0 / e] for s, e in pairs])
    solution, _, rank, _ = np.linalg.lstsq(a, np.ones(len(pairs)), rcond=None)
    s_min, e_min = (float(v) for v in solution)
    if rank < 2 or not (np.isfinite(s_min) and np.isfinite(e_min) and s_min > 0 and e_min > 0):
        return None
    return Tradeoff(s_min, e_min, len(pairs))
