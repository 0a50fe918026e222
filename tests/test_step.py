"""The pure step: masked means, any optimizer, any pytree, jit or not."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gdjax as gd


def _loss(params, ex):
    return 0.5 * (ex["x"] @ params["w"] + params["b"] - ex["y"]) ** 2


def _problem(n=10):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 1.0 + 0.1 * rng.standard_normal(n)
    return {"x": x.astype(np.float32), "y": y.astype(np.float32)}


def _params():
    return {"w": jnp.array([0.1, -0.2, 0.3], jnp.float32), "b": jnp.array(0.5, jnp.float32)}


def test_ragged_batch_loss_and_gradient_are_exact():
    data = _problem(10)
    it = gd.minibatch(data, 4, shuffle=False)
    last = list(it.iterate(jax.random.key(0)))[-1]  # examples 8, 9 and two padded slots
    opt = optax.sgd(0.1)
    # compiled (test_jitted_and_unjitted_step_agree runs the step op by op): one program, not one per operation
    state, metrics = jax.jit(gd.make_step(_loss, opt))(gd.init(_params(), opt), last)
    real = {"x": data["x"][8:], "y": data["y"][8:]}
    per_example = jax.jit(jax.vmap(_loss, (None, 0)))(_params(), real)
    expected_loss = np.mean([float(per_example[i]) for i in range(2)])
    np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-6)
    grad = jax.jit(jax.grad(lambda p: jnp.mean(jax.vmap(_loss, (None, 0))(p, real))))(_params())
    expected_w = _params()["w"] - 0.1 * grad["w"]
    np.testing.assert_allclose(state.params["w"], expected_w, rtol=1e-6)
    assert int(state.step) == 1


@pytest.mark.slow
def test_jitted_and_unjitted_step_agree():
    data = _problem(12)
    opt = optax.adam(0.05)
    step = gd.make_step(_loss, opt)
    s1 = s2 = gd.init(_params(), opt)
    for batch in gd.minibatch(data, 5).iterate(jax.random.key(3)):
        s1, m1 = step(s1, batch)
        s2, m2 = jax.jit(step)(s2, batch)
        np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "opt",
    [
        optax.adamw(0.1, weight_decay=0.01),  # update needs params
        optax.inject_hyperparams(optax.sgd)(learning_rate=0.05),
        optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.05, momentum=0.9)),
        optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.05)),  # needs params too
    ],
    ids=["adamw", "inject_hyperparams", "chain", "decayed_weights"],
)
def test_any_optax_optimizer_reduces_the_loss(opt):
    data = _problem(64)
    params = _params()
    step = jax.jit(gd.make_step(_loss, opt))
    state = gd.init(params, opt)
    first = None
    for epoch in range(20):
        for batch in gd.minibatch(data, 16).iterate(jax.random.key(0), epoch):
            state, m = step(state, batch)
            first = m["loss"] if first is None else first
    assert float(m["loss"]) < 0.2 * float(first)


@pytest.mark.slow
def test_nested_pytree_params_and_aux():
    model = gd.models.mlp((4, 3), num_outputs=2, task="classification")
    params = model.init(jax.random.key(0), 2)
    data = {
        "x": np.random.default_rng(1).standard_normal((9, 2)).astype(np.float32),
        "y": np.arange(9, dtype=np.int32) % 2,
    }

    def loss(p, ex):
        logits = model.apply(p, ex["x"])
        return model.loss(p, ex), {"correct": (jnp.argmax(logits) == ex["y"]).astype(jnp.float32)}

    opt = optax.sgd(0.1)
    state, metrics = jax.jit(gd.make_step(loss, opt, has_aux=True))(
        gd.init(params, opt), next(gd.minibatch(data, 9).iterate(jax.random.key(0)))
    )
    acc = np.mean(np.argmax(jax.jit(jax.vmap(model.apply, (None, 0)))(params, data["x"]), -1) == data["y"])
    np.testing.assert_allclose(metrics["aux"]["correct"], acc, rtol=1e-6)
    assert jax.tree.structure(state.params) == jax.tree.structure(params)


@pytest.mark.slow
def test_batched_loss_option():
    data = _problem(10)

    def batch_loss(p, batch):
        per = jax.vmap(_loss, (None, 0))(p, batch.data)
        return jnp.sum(jnp.where(batch.mask, per, 0)) / jnp.sum(batch.mask)

    opt = optax.sgd(0.1)
    it = gd.minibatch(data, 4)
    s1 = s2 = gd.init(_params(), opt)
    for batch in it.iterate(jax.random.key(0)):
        s1, m1 = gd.make_step(_loss, opt)(s1, batch)
        s2, m2 = gd.make_step(batch_loss, opt, batched=True)(s2, batch)
        np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    np.testing.assert_allclose(s1.params["w"], s2.params["w"], rtol=1e-6)


def test_non_scalar_loss_is_a_type_error_at_trace_time():
    opt = optax.sgd(0.1)
    batch = next(gd.minibatch(_problem(4), 2).iterate(jax.random.key(0)))
    step = gd.make_step(lambda p, ex: ex["x"] * p["w"], opt)
    with pytest.raises(TypeError, match=r"loss_fn must return a float scalar.*shape \(3,\)"):
        jax.jit(step)(gd.init(_params(), opt), batch)


def test_optimizer_factory_passed_to_make_step_is_explained():
    with pytest.raises(TypeError, match="call it with a learning rate"):
        gd.make_step(_loss, optax.sgd)


def test_jitted_step_compiles_once_across_epochs_and_the_ragged_last_batch(compiles):
    data = _problem(10)
    opt = optax.sgd(0.1)
    step = jax.jit(gd.make_step(_loss, opt))
    it = gd.minibatch(data, 4)  # batches of 4, 4 and a padded 2
    state = gd.init(_params(), opt)
    state, _ = step(state, next(it.iterate(jax.random.key(0))))
    with compiles() as c:
        for epoch in range(3):
            for batch in it.iterate(jax.random.key(1), epoch):
                state, _ = step(state, batch)
    assert c.count == 0


def test_aux_of_any_shape_is_averaged_over_the_real_examples():
    data = _problem(10)
    batch = list(gd.minibatch(data, 4, shuffle=False).iterate(jax.random.key(0)))[-1]  # 2 real, 2 padded

    def loss(p, ex):
        return _loss(p, ex), {"contrib": ex["x"] * p["w"], "count": jnp.ones(())}

    opt = optax.sgd(0.1)
    _, metrics = gd.make_step(loss, opt, has_aux=True)(gd.init(_params(), opt), batch)
    np.testing.assert_allclose(
        metrics["aux"]["contrib"], (data["x"][8:] * np.asarray(_params()["w"])).mean(0), rtol=1e-6
    )
    assert metrics["aux"]["count"] == 1.0
    with pytest.raises(TypeError, match=r"must return \(loss, aux\) with has_aux=True"):
        gd.make_step(_loss, opt, has_aux=True)(gd.init(_params(), opt), batch)


@pytest.mark.slow
def test_hyperparameters_of_another_float_dtype_do_not_promote_the_optimizer_state():
    """With x64 on, a traced learning rate is float64; float32 params and their momentum stay float32."""
    with jax.enable_x64(True):
        data = {k: v.astype(np.float32) for k, v in _problem(16).items()}
        res = gd.fit(
            _loss,
            _params(),
            optax.sgd,
            gd.minibatch(data, 4),
            epochs=2,
            key=jax.random.key(0),
            learning_rate=0.1,
            hyperparams={"momentum": 0.9},
        )
        assert res.params["w"].dtype == jnp.float32
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(res.state.opt_state))


def test_integer_params_are_explained_at_trace_time():
    opt = optax.sgd(0.1)
    batch = next(gd.minibatch(_problem(4), 2).iterate(jax.random.key(0)))
    step = jax.jit(gd.make_step(_loss, opt))
    bad = {"w": jnp.zeros(3, jnp.int32), "b": jnp.array(0.5, jnp.float32)}
    with pytest.raises(TypeError, match=r"state\.params\['w'\] has dtype int32.*jnp\.asarray\(x, jnp\.float32\)"):
        step(gd.init(bad, opt), batch)
    state, _ = step(gd.init(_params(), opt), batch)  # the same step still works on float params
    assert int(state.step) == 1


def test_loss_of_the_other_form_is_explained():
    """A per-example loss with batched=True, and a batched loss without it, say which form gdjax called."""
    opt = optax.sgd(0.1)
    batch = next(gd.minibatch(_problem(4), 2).iterate(jax.random.key(0)))
    state = gd.init(_params(), opt)
    with pytest.raises(TypeError) as info:  # _loss indexes the example by name; a Batch is a tuple
        gd.make_step(_loss, opt, batched=True)(state, batch)
    assert "gdjax called loss_fn with batched=True" in "".join(getattr(info.value, "__notes__", []))
    with pytest.raises(TypeError, match=r"mean loss of the batch, with batched=True.*shape \(2,\)"):
        gd.make_step(lambda p, b: jax.vmap(_loss, (None, 0))(p, b.data), opt, batched=True)(state, batch)

    def per_batch(p, b):
        return jnp.mean(jax.vmap(_loss, (None, 0))(p, b.data))

    with pytest.raises(AttributeError) as info:
        gd.make_step(per_batch, opt)(state, batch)
    assert "with batched=True, loss_fn(params, batch) takes a whole gd.Batch" in "".join(info.value.__notes__)


def test_loss_fn_must_be_callable():
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        gd.make_step("mse", optax.sgd(0.1))
