"""sweep: members equal fit, divergence isolation, theory, chunks, devices, compilation."""

import functools
import json
import os
import subprocess
import sys
import textwrap

import _shared
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gdjax as gd

MODEL = _shared.LINEAR
PROB = _shared.linear_problem(200, 5)
P0 = MODEL.init(None, 5)
IT = gd.minibatch(PROB.data, 32)  # ragged: 200 % 32 = 8


def _warmup_cosine(learning_rate):
    """A schedule built on the traced peak: optax branches on it in Python."""
    return optax.sgd(optax.warmup_cosine_decay_schedule(0.0, learning_rate, 5, 40))


def _per_batch_loss(p, batch):
    """A loss written for batched=True."""
    per = jax.vmap(MODEL.loss, (None, 0))(p, batch.data)
    return jnp.sum(jnp.where(batch.mask, per, 0)) / jnp.sum(batch.mask)


def _close(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **kw)


@pytest.mark.slow  # the fast lane compares members with fit in test_tol_stops_each_member_on_its_own
@pytest.mark.parametrize(
    ("factory", "lrs", "hp"),
    [(optax.sgd, [0.01, 0.05, 0.2], {"momentum": [0.0, 0.5, 0.9]}), (optax.adam, [1e-3, 1e-2, 1e-1], {"b1": 0.8})],
)
def test_member_k_equals_fit_with_its_hyperparameters(factory, lrs, hp):
    sw = gd.sweep(MODEL.loss, P0, factory, IT, learning_rates=lrs, hyperparams=hp, epochs=3, key=jax.random.key(4))
    assert sw.num_members == 3 and sw.losses.shape == (3, 3 * IT.num_batches)
    for k in range(3):
        values = {name: float(v[k]) for name, v in sw.hyperparams.items()}
        res = gd.fit(MODEL.loss, P0, factory, IT, epochs=3, key=jax.random.key(4), hyperparams=values)
        np.testing.assert_allclose(sw.losses[k], res.losses, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sw.epoch_losses[k], res.epoch_losses, rtol=1e-5)
        _close(sw.member_params(k), res.params, rtol=1e-5, atol=1e-6)
        assert sw.num_steps[k] == res.num_steps


@pytest.mark.slow
def test_divergent_member_is_frozen_and_does_not_touch_the_others():
    lrs = np.array([0.01, 0.1, 1e4, 0.3, 1e6])
    sw = gd.sweep(MODEL.loss, P0, optax.sgd, IT, learning_rates=lrs, epochs=4, key=jax.random.key(1))
    np.testing.assert_array_equal(sw.diverged, [False, False, True, False, True])
    assert (sw.diverged_at[sw.diverged] >= 0).all() and (sw.diverged_at[~sw.diverged] == -1).all()
    for leaf in jax.tree.leaves(sw.params):
        assert np.isfinite(np.asarray(leaf)).all()  # frozen at the last finite parameters
    assert sw.best_index in (0, 1, 3) and np.isfinite(sw.final_loss[sw.best_index])
    healthy = gd.sweep(MODEL.loss, P0, optax.sgd, IT, learning_rates=lrs[~sw.diverged], epochs=4, key=jax.random.key(1))
    np.testing.assert_array_equal(healthy.losses, sw.losses[~sw.diverged])
    np.testing.assert_array_equal(healthy.epoch_losses, sw.epoch_losses[~sw.diverged])
    for a, b in zip(jax.tree.leaves(healthy.params), jax.tree.leaves(sw.params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b)[~sw.diverged])
    # same member count, the divergent members replaced by healthy ones: the others do not move a bit
    swapped = gd.sweep(
        MODEL.loss, P0, optax.sgd, IT, learning_rates=np.where(sw.diverged, 0.02, lrs), epochs=4, key=jax.random.key(1)
    )
    np.testing.assert_array_equal(swapped.losses[~sw.diverged], sw.losses[~sw.diverged])
    np.testing.assert_array_equal(
        np.asarray(swapped.params["w"])[~sw.diverged], np.asarray(sw.params["w"])[~sw.diverged]
    )
    # a diverged member's record stops at its divergence
    k = 4
    assert np.isnan(sw.losses[k, sw.diverged_at[k] + 1 :]).all()


