"""Plots of evaluated values: ``gd.plot.history``, the sweep plots ranked by a monitor, and runs evaluated sparsely.

Every check reads the drawn data back (line x/y data, markers, labels) and compares it with the result.
"""

import dataclasses

import jax
import jax.numpy as jnp
import matplotlib.image as mpimg
import numpy as np
import optax
import pytest
from _shared import LINEAR
from matplotlib.figure import Figure

import gdjax as gd


def _acc(params, example):
    """An accuracy-like metric of the linear model (``mode="auto"`` maximises a name with ``acc``)."""
    return (jnp.abs(LINEAR.apply(params, example["x"]) - example["y"]) < 0.3).astype(jnp.float32)


def _ridge(params, example, *, l2):
    return LINEAR.loss(params, example) + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@pytest.fixture(scope="module")
def split(linear_problem):
    data = linear_problem(300, 3).data
    return jax.tree.map(lambda a: a[:240], data), jax.tree.map(lambda a: a[240:], data)


@pytest.fixture(scope="module")
def evaluated(split):
    """A run monitored on ``eval_acc`` that stops early (patience 2) and keeps its best parameters."""
    train, held_out = split
    return gd.fit(
        LINEAR.loss,
        LINEAR.init(None, 3),
        optax.sgd,
        gd.minibatch(train, 32),
        epochs=15,
        key=jax.random.key(1),
        learning_rate=0.05,
        eval_data=held_out,
        metrics={"acc": _acc},
        monitor="eval_acc",
        patience=2,
        keep_best=True,
    )


@pytest.fixture(scope="module")
def sparse(split):
    """A run evaluated every third epoch: ``epoch_losses`` is NaN in between."""
    return gd.fit(
        LINEAR.loss,
        LINEAR.init(None, 3),
        optax.sgd,
        gd.minibatch(split[0], 32),
        epochs=10,
        key=jax.random.key(1),
        learning_rate=0.05,
        eval_every=3,
    )


@pytest.fixture(scope="module")
def monitored_sweep(split):
    """Seven learning rates ranked by ``eval_acc`` (max): some stop early, the last diverges."""
    train, held_out = split
    return gd.sweep(
        LINEAR.loss,
        LINEAR.init(None, 3),
        optax.sgd,
        gd.minibatch(train, 32),
        learning_rates=[*np.geomspace(1e-3, 3, 6), 1e3],
        epochs=8,
        key=jax.random.key(2),
        eval_data=held_out,
        metrics={"acc": _acc},
        monitor="eval_acc",
        patience=2,
        keep_best=True,
        eval_every=2,
    )


