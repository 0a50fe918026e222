"""Synthetic data sets with known answers, made on the spot (no downloads).

Example:
  >>> import jax, gdjax as gd
  >>> prob = gd.problems.linear_regression(n=100, d=3, key=jax.random.key(0))
  >>> prob.data["x"].shape, prob.solution["w"].shape
  ((100, 3), (3,))
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["Classification", "Regression", "classification", "linear_regression"]


class Regression(NamedTuple):
    """A least-squares problem and its exact answers (computed in float64).

    Attributes:
      data: ``{"x": (n, d), "y": (n,)}`` numpy arrays.
      solution: the least-squares ``{"w", "b"}`` (``numpy.linalg.lstsq``).
      min_loss: the cost ``1/(2n) * sum (x @ w + b - y)**2`` at the solution.
      lipschitz: ``L``, the largest eigenvalue of the cost's Hessian
        ``A.T @ A / n`` with ``A = [X, 1]``; constant-step gradient descent
        converges for step sizes below ``2 / L`` and diverges above.
      true_params: the ``{"w", "b"}`` the data was drawn from.
    """

    data: dict[str, np.ndarray]
    solution: dict[str, np.ndarray]
    min_loss: float
    lipschitz: float
    true_params: dict[str, np.ndarray]


class Classification(NamedTuple):
    """A classification set: ``data = {"x": (n, d), "y": (n,) int}`` and its classes."""

    data: dict[str, np.ndarray]
    num_classes: int


def _rng(key: Any) -> np.random.Generator:
    seed = np.asarray(jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key)
    return np.random.default_rng(seed.astype(np.uint64).ravel().tolist())


def linear_regression(
    n: int = 1024,
    d: int = 8,
    *,
    noise: float = 0.5,
    key: jax.Array,
    scales: Any = None,
    dtype: Any = np.float32,
) -> Regression:
    """Noisy linear data ``y = x @ w + b + noise`` with its least-squares answer.

    Args:
      n: examples.
      d: features.
      noise: standard deviation of the Gaussian noise.
      key: JAX PRNG key the data is drawn from.
      scales: optional per-feature scales (length ``d``) to shape the
        Hessian's spectrum; features are standard normal by default.
      dtype: dtype of the returned data.

    Returns:
      A :class:`Regression`.
    """
    rng = _rng(key)
    x = rng.standard_normal((n, d))
    if scales is not None:
        x = x * np.asarray(scales, np.float64)
    w = rng.standard_normal(d)
    b = float(rng.standard_normal())
    y = x @ w + b + noise * rng.standard_normal(n)
    x, y = x.astype(dtype), y.astype(dtype)
    a = np.column_stack([x.astype(np.float64), np.ones(n)])
    coef = np.linalg.lstsq(a, y.astype(np.float64), rcond=None)[0]
    resid = a @ coef - y.astype(np.float64)
    hess = a.T @ a / n
    return Regression(
        data={"x": x, "y": y},
        solution={"w": coef[:-1], "b": np.asarray(coef[-1])},
        min_loss=float(0.5 * np.mean(resid**2)),
        lipschitz=float(np.linalg.eigvalsh(hess)[-1]),
        true_params={"w": w, "b": np.asarray(b)},
    )


def classification(
    n: int = 1024, d: int = 2, num_classes: int = 3, *, key: jax.Array, spread: float = 1.0
) -> Classification:
    """Gaussian blobs, one per class, around points on a circle (d >= 2).

    Classes overlap a little with the default ``spread``, so a linear model
    does well and an MLP does a bit better.
    """
    rng = _rng(key)
    y = rng.integers(0, num_classes, n)
    angles = 2 * np.pi * np.arange(num_classes) / num_classes
    centres = np.zeros((num_classes, d))
    centres[:, 0], centres[:, 1] = 2.5 * np.cos(angles), 2.5 * np.sin(angles)
    x = centres[y] + spread * rng.standard_normal((n, d))
    x[:, :2] += 0.6 * np.sin(2 * x[:, ::-1][:, -2:]) if d >= 2 else 0
    return Classification(data={"x": x.astype(np.float32), "y": y.astype(np.int32)}, num_classes=num_classes)
