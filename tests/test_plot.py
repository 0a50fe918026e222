"""Plots: each renders to a file, and what was drawn is checked."""

import dataclasses
import subprocess
import sys

import jax
import matplotlib.image as mpimg
import numpy as np
import optax
import pytest

import gdjax as gd


@pytest.fixture(scope="module")
def problem(linear_problem):
    return linear_problem(300, 3)


@pytest.fixture(scope="module")
def runs(linear, problem):
    def fit(it, lr, epochs):
        return gd.fit(
            linear.loss,
            linear.init(None, 3),
            optax.sgd,
            it,
            epochs=epochs,
            key=jax.random.key(1),
            learning_rate=lr,
        )

    return {
        "batch GD": fit(gd.full_batch(problem.data), 0.5, 30),
        "SGD": fit(gd.stochastic(problem.data), 0.01, 3),
        "mini-batch 32": fit(gd.minibatch(problem.data, 32), 0.1, 5),
    }


@pytest.fixture(scope="module")
def swept(linear, problem):
    return gd.sweep(
        linear.loss,
        linear.init(None, 3),
        optax.sgd,
        gd.minibatch(problem.data, 32),
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


@pytest.mark.slow
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
    cap = 10 * float(swept.initial_loss[swept.healthy].max())  # blow-ups are drawn at a cap, not stretching the axis
    assert max(np.max(line.get_ydata()) for line in ax.get_lines()) <= 1.5 * cap * (1 + 1e-9)
    assert star.get_xdata()[0] == pytest.approx(swept.learning_rates[swept.best_index])
    assert star.get_ydata()[0] == pytest.approx(swept.final_loss[swept.best_index])
    _saved(ax, tmp_path, "sweep.png")


def test_default_sweep_plots_rank_by_the_final_loss(swept):
    """Without a monitor other than the loss (no eval data), the sweep plots draw the final loss as they always did."""
    sw = swept
    assert sw.monitor == "loss" and sw.best_epoch_params is None
    ax = gd.plot.sweep(sw)
    assert ax.get_ylabel() == "final full-data loss (log scale)"
    assert ax.get_title() == f"Sweep of {sw.num_members} members: final loss against learning rate"
    line = ax.get_lines()[0]
    assert line.get_label() == "final loss"
    cap = 10 * float(sw.initial_loss[sw.healthy].max())
    shown = sw.healthy & (sw.final_loss <= cap)
    np.testing.assert_allclose(line.get_ydata(), sw.final_loss[shown][np.argsort(sw.learning_rates[shown])])
    best = sw.best_index
    star = next(line for line in ax.get_lines() if line.get_marker() == "*")
    assert star.get_label() == f"best: learning rate {sw.learning_rates[best]:.3g}, loss {sw.final_loss[best]:.4g}"
    lines = gd.plot.curves(sw)
    assert lines.get_xlabel() == "update (step)" and lines.get_ylabel() == "mini-batch loss (log scale)"
    assert lines.get_title() == f"Loss curves of {sw.num_members} members, coloured by learning rate"
    assert lines.get_legend() is None and len(lines.get_lines()) == sw.num_members
    for k, drawn in zip(np.argsort(sw.learning_rates), lines.get_lines(), strict=True):
        np.testing.assert_allclose(drawn.get_ydata(), sw.losses[k])
    # the same sweep ranked at each member's best epoch (keep_best) is labelled by its monitor instead
    kept = dataclasses.replace(sw, best_epoch_params=sw.params)
    assert gd.plot.sweep(kept).get_ylabel().startswith("loss at each member's best epoch (min)")
    assert gd.plot.curves(kept).get_ylabel().startswith("loss (min)")


def test_curves_one_line_per_member_with_colour_bar(swept, tmp_path):
    ax = gd.plot.curves(swept, smooth=5)
    assert len(ax.get_lines()) == swept.num_members
    colours = {tuple(line.get_color()) for line in ax.get_lines()}
    assert len(colours) == swept.num_members  # coloured by learning rate
    assert len(ax.figure.axes) == 2 and "learning rate" in ax.figure.axes[1].get_ylabel()
    _saved(ax, tmp_path, "curves.png")


@pytest.fixture(scope="module")
def grid(linear, problem):
    return gd.sweep(
        linear.loss,
        linear.init(None, 3),
        optax.sgd,
        gd.minibatch(problem.data, 32),
        learning_rates=[0.01, 0.1, 1000.0],
        hyperparams={"momentum": [0.0, 0.5, 0.9]},
        grid=True,
        epochs=2,
        key=jax.random.key(0),
    )


@pytest.mark.slow  # the grid sweep is a program of its own
def test_heatmap_of_a_grid(grid, tmp_path):
    sw = grid
    ax = gd.plot.heatmap(sw)
    image = np.ma.filled(ax.get_images()[0].get_array(), np.nan)
    assert image.shape == (3, 3)
    assert sw.diverged[sw.learning_rates == 1000.0].all() and np.isnan(image[:, 2]).all()
    assert np.isfinite(image[:, :2]).all()
    lr, momentum = sw.learning_rates, sw.hyperparams["momentum"]
    rows, columns = np.searchsorted(np.unique(momentum), momentum), np.searchsorted(np.unique(lr), lr)
    np.testing.assert_array_equal(np.isnan(image[rows, columns]), ~sw.healthy)  # row: momentum, column: lr
    assert sum(t.get_text() == "x" for t in ax.texts) == int(sw.diverged.sum())
    assert ax.get_xlabel() == "learning rate" and ax.get_ylabel() == "momentum"
    assert ax.figure.axes[1].get_ylabel() == "final full-data loss (log scale)"  # the default: the final loss
    assert ax.get_title() == "Final loss over learning rate x momentum (x: diverged, star: best)"
    assert ax.get_images()[0].get_cmap().name == "viridis_r"
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


def _every(sw, value, dtype=np.float32):
    return np.full(sw.num_members, value, dtype)


def _degenerate(sw, case):
    """``sw`` with its arrays replaced to make one of the edge cases plots must survive."""
    m, w = sw.losses.shape
    lr = {
        "tiny-lr-range": np.geomspace(1e-30, 1.0000001e-30, m),
        "equal-lrs": np.full(m, 0.1),
        "lrs-beyond-log-axes": np.geomspace(1e-300, 1e-299, m),
        "huge-lrs": np.geomspace(1e300, 1e308, m),
        "zero-in-lrs": np.linspace(0.0, 1.0, m),
    }.get(case)
    if lr is not None:
        return dataclasses.replace(sw, hyperparams={"learning_rate": lr})
    if case in ("all-nan", "all-inf"):
        bad = np.nan if case == "all-nan" else np.inf
        return dataclasses.replace(
            sw,
            final_loss=_every(sw, bad),
            initial_loss=_every(sw, bad),
            losses=np.full((m, w), bad, np.float32),
            epoch_losses=np.full(sw.epoch_losses.shape, bad, np.float32),
            diverged=_every(sw, True, bool),
        )
    if case in ("zero-losses", "negative-losses"):
        value = 0.0 if case == "zero-losses" else -2.0
        healthy = {"diverged": _every(sw, False, bool), "initial_loss": _every(sw, value / 2)}
        return dataclasses.replace(
            sw, final_loss=_every(sw, value), losses=np.full((m, w), value, np.float32), **healthy
        )
    assert case == "no-history"  # every member converged before its first step (tol at the initial loss)
    return dataclasses.replace(sw, losses=np.zeros((m, 0), np.float32), diverged=_every(sw, False, bool))


DEGENERATE = [
    "tiny-lr-range", "equal-lrs", "lrs-beyond-log-axes", "huge-lrs", "zero-in-lrs",
    "all-nan", "all-inf", "zero-losses", "negative-losses", "no-history",
]  # fmt: skip


# Each case draws and saves three figures (about a second): two in the fast lane, the others in the slow one.
FAST_DEGENERATE = {"huge-lrs", "all-nan"}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=() if c in FAST_DEGENERATE else pytest.mark.slow) for c in DEGENERATE]
)
def test_sweep_plots_never_raise(swept, case, tmp_path):
    """Any valid result draws and saves, without a warning (the suite turns warnings into errors)."""
    sw = _degenerate(swept, case)
    ax = gd.plot.sweep(sw)
    ax.figure.savefig(tmp_path / "sweep.png")
    lines = gd.plot.curves(sw, smooth=5, x="epoch")
    lines.figure.savefig(tmp_path / "curves.png")
    gd.plot.curves(sw).figure.savefig(tmp_path / "raw.png")
    assert len(lines.get_lines()) == sw.num_members
    labels = [line.get_label() for line in ax.get_lines()]
    if case == "tiny-lr-range":
        assert ax.get_xscale() == "log" and len(lines.figure.axes) == 2  # still a log axis and a colour bar
    if case == "equal-lrs":
        assert len(lines.figure.axes) == 1  # one value: no colour bar, one colour
        assert len({tuple(line.get_color()) for line in lines.get_lines()}) == 1
    if case in ("lrs-beyond-log-axes", "huge-lrs"):
        assert ax.get_xscale() == "linear" and ax.get_xlabel() == "log10 of the learning rate"
        star = next(line for line in ax.get_lines() if line.get_label().startswith("best"))
        assert star.get_xdata()[0] == pytest.approx(np.log10(sw.learning_rates[sw.best_index]))
        assert lines.figure.axes[1].get_ylabel() == "log10 of the learning rate"
    if case == "zero-in-lrs":
        assert ax.get_xscale() == "linear" and ax.get_xlabel() == "learning rate"
    if case in ("all-nan", "all-inf"):
        assert sw.best_index is None and not any(label.startswith("best") for label in labels)
        crosses = next(line for line in ax.get_lines() if line.get_label().startswith("diverged"))
        assert len(crosses.get_xdata()) == sw.num_members
    if case in ("zero-losses", "negative-losses"):
        assert ax.get_yscale() == "linear" and lines.get_yscale() == "linear"  # nothing positive to log
        assert "log scale" not in ax.get_ylabel()
    if case == "no-history":
        assert all(len(line.get_xdata()) == 0 for line in lines.get_lines())


