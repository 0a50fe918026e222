"""Continuing runs, keys and model state in the loss, static leaves, and checkpoints that are extended.

The known answer everywhere is the uninterrupted run: ``fit(5)`` then
``fit(res.state, 5 more)`` must give the bits of ``fit(10)``, a checkpoint
extended from 5 to 10 epochs likewise, and a run with a per-step key or a
model state must resume exactly.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _shared import LINEAR, linear_problem

import gdjax as gd

MLP = gd.models.mlp((6,))
PROB = linear_problem(90, 4)
IT = gd.minibatch(PROB.data, 16)  # 6 steps per epoch, a ragged last batch
P0 = MLP.init(jax.random.key(1), 4)
KEY = jax.random.key(5)


def _same(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=True))


@pytest.mark.parametrize("opt", [optax.sgd, optax.adam])
def test_fit_then_continue_equals_one_longer_fit_bit_for_bit(opt):
    kw = {"key": KEY, "learning_rate": 0.02, "log_every": 2}
    p0 = LINEAR.init(jax.random.key(0), 4)
    whole = gd.fit(LINEAR.loss, p0, opt, IT, epochs=10, **kw)
    first = gd.fit(LINEAR.loss, p0, opt, IT, epochs=5, **kw)
    more = gd.fit(LINEAR.loss, first.state, opt, IT, epochs=5, **kw)
    assert _same(more.state, whole.state)  # params, optimizer state, step count
    assert (more.first_epoch, more.num_epochs, more.num_steps) == (5, 10, 60)
    np.testing.assert_array_equal(more.history_epochs, np.arange(6, 11))
    np.testing.assert_array_equal(more.epoch_losses, whole.epoch_losses[5:])
    np.testing.assert_array_equal(more.losses, whole.losses[15:])  # 30 steps of windows of 2: whole windows
    assert more.initial_loss == first.final_loss


@pytest.mark.slow
def test_a_continued_sweep_equals_one_longer_sweep():
    kw = {"learning_rates": [0.01, 0.05, 0.2], "hyperparams": {"momentum": 0.5}, "key": KEY}
    p0 = LINEAR.init(jax.random.key(0), 4)
    whole = gd.sweep(LINEAR.loss, p0, optax.sgd, IT, epochs=6, **kw)
    first = gd.sweep(LINEAR.loss, p0, optax.sgd, IT, epochs=2, **kw)
    more = gd.sweep(LINEAR.loss, first.state, optax.sgd, IT, epochs=4, **kw)
    assert _same(more.state, whole.state)
    np.testing.assert_array_equal(more.epoch_losses, whole.epoch_losses[:, 2:])
    assert more.first_epoch == 2 and (more.num_epochs == 6).all()


def test_continuing_is_checked_before_compiling(compiles):
    res = gd.fit(MLP.loss, P0, optax.sgd, IT, epochs=1, key=KEY, learning_rate=0.01)
    with compiles() as c:
        with pytest.raises(ValueError, match=r"params.opt_state does not fit this optimizer"):
            gd.fit(MLP.loss, res.state, optax.adam, IT, epochs=1, key=KEY, learning_rate=0.01)
        with pytest.raises(ValueError, match=r"taken 6 steps, which is not a whole number of epochs .*4 steps"):
            gd.fit(MLP.loss, res.state, optax.sgd, gd.minibatch(PROB.data, 24), epochs=1, key=KEY, learning_rate=0.1)
        with pytest.raises(ValueError, match=r"model_state is given, but params is a TrainState"):
            gd.fit(MLP.loss, res.state, optax.sgd, IT, epochs=1, key=KEY, learning_rate=0.1, model_state={})
        sw = gd.sweep(MLP.loss, P0, optax.sgd, IT, learning_rates=[0.1, 0.2], epochs=1, key=KEY)
    with compiles() as c, pytest.raises(ValueError, match=r"state of a sweep of 2 members, but this sweep has 3"):
        gd.sweep(MLP.loss, sw.state, optax.sgd, IT, learning_rates=[0.1, 0.2, 0.3], epochs=1, key=KEY)
    assert c.count == 0


@pytest.mark.slow
def test_a_checkpoint_of_a_built_optimizer_is_extended_from_5_to_10_epochs(tmp_path):
    opt = optax.adam(0.02)
    ref = gd.fit(MLP.loss, P0, opt, IT, epochs=10, key=KEY)
    gd.fit(MLP.loss, P0, opt, IT, epochs=5, key=KEY, checkpoint=tmp_path)
    more = gd.fit(MLP.loss, P0, opt, IT, epochs=10, key=KEY, checkpoint=tmp_path)
    assert more.resumed_from == 5
    assert _same(more.state, ref.state)
    np.testing.assert_array_equal(more.losses, ref.losses)
    np.testing.assert_array_equal(more.epoch_losses, ref.epoch_losses)


@pytest.mark.slow
def test_a_built_optimizer_is_recorded_by_its_state_and_another_is_refused(tmp_path):
    gd.fit(MLP.loss, P0, optax.adam(0.01), IT, epochs=1, key=KEY, checkpoint=tmp_path)
    meta = gd.checkpoint.read_metadata(next(tmp_path.glob("epoch-*.npz")))
    recorded = meta["settings"]["optimizer"]
    assert "not recorded" in recorded["values"] and "[0].mu[0]['b']: float32[6]" in recorded["state"]
    assert recorded["state"][0] == "ScaleByAdamState"
    with pytest.raises(ValueError, match=r"other settings \(optimizer"):
        gd.fit(MLP.loss, P0, optax.sgd(0.01), IT, epochs=2, key=KEY, checkpoint=tmp_path)


def _noisy(params, example, *, key):
    """The linear model's loss with noise on the prediction when there is a key (training), none at evaluation."""
    noise = 0.0 if key is None else 0.3 * jax.random.normal(key)
    return LINEAR.loss(params, {"x": example["x"], "y": example["y"] + noise})


