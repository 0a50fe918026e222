"""``study``: the textbook's two choices, batch size and learning rate, answered by measurement.

For each batch size, :func:`study` runs one vectorised learning-rate sweep
(:func:`gdjax.sweep` over :func:`gdjax.minibatch` of that size, ``tol=target``)
and reads how long the best learning rate took to reach the target loss:
epochs, steps (parameter updates), examples processed and seconds. Steps
against examples is the trade-off of McCandlish et al. (2018), "An Empirical
Model of Large-Batch Training": small batches need few examples but many
steps, large ones few steps but many examples, and the knee between the two
is the critical batch size, which the simple noise scale
``B_simple = tr(Sigma) / |G|^2`` predicts.

Contract:

* one compiled program per batch size, reused by a later call of the same
  shapes (the sweep's caches); the data is checked and placed once;
* the target is checked against the full-data loss at the end of every
  epoch, so ``steps_to_target`` and ``examples_to_target`` are whole epochs:
  the resolution is one epoch. Choose a target that takes several epochs at
  every batch size, or the small batch sizes all read "1 epoch";
* every bad argument raises before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import optax

from gdjax import _optimizer, _study_checks, _validate
from gdjax._study_fit import read, tradeoff
from gdjax._study_measure import measure, whole
from gdjax._types import PyTree, plural
from gdjax.data import DataIterator
from gdjax.results import SweepResult
from gdjax.sweep import sweep

__all__ = ["StudyResult", "study"]


@dataclasses.dataclass(frozen=True)
class StudyResult:
    """What :func:`study` measured, one entry per batch size (increasing) in each list.

    Attributes:
      batch_sizes: the batch sizes studied, increasing.
      learning_rates: the learning rates tried at every batch size.
      target: the full-data loss to reach.
      epochs: the most epochs each sweep could run.
      num_examples: ``N``, the examples in the data.
      initial_loss: the full-data loss at the initial parameters.
      steps_per_epoch: updates per epoch at each batch size.
      best_learning_rates: the best learning rate at each batch size (the
        fewest epochs to the target; see :func:`gdjax._study_fit.read`), or
        where none reached it the one with the lowest final loss; None where
        every learning rate diverged.
      best_members: the index of that member in the batch size's sweep.
      final_losses: that member's full-data loss when it stopped (at or just
        below the target when it reached it).
      epochs_to_target: epochs the best learning rate took to reach the
        target (None: not reached within ``epochs``).
      steps_to_target: ``epochs_to_target * steps_per_epoch``.
      examples_to_target: ``epochs_to_target * examples per epoch`` (``N``
        unless ``drop_remainder``).
      seconds_to_target: the batch size's sweep run time (compilation
        excluded, every learning rate together) times ``epochs_to_target /
        epochs_run``: the wall time the vectorised sweep took to get there.
      epochs_run: epochs each sweep ran (it stops once every member has
        reached the target or diverged).
      sweeps: each batch size's :class:`gdjax.SweepResult`.
      wall_times, compile_times: each sweep's run and compile seconds.
      sharpness: the largest Hessian eigenvalue of the full-data loss at the
        initial parameters (:func:`gdjax.sharpness`; None with ``diagnostics=False``).
      noise_scale: ``B_simple`` at the initial parameters (:func:`gdjax.noise_scale`).
      noise_scale_at_target: ``B_simple`` at the parameters where the target
        was reached (the best member of the largest batch size that reached
        it; the noise scale grows as the loss falls); None if none did.
      noise_scale_batch_size: the batch size those parameters came from.
      critical_batch_size, min_steps, min_examples: McCandlish's model
        ``S = S_min (1 + B_crit / B)``, ``E = E_min (1 + B / B_crit)`` fitted
        to the measured (steps, examples) pairs, ``B_crit = E_min / S_min``;
        None unless at least 3 batch sizes reached the target (and the fit
        is positive).
      measure_times: seconds of each diagnostic call (``sharpness``,
        ``noise_scale``, ``noise_scale_at_target``), compilation included.
      measure_errors: the message of each diagnostic that failed while
        measuring (a ValueError, such as a loss that is not finite or not
        twice differentiable there); its value is None and the sweeps'
        results stand.
      total_time: seconds the whole :func:`study` call took.
    """

    batch_sizes: list[int]
    learning_rates: np.ndarray
    target: float
    epochs: int
    num_examples: int
    initial_loss: float
    steps_per_epoch: list[int]
    best_learning_rates: list[float | None]
    best_members: list[int | None]
    final_losses: list[float | None]
    epochs_to_target: list[int | None]
    steps_to_target: list[int | None]
    examples_to_target: list[int | None]
    seconds_to_target: list[float | None]
    epochs_run: list[int]
    sweeps: list[SweepResult]
    wall_times: list[float]
    compile_times: list[float]
    sharpness: float | None = None
    noise_scale: float | None = None
    noise_scale_at_target: float | None = None
    noise_scale_batch_size: int | None = None
    critical_batch_size: float | None = None
    min_steps: float | None = None
    min_examples: float | None = None
    measure_times: dict[str, float] = dataclasses.field(default_factory=dict)
    measure_errors: dict[str, str] = dataclasses.field(default_factory=dict)
    total_time: float = 0.0

    @property
    def reached(self) -> np.ndarray:
        """``(K,)`` bool: the batch size reached the target."""
        return np.array([s is not None for s in self.steps_to_target], bool)

    @property
    def recommended_index(self) -> int | None:
        """The knee of the measured trade-off: the batch size that reached the target in the least ``steps * examples``.

        In McCandlish's model ``(S / S_min)(E / E_min)`` is smallest, 4, at
        ``B = B_crit``, so this is the measured batch size nearest the
        critical one, found without the fit (ties: fewer steps). None if no
        batch size reached the target.
        """
        costs = [
            (s * e, s, i)
            for i, (s, e) in enumerate(zip(self.steps_to_target, self.examples_to_target, strict=True))
            if s is not None and e is not None
        ]
        return min(costs)[2] if costs else None

    @property
    def recommended_batch_size(self) -> int | None:
        """The batch size to pick (:attr:`recommended_index`), or None."""
        i = self.recommended_index
        return None if i is None else self.batch_sizes[i]

    @property
    def recommended_learning_rate(self) -> float | None:
        """The best learning rate at :attr:`recommended_batch_size`, or None."""
        i = self.recommended_index
        return None if i is None else self.best_learning_rates[i]

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per batch size (for pandas or CSV); see :func:`gdjax._study_report.rows`."""
        from gdjax import _study_report

        return _study_report.rows(self)

    def summary(self) -> str:
        """A readable table, one line per batch size, then the diagnostics and the recommendation."""
        from gdjax import _study_report

        return _study_report.summary(self)


