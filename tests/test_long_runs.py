"""Long runs: memory that follows the epochs run, and epoch counts that cannot run refused up front."""

import _shared
import jax
import numpy as np
import optax
import pytest

import gdjax as gd
from gdjax import _config, _run

MODEL = _shared.LINEAR


@pytest.fixture
def small_history(monkeypatch):
    """Programs that hold at most 8 epochs of history (7 steps an epoch, windows of 3), so runs drain segments."""
    monkeypatch.setattr(_run, "HISTORY_BYTES", 8 * (8 + -(-8 * 7 // 3) + 1))
    gd.clear_caches()
    assert _run.capacity(37, 7, 3, 1, 8) == 8
    yield
    gd.clear_caches()  # no program built for the small capacity outlives the test


def _setup_problem():
    prob = _shared.linear_problem(64, 3)
    return prob, MODEL.init(jax.random.key(1), 3), gd.minibatch(prob.data, 10)


def _fit(p, it, **kw):
    return gd.fit(MODEL.loss, p, optax.sgd, it, key=jax.random.key(2), learning_rate=0.05, **kw)


@pytest.fixture(scope="module")
def reference():
    _, p, it = _setup_problem()
    fits = {every: _fit(p, it, epochs=37, log_every=every) for every in (1, 3)}
    sw = gd.sweep(
        MODEL.loss,
        p,
        optax.sgd,
        it,
        learning_rates=[0.01, 0.05, 0.3, 5.0],
        epochs=37,
        key=jax.random.key(2),
        log_every=3,
        tol=0.3,
        chunk_size=2,
    )
    return fits, sw


@pytest.mark.slow
@pytest.mark.parametrize("log_every", [1, 3])
def test_a_fit_longer_than_the_programs_history_equals_one_that_fits_it(reference, small_history, log_every):
    _, p, it = _setup_problem()
    seg = _fit(p, it, epochs=37, log_every=log_every)
    ref = reference[0][log_every]
    np.testing.assert_array_equal(seg.losses, ref.losses)
    np.testing.assert_array_equal(seg.epoch_losses, ref.epoch_losses)
    np.testing.assert_array_equal(seg.params["w"], ref.params["w"])
    assert seg.num_steps == ref.num_steps == 37 * 7


@pytest.mark.slow
def test_a_chunked_sweep_whose_chunks_stop_at_different_epochs_joins_its_histories(reference, small_history):
    _, p, it = _setup_problem()
    sw = gd.sweep(
        MODEL.loss,
        p,
        optax.sgd,
        it,
        learning_rates=[0.01, 0.05, 0.3, 5.0],
        epochs=37,
        key=jax.random.key(2),
        log_every=3,
        tol=0.3,
        chunk_size=2,
    )
    ref = reference[1]
    assert len(set(ref.num_epochs.tolist())) > 1 and ref.num_epochs.max() > 8  # stopped apart, past one segment
    np.testing.assert_array_equal(sw.losses, ref.losses)
    np.testing.assert_array_equal(sw.epoch_losses, ref.epoch_losses)
    np.testing.assert_array_equal(sw.num_epochs, ref.num_epochs)


@pytest.mark.slow
def test_a_resumed_long_run_equals_an_uninterrupted_one(reference, small_history, tmp_path):
    _, p, it = _setup_problem()
    kw = {"log_every": 3, "checkpoint": tmp_path, "checkpoint_every": 5}
    first = gd.fit(MODEL.loss, p, optax.sgd, it, key=jax.random.key(2), learning_rate=0.05, epochs=37, **kw)
    files = sorted(f.name for f in tmp_path.glob("*.npz"))
    assert files == ["epoch-00000035.npz", "epoch-00000037.npz"]
    (tmp_path / "epoch-00000037.npz").unlink()  # as if killed after epoch 35: 4 segments on the host
    again = gd.fit(MODEL.loss, p, optax.sgd, it, key=jax.random.key(2), learning_rate=0.05, epochs=37, **kw)
    assert again.resumed_from == 35
    ref = reference[0][3]
    for res in (first, again):
        np.testing.assert_array_equal(res.losses, ref.losses)
        np.testing.assert_array_equal(res.epoch_losses, ref.epoch_losses)
        np.testing.assert_array_equal(res.params["w"], ref.params["w"])


@pytest.mark.slow
def test_a_long_sweep_stopped_by_tol_keeps_only_the_history_it_ran():
    prob, p, _ = _setup_problem()
    it = gd.minibatch(prob.data, 8)
    lrs = np.geomspace(0.02, 0.1, 64)
    # the history one program holds is bounded, whatever epochs is
    cfg = _config.config(
        MODEL.loss, optax.sgd, p, it, epochs=10**6, log_every=1, has_aux=False, batched=False, members=64
    )
    itemsize = np.dtype(cfg.loss_dtype).itemsize  # float32 losses here: 4 bytes a value
    held = 64 * itemsize * (cfg.epoch_capacity + _run.windows(cfg.epoch_capacity, it.num_batches, cfg.log_every))
    assert held <= _run.HISTORY_BYTES
    tol = float(prob.min_loss) * 1.5
    sw = gd.sweep(MODEL.loss, p, optax.sgd, it, learning_rates=lrs, epochs=10**6, key=jax.random.key(2), tol=tol)
    assert sw.converged.all()
    assert sw.epoch_losses.shape == (64, sw.num_epochs.max())
    assert sw.losses.shape == (64, sw.num_epochs.max() * it.num_batches)


@pytest.mark.parametrize("epochs", [2**31, 2**40])
def test_epochs_that_overflow_the_step_counter_are_refused_before_compiling(compiles, epochs):
    _, p, it = _setup_problem()
    with (
        compiles() as c,
        pytest.raises(ValueError, match=r"epochs=\d+ with 7 steps per epoch .* Use at most 306783378"),
    ):
        _fit(p, it, epochs=epochs)
    with pytest.raises(ValueError, match=r"epochs=\d+ with 7 steps"):
        gd.sweep(MODEL.loss, p, optax.sgd, it, learning_rates=[0.1], epochs=epochs, key=jax.random.key(0))
    assert c.count == 0
