"""gd.plot.study: labels, log axes, the noise-scale and critical-batch-size lines, unreached batch sizes drawn.

The figures are drawn from StudyResults made by hand (nothing compiles here); test_study.py runs real studies.
"""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
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
