"""``gd.sharpness``: the Hessian's largest eigenvalue, against exact answers, the stability limit 2/L, and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _shared import LINEAR

import gdjax as gd
from gdjax import _blocks


def _problem(scales=None, dtype=np.float64) -> gd.problems.Regression:
    return gd.problems.linear_regression(n=256, d=4, key=jax.random.key(3), scales=scales, dtype=dtype)


@pytest.mark.parametrize("scales", [None, [1.0, 3.0, 10.0, 30.0]], ids=["round", "ill-conditioned"])
def test_linear_regression_gives_the_exact_largest_eigenvalue(scales) -> None:
    with jax.enable_x64(True):
        prob = _problem(scales)
        params = LINEAR.init(None, 4, jnp.float64)
        info = gd.sharpness(LINEAR.loss, params, prob.data, return_info=True)
        assert info.converged and info.error <= 1e-5 and info.value == info.dominant
        assert info.value == pytest.approx(prob.lipschitz, rel=1e-4)
        again = gd.sharpness(LINEAR.loss, params, prob.data)  # the same key by default: the same bits
        assert isinstance(again, float) and again == info.value
        other = gd.sharpness(LINEAR.loss, params, prob.data, key=jax.random.key(7))
        assert other == pytest.approx(prob.lipschitz, rel=1e-4)


def test_several_blocks_give_the_value_of_one(monkeypatch) -> None:
    with jax.enable_x64(True):
        prob = _problem()
        params = LINEAR.init(None, 4, jnp.float64)
        whole = gd.sharpness(LINEAR.loss, params, prob.data, tol=1e-9)
        monkeypatch.setattr(_blocks, "BLOCK_ELEMENTS", 5 * 9)  # 9 rows of 5 values: 29 blocks, the last overlapping
        blocks = gd.sharpness(LINEAR.loss, params, prob.data, tol=1e-9)
    assert blocks == pytest.approx(whole, rel=1e-8)


def test_streamed_data_is_read_in_blocks_from_the_host(monkeypatch) -> None:
    prob = _problem(dtype=np.float32)
    params = LINEAR.init(None, 4)
    on_device = gd.sharpness(LINEAR.loss, params, prob.data)
    monkeypatch.setattr(_blocks, "BLOCK_ELEMENTS", 5 * 50)
    it = gd.minibatch(prob.data, 8, on_device=False)
    assert gd.sharpness(LINEAR.loss, params, it) == pytest.approx(on_device, rel=1e-5)


def test_learning_rates_diverge_exactly_above_two_over_the_sharpness() -> None:
    prob = _problem(dtype=np.float32)
    params = LINEAR.init(None, 4)
    lam = gd.sharpness(LINEAR.loss, params, prob.data)
    factors = np.array([0.5, 0.9, 1.1, 1.9, 2.1, 2.5])  # the learning rate times the sharpness
    sw = gd.sweep(
        LINEAR.loss, params, optax.sgd, gd.full_batch(prob.data), learning_rates=factors / lam, epochs=1000,
        key=jax.random.key(0),
    )  # fmt: skip
    stable = factors < 2
    np.testing.assert_array_equal(sw.diverged, ~stable)
    np.testing.assert_allclose(sw.final_loss[stable], prob.min_loss, rtol=1e-3)


def test_a_negative_dominant_eigenvalue_gives_the_largest_one() -> None:
    def loss(params, example):  # Hessian diag(-5, 2): a saddle
        x, y = params["a"][0], params["a"][1]
        return -2.5 * x**2 + y**2 + 0.0 * jnp.sum(example)

    info = gd.sharpness(loss, {"a": jnp.array([0.3, -0.2])}, np.zeros((3, 1), np.float32), return_info=True)
    assert info.converged
    assert info.dominant == pytest.approx(-5.0, rel=1e-4)
    assert info.value == pytest.approx(2.0, rel=1e-4)


def test_eigenvalues_of_equal_size_and_opposite_signs_are_not_taken_for_converged() -> None:
    """H = diag(2, -2): the Rayleigh quotient of a mixed vector stays put, its change is 0: that is not convergence."""

    def loss(params, example):
        w = params["w"]
        return w[0] ** 2 - w[1] ** 2 + 0.0 * jnp.sum(example)

    with pytest.warns(UserWarning, match="not yet an eigenvector"):
        info = gd.sharpness(loss, {"w": jnp.zeros(3)}, np.zeros((4, 1), np.float32), max_iters=50, return_info=True)
    assert not info.converged


def test_no_positive_curvature_warns() -> None:
    def loss(params, example):  # jnp.abs at 0: JAX's second derivative is 0 everywhere
        return jnp.sum(jnp.abs(params["w"])) + 0.0 * jnp.sum(example)

    with pytest.warns(UserWarning, match="no positive eigenvalue"):
        value = gd.sharpness(loss, {"w": jnp.zeros(3)}, np.zeros((4, 1), np.float32), max_iters=20)
    assert value <= 0


def test_model_state_and_loss_hyperparams_are_passed() -> None:
    prob = _problem(dtype=np.float32)

    def loss(params, example, *, scale, model_state):
        return scale * model_state["k"] * LINEAR.loss(params, example), model_state

    state = {"k": jnp.asarray(3.0)}
    lam = gd.sharpness(loss, LINEAR.init(None, 4), prob.data, model_state=state, loss_hyperparams={"scale": 0.5})
    assert lam == pytest.approx(1.5 * prob.lipschitz, rel=1e-4)


@pytest.mark.slow  # two compilations of an MLP's Hessian-vector product: seconds each
def test_an_equinox_mlp_on_digits_per_example_and_batched() -> None:
    eqx = pytest.importorskip("equinox")
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = {"x": (digits.data[:400] / 16).astype(np.float32), "y": digits.target[:400].astype(np.int32)}
    model = eqx.nn.MLP(64, 10, 16, 1, activation=jax.nn.tanh, key=jax.random.key(0))

    def per_example(m, example):
        return optax.softmax_cross_entropy_with_integer_labels(m(example["x"]), example["y"])

    def batched(m, batch):
        losses = optax.softmax_cross_entropy_with_integer_labels(jax.vmap(m)(batch.data["x"]), batch.data["y"])
        return gd.masked_mean(losses, batch.mask)

    one = gd.sharpness(per_example, model, data)
    two = gd.sharpness(batched, model, data, batched=True)
    assert np.isfinite(one) and one > 0
    assert two == pytest.approx(one, rel=1e-4)


def test_the_cap_warns_with_the_change_reached() -> None:
    with jax.enable_x64(True), pytest.warns(UserWarning, match=r"max_iters=2 before tol=1e-05.*changed by"):
        info = gd.sharpness(
            LINEAR.loss, LINEAR.init(None, 4, jnp.float64), _problem().data, max_iters=2, return_info=True
        )
    assert not info.converged and info.iterations == 2


def _good():
    return LINEAR.loss, LINEAR.init(None, 4), _problem(dtype=np.float32).data


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"loss_fn": "loss"}, TypeError, "loss_fn must be callable"),
        ({"data": {"x": np.zeros((0, 4), np.float32), "y": np.zeros(0, np.float32)}}, ValueError, "data is empty"),
        ({"params": {"n": 3, "i": np.arange(2)}}, ValueError, "params has no float arrays"),
        ({"tol": 0.0}, ValueError, r"tol must be in \(0, 1\)"),
        ({"tol": 1.0}, ValueError, r"tol must be in \(0, 1\)"),
        ({"tol": float("nan")}, ValueError, r"tol must be in \(0, 1\)"),
        ({"tol": "small"}, TypeError, "tol must be a number"),
        ({"max_iters": 0}, ValueError, "max_iters must be between 1"),
        ({"max_iters": 2.5}, TypeError, "max_iters must be an integer"),
        ({"key": 3}, TypeError, "key must be a single JAX PRNG key"),
        ({"batched": "yes"}, TypeError, "batched must be True or False"),
        ({"loss_hyperparams": {"l2": 1.0}}, TypeError, "loss_fn cannot take the keywords it would be given, l2="),
        ({"model_state": {"s": jnp.ones(())}}, TypeError, "cannot take the keywords it would be given, model_state="),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_input_is_refused_before_compiling(change, error, match, compiles) -> None:
    loss_fn, params, data = _good()
    kwargs = {k: v for k, v in change.items() if k not in ("loss_fn", "params", "data")}
    with compiles() as c, pytest.raises(error, match=match):
        gd.sharpness(change.get("loss_fn", loss_fn), change.get("params", params), change.get("data", data), **kwargs)
    assert c.count == 0


@pytest.mark.parametrize(
    ("loss", "match"),
    [
        (lambda p, ex: jnp.sqrt(jnp.sum(p["w"] ** 2)) + 0 * ex["y"], "Hessian-vector product .* is not finite"),
        (lambda p, ex: jnp.log(p["w"][0]) + 0 * ex["y"], "the loss at params is not finite"),
    ],
    ids=["sqrt-at-zero", "log-of-zero"],
)
def test_a_loss_without_a_finite_hessian_at_params_is_refused(loss, match) -> None:
    _, params, data = _good()
    with pytest.raises(ValueError, match=match):
        gd.sharpness(loss, params, data)
