"""Models of other libraries trained by gdjax: Equinox modules, Flax NNX (split/merge) and Flax linen (variables).

Every test uses small models on 50 examples, except the examples (``examples/equinox_mlp.py``,
``examples/flax_nnx_cnn.py``), which run with their defaults. Each new compiled run costs seconds of
compilation, so the fast lane keeps one (the model state and key of an NNX model, through fit, its
evaluation and a metric) and the checks of bad input; the rest is marked slow.
"""

from __future__ import annotations

import equinox as eqx  # the dev extra installs the models extra: these are never skipped
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _shared import load_example
from flax import nnx

import gdjax as gd


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=True))


@pytest.fixture(scope="module")
def blobs():
    """50 examples of 4 features in 3 classes: batches of 16 leave a ragged last batch of 2."""
    prob = gd.problems.classification(n=50, d=4, num_classes=3, key=jax.random.key(0))
    return {"x": np.asarray(prob.data["x"], np.float32), "y": np.asarray(prob.data["y"], np.int32)}


# ----------------------------------------------------------------------------------------------- Equinox


def eqx_loss(model, example):
    return optax.softmax_cross_entropy_with_integer_labels(model(example["x"]), example["y"])


def make_mlp(key):
    return eqx.nn.MLP(4, 3, 8, 1, activation=jax.nn.tanh, key=key)


def _fit_mlp(blobs):
    """The MLP fitted by both Equinox fit tests (one compiled program, shared)."""
    mlp = make_mlp(jax.random.key(1))
    it = gd.minibatch(blobs, 16)
    return mlp, it, gd.fit(eqx_loss, mlp, optax.adam, it, epochs=4, key=jax.random.key(2), learning_rate=3e-2)


@pytest.mark.slow  # a compiled run (Equinox models are fitted in the fast lane by test_checkpoint_load)
def test_equinox_module_trains_and_comes_back_whole(blobs):
    mlp, _, res = _fit_mlp(blobs)
    assert isinstance(res.params, eqx.nn.MLP)
    # the static leaves are the originals (the functions themselves), the arrays trained
    assert res.params.activation is jax.nn.tanh
    assert res.params.final_activation is mlp.final_activation
    assert (res.params.in_size, res.params.out_size, res.params.width_size, res.params.depth) == (4, 3, 8, 1)
    assert not np.array_equal(res.params.layers[0].weight, mlp.layers[0].weight)
    assert res.final_loss < 0.8 * res.initial_loss
    # the trained model is callable as it is
    assert res.params(jnp.asarray(blobs["x"][0])).shape == (3,)


@pytest.mark.slow  # one more compiled run
def test_equinox_module_equals_its_arrays_partitioned_by_hand(blobs):
    mlp, it, res = _fit_mlp(blobs)
    arrays, static = eqx.partition(mlp, eqx.is_inexact_array)
    by_hand = gd.fit(
        lambda p, ex: eqx_loss(eqx.combine(p, static), ex),
        arrays,
        optax.adam,
        it,
        epochs=4,
        key=jax.random.key(2),
        learning_rate=3e-2,
    )
    trained = eqx.filter(res.params, eqx.is_inexact_array)
    assert _leaves_equal(trained, by_hand.params)
    assert np.array_equal(res.losses, by_hand.losses)
    assert np.array_equal(res.epoch_losses, by_hand.epoch_losses)
    assert res.final_loss == by_hand.final_loss


