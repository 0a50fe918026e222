"""The models of ``gd.models``: softmax regression against hand computations, the binary model kept, accuracy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gdjax as gd

D, C = 4, 5


def _softmax_case(seed: int = 0):
    """Random softmax-regression parameters and one example (x, integer class y)."""
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.normal(size=(D, C)), jnp.float32), "b": jnp.asarray(rng.normal(size=C), jnp.float32)}
    example = {"x": jnp.asarray(rng.normal(size=D), jnp.float32), "y": jnp.asarray(3, jnp.int32)}
    return params, example


def test_softmax_regression_shapes_and_zero_init():
    model = gd.models.logistic(num_classes=C)
    params = model.init(jax.random.key(0), D)
    assert params["w"].shape == (D, C) and params["b"].shape == (C,)
    assert not np.any(params["w"]) and not np.any(params["b"])
    assert params["w"].dtype == jnp.result_type(float)
    assert model.init(None, D, jnp.bfloat16)["w"].dtype == jnp.bfloat16
    x = jnp.ones((7, D))
    assert model.apply(params, x).shape == (7, C) and model.apply(params, x[0]).shape == (C,)
    # at zero weights every class is equally likely: the loss is log C whatever the label
    np.testing.assert_allclose(model.loss(params, {"x": x[0], "y": jnp.asarray(4)}), np.log(C), rtol=1e-6)


def test_softmax_loss_and_gradient_match_a_hand_computation():
    model = gd.models.logistic(num_classes=C)
    params, example = _softmax_case()
    w, b, x, y = (np.asarray(a, np.float64) for a in (params["w"], params["b"], example["x"], example["y"]))
    logits = x @ w + b
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    onehot = np.eye(C)[int(y)]
    loss, grads = jax.value_and_grad(model.loss)(params, example)
    np.testing.assert_allclose(loss, -np.log(p[int(y)]), rtol=1e-5)
    logits = model.apply(params, example["x"])
    np.testing.assert_allclose(loss, optax.softmax_cross_entropy_with_integer_labels(logits, example["y"]), rtol=1e-6)
    # d loss / d logits = softmax - onehot; then the chain rule through x @ w + b
    np.testing.assert_allclose(grads["w"], np.outer(x, p - onehot), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["b"], p - onehot, rtol=1e-5, atol=1e-6)


def test_a_whole_float_label_is_its_class():
    model = gd.models.logistic(num_classes=C)
    params, example = _softmax_case(1)
    as_float = {**example, "y": example["y"].astype(jnp.float32)}
    assert float(model.loss(params, as_float)) == float(model.loss(params, example))


@pytest.mark.parametrize("label", [-1, C, C + 10])
def test_a_label_outside_the_classes_gives_nan_not_another_class(label):
    model = gd.models.logistic(num_classes=C)
    params, example = _softmax_case()
    assert np.isnan(model.loss(params, {**example, "y": jnp.asarray(label)}))
    mlp = gd.models.mlp((3,), num_outputs=C, task="classification")
    assert np.isnan(mlp.loss(mlp.init(jax.random.key(0), D), {**example, "y": jnp.asarray(label)}))


@pytest.mark.parametrize("num_classes", [None, 2, np.int64(2)])
def test_two_classes_keep_the_binary_model(num_classes):
    model = gd.models.logistic(num_classes) if num_classes is not None else gd.models.logistic()
    params = model.init(jax.random.key(0), D)
    assert params["w"].shape == (D,) and params["b"].shape == ()
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=D), jnp.float32), "b": jnp.asarray(0.3, jnp.float32)}
    x = jnp.asarray(rng.normal(size=D), jnp.float32)
    for y in (0.0, 1.0):
        logit = float(x @ params["w"] + params["b"])
        expected = np.log1p(np.exp(-logit)) if y else np.log1p(np.exp(logit))  # -log sigmoid(+-logit)
        np.testing.assert_allclose(model.loss(params, {"x": x, "y": jnp.asarray(y)}), expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("num_classes", "error", "message"),
    [
        (1, ValueError, "at least 2"),
        (0, ValueError, "at least 2"),
        (-3, ValueError, "at least 2"),
        (2.5, TypeError, "whole number"),
        (3.0, TypeError, "whole number"),
        ("3", TypeError, "whole number"),
        (True, TypeError, "whole number"),
    ],
)
def test_bad_num_classes_are_refused(num_classes, error, message):
    with pytest.raises(error, match=message):
        gd.models.logistic(num_classes)


def test_accuracy_per_example_multiclass():
    model = gd.models.logistic(num_classes=3)
    acc = model.metrics["acc"]
    # x = [1, 0] picks w's first row: logits (0, 2, 1) predict class 1; x = [0, 1]: logits (3, 0, 3), a tie, class 0
    params = {"w": jnp.array([[0.0, 2.0, 1.0], [3.0, 0.0, 3.0]]), "b": jnp.zeros(3)}
    cases = [([1.0, 0.0], 1, 1.0), ([1.0, 0.0], 2, 0.0), ([0.0, 1.0], 0, 1.0), ([0.0, 1.0], 2, 0.0)]
    for x, y, expected in cases:
        value = acc(params, {"x": jnp.array(x), "y": jnp.asarray(y)})
        assert value.shape == () and value.dtype == params["w"].dtype
        assert float(value) == expected, (x, y)


def test_accuracy_per_example_binary():
    acc = gd.models.logistic().metrics["acc"]
    params = {"w": jnp.array([1.0, -1.0]), "b": jnp.asarray(0.0)}
    cases = [([2.0, 1.0], 1.0, 1.0), ([2.0, 1.0], 0.0, 0.0), ([1.0, 2.0], 0.0, 1.0), ([1.0, 1.0], 0.0, 1.0)]
    for x, y, expected in cases:  # the last: logit 0, probability 1/2, predicts class 0
        value = acc(params, {"x": jnp.array(x), "y": jnp.asarray(y)})
        assert value.shape == () and float(value) == expected, (x, y)


def test_the_mean_accuracy_over_a_data_set_is_the_fraction_classified_right():
    rng = np.random.default_rng(2)
    params = {"w": jnp.asarray(rng.normal(size=(D, C)), jnp.float32), "b": jnp.asarray(rng.normal(size=C), jnp.float32)}
    x = rng.normal(size=(200, D)).astype(np.float32)
    y = rng.integers(0, C, size=200).astype(np.int32)
    acc = gd.models.logistic(num_classes=C).metrics["acc"]
    hits = jax.vmap(acc, in_axes=(None, 0))(params, {"x": x, "y": y})
    expected = np.mean(np.argmax(x @ np.asarray(params["w"]) + np.asarray(params["b"]), axis=1) == y)
    assert 0.05 < expected < 0.95  # a mix of right and wrong
    np.testing.assert_allclose(float(jnp.mean(hits)), expected, rtol=1e-6)


def test_which_models_carry_accuracy():
    with_acc = [
        gd.models.logistic(),
        gd.models.logistic(num_classes=4),
        gd.models.mlp((3,), num_outputs=4, task="classification"),
        gd.models.mlp((3,), task="binary"),
    ]
    for model in with_acc:
        assert list(model.metrics) == ["acc"]
    for model in (gd.models.linear(), gd.models.mlp((3,)), gd.models.mlp((3,), num_outputs=2)):
        assert dict(model.metrics) == {}
    with pytest.raises(TypeError):  # read-only: a model is a value
        gd.models.logistic().metrics["f1"] = lambda p, ex: 0.0  # type: ignore[index]
    assert gd.models.Model(*gd.models.linear()[:3]).metrics == {}  # a model built by hand needs no metrics


def test_mlp_accuracy_per_example():
    for task, y_right, y_wrong in (("classification", 2, 0), ("binary", 1.0, 0.0)):
        outputs = 3 if task == "classification" else 1
        model = gd.models.mlp((2,), num_outputs=outputs, task=task)
        params = model.init(jax.random.key(0), 2)
        params[-1]["w"] = jnp.zeros_like(params[-1]["w"])
        params[-1]["b"] = jnp.array([0.0, -1.0, 1.0]) if outputs == 3 else jnp.array([1.0])
        x = jnp.ones(2)
        assert float(model.metrics["acc"](params, {"x": x, "y": jnp.asarray(y_right)})) == 1.0
        assert float(model.metrics["acc"](params, {"x": x, "y": jnp.asarray(y_wrong)})) == 0.0


def test_softmax_regression_trains_with_fit():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(3, 2)) * 4
    y = rng.integers(0, 3, size=120).astype(np.int32)
    x = (centers[y] + rng.normal(size=(120, 2))).astype(np.float32)
    model = gd.models.logistic(num_classes=3)
    res = gd.fit(model.loss, model.init(None, 2), optax.sgd, gd.full_batch({"x": x, "y": y}), epochs=50,
                 key=jax.random.key(0), learning_rate=0.5)  # fmt: skip
    assert res.epoch_losses[-1] < 0.3 * np.log(3)
    hits = jax.vmap(model.metrics["acc"], in_axes=(None, 0))(res.params, {"x": x, "y": y})
    assert float(jnp.mean(hits)) > 0.9
