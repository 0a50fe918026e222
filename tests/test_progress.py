"""The progress bar: redrawn by the host between chunks of epochs of the same program, one bar per sweep."""

import io

import jax
import numpy as np
import optax

import gdjax as gd
from gdjax import progress


def test_fit_progress_in_chunks_changes_nothing(capsys, monkeypatch, linear, small_problem):
    calls = []
    original = progress.ProgressBar.update
    monkeypatch.setattr(progress.ProgressBar, "update", lambda self, *a: (calls.append(a), original(self, *a)))
    kw = dict(epochs=250, key=jax.random.key(1), learning_rate=0.01)
    it = gd.minibatch(small_problem.data, 16)
    quiet = gd.fit(linear.loss, linear.init(None, 3), optax.sgd, it, **kw)
    shown = gd.fit(linear.loss, linear.init(None, 3), optax.sgd, it, progress=True, **kw)
    np.testing.assert_array_equal(quiet.losses, shown.losses)
    np.testing.assert_array_equal(quiet.epoch_losses, shown.epoch_losses)
    assert "fit: epoch 250/250 [" in capsys.readouterr().err
    # a fast run: one epoch to time it, then the rest in one chunk of about MIN_INTERVAL seconds
    assert len(calls) <= 5 and calls[-1][0] == 250
    # one epoch per call: 250 calls of the same compiled program, bit-identical results
    calls.clear()
    monkeypatch.setattr(progress, "MIN_INTERVAL", 0.0)
    stepped = gd.fit(linear.loss, linear.init(None, 3), optax.sgd, it, progress=True, **kw)
    assert [c[0] for c in calls] == list(range(1, 251))
    np.testing.assert_array_equal(quiet.losses, stepped.losses)
    np.testing.assert_array_equal(quiet.params["w"], stepped.params["w"])
    assert stepped.compile_time == 0.0


def test_sweep_shows_one_bar_for_all_members(capsys, linear, small_problem):
    gd.sweep(
        linear.loss,
        linear.init(None, 3),
        optax.sgd,
        gd.minibatch(small_problem.data, 16),
        learning_rates=np.geomspace(1e-3, 1e4, 16),
        epochs=5,
        key=jax.random.key(0),
        progress=True,
    )
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and all(line.startswith("sweep: epoch") for line in lines)
    assert "of 16 running" in lines[-1] and "diverged" in lines[-1]
    assert "epoch 5/5" in lines[-1] or "0 of 16 running" in lines[-1]


def test_bar_redraws_in_place_on_a_terminal_and_rate_limits():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    bar = progress.ProgressBar(1000, "fit", file=out)
    for e in range(1, 1001):
        bar.update(e, 1, 0)
    bar.close()
    text = out.getvalue()
    assert text.count("\r") < 20  # 1000 updates in well under a second: a handful of redraws
    assert text.rstrip().endswith("s") and "1000/1000" in text.split("\r")[-1]


def test_progress_must_be_a_bool(linear, small_problem):
    import pytest

    with pytest.raises(TypeError, match="progress must be True or False"):
        gd.fit(
            linear.loss,
            linear.init(None, 3),
            optax.sgd,
            gd.full_batch(small_problem.data),
            epochs=1,
            key=jax.random.key(0),
            learning_rate=0.1,
            progress="yes",
        )
