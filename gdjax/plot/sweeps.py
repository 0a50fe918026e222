"""The views of a sweep: final loss against a hyperparameter, every member's curve, a grid heatmap.

Part of :mod:`gdjax.plot`; use them as ``gd.plot.sweep``, ``gd.plot.curves``
and ``gd.plot.heatmap``.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps, colors
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable

from gdjax.plot._base import (
    LOG_SAFE,
    X_LABELS,
    axis_name,
    check_x,
    has_positive_data,
    hp_axis,
    hp_values,
    moving_average,
    new_axes,
    step_scale,
    thin,
    window_steps,
)
from gdjax.results import SweepResult

__all__ = ["curves", "heatmap", "sweep"]


def sweep(result: SweepResult, *, hyperparam: str = "learning_rate", log: bool = True, ax: Axes | None = None) -> Axes:
    """Final full-data loss against a swept hyperparameter (log axes), diverged and best members marked.

    Members that diverged (or ended with a non-finite loss) are drawn as red
    crosses along the top of the axes; the best member is a star. With seeds,
    each member is a dot and the line follows the median over seeds.

    Any valid result can be drawn: the loss axis is linear when no loss is
    positive, a hyperparameter with zero or negative values is on a linear
    axis, and one beyond about 1e-200 or 1e200 is drawn as its log10.

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
    ax = new_axes(ax)
    raw = hp_values(result, hyperparam)
    values, xlabel, xlog = hp_axis(raw, hyperparam)
    final = np.asarray(result.final_loss, np.float64)
    ok = result.healthy
    cap, top = _caps(result, final, ok)
    over = ok & (final > cap)
    _draw_finals(ax, values, final, ok & ~over, seeds=result.seeds is not None)
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
            values[~ok], np.full((~ok).sum(), top), "x", ms=7, mew=2, color="C3", label=f"diverged ({int((~ok).sum())})"
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
            label=f"best: {axis_name(hyperparam)} {raw[best]:.3g}, loss {final[best]:.4g}",
        )
    if xlog:
        ax.set_xscale("log")
    log = log and has_positive_data(ax)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("final full-data loss" + (" (log scale)" if log else ""))
    ax.set_title(f"Sweep of {result.num_members} members: final loss against {axis_name(hyperparam)}")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", frameon=False)
    return ax


def _caps(result: SweepResult, final: np.ndarray, ok: np.ndarray) -> tuple[float, float]:
    """Where to draw members that blew up without overflowing (``cap``) and diverged ones (``top``).

    Blown-up members would stretch the axis: they are drawn at 10x the
    largest initial loss instead, and the diverged crosses above that.
    """
    start = np.asarray(result.initial_loss, np.float64)[ok]
    start = start[np.isfinite(start)]
    cap = 10 * float(start.max()) if len(start) and 0 < start.max() < 1e300 else np.inf
    if np.isfinite(cap):
        return cap, 1.5 * cap
    drawn = final[ok & ~(final > cap)]  # no usable initial loss: the crosses go above the highest loss drawn
    high = float(drawn.max()) if len(drawn) else 1.0
    return cap, 1.5 * high if 0 < high < 1e300 else high + 1.0


