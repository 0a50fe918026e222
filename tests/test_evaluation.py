"""Evaluation inside the compiled run: eval data, metrics, eval_every, aux, early stopping, best epoch.

Known answers: every evaluated value is recomputed on the host from the
returned parameters; early stopping is replayed on the host from the
recorded history with Keras's rule; the best epoch's parameters equal a run
stopped at that epoch, bit for bit; evaluation never changes training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import gdjax as gd

CLASSES = 10


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    y = y.astype(np.int32)
    return {"x": x[:300], "y": y[:300]}, {"x": x[300:400], "y": y[300:400]}


MODEL = gd.models.logistic(CLASSES)


def _acc(params, example):
    return (jnp.argmax(MODEL.apply(params, example["x"])) == example["y"]).astype(jnp.float32)


def _host_mean(fn, params, data):
    values = jax.vmap(fn, in_axes=(None, 0))(params, data)
    return float(np.mean(np.asarray(values, np.float64)))


def _fit(train, **kw):
    options = dict(epochs=6, key=jax.random.key(1), learning_rate=0.5)
    options.update(kw)
    return gd.fit(MODEL.loss, MODEL.init(None, 64), optax.sgd, gd.minibatch(train, 32), **options)


def _equal_trees(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_evaluation_never_changes_training(digits):
    train, val = digits
    plain = _fit(train)
    evaluated = _fit(train, eval_data=val, metrics={"acc": _acc}, eval_every=2, monitor="eval_acc", keep_best=True)
    _equal_trees(plain.state, evaluated.state)
    np.testing.assert_array_equal(plain.losses, evaluated.losses)
    assert evaluated.num_epochs == plain.num_epochs == 6


def test_every_evaluated_value_is_the_masked_mean_over_its_data_set(digits):
    train, val = digits
    res = _fit(train, eval_data=val, metrics={"acc": _acc})
    assert list(res.history) == ["loss", "acc", "eval_loss", "eval_acc"]
    np.testing.assert_array_equal(res.history_epochs, np.arange(1, 7))
    expected = {
        "loss": _host_mean(MODEL.loss, res.params, train),
        "acc": _host_mean(_acc, res.params, train),
        "eval_loss": _host_mean(MODEL.loss, res.params, val),
        "eval_acc": _host_mean(_acc, res.params, val),
    }
    for name, value in expected.items():
        assert res.final_metrics[name] == pytest.approx(value, rel=1e-5), name
        assert res.history[name][-1] == pytest.approx(value, rel=1e-5), name
    np.testing.assert_array_equal(res.history["loss"], res.epoch_losses)
    assert res.final_loss == res.final_metrics["loss"]
    # accuracy is a fraction of 300 and 100 examples: exact in float32
    assert res.final_metrics["acc"] * 300 == pytest.approx(round(res.final_metrics["acc"] * 300), abs=1e-3)


@pytest.mark.slow
def test_a_data_iterator_is_accepted_as_eval_data(digits):
    train, val = digits
    a = _fit(train, eval_data=val)
    b = _fit(train, eval_data=gd.minibatch(val, 7))
    np.testing.assert_array_equal(a.history["eval_loss"], b.history["eval_loss"])


@pytest.mark.parametrize("every", [0, pytest.param(3, marks=pytest.mark.slow), 4])
def test_eval_every_evaluates_on_schedule_and_once_at_the_end(digits, every):
    train, val = digits
    every_epoch = _fit(train, eval_data=val, epochs=7)
    res = _fit(train, eval_data=val, epochs=7, eval_every=every)
    scheduled = list(range(every, 8, every)) if every else []
    assert res.history_epochs.tolist() == [*scheduled, 7] if 7 not in scheduled else scheduled
    for k, epoch in enumerate(res.history_epochs):
        assert res.history["eval_loss"][k] == every_epoch.history["eval_loss"][epoch - 1]
    # epochs not evaluated have no full-data loss; the final one is measured at the end
    assert np.isnan(res.epoch_losses[[e - 1 for e in range(1, 8) if e not in scheduled]]).all()
    assert res.final_loss == every_epoch.final_loss
    _equal_trees(res.state, every_epoch.state)


def test_tol_is_checked_at_evaluations(linear, linear_problem):
    prob = linear_problem(128, 3)
    it = gd.full_batch(prob.data)
    kw = dict(epochs=200, key=jax.random.key(0), learning_rate=0.5, tol=prob.min_loss * 1.01)
    each = gd.fit(linear.loss, linear.init(None, 3), optax.sgd, it, **kw)
    fifth = gd.fit(linear.loss, linear.init(None, 3), optax.sgd, it, eval_every=5, **kw)
    assert each.converged and fifth.converged
    assert fifth.num_epochs == -(-each.num_epochs // 5) * 5  # the first evaluation at or after convergence


def _replay(values, mode, patience, min_delta):
    """Keras's EarlyStopping on a recorded history: (stop index or None, best index)."""
    best, best_k, wait = (np.inf if mode == "min" else -np.inf), None, 0
    for k, v in enumerate(values):
        better = v < best - min_delta if mode == "min" else v > best + min_delta
        if better:
            best, best_k, wait = v, k, 0
        else:
            wait += 1
            if wait >= patience:
                return k, best_k
    return None, best_k


