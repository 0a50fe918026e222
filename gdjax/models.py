"""Tiny pure models for examples, tests and the command line.

Each model is a :class:`Model`: ``init(key, num_features) -> params``,
``apply(params, x) -> prediction`` for one example or a batch,
``loss(params, example) -> scalar`` for one example ``{"x": ..., "y": ...}``,
ready for :func:`gdjax.fit` and :func:`gdjax.sweep`, and ``metrics``, named
per-example functions of the same form (``{"acc": ...}`` for classifiers),
ready for their ``metrics=``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gdjax._types import PyTree

__all__ = ["Metric", "Model", "linear", "logistic", "mlp"]


Metric = Callable[[PyTree, PyTree], jax.Array]
"""A per-example function ``fn(params, example) -> scalar``, like a loss."""


class Model(NamedTuple):
    """A pure model: an ``init``/``apply`` pair, the per-example ``loss`` and per-example ``metrics``.

    ``metrics`` is a read-only mapping from a name to ``fn(params, example)
    -> scalar`` (a float in the parameters' dtype); it is empty for
    regression, ``{"acc": ...}`` for classifiers (1.0 when the example's
    predicted class is its label, else 0.0, so its mean over a data set is
    the accuracy). Pass it on as ``metrics=model.metrics``, or extend it with
    ``{**model.metrics, "name": fn}``.
    """

    init: Callable[..., PyTree]
    apply: Callable[[PyTree, jax.Array], jax.Array]
    loss: Callable[[PyTree, PyTree], jax.Array]
    metrics: Mapping[str, Metric] = MappingProxyType({})


def _binary_accuracy(logit: jax.Array, y: jax.Array) -> jax.Array:
    """1.0 where the logit's class (1 when the logit is above 0, i.e. a probability above 1/2) is ``y``, else 0.0."""
    return ((logit > 0) == (y > 0.5)).astype(logit.dtype)


def _class_accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """1.0 where the largest logit's class (the first, on a tie) is ``y``, else 0.0."""
    return (jnp.argmax(logits, axis=-1) == y.astype(jnp.int32)).astype(logits.dtype)


def _class_cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Softmax cross-entropy with an integer class ``y``; NaN when ``y`` is outside ``[0, C)`` (never a wrong number).

    optax alone gives NaN for ``y >= C`` but counts ``y = -1`` as the last
    class; a NaN loss makes the run stop as diverged rather than train on
    misread labels.
    """
    labels = y.astype(jnp.int32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    inside = (labels >= 0) & (labels < logits.shape[-1])
    return jnp.where(inside, loss, jnp.nan)


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


def _num_classes(num_classes: int | None) -> int:
    """``num_classes`` as an int: None means 2; it must be a whole number, at least 2."""
    if num_classes is None:
        return 2
    try:
        if isinstance(num_classes, bool):
            raise TypeError
        count = operator.index(num_classes)
    except TypeError:
        raise TypeError(
            f"num_classes must be a whole number (2 or more) or None; got {num_classes!r} of type "
            f"{type(num_classes).__name__}."
        ) from None
    if count < 2:
        raise ValueError(f"num_classes must be at least 2 (None also means 2); got {count}.")
    return count


def logistic(num_classes: int | None = None) -> Model:
    """Logistic regression: binary (``y`` in {0, 1}) or, with three classes or more, softmax regression.

    With ``num_classes`` None or 2, the binary model of the textbook:
    ``params = {"w": (D,), "b": ()}``, ``apply`` gives the logit
    ``x @ w + b`` (the log-odds of class 1) and ``loss`` the log-loss
    ``optax.sigmoid_binary_cross_entropy(logit, y)`` with ``y`` 0 or 1.

    With ``num_classes = C >= 3``, softmax (multinomial logistic) regression:
    ``params = {"w": (D, C), "b": (C,)}``, ``apply`` gives the ``C`` logits
    ``x @ w + b`` (shape ``(C,)`` for one example, ``(B, C)`` for a batch)
    and ``loss`` the softmax cross-entropy
    ``optax.softmax_cross_entropy_with_integer_labels(logits, y)`` with ``y``
    an integer class in ``[0, C)`` (an int or a whole float; a label outside
    that range gives a NaN loss, so the run stops as diverged instead of
    training on it).

    Either way ``init`` gives zeros (the key is unused) and ``metrics`` is
    ``{"acc": fn}``: 1.0 when the predicted class (logit above 0; the largest
    logit, the first on a tie) is ``y``, else 0.0.

    Args:
      num_classes: the number of classes; None (the default) or 2 for the
        binary model, 3 or more for softmax regression.

    Returns:
      The :class:`Model`.

    Raises:
      TypeError: ``num_classes`` is not a whole number or None.
      ValueError: ``num_classes`` is below 2.

    Example:
      >>> import jax, jax.numpy as jnp, gdjax as gd
      >>> m = gd.models.logistic()
      >>> p = m.init(jax.random.key(0), 2)
      >>> round(float(m.loss(p, {"x": jnp.ones(2), "y": jnp.array(1.0)})), 4)
      0.6931
      >>> m3 = gd.models.logistic(num_classes=3)
      >>> p3 = m3.init(jax.random.key(0), 2)
      >>> p3["w"].shape, p3["b"].shape
      ((2, 3), (3,))
      >>> example = {"x": jnp.ones(2), "y": jnp.array(2)}
      >>> round(float(m3.loss(p3, example)), 4)  # log 3: every class equally likely at zero weights
      1.0986
      >>> float(m3.metrics["acc"](p3, example))  # a tie predicts class 0
      0.0
    """
    classes = _num_classes(num_classes)
    if classes == 2:

        def loss(params: PyTree, example: PyTree) -> jax.Array:
            return optax.sigmoid_binary_cross_entropy(
                _affine(params, example["x"]), example["y"].astype(jnp.result_type(float))
            )

        def accuracy(params: PyTree, example: PyTree) -> jax.Array:
            return _binary_accuracy(_affine(params, example["x"]), example["y"])

        return Model(_zeros_init, _affine, loss, MappingProxyType({"acc": accuracy}))

    def init(key: jax.Array, num_features: int, dtype: Any = None) -> PyTree:
        """Zero weights ``(num_features, C)`` and biases ``(C,)`` (the key is unused)."""
        del key
        dtype = dtype or jnp.result_type(float)
        return {"w": jnp.zeros((num_features, classes), dtype), "b": jnp.zeros((classes,), dtype)}

    def softmax_loss(params: PyTree, example: PyTree) -> jax.Array:
        return _class_cross_entropy(_affine(params, example["x"]), example["y"])

    def softmax_accuracy(params: PyTree, example: PyTree) -> jax.Array:
        return _class_accuracy(_affine(params, example["x"]), example["y"])

    return Model(init, _affine, softmax_loss, MappingProxyType({"acc": softmax_accuracy}))


def mlp(hidden: Sequence[int] = (32,), num_outputs: int = 1, *, task: str = "regression") -> Model:
    """A multilayer perceptron with tanh hidden layers.

    Args:
      hidden: widths of the hidden layers.
      num_outputs: outputs; for ``task="classification"`` the number of classes.
      task: ``"regression"`` (squared error / 2, ``y`` of shape
        ``(num_outputs,)`` or a scalar when ``num_outputs == 1``),
        ``"classification"`` (softmax cross-entropy, ``y`` an integer class)
        or ``"binary"`` (sigmoid log-loss, ``y`` in {0, 1}, one output).
        Both classification tasks carry ``metrics={"acc": fn}``, as
        :func:`logistic` does.

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
            return _class_cross_entropy(out, y)
        if task == "binary":
            return optax.sigmoid_binary_cross_entropy(out, y.astype(out.dtype))
        return 0.5 * jnp.sum((out - y) ** 2)

    def accuracy(params: PyTree, example: PyTree) -> jax.Array:
        out = apply(params, example["x"])
        return _class_accuracy(out, example["y"]) if task == "classification" else _binary_accuracy(out, example["y"])

    return Model(init, apply, loss, MappingProxyType({"acc": accuracy} if task != "regression" else {}))
