"""Views of one run or a few: the cost curve with its moving average, and runs compared."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.axes import Axes

from gdjax.plot._base import (
    RAW_ALPHA,
    check_x,
    cost_points,
    finish,
    moving_average,
    new_axes,
    step_scale,
    window_steps,
)
from gdjax.results import FitResult

__all__ = ["compare", "losses"]


def losses(
    result: FitResult,
    *,
    x: str = "step",
    smooth: int | None = None,
    log: bool = True,
    ax: Axes | None = None,
    label: str | None = None,
    color: Any = None,
) -> Axes:
    """The cost curve of one run.

    The full-data cost is drawn at epoch 0 (the initial loss) and after each
    epoch it was evaluated: with ``eval_every`` other than 1 only those epochs
    and the final evaluation have a point (``epoch_losses`` is NaN between them).

    Args:
      result: a :class:`gdjax.FitResult`.
      x: ``"step"``, ``"epoch"``, ``"examples"`` or ``"time"`` (the compiled
        run's wall time spread evenly over its steps).
      smooth: draw the moving average over this many updates (the
        textbook's 10, 100 or 1000) over the faint raw mini-batch losses.
      log: logarithmic loss axis.
      ax: axes to draw on; a new figure when None.
      label: legend name of the run.
      color: its colour.

    Returns:
      The axes.

    Example:
      >>> import jax, optax, gdjax as gd
      >>> prob = gd.problems.linear_regression(n=256, d=4, key=jax.random.key(0))
      >>> m = gd.models.linear()
      >>> res = gd.fit(m.loss, m.init(None, 4), optax.sgd, gd.stochastic(prob.data),
      ...              epochs=3, key=jax.random.key(1), learning_rate=0.01)
      >>> ax = gd.plot.losses(res, smooth=100, x="epoch")
      >>> ax.get_xlabel()
      'epoch (passes over the data)'
    """
    check_x(x)
    ax = new_axes(ax)
    name = label or "run"
    scale = step_scale(result, x, result.num_steps)
    steps = window_steps(result, len(result.losses))
    raw = np.asarray(result.losses, np.float64)
    if smooth:
        window = max(1, int(smooth) // result.log_every)
        (line,) = ax.plot(steps * scale, raw, lw=0.6, alpha=RAW_ALPHA, color=color, label=f"{name}: mini-batch loss")
        first = window - 1 if len(raw) > 2 * window else 0  # the textbook averages full windows only
        average = moving_average(raw, window)
        ax.plot(
            steps[first:] * scale,
            average[first:],
            lw=1.8,
            color=line.get_color(),
            label=f"{name}: moving average of {int(smooth)} updates",
        )
        if log:  # single-sample losses reach down to ~0; keep the view on the averages
            shown = np.concatenate([average[first:], cost_points(result)[1]])
            shown = shown[np.isfinite(shown) & (shown > 0)]
            if len(shown) and shown.max() < 1e300:
                ax.set_ylim(shown.min() / 20, shown.max() * 3)
    else:
        (line,) = ax.plot(steps * scale, raw, lw=1.0, color=color, label=f"{name}: mini-batch loss")
    epochs, cost = cost_points(result)
    sparse = len(result.history_epochs) < result.num_epochs  # evaluated every few epochs (eval_every)
    ax.plot(
        epochs * result.steps_per_epoch * scale,
        cost,
        "o",
        ms=5,
        mfc="white",
        mew=1.5,
        color=line.get_color(),
        label=f"{name}: full-data cost after each {'evaluation' if sparse else 'epoch'}",
    )
    finish(ax, x, log, title=f"Cost against {x if x != 'time' else 'time'}")
    return ax


def compare(
    results: Mapping[str, FitResult],
    *,
    x: str = "epoch",
    smooth: int | None = None,
    log: bool = True,
    ax: Axes | None = None,
) -> Axes:
    """Several runs on one axes: their full-data cost after each epoch against ``x``.

    With ``smooth``, each run's moving-average mini-batch loss is drawn faintly
    in the same colour. A run evaluated only every few epochs (``eval_every``)
    is drawn through the epochs it was evaluated at (its finite points), with
    markers while it has at most 61 of them.

    Example:
      >>> import jax, optax, gdjax as gd
      >>> prob = gd.problems.linear_regression(n=256, d=4, key=jax.random.key(0))
      >>> m = gd.models.linear()
      >>> run = lambda it, lr: gd.fit(m.loss, m.init(None, 4), optax.sgd, it, epochs=5,
      ...                             key=jax.random.key(1), learning_rate=lr)
      >>> ax = gd.plot.compare({"batch GD": run(gd.full_batch(prob.data), 0.5),
      ...                       "SGD": run(gd.stochastic(prob.data), 0.01)}, x="examples")
      >>> len(ax.get_lines())
      2
    """
    check_x(x)
    if not results:
        raise ValueError("results is empty: pass a mapping such as {'batch GD': res1, 'SGD': res2}.")
    ax = new_axes(ax)
    for name, res in results.items():
        scale = step_scale(res, x, res.num_steps)
        epochs, cost = cost_points(res)
        (line,) = ax.plot(
            epochs * res.steps_per_epoch * scale,
            cost,
            "-o",
            ms=3 if len(cost) <= 61 else 0,
            lw=1.8,
            label=f"{name} ({res.num_steps:,} updates)",
        )
        if smooth:
            window = max(1, int(smooth) // res.log_every)
            steps = window_steps(res, len(res.losses))
            ax.plot(
                steps * scale,
                moving_average(res.losses, window),
                lw=0.8,
                alpha=0.45,
                color=line.get_color(),
                label="_nolegend_",
            )
    finish(ax, x, log, title=f"Full-data cost against {x}", ylabel="cost (full-data loss)")
    return ax