def study(
    loss_fn: Callable,
    params: PyTree,
    optimizer_fn: Callable[..., optax.GradientTransformation],
    data: PyTree | DataIterator,
    *,
    batch_sizes: Any = None,
    learning_rates: Any,
    target: float,
    epochs: int,
    key: jax.Array,
    hyperparams: Mapping[str, Any] | None = None,
    loss_hyperparams: Mapping[str, Any] | None = None,
    has_aux: bool = False,
    batched: bool = False,
    shuffle: bool = True,
    drop_remainder: bool = False,
    on_device: bool | None = None,
    progress: bool = False,
    diagnostics: bool = True,
) -> StudyResult:
    """Measure, for each batch size, the best learning rate and the steps, examples and seconds to reach a loss.

    Each batch size ``b`` runs ``gd.sweep(loss_fn, params, optimizer_fn,
    gd.minibatch(data, b, ...), learning_rates=learning_rates, epochs=epochs,
    key=key, tol=target)``: every learning rate at once, one compiled program
    per batch size, each member stopping once its full-data loss (measured
    after every epoch) is ``<= target``. The best learning rate is the one
    that got there in the fewest epochs (ties: the lower loss at that epoch,
    then the smaller rate); ``steps_to_target`` is its epochs times the steps
    per epoch, ``examples_to_target`` its epochs times ``N``.

    **Resolution: one epoch.** The loss is measured at the end of each epoch,
    so a batch size that reaches the target a few steps into an epoch counts
    that whole epoch. Pick a target that takes several epochs even for the
    smallest batch size (a loss most of the way from the initial loss to the
    best one reached, not the first few percent of it), and enough ``epochs``
    for the full batch to get there.

    Then, with ``diagnostics`` (the default), the sharpness (2 / sharpness
    bounds the stable step of gradient descent) and the simple noise scale
    ``B_simple`` at the initial parameters, and ``B_simple`` where the target
    was reached; and McCandlish's model fitted to the measured pairs, giving
    the critical batch size: past it, larger batches stop saving steps.

    Args:
      loss_fn: ``loss_fn(params, example) -> scalar``, as for :func:`gdjax.sweep`.
      params: the initial parameters, shared by every run.
      optimizer_fn: an optax factory, such as ``optax.sgd``.
      data: a pytree of arrays with a leading axis of ``N`` examples (as for
        :func:`gdjax.minibatch`), or a :class:`gdjax.DataIterator`, whose
        data is taken (its batch size and order options are ignored: pass
        ``shuffle`` and ``drop_remainder`` here).
      batch_sizes: integers in ``[1, N]``, distinct (studied in increasing
        order); None: the powers of two up to ``N``, and ``N``.
      learning_rates: 1-D array of positive learning rates, tried at every batch size.
      target: the full-data loss to reach (a finite number >= 0 that the loss's dtype holds: at most about
        3.4e38 in float32).
      epochs: the most epochs each batch size's runs may take.
      key: PRNG key of the data order (the same for every batch size).
      hyperparams: fixed optimizer keywords (one number each), as for :func:`gdjax.sweep`.
      loss_hyperparams: fixed loss keywords (one number each).
      has_aux, batched: as for :func:`gdjax.sweep`.
      shuffle, drop_remainder, on_device: as for :func:`gdjax.minibatch`.
      progress: a line per batch size and the sweep's progress bar, on standard error.
      diagnostics: also measure the sharpness and the noise scales (cheap
        next to the sweeps; their seconds are in ``measure_times``).

    Returns:
      A :class:`StudyResult`.

    Raises:
      TypeError, ValueError: bad arguments, before anything is compiled.

    Example:
      >>> import jax, numpy as np, optax, gdjax as gd
      >>> prob = gd.problems.linear_regression(n=64, d=2, key=jax.random.key(0))
      >>> m = gd.models.linear()
      >>> st = gd.study(m.loss, m.init(None, 2), optax.sgd, prob.data, batch_sizes=[8, 64],
      ...               learning_rates=[0.1, 0.5], target=2 * prob.min_loss, epochs=40,
      ...               key=jax.random.key(1), diagnostics=False)
      >>> st.batch_sizes, st.best_learning_rates, st.steps_per_epoch
      ([8, 64], [0.5, 0.5], [8, 1])
    """
    start = time.perf_counter()
    _validate.check_loss_fn(loss_fn)
    _optimizer.require_factory(optimizer_fn)
    flags = {"progress": progress, "diagnostics": diagnostics, "has_aux": has_aux, "batched": batched}
    for name, flag in flags.items():
        _validate.check_flag(flag, name)
    sizes = _study_checks.check_batch_sizes(batch_sizes)
    goal = _study_checks.check_target(target)
    lrs = _study_checks.check_learning_rates(learning_rates, hyperparams, loss_hyperparams)
    epochs = _validate.check_positive_int(epochs, "epochs", low=1)
    key = _validate.check_key(key)
    its = _study_checks.iterators(
        data, sizes, shuffle=shuffle, drop_remainder=drop_remainder, on_device=on_device, epochs=epochs
    )
    sweeps = []
    for i, it in enumerate(its):
        if progress:
            steps = plural(it.num_batches, "step")
            print(
                f"study: batch size {it.batch_size} ({i + 1} of {len(its)}), {steps} per epoch",
                file=sys.stderr,
                flush=True,
            )
        sw = sweep(
            loss_fn,
            params,
            optimizer_fn,
            it,
            learning_rates=lrs,
            hyperparams=hyperparams,
            loss_hyperparams=loss_hyperparams,
            epochs=epochs,
            key=key,
            tol=goal,
            has_aux=has_aux,
            batched=batched,
            progress=progress,
        )
        sweeps.append(sw)
    readings = [read(sw) for sw in sweeps]
    options = {"has_aux": has_aux, "batched": batched, "loss_hyperparams": loss_hyperparams}
    measured = measure(loss_fn, params, whole(its[0]), sweeps, readings, options) if diagnostics else {}
    fit = tradeoff([r.steps_to_target for r in readings], [r.examples_to_target for r in readings])
    return StudyResult(
        batch_sizes=[it.batch_size for it in its],
        learning_rates=lrs,
        target=goal,
        epochs=epochs,
        num_examples=its[0].num_examples,
        initial_loss=float(np.asarray(sweeps[0].initial_loss)[0]),
        steps_per_epoch=[it.num_batches for it in its],
        best_learning_rates=[r.learning_rate for r in readings],
        best_members=[r.member for r in readings],
        final_losses=[r.final_loss for r in readings],
        epochs_to_target=[r.epochs_to_target for r in readings],
        steps_to_target=[r.steps_to_target for r in readings],
        examples_to_target=[r.examples_to_target for r in readings],
        seconds_to_target=[r.seconds_to_target for r in readings],
        epochs_run=[r.epochs_run for r in readings],
        sweeps=sweeps,
        wall_times=[sw.wall_time for sw in sweeps],
        compile_times=[sw.compile_time for sw in sweeps],
        critical_batch_size=None if fit is None else fit.critical_batch_size,
        min_steps=None if fit is None else fit.min_steps,
        min_examples=None if fit is None else fit.min_examples,
        **measured,
        total_time=time.perf_counter() - start,
    )
