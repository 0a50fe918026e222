"""The evaluation history of a run: training and evaluation curves of each evaluated value against epochs.

Part of :mod:`gdjax.plot`; use it as ``gd.plot.history``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gdjax.plot._base import axis_name, is_loss, loggable, swept
from gdjax.results import FitResult, SweepResult

__all__ = ["history"]

EVAL = "eval_"
SPARSE = 40  # a curve with at most this many evaluations is drawn with markers
PANEL = (4.4, 3.4)  # inches per panel of a new figure
FEW_TICKS = 10  # at most this many evaluations: a tick at each


class Run(NamedTuple):
    """One run's evaluations, from a :class:`FitResult` or one member of a :class:`SweepResult`."""

    history: dict[str, np.ndarray]  # name -> (K,) scalar values only
    epochs: np.ndarray  # (K,)
    monitor: str
    mode: str
    best_epoch: int | None
    best_value: float | None
    stopped_early: bool
    num_epochs: int
    subject: str  # "" for a run, or "Member 3 of 8: learning rate 0.01"


def history(
    result: FitResult | SweepResult,
    names: str | Sequence[str] | None = None,
    *,
    member: int | None = None,
    log: bool = True,
    ax: Axes | Sequence[Axes] | None = None,
    color: Any = "C0",
) -> list[Axes]:
    """Training and evaluation curves of evaluated values against epochs, one panel per value.

    Each panel holds one base name of ``result.history`` (``"loss"``, each
    metric such as ``"acc"``, each scalar ``"aux/<name>"``): the value on the
    training data as a solid line and its ``"eval_"`` counterpart (with
    ``eval_data``) as a dashed line of the same colour, against
    ``history_epochs`` (the epochs after which they were evaluated; with
    markers when there are at most 40). Evaluations that are NaN (a sweep
    member that stopped before the others) are left out.

    Every panel has a dotted vertical line at ``best_epoch``, the epoch of the
    best evaluation of the monitored value (``result.monitor``), and the
    monitored curve a star there at ``best_value``. The title of a new figure
    names the monitor, its mode, the best value and epoch, and says when the
    run stopped early (``patience`` ran out); on axes passed as ``ax`` that
    note goes into the first panel's title.

    A :class:`gdjax.SweepResult` is drawn for one member, by default the best
    one (:attr:`~gdjax.SweepResult.best_index`, or member 0 when no member is
    healthy), with its hyperparameters in the title. To see every member's
    monitored curve at once, coloured by learning rate, use
    :func:`gdjax.plot.curves`.

    Args:
      result: a :class:`gdjax.FitResult` or :class:`gdjax.SweepResult`.
      names: the base names to draw, in this order (a name with the
        ``"eval_"`` prefix picks the same panel); None: every scalar value
        evaluated, in the order of ``result.history``.
      member: for a sweep, the member to draw (an index into its members);
        None: the best one.
      log: logarithmic axis for the panels of a loss (a name ending in
        ``loss``) where their values are positive; metrics are always linear.
      ax: one axes (for a single panel) or a sequence of axes, one per panel;
        None: a new figure with up to three panels a row.
      color: the colour of the curves.

    Returns:
      The axes of the panels, in the order of ``names``
      (``gd.plot.save(axes, path)`` saves their figure).

    Example:
      >>> import jax, jax.numpy as jnp, optax, gdjax as gd
      >>> prob = gd.problems.linear_regression(n=256, d=4, key=jax.random.key(0))
      >>> train = jax.tree.map(lambda a: a[:200], prob.data)
      >>> held_out = jax.tree.map(lambda a: a[200:], prob.data)
      >>> m = gd.models.linear()
      >>> mae = lambda p, ex: jnp.abs(m.apply(p, ex["x"]) - ex["y"])
      >>> res = gd.fit(m.loss, m.init(None, 4), optax.sgd, gd.minibatch(train, 32), epochs=10,
      ...              key=jax.random.key(1), learning_rate=0.05, eval_data=held_out,
      ...              metrics={"mae": mae}, patience=3)
      >>> axes = gd.plot.history(res)
      >>> [a.get_title() for a in axes]
      ['loss (monitored: eval_loss, min)', 'mae']
      >>> [line.get_label() for line in axes[1].get_lines()][:2]
      ['training', 'evaluation']
    """
    run = _run(result, member)
    panels = _panels(run, names)
    axes, ours = _axes(ax, len(panels))
    for base, panel in zip(panels, axes, strict=True):
        _panel(panel, run, base, log=log, color=color)
    note = _note(run)
    if ours:
        figure = axes[0].figure
        assert isinstance(figure, Figure)
        width = figure.get_figwidth()
        figure.suptitle("\n".join(textwrap.fill(line, int(width * 11)) for line in note.split("\n")), fontsize="medium")
    else:
        axes[0].set_title(f"{axes[0].get_title()}\n{note}", fontsize="medium")
    return axes


