"""Plots: each renders to a file, and what was drawn is checked."""

import subprocess
import sys

import jax
import matplotlib.image as mpimg
import numpy as np
import optax
import pytest

import gdjax as gd

MODEL = gd.models.linear()
PROB = gd.problems.linear_regression(n=300, d=3, key=jax.random.key(0))


@pytest.fixture(scope="module")
def runs():
    def fit(it, lr, epochs):
        return gd.fit(
            MODEL.loss,
            MODEL.init(None, 3),
            optax.sgd,
            it,
            epochs=epochs,
            key=jax.random.key(1),
            learning_rate=lr,
        )

    return {
        "batch GD": fit(gd.full_batch(PROB.data), 0.5, 30),
        "SGD": fit(gd.stochastic(PROB.data), 0.01, 3),
        "mini-batch 32": fit(gd.minibatch(PROB.data, 32), 0.1, 5),
    }


@pytest.fixture(scope="module")
def swept():
    return gd.sweep(
        MODEL.loss,
        MODEL.init(None, 3),
        optax.sgd,
        gd.minibatch(PROB.data, 32),
        learning_rates=np.geomspace(1e-3, 1e3, 12),
        epochs=3,
        key=jax.random.key(2),
    )


def _saved(ax, tmp_path, name):
    path = tmp_path / name
    ax.figure.savefig(path)
    image = mpimg.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 500
    assert image[..., :3].std() > 0.05  # not a blank canvas
    return path


def test_importing_gdjax_does_not_import_matplotlib():
    code = "import sys, gdjax; assert 'matplotlib' not in sys.modules; gdjax.plot; assert 'matplotlib' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("x", ["step", "epoch", "examples", "time"])
def test_losses_draws_raw_average_and_epoch_markers(runs, tmp_path, x):
    res = runs["SGD"]
    ax = gd.plot.losses(res, x=x, smooth=100, label="SGD")
    lines = ax.get_lines()
    assert len(lines) == 3
    raw, average, epochs = lines
    assert raw.get_alpha() < 0.5 and average.get_linewidth() > raw.get_linewidth()
    np.testing.assert_allclose(raw.get_ydata(), res.losses)
    window = 100
    np.testing.assert_allclose(average.get_ydata()[0], res.losses[:window].mean(), rtol=1e-6)  # full windows only
    np.testing.assert_allclose(epochs.get_ydata(), np.concatenate([[res.initial_loss], res.epoch_losses]))
    assert epochs.get_linestyle() == "None" and epochs.get_marker() == "o"
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    # the last step's loss is measured after num_steps - 1 updates
    per_step = {"step": 1, "epoch": 1 / res.steps_per_epoch, "examples": 1, "time": res.wall_time / res.num_steps}[x]
    np.testing.assert_allclose(raw.get_xdata()[-1], (res.num_steps - 1) * per_step, rtol=1e-9)
    np.testing.assert_allclose(raw.get_xdata()[0], 0.0, atol=1e-12)
    assert "moving average of 100 updates" in [t.get_text() for t in ax.get_legend().get_texts()][1]
    _saved(ax, tmp_path, f"losses_{x}.png")


def test_losses_without_smoothing_and_linear_scale(runs):
    ax = gd.plot.losses(runs["batch GD"], log=False, x="epoch")
    assert len(ax.get_lines()) == 2 and ax.get_yscale() == "linear"


def test_compare_one_line_per_run(runs, tmp_path):
    ax = gd.plot.compare(runs, x="examples")
    lines = ax.get_lines()
    assert len(lines) == 3
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0].startswith("batch GD") and "updates" in labels[1]
    # per example processed: SGD's first epoch ends at N examples, like batch GD's first step
    assert lines[1].get_xdata()[1] == pytest.approx(300) and lines[0].get_xdata()[1] == pytest.approx(300)
    assert ax.get_xlabel() == "examples processed"
    ax2 = gd.plot.compare(runs, x="time", smooth=10)
    assert len(ax2.get_lines()) == 6 and ax2.get_xlabel() == "wall time (s)"
    _saved(ax, tmp_path, "compare.png")


def test_sweep_marks_diverged_and_best(swept, tmp_path):
    assert swept.diverged.any() and not swept.diverged.all()
    ax = gd.plot.sweep(swept)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    by_label = {line.get_label(): line for line in ax.get_lines()}
    crosses = next(line for label, line in by_label.items() if label.startswith("diverged"))
    assert crosses.get_marker() == "x" and len(crosses.get_xdata()) == int((~swept.healthy).sum())
    star = next(line for label, line in by_label.items() if label.startswith("best"))
    assert star.get_marker() == "*"
    cap = 10 * swept.initial_loss[swept.healthy].max()  # blow-ups are drawn at a cap, not stretching the axis
    assert max(np.max(line.get_ydata()) for line in ax.get_lines()) <= 1.5 * cap
    assert star.get_xdata()[0] == pytest.approx(swept.learning_rates[swept.best_index])
    assert star.get_ydata()[0] == pytest.approx(swept.final_loss[swept.best_index])
    _saved(ax, tmp_path, "sweep.png")


def test_curves_one_line_per_member_with_colour_bar(swept, tmp_path):
    ax = gd.plot.curves(swept, smooth=5)
    assert len(ax.get_lines()) == swept.num_members
    colours = {tuple(line.get_color()) for line in ax.get_lines()}
    assert len(colours) == swept.num_members  # coloured by learning rate
    assert len(ax.figure.axes) == 2 and "learning rate" in ax.figure.axes[1].get_ylabel()
    _saved(ax, tmp_path, "curves.png")


def test_heatmap_of_a_grid(tmp_path):
    sw = gd.sweep(
        MODEL.loss,
        MODEL.init(None, 3),
        optax.sgd,
        gd.minibatch(PROB.data, 32),
        learning_rates=[0.01, 0.1, 10.0],
        hyperparams={"momentum": [0.0, 0.5, 0.9]},
        grid=True,
        epochs=2,
        key=jax.random.key(0),
    )
    ax = gd.plot.heatmap(sw)
    image = np.ma.filled(ax.get_images()[0].get_array(), np.nan)
    assert image.shape == (3, 3)
    assert sw.diverged[sw.learning_rates == 10.0].all() and np.isnan(image[:, 2]).all()
    assert np.isfinite(image[:, :2]).all()
    assert sum(t.get_text() == "x" for t in ax.texts) == int(sw.diverged.sum())
    assert ax.get_xlabel() == "learning rate" and ax.get_ylabel() == "momentum"
    _saved(ax, tmp_path, "heatmap.png")


def test_draws_on_a_given_axes_and_checks_x(runs):
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    assert gd.plot.losses(runs["SGD"], ax=ax) is ax
    with pytest.raises(ValueError, match="x must be one of"):
        gd.plot.losses(runs["SGD"], x="minutes")


def test_moving_average_matches_a_direct_computation():
    values = np.random.default_rng(0).standard_normal(50)
    got = gd.plot.moving_average(values, 7)
    want = [values[max(0, i - 6) : i + 1].mean() for i in range(50)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
