"""Tiny pure models for examples, tests and the command line.

Each model is a :class:`Model`: ``init(key, num_features) -> params``,
``apply(params, x) -> prediction`` for one example or a batch, and
``loss(params, example) -> scalar`` for one example ``{"x": ..., "y": ...}``,
ready for :func:`gdjax.fit` and :func:`gdjax.sweep`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gdjax._types import PyTree

__all__ = ["Model", "linear", "logistic", "mlp"]


class Model(NamedTuple):
    """A pure model: an ``init``/``apply`` pair and the per-example ``loss``."""

    init: Callable[..., PyTree]
    apply: Callable[[PyTree, jax.Array], jax.Array]
    loss: Callable[[PyTree, PyTree], jax.Array]


def _zeros_init(key: jax.Array, num_features: int, dtype: Any = None) -> PyTree:
    """Zero weights and bias (the key is unused: linear models need no random start)."""
    del key
    dtype = dtype or jnp.result_type(float)
    return {"w": jnp.zeros((num_features,), dtype), "b": jnp.zeros((), dtype)}


def _affine(params: PyTree, x: jax.Array) -> jax.Array:
    return x @ params["w"] + params["b"]


def linear() -> Model:
    """Linear regression ``x @ w + b`` with the squared-error cost ``(pred - y)**2 / 2``.

    The full-data cost is the textbook's ``J = 1/(2N) * sum (h(x) - y)**2``;
    its Hessian is ``A.T @ A / N`` with ``A = [X, 1]``. ``init`` gives zeros.

    Example:
      >>> import jax, jax.numpy as jnp, gdjax as gd
      >>> m = gd.models.linear()
      >>> p = m.init(jax.random.key(0), 3)
      >>> float(m.loss(p, {"x": jnp.ones(3), "y": jnp.array(2.0)}))
      2.0
    """

    def loss(params: PyTree, example: PyTree) -> jax.Array:
        return 0.5 * (_affine(params, example["x"]) - example["y"]) ** 2

    return Model(_zeros_init, _affine, loss)


def logistic() -> Model:
    """Binary logistic regression; ``y`` in {0, 1}, log-loss on the logit.

    Example:
      >>> import jax, jax.numpy as jnp, gdjax as gd
      >>> m = gd.models.logistic()
      >>> p = m.init(jax.random.key(0), 2)
      >>> round(float(m.loss(p, {"x": jnp.ones(2), "y": jnp.array(1.0)})), 4)
      0.6931
    """

    def loss(params: PyTree, example: PyTree) -> jax.Array:
        return optax.sigmoid_binary_cross_entropy(
            _affine(params, example["x"]), example["y"].astype(jnp.result_type(float))
        )

    return Model(_zeros_init, _affine, loss)


def mlp(hidden: Sequence[int] = (32,), num_outputs: int = 1, *, task: str = "regression") -> Model:
    """A multilayer perceptron with tanh hidden layers.

    Args:
      hidden: widths of the hidden layers.
      num_outputs: outputs; for ``task="classification"`` the number of classes.
      task: ``"regression"`` (squared error / 2, ``y`` of shape
        ``(num_outputs,)`` or a scalar when ``num_outputs == 1``),
        ``"classification"`` (softmax cross-entropy, ``y`` an integer class)
        or ``"binary"`` (sigmoid log-loss, ``y`` in {0, 1}, one output).

    Example:
      >>> import jax, jax.numpy as jnp, gdjax as gd
      >>> m = gd.models.mlp((8,), num_outputs=3, task="classification")
      >>> p = m.init(jax.random.key(0), 2)
      >>> m.apply(p, jnp.ones(2)).shape
      (3,)
    """
    if task not in ("regression", "classification", "binary"):
        raise ValueError(f"task must be 'regression', 'classification' or 'binary'; got {task!r}.")
    if task == "binary" and num_outputs != 1:
        raise ValueError("task='binary' has one output; pass num_outputs=1.")
    widths = tuple(int(h) for h in hidden)

    def init(key: jax.Array, num_features: int, dtype: Any = None) -> PyTree:
        dtype = dtype or jnp.result_type(float)
        sizes = (num_features, *widths, num_outputs)
        keys = jax.random.split(key, len(sizes) - 1)
        return [
            {
                "w": jax.random.normal(k, (m, n), dtype) * jnp.sqrt(1.0 / m).astype(dtype),
                "b": jnp.zeros((n,), dtype),
            }
            for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
        ]

    def apply(params: PyTree, x: jax.Array) -> jax.Array:
        for layer in params[:-1]:
            x = jnp.tanh(x @ layer["w"] + layer["b"])
        out = x @ params[-1]["w"] + params[-1]["b"]
        return out if task == "classification" or num_outputs > 1 else out[..., 0]

    def loss(params: PyTree, example: PyTree) -> jax.Array:
        out = apply(params, example["x"])
        y = example["y"]
        if task == "classification":
            return optax.softmax_cross_entropy_with_integer_labels(out, y.astype(jnp.int32))
        if task == "binary":
            return optax.sigmoid_binary_cross_entropy(out, y.astype(out.dtype))
        return 0.5 * jnp.sum((out - y) ** 2)

    return Model(init, apply, loss)
