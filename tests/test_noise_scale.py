"""``gd.noise_scale``: B_simple = tr(Sigma) / |G|^2 against its closed form for least squares, and its invariances."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _shared import LINEAR
from hypothesis import given, settings
from hypothesis import strategies as st

import gdjax as gd
from gdjax import _blocks

N, D = 96, 3


def _data(dtype=np.float64) -> dict[str, np.ndarray]:
    return gd.problems.linear_regression(n=N, d=D, key=jax.random.key(5), dtype=dtype).data


def _params(dtype=jnp.float64) -> dict[str, jax.Array]:
    return {"w": jnp.asarray([0.3, -1.0, 2.0], dtype), "b": jnp.asarray(0.5, dtype)}


def _closed_form(data, params, l2: float = 0.0) -> tuple[float, float]:
    """``(tr(Sigma), |G|^2)`` in float64 numpy: the gradient of ``(x.w + b - y)^2 / 2`` is ``(x.w + b - y) [x, 1]``."""
    x, y = np.asarray(data["x"], np.float64), np.asarray(data["y"], np.float64)
    w, b = np.asarray(params["w"], np.float64), float(params["b"])
    grads = (x @ w + b - y)[:, None] * np.column_stack([x, np.ones(len(y))])
    grads[:, :-1] += l2 * w  # an L2 term adds the same vector to every example's gradient
    mean = grads.mean(axis=0)
    return float(np.mean(np.sum((grads - mean) ** 2, axis=1))), float(mean @ mean)


def test_least_squares_matches_the_closed_form() -> None:
    with jax.enable_x64(True):
        data, params = _data(), _params()
        info = gd.noise_scale(LINEAR.loss, params, data, return_info=True)
    trace, norm = _closed_form(data, params)
    assert info.trace_sigma == pytest.approx(trace, rel=1e-10)
    assert info.grad_norm_sq == pytest.approx(norm, rel=1e-10)
    assert info.value == pytest.approx(trace / norm, rel=1e-10) and info.num_examples == N
    assert info.loss == pytest.approx(0.5 * np.mean((data["x"] @ np.asarray(params["w"]) + 0.5 - data["y"]) ** 2))


def test_loss_hyperparams_are_passed() -> None:
    def loss(params, example, *, l2):
        return LINEAR.loss(params, example) + 0.5 * l2 * jnp.sum(params["w"] ** 2)

    with jax.enable_x64(True):
        data, params = _data(), _params()
        got = gd.noise_scale(loss, params, data, loss_hyperparams={"l2": 0.7})
    trace, norm = _closed_form(data, params, l2=0.7)
    assert got == pytest.approx(trace / norm, rel=1e-10)


def test_per_example_and_batched_forms_agree() -> None:
    data, params = _data(np.float32), _params(jnp.float32)

    def batched(p, batch):
        return gd.masked_mean(jax.vmap(LINEAR.loss, (None, 0))(p, batch.data), batch.mask)

    one = gd.noise_scale(LINEAR.loss, params, data)
    assert gd.noise_scale(batched, params, data, batched=True) == pytest.approx(one, rel=1e-6)
    assert gd.noise_scale(LINEAR.loss, params, gd.minibatch(data, 10, on_device=False)) == pytest.approx(one, rel=1e-6)


@pytest.mark.parametrize("rows", [1, 7, 50])
def test_blocks_of_any_size_give_the_value_of_one_block(rows: int, monkeypatch) -> None:
    with jax.enable_x64(True):
        data, params = _data(), _params()
        whole = gd.noise_scale(LINEAR.loss, params, data)
        monkeypatch.setattr(_blocks, "BLOCK_ELEMENTS", rows * (D + 1))  # as many rows of data and of gradients
        assert gd.noise_scale(LINEAR.loss, params, data) == pytest.approx(whole, rel=1e-12)


@settings(max_examples=15, deadline=None)
@given(st.permutations(range(N)))
def test_the_order_of_the_examples_does_not_matter(order: list[int]) -> None:
    with jax.enable_x64(True):
        data, params = _data(), _params()
        shuffled = {k: v[np.asarray(order)] for k, v in data.items()}
        want = gd.noise_scale(LINEAR.loss, params, data)
        assert gd.noise_scale(LINEAR.loss, params, shuffled) == pytest.approx(want, rel=1e-12)


def test_a_zero_mean_gradient_gives_inf() -> None:
    data = {"x": np.array([[1.0], [-1.0], [2.0], [-2.0]], np.float32)}
    info = gd.noise_scale(lambda p, ex: jnp.sum(p * ex["x"]), jnp.ones(1), data, return_info=True)
    assert info.grad_norm_sq == 0 and info.trace_sigma == pytest.approx(2.5) and math.isinf(info.value)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (
            {"data": {"x": np.ones((1, 3), np.float32), "y": np.ones(1, np.float32)}},
            ValueError,
            "data has 1 example; the noise scale",
        ),
        ({"data": {"x": np.zeros((0, 3), np.float32), "y": np.zeros(0, np.float32)}}, ValueError, "data is empty"),
        ({"loss_fn": None}, TypeError, "loss_fn must be callable"),
        ({"params": {"n": 3}}, ValueError, "params has no float arrays"),
        ({"has_aux": 1}, TypeError, "has_aux must be True or False"),
    ],
    ids=["one-example", "empty", "not-callable", "no-floats", "has-aux-not-bool"],
)
def test_bad_input_is_refused_before_compiling(change, error, match, compiles) -> None:
    args = {"loss_fn": LINEAR.loss, "params": _params(jnp.float32), "data": _data(np.float32)}
    args.update(change)
    with compiles() as c, pytest.raises(error, match=match):
        gd.noise_scale(args.pop("loss_fn"), args.pop("params"), args.pop("data"), **args)
    assert c.count == 0


def test_non_finite_gradients_are_refused() -> None:
    with pytest.raises(ValueError, match="per-example gradients of the loss are not finite"):
        gd.noise_scale(
            lambda p, ex: jnp.sqrt(jnp.abs(p - ex["y"])), jnp.zeros(()), {"y": np.array([0.0, 1.0], np.float32)}
        )
