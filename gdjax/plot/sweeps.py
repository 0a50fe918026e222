"""The views of a sweep: its ranking value against a hyperparameter, every member's curve, a grid heatmap.

Part of :mod:`gdjax.plot`; use them as ``gd.plot.sweep``, ``gd.plot.curves``
and ``gd.plot.heatmap``. A sweep ranks its members by the final full-data
loss, or by its ``monitor`` when one other than ``"loss"`` was given (or
``keep_best=True``): :attr:`gdjax.SweepResult.selection`. The plots show the
value the members are ranked by, named on the axes with its mode (``min`` or
``max``), so the star is always the member ``best_index`` picks.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from matplotlib import colormaps, colors
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable

from gdjax.plot._base import (
    LOG_SAFE,
    axis_name,
    check_x,
    has_positive_data,
    hp_axis,
    hp_values,
    is_loss,
    label_axes,
    loggable,
    moving_average,
    new_axes,
    step_scale,
    swept,
    thin,
    window_steps,
)
from gdjax.results import SweepResult

__all__ = ["curves", "heatmap", "sweep"]

SPARSE = 40  # a monitored curve with at most this many evaluations is drawn with markers


class Monitored(NamedTuple):
    """What a sweep ranks its members by, when it is not the final full-data loss."""

    values: np.ndarray  # (M,) the sweep's selection
    name: str  # the monitor, such as "eval_acc"
    what: str  # "final eval_acc", or "eval_acc at each member's best epoch" with keep_best
    mode: str  # "min" or "max"

    @property
    def label(self) -> str:
        return f"{self.what} ({self.mode})"


def monitored(result: SweepResult) -> Monitored | None:
    """The monitored value the members are ranked by, or None for the final full-data loss (the default plots)."""
    keep_best = result.best_epoch_params is not None
    if result.monitor == "loss" and not keep_best:
        return None
    what = f"{result.monitor} at each member's best epoch" if keep_best else f"final {result.monitor}"
    return Monitored(np.asarray(result.selection, np.float64), result.monitor, what, result.mode)


def sweep(result: SweepResult, *, hyperparam: str = "learning_rate", log: bool = True, ax: Axes | None = None) -> Axes:
    """The value the members are ranked by against a swept hyperparameter, diverged and best members marked.

    By default that is the final full-data loss (log axes). A sweep with a
    ``monitor`` other than ``"loss"`` (such as ``"eval_acc"``, or the default
    ``"eval_loss"`` with ``eval_data``) or with ``keep_best=True`` draws its
    :attr:`~gdjax.SweepResult.selection` instead, the axis named after the
    monitor and its mode (``"final eval_acc (max)"``); only a monitored loss
    (a name ending in ``loss``) goes on a log axis.

    Members that diverged (or ended with a non-finite loss) are drawn as red
    crosses along the top of the axes (the bottom for ``mode="max"``); the
    best member (:attr:`~gdjax.SweepResult.best_index`) is a star. With seeds,
    each member is a dot and the line follows the median over seeds.

    Any valid result can be drawn: the loss axis is linear when no loss is
    positive, a hyperparameter with zero or negative values is on a linear
    axis, and one beyond about 1e-200 or 1e200 is drawn as its log10.

    Args:
      result: a :class:`gdjax.SweepResult`.
      hyperparam: the x axis: an optimizer hyperparameter or a loss keyword
        (``loss_hyperparams``) that was swept.
      log: logarithmic loss axis (where there are positive losses).
      ax: axes to draw on; a new figure when None.

    Returns:
      The axes.

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
    rank = monitored(result)
    ok = result.healthy
    seeds = result.seeds is not None
    if rank is None:
        score = np.asarray(result.final_loss, np.float64)
        cap, top = _caps(result, score, ok)
        over = ok & (score > cap)
        _draw_finals(ax, values, score, ok & ~over, seeds=seeds, label="final loss")
        if over.any():
            ax.plot(
                values[over],
                np.full(over.sum(), cap),
                "^",
                ms=7,
                color="C4",
                label=f"above 10x the initial loss ({int(over.sum())})",
            )
        name, ylabel = "loss", "final full-data loss"
        title = f"Sweep of {result.num_members} members: final loss against {axis_name(hyperparam)}"
        logy = log
    else:
        score = rank.values
        shown = ok & np.isfinite(score)
        logy = log and is_loss(rank.name) and loggable(score[shown])
        _draw_finals(ax, values, score, shown, seeds=seeds, label=rank.what)
        top = _worst_end(score[shown], rank.mode, logy)
        name, ylabel = rank.name, rank.label
        title = f"Sweep of {result.num_members} members: {rank.name} against {axis_name(hyperparam)}"
    if (~ok).any():
        ax.plot(
            values[~ok], np.full((~ok).sum(), top), "x", ms=7, mew=2, color="C3", label=f"diverged ({int((~ok).sum())})"
        )
    best = result.best_index
    if best is not None:
        ax.plot(
            [values[best]],
            [score[best]],
            "*",
            ms=16,
            color="C1",
            mec="black",
            zorder=5,
            label=f"best: {axis_name(hyperparam)} {raw[best]:.3g}, {name} {score[best]:.4g}",
        )
    if xlog:
        ax.set_xscale("log")
    logy = logy and has_positive_data(ax)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + (" (log scale)" if logy else ""))
    ax.set_title(title)
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


