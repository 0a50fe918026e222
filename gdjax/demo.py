"""The demo job behind ``gdjax demo``: the three gradient descents side by side.

The same linear regression (built-in synthetic data with a known least-squares
answer) is trained by batch gradient descent, stochastic gradient descent and
mini-batch gradient descent, and a table reports the updates taken, the time
and the final cost of each.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import optax

from gdjax import models, problems
from gdjax.data import full_batch, minibatch, stochastic
from gdjax.loop import FitResult, fit

__all__ = ["Variant", "format_table", "run_variants"]


class Variant(NamedTuple):
    """One way of running gradient descent in the demo."""

    name: str
    result: FitResult


def run_variants(
    n: int = 4096, d: int = 16, *, seed: int = 0, batch_size: int = 32
) -> tuple[problems.Regression, list[Variant]]:
    """Train one regression three ways and return the problem and the runs.

    Step sizes: batch GD takes ``1 / L`` (the best constant step for this
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
        res = fit(model.loss, params, optax.sgd, it, epochs=epochs, key=order_key, learning_rate=lr)
        runs.append(Variant(name, res))
    return prob, runs


def format_table(prob: problems.Regression, runs: list[Variant]) -> str:
    """A plain-text table of the runs."""
    header = f"{'method':<22}{'epochs':>7}{'updates':>10}{'time (ms)':>11}{'compile (s)':>13}{'final cost':>13}"
    lines = [header, "-" * len(header)]
    for v in runs:
        r = v.result
        lines.append(
            f"{v.name:<22}{r.num_epochs:>7}{r.num_steps:>10}{r.wall_time * 1e3:>11.1f}"
            f"{r.compile_time:>13.2f}{r.final_loss:>13.6f}"
        )
    lines.append(f"{'least squares (exact)':<22}{'':>7}{'':>10}{'':>11}{'':>13}{prob.min_loss:>13.6f}")
    return "\n".join(lines)
