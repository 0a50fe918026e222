"""Bad evaluation, early-stopping and loss-hyperparameter arguments: a clear error before anything compiles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gdjax as gd


def _ridge(params, example, *, l2):
    return 0.5 * (example["x"] @ params["w"] - example["y"]) ** 2 + l2 * jnp.sum(params["w"] ** 2)


def _plain(params, example):
    return 0.5 * (example["x"] @ params["w"] - example["y"]) ** 2


DATA = {"x": np.ones((20, 3), np.float32), "y": np.zeros(20, np.float32)}
PARAMS = {"w": jnp.zeros(3)}


IT = gd.minibatch(DATA, 4)
KEY = jax.random.key(0)


def _call(kind, loss=_plain, **kw):
    if kind == "fit":
        return gd.fit(loss, PARAMS, optax.sgd, IT, learning_rate=0.1, epochs=2, key=KEY, **kw)
    return gd.sweep(loss, PARAMS, optax.sgd, IT, learning_rates=[0.1, 0.2], epochs=2, key=KEY, **kw)


CASES = [
    ({"monitor": "eval_acc"}, ValueError, r"monitor='eval_acc' is not evaluated \(pass eval_data=.*\['loss'\]"),
    ({"monitor": "accuracy", "eval_data": DATA}, ValueError, r"the values evaluated are \['loss', 'eval_loss'\]"),
    ({"monitor": 3}, TypeError, "monitor must be the name"),
    ({"mode": "maximum"}, ValueError, "mode must be 'min', 'max' or 'auto'"),
    ({"patience": 0}, ValueError, "patience must be at least 1"),
    ({"patience": 2.5}, TypeError, "patience"),
    ({"patience": 3, "eval_every": 0}, ValueError, "eval_every=0 evaluates only at the end"),
    ({"tol": 0.1, "eval_every": 0}, ValueError, "tol is compared with the full-data loss"),
    ({"eval_every": -1}, ValueError, "eval_every must be at least 0"),
    ({"min_delta": -0.1}, ValueError, "min_delta must be finite and >= 0"),
    ({"keep_best": "yes"}, TypeError, "keep_best"),
    ({"eval_data": {"x": DATA["x"]}}, ValueError, "eval_data must have the structure of the training data"),
    (
        {"eval_data": {"x": np.ones((5, 4), np.float32), "y": np.zeros(5, np.float32)}},
        ValueError,
        r"eval_data\['x'\] has examples of shape \(4,\) .* training data's are \(3,\)",
    ),
    ({"eval_data": {"x": np.ones((5, 3), np.int32), "y": np.zeros(5, np.float32)}}, ValueError, "dtype int32"),
    (
        {"eval_data": {"x": np.full((5, 3), np.nan, np.float32), "y": np.zeros(5, np.float32)}},
        ValueError,
        r"eval_data\['x'\]",
    ),
    (
        {"eval_data": {"x": np.ones((5, 3), np.float32), "y": np.zeros(4, np.float32)}},
        ValueError,
        "eval_data leaves must share the leading axis",
    ),
    ({"metrics": [lambda p, e: 0.0]}, TypeError, "metrics must be a dict"),
    ({"metrics": {"acc": 3}}, TypeError, r"metrics\['acc'\] must be a function"),
    ({"metrics": {"eval_acc": lambda p, e: 1.0}}, ValueError, "not starting with 'eval_'"),
    ({"metrics": {"loss": lambda p, e: 1.0}}, ValueError, "other than 'loss'"),
    (
        {"metrics": {"vec": lambda p, e: p["w"] * e["x"]}},
        TypeError,
        r"metrics\['vec'\] must return a real scalar.*\(3,\)",
    ),
    (
        {"metrics": {"bad": lambda p, e: p["nope"]}},
        TypeError,
        r"metrics\['bad'\] failed when called as fn\(params, example\)",
    ),
    (
        {"loss_hyperparams": {"l2": 0.1}},
        TypeError,
        r"loss_fn cannot take them as keywords.*def loss_fn\(params, example, \*, l2\)",
    ),
    ({"loss_hyperparams": {"l2": float("nan")}}, ValueError, r"loss_hyperparams\['l2'\] must be finite"),
    ({"loss_hyperparams": {"l2": "big"}}, TypeError, r"loss_hyperparams\['l2'\] must be a number"),
    ({"loss_hyperparams": [0.1]}, TypeError, "loss_hyperparams must be a dict"),
]


@pytest.mark.parametrize("kind", ["fit", "sweep"])
@pytest.mark.parametrize(("kw", "error", "match"), CASES)
def test_bad_arguments_are_refused_before_compiling(kind, kw, error, match, compiles):
    with compiles() as c, pytest.raises(error, match=match):
        _call(kind, **kw)
    assert c.count == 0


def test_a_loss_that_takes_keywords_needs_them(compiles):
    with compiles() as c, pytest.raises(TypeError, match=r"loss_fn"):
        _call("fit", loss=_ridge)
    assert c.count == 0


def test_fit_takes_one_value_per_loss_hyperparameter():
    with pytest.raises(ValueError, match=r"loss_hyperparams\['l2'\] must be a single number in fit.*gd.sweep"):
        _call("fit", loss=_ridge, loss_hyperparams={"l2": [0.1, 0.2]})


def test_zipped_loss_hyperparameters_must_match_the_learning_rates():
    with pytest.raises(ValueError, match=r"loss_hyperparams\['l2'\] has 3.*grid=True"):
        _call("sweep", loss=_ridge, loss_hyperparams={"l2": [0.1, 0.2, 0.3]})


def test_negative_loss_hyperparameters_are_allowed():
    res = _call("fit", loss=_ridge, loss_hyperparams={"l2": -0.01})
    assert res.loss_hyperparams == {"l2": -0.01}


@pytest.mark.parametrize("kind", ["fit", "sweep"])
def test_required_loss_hyperparameters_go_with_key_and_model_state(kind):
    """A loss whose hyperparameter is required takes it with key= and model_state= (the checks bind all)."""

    def loss(params, ex, *, scale, key, model_state):
        assert key is None or key.shape == ()
        return scale * jnp.sum((ex["x"] @ params["w"] - ex["y"]) ** 2), model_state

    opts = {"loss_hyperparams": {"scale": 0.5}, "with_key": True, "model_state": {"n": jnp.zeros(())}}
    res = _call(kind, loss=loss, **opts)
    assert np.isfinite(np.asarray(res.final_loss)).all()

    def missing(params, ex, *, key, model_state):  # no scale: still refused, naming loss_hyperparams
        return jnp.sum(params["w"]), model_state

    with pytest.raises(TypeError, match=r"loss_hyperparams names \['scale'\]"):
        _call(kind, loss=missing, **opts)