def _worst_end(drawn: np.ndarray, mode: str, log: bool) -> float:
    """Where diverged members go on a monitored axis: beyond the worst value drawn (above for min, below for max)."""
    if not len(drawn):
        return 1.0
    lo, hi = float(drawn.min()), float(drawn.max())
    if log:  # every value drawn is positive
        return hi * 1.5 if mode == "min" else lo / 1.5
    margin = 0.08 * (hi - lo) if hi > lo else 0.1 * abs(hi) or 0.1
    return hi + margin if mode == "min" else lo - margin


def _draw_finals(
    ax: Axes, values: np.ndarray, final: np.ndarray, shown: np.ndarray, *, seeds: bool, label: str
) -> None:
    """The values drawn: a line through the median per hyperparameter value (over seeds), and a dot per member."""
    order = np.argsort(values, kind="stable")
    xs, ys, shows = values[order], final[order], shown[order]
    uniq = np.unique(xs[shows & np.isfinite(xs)])
    if not len(uniq):
        return
    med = np.array([np.median(ys[shows & (xs == u)]) for u in uniq])
    ax.plot(uniq, med, "-", lw=1.8, color="C0", label=label + (" (median over seeds)" if seeds else ""))
    dots = "each seed" if seeds else "_nolegend_"
    ax.plot(xs[shows], ys[shows], ".", ms=4 if seeds else 5, alpha=0.6, color="C0", label=dots)


