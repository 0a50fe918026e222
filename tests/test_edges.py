"""Edges a hostile user found after the first hardening round: each once failed silently or with a raw error."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gdjax as gd


@pytest.mark.parametrize("lr", [1e-46, 1e-300])
def test_a_learning_rate_that_is_zero_in_float32_is_refused(compiles, lr, linear, small_run):
    p, it = small_run
    with compiles() as c, pytest.raises(ValueError, match=r"learning_rate is .*, which is 0 in float32"):
        gd.fit(linear.loss, p, optax.sgd, it, epochs=1, key=jax.random.key(0), learning_rate=lr)
    with pytest.raises(ValueError, match=r"learning_rates \(entry 1\) is .*, which is 0 in float32"):
        gd.sweep(linear.loss, p, optax.sgd, it, learning_rates=[0.1, lr], epochs=1, key=jax.random.key(0))
    assert c.count == 0


def test_zero_itself_is_still_a_learning_rate(linear, small_run):
    p, it = small_run
    res = gd.fit(linear.loss, p, optax.sgd, it, epochs=1, key=jax.random.key(0), learning_rate=0.0)
    assert res.final_loss == res.initial_loss


@pytest.mark.parametrize("where", ["data", "params"])
def test_dict_keys_of_mixed_types_are_named(where):
    x, y = np.ones((8, 2), np.float32), np.ones(8, np.float32)
    if where == "data":
        with pytest.raises(TypeError, match=r"data cannot be flattened .* all strings"):
            gd.minibatch({"x": x, 0: y}, 4)
    else:
        it = gd.minibatch({"x": x, "y": y}, 4)
        bad = {"w": jnp.zeros(2), 1: jnp.zeros(())}
        with pytest.raises(TypeError, match=r"params cannot be flattened"):
            gd.fit(lambda p, ex: p["w"].sum(), bad, optax.sgd, it, epochs=1, key=jax.random.key(0), learning_rate=0.1)


@pytest.mark.parametrize(
    ("seed", "error", "match"),
    [
        (-1, ValueError, "between 0 and"),
        (2**32, ValueError, "between 0 and"),
        (1.5, TypeError, "integer"),
        ("3", TypeError, "integer"),
        (True, TypeError, "integer"),
    ],
)
def test_seed_keys_checks_its_seed(seed, error, match):
    with pytest.raises(error, match=f"seed must be .*{match}"):
        gd.seed_keys(jax.random.key(0), seed)


def test_seed_keys_takes_numpy_and_jax_integers_as_the_same_seed():
    key = jax.random.key(0)
    ref = jax.random.key_data(gd.seed_keys(key, 3)[0])
    for seed in (np.int64(3), jnp.int32(3), np.uint32(3)):
        np.testing.assert_array_equal(jax.random.key_data(gd.seed_keys(key, seed)[0]), ref)


def test_has_aux_with_a_plain_loss_says_what_came_back_not_a_tracer_class(linear, small_run):
    p, it = small_run
    with pytest.raises(TypeError, match=r"returned one array of shape \(\) and dtype float32") as info:
        gd.fit(linear.loss, p, optax.sgd, it, epochs=1, key=jax.random.key(0), learning_rate=0.1, has_aux=True)
    assert "Tracer" not in str(info.value)


def test_a_resumed_finished_run_shows_its_real_epoch_on_the_bar(tmp_path, capsys, linear, small_run):
    p, it = small_run
    run = lambda **kw: gd.fit(  # noqa: E731
        linear.loss, p, optax.sgd, it, epochs=4, key=jax.random.key(0), learning_rate=0.1, checkpoint=tmp_path, **kw
    )
    run()
    again = run(progress=True)
    assert again.resumed_from == 4
    err = capsys.readouterr().err
    assert "epoch 4/4" in err and "epoch 0/4" not in err


def test_float64_data_at_float32s_largest_value_is_accepted():
    x = np.array([[3.4028235e38], [-1.0]])  # how float32's largest value prints: it rounds to it, finite
    with pytest.warns(UserWarning, match="float64 but JAX's x64 mode is off"):
        it = gd.minibatch({"x_at_float32_max": x}, 1)  # a name of its own: the warning is once per name
    assert np.isfinite(np.asarray(it.data["x_at_float32_max"])).all()
    with pytest.raises(ValueError, match="overflow float32"):
        gd.minibatch({"x2": np.array([[3.5e38]])}, 1)
