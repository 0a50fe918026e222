"""fit: known answers, equality with hand-written loops, stability, compilation."""

import _shared
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gdjax as gd

MODEL = _shared.LINEAR


def _problem(n=512, d=6, seed=0, **kw):
    if kw:  # another dtype or spectrum: a problem of this test's own
        return gd.problems.linear_regression(n=n, d=d, key=jax.random.key(seed), **kw)
    return _shared.linear_problem(n, d, seed)


def _rel_err(params, solution):
    got = np.concatenate([np.ravel(params["w"]), np.ravel(params["b"])])
    want = np.concatenate([np.ravel(solution["w"]), np.ravel(solution["b"])])
    return np.linalg.norm(got - want) / np.linalg.norm(want)


def test_batch_gd_reaches_least_squares_in_float64():
    with jax.enable_x64(True):
        prob = _problem(dtype=np.float64)
        params = MODEL.init(jax.random.key(0), 6)
        assert params["w"].dtype == jnp.float64
        res = gd.fit(
            MODEL.loss,
            params,
            optax.sgd,
            gd.full_batch(prob.data),
            epochs=400,
            key=jax.random.key(0),
            learning_rate=1.0 / prob.lipschitz,
        )
        assert res.params["w"].dtype == jnp.float64
        assert _rel_err(res.params, prob.solution) < 1e-8
        np.testing.assert_allclose(res.final_loss, prob.min_loss, rtol=1e-12)


def test_batch_gd_reaches_least_squares_in_float32():
    prob = _problem()
    res = gd.fit(
        MODEL.loss,
        MODEL.init(jax.random.key(0), 6),
        optax.sgd,
        gd.full_batch(prob.data),
        epochs=1000,  # as in the tol test below: one compiled program for both
        key=jax.random.key(0),
        learning_rate=1.0 / prob.lipschitz,
    )
    assert res.params["w"].dtype == jnp.float32
    assert _rel_err(res.params, prob.solution) < 1e-4


def _hand_written(loss_fn, params, opt, it, key, epochs):
    """A plain optax loop over the host face's batches, with its own masked-mean loss."""

    def batch_loss(p, batch):
        per = jax.vmap(loss_fn, (None, 0))(p, batch.data)
        w = batch.mask.astype(per.dtype)
        return jnp.sum(per * w) / jnp.sum(w)

    @jax.jit
    def update(p, s, batch):
        loss, g = jax.value_and_grad(batch_loss)(p, batch)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    state, losses = opt.init(params), []
    for epoch in range(epochs):
        for batch in it.iterate(key, epoch):
            params, state, loss = update(params, state, batch)
            losses.append(float(loss))
    return params, np.array(losses)