def curves(
    result: SweepResult,
    *,
    hyperparam: str = "learning_rate",
    x: str | None = None,
    smooth: int | None = None,
    log: bool = True,
    ax: Axes | None = None,
) -> Axes:
    """Every member's curve, coloured by a swept hyperparameter, with a colour bar.

    By default the curves are the mini-batch losses against updates
    (``x="step"``). A sweep ranked by a monitored value (a ``monitor`` other
    than ``"loss"``, or ``keep_best=True``; see :func:`sweep`) draws each
    member's ``history[monitor]`` at its evaluations instead (against epochs
    by default; with markers when there are at most 40 evaluations; the
    evaluations after a member stopped are left out, and ``smooth`` does not
    apply), and marks the best member (:attr:`~gdjax.SweepResult.best_index`)
    with a thick line and a star at the value it was ranked by.

    A curve longer than 20,000 points is thinned evenly for drawing (after
    smoothing). Equal hyperparameter values share one colour, with no colour bar.

    Args:
      result: a :class:`gdjax.SweepResult`.
      hyperparam: the colour: an optimizer hyperparameter or a loss keyword that was swept.
      x: ``"step"``, ``"epoch"``, ``"examples"`` or ``"time"``; None: ``"step"``
        for the losses, ``"epoch"`` for a monitored value.
      smooth: draw the moving average of the mini-batch losses over this many updates.
      log: logarithmic loss axis (a monitored value only when it is a loss).
      ax: axes to draw on; a new figure when None.

    Returns:
      The axes.

    Example:
      >>> import jax, numpy as np, optax, gdjax as gd
      >>> prob = gd.problems.linear_regression(n=256, d=4, key=jax.random.key(0))
      >>> m = gd.models.linear()
      >>> sw = gd.sweep(m.loss, m.init(None, 4), optax.sgd, gd.minibatch(prob.data, 32),
      ...               learning_rates=np.geomspace(0.001, 0.1, 8), epochs=3, key=jax.random.key(1))
      >>> len(gd.plot.curves(sw, smooth=10).get_lines())
      8
    """
    rank = monitored(result)
    x = x if x is not None else ("step" if rank is None else "epoch")
    check_x(x)
    ax = new_axes(ax, size=(7.6, 4.5))
    values, label, logc = hp_axis(hp_values(result, hyperparam), hyperparam)
    finite = values[np.isfinite(values)]
    norm = None
    if len(finite) and finite.max() > finite.min() + 1e-9 * np.abs(finite).max():  # values that differ: a colour bar
        norm = colors.LogNorm(finite.min(), finite.max()) if logc else colors.Normalize(finite.min(), finite.max())
    cmap = colormaps["viridis"]
    scale = step_scale(result, x, float(np.max(result.num_steps)))
    shades = [cmap(norm(v)) if norm is not None and np.isfinite(v) else cmap(0.5) for v in values]
    if rank is None:
        log = _loss_curves(result, ax, shades, np.argsort(values), scale, smooth, log)
        ylabel = ("moving average of " if smooth else "") + "mini-batch loss"
        title = f"Loss curves of {result.num_members} members, coloured by {axis_name(hyperparam)}"
    else:
        _monitored_curves(result, rank, ax, shades, np.argsort(values), scale, hyperparam)
        log = log and is_loss(rank.name) and loggable(result.history[rank.name])
        ylabel = f"{rank.name} ({rank.mode})"
        title = f"{rank.name} of {result.num_members} members, coloured by {axis_name(hyperparam)}"
    if norm is not None:
        bar = ax.figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax)
        bar.set_label(label)
    label_axes(ax, x, log, title=title, ylabel=ylabel)
    return ax