def _draw_finals(ax: Axes, values: np.ndarray, final: np.ndarray, shown: np.ndarray, *, seeds: bool) -> None:
    """The final losses drawn: a line through the median per value (over seeds), and a dot per member."""
    order = np.argsort(values, kind="stable")
    xs, ys, shows = values[order], final[order], shown[order]
    uniq = np.unique(xs[shows & np.isfinite(xs)])
    if not len(uniq):
        return
    med = np.array([np.median(ys[shows & (xs == u)]) for u in uniq])
    ax.plot(uniq, med, "-", lw=1.8, color="C0", label="final loss" + (" (median over seeds)" if seeds else ""))
    label = "each seed" if seeds else "_nolegend_"
    ax.plot(xs[shows], ys[shows], ".", ms=4 if seeds else 5, alpha=0.6, color="C0", label=label)


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

    A curve longer than 20,000 points is thinned evenly for drawing (after
    smoothing). Equal hyperparameter values share one colour, with no colour bar.

    Example:
      >>> import jax, numpy as np, optax, gdjax as gd
      >>> prob = gd.problems.linear_regression(n=256, d=4, key=jax.random.key(0))
      >>> m = gd.models.linear()
      >>> sw = gd.sweep(m.loss, m.init(None, 4), optax.sgd, gd.minibatch(prob.data, 32),
      ...               learning_rates=np.geomspace(0.001, 0.1, 8), epochs=3, key=jax.random.key(1))
      >>> len(gd.plot.curves(sw, smooth=10).get_lines())
      8
    """
    check_x(x)
    ax = new_axes(ax, size=(7.6, 4.5))
    values, label, logc = hp_axis(hp_values(result, hyperparam), hyperparam)
    finite = values[np.isfinite(values)]
    norm = None
    if len(finite) and finite.max() > finite.min() + 1e-9 * np.abs(finite).max():  # values that differ: a colour bar
        norm = colors.LogNorm(finite.min(), finite.max()) if logc else colors.Normalize(finite.min(), finite.max())
    cmap = colormaps["viridis"]
    steps = window_steps(result, result.losses.shape[1])
    keep = thin(len(steps))
    scale = step_scale(result, x, float(np.max(result.num_steps)))
    for k in np.argsort(values):
        curve = np.asarray(result.losses[k], np.float64)
        if smooth:
            curve = moving_average(curve, max(1, int(smooth) // result.log_every))
        shade = cmap(norm(values[k])) if norm is not None and np.isfinite(values[k]) else cmap(0.5)
        ax.plot(steps[keep] * scale, curve[keep], lw=1.0, color=shade, alpha=0.85 if not result.diverged[k] else 0.35)
    healthy = result.healthy
    log = log and has_positive_data(ax)
    if log and healthy.any() and result.losses.shape[1]:  # keep the view on the members that trained
        tops = np.asarray(result.initial_loss, np.float64)[healthy]
        tops = tops[np.isfinite(tops) & (tops > 0)]
        kept = np.where(np.isfinite(result.losses[healthy]), result.losses[healthy], np.inf)
        bottoms = kept.min(axis=1)
        bottoms = bottoms[np.isfinite(bottoms) & (bottoms > 0)]
        if len(bottoms) and len(tops) and bottoms.min() < tops.max() < 1e300:  # blow-ups leave through the top
            ax.set_ylim(bottoms.min() / 2, tops.max() * 10)
    if norm is not None:
        bar = ax.figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax)
        bar.set_label(label)
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel(("moving average of " if smooth else "") + "mini-batch loss" + (" (log scale)" if log else ""))
    if log:
        ax.set_yscale("log")
    ax.set_title(f"Loss curves of {result.num_members} members, coloured by {axis_name(hyperparam)}")
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
    ax = new_axes(ax, size=(7.2, 5.0))
    xv, yv = hp_values(result, x), hp_values(result, y)
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
    norm: colors.Normalize | None = None
    if len(finite) and LOG_SAFE[0] <= finite.min() and finite.max() <= LOG_SAFE[1]:
        norm = colors.LogNorm(finite.min(), finite.max()) if finite.min() < finite.max() else None
    elif len(finite) and finite.min() < finite.max():
        norm = colors.Normalize(finite.min(), finite.max())
    if norm is None:  # one value, or none at all: a plain colour scale around it
        centre = float(finite[0]) if len(finite) else 0.0
        norm = colors.Normalize(centre - (abs(centre) or 1.0), centre + (abs(centre) or 1.0))
    image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis_r", norm=norm)
    bar = ax.figure.colorbar(image, ax=ax)
    bar.set_label("final full-data loss" + (" (log scale)" if isinstance(norm, colors.LogNorm) else ""))
    for i, j in zip(*np.nonzero(bad), strict=True):
        ax.text(j, i, "x", ha="center", va="center", color="C3", fontsize=14, fontweight="bold")
    best = result.best_index
    if best is not None:
        ax.plot([np.searchsorted(xs, xv[best])], [np.searchsorted(ys, yv[best])], "*", ms=18, color="C1", mec="black")
    ax.set_xticks(range(len(xs)), [f"{v:.3g}" for v in xs], rotation=45 if len(xs) > 6 else 0)
    ax.set_yticks(range(len(ys)), [f"{v:.3g}" for v in ys])
    ax.set_xlabel(axis_name(x))
    ax.set_ylabel(axis_name(y))
    ax.set_title(f"Final loss over {axis_name(x)} x {axis_name(y)} (x: diverged, star: best)")
    return ax