def _run(result: FitResult | SweepResult, member: int | None) -> Run:
    """The evaluations to draw: the run's own, or those of one member of a sweep."""
    epochs = np.asarray(result.history_epochs, np.int64)
    if isinstance(result, FitResult):
        if member is not None:
            raise ValueError("member= picks a member of a sweep; a FitResult is one run.")
        scalars = {k: np.asarray(v, np.float64) for k, v in result.history.items() if np.ndim(v) == 1}
        best_at, best_value = _best(result.best_epoch, result.best_value)
        return Run(
            scalars,
            epochs,
            result.monitor,
            result.mode,
            best_at,
            best_value,
            result.stopped_early,
            result.num_epochs,
            "",
        )
    count = result.num_members
    if member is None:
        best = result.best_index
        k = 0 if best is None else best
    elif isinstance(member, int | np.integer) and -count <= member < count:
        k = int(member) % count
    else:
        raise ValueError(f"member must be an index into the sweep's {count} members; got {member!r}.")
    scalars = {k2: np.asarray(v[k], np.float64) for k2, v in result.history.items() if np.ndim(v) == 2}
    best_at, best_value = _best(int(result.best_epoch[k]), float(result.best_value[k]))
    values = ", ".join(f"{axis_name(name)} {float(v[k]):.3g}" for name, v in swept(result).items())
    if result.seeds is not None:
        values += f", seed {int(result.seeds[k])}"
    which = " (the best)" if member is None and result.best_index == k else ""
    return Run(
        scalars,
        epochs,
        result.monitor,
        result.mode,
        best_at,
        best_value,
        bool(result.stopped_early[k]),
        int(result.num_epochs[k]),
        f"Member {k} of {count}{which}" + (f": {values}" if values else ""),
    )


def _best(epoch: int | None, value: float | None) -> tuple[int | None, float | None]:
    """The best evaluation's epoch and value, or ``(None, None)`` when there is none with a finite value."""
    if epoch is None or epoch < 0 or value is None or not np.isfinite(value):
        return None, None
    return int(epoch), float(value)


def _panels(run: Run, names: str | Sequence[str] | None) -> list[str]:
    """The base names to draw, each once."""
    bases = list(dict.fromkeys(name.removeprefix(EVAL) for name in run.history))
    if not bases:
        raise ValueError("the result has no history of scalar values to draw.")
    if names is None:
        return bases
    wanted = [names] if isinstance(names, str) else list(names)
    if not wanted:
        raise ValueError(f"names is empty; the values evaluated are {bases}.")
    out: list[str] = []
    for name in wanted:
        base = name.removeprefix(EVAL) if isinstance(name, str) else name
        if base not in bases:
            raise ValueError(f"{name!r} has no history of scalar values to draw; the values evaluated are {bases}.")
        if base not in out:
            out.append(base)
    return out


def _axes(ax: Axes | Sequence[Axes] | None, count: int) -> tuple[list[Axes], bool]:
    """The axes of the panels, and whether they are on a figure made here."""
    if ax is None:
        columns = min(count, 3)
        rows = -(-count // columns)
        size = (max(PANEL[0] * columns, 6.0), PANEL[1] * rows + 0.5)
        figure = Figure(figsize=size, layout="constrained", dpi=110)
        grid = figure.subplots(rows, columns, squeeze=False).ravel()
        for extra in grid[count:]:
            extra.remove()
        return list(grid[:count]), True
    given = [ax] if isinstance(ax, Axes) else list(ax)
    if len(given) != count:
        raise ValueError(f"there are {count} panels to draw; ax has {len(given)} axes (pass names= or one per panel).")
    return given, False


def _panel(ax: Axes, run: Run, base: str, *, log: bool, color: Any) -> None:
    """One base name: its training and evaluation curves, the best epoch marked."""
    drawn = []
    for name, style, label in ((base, "-", "training"), (EVAL + base, "--", "evaluation")):
        if name not in run.history:
            continue
        values = run.history[name]
        keep = np.isfinite(values)
        marker = "o" if keep.sum() <= SPARSE else ""
        ax.plot(run.epochs[keep], values[keep], style, marker=marker, ms=3.5, lw=1.6, color=color, label=label)
        drawn.append(values[keep])
    monitored = run.monitor.removeprefix(EVAL) == base
    if run.best_epoch is not None:
        ax.axvline(run.best_epoch, color="0.35", ls=":", lw=1.2, label=f"best epoch ({run.best_epoch})")
        if monitored and run.best_value is not None:
            ax.plot(
                [run.best_epoch],
                [run.best_value],
                "*",
                ms=14,
                color="C1",
                mec="black",
                zorder=5,
                label=f"best {run.monitor}: {run.best_value:.4g}",
            )
    shown = np.concatenate(drawn) if drawn else np.zeros(0)
    logy = log and is_loss(base) and loggable(shown)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(base + (" (log scale)" if logy else ""))
    if 0 < len(run.epochs) <= FEW_TICKS:  # a tick at each evaluation
        ax.set_xticks(run.epochs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(base + (f" (monitored: {run.monitor}, {run.mode})" if monitored else ""))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", frameon=False)


def _note(run: Run) -> str:
    """What was monitored, the best evaluation and whether the run stopped early (a sweep's member named first)."""
    if run.best_epoch is not None and run.best_value is not None:
        note = f"best {run.monitor} ({run.mode}) {run.best_value:.4g} after epoch {run.best_epoch}"
    else:
        note = f"no finite {run.monitor} evaluated"
    if run.stopped_early:
        note += f"; stopped early after epoch {run.num_epochs} (patience ran out)"
    return f"{run.subject}\n{note}" if run.subject else note
