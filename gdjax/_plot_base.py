"""Shared pieces of the plots: axes, x units, moving averages (see :mod:`gdjax.plot`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gdjax.loop import FitResult
from gdjax.sweep_result import SweepResult

X_LABELS = {
    "step": "update (step)",
    "epoch": "epoch (passes over the data)",
    "examples": "examples processed",
    "time": "wall time (s)",
}
RAW_ALPHA = 0.3


def moving_average(values: Any, window: int) -> np.ndarray:
    """Trailing mean over ``window`` entries; the first ``window - 1`` average what exists so far.

    Example:
      >>> moving_average([1.0, 2.0, 3.0, 4.0], 2).tolist()
      [1.0, 1.5, 2.5, 3.5]
    """
    v = np.asarray(values, dtype=np.float64)
    if window < 1:
        raise ValueError(f"smooth must be at least 1; got {window}.")
    csum = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


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


def finish(ax: Axes, x: str, log: bool, *, title: str, ylabel: str = "loss") -> None:
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel(ylabel + (" (log scale)" if log else ""))
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", frameon=False)


def hp_values(sw: SweepResult, name: str) -> np.ndarray:
    if name not in sw.hyperparams:
        raise ValueError(f"hyperparameter {name!r} was not swept; the sweep has {sorted(sw.hyperparams)}.")
    return np.asarray(sw.hyperparams[name], np.float64)


def axis_name(name: str) -> str:
    return "learning rate" if name == "learning_rate" else name
