"""gd.plot.study: labels, log axes, the noise-scale and critical-batch-size lines, unreached batch sizes drawn.

The figures are drawn from StudyResults made by hand (nothing compiles here); test_study.py runs real studies.
"""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import gdjax as gd

SIZES = [1, 2, 4, 8, 16, 32, 64, 100]


def _result(**kw) -> gd.StudyResult:
    """A study of 8 batch sizes following McCandlish's model (B_crit 12), the two largest never reaching the target."""
    b = np.array(SIZES, np.float64)
    steps = np.ceil(40 * (1 + 12 / b)).astype(int)
    reached = b < 50
    n = 100
    epochs = [int(np.ceil(s * bb / n)) if r else None for s, bb, r in zip(steps, b, reached, strict=True)]
    per_epoch = [int(np.ceil(n / bb)) for bb in b]
    args = {
        "batch_sizes": SIZES,
        "learning_rates": np.geomspace(0.01, 1.0, 8),
        "target": 0.2,
        "epochs": 50,
        "num_examples": n,
        "initial_loss": 2.0,
        "steps_per_epoch": per_epoch,
        "best_learning_rates": [0.02, 0.04, 0.08, 0.15, 0.3, 0.5, 0.7, 0.7],
        "best_members": [1, 2, 3, 4, 5, 6, 7, 7],
        "final_losses": [0.19] * 6 + [0.3, 0.4],
        "epochs_to_target": epochs,
        "steps_to_target": [None if e is None else e * p for e, p in zip(epochs, per_epoch, strict=True)],
        "examples_to_target": [None if e is None else e * n for e in epochs],
        "seconds_to_target": [None if e is None else 0.01 * e for e in epochs],
        "epochs_run": [e or 50 for e in epochs],
        "sweeps": [],
        "wall_times": [0.1] * 8,
        "compile_times": [1.0] * 8,
        "sharpness": 1.6,
        "noise_scale": 3.0,
        "noise_scale_at_target": 20.0,
        "noise_scale_batch_size": 32,
        "critical_batch_size": 12.0,
        "min_steps": 40.0,
        "min_examples": 480.0,
    }
    return gd.StudyResult(**{**args, **kw})


def _lines(ax, prefix: str) -> list:
    return [line for line in ax.get_lines() if str(line.get_label()).startswith(prefix)]


def test_panels_axes_and_labels(tmp_path):
    axes = gd.plot.study(_result())
    assert len(axes) == 3
    assert [a.get_xscale() for a in axes] == ["log"] * 3 and [a.get_yscale() for a in axes] == ["log"] * 3
    assert [a.get_xlabel() for a in axes] == ["batch size (log scale)"] * 3
    assert axes[0].get_ylabel() == "steps to the target (log scale)"
    assert axes[1].get_ylabel() == "examples to the target (log scale)"
    assert axes[2].get_ylabel() == "learning rate (log scale)"
    # batch sizes as plain numbers on the x axis, and counts on the y axes
    labels = [t.get_text() for t in axes[0].get_xticklabels()]
    assert labels == ["1", "2", "4", "8", "16", "32", "64", "100"]
    axes[0].figure.canvas.draw()
    counts = [t.get_text() for t in axes[0].get_yticklabels() if t.get_text()]
    assert counts and all(text.isdigit() for text in counts), counts
    path = tmp_path / "study.png"
    gd.plot.save(axes, path)
    image = mpimg.imread(path)
    assert image.shape[1] > 1200 and image[..., :3].std() > 0.05
    title = axes[0].figure.get_suptitle()
    assert "target loss 0.2" in title and "whole epochs" in title


def test_noise_scale_and_critical_batch_size_lines_and_the_fit():
    axes = gd.plot.study(_result())
    for ax in axes[:2]:
        (start,) = _lines(ax, "B_simple at start = 3")
        assert list(start.get_xdata()) == [3.0, 3.0]
        (at_target,) = _lines(ax, "B_simple at target = 20")
        assert list(at_target.get_xdata()) == [20.0, 20.0]
        (crit,) = _lines(ax, "fitted B_crit = 12")
        assert list(crit.get_xdata()) == [12.0, 12.0] and crit.get_linestyle() == "--"
        (fit,) = _lines(ax, "McCandlish fit")
        assert fit.get_linestyle() == "--"
    (fit,) = _lines(axes[0], "McCandlish fit")
    x, y = fit.get_xdata(), fit.get_ydata()
    np.testing.assert_allclose(y, 40 * (1 + 12 / x))
    (limit,) = _lines(axes[2], "2/sharpness = 1.25")
    assert list(limit.get_ydata()) == [1.25, 1.25]