@pytest.mark.slow
def test_full_batch_stability_boundary_is_two_over_lipschitz():
    """256 log-spaced step sizes across 2/L: settled below the boundary, diverged above, within one grid step."""
    prob = gd.problems.linear_regression(n=128, d=4, key=jax.random.key(3), scales=[2.0, 1.0, 0.5, 0.3])
    limit = 2.0 / prob.lipschitz
    lrs = np.geomspace(limit / 10, limit * 10, 256)
    sw = gd.sweep(
        MODEL.loss,
        MODEL.init(None, 4),
        optax.sgd,
        gd.full_batch(prob.data),
        learning_rates=lrs,
        epochs=4000,
        key=jax.random.key(0),
    )
    first = int(np.argmax(sw.diverged))
    assert sw.diverged[first] and not sw.diverged[:first].any() and sw.diverged[first:].all()
    grid_step = np.log(lrs[1] / lrs[0])
    boundary = np.sqrt(lrs[first - 1] * lrs[first])
    assert abs(np.log(boundary / limit)) <= grid_step
    settled = ~sw.diverged & (lrs < 0.9 * limit)
    assert (sw.final_loss[settled] < 1.01 * prob.min_loss).all()


@pytest.mark.slow
def test_tol_stops_each_member_on_its_own():
    lrs = [0.005, 0.05, 0.5]
    sw = gd.sweep(
        MODEL.loss,
        P0,
        optax.sgd,
        gd.full_batch(PROB.data),
        learning_rates=lrs,
        epochs=400,
        key=jax.random.key(0),
        tol=1.05 * PROB.min_loss,
    )
    assert sw.converged[1] and sw.converged[2]
    assert sw.num_epochs[2] < sw.num_epochs[1] <= 400
    for k in (1, 2):
        res = gd.fit(
            MODEL.loss,
            P0,
            optax.sgd,
            gd.full_batch(PROB.data),
            epochs=400,
            key=jax.random.key(0),
            learning_rate=lrs[k],
            tol=1.05 * PROB.min_loss,
        )
        assert res.num_epochs == sw.num_epochs[k]
        assert np.isnan(sw.epoch_losses[k, res.num_epochs :]).all()


@pytest.mark.slow
def test_chunks_give_the_same_results_and_share_one_program(compiles):
    lrs = np.geomspace(1e-3, 1.0, 11)
    whole = gd.sweep(MODEL.loss, P0, optax.sgd, IT, learning_rates=lrs, epochs=2, key=jax.random.key(2))
    chunked = gd.sweep(MODEL.loss, P0, optax.sgd, IT, learning_rates=lrs, epochs=2, key=jax.random.key(2), chunk_size=4)
    np.testing.assert_array_equal(whole.losses, chunked.losses)
    np.testing.assert_array_equal(whole.params["w"], chunked.params["w"])
    with compiles() as c:  # another member count, same chunk shape
        gd.sweep(MODEL.loss, P0, optax.sgd, IT, learning_rates=lrs[:7], epochs=2, key=jax.random.key(3), chunk_size=4)
    assert c.count == 0


@pytest.mark.slow  # in the fast lane: test_chunks_give_the_same_results_and_share_one_program, and fit's own
def test_no_recompile_for_new_values_key_or_seeds(compiles):
    kw = {"epochs": 3, "hyperparams": {"momentum": [0.0, 0.9]}, "grid": True}
    init = lambda k: MODEL.init(k, 5)  # noqa: E731
    kw["init"] = init
    gd.sweep(MODEL.loss, None, optax.sgd, IT, learning_rates=[0.1, 0.2], seeds=[0, 1], key=jax.random.key(0), **kw)
    with compiles() as c:
        gd.sweep(MODEL.loss, None, optax.sgd, IT, learning_rates=[0.3, 0.01], seeds=[5, 9], key=jax.random.key(1), **kw)
        gd.sweep(
            MODEL.loss,
            None,
            optax.sgd,
            IT,
            learning_rates=[0.5, 0.05],
            seeds=[2, 3],
            key=jax.random.key(2),
            tol=0.2,
            **kw,
        )
    assert c.count == 0


