"""The demo job behind ``gdjax demo``: the three gradient descents side by side, then a sweep.

The same linear regression (built-in synthetic data with a known least-squares
answer) is trained by batch gradient descent, stochastic gradient descent and
mini-batch gradient descent; then 64 learning rates of batch gradient
descent, spread across the stability limit 2/L, are swept in one compiled
program. A table reports the updates, time
and final cost of each run and the best learning rate; with an output folder
the comparison and sweep figures are written there.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import optax

from gdjax import models, problems
from gdjax.data import full_batch, minibatch, stochastic
from gdjax.fit import fit
from gdjax.results import FitResult, SweepResult
from gdjax.sweep import sweep

__all__ = ["Demo", "Variant", "format_table", "run_demo", "run_variants", "write_figures"]


class Variant(NamedTuple):
    """One way of running gradient descent in the demo."""

    name: str
    result: FitResult


class Demo(NamedTuple):
    """Everything the demo computed."""

    problem: problems.Regression
    variants: list[Variant]
    sweep: SweepResult


def run_variants(
    n: int = 4096, d: int = 16, *, seed: int = 0, batch_size: int = 32, progress: bool = False
) -> tuple[problems.Regression, list[Variant]]:
    """Train one regression three ways and return the problem and the runs.

    Step sizes: batch GD takes ``1 / L`` (a safe constant step for this
    quadratic), mini-batch ``0.5 / L`` and SGD ``0.05 / L``, since noisier
    gradients need smaller steps to settle.

    Example:
      >>> prob, runs = run_variants(n=256, d=4)
      >>> [v.name for v in runs]
      ['batch GD', 'SGD', 'mini-batch GD (32)']
    """
    key = jax.random.key(seed)
    data_key, init_key, order_key = jax.random.split(key, 3)
    prob = problems.linear_regression(n=n, d=d, key=data_key)
    model = models.linear()
    params = model.init(init_key, d)
    lip = prob.lipschitz
    plans = [
        ("batch GD", full_batch(prob.data), 1.0 / lip, 100),
        ("SGD", stochastic(prob.data), 0.05 / lip, 5),
        (f"mini-batch GD ({batch_size})", minibatch(prob.data, batch_size), 0.5 / lip, 20),
    ]
    runs = []
    for name, it, lr, epochs in plans:
        res = fit(model.loss, params, optax.sgd, it, epochs=epochs, key=order_key, learning_rate=lr, progress=progress)
        runs.append(Variant(name, res))
    return prob, runs


def run_demo(*, seed: int = 0, progress: bool = False, num_lrs: int = 64) -> Demo:
    """The whole demo: :func:`run_variants`, then a sweep of ``num_lrs`` learning rates of batch GD.

    The learning rates span ``2/L / 100`` to ``4 * 2/L`` and each member runs
    30 epochs, so the sweep shows both the best constant step and the
    stability limit ``2/L``, above which members blow up.
    """
    prob, variants = run_variants(seed=seed, progress=progress)
    model = models.linear()
    limit = 2.0 / prob.lipschitz
    _, init_key, order_key = jax.random.split(jax.random.key(seed), 3)
    sw = sweep(
        model.loss,
        model.init(init_key, prob.data["x"].shape[1]),
        optax.sgd,
        full_batch(prob.data),
        learning_rates=np.geomspace(limit / 100, 4 * limit, num_lrs),
        epochs=30,
        key=order_key,
        progress=progress,
    )
    return Demo(prob, variants, sw)


def format_table(prob: problems.Regression, runs: list[Variant], sw: SweepResult | None = None) -> str:
    """A plain-text table of the runs (and the sweep's best learning rate)."""
    header = f"{'method':<24}{'epochs':>7}{'updates':>10}{'time (ms)':>11}{'compile (s)':>13}{'final cost':>13}"
    lines = [header, "-" * len(header)]
    for v in runs:
        r = v.result
        lines.append(
            f"{v.name:<24}{r.num_epochs:>7}{r.num_steps:>10}{r.wall_time * 1e3:>11.1f}"
            f"{r.compile_time:>13.2f}{r.final_loss:>13.6f}"
        )
    if sw is not None and sw.best_index is not None:
        k = sw.best_index
        lines.append(
            f"{'sweep: ' + str(sw.num_members) + ' lrs, batch GD':<24}{int(sw.num_epochs.max()):>7}"
            f"{int(sw.num_steps.sum()):>10}{sw.wall_time * 1e3:>11.1f}{sw.compile_time:>13.2f}"
            f"{sw.final_loss[k]:>13.6f}"
        )
    lines.append(f"{'least squares (exact)':<24}{'':>7}{'':>10}{'':>11}{'':>13}{prob.min_loss:>13.6f}")
    if sw is not None:
        limit = 2.0 / prob.lipschitz
        best_hp, lrs = sw.best_hyperparams, sw.learning_rates
        if best_hp is None or lrs is None:
            lines.append("\nevery member of the sweep diverged")
        else:
            best = best_hp["learning_rate"]
            unstable = sw.diverged | ~(sw.final_loss < sw.initial_loss)
            lines.append(
                f"\nbest learning rate of the sweep: {best:.4g} = {best / limit:.2f} x 2/L (2/L = {limit:.4g}, "
                f"the stability limit of batch GD); {int(unstable.sum())} of {sw.num_members} members were unstable, "
                f"from {lrs[unstable].min() / limit:.2f} x 2/L up"
                if unstable.any()
                else f"\nbest learning rate of the sweep: {best:.4g} = {best / limit:.2f} x 2/L"
            )
    return "\n".join(lines)


def write_figures(demo: Demo, out: Path) -> list[Path]:
    """Write the demo's figures as PNG files into ``out``; returns their paths."""
    from gdjax import plot

    out.mkdir(parents=True, exist_ok=True)
    runs = {v.name: v.result for v in demo.variants}
    paths = []
    for x in ("epoch", "examples", "time"):
        ax = plot.compare(runs, x=x)
        ax.set_title(f"Batch, stochastic and mini-batch gradient descent: cost against {x}")
        paths.append(out / f"compare_{x}.png")
        plot.save(ax, paths[-1])
    ax = plot.losses(runs["SGD"], smooth=1000, x="epoch", label="SGD")
    ax.set_title("SGD: noisy single-sample losses and their moving average over 1000 updates")
    paths.append(out / "sgd_moving_average.png")
    plot.save(ax, paths[-1])
    ax = plot.sweep(demo.sweep)
    limit = 2.0 / demo.problem.lipschitz
    ax.axvline(limit, color="0.4", ls="--", lw=1)
    ax.text(limit, ax.get_ylim()[0], " 2/L", color="0.3", va="bottom")
    paths.append(out / "sweep.png")
    plot.save(ax, paths[-1])
    ax = plot.curves(demo.sweep, x="epoch")
    paths.append(out / "sweep_curves.png")
    plot.save(ax, paths[-1])
    return paths