def _lines(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def _finite(values):
    values = np.asarray(values, np.float64)
    return values[np.isfinite(values)]


def test_history_draws_training_and_evaluation_curves_per_base_name(evaluated, tmp_path):
    res = evaluated
    assert list(res.history) == ["loss", "acc", "eval_loss", "eval_acc"]
    axes = gd.plot.history(res)
    assert len(axes) == 2 and [a.get_ylabel() for a in axes] == ["loss (log scale)", "acc"]
    for ax, base in zip(axes, ["loss", "acc"], strict=True):
        lines = _lines(ax)
        train, held_out = lines["training"], lines["evaluation"]
        np.testing.assert_array_equal(train.get_xdata(), res.history_epochs)
        np.testing.assert_array_equal(held_out.get_xdata(), res.history_epochs)
        np.testing.assert_allclose(train.get_ydata(), res.history[base])
        np.testing.assert_allclose(held_out.get_ydata(), res.history["eval_" + base])
        assert train.get_linestyle() == "-" and held_out.get_linestyle() == "--"
        assert train.get_color() == held_out.get_color()  # one colour family, evaluation dashed
        assert train.get_marker() == "o"  # few evaluations: markers
        assert ax.get_xlabel() == "epoch"
    assert axes[0].get_yscale() == "log" and axes[1].get_yscale() == "linear"  # a metric is never on a log axis
    assert axes[1].get_title() == "acc (monitored: eval_acc, max)" and axes[0].get_title() == "loss"
    path = tmp_path / "history.png"
    gd.plot.save(axes, path)
    assert mpimg.imread(path)[..., :3].std() > 0.05


def test_history_marks_the_best_epoch_and_says_it_stopped_early(evaluated):
    res = evaluated
    assert res.stopped_early and res.mode == "max" and res.best_epoch is not None
    at = np.flatnonzero(res.history_epochs == res.best_epoch)
    assert res.history["eval_acc"][at[0]] == pytest.approx(res.best_value)
    axes = gd.plot.history(res)
    for ax in axes:  # the best epoch's vertical line in every panel
        vline = _lines(ax)[f"best epoch ({res.best_epoch})"]
        np.testing.assert_array_equal(vline.get_xdata(), [res.best_epoch, res.best_epoch])
    star = _lines(axes[1])[f"best eval_acc: {res.best_value:.4g}"]
    assert star.get_marker() == "*"
    assert star.get_xdata()[0] == res.best_epoch and star.get_ydata()[0] == pytest.approx(res.best_value)
    assert not any(line.get_marker() == "*" for line in axes[0].get_lines())  # the star is on the monitored curve
    note = axes[0].figure.get_suptitle()
    assert f"best eval_acc (max) {res.best_value:.4g} after epoch {res.best_epoch}" in note
    assert f"stopped early after epoch {res.num_epochs}" in note
    calm = gd.plot.history(dataclasses.replace(res, stopped_early=False))
    assert "stopped early" not in calm[0].figure.get_suptitle()


def test_history_names_and_given_axes(evaluated):
    res = evaluated
    (ax,) = gd.plot.history(res, "eval_acc")  # the eval_ name picks the same panel
    assert {"training", "evaluation"} <= set(_lines(ax))
    figure = Figure()
    given = list(figure.subplots(1, 2))
    axes = gd.plot.history(res, ["acc", "loss"], ax=given)
    assert axes == given and [a.get_ylabel() for a in axes] == ["acc", "loss (log scale)"]
    assert "stopped early" in axes[0].get_title() and not figure.get_suptitle()  # the note on the first panel
    (flat,) = gd.plot.history(res, "loss", log=False)
    assert flat.get_yscale() == "linear"
    with pytest.raises(ValueError, match="no history"):
        gd.plot.history(res, "f1")
    with pytest.raises(ValueError, match="2 panels"):
        gd.plot.history(res, ax=Figure().add_subplot())
    with pytest.raises(ValueError, match="member"):
        gd.plot.history(res, member=0)


def test_history_of_a_sparsely_evaluated_run_draws_its_evaluations(sparse):
    res = sparse
    np.testing.assert_array_equal(res.history_epochs, [3, 6, 9, 10])
    (ax,) = gd.plot.history(res)
    train = _lines(ax)["training"]
    np.testing.assert_array_equal(train.get_xdata(), [3, 6, 9, 10])
    np.testing.assert_allclose(train.get_ydata(), res.history["loss"])
    assert "evaluation" not in _lines(ax)  # no eval data: the training curve only
    assert np.isfinite(train.get_ydata()).all()


def test_history_of_a_sweep_member(monitored_sweep, tmp_path):
    sw = monitored_sweep
    best = sw.best_index
    assert best is not None
    axes = gd.plot.history(sw)  # the best member by default
    held_out = _lines(axes[1])["evaluation"]
    np.testing.assert_allclose(held_out.get_ydata(), _finite(sw.history["eval_acc"][best]))
    star = next(line for line in axes[1].get_lines() if line.get_marker() == "*")
    assert star.get_xdata()[0] == sw.best_epoch[best] and star.get_ydata()[0] == pytest.approx(sw.best_value[best])
    assert axes[0].figure.get_suptitle().startswith(f"Member {best} of {sw.num_members} (the best): learning rate")
    stopped = int(np.flatnonzero(np.isnan(sw.history["eval_acc"]).any(axis=1) & ~sw.diverged)[0])
    (ax,) = gd.plot.history(sw, "acc", member=stopped)  # NaN after it stopped: left out
    line = _lines(ax)["evaluation"]
    keep = np.isfinite(sw.history["eval_acc"][stopped])
    assert not keep.all()
    np.testing.assert_array_equal(line.get_xdata(), sw.history_epochs[keep])
    np.testing.assert_allclose(line.get_ydata(), sw.history["eval_acc"][stopped][keep])
    assert f"Member {stopped} of" in ax.figure.get_suptitle()
    diverged = int(np.flatnonzero(sw.diverged)[0])  # nothing finite evaluated: empty panels, no warning
    axes = gd.plot.history(sw, member=diverged)
    axes[0].figure.savefig(tmp_path / "diverged.png")
    assert all(len(line.get_xdata()) == 0 for ax in axes for line in ax.get_lines())
    assert "no finite eval_acc evaluated" in axes[0].figure.get_suptitle()
    with pytest.raises(ValueError, match="member must be"):
        gd.plot.history(sw, member=sw.num_members)


def test_sweep_plot_ranks_by_the_monitor(monitored_sweep):
    sw = monitored_sweep
    ax = gd.plot.sweep(sw)
    lines = _lines(ax)
    curve = lines["eval_acc at each member's best epoch"]
    shown = sw.healthy & np.isfinite(sw.selection)
    order = np.argsort(sw.learning_rates[shown])
    np.testing.assert_allclose(curve.get_xdata(), sw.learning_rates[shown][order])
    np.testing.assert_allclose(curve.get_ydata(), sw.selection[shown][order])
    assert ax.get_ylabel() == "eval_acc at each member's best epoch (max)"  # a metric: linear axis
    assert "eval_acc" in ax.get_title()
    best = sw.best_index
    star = next(line for label, line in lines.items() if label.startswith("best"))
    assert star.get_xdata()[0] == pytest.approx(sw.learning_rates[best])
    assert star.get_ydata()[0] == pytest.approx(sw.selection[best]) == np.nanmax(sw.selection[sw.healthy])
    crosses = next(line for label, line in lines.items() if label.startswith("diverged"))
    assert len(crosses.get_xdata()) == int((~sw.healthy).sum()) > 0
    assert crosses.get_ydata().max() < sw.selection[shown].min()  # mode max: the worst end is the bottom


def test_curves_draw_the_monitored_history(monitored_sweep):
    sw = monitored_sweep
    ax = gd.plot.curves(sw)
    table = sw.history["eval_acc"]
    members = ax.get_lines()[: sw.num_members]
    for k, line in zip(np.argsort(sw.learning_rates), members, strict=True):
        keep = np.isfinite(table[k])
        np.testing.assert_array_equal(line.get_xdata(), sw.history_epochs[keep])  # x="epoch" by default
        np.testing.assert_allclose(line.get_ydata(), table[k][keep])
    best = sw.best_index
    labels = _lines(ax)
    thick = labels[f"best: learning rate {sw.learning_rates[best]:.3g}"]
    np.testing.assert_allclose(thick.get_ydata(), _finite(table[best]))
    assert thick.get_linewidth() > members[0].get_linewidth()
    star = next(line for line in ax.get_lines() if line.get_marker() == "*")
    assert star.get_xdata()[0] == pytest.approx(sw.best_epoch[best])
    assert star.get_ydata()[0] == pytest.approx(sw.selection[best])
    assert ax.get_ylabel() == "eval_acc (max)" and ax.get_yscale() == "linear"
    assert ax.get_xlabel() == "epoch (passes over the data)"
    steps = gd.plot.curves(sw, x="step")
    np.testing.assert_array_equal(steps.get_lines()[0].get_xdata()[:1], sw.history_epochs[:1] * sw.steps_per_epoch)


@pytest.mark.slow  # a grid sweep of its own loss: a program of its own
def test_heatmap_over_a_loss_hyperparameter_ranked_by_the_monitor(split):
    train, held_out = split
    sw = gd.sweep(
        _ridge,
        LINEAR.init(None, 3),
        optax.sgd,
        gd.minibatch(train, 32),
        learning_rates=[0.01, 0.1],
        loss_hyperparams={"l2": [0.0, 0.1, 1.0]},
        grid=True,
        epochs=3,
        key=jax.random.key(0),
        eval_data=held_out,
    )
    assert sw.monitor == "eval_loss" and sw.mode == "min"
    ax = gd.plot.heatmap(sw)  # y: the one other swept value, the loss's l2
    assert ax.get_xlabel() == "learning rate" and ax.get_ylabel() == "l2"
    image = np.ma.filled(ax.get_images()[0].get_array(), np.nan)
    lr, l2 = sw.learning_rates, sw.loss_hyperparams["l2"]
    rows, columns = np.searchsorted(np.unique(l2), l2), np.searchsorted(np.unique(lr), lr)
    np.testing.assert_allclose(image[rows, columns], sw.selection, rtol=1e-6)
    assert not np.allclose(sw.selection, sw.final_loss)  # held-out loss, not the training loss
    assert ax.figure.axes[1].get_ylabel().startswith("final eval_loss (min)")
    assert "eval_loss (min)" in ax.get_title()
    star = next(line for line in ax.get_lines() if line.get_marker() == "*")
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (columns[sw.best_index], rows[sw.best_index])
    assert ax.get_images()[0].get_cmap().name == "viridis_r"  # lower is better: the lowest brightest
    by_l2 = gd.plot.sweep(sw, hyperparam="l2")  # a loss hyperparameter on the x axis
    assert by_l2.get_xlabel() == "l2" and by_l2.get_ylabel().startswith("final eval_loss (min)")
    assert by_l2.get_yscale() == "log"  # a monitored loss keeps the log axis


def test_heatmap_of_a_maximised_monitor_is_brightest_at_the_top(monitored_sweep):
    sw = monitored_sweep
    extra = {"momentum": np.tile([0.0, 0.9], sw.num_members)[: sw.num_members]}
    grid = dataclasses.replace(sw, hyperparams={**sw.hyperparams, **extra})
    ax = gd.plot.heatmap(grid, y="momentum")
    assert ax.get_images()[0].get_cmap().name == "viridis"
    assert ax.figure.axes[1].get_ylabel() == "eval_acc at each member's best epoch (max)"


def test_losses_and_compare_draw_only_the_evaluated_epochs(sparse, tmp_path):
    res = sparse
    assert np.isnan(res.epoch_losses).sum() == 7  # epochs 3, 6 and 9 evaluated; 10 only in history
    ax = gd.plot.losses(res, x="epoch", smooth=20)
    markers = _lines(ax)["run: full-data cost after each evaluation"]
    np.testing.assert_array_equal(markers.get_xdata(), [0, 3, 6, 9, 10])
    np.testing.assert_allclose(markers.get_ydata(), [res.initial_loss, *res.history["loss"]])
    (line,) = gd.plot.compare({"sparse": res}, x="epoch").get_lines()
    np.testing.assert_array_equal(line.get_xdata(), [0, 3, 6, 9, 10])  # a connected line, not isolated NaN gaps
    np.testing.assert_allclose(line.get_ydata(), [res.initial_loss, *res.history["loss"]])
    assert line.get_marker() == "o" and line.get_markersize() > 0 and line.get_linestyle() == "-"
    ax.figure.savefig(tmp_path / "losses.png")


def test_losses_of_a_run_evaluated_only_at_the_end(sparse):
    res = dataclasses.replace(
        sparse,
        epoch_losses=np.full(sparse.num_epochs, np.nan, np.float32),
        history={"loss": sparse.history["loss"][-1:]},
        history_epochs=sparse.history_epochs[-1:],
    )  # what eval_every=0 records
    (line,) = gd.plot.compare({"end": res}, x="epoch").get_lines()
    np.testing.assert_array_equal(line.get_xdata(), [0, res.num_epochs])
    assert line.get_markersize() > 0


def _monitored_case(sw, case):
    """``sw`` with its monitored values replaced to make an edge case the plots must survive."""
    m = sw.num_members
    if case == "nothing-finite":
        nan = {k: np.full(v.shape, np.nan) for k, v in sw.history.items()}
        return dataclasses.replace(sw, best_value=np.full(m, np.nan), diverged=np.ones(m, bool), history=nan)
    if case == "beyond-log-axes":
        history = {**sw.history, "eval_loss": np.full(sw.history["eval_loss"].shape, 1e300)}
        return dataclasses.replace(sw, best_value=np.geomspace(1e-300, 1e300, m), monitor="eval_loss", history=history)
    value = {"equal": np.full(m, 0.5), "negative": -np.linspace(1.0, 2.0, m), "zero": np.zeros(m)}[case]
    return dataclasses.replace(sw, best_value=value)


@pytest.mark.parametrize("case", ["nothing-finite", "beyond-log-axes", "equal", "negative", "zero"])
def test_monitored_plots_never_raise(monitored_sweep, case, tmp_path):
    """Any monitored values draw and save, without a warning (the suite turns warnings into errors)."""
    sw = _monitored_case(monitored_sweep, case)
    extra = {"momentum": np.tile([0.0, 0.9], sw.num_members)[: sw.num_members]}
    sw = dataclasses.replace(sw, hyperparams={**sw.hyperparams, **extra})
    drawn = [gd.plot.sweep(sw), gd.plot.curves(sw), gd.plot.heatmap(sw, y="momentum"), *gd.plot.history(sw)]
    for k, ax in enumerate(drawn):
        ax.figure.savefig(tmp_path / f"{k}.png")
    best = sw.best_index
    stars = [line for line in drawn[0].get_lines() if line.get_marker() == "*"]
    assert len(stars) == (best is not None)
    if case == "nothing-finite":
        assert best is None and "no finite eval_acc" in drawn[3].figure.get_suptitle()
    if case == "beyond-log-axes":
        assert drawn[0].get_yscale() == "linear" and drawn[1].get_yscale() == "linear"  # a loss, but beyond log axes
    if case in ("negative", "zero"):
        np.testing.assert_allclose(stars[0].get_ydata(), [sw.selection[best]])