@pytest.mark.slow
def test_per_example_keys_are_reproducible_resume_exactly_and_are_none_at_evaluation(tmp_path):
    p0 = LINEAR.init(jax.random.key(0), 4)
    kw = {"key": KEY, "learning_rate": 0.05, "with_key": True}
    a = gd.fit(_noisy, p0, optax.sgd, IT, epochs=4, **kw)
    b = gd.fit(_noisy, p0, optax.sgd, IT, epochs=4, **kw)
    assert _same(a.state, b.state)
    other = gd.fit(_noisy, p0, optax.sgd, IT, epochs=4, **{**kw, "key": jax.random.key(6)})
    assert not _same(a.params, other.params)
    # evaluation calls the loss with key=None: the history is the noiseless full-data loss of the params
    exact = float(jnp.mean(jax.vmap(LINEAR.loss, (None, 0))(a.params, PROB.data)))
    np.testing.assert_allclose(a.final_loss, exact, rtol=1e-6)
    # the step losses are noisy: examples get different keys (a shared key would shift a batch's targets alike)
    plain = gd.fit(LINEAR.loss, p0, optax.sgd, IT, epochs=4, key=KEY, learning_rate=0.05)
    assert not np.allclose(a.losses, plain.losses, rtol=1e-3)
    gd.fit(_noisy, p0, optax.sgd, IT, epochs=2, checkpoint=tmp_path, **kw)
    resumed = gd.fit(_noisy, p0, optax.sgd, IT, epochs=4, checkpoint=tmp_path, **kw)
    assert resumed.resumed_from == 2 and _same(resumed.state, a.state)
    more = gd.fit(_noisy, gd.fit(_noisy, p0, optax.sgd, IT, epochs=2, **kw).state, optax.sgd, IT, epochs=2, **kw)
    assert _same(more.state, a.state)


def test_a_key_the_loss_ignores_changes_nothing():
    ignore = lambda params, example, *, key: LINEAR.loss(params, example)  # noqa: E731
    p0 = LINEAR.init(jax.random.key(0), 4)
    a = gd.fit(ignore, p0, optax.sgd, IT, epochs=3, key=KEY, learning_rate=0.05, with_key=True)
    b = gd.fit(LINEAR.loss, p0, optax.sgd, IT, epochs=3, key=KEY, learning_rate=0.05)
    assert _same(a.state, b.state)
    np.testing.assert_array_equal(a.losses, b.losses)