@pytest.mark.slow
def test_grid_zip_and_seeds_layout():
    sw = gd.sweep(
        MODEL.loss,
        P0,
        optax.sgd,
        IT,
        learning_rates=[0.1, 0.2],
        hyperparams={"momentum": [0.0, 0.5, 0.9]},
        grid=True,
        seeds=2,
        epochs=1,
        key=jax.random.key(0),
    )
    assert sw.num_members == 12
    np.testing.assert_allclose(sw.learning_rates, np.repeat([0.1, 0.2], 6))
    np.testing.assert_allclose(sw.hyperparams["momentum"], np.tile(np.repeat([0.0, 0.5, 0.9], 2), 2))
    np.testing.assert_array_equal(sw.seeds, np.tile([0, 1], 6))
    # seeds change the data order: same hyperparameters, different losses
    assert not np.array_equal(sw.losses[0], sw.losses[1])
    with pytest.raises(ValueError, match=r"learning_rate has 2, momentum has 3.*grid=True"):
        gd.sweep(
            MODEL.loss,
            P0,
            optax.sgd,
            IT,
            learning_rates=[0.1, 0.2],
            hyperparams={"momentum": [0.0, 0.5, 0.9]},
            epochs=1,
            key=jax.random.key(0),
        )


@pytest.mark.slow
def test_seeded_member_equals_fit_with_its_seed_keys():
    init = lambda k: gd.models.mlp((4,)).init(k, 5)  # noqa: E731
    loss = gd.models.mlp((4,)).loss
    kw = {"learning_rates": [0.05], "seeds": [3, 7], "epochs": 2, "key": jax.random.key(9), "init": init}
    sw = gd.sweep(loss, None, optax.sgd, IT, **kw)
    for k, seed in enumerate([3, 7]):
        init_key, order_key = gd.seed_keys(jax.random.key(9), seed)
        res = gd.fit(loss, init(init_key), optax.sgd, IT, epochs=2, key=order_key, learning_rate=0.05)
        np.testing.assert_allclose(sw.losses[k], res.losses, rtol=1e-5, atol=1e-6)
    assert not np.allclose(sw.losses[0], sw.losses[1])


@pytest.mark.slow
def test_schedule_peak_can_be_swept():
    unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, 5, 40)  # a shape with peak 1, scaled by the traced peak

    def warmup_cosine(learning_rate):
        return optax.sgd(lambda step: learning_rate * unit(step))

    sw = gd.sweep(MODEL.loss, P0, warmup_cosine, IT, learning_rates=[0.01, 0.1], epochs=5, key=jax.random.key(0))
    res = gd.fit(MODEL.loss, P0, warmup_cosine, IT, epochs=5, key=jax.random.key(0), learning_rate=0.1)
    np.testing.assert_allclose(sw.losses[1], res.losses, rtol=1e-5, atol=1e-6)


def test_summary_and_rows():
    # three members, four epochs: the program of test_divergent_member_is_frozen...'s healthy sweep
    sw = gd.sweep(MODEL.loss, P0, optax.sgd, IT, learning_rates=[0.01, 0.1, 1e5], epochs=4, key=jax.random.key(0))
    rows = sw.to_rows()
    assert [r["diverged"] for r in rows] == [False, False, True]
    assert sum(r["best"] for r in rows) == 1 and rows[sw.best_index]["best"]
    json.dumps(rows)  # plain Python values only
    text = sw.summary()
    assert "best (*): learning_rate=0.1" in text and "1 of 3 diverged" in text and "diverged" in text.splitlines()[-2]
    assert sw.best_hyperparams == {"learning_rate": pytest.approx(0.1)}