@pytest.mark.parametrize(
    ("factory", "lr", "batch_size"),  # ragged last batches: 400 % 32 = 16, 417 % 50 = 17
    [
        pytest.param(optax.adam, 0.01, 50, id="50-adam-0.01"),  # the fast lane's: a stateful optimizer, ragged
        pytest.param(optax.adam, 0.01, 32, id="32-adam-0.01", marks=pytest.mark.slow),
        pytest.param(optax.sgd, 0.05, 32, id="32-sgd-0.05", marks=pytest.mark.slow),
        pytest.param(optax.sgd, 0.05, 50, id="50-sgd-0.05", marks=pytest.mark.slow),
    ],
)
@pytest.mark.slow
def test_fit_equals_hand_written_optax_loop(factory, lr, batch_size):
    prob = _problem(n=400 + (batch_size == 50) * 17)
    it = gd.minibatch(prob.data, batch_size)
    params = MODEL.init(jax.random.key(1), 6)
    key = jax.random.key(7)
    want_params, want_losses = _hand_written(MODEL.loss, params, factory(lr), it, key, epochs=3)
    res = gd.fit(MODEL.loss, params, factory, it, epochs=3, key=key, learning_rate=lr)
    assert res.num_steps == 3 * it.num_batches == len(res.losses)
    np.testing.assert_allclose(res.losses, want_losses, rtol=2e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(want_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    # and with the optimizer built beforehand
    built = gd.fit(MODEL.loss, params, factory(lr), it, epochs=3, key=key)
    np.testing.assert_array_equal(built.losses, res.losses)


def test_step_size_stability_limit_two_over_lipschitz():
    """Constant-step GD on a quadratic settles just below 2/L and blows up just above."""
    prob = _problem(n=256, d=4, scales=[3.0, 1.0, 0.5, 0.2])
    it = gd.full_batch(prob.data)
    params = MODEL.init(jax.random.key(0), 4)
    limit = 2.0 / prob.lipschitz
    below = gd.fit(MODEL.loss, params, optax.sgd, it, epochs=3000, key=jax.random.key(0), learning_rate=0.97 * limit)
    above = gd.fit(MODEL.loss, params, optax.sgd, it, epochs=3000, key=jax.random.key(0), learning_rate=1.03 * limit)
    assert not below.diverged
    np.testing.assert_allclose(below.final_loss, prob.min_loss, rtol=1e-3)
    assert above.diverged
    assert above.num_epochs < 3000
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(above.params))
    assert above.diverged_at is not None and above.num_steps <= above.diverged_at + 1
    assert np.all(np.diff(above.epoch_losses[-50:-1]) > 0)  # growing without bound until it overflowed,
    assert above.epoch_losses[-1] == above.epoch_losses[-2]  # then frozen at the last parameters that passed
    assert np.isfinite(above.final_loss)


def test_tol_stops_early_and_reports_convergence():
    prob = _problem()
    res = gd.fit(
        MODEL.loss,
        MODEL.init(jax.random.key(0), 6),
        optax.sgd,
        gd.full_batch(prob.data),
        epochs=1000,
        key=jax.random.key(0),
        learning_rate=1.0 / prob.lipschitz,
        tol=1.01 * prob.min_loss,
    )
    assert res.converged and not res.diverged
    assert res.num_epochs < 1000 and res.num_epochs == len(res.epoch_losses) == res.num_steps
    assert res.epoch_losses[-1] <= 1.01 * prob.min_loss < res.epoch_losses[-2]


@pytest.mark.slow
def test_log_every_averages_windows_across_epochs():
    prob = _problem(n=100)
    it = gd.minibatch(prob.data, 16)  # 7 steps per epoch, windows of 3 cross epoch boundaries
    args = (MODEL.loss, MODEL.init(jax.random.key(0), 6), optax.sgd, it)
    every = gd.fit(*args, epochs=4, key=jax.random.key(3), learning_rate=0.05)
    windows = gd.fit(*args, epochs=4, key=jax.random.key(3), learning_rate=0.05, log_every=3)
    assert len(every.losses) == 28 and len(windows.losses) == 10
    expected = [every.losses[i : i + 3].mean() for i in range(0, 28, 3)]
    np.testing.assert_allclose(windows.losses, expected, rtol=1e-6)
    np.testing.assert_array_equal(every.epoch_losses, windows.epoch_losses)


def test_same_key_bit_identical_other_key_differs():
    prob = _problem(n=64)  # 64 examples in batches of 8, 2 epochs: the program of the bad-argument tests below
    args = (MODEL.loss, MODEL.init(jax.random.key(0), 6), optax.sgd, gd.minibatch(prob.data, 8))
    a = gd.fit(*args, epochs=2, key=jax.random.key(5), learning_rate=0.05)
    b = gd.fit(*args, epochs=2, key=jax.random.key(5), learning_rate=0.05)
    c = gd.fit(*args, epochs=2, key=jax.random.key(6), learning_rate=0.05)
    np.testing.assert_array_equal(a.losses, b.losses)
    np.testing.assert_array_equal(a.params["w"], b.params["w"])
    assert not np.array_equal(a.losses, c.losses)


@pytest.mark.slow
def test_no_recompile_for_new_learning_rate_key_tol_or_epochs(compiles):
    prob = _problem()
    it = gd.minibatch(prob.data, 30)  # ragged last batch
    params = MODEL.init(jax.random.key(0), 6)
    gd.fit(MODEL.loss, params, optax.adam, it, epochs=5, key=jax.random.key(0), learning_rate=0.01)
    with compiles() as c:
        for i, (lr, epochs) in enumerate([(0.02, 5), (0.5, 6), (1e-4, 7), (0.3, 8)]):
            res = gd.fit(
                MODEL.loss,
                params,
                optax.adam,
                it,
                epochs=epochs,
                key=jax.random.key(i + 1),
                learning_rate=lr,
                tol=0.1 * i,
            )
            assert res.compile_time == 0.0
    assert c.count == 0
    with compiles() as c:  # other hyperparameters of the factory are traced as well
        gd.fit(
            MODEL.loss,
            params,
            optax.adam,
            it,
            epochs=5,
            key=jax.random.key(0),
            learning_rate=0.01,
            hyperparams={"b1": 0.5},
        )
        gd.fit(
            MODEL.loss,
            params,
            optax.adam,
            it,
            epochs=5,
            key=jax.random.key(0),
            learning_rate=0.01,
            hyperparams={"b1": 0.8},
        )
    assert c.count == 2  # the new keyword compiles the start and train programs once each, not per value


def test_divergence_in_fit_keeps_last_finite_params():
    prob = _problem(n=64)
    res = gd.fit(
        MODEL.loss,
        MODEL.init(jax.random.key(0), 6),
        optax.sgd,
        gd.minibatch(prob.data, 8),
        epochs=2,  # the run of the bad-argument tests below, whose program it shares: it diverges in the first
        key=jax.random.key(0),
        learning_rate=1e6,
    )
    assert res.diverged and not res.converged
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(res.params))
    assert res.num_epochs == 1 + res.diverged_at // 8
    assert np.isnan(res.losses[res.diverged_at + 1 :]).all()