@pytest.mark.slow  # a sweep, then a fit per member: seconds of compiling
def test_sweep_with_init_and_seeds_matches_fit_per_member(blobs):
    it = gd.minibatch(blobs, 16)
    key = jax.random.key(3)
    sw = gd.sweep(
        eqx_loss, None, optax.adam, it, init=make_mlp, seeds=[0, 5], learning_rates=[1e-2, 3e-2], epochs=4, key=key
    )
    assert sw.num_members == 4
    assert sorted({int(s) for s in sw.seeds}) == [0, 5]
    members = [sw.member_params(k) for k in range(sw.num_members)]
    for k, member in enumerate(members):
        assert isinstance(member, eqx.nn.MLP) and member.activation is jax.nn.tanh
        init_key, order_key = gd.seed_keys(key, int(sw.seeds[k]))
        lr = float(sw.hyperparams["learning_rate"][k])
        res = gd.fit(eqx_loss, make_mlp(init_key), optax.adam, it, epochs=4, key=order_key, learning_rate=lr)
        trained = eqx.filter(res.params, eqx.is_inexact_array)
        for a, b in zip(
            jax.tree.leaves(eqx.filter(member, eqx.is_inexact_array)), jax.tree.leaves(trained), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sw.final_loss[k], res.final_loss, rtol=1e-5)
    # the seeds gave the members their own initialisations: the same learning rate, two seeds
    lrs = sw.hyperparams["learning_rate"]
    first = next(k for k in range(4) if sw.seeds[k] == 0)
    other = next(k for k in range(4) if sw.seeds[k] == 5 and lrs[k] == lrs[first])
    assert not np.allclose(members[first].layers[0].weight, members[other].layers[0].weight)


# ----------------------------------------------------------------------------------------------- Flax NNX


class SmallNet(nnx.Module):
    """Linear-BatchNorm-ReLU-Dropout-Linear; the mode is chosen per call, Dropout's key given per call."""

    def __init__(self, *, rngs, dropout: float = 0.0):
        self.fc1 = nnx.Linear(4, 16, use_bias=False, rngs=rngs)  # a bias before BatchNorm has no gradient
        self.bn = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        self.drop = nnx.Dropout(dropout)
        self.fc2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x, *, train: bool, key=None, mask=None):
        x = self.bn(self.fc1(x), use_running_average=not train, mask=None if mask is None else mask[:, None])
        return self.fc2(self.drop(nnx.relu(x), deterministic=not train, rngs=key))


def _masked_ce(logits, y, mask):
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    w = mask.astype(ce.dtype)
    return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1.0)


def _nnx_parts(dropout: float = 0.0):
    return nnx.split(SmallNet(rngs=nnx.Rngs(0), dropout=dropout), nnx.Param, nnx.BatchStat)


def _nnx_functions(graphdef):
    def loss_fn(params, batch, *, key, model_state):  # training mode exactly when gdjax passes a key
        m = nnx.merge(graphdef, params, model_state, copy=True)
        logits = m(batch.data["x"], train=key is not None, key=key, mask=batch.mask)
        return _masked_ce(logits, batch.data["y"], batch.mask), nnx.state(m, nnx.BatchStat)

    def always_training(params, batch, *, model_state):  # needs no key: batch statistics, dropout rate 0
        m = nnx.merge(graphdef, params, model_state, copy=True)
        logits = m(batch.data["x"], train=True, mask=batch.mask)
        return _masked_ce(logits, batch.data["y"], batch.mask), nnx.state(m, nnx.BatchStat)

    def acc_fn(params, batch, *, model_state):
        m = nnx.merge(graphdef, params, model_state, copy=True)
        hit = (jnp.argmax(m(batch.data["x"], train=False), -1) == batch.data["y"]) & batch.mask
        return jnp.sum(hit) / jnp.maximum(jnp.sum(batch.mask), 1)

    return loss_fn, always_training, acc_fn


@pytest.mark.slow  # two compiled runs
def test_with_key_changes_nothing_when_the_loss_ignores_the_key(blobs):
    graphdef, params, stats = _nnx_parts(dropout=0.0)
    _, always_training, _ = _nnx_functions(graphdef)

    def keyed(params, batch, *, key, model_state):
        return always_training(params, batch, model_state=model_state)

    common = dict(epochs=3, key=jax.random.key(4), learning_rate=1e-2, batched=True, model_state=stats)
    it = gd.minibatch(blobs, 16)
    plain = gd.fit(always_training, params, optax.adam, it, **common)
    with_key = gd.fit(keyed, params, optax.adam, it, with_key=True, **common)
    assert _leaves_equal(plain.params, with_key.params)
    assert _leaves_equal(plain.state.model_state, with_key.state.model_state)
    assert np.array_equal(plain.losses, with_key.losses)
    assert np.array_equal(plain.epoch_losses, with_key.epoch_losses)
    assert plain.final_loss < plain.initial_loss