def test_every_member_diverged_has_no_best():
    # three members and four epochs, like test_summary_and_rows: the same compiled program
    sw = gd.sweep(MODEL.loss, P0, optax.sgd, IT, learning_rates=[1e6, 1e7, 1e8], epochs=4, key=jax.random.key(0))
    assert sw.diverged.all() and sw.best_index is None and sw.best_params is None
    assert "every member diverged" in sw.summary()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"learning_rates": [0.1, 0.2, 0.3, float("nan")]},
            ValueError,
            "learning_rates must be finite.*entry 3 is nan",
        ),
        ({"learning_rates": [0.1, -0.2]}, ValueError, "entry 1 is -0.2"),
        ({"learning_rates": []}, ValueError, "learning_rates is empty"),
        ({"learning_rates": [[0.1]]}, ValueError, "1-D array"),
        ({"learning_rates": None}, ValueError, "sweep needs something to sweep"),
        ({"hyperparams": {"momentum": [0.1, float("inf")]}}, ValueError, r"hyperparams\['momentum'\].*entry 1 is inf"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be at least 1"),
        ({"seeds": [1, 1]}, ValueError, "seeds must be distinct"),
        ({"seeds": [1, 2**32 + 1]}, ValueError, r"seeds must be distinct integers in \[0, 2\*\*32\)"),
        ({"seeds": 2.5}, TypeError, "seeds must be a count"),
        ({"devices": ["cpu"]}, TypeError, "devices must be a non-empty sequence of jax.Device"),
        ({"optimizer_fn": optax.sgd(0.1)}, TypeError, "optimizer_fn must be an optax factory"),
        ({"key": 3}, TypeError, "key must be a single JAX PRNG key"),
        ({"epochs": -1}, ValueError, "epochs must be at least 1"),
        (
            {"hyperparams": {"momentom": [0.5, 0.9]}},
            TypeError,
            r"optimizer factory sgd cannot take .*'momentom'.*check the names in learning_rates= and hyperparams=",
        ),
        (
            {"optimizer_fn": lambda momentum: optax.sgd(0.1, momentum), "hyperparams": {"momentum": 0.9}},
            TypeError,
            r"cannot take \['learning_rate', 'momentum'\]: got an unexpected keyword argument 'learning_rate'",
        ),
        ({"hyperparams": "momentum"}, TypeError, "hyperparams must be a dict from the optimizer's keyword names"),
        ({"hyperparams": [("momentum", 0.9)]}, TypeError, "hyperparams must be a dict"),
        (
            {"hyperparams": {"momentum": 0.9, "nesterov": [0.0, 1.0]}},
            TypeError,
            r"sgd cannot take hyperparameter 'nesterov' as a traced number.*functools.partial\(optax.sgd, nesterov=",
        ),
        (
            {"optimizer_fn": optax.adam, "hyperparams": {"mu_dtype": jnp.bfloat16}},
            TypeError,
            r"hyperparams\['mu_dtype'\] must be a number.*only numeric.*functools.partial\(factory, mu_dtype=",
        ),
        ({"hyperparams": {"nesterov": True}}, TypeError, r"hyperparams\['nesterov'\] must be a number.*got bool"),
        ({"learning_rates": ["0.1", "0.2"]}, TypeError, "learning_rates must be a number or array of numbers"),
        (
            {"optimizer_fn": _warmup_cosine},
            TypeError,
            r"cannot take hyperparameter 'learning_rate' as a traced value.*schedule.*peak 1.*learning_rate \* unit",
        ),
        ({"devices": jax.devices()[0]}, TypeError, r"got the single device .*Pass devices=\[d\]"),
        ({"devices": jax.devices()[:1] * 2}, ValueError, r"devices lists .* more than once"),
        ({"devices": 3}, TypeError, "devices must be a non-empty sequence of jax.Device"),
        ({"batched": True}, TypeError, r"failed with batched=True.*loss_fn\(params, example\).*drop batched=True"),
        ({"loss_fn": _per_batch_loss}, TypeError, "pass batched=True"),
        ({"params": lambda k: P0}, TypeError, r"params is a function, not parameters.*params=None, init="),
        ({"params": None, "init": lambda: P0, "seeds": 2}, TypeError, r"init must be called as init\(key\)"),
        ({"params": None, "init": lambda k: P0}, ValueError, r"init= needs seeds="),
        ({"init": lambda k: P0, "seeds": 2}, ValueError, r"params and init are both given"),
    ],
)
def test_bad_arguments_are_explained_before_compiling(kwargs, error, match, compiles):
    args = {"optimizer_fn": optax.sgd, "learning_rates": [0.1, 0.2], "epochs": 1, "key": jax.random.key(0), **kwargs}
    opt, loss, params = args.pop("optimizer_fn"), args.pop("loss_fn", MODEL.loss), args.pop("params", P0)
    with compiles() as c, pytest.raises(error, match=match):
        gd.sweep(loss, params, opt, IT, **args)
    assert c.count == 0
    assert (
        gd.sweep(MODEL.loss, P0, optax.sgd, IT, learning_rates=[0.1], epochs=1, key=jax.random.key(0)).num_members == 1
    )


