"""The textbook's views of a training run, drawn with matplotlib.

Imported lazily (``gd.plot`` on first use; ``import gdjax`` alone does not
import matplotlib). Figures are made with ``matplotlib.figure.Figure``, not
pyplot, so they work under any backend (Agg included) and never open windows.
Every function takes an optional ``ax`` and returns the axes it drew on; save
with ``ax.figure.savefig("cost.png")``.

* :func:`losses`: the cost curve of one run against steps, epochs, examples
  or seconds, with a moving average over the noisy mini-batch losses and the
  full-data cost of each epoch as markers.
* :func:`compare`: several runs on one axes (batch, stochastic, mini-batch).
* :func:`sweep`: final loss against the learning rate, diverged members and
  the best one marked; :func:`curves`: every member's curve coloured by its
  learning rate; :func:`heatmap`: final loss over a two-hyperparameter grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib import colormaps, colors
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from gdjax.loop import FitResult
from gdjax.sweep_result import SweepResult

__all__ = ["compare", "curves", "heatmap", "losses", "moving_average", "sweep"]

_X_LABELS = {
    "step": "update (step)",
    "epoch": "epoch (passes over the data)",
    "examples": "examples processed",
    "time": "wall time (s)",
}
_RAW_ALPHA = 0.3


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


def _new_axes(ax: Axes | None, size: tuple[float, float] = (7.0, 4.5)) -> Axes:
    if ax is not None:
        return ax
    fig = Figure(figsize=size, layout="constrained", dpi=110)
    return fig.add_subplot()


def _check_x(x: str) -> None:
    if x not in _X_LABELS:
        raise ValueError(f"x must be one of {sorted(_X_LABELS)}; got {x!r}.")


def _step_scale(res: FitResult | SweepResult, x: str, num_steps: float) -> float:
    """Units of ``x`` per step."""
    if x == "step":
        return 1.0
    if x == "epoch":
        return 1.0 / res.steps_per_epoch
    if x == "examples":
        return res.examples_per_epoch / res.steps_per_epoch
    return res.wall_time / max(num_steps, 1)  # time: the compiled run's seconds, spread evenly over its steps


def _window_steps(res: FitResult | SweepResult, count: int) -> np.ndarray:
    """Where each logged loss sits: after the updates before its window's last step.

    A step's loss is measured before its update, so step ``k`` (from 0) is
    drawn at ``k`` updates, where the full-data cost of epoch boundaries sits too.
    """
    return np.arange(1, count + 1) * res.log_every - 1


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
    _check_x(x)
    ax = _new_axes(ax)
    name = label or "run"
    scale = _step_scale(result, x, result.num_steps)
    steps = _window_steps(result, len(result.losses))
    raw = np.asarray(result.losses, np.float64)
    if smooth:
        window = max(1, int(smooth) // result.log_every)
        (line,) = ax.plot(steps * scale, raw, lw=0.6, alpha=_RAW_ALPHA, color=color, label=f"{name}: mini-batch loss")
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
            shown = np.concatenate([average[first:], [result.initial_loss], result.epoch_losses])
            shown = shown[np.isfinite(shown) & (shown > 0)]
            if len(shown):
                ax.set_ylim(shown.min() / 20, shown.max() * 3)
    else:
        (line,) = ax.plot(steps * scale, raw, lw=1.0, color=color, label=f"{name}: mini-batch loss")
    epoch_steps = np.arange(0, result.num_epochs + 1) * result.steps_per_epoch
    cost = np.concatenate([[result.initial_loss], result.epoch_losses])
    ax.plot(
        epoch_steps * scale,
        cost,
        "o",
        ms=5,
        mfc="white",
        mew=1.5,
        color=line.get_color(),
        label=f"{name}: full-data cost after each epoch",
    )
    _finish(ax, x, log, title=f"Cost against {x if x != 'time' else 'time'}")
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
    in the same colour.

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
    _check_x(x)
    if not results:
        raise ValueError("results is empty: pass a mapping such as {'batch GD': res1, 'SGD': res2}.")
    ax = _new_axes(ax)
    for name, res in results.items():
        scale = _step_scale(res, x, res.num_steps)
        epoch_steps = np.arange(0, res.num_epochs + 1) * res.steps_per_epoch
        cost = np.concatenate([[res.initial_loss], res.epoch_losses])
        (line,) = ax.plot(
            epoch_steps * scale,
            cost,
            "-o",
            ms=3 if res.num_epochs <= 60 else 0,
            lw=1.8,
            label=f"{name} ({res.num_steps:,} updates)",
        )
        if smooth:
            window = max(1, int(smooth) // res.log_every)
            steps = _window_steps(res, len(res.losses))
            ax.plot(
                steps * scale,
                moving_average(res.losses, window),
                lw=0.8,
                alpha=0.45,
                color=line.get_color(),
                label="_nolegend_",
            )
    _finish(ax, x, log, title=f"Full-data cost against {x}", ylabel="cost (full-data loss)")
    return ax


def _finish(ax: Axes, x: str, log: bool, *, title: str, ylabel: str = "loss") -> None:
    ax.set_xlabel(_X_LABELS[x])
    ax.set_ylabel(ylabel + (" (log scale)" if log else ""))
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", frameon=False)


def _hp(sw: SweepResult, name: str) -> np.ndarray:
    if name not in sw.hyperparams:
        raise ValueError(f"hyperparameter {name!r} was not swept; the sweep has {sorted(sw.hyperparams)}.")
    return np.asarray(sw.hyperparams[name], np.float64)


def _label(name: str) -> str:
    return "learning rate" if name == "learning_rate" else name


def sweep(result: SweepResult, *, hyperparam: str = "learning_rate", log: bool = True, ax: Axes | None = None) -> Axes:
    """Final full-data loss against a swept hyperparameter (log axes), diverged and best members marked.

    Members that diverged (or ended with a non-finite loss) are drawn as red
    crosses along the top of the axes; the best member is a star. With seeds,
    each member is a dot and the line follows the median over seeds.

    Example:
      >>> import jax, numpy as np, optax, gdjax as gd
      >>> prob = gd.problems.linear_regression(n=256, d=4, key=jax.random.key(0))
      >>> m = gd.models.linear()
      >>> sw = gd.sweep(m.loss, m.init(None, 4), optax.sgd, gd.full_batch(prob.data),
      ...               learning_rates=np.geomspace(0.01, 10, 16), epochs=30, key=jax.random.key(1))
      >>> ax = gd.plot.sweep(sw)
      >>> ax.get_xscale(), ax.get_yscale()
      ('log', 'log')
    """
    ax = _new_axes(ax)
    values = _hp(result, hyperparam)
    final = np.asarray(result.final_loss, np.float64)
    ok = result.healthy
    # members that blew up without overflowing yet would stretch the axis: draw them at a cap instead
    cap = 10 * float(np.max(np.asarray(result.initial_loss)[ok])) if ok.any() else 1.0
    over = ok & (final > cap)
    shown = ok & ~over
    order = np.argsort(values, kind="stable")
    xs, ys, shows = values[order], final[order], shown[order]
    uniq = np.unique(xs[shows])
    if len(uniq):
        med = np.array([np.median(ys[shows & (xs == u)]) for u in uniq])
        label = "final loss" + (" (median over seeds)" if result.seeds is not None else "")
        ax.plot(uniq, med, "-", lw=1.8, color="C0", label=label)
        ax.plot(
            xs[shows],
            ys[shows],
            ".",
            ms=4 if result.seeds is not None else 5,
            alpha=0.6,
            color="C0",
            label="each seed" if result.seeds is not None else "_nolegend_",
        )
    if over.any():
        ax.plot(
            values[over],
            np.full(over.sum(), cap),
            "^",
            ms=7,
            color="C4",
            label=f"above 10x the initial loss ({int(over.sum())})",
        )
    if (~ok).any():
        ax.plot(
            values[~ok],
            np.full((~ok).sum(), cap * 1.5),
            "x",
            ms=7,
            mew=2,
            color="C3",
            label=f"diverged ({int((~ok).sum())})",
        )
    best = result.best_index
    if best is not None:
        ax.plot(
            [values[best]],
            [final[best]],
            "*",
            ms=16,
            color="C1",
            mec="black",
            zorder=5,
            label=f"best: {_label(hyperparam)} {values[best]:.3g}, loss {final[best]:.4g}",
        )
    ax.set_xscale("log")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(_label(hyperparam) + " (log scale)")
    ax.set_ylabel("final full-data loss" + (" (log scale)" if log else ""))
    ax.set_title(f"Sweep of {result.num_members} members: final loss against {_label(hyperparam)}")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", frameon=False)
    return ax


def curves(
    result: SweepResult,
    *,
    hyperparam: str = "learning_rate",
    x: str = "step",
    smooth: int | None = None,
    log: bool = True,
    ax: Axes | None = None,
) -> Axes:
    """Every member's loss curve, coloured by a swept hyperparameter, with a colour bar.

    Example:
      >>> import jax, numpy as np, optax, gdjax as gd
      >>> prob = gd.problems.linear_regression(n=256, d=4, key=jax.random.key(0))
      >>> m = gd.models.linear()
      >>> sw = gd.sweep(m.loss, m.init(None, 4), optax.sgd, gd.minibatch(prob.data, 32),
      ...               learning_rates=np.geomspace(0.001, 0.1, 8), epochs=3, key=jax.random.key(1))
      >>> len(gd.plot.curves(sw, smooth=10).get_lines())
      8
    """
    _check_x(x)
    ax = _new_axes(ax, size=(7.6, 4.5))
    values = _hp(result, hyperparam)
    positive = values[values > 0]
    norm = colors.LogNorm(positive.min(), positive.max()) if len(positive) and positive.min() < positive.max() else None
    cmap = colormaps["viridis"]
    steps = _window_steps(result, result.losses.shape[1])
    for k in np.argsort(values):
        curve = np.asarray(result.losses[k], np.float64)
        if smooth:
            curve = moving_average(curve, max(1, int(smooth) // result.log_every))
        scale = _step_scale(result, x, float(np.max(result.num_steps)))
        shade = cmap(norm(values[k])) if norm is not None else cmap(0.5)
        ax.plot(steps * scale, curve, lw=1.0, color=shade, alpha=0.85 if not result.diverged[k] else 0.35)
    healthy = result.healthy
    if log and healthy.any():  # keep the view on the members that trained; blow-ups leave through the top
        tops = np.asarray(result.initial_loss)[healthy]
        kept = np.where(np.isfinite(result.losses[healthy]), result.losses[healthy], np.inf)
        bottoms = kept.min(axis=1)
        bottoms = bottoms[np.isfinite(bottoms) & (bottoms > 0)]
        if len(bottoms):
            ax.set_ylim(bottoms.min() / 2, tops.max() * 10)
    if norm is not None:
        bar = ax.figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax)
        bar.set_label(_label(hyperparam) + " (log scale)")
    ax.set_xlabel(_X_LABELS[x])
    ax.set_ylabel(("moving average of " if smooth else "") + "mini-batch loss" + (" (log scale)" if log else ""))
    if log:
        ax.set_yscale("log")
    ax.set_title(f"Loss curves of {result.num_members} members, coloured by {_label(hyperparam)}")
    ax.grid(True, which="major", alpha=0.3)
    return ax


def heatmap(result: SweepResult, *, x: str = "learning_rate", y: str | None = None, ax: Axes | None = None) -> Axes:
    """Final loss over a two-hyperparameter grid (``grid=True``); diverged cells crossed, the best starred.

    With seeds, each cell shows the median over seeds.

    Example:
      >>> import jax, optax, gdjax as gd
      >>> prob = gd.problems.linear_regression(n=256, d=4, key=jax.random.key(0))
      >>> m = gd.models.linear()
      >>> sw = gd.sweep(m.loss, m.init(None, 4), optax.sgd, gd.minibatch(prob.data, 32),
      ...               learning_rates=[0.01, 0.1, 1.0], hyperparams={"momentum": [0.0, 0.5, 0.9]},
      ...               grid=True, epochs=2, key=jax.random.key(1))
      >>> gd.plot.heatmap(sw, y="momentum").get_ylabel()
      'momentum'
    """
    if y is None:
        others = [k for k in result.hyperparams if k != x and len(np.unique(result.hyperparams[k])) > 1]
        if len(others) != 1:
            raise ValueError(
                f"heatmap needs two swept hyperparameters; pass y= one of {others or sorted(result.hyperparams)}."
            )
        y = others[0]
    ax = _new_axes(ax, size=(7.2, 5.0))
    xv, yv = _hp(result, x), _hp(result, y)
    xs, ys = np.unique(xv), np.unique(yv)
    final = np.where(result.healthy, result.final_loss, np.nan)
    grid = np.full((len(ys), len(xs)), np.nan)
    bad = np.zeros_like(grid, dtype=bool)
    for i, yy in enumerate(ys):
        for j, xx in enumerate(xs):
            cell = (xv == xx) & (yv == yy)
            if cell.any():
                vals = final[cell]
                grid[i, j] = np.median(vals[np.isfinite(vals)]) if np.isfinite(vals).any() else np.nan
                bad[i, j] = not np.isfinite(vals).any()
    finite = grid[np.isfinite(grid)]
    norm = (
        colors.LogNorm(finite.min(), finite.max())
        if len(finite) and finite.min() > 0 and finite.min() < finite.max()
        else None
    )
    image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis_r", norm=norm)
    bar = ax.figure.colorbar(image, ax=ax)
    bar.set_label("final full-data loss" + (" (log scale)" if norm is not None else ""))
    for i, j in zip(*np.nonzero(bad), strict=True):
        ax.text(j, i, "x", ha="center", va="center", color="C3", fontsize=14, fontweight="bold")
    best = result.best_index
    if best is not None:
        ax.plot([np.searchsorted(xs, xv[best])], [np.searchsorted(ys, yv[best])], "*", ms=18, color="C1", mec="black")
    ax.set_xticks(range(len(xs)), [f"{v:.3g}" for v in xs], rotation=45 if len(xs) > 6 else 0)
    ax.set_yticks(range(len(ys)), [f"{v:.3g}" for v in ys])
    ax.set_xlabel(_label(x))
    ax.set_ylabel(_label(y))
    ax.set_title(f"Final loss over {_label(x)} x {_label(y)} (x: diverged, star: best)")
    return ax