def test_model_state_is_carried_and_evaluation_leaves_it_alone(blobs):
    graphdef, params, stats = _nnx_parts(dropout=0.2)
    loss_fn, _, acc_fn = _nnx_functions(graphdef)
    res = gd.fit(
        loss_fn,
        params,
        optax.adam,
        gd.minibatch(blobs, 16),
        epochs=3,
        key=jax.random.key(5),
        learning_rate=1e-2,
        batched=True,
        with_key=True,
        model_state=stats,
        metrics={"acc": acc_fn},
    )
    final = res.state.model_state
    assert jax.tree.structure(final) == jax.tree.structure(stats)
    assert not np.allclose(final["bn"]["mean"][...], stats["bn"]["mean"][...])  # the running statistics moved
    assert not np.allclose(final["bn"]["var"][...], stats["bn"]["var"][...])
    # the evaluations saw the final state, unchanged: the full-data loss and accuracy by hand (key=None)
    whole = gd.Batch(jax.tree.map(jnp.asarray, blobs), jnp.ones(len(blobs["y"]), bool))
    by_hand = jax.jit(lambda p, s: (loss_fn(p, whole, key=None, model_state=s), acc_fn(p, whole, model_state=s)))
    (loss, returned), acc = by_hand(res.params, final)
    assert _leaves_equal(returned, final)
    np.testing.assert_allclose(res.final_loss, float(loss), rtol=1e-5)
    np.testing.assert_allclose(res.history["loss"][-1], float(loss), rtol=1e-5)
    np.testing.assert_allclose(res.final_metrics["acc"], float(acc), atol=1e-6)
    # ... and not the initial state, which gives another loss
    (with_initial, _), _ = by_hand(res.params, stats)
    assert abs(float(with_initial) - float(loss)) > 1e-3