def test_unreached_batch_sizes_are_drawn_open_along_the_top():
    axes = gd.plot.study(_result())
    for ax in axes[:2]:
        (reached,) = [line for line in ax.get_lines() if str(line.get_label()).endswith("to the target")]
        assert list(reached.get_xdata()) == SIZES[:6]
        (open_,) = _lines(ax, "not reached in 50 epochs")
        assert list(open_.get_xdata()) == [64.0, 100.0] and open_.get_markerfacecolor() == "none"
    (lrs,) = _lines(axes[2], "not reached: lowest final loss")
    assert list(lrs.get_xdata()) == [64.0, 100.0] and list(lrs.get_ydata()) == [0.7, 0.7]


def test_without_diagnostics_or_fit_and_with_nothing_reached():
    bare = _result(sharpness=None, noise_scale=None, noise_scale_at_target=None, critical_batch_size=None)
    axes = gd.plot.study(bare)
    assert not _lines(axes[0], "B_simple") and not _lines(axes[0], "McCandlish") and not _lines(axes[2], "2/")
    nothing = _result(steps_to_target=[None] * 8, examples_to_target=[None] * 8, critical_batch_size=None)
    axes = gd.plot.study(nothing)
    (open_,) = _lines(axes[0], "not reached")
    assert len(open_.get_xdata()) == 8


def test_far_off_markers_are_named_not_drawn_and_given_axes_are_used():
    figure = Figure()
    given = list(figure.subplots(1, 3))
    axes = gd.plot.study(_result(noise_scale_at_target=5e4), ax=given)
    assert axes == given and figure.get_suptitle() == ""
    (far,) = _lines(axes[0], "B_simple at target = 5e+04 (off the axis)")
    assert len(far.get_xdata()) == 0
    assert axes[0].get_xlim()[1] < 400
    with pytest.raises(ValueError, match="three panels; ax has 2 axes"):
        gd.plot.study(_result(), ax=given[:2])


def _nothing_reached(**kw) -> gd.StudyResult:
    none = [None] * len(SIZES)
    return _result(
        steps_to_target=none,
        examples_to_target=none,
        epochs_to_target=none,
        seconds_to_target=none,
        epochs_run=[50] * len(SIZES),
        noise_scale_at_target=None,
        noise_scale_batch_size=None,
        critical_batch_size=None,
        min_steps=None,
        min_examples=None,
        **kw,
    )


def _texts(ax) -> str:
    return "\n".join(t.get_text() for t in ax.texts)


def test_nothing_reached_draws_open_markers_and_a_note(tmp_path):
    st = _nothing_reached()
    axes = gd.plot.study(st)
    gd.plot.save(axes, tmp_path / "study.png")  # a log scale with nothing on it could not be drawn
    assert mpimg.imread(tmp_path / "study.png").shape[1] > 1200
    for ax in axes[:2]:
        (open_,) = _lines(ax, "not reached in 50 epochs")
        assert list(open_.get_xdata()) == [float(b) for b in SIZES] and open_.get_markerfacecolor() == "none"
        assert not [line for line in ax.get_lines() if str(line.get_label()).endswith("to the target")]
        assert "no batch size reached the target 0.2\nin 50 epochs" in _texts(ax)
        assert ax.get_yscale() == "linear" and "log scale" not in ax.get_ylabel()
        assert not _lines(ax, "pick")
    assert axes[2].get_yscale() == "log"
    (lrs,) = _lines(axes[2], "not reached: lowest final loss")
    assert len(lrs.get_xdata()) == len(SIZES)
    # axes of one's own, and a single epoch (singular)
    figure = Figure()
    axes = gd.plot.study(_nothing_reached(epochs=1), ax=list(figure.subplots(1, 3)))
    assert _lines(axes[0], "not reached in 1 epoch") and "in 1 epoch:" in _texts(axes[0])
    gd.plot.save(axes, tmp_path / "given.png")


def test_one_batch_size_reached(tmp_path):
    none = [None] * (len(SIZES) - 1)
    st = _result(
        steps_to_target=[*none[:3], 200, *none[3:]],
        examples_to_target=[*none[:3], 1600, *none[3:]],
        epochs_to_target=[*none[:3], 16, *none[3:]],
        seconds_to_target=[*none[:3], 0.16, *none[3:]],
        noise_scale_batch_size=8,
        critical_batch_size=None,
        min_steps=None,
        min_examples=None,
    )
    assert st.recommended_batch_size == 8
    axes = gd.plot.study(st)
    gd.plot.save(axes, tmp_path / "study.png")
    (steps,) = _lines(axes[0], "steps to the target")
    assert list(steps.get_xdata()) == [8.0] and list(steps.get_ydata()) == [200.0]
    assert axes[0].get_yscale() == "log" and not _texts(axes[0])
    (open_,) = _lines(axes[0], "not reached")
    assert len(open_.get_xdata()) == len(SIZES) - 1
    for ax, y in zip(axes, (200.0, 1600.0, 0.15), strict=True):
        (star,) = _lines(ax, "pick: batch size 8 (learning rate 0.15)")
        assert list(star.get_xdata()) == [8] and list(star.get_ydata()) == [y] and star.get_marker() == "*"