@pytest.mark.parametrize(
    ("monitor", "mode", "min_delta"),
    [pytest.param("eval_loss", "min", 0.0, marks=pytest.mark.slow), ("eval_acc", "max", 0.01)],
)
def test_early_stopping_follows_kerass_rule(digits, monitor, mode, min_delta):
    train, val = digits
    kw = dict(eval_data=val, metrics={"acc": _acc}, epochs=40, learning_rate=3.0)
    full = _fit(train, **kw)
    stop, best = _replay(full.history[monitor], mode, 3, min_delta)
    assert stop is not None, "the reference run must overfit for this test to mean something"
    res = _fit(train, **kw, monitor=monitor, mode="auto", patience=3, min_delta=min_delta)
    assert res.mode == mode
    assert res.stopped_early and not res.converged
    assert res.num_epochs == stop + 1 and res.best_epoch == best + 1
    assert res.best_value == full.history[monitor][best]
    np.testing.assert_array_equal(res.history[monitor], full.history[monitor][: stop + 1])


@pytest.mark.slow
def test_keep_best_returns_the_params_of_a_run_stopped_at_the_best_epoch(digits):
    train, val = digits
    res = _fit(train, eval_data=val, epochs=40, learning_rate=3.0, patience=3, keep_best=True)
    assert res.best_epoch is not None and res.best_epoch < res.num_epochs
    short = _fit(train, eval_data=val, epochs=res.best_epoch, learning_rate=3.0)
    _equal_trees(res.best_params, short.params)
    assert res.best_value == short.final_metrics["eval_loss"]
    assert _fit(train, eval_data=val).best_params is None  # only with keep_best


@pytest.mark.slow
def test_sweep_members_stop_on_their_own_and_equal_their_fits(digits):
    train, val = digits
    lrs = np.array([0.05, 3.0, 30.0])  # slow (runs on), overfitting (stops early), faster
    kw = dict(eval_data=val, metrics={"acc": _acc}, monitor="eval_acc", patience=3, keep_best=True, epochs=25)
    sw = gd.sweep(
        MODEL.loss,
        MODEL.init(None, 64),
        optax.sgd,
        gd.minibatch(train, 32),
        learning_rates=lrs,
        key=jax.random.key(1),
        **kw,
    )
    assert sw.stopped_early[1] and sw.num_epochs[1] < sw.num_epochs.max()
    for k in range(2):
        res = _fit(train, learning_rate=float(lrs[k]), **kw)
        assert sw.num_epochs[k] == res.num_epochs and sw.best_epoch[k] == res.best_epoch
        assert sw.stopped_early[k] == res.stopped_early
        np.testing.assert_allclose(sw.history["eval_acc"][k, : res.num_epochs], res.history["eval_acc"], atol=1e-6)
        np.testing.assert_allclose(sw.member_params(k, best=True)["w"], res.best_params["w"], rtol=1e-5, atol=1e-6)
    # NaN after a member stopped; selection by the monitored value, highest accuracy first
    assert np.isnan(sw.history["eval_acc"][1, sw.num_epochs[1] :]).all()
    assert sw.best_index == int(np.nanargmax(np.where(sw.healthy, sw.best_value, np.nan)))
    assert sw.best_hyperparams["learning_rate"] == lrs[sw.best_index]


def test_best_index_by_training_loss_is_unchanged_without_evaluation(linear, linear_problem):
    prob = linear_problem(64, 3)
    sw = gd.sweep(
        linear.loss,
        linear.init(None, 3),
        optax.sgd,
        gd.full_batch(prob.data),
        learning_rates=[0.01, 0.3, 0.1],
        epochs=5,
        key=jax.random.key(0),
    )
    assert sw.monitor == "loss" and sw.mode == "min"
    assert sw.best_index == int(np.argmin(sw.final_loss)) == 1


