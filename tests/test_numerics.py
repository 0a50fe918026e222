"""Numbers that must not be silently wrong: low precision, overflowing sums, wide integers, huge floats."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gdjax as gd


def _logistic_f16(n):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2)).astype(np.float16)
    y = (x[:, 0] > 0).astype(np.float16)
    model = gd.models.logistic()
    params = jax.tree.map(lambda a: a.astype(jnp.float16), model.init(None, 2))
    return model, params, {"x": x, "y": y}


@pytest.mark.parametrize("dtype", [jnp.float16, pytest.param(jnp.bfloat16, marks=pytest.mark.slow)])
def test_low_precision_losses_over_more_than_65504_examples_are_means_not_nan_or_zero(dtype):
    n = 70_000  # past float16's largest finite value, so a float16 count is inf
    model, params, data = _logistic_f16(n)
    data = jax.tree.map(lambda a: np.asarray(a, dtype), data)
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    res = gd.fit(
        model.loss, params, optax.sgd, gd.full_batch(data), epochs=1, key=jax.random.key(0), learning_rate=0.0, tol=0.01
    )
    # at zero weights the logistic loss is log 2 for every example, whatever the dtype's precision
    np.testing.assert_allclose(res.initial_loss, np.log(2.0), rtol=1e-2)
    np.testing.assert_allclose(res.epoch_losses, [res.initial_loss], rtol=1e-6)
    assert not res.converged and not res.diverged
    assert res.epoch_losses.dtype == np.float32  # history kept in float32 at least


def test_a_float16_step_loss_counts_a_large_batch_exactly():
    step = gd.make_step(lambda p, ex: (p * ex) ** 2, optax.sgd(0.0))
    state = gd.init(jnp.ones((), jnp.float16), optax.sgd(0.0))
    n = 70_000
    batch = gd.Batch(jnp.full((n,), 2.0, jnp.float16), jnp.arange(n) < n - 3)
    _, metrics = jax.jit(step)(state, batch)
    assert float(metrics["loss"]) == 4.0


def test_a_full_data_loss_whose_sum_overflows_float32_is_still_its_mean_not_a_divergence():
    n = 100_000
    x = np.ones((n, 1), np.float32)
    res = gd.fit(
        lambda p, ex: p["w"] * 1e34 * ex[0],
        {"w": jnp.ones(())},
        optax.sgd,
        gd.full_batch(x),
        epochs=2,
        key=jax.random.key(0),
        learning_rate=0.0,
    )
    assert not res.diverged
    np.testing.assert_allclose(res.initial_loss, 1e34, rtol=1e-5)
    np.testing.assert_allclose(res.epoch_losses, [1e34, 1e34], rtol=1e-5)


def test_int64_data_beyond_int32_is_refused_not_wrapped():
    ids = np.array([[2**40 + 7], [3]], np.int64)
    with pytest.raises(ValueError, match=r"data\['id'\] is int64 .* outside int32's range .*astype\('float32'\)"):
        gd.minibatch({"id": ids, "x": np.zeros((2, 1), np.float32)}, 1)


def test_int64_data_within_int32_is_kept_exactly():
    ids = np.array([[-(2**31)], [2**31 - 1]], np.int64)
    it = gd.minibatch({"id": ids}, 1)
    assert it.data["id"].dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(it.data["id"]), ids)


def test_uint64_beyond_uint32_is_refused():
    with pytest.raises(ValueError, match=r"uint64 .* outside uint32"):
        gd.minibatch(np.array([[2**33]], np.uint64), 1)


def test_float64_data_too_large_for_float32_is_called_an_overflow_not_non_finite():
    x = np.ones((5, 2))
    x[3, 1] = 1e300
    with pytest.raises(ValueError, match=r"as large as 1e\+300 \(first in row 3.*overflow float32") as info:
        gd.minibatch(x, 2)
    assert "non-finite" not in str(info.value)


def test_float64_data_too_large_for_float32_is_fine_with_x64():
    with jax.enable_x64(True):
        it = gd.minibatch(np.array([[1e300], [1.0]]), 1)
        assert it.data.dtype == jnp.float64


def test_data_checks_work_in_blocks_and_find_the_first_bad_row(monkeypatch):
    from gdjax import _validate_data

    monkeypatch.setattr(_validate_data, "_BLOCK_ELEMENTS", 6)  # 3 rows of 2 per block
    x = np.zeros((10, 2), np.float32)
    x[7, 0] = np.nan
    x[8, 1] = np.inf
    with pytest.raises(ValueError, match=r"row 7 \(2 bad rows in all\)"):
        gd.minibatch(x, 2)