SHARDED = textwrap.dedent(
    """
    import json, jax, numpy as np, optax, gdjax as gd
    assert len(jax.devices()) == 8, jax.devices()
    prob = gd.problems.linear_regression(n=100, d=3, key=jax.random.key(0))
    m = gd.models.linear()
    it = gd.minibatch(prob.data, 16)
    lrs = np.geomspace(1e-3, 1e4, 13)   # 13 members: padded to 16 over 8 devices, some diverge
    kw = dict(learning_rates=lrs, epochs=3, key=jax.random.key(1), seeds=None)
    many = gd.sweep(m.loss, m.init(None, 3), optax.sgd, it, **kw)
    one = gd.sweep(m.loss, m.init(None, 3), optax.sgd, it, devices=jax.devices()[:1], **kw)
    chunked = gd.sweep(m.loss, m.init(None, 3), optax.sgd, it, chunk_size=5, **kw)
    placed = gd.sweep(m.loss, m.init(None, 3), optax.sgd, it, devices=[jax.devices()[3]], **kw)
    # settled members agree to float tolerance; unstable ones amplify last-bit differences of the
    # matrix kernels (other member counts per device), so for those only the verdicts are compared
    ok = ~one.diverged & (one.final_loss < one.initial_loss)
    close = lambda a, b: bool(np.allclose(a[ok], b[ok], rtol=1e-5, atol=1e-7))
    print(json.dumps({
        "devices": [many.devices, one.devices],
        "shape": list(many.losses.shape),
        "settled": int(ok.sum()),
        "losses_equal": close(many.losses, one.losses) and close(many.epoch_losses, one.epoch_losses),
        "chunked_equal": close(chunked.losses, one.losses),
        "params_equal": close(np.asarray(many.params["w"]), np.asarray(one.params["w"])),
        "diverged_equal": bool((many.diverged == one.diverged).all()),
        "some_diverged": bool(many.diverged.any()),
        "placed_on": [d.id for d in placed.params["w"].devices()],
        "sharded": len(gd.sweep(m.loss, m.init(None, 3), optax.sgd, it, learning_rates=np.geomspace(1e-3, 1, 16),
                                epochs=1, key=jax.random.key(1)).params["w"].sharding.device_set),
    }))
    """
)


@pytest.mark.slow
def test_sharded_over_eight_cpu_devices_equals_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == [8, 1] and result["shape"][0] == 13 and result["settled"] >= 5
    assert result["losses_equal"] and result["chunked_equal"] and result["params_equal"] and result["diverged_equal"]
    assert result["some_diverged"] and result["sharded"] == 8
    assert result["placed_on"] == [3]  # devices=[one device] runs there


def test_progress_counts_real_members_not_padding(capsys):
    # 6 members in chunks of 4: the second chunk holds 2 real members (one diverging) and 2 copies of the last
    gd.sweep(
        MODEL.loss,
        P0,
        optax.sgd,
        IT,
        learning_rates=[0.01, 0.02, 0.03, 0.04, 0.05, 1e6],
        epochs=2,
        key=jax.random.key(0),
        chunk_size=4,
        progress=True,
    )
    last = [line for line in capsys.readouterr().err.splitlines() if "chunk 2/2" in line][-1]
    assert "1 of 2 running, 1 diverged" in last


@pytest.mark.slow
def test_options_that_are_not_numbers_are_fixed_in_the_factory():
    """The fix the error messages suggest: functools.partial(optax.sgd, nesterov=True), numbers still swept."""
    nesterov = functools.partial(optax.sgd, nesterov=True)
    kw = {"hyperparams": {"momentum": 0.9}, "epochs": 1, "key": jax.random.key(0)}
    sw = gd.sweep(MODEL.loss, P0, nesterov, IT, learning_rates=[0.05, 0.1], **kw)
    res = gd.fit(MODEL.loss, P0, nesterov, IT, learning_rate=0.1, **kw)
    np.testing.assert_allclose(sw.losses[1], res.losses, rtol=1e-5, atol=1e-6)
    plain = gd.fit(MODEL.loss, P0, optax.sgd, IT, learning_rate=0.1, **kw)
    assert not np.allclose(res.losses[1:], plain.losses[1:])  # nesterov took effect