@pytest.mark.slow
def test_aux_is_recorded_per_window_and_per_evaluation(linear_problem):
    prob = linear_problem(70, 3)

    def loss(p, ex):
        err = ex["x"] @ p["w"] + p["b"] - ex["y"]
        return 0.5 * err**2, {"abs": jnp.abs(err), "big": jnp.abs(err) > 0.5, "one": jnp.int32(1)}

    it = gd.minibatch(prob.data, 32)  # 70 = 32 + 32 + 6: the last batch ragged
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    res = gd.fit(loss, params, optax.sgd, it, epochs=2, key=jax.random.key(0), learning_rate=0.1, has_aux=True)
    assert set(res.step_aux) == {"abs", "big", "one"}
    np.testing.assert_array_equal(res.step_aux["one"], np.ones(6))  # padding rows never count
    # replay the steps by hand with the same batches
    step = jax.jit(gd.make_step(loss, optax.sgd(0.1), has_aux=True))
    state = gd.init(params, optax.sgd(0.1))
    seen = []
    for epoch in range(2):
        for batch in it.iterate(jax.random.key(0), epoch):
            state, metrics = step(state, batch)
            seen.append(metrics["aux"])
    np.testing.assert_allclose(res.step_aux["abs"], [float(a["abs"]) for a in seen], rtol=1e-6)
    np.testing.assert_allclose(res.step_aux["big"], [float(a["big"]) for a in seen], rtol=1e-6)
    # per evaluation: the mean over the training data at the parameters of that epoch
    err = np.abs(np.asarray(prob.data["x"]) @ np.asarray(res.params["w"]) + float(res.params["b"]) - prob.data["y"])
    assert list(res.history) == ["loss", "aux/abs", "aux/big", "aux/one"]
    assert res.history["aux/abs"][-1] == pytest.approx(err.mean(), rel=1e-5)
    assert res.history["aux/big"][-1] == pytest.approx((err > 0.5).mean(), rel=1e-6)


def test_make_step_aux_counts_only_real_rows():
    def loss(p, ex):
        return (p * ex) ** 2, {"count": jnp.int32(1), "flag": ex > 0}

    data = np.arange(1.0, 35.0, dtype=np.float32)  # 34 examples: batches of 32 and 2
    batches = list(gd.minibatch(data, 32, shuffle=False).iterate(jax.random.key(0)))
    step = gd.make_step(loss, optax.sgd(0.1), has_aux=True)
    _, metrics = step(gd.init(jnp.ones(()), optax.sgd(0.1)), batches[1])
    assert float(metrics["aux"]["count"]) == 1.0 and float(metrics["aux"]["flag"]) == 1.0


def _ridge(params, example, *, l2):
    err = example["x"] @ params["w"] + params["b"] - example["y"]
    return 0.5 * err**2 + 0.5 * l2 * jnp.sum(params["w"] ** 2)


def test_a_sweep_over_ridge_penalties_reaches_the_closed_form():
    with jax.enable_x64(True):
        prob = gd.problems.linear_regression(n=120, d=4, key=jax.random.key(3))
        x, y = np.asarray(prob.data["x"], np.float64), np.asarray(prob.data["y"], np.float64)
        l2s = np.array([0.0, 0.05, 0.5, 2.0])
        params = {"w": jnp.zeros(4, jnp.float64), "b": jnp.zeros((), jnp.float64)}
        sw = gd.sweep(
            _ridge,
            params,
            optax.sgd,
            gd.full_batch(prob.data),
            learning_rates=[0.2, 0.3],
            grid=True,
            loss_hyperparams={"l2": l2s},
            epochs=3000,
            key=jax.random.key(0),
            tol=None,
        )
        n = len(y)
        xc, yc = x - x.mean(0), y - y.mean()  # the bias is not penalised: solve on centred data
        for k in range(sw.num_members):
            lam = sw.loss_hyperparams["l2"][k]
            w = np.linalg.solve(xc.T @ xc + n * lam * np.eye(4), xc.T @ yc)
            np.testing.assert_allclose(sw.member_params(k)["w"], w, atol=1e-6, rtol=0)
        assert sw.loss_hyperparams["l2"].tolist() == [*l2s, *l2s]