@pytest.mark.slow  # a compiled run and a jitted step
def test_model_state_matches_a_hand_written_loop(blobs):
    """The state is carried from step to step, and an evaluation (whose loss returns new statistics) never keeps its."""
    graphdef, params, stats = _nnx_parts(dropout=0.0)
    _, always_training, _ = _nnx_functions(graphdef)
    it, key, epochs = gd.minibatch(blobs, 16), jax.random.key(6), 2
    res = gd.fit(always_training, params, optax.adam(1e-2), it, epochs=epochs, key=key, batched=True, model_state=stats)
    opt = optax.adam(1e-2)
    step = jax.jit(gd.make_step(always_training, opt, batched=True, stateful=True))
    state = gd.init(params, opt, stats)
    for epoch in range(epochs):
        for batch in it.iterate(key, epoch=epoch):
            state, _ = step(state, batch)
    assert int(state.step) == res.num_steps == epochs * 4
    for a, b in zip(jax.tree.leaves(state.model_state), jax.tree.leaves(res.state.model_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(res.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------- Flax linen


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool, mask=None):
        x = nn.Dense(16, use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x, mask=mask))
        return nn.Dense(3)(x)


@pytest.mark.slow  # one more compiled run; the NNX tests cover the model state in the fast lane
def test_flax_linen_trains_with_params_and_model_state(blobs):
    model = LinenNet()
    variables = model.init(jax.random.key(7), jnp.zeros((1, 4)), train=False)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    assert list(model_state) == ["batch_stats"]

    def loss_fn(params, batch, *, model_state):
        logits, new_state = model.apply(
            {"params": params, **model_state},
            batch.data["x"],
            train=True,
            mask=batch.mask[:, None],
            mutable=list(model_state),
        )
        return _masked_ce(logits, batch.data["y"], batch.mask), dict(new_state)

    res = gd.fit(
        loss_fn,
        params,
        optax.adam,
        gd.minibatch(blobs, 16),
        epochs=4,
        key=jax.random.key(8),
        learning_rate=1e-2,
        batched=True,
        model_state=model_state,
    )
    assert res.final_loss < 0.8 * res.initial_loss
    final = res.state.model_state
    assert jax.tree.structure(final) == jax.tree.structure(model_state)
    assert jax.tree.structure(res.params) == jax.tree.structure(params)
    assert not np.allclose(final["batch_stats"]["BatchNorm_0"]["mean"], 0.0)
    logits = model.apply({"params": res.params, **final}, jnp.asarray(blobs["x"]), train=False)
    assert logits.shape == (50, 3) and np.isfinite(logits).all()


# ----------------------------------------------------------------------------------------------- bad input


def test_model_state_of_the_wrong_structure_is_refused(blobs):
    state0 = {"mean": jnp.zeros(4), "count": jnp.zeros((), jnp.int32)}

    def loss_fn(params, example, *, model_state):
        loss = jnp.sum((params["w"] * example["x"]) ** 2)
        return loss, {"mean": model_state["mean"]}  # the count is lost

    with pytest.raises(TypeError, match="model_state"):
        gd.fit(
            loss_fn,
            {"w": jnp.ones(4)},
            optax.sgd(0.1),
            gd.minibatch(blobs, 16),
            epochs=1,
            key=jax.random.key(0),
            model_state=state0,
        )


def test_with_key_needs_a_loss_that_takes_key(blobs):
    def loss_fn(params, example):
        return jnp.sum((params["w"] * example["x"]) ** 2)

    with pytest.raises(TypeError, match="cannot take key="):
        gd.fit(
            loss_fn,
            {"w": jnp.ones(4)},
            optax.sgd(0.1),
            gd.minibatch(blobs, 16),
            epochs=1,
            key=jax.random.key(0),
            with_key=True,
        )


class _Counter(eqx.Module):
    counts: jax.Array
    activation: object = jax.nn.relu


def test_a_model_without_float_arrays_is_refused(blobs):
    with pytest.raises(ValueError, match="no float arrays"):
        gd.fit(
            lambda m, ex: jnp.sum(m.counts) * 1.0,
            _Counter(jnp.arange(3)),
            optax.sgd(0.1),
            gd.minibatch(blobs, 16),
            epochs=1,
            key=jax.random.key(0),
        )


class _WithBatchNorm(nnx.Module):
    def __init__(self, rngs):
        self.linear, self.bn = nnx.Linear(4, 3, rngs=rngs), nnx.BatchNorm(3, rngs=rngs)


def test_an_nnx_module_with_batch_statistics_is_refused_with_the_recipe(blobs, compiles):
    module = _WithBatchNorm(nnx.Rngs(0))
    with compiles() as c, pytest.raises(TypeError, match=r"Flax NNX module holding batch statistics.*nnx.split"):
        gd.fit(lambda m, b: 0.0, module, optax.sgd(0.1), gd.minibatch(blobs, 16), epochs=1, key=jax.random.key(0))
    assert c.count == 0


# ----------------------------------------------------------------------------------------------- examples


@pytest.mark.slow
def test_example_equinox_mlp(capsys):
    out = load_example("equinox_mlp").main([])
    fit, sw = out["fit"], out["sweep"]
    assert isinstance(fit["model"], eqx.nn.MLP) and isinstance(sw["model"], eqx.nn.MLP)
    assert fit["test_accuracy"] >= 0.93
    assert fit["test_accuracy"] == pytest.approx(fit["eval_acc"], abs=1.5 / 360)
    assert fit["final_loss"] < 0.1 * fit["initial_loss"]
    # 3 seeds x 4 learning rates; the pick is among the best final accuracies and does well on the test split
    assert len(sw["final_eval_acc"]) == 12 and sorted(set(sw["seeds"].tolist())) == [0, 1, 2]
    assert sw["test_accuracy"] >= 0.95
    assert sw["test_accuracy"] >= np.max(sw["final_eval_acc"]) - 0.02
    assert "best (*)" in capsys.readouterr().out


@pytest.mark.slow
def test_example_flax_nnx_cnn(capsys):
    out = load_example("flax_nnx_cnn").main(["--linen"])
    assert out["test_accuracy"] >= 0.95
    # gdjax's evaluation and the merged-back module agree (at most one of 360 images apart, from rounding)
    assert out["test_accuracy"] == pytest.approx(out["eval_acc"], abs=1.5 / 360)
    assert out["batch_stats_changed"]
    assert out["final_loss"] < 0.1 * out["initial_loss"]
    assert out["linen_test_accuracy"] >= 0.9
    assert "merged-back model" in capsys.readouterr().out