def _centred(params, batch, *, model_state):
    """A batched loss that keeps a running mean of x (as batch norm keeps its statistics) and centres by it."""
    w = batch.mask.astype(jnp.float32)
    mean = jnp.sum(batch.data["x"] * w[:, None], 0) / jnp.maximum(jnp.sum(w), 1.0)
    pred = (batch.data["x"] - model_state["mean"]) @ params["w"] + params["b"]
    loss = jnp.sum(w * (pred - batch.data["y"]) ** 2) / jnp.maximum(jnp.sum(w), 1.0)
    return loss, {"mean": 0.9 * model_state["mean"] + 0.1 * mean}


@pytest.mark.slow
def test_model_state_is_carried_checkpointed_and_passed_unchanged_to_evaluation(tmp_path):
    p0, s0 = LINEAR.init(jax.random.key(0), 4), {"mean": jnp.zeros(4)}
    kw = {"key": KEY, "learning_rate": 0.05, "batched": True, "model_state": s0}
    res = gd.fit(_centred, p0, optax.sgd, IT, epochs=3, **kw)
    assert not np.allclose(res.state.model_state["mean"], 0.0)
    # by hand: the state after each batch of the first epoch, in the iterator's order
    state, mean = gd.init(p0, optax.sgd(0.05), s0), s0
    step = gd.make_step(_centred, optax.sgd(0.05), batched=True, stateful=True)
    for batch in IT.iterate(KEY, epoch=0):
        state, _ = step(state, batch)
    one = gd.fit(_centred, p0, optax.sgd, IT, epochs=1, **kw)
    np.testing.assert_allclose(one.state.model_state["mean"], state.model_state["mean"], rtol=1e-6)
    # the evaluation used the final state and did not update it
    batch = gd.Batch(PROB.data, jnp.ones(90, bool))
    loss, new = _centred(res.params, batch, model_state=res.state.model_state)
    np.testing.assert_allclose(res.final_loss, float(loss), rtol=1e-6)
    assert not np.allclose(new["mean"], res.state.model_state["mean"])
    gd.fit(_centred, p0, optax.sgd, IT, epochs=2, checkpoint=tmp_path, **kw)
    resumed = gd.fit(_centred, p0, optax.sgd, IT, epochs=3, checkpoint=tmp_path, **kw)
    assert resumed.resumed_from == 2 and _same(resumed.state, res.state)
    del mean


def test_per_example_model_state_is_the_masked_mean_of_the_examples_states():
    def loss(params, example, *, model_state):
        return LINEAR.loss(params, example), {"sum": model_state["sum"] + example["x"], "n": model_state["n"] + 1}

    s0 = {"sum": jnp.zeros(4), "n": jnp.zeros((), jnp.int32)}
    state = gd.init(LINEAR.init(jax.random.key(0), 4), optax.sgd(0.0), s0)
    batch = next(iter(gd.minibatch(PROB.data, 64).iterate(KEY, epoch=0)))
    ragged = gd.Batch(batch.data, batch.mask.at[40:].set(False))
    new, _ = gd.make_step(loss, optax.sgd(0.0), stateful=True)(state, ragged)
    np.testing.assert_allclose(new.model_state["sum"], np.asarray(batch.data["x"][:40]).mean(0), rtol=1e-6)
    assert int(new.model_state["n"]) == 1  # an int leaf: the first example's


def test_the_loss_form_is_checked_before_compiling(compiles):
    p0, ms = LINEAR.init(jax.random.key(0), 4), {"m": jnp.zeros(2)}
    kw = {"key": KEY, "learning_rate": 0.05, "epochs": 1}
    with compiles() as c:
        with pytest.raises(TypeError, match=r"loss_fn cannot take key=.*with_key=True passes each step's PRNG key"):
            gd.fit(LINEAR.loss, p0, optax.sgd, IT, with_key=True, **kw)
        with pytest.raises(TypeError, match=r"loss_fn cannot take model_state="):
            gd.fit(LINEAR.loss, p0, optax.sgd, IT, model_state=ms, **kw)
        wrong = lambda p, b, *, model_state: (LINEAR.loss(p, b), {"m": jnp.zeros(3)})  # noqa: E731
        with pytest.raises(TypeError, match=r"new model state shaped like.*model_state\['m'\] is float32\[3\]"):
            gd.fit(wrong, p0, optax.sgd, IT, model_state=ms, **kw)
        bare = lambda p, b, *, model_state: LINEAR.loss(p, b)  # noqa: E731
        with pytest.raises(TypeError, match=r"must return \(loss, new_model_state\) with model_state"):
            gd.fit(bare, p0, optax.sgd, IT, model_state=ms, **kw)
        with pytest.raises(ValueError, match=r"has no float arrays to train"):
            gd.fit(LINEAR.loss, {"n": 3, "act": jnp.tanh}, optax.sgd, IT, **kw)
        with pytest.raises(TypeError, match="with_key must be True or False"):
            gd.fit(LINEAR.loss, p0, optax.sgd, IT, with_key="yes", **kw)
    assert c.count == 0