def test_new_loss_values_reuse_the_compiled_program(linear_problem, compiles):
    prob = linear_problem(64, 3)
    it = gd.minibatch(prob.data, 16)
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    run = lambda l2: gd.fit(  # noqa: E731
        _ridge, params, optax.sgd, it, epochs=3, key=jax.random.key(0), learning_rate=0.1, loss_hyperparams={"l2": l2}
    )
    first = run(0.1)
    with compiles() as c:
        second = run(0.7)
    assert c.count == 0 and second.loss_hyperparams == {"l2": 0.7}
    assert second.final_loss != first.final_loss


@pytest.mark.slow
def test_a_resumed_run_stops_at_the_same_epoch_with_the_same_best(digits, tmp_path):
    train, val = digits
    kw = dict(eval_data=val, epochs=40, learning_rate=3.0, patience=3, keep_best=True, checkpoint_every=1)
    ref = _fit(train, **{**kw, "checkpoint_every": None})
    assert ref.stopped_early
    _fit(train, checkpoint=tmp_path, **kw)
    sorted(tmp_path.glob("epoch-*.npz"))[-1].unlink()  # as if killed just before its last save
    resumed = _fit(train, checkpoint=tmp_path, **kw)
    assert 0 < resumed.resumed_from < ref.num_epochs
    assert resumed.num_epochs == ref.num_epochs and resumed.best_epoch == ref.best_epoch and resumed.stopped_early
    _equal_trees((resumed.state, resumed.best_params), (ref.state, ref.best_params))
    for name in ref.history:
        np.testing.assert_array_equal(resumed.history[name], ref.history[name])


@pytest.mark.slow
def test_chunks_and_devices_give_the_same_members(digits):
    """Chunked members equal one program's to float tolerance (kernels for other member counts round differently)."""
    train, val = digits
    kw = dict(
        learning_rates=np.geomspace(0.05, 5.0, 5),
        eval_data=val,
        metrics={"acc": _acc},
        eval_every=2,
        patience=2,
        keep_best=True,
        epochs=16,
        key=jax.random.key(1),
    )
    args = (MODEL.loss, MODEL.init(None, 64), optax.sgd, gd.minibatch(train, 32))
    whole = gd.sweep(*args, **kw)
    chunked = gd.sweep(*args, chunk_size=2, **kw)
    for name in whole.history:
        np.testing.assert_allclose(chunked.history[name], whole.history[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(chunked.num_epochs, whole.num_epochs)
    np.testing.assert_array_equal(chunked.best_epoch, whole.best_epoch)
    assert chunked.stopped_early.any()
    for a, b in zip(jax.tree.leaves(chunked.best_epoch_params), jax.tree.leaves(whole.best_epoch_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


SHARDED = """
import json, jax, jax.numpy as jnp, numpy as np, optax, gdjax as gd
from sklearn.datasets import load_digits
assert len(jax.devices()) == 4
x, y = load_digits(return_X_y=True)
x, y = (x / 16).astype(np.float32), y.astype(np.int32)
tr, va = {"x": x[:300], "y": y[:300]}, {"x": x[300:400], "y": y[300:400]}
m = gd.models.logistic(10)
acc = lambda p, e: (jnp.argmax(m.apply(p, e["x"])) == e["y"]).astype(jnp.float32)
kw = dict(learning_rates=np.geomspace(0.05, 5.0, 5), eval_data=va, metrics={"acc": acc}, eval_every=2, patience=2,
          keep_best=True, epochs=16, key=jax.random.key(1))
args = (m.loss, m.init(None, 64), optax.sgd, gd.minibatch(tr, 32))
many, one = gd.sweep(*args, **kw), gd.sweep(*args, devices=jax.devices()[:1], **kw)
close = all(np.allclose(many.history[n], one.history[n], rtol=1e-5, atol=1e-6, equal_nan=True) for n in one.history)
print(json.dumps({"devices": [many.devices, one.devices], "close": bool(close),
                  "epochs": [many.num_epochs.tolist(), one.num_epochs.tolist()],
                  "best": [many.best_epoch.tolist(), one.best_epoch.tolist()],
                  "stopped": int(one.stopped_early.sum())}))
"""


@pytest.mark.slow
def test_members_split_over_devices_evaluate_and_stop_like_one_device():
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == [4, 1] and result["close"] and result["stopped"] >= 1
    assert result["epochs"][0] == result["epochs"][1] and result["best"][0] == result["best"][1]
