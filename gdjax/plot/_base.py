"""Shared pieces of the plots: axes, x units, moving averages (see :mod:`gdjax.plot`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gdjax._types import ceil_div
from gdjax.results import FitResult, SweepResult

X_LABELS = {
    "step": "update (step)",
    "epoch": "epoch (passes over the data)",
    "examples": "examples processed",
    "time": "wall time (s)",
}
RAW_ALPHA = 0.3
# matplotlib's log axes and log colour bars fail or overflow for values beyond about 1e-290 and 1e307: a
# hyperparameter outside this range is drawn as its log10 instead
LOG_SAFE = (1e-200, 1e200)
MAX_POINTS = 20_000  # a longer curve is thinned evenly for drawing


def moving_average(values: Any, window: int) -> np.ndarray:
    """Trailing mean over ``window`` entries; the first ``window - 1`` average what exists so far.

    A window holding NaN (or both infinities) averages to NaN and one holding
    ``inf`` to ``inf``, as ``np.mean`` would; the windows after it are not
    affected.

    Example:
      >>> moving_average([1.0, 2.0, 3.0, 4.0], 2).tolist()
      [1.0, 1.5, 2.5, 3.5]
      >>> moving_average([1.0, float("inf"), 3.0, 5.0], 2).tolist()
      [1.0, inf, inf, 4.0]
    """
    v = np.asarray(values, dtype=np.float64)
    if window < 1:
        raise ValueError(f"smooth must be at least 1; got {window}.")
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)

    def window_sums(a: np.ndarray) -> np.ndarray:
        csum = np.concatenate([[0.0], np.cumsum(a)])
        return csum[idx] - csum[lo]

    finite = np.isfinite(v)
    with np.errstate(over="ignore", invalid="ignore"):
        mean = window_sums(np.where(finite, v, 0.0)) / (idx - lo)
    if finite.all():
        return mean
    nan, pos, neg = (window_sums(m.astype(np.float64)) > 0 for m in (np.isnan(v), v == np.inf, v == -np.inf))
    mean[pos] = np.inf
    mean[neg] = -np.inf
    mean[nan | (pos & neg)] = np.nan
    return mean


def thin(count: int) -> np.ndarray:
    """Indices of at most about ``MAX_POINTS`` evenly spaced points of ``count``, the last one included."""
    if count <= MAX_POINTS:
        return np.arange(count)
    return np.unique(np.append(np.arange(0, count, ceil_div(count, MAX_POINTS)), count - 1))


def hp_axis(values: np.ndarray, name: str) -> tuple[np.ndarray, str, bool]:
    """How to draw a hyperparameter: ``(coordinates, axis label, log scale)``.

    Positive values go on a log scale; positive values beyond :data:`LOG_SAFE`
    as their log10 on a linear one; zero, negative or non-finite values on a
    linear scale.
    """
    label = axis_name(name)
    finite = values[np.isfinite(values)]
    if len(finite) and (finite > 0).all():
        if LOG_SAFE[0] <= finite.min() and finite.max() <= LOG_SAFE[1]:
            return values, label + " (log scale)", True
        return np.log10(values), f"log10 of the {label}", False
    return values, label, False


def save(ax: Axes | Sequence[Axes], path: Any) -> None:
    """Save the figure an ``Axes`` of gdjax's plots is drawn on (a top-level figure of its own).

    ``ax`` may be the list of panels :func:`gdjax.plot.history` returns.
    """
    figure = (ax if isinstance(ax, Axes) else ax[0]).figure
    assert isinstance(figure, Figure)
    figure.savefig(path)


def has_positive_data(ax: Axes) -> bool:
    """Whether some line drawn on ``ax`` has a finite positive y value (a log axis needs one)."""
    for line in ax.get_lines():
        y = np.asarray(line.get_ydata(), np.float64)
        if (np.isfinite(y) & (y > 0)).any():
            return True
    return False


def new_axes(ax: Axes | None, size: tuple[float, float] = (7.0, 4.5)) -> Axes:
    if ax is not None:
        return ax
    fig = Figure(figsize=size, layout="constrained", dpi=110)
    return fig.add_subplot()


def check_x(x: str) -> None:
    if x not in X_LABELS:
        raise ValueError(f"x must be one of {sorted(X_LABELS)}; got {x!r}.")


def step_scale(res: FitResult | SweepResult, x: str, num_steps: float) -> float:
    """Units of ``x`` per step."""
    if x == "step":
        return 1.0
    if x == "epoch":
        return 1.0 / res.steps_per_epoch
    if x == "examples":
        return res.examples_per_epoch / res.steps_per_epoch
    return res.wall_time / max(num_steps, 1)  # time: the compiled run's seconds, spread evenly over its steps


def window_steps(res: FitResult | SweepResult, count: int) -> np.ndarray:
    """Where each logged loss sits: after the updates before its window's last step.

    A step's loss is measured before its update, so step ``k`` (from 0) is
    drawn at ``k`` updates, where the full-data cost of epoch boundaries sits too.
    """
    return np.arange(1, count + 1) * res.log_every - 1


def label_axes(ax: Axes, x: str, log: bool, *, title: str, ylabel: str) -> None:
    """The x label of ``x``, the y label (and log scale when ``log``), the title and the grid."""
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel(ylabel + (" (log scale)" if log else ""))
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)


def finish(ax: Axes, x: str, log: bool, *, title: str, ylabel: str = "loss") -> None:
    log = log and has_positive_data(ax)  # no positive loss to show on a log axis: a linear one
    label_axes(ax, x, log, title=title, ylabel=ylabel)
    ax.legend(fontsize="small", frameon=False)


def swept(sw: SweepResult) -> dict[str, np.ndarray]:
    """Every per-member value a plot can put on an axis: the optimizer's hyperparameters, then the loss's."""
    return {**sw.hyperparams, **sw.loss_hyperparams}


def hp_values(sw: SweepResult, name: str) -> np.ndarray:
    values = swept(sw)
    if name not in values:
        raise ValueError(f"hyperparameter {name!r} was not swept; the sweep has {sorted(values)}.")
    return np.asarray(values[name], np.float64)


def is_loss(name: str) -> bool:
    """Whether an evaluated value is a loss, drawn on a log axis (``loss``, ``eval_loss``: names ending in ``loss``)."""
    return name.endswith("loss")


def loggable(values: Any) -> bool:
    """Whether values can go on a log axis: some are positive, and the finite ones are within :data:`LOG_SAFE`."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return bool((v > 0).any()) and bool((v > 0).all()) and LOG_SAFE[0] <= v.min() and v.max() <= LOG_SAFE[1]


def cost_points(res: FitResult) -> tuple[np.ndarray, np.ndarray]:
    """The full-data cost known for a run: ``(epochs, values)``, epoch 0 the initial loss, finite points only.

    ``epoch_losses`` is NaN at epochs that were not evaluated (``eval_every``
    other than 1); the final evaluation of such a run, taken when it finished,
    is in ``history["loss"]`` and fills its epoch.
    """
    cost = np.concatenate([[res.initial_loss], res.epoch_losses]).astype(np.float64)
    known = res.history.get("loss", np.full(len(res.history_epochs), np.nan))
    for epoch, value in zip(res.history_epochs, known, strict=True):
        if 0 < epoch < len(cost) and np.isnan(cost[epoch]):
            cost[epoch] = value
    keep = np.isfinite(cost)
    return np.arange(len(cost))[keep], cost[keep]


def axis_name(name: str) -> str:
    return "learning rate" if name == "learning_rate" else name