def test_make_step_asks_for_its_key_and_model_state():
    step = gd.make_step(_noisy, optax.sgd(0.1), with_key=True)
    state = gd.init(LINEAR.init(jax.random.key(0), 4), optax.sgd(0.1))
    batch = next(iter(IT.iterate(KEY)))
    with pytest.raises(TypeError, match=r"call it as step\(state, batch, key\)"):
        step(state, batch)
    a, _ = step(state, batch, KEY)
    b, _ = step(state, batch, KEY)
    assert _same(a, b)
    with pytest.raises(TypeError, match=r"state.model_state is None"):
        gd.make_step(_centred, optax.sgd(0.1), batched=True, stateful=True)(state, batch)


def test_static_leaves_are_held_and_given_back():
    scale = np.array([2], np.int32)

    def loss(params, example):
        return (params["act"](example["x"] @ params["w"]) * params["k"][0] - example["y"]) ** 2

    params = {"w": jnp.zeros(4), "act": jnp.tanh, "k": scale}
    res = gd.fit(loss, params, optax.sgd, IT, epochs=3, key=KEY, learning_rate=0.05)
    assert res.params["act"] is jnp.tanh and res.params["k"] is scale
    assert res.final_loss < res.initial_loss
    assert not np.array_equal(res.params["w"], np.zeros(4))
    more = gd.fit(loss, res.state, optax.sgd, IT, epochs=1, key=KEY, learning_rate=0.05)
    assert more.first_epoch == 3 and more.params["act"] is jnp.tanh


class _Counts(eqx.Module):
    """A model that can be called (so it is callable) but holds nothing to train."""

    n: jax.Array

    def __call__(self, x):
        return x * self.n


def test_odd_model_states_and_models_are_explained_before_compiling(tmp_path, compiles):
    p0 = LINEAR.init(jax.random.key(0), 4)
    keyed, texts = {"k": jax.random.key(3)}, {"tag": np.array(["bn1"])}
    kw = {"key": KEY, "learning_rate": 0.05, "epochs": 1, "batched": True}

    def same(params, batch, *, model_state):  # a batched loss that hands its model state back unchanged
        return gd.masked_mean(jax.vmap(LINEAR.loss, (None, 0))(params, batch.data), batch.mask), model_state

    with compiles() as c:
        with pytest.raises(TypeError, match=r"model_state\['k'\] is a typed PRNG key, which checkpoints do not"):
            gd.fit(same, p0, optax.sgd, IT, model_state=keyed, checkpoint=tmp_path, **kw)
        with pytest.raises(TypeError, match=r"model_state\['tag'\] has dtype <U3, which JAX cannot carry"):
            gd.fit(same, p0, optax.sgd, IT, model_state=texts, **kw)
        with pytest.raises(TypeError, match=r"model_state\['c'\] is of type float.*jnp.asarray"):
            gd.fit(same, p0, optax.sgd, IT, model_state={"c": 0.5}, **kw)

        with pytest.raises(ValueError, match=r"params has no float arrays to train"):
            gd.fit(LINEAR.loss, _Counts(np.arange(3)), optax.sgd, IT, **{**kw, "batched": False})
    assert c.count == 0


def test_a_typed_key_among_the_params_is_held_static():
    params = {**LINEAR.init(jax.random.key(0), 4), "seed": jax.random.key(7)}
    res = gd.fit(lambda p, ex: LINEAR.loss(p, ex), params, optax.sgd, IT, epochs=1, key=KEY, learning_rate=0.05)
    assert res.params["seed"] is params["seed"] and res.final_loss < res.initial_loss