DIGITS = [1, 4, 16, 64, 256, 1024, 1797]


def _digits(**kw) -> gd.StudyResult:
    """The README's digits study (batch 1024 picked, 1797 the full batch): crowded batch-size labels."""
    per_epoch, epochs = [1797, 450, 113, 29, 8, 2, 1], [5, 6, 5, 6, 8, 9, 17]
    args = {
        "batch_sizes": DIGITS,
        "learning_rates": np.geomspace(3e-3, 30.0, 16) * 2 / 0.7341,
        "target": 0.05,
        "epochs": 100,
        "num_examples": 1797,
        "initial_loss": 2.3,
        "steps_per_epoch": per_epoch,
        "best_learning_rates": [0.05157, 0.3254, 1.111, 3.794, 7.011, 12.95, 12.95],
        "best_members": [0] * 7,
        "final_losses": [0.04] * 7,
        "epochs_to_target": epochs,
        "steps_to_target": [e * p for e, p in zip(epochs, per_epoch, strict=True)],
        "examples_to_target": [e * 1797 for e in epochs],
        "seconds_to_target": [0.1] * 7,
        "epochs_run": epochs,
        "sweeps": [],
        "wall_times": [1.0] * 7,
        "compile_times": [1.0] * 7,
        "sharpness": 0.7341,
        "noise_scale": 28.7,
        "noise_scale_at_target": 5165.0,
        "noise_scale_batch_size": 1797,
        "critical_batch_size": 969.0,
        "min_steps": 10.0,
        "min_examples": 9671.0,
    }
    return gd.StudyResult(**{**args, **kw})


def test_the_pick_is_starred_and_its_batch_size_always_labelled():
    st = _digits()
    assert st.recommended_batch_size == 1024
    axes = gd.plot.study(st)
    for ax in axes:
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert "1024" in labels, labels  # 1024 and 1797 are too close to label both: the pick keeps its label
        assert {"1", "4", "16", "64"} <= set(labels)
        (star,) = _lines(ax, "pick: batch size 1024 (learning rate 12.9)")
        assert list(star.get_xdata()) == [1024]
    # without a pick the full batch keeps its label
    bare = _digits(steps_to_target=[None] * 7, examples_to_target=[None] * 7, critical_batch_size=None)
    labels = [t.get_text() for t in gd.plot.study(bare)[0].get_xticklabels()]
    assert "1797" in labels and "1024" not in labels


def test_a_best_rate_at_the_edge_of_the_range_is_ringed():
    lrs = np.geomspace(0.01, 1.0, 8)
    st = _result(best_learning_rates=[0.01, 0.04, 0.08, 0.15, 0.3, 1.0, 1.0, 0.7])
    axes = gd.plot.study(st)
    (ring,) = _lines(axes[2], "best rate at the edge of the range tried")
    assert list(ring.get_xdata()) == [1.0, 32.0, 64.0] and ring.get_markerfacecolor() == "none"
    assert list(ring.get_ydata()) == [lrs[0], 1.0, 1.0]
    assert not _lines(gd.plot.study(_result())[2], "best rate at the edge")


def test_a_new_figure_has_one_legend_below_the_panels_and_given_axes_one_each():
    axes = gd.plot.study(_result())
    figure = axes[0].figure
    assert all(ax.get_legend() is None for ax in axes)
    (legend,) = figure.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert len(labels) == len(set(labels))  # the vertical lines of two panels: once each
    assert labels[:2] == ["steps to the target", "examples to the target"]
    assert {"fitted B_crit = 12", "B_simple at start = 3", "2/sharpness = 1.25"} <= set(labels)
    assert any(label.startswith("pick: batch size") for label in labels)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    top = legend.get_window_extent(renderer).y1
    assert top <= min(ax.get_tightbbox(renderer).y0 for ax in axes) + 1  # below the panels, tick labels included
    given = list(Figure().subplots(1, 3))
    gd.plot.study(_result(), ax=given)
    assert all(ax.get_legend() is not None for ax in given) and not given[0].figure.legends
