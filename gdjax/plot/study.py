"""The view of a batch-size study: steps and examples to the target, and the best learning rate, against batch size.

Part of :mod:`gdjax.plot`; use it as ``gd.plot.study``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter, NullFormatter

from gdjax._study_report import edge
from gdjax._types import plural
from gdjax.study import StudyResult

__all__ = ["study"]

PANEL = (4.6, 3.9)  # inches per panel of a new figure
LEGEND_INCHES = 0.75  # the room below a new figure's panels for its shared legend
LEGEND_COLUMNS = 5
CHAR_INCHES, LABEL_GAP = 0.08, 0.05  # the width of a digit of a tick label, and the room between two labels
UNREACHED = 0.93  # where unreached batch sizes are drawn, as a fraction of the axes' height
OFF_AXIS = 4.0  # a marker line further than this factor beyond the batch sizes studied is named, not drawn


def study(result: StudyResult, *, ax: Sequence[Axes] | None = None) -> list[Axes]:
    """Steps and examples to reach the target, and the best learning rate, against batch size (log-log).

    Three panels: steps to the target (filled circles), examples to the
    target (filled squares), and the best learning rate at each batch size.
    The recommended batch size (:attr:`gdjax.StudyResult.recommended_batch_size`)
    is a gold star in every panel, and its tick is always labelled. Batch
    sizes that never reached the target are open red circles along the top of
    the first two panels (and open markers in the third: their best final
    loss's learning rate); when none reached it those panels say so and have
    no y scale. When measured, the noise scale ``B_simple`` is a vertical line
    (solid at the initial parameters, dotted where the target was reached)
    and the fitted critical batch size a dashed one, with McCandlish's fitted
    curves dashed through the points; the third panel has the stability limit
    ``2 / sharpness`` of full-batch gradient descent and the range of learning
    rates tried, and rings the best learning rates at the edge of that range
    (widen it). Batch sizes are plain numbers on a base-2 log axis; where the
    labels would crowd, the recommended batch size, the largest (``N``) and
    the powers of two keep theirs.

    A new figure has one legend for its three panels, below them; axes passed
    in ``ax`` get one each, placed where it covers the least.

    Args:
      result: a :class:`gdjax.StudyResult`.
      ax: three axes to draw on; None: a new figure with three panels in a row.

    Returns:
      The three axes (``gd.plot.save(axes, path)`` saves their figure).

    Example (skipped by the doctests: it compiles a sweep per batch size;
    ``tests/test_plot_study.py`` checks the figure):
      >>> import jax, numpy as np, optax, gdjax as gd
      >>> prob = gd.problems.linear_regression(n=256, d=4, key=jax.random.key(0))
      >>> m = gd.models.linear()
      >>> st = gd.study(m.loss, m.init(None, 4), optax.sgd, prob.data, batch_sizes=[4, 16, 64, 256],
      ...               learning_rates=np.geomspace(0.01, 1.5, 8), target=1.05 * prob.min_loss,
      ...               epochs=50, key=jax.random.key(1))  # doctest: +SKIP
      >>> axes = gd.plot.study(st)  # doctest: +SKIP
      >>> gd.plot.save(axes, "study.png")  # doctest: +SKIP
    """
    axes, ours = _axes(ax)
    b = np.asarray(result.batch_sizes, np.float64)
    reached = result.reached
    steps = np.array([np.nan if s is None else s for s in result.steps_to_target], np.float64)
    examples = np.array([np.nan if e is None else e for e in result.examples_to_target], np.float64)
    fitted = _fitted(result)
    span = _span(result, b)
    for panel, values, name, marker, curve in (
        (axes[0], steps, "steps", "o", None if fitted is None else fitted[0]),
        (axes[1], examples, "examples", "s", None if fitted is None else fitted[1]),
    ):
        if reached.any():
            label = f"{name} to the target"
            panel.plot(b[reached], values[reached], marker + "-", color="C0", ms=6, lw=1.4, label=label)
        if curve is not None:
            panel.plot(curve[0], curve[1], "--", color="C0", lw=1.1, alpha=0.7, label="McCandlish fit")
        _unreached(panel, b[~reached], result.epochs)
        _markers(panel, result, b)
        _pick(panel, result, values)
        if reached.any():
            panel.set_ylabel(f"{name} to the target (log scale)")
        else:
            panel.set_ylabel(f"{name} to the target")
            _nothing_reached(panel, result)
        _log_axes(panel, result, b, values[reached], span)
    _learning_rates(axes[2], result, b, span)
    titles = ("updates (steps) to the target", "examples processed to the target", "best learning rate")
    for panel, title in zip(axes, titles, strict=True):
        panel.set_title(title, fontsize="medium")
        panel.set_xlabel("batch size (log scale)")
        panel.grid(True, which="major", alpha=0.3)
        if not ours:
            panel.legend(fontsize="small", loc="best", framealpha=0.85, edgecolor="none")
    if ours:
        figure = axes[0].figure
        assert isinstance(figure, Figure)
        _shared_legend(figure, axes)
        figure.suptitle(
            f"Batch size study: target loss {result.target:.4g} (initial {result.initial_loss:.4g}), "
            f"{plural(result.num_examples, 'example')}, {plural(len(result.learning_rates), 'learning rate')}, at most "
            f"{plural(result.epochs, 'epoch')}; steps and examples counted in whole epochs",
            fontsize="medium",
        )
    return axes


def _shared_legend(figure: Figure, axes: list[Axes]) -> None:
    """One legend for the three panels, below them: each entry once (the vertical lines are in two panels)."""
    entries: dict[str, Any] = {}
    found = [pair for panel in axes for pair in zip(*panel.get_legend_handles_labels(), strict=True)]
    series = [pair for pair in found if pair[1].endswith("to the target")]  # steps, then examples: first
    for handle, label in series + [pair for pair in found if pair not in series]:
        entries.setdefault(label, handle)
    if entries:
        figure.legend(
            list(entries.values()),
            list(entries),
            loc="outside lower center",
            ncol=min(LEGEND_COLUMNS, len(entries)),
            fontsize="small",
            frameon=False,
        )


def _axes(ax: Sequence[Axes] | None) -> tuple[list[Axes], bool]:
    if ax is None:
        figure = Figure(figsize=(PANEL[0] * 3, PANEL[1] + 0.4 + LEGEND_INCHES), layout="constrained", dpi=110)
        return list(figure.subplots(1, 3)), True
    given: list[Axes] = [ax] if isinstance(ax, Axes) else list(ax)
    if len(given) != 3:
        raise ValueError(f"gd.plot.study draws three panels; ax has {len(given)} axes (pass three, or None).")
    return given, False


def _fitted(result: StudyResult) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None:
    """McCandlish's fitted curves over the batch sizes studied, or None without a fit."""
    if result.min_steps is None or result.min_examples is None or result.critical_batch_size is None:
        return None
    grid = np.geomspace(min(result.batch_sizes), max(result.batch_sizes), 200)
    crit = result.critical_batch_size
    return (grid, result.min_steps * (1 + crit / grid)), (grid, result.min_examples * (1 + grid / crit))


def _unreached(ax: Axes, b: np.ndarray, epochs: int) -> None:
    """Open markers along the top for the batch sizes that did not reach the target."""
    if len(b):
        ax.plot(
            b,
            np.full(len(b), UNREACHED),
            "o",
            mfc="none",
            mec="C3",
            ms=8,
            mew=1.5,
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            label=f"not reached in {plural(epochs, 'epoch')}",
        )


def _nothing_reached(ax: Axes, result: StudyResult) -> None:
    """The note in a panel with nothing to draw but the open markers: no batch size reached the target."""
    ax.text(
        0.5,
        0.45,
        f"no batch size reached the target {result.target:.4g}\nin {plural(result.epochs, 'epoch')}:\n"
        "raise the epochs or the target\n(open circles: the batch sizes tried)",
        transform=ax.transAxes,
        ha="center",
        va="center",
        color="C3",
        fontsize="medium",
        bbox={"facecolor": "white", "edgecolor": "C3", "alpha": 0.9, "boxstyle": "round"},
        zorder=6,
    )


def _pick_label(result: StudyResult) -> str:
    i = result.recommended_index
    assert i is not None
    return f"pick: batch size {result.batch_sizes[i]} (learning rate {result.best_learning_rates[i]:.3g})"


def _pick(ax: Axes, result: StudyResult, values: np.ndarray) -> None:
    """A gold star on the recommended batch size's point (the same label in every panel: one legend entry)."""
    i = result.recommended_index
    if i is None or not np.isfinite(values[i]):
        return
    ax.plot(
        [result.batch_sizes[i]],
        [values[i]],
        "*",
        ms=16,
        mfc="gold",
        mec="black",
        mew=0.8,
        zorder=5,
        label=_pick_label(result),
    )


def _marked(result: StudyResult) -> list[tuple[float, str, str, str]]:
    """The vertical lines: ``(value, style, colour, name)`` of the noise scales and the fitted critical batch size."""
    lines = (
        (result.noise_scale, "-", "C2", "B_simple at start"),
        (result.noise_scale_at_target, ":", "C2", "B_simple at target"),
        (result.critical_batch_size, "--", "C1", "fitted B_crit"),
    )
    return [(float(v), style, color, name) for v, style, color, name in lines if v is not None and np.isfinite(v)]


def _near(value: float, b: np.ndarray) -> bool:
    """Whether a vertical line is drawn: within :data:`OFF_AXIS` of the batch sizes (the axis widens to show it)."""
    return value > 0 and b.min() / OFF_AXIS <= value <= b.max() * OFF_AXIS


def _span(result: StudyResult, b: np.ndarray) -> tuple[float, float]:
    """The x range every panel shows: the batch sizes and the vertical lines drawn near them, a margin around."""
    near = [v for v, *_ in _marked(result) if _near(v, b)]
    low, high = min([float(b.min()), *near]), max([float(b.max()), *near])
    margin = max(max(high / low, 2.0) ** 0.06, 2**0.25)  # at least a quarter octave: markers clear of the frame
    return low / margin, high * margin


def _markers(ax: Axes, result: StudyResult, b: np.ndarray) -> None:
    """Vertical lines at the noise scales and the fitted critical batch size (named only, when far off the axis)."""
    for value, style, color, name in _marked(result):
        label = f"{name} = {value:.3g}"
        if _near(value, b):
            ax.axvline(value, ls=style, color=color, lw=1.5, label=label)
        else:
            ax.plot([], [], ls=style, color=color, label=label + " (off the axis)")


def _learning_rates(ax: Axes, result: StudyResult, b: np.ndarray, span: tuple[float, float]) -> None:
    lrs = np.array([np.nan if v is None else v for v in result.best_learning_rates], np.float64)
    reached = result.reached
    if reached.any():
        ax.plot(b[reached], lrs[reached], "D-", color="C4", ms=5, lw=1.4, label="best learning rate: fewest epochs")
    other = ~reached & np.isfinite(lrs)
    if other.any():
        ax.plot(b[other], lrs[other], "D", mfc="none", mec="C3", ms=7, mew=1.5, label="not reached: lowest final loss")
    at_edge = np.array([edge(result, i) is not None for i in range(len(b))], bool)
    if at_edge.any():
        ax.plot(
            b[at_edge],
            lrs[at_edge],
            "o",
            mfc="none",
            mec="C1",
            ms=19,
            mew=1.8,
            zorder=6,  # around the pick's star
            label="best rate at the edge of the range tried: widen it",
        )
    _pick(ax, result, lrs)
    tried = np.asarray(result.learning_rates, np.float64)
    ax.axhspan(tried.min(), tried.max(), color="0.5", alpha=0.08, label="learning rates tried")
    if result.sharpness is not None and result.sharpness > 0:
        ax.axhline(2 / result.sharpness, ls="--", color="C3", lw=1.2, label=f"2/sharpness = {2 / result.sharpness:.3g}")
    ax.set_ylabel("learning rate (log scale)")
    y = np.concatenate([lrs[np.isfinite(lrs)], [tried.min(), tried.max()]])
    _log_axes(ax, result, b, y, span, plain_y=False)


def _log_axes(
    ax: Axes, result: StudyResult, b: np.ndarray, y: np.ndarray, span: tuple[float, float], *, plain_y: bool = True
) -> None:
    """Base-2 log x axis with the batch sizes as plain numbers; log y axis (plain numbers for counts).

    Without a positive y value (no batch size reached the target) the y axis is left linear and unlabelled: a log
    scale with nothing on it cannot be drawn.
    """
    ax.set_xscale("log", base=2)
    ax.set_xlim(*span)
    figure = ax.get_figure(root=True)
    assert isinstance(figure, Figure)
    width = ax.get_position().width * figure.get_figwidth()  # inches, before the layout adjusts it a little
    pick = result.recommended_batch_size
    ticks = _labelled(b, width / np.log2(span[1] / span[0]), None if pick is None else float(pick))
    ax.set_xticks(ticks)
    ax.set_xticks([v for v in b if v not in ticks], minor=True)
    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.xaxis.set_minor_formatter(NullFormatter())
    y = y[np.isfinite(y) & (y > 0)]
    if not len(y):
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        return
    ax.set_yscale("log")
    if plain_y:
        ax.yaxis.set_major_formatter(_PlainLog())
        ax.yaxis.set_minor_formatter(_PlainLog(labelOnlyBase=False))
    low, high = y.min(), y.max()
    ax.set_ylim(low / 1.6, high * (2.5 if plain_y else 1.6))  # room at the top for the unreached markers


def _labelled(b: np.ndarray, inches_per_octave: float, pick: float | None = None) -> list[float]:
    """The batch sizes to label, so that no two labels touch; increasing.

    In order of preference: the recommended batch size ``pick`` (always labelled), the largest (the full batch,
    often not a power of two), the powers of two from the smallest up, then the others from the smallest up. Each
    is labelled if it clears every label already chosen.

    Example:
      >>> b = np.array([1.0, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 1797])
      >>> _labelled(b, 0.12), _labelled(b, 0.12, pick=1024.0)
      ([1.0, 4.0, 16.0, 64.0, 1797.0], [1.0, 4.0, 16.0, 64.0, 1024.0])
    """

    def fits(u: float, v: float) -> bool:
        low, high = min(u, v), max(u, v)
        needed = CHAR_INCHES * (len(_plain(low)) + len(_plain(high))) / 2 + LABEL_GAP
        return bool(np.log2(high / low) * inches_per_octave >= needed)

    values = [float(v) for v in b.tolist()]
    powers = [v for v in values if v == 2 ** round(np.log2(v))]
    order = ([] if pick is None else [pick]) + [values[-1], *powers, *values]
    out: list[float] = []
    for v in order:
        if v not in out and all(fits(u, v) for u in out):
            out.append(v)
    return sorted(out)


class _PlainLog(LogFormatter):
    """matplotlib's choice of which log ticks to label, each labelled as a plain number (5000, not 5 x 10^3)."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return _plain(x)


def _plain(value: float, _pos: Any = None) -> str:
    """A tick label as a plain number: 1, 2, 1024, 1797, 1000000, 0.5, 2e+09."""
    return f"{value:.0f}" if 1 <= value < 1e9 and value == round(value) else f"{value:g}"