@pytest.mark.slow
@pytest.mark.parametrize("case", ["all-diverged", "equal-losses", "tiny-losses"])
def test_heatmap_never_raises(grid, case, tmp_path):
    n = grid.num_members
    final = {
        "all-diverged": np.full(n, np.nan),
        "equal-losses": np.full(n, 2.0),
        "tiny-losses": np.geomspace(1e-300, 1e-290, n),
    }
    sw = dataclasses.replace(grid, final_loss=final[case], diverged=np.full(n, case == "all-diverged"))
    ax = gd.plot.heatmap(sw)
    ax.figure.savefig(tmp_path / "heatmap.png")
    assert sum(t.get_text() == "x" for t in ax.texts) == (n if case == "all-diverged" else 0)
    assert "log scale" not in ax.figure.axes[1].get_ylabel()  # one value, none, or beyond what log colour bars take
    image = np.ma.filled(ax.get_images()[0].get_array(), np.nan)
    if case == "all-diverged":
        assert np.isnan(image).all()
    else:
        np.testing.assert_allclose(np.sort(image.ravel()), np.sort(final[case]), rtol=1e-6)


def test_long_curves_are_thinned_for_drawing(swept):
    m = swept.num_members
    losses = np.random.default_rng(0).uniform(1.0, 2.0, (m, 50_001)).astype(np.float32)
    sw = dataclasses.replace(swept, losses=losses, diverged=_every(swept, False, bool))
    ax = gd.plot.curves(sw)
    for k, line in zip(np.argsort(sw.learning_rates), ax.get_lines(), strict=True):
        x, y = line.get_xdata(), line.get_ydata()
        assert 10_000 < len(x) <= 20_001
        windows = ((x + 1) / sw.log_every - 1).astype(int)  # which logged loss each point is
        assert windows[0] == 0 and windows[-1] == 50_000  # the ends are kept
        assert np.all(np.diff(windows) > 0) and np.diff(windows).max() <= 3  # evenly thinned
        np.testing.assert_array_equal(y, losses[k][windows])


def test_moving_average_of_non_finite_values():
    values = np.array([1.0, 2.0, np.inf, 4.0, 5.0, np.nan, 7.0, 8.0, 9.0, -np.inf, np.inf, 1.0, 2.0])
    got = gd.plot.moving_average(values, 2)
    with np.errstate(invalid="ignore"):
        want = [values[max(0, i - 1) : i + 1].mean() for i in range(len(values))]
    np.testing.assert_array_equal(got, want)  # windows after a bad value are clean again