def _loss_curves(
    result: SweepResult, ax: Axes, shades: list, order: np.ndarray, scale: float, smooth: int | None, log: bool
) -> bool:
    """Each member's mini-batch losses; returns whether the loss axis is logarithmic."""
    steps = window_steps(result, result.losses.shape[1])
    keep = thin(len(steps))
    for k in order:
        curve = np.asarray(result.losses[k], np.float64)
        if smooth:
            curve = moving_average(curve, max(1, int(smooth) // result.log_every))
        ax.plot(
            steps[keep] * scale, curve[keep], lw=1.0, color=shades[k], alpha=0.85 if not result.diverged[k] else 0.35
        )
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
    return log


def _monitored_curves(
    result: SweepResult, rank: Monitored, ax: Axes, shades: list, order: np.ndarray, scale: float, hyperparam: str
) -> None:
    """Each member's monitored value at its evaluations, the best member thick and starred."""
    epochs = np.asarray(result.history_epochs, np.int64)
    xs = epochs * result.steps_per_epoch * scale
    table = np.asarray(result.history[rank.name], np.float64)
    marker = "o" if len(epochs) <= SPARSE else ""
    for k in order:
        keep = np.isfinite(table[k])
        alpha = 0.85 if not result.diverged[k] else 0.35
        ax.plot(xs[keep], table[k][keep], marker=marker, ms=2.5, lw=1.0, color=shades[k], alpha=alpha)
    best = result.best_index
    if best is None:
        return
    keep = np.isfinite(table[best])
    name = axis_name(hyperparam)
    ax.plot(
        xs[keep],
        table[best][keep],
        marker=marker,
        ms=3.5,
        lw=2.6,
        color=shades[best],
        zorder=4,
        label=f"best: {name} {hp_values(result, hyperparam)[best]:.3g}",
    )
    at = int(result.best_epoch[best]) if result.best_epoch_params is not None else -1
    where = np.flatnonzero(keep & (epochs == at)) if at >= 0 else np.flatnonzero(keep)[-1:]  # its best or final
    if len(where):
        ax.plot(
            [xs[where[-1]]],
            [rank.values[best]],
            "*",
            ms=15,
            color="C1",
            mec="black",
            zorder=5,
            label=f"its {rank.name}: {rank.values[best]:.4g}" + (f" (best epoch {at})" if at >= 0 else " (final)"),
        )
    ax.legend(fontsize="small", frameon=False)


def heatmap(result: SweepResult, *, x: str = "learning_rate", y: str | None = None, ax: Axes | None = None) -> Axes:
    """The ranking value over a two-hyperparameter grid (``grid=True``); diverged cells crossed, the best starred.

    By default the colour is the final full-data loss (a log colour scale,
    lower is brighter); a sweep ranked by a monitored value (see
    :func:`sweep`) shows its :attr:`~gdjax.SweepResult.selection`, the colour
    bar named after the monitor and its mode, the better values brighter.
    Either axis may be an optimizer hyperparameter or a loss keyword
    (``loss_hyperparams``, such as an ``l2`` penalty). With seeds, each cell
    shows the median over seeds.

    Args:
      result: a grid :class:`gdjax.SweepResult`.
      x: the hyperparameter along the columns.
      y: the one along the rows; None: the other one that takes several values.
      ax: axes to draw on; a new figure when None.

    Returns:
      The axes.

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
        others = [k for k, v in swept(result).items() if k != x and len(np.unique(v)) > 1]
        if len(others) != 1:
            raise ValueError(
                f"heatmap needs two swept hyperparameters; pass y= one of {others or sorted(swept(result))}."
            )
        y = others[0]
    ax = new_axes(ax, size=(7.2, 5.0))
    xv, yv = hp_values(result, x), hp_values(result, y)
    xs, ys = np.unique(xv), np.unique(yv)
    rank = monitored(result)
    final = np.where(result.healthy, result.final_loss if rank is None else rank.values, np.nan)
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
    logs = rank is None or is_loss(rank.name)
    if logs and len(finite) and LOG_SAFE[0] <= finite.min() and finite.max() <= LOG_SAFE[1]:
        norm = colors.LogNorm(finite.min(), finite.max()) if finite.min() < finite.max() else None
    elif len(finite) and finite.min() < finite.max():
        norm = colors.Normalize(finite.min(), finite.max())
    if norm is None:  # one value, or none at all: a plain colour scale around it
        centre = float(finite[0]) if len(finite) else 0.0
        norm = colors.Normalize(centre - (abs(centre) or 1.0), centre + (abs(centre) or 1.0))
    cmap = "viridis" if rank is not None and rank.mode == "max" else "viridis_r"  # the better, the brighter
    image = ax.imshow(grid, origin="lower", aspect="auto", cmap=cmap, norm=norm)
    bar = ax.figure.colorbar(image, ax=ax)
    scale = " (log scale)" if isinstance(norm, colors.LogNorm) else ""
    bar.set_label(("final full-data loss" if rank is None else rank.label) + scale)
    for i, j in zip(*np.nonzero(bad), strict=True):
        ax.text(j, i, "x", ha="center", va="center", color="C3", fontsize=14, fontweight="bold")
    best = result.best_index
    if best is not None:
        ax.plot([np.searchsorted(xs, xv[best])], [np.searchsorted(ys, yv[best])], "*", ms=18, color="C1", mec="black")
    ax.set_xticks(range(len(xs)), [f"{v:.3g}" for v in xs], rotation=45 if len(xs) > 6 else 0)
    ax.set_yticks(range(len(ys)), [f"{v:.3g}" for v in ys])
    ax.set_xlabel(axis_name(x))
    ax.set_ylabel(axis_name(y))
    shown = "Final loss" if rank is None else f"{rank.name} ({rank.mode})"
    ax.set_title(f"{shown} over {axis_name(x)} x {axis_name(y)} (x: diverged, star: best)")
    return ax