@pytest.mark.slow
def test_result_records_time_and_examples():
    prob = _problem(n=100)

    def loss(p, ex):
        return MODEL.loss(p, ex)

    params, it = MODEL.init(jax.random.key(0), 6), gd.minibatch(prob.data, 16, drop_remainder=True)
    res = gd.fit(
        loss,
        params,
        optax.sgd,
        it,
        epochs=3,
        key=jax.random.key(0),
        learning_rate=0.05,
    )
    assert res.examples_seen == 3 * 96 and res.steps_per_epoch == 6 and res.batch_size == 16
    assert res.wall_time > 0 and res.compile_time > 0  # a loss function of its own: compiled here
    assert res.hyperparams == {"learning_rate": 0.05}
    assert res.initial_loss > res.final_loss
    again = gd.fit(loss, params, optax.sgd, it, epochs=3, key=jax.random.key(1), learning_rate=0.1)
    assert again.compile_time == 0.0 and again.wall_time > 0  # the cached program


@pytest.mark.slow
def test_runs_under_strict_dtype_promotion(strict_dtypes):
    prob = _problem(n=64)
    res = gd.fit(
        MODEL.loss,
        MODEL.init(jax.random.key(0), 6),
        optax.sgd,
        gd.minibatch(prob.data, 8),
        epochs=2,
        key=jax.random.key(0),
        learning_rate=0.05,
        tol=0.0,
        log_every=3,
    )
    assert res.num_epochs == 2


# ----- bad input -------------------------------------------------------------

PROB = _problem(n=64)
IT = gd.minibatch(PROB.data, 8)
P0 = MODEL.init(jax.random.key(0), 6)


def _warmup_cosine(learning_rate):
    """A schedule built on the traced peak: optax branches on it in Python."""
    return optax.sgd(optax.warmup_cosine_decay_schedule(0.0, learning_rate, 5, 40))


def _per_batch_loss(p, batch):
    """A loss written for batched=True."""
    per = jax.vmap(MODEL.loss, (None, 0))(p, batch.data)
    return jnp.sum(jnp.where(batch.mask, per, 0)) / jnp.sum(batch.mask)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"epochs": 0}, ValueError, "epochs must be at least 1; got 0"),
        ({"epochs": 2.0}, TypeError, "epochs must be an integer"),
        ({"tol": -1.0}, ValueError, "tol must be a finite number >= 0"),
        ({"tol": float("nan")}, ValueError, "tol must be a finite number"),
        ({"key": 0}, TypeError, r"key must be a single JAX PRNG key.*jax.random.key\(seed\)"),
        ({"learning_rate": -0.1}, ValueError, "learning_rate must be finite and >= 0; got -0.1"),
        ({"learning_rate": float("inf")}, ValueError, "learning_rate must be finite"),
        ({"learning_rate": 1e39}, ValueError, r"got 1e\+39 \(it overflows float32\)"),
        ({"hyperparams": {"momentun": 0.9}}, TypeError, r"optimizer factory sgd cannot take .*'momentun'"),
        ({"params": {"w": jnp.array([0.0, jnp.nan, 0, 0, 0, 0]), "b": jnp.zeros(())}}, ValueError, "NaN or inf before"),
        ({"learning_rate": [0.1, 0.2]}, ValueError, "learning_rate must be a single number in fit.*gd.sweep"),
        ({"learning_rate": None}, ValueError, "is a factory, so it needs its values"),
        ({"optimizer": optax.sgd(0.1)}, ValueError, "optimizer is already built"),
        ({"optimizer": "sgd"}, TypeError, "optimizer must be an optax GradientTransformation"),
        ({"hyperparams": {"momentum": -1.0}}, ValueError, "momentum must be finite and >= 0"),
        ({"data": PROB.data}, TypeError, r"data must be a gdjax DataIterator.*gd.minibatch"),
        ({"log_every": 0}, ValueError, "log_every must be at least 1"),
        (
            {"params": {"w": jnp.zeros(6, jnp.int32), "b": jnp.zeros((), jnp.int32)}},
            ValueError,
            r"params has no float arrays to train \(its leaves are \['int32'\]\)",
        ),
        (
            {"params": {"w": jnp.zeros(5), "b": jnp.zeros(())}},
            TypeError,
            r"loss_fn\(params, example\) failed.*params = .*float32\[5\].*example = ",
        ),
        ({"loss_fn": lambda p, ex: ex["x"] * p["w"]}, TypeError, r"loss_fn must return a float scalar.*shape \(6,\)"),
        ({"loss_fn": lambda p, ex: (MODEL.loss(p, ex), 1.0)}, TypeError, "pass has_aux=True"),
        ({"loss_fn": lambda p, ex: jnp.int32(1)}, TypeError, "loss_fn must return a float scalar"),
        ({"loss_fn": None}, TypeError, "loss_fn must be callable"),
        ({"hyperparams": "momentum"}, TypeError, r"hyperparams must be a dict .*\{'momentum': 0.9\}; got str"),
        (
            {"hyperparams": {"momentum": 0.9, "nesterov": 1.0}},
            TypeError,
            r"sgd cannot take hyperparameter 'nesterov' as a traced number.*functools.partial\(optax.sgd, nesterov=",
        ),
        (
            {"optimizer": optax.adam, "hyperparams": {"mu_dtype": jnp.bfloat16}},
            TypeError,
            r"mu_dtype must be a number.*only numeric.*functools.partial\(factory, mu_dtype=\.\.\.\)",
        ),
        ({"hyperparams": {"nesterov": True}}, TypeError, "nesterov must be a number.*got bool True"),
        ({"hyperparams": {"momentum": "0.9"}}, TypeError, "momentum must be a number.*got str '0.9'"),
        ({"learning_rate": "0.1"}, TypeError, "learning_rate must be a number or array of numbers"),
        (
            {"optimizer": _warmup_cosine},
            TypeError,
            r"_warmup_cosine cannot take hyperparameter 'learning_rate'.*schedule.*peak 1.*learning_rate \* unit",
        ),
        (
            {"optimizer": lambda learning_rate: learning_rate},
            TypeError,
            "must return an optax GradientTransformation; it returned an array",
        ),
        ({"batched": True}, TypeError, r"failed with batched=True.*loss_fn\(params, example\).*drop batched=True"),
        (
            {"batched": True, "loss_fn": lambda p, b: jax.vmap(MODEL.loss, (None, 0))(p, b.data)},
            TypeError,
            r"mean loss of the batch, with batched=True.*shape \(8,\).*batch.mask",
        ),
        ({"loss_fn": _per_batch_loss}, TypeError, r"loss_fn\(params, example\) failed.*pass batched=True"),
        ({"batched": 1}, TypeError, "batched must be True or False; got int 1"),
        ({"has_aux": "yes"}, TypeError, "has_aux must be True or False"),
        ({"params": lambda key: P0}, TypeError, r"params is a function, not parameters.*params=init\("),
        ({"key": jnp.zeros(2, jnp.int32)}, TypeError, r"key must be a single JAX PRNG key.*got int32 array"),
    ],
)
def test_bad_arguments_are_explained_before_compiling(change, error, match, compiles):
    kwargs = {
        "loss_fn": MODEL.loss,
        "params": P0,
        "optimizer": optax.sgd,
        "data": IT,
        "epochs": 2,
        "key": jax.random.key(0),
        "learning_rate": 0.1,
        **change,
    }
    with compiles() as c, pytest.raises(error, match=match):
        gd.fit(kwargs.pop("loss_fn"), kwargs.pop("params"), kwargs.pop("optimizer"), kwargs.pop("data"), **kwargs)
    assert c.count == 0
    # fit still works on good input afterwards
    assert gd.fit(MODEL.loss, P0, optax.sgd, IT, epochs=2, key=jax.random.key(0), learning_rate=0.1).num_steps == 16


def test_non_finite_parameter_unseen_by_the_loss_is_caught_at_the_epoch_end():
    """A parameter the loss ignores can overflow without any step loss showing it; the epoch check catches it."""

    def poison():
        def update(updates, state, params=None):
            return {**updates, "unused": jnp.full_like(updates["unused"], 1e38)}, state

        return optax.GradientTransformation(lambda params: optax.EmptyState(), update)

    params = {**MODEL.init(None, 6), "unused": jnp.zeros(3)}
    res = gd.fit(
        MODEL.loss,
        params,
        optax.chain(optax.sgd(0.01), poison()),
        gd.minibatch(PROB.data, 8),
        epochs=3,
        key=jax.random.key(0),
    )
    assert res.diverged and res.num_epochs == 1 and res.diverged_at == 7
    assert np.isfinite(res.losses).all()  # every step's loss was finite
    np.testing.assert_array_equal(res.params["unused"], 0.0)  # back at the start of the epoch
    assert res.num_steps == 0 and res.epoch_losses[0] == res.initial_loss


DETERMINISM = """
import hashlib, sys, jax, numpy as np, optax, gdjax as gd
prob = gd.problems.linear_regression(n=500, d=6, key=jax.random.key(0))
m = gd.models.mlp((16,))
sw = gd.sweep(m.loss, None, optax.adam, gd.minibatch(prob.data, 32), init=lambda k: m.init(k, 6),
              learning_rates=[1e-3, 1e-2], seeds=2, epochs=3, key=jax.random.key(7))
res = gd.fit(m.loss, m.init(jax.random.key(1), 6), optax.sgd, gd.stochastic(prob.data), epochs=2,
             key=jax.random.key(7), learning_rate=0.01)
h = hashlib.sha256()
for a in [*jax.tree.leaves(sw.params), sw.losses, *jax.tree.leaves(res.params), res.losses]:
    h.update(np.asarray(a).tobytes())
print(h.hexdigest())
"""


@pytest.mark.slow
def test_same_key_bit_identical_in_two_fresh_processes():
    import subprocess
    import sys

    runs = [
        subprocess.run([sys.executable, "-c", DETERMINISM], capture_output=True, text=True, timeout=300)
        for _ in range(2)
    ]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    assert runs[0].stdout.strip() == runs[1].stdout.strip() and len(runs[0].stdout.strip()) == 64


def test_optimizer_failing_on_traced_params_is_not_blamed_on_its_hyperparameters(compiles):
    """The hyperparameter check names a hyperparameter only when tracing it is what fails."""

    def reads_params(learning_rate):
        def init(params):
            return optax.ScaleByScheduleState(jnp.asarray(float(params["b"]), jnp.int32))  # needs concrete params

        return optax.chain(optax.sgd(learning_rate), optax.GradientTransformation(init, lambda u, s, p=None: (u, s)))

    with compiles() as c, pytest.raises(jax.errors.ConcretizationTypeError) as info:
        gd.fit(MODEL.loss, P0, reads_params, IT, epochs=1, key=jax.random.key(0), learning_rate=0.1)
    assert c.count == 0 and "cannot take hyperparameter" not in str(info.value)
