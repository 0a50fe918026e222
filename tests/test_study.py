"""study: the bookkeeping against plain sweeps, the theory of least squares, compilation, bad input, the fit."""

from __future__ import annotations

import dataclasses
import itertools

import _shared
import jax
import numpy as np
import optax
import pytest

import gdjax as gd
from gdjax import _study_fit, _study_report

MODEL = _shared.LINEAR
N, D = 256, 4
# an ill-conditioned least-squares problem (Hessian eigenvalues from about 1 down to 0.04): small batches need several
# epochs to reach the target, the full batch tens, so steps and examples are resolved at one-epoch resolution
PROB = gd.problems.linear_regression(n=N, d=D, key=jax.random.key(0), scales=np.geomspace(1.0, 0.2, D))
P0 = MODEL.init(None, D)
LRS = np.geomspace(0.02, 1.2, 8) * 2 / PROB.lipschitz  # the last two above 2/L: full-batch GD diverges there
TARGET = 1.05 * PROB.min_loss
SIZES = [4, 16, 64, N]
EPOCHS = 60  # every study here has the same shapes: one compiled program per batch size for the whole file
KEY = jax.random.key(1)


def _study(data=PROB.data, **kw):
    args = {"batch_sizes": SIZES, "learning_rates": LRS, "target": TARGET, "epochs": EPOCHS, "key": KEY}
    return gd.study(MODEL.loss, P0, optax.sgd, data, **{**args, **kw})


@pytest.fixture(scope="module")
def st():
    return _study()


def _epochs_to_target(sw: gd.SweepResult, target: float) -> np.ndarray:
    """Per member, the first evaluated epoch whose full-data loss is <= target (0 where none), read from the history."""
    loss = np.nan_to_num(np.asarray(sw.history["loss"], np.float64), nan=np.inf)
    below = loss <= target
    first = np.argmax(below, axis=1)
    return np.where(below.any(axis=1), np.asarray(sw.history_epochs)[first], 0)


def test_steps_to_target_are_what_a_plain_sweep_reads_from_its_history(st):
    assert st.batch_sizes == SIZES and st.num_examples == N and st.target == TARGET
    for i, b in enumerate(SIZES):
        it = gd.minibatch(PROB.data, b)
        sw = gd.sweep(MODEL.loss, P0, optax.sgd, it, learning_rates=LRS, epochs=EPOCHS, key=KEY, tol=TARGET)
        epochs = _epochs_to_target(sw, TARGET)
        assert st.steps_per_epoch[i] == it.num_batches == -(-N // b)
        np.testing.assert_array_equal(st.sweeps[i].final_loss, sw.final_loss)  # the same program, the same bits
        if not (epochs > 0).any():
            assert st.steps_to_target[i] is None
            continue
        fewest = int(epochs[epochs > 0].min())
        assert st.epochs_to_target[i] == fewest
        assert st.steps_to_target[i] == fewest * it.num_batches
        assert st.examples_to_target[i] == fewest * N
        k = st.best_members[i]
        assert epochs[k] == fewest and st.best_learning_rates[i] == pytest.approx(LRS[k])
        ran = int(sw.num_epochs.max())
        assert st.epochs_run[i] == ran
        assert st.seconds_to_target[i] == pytest.approx(st.wall_times[i] * fewest / ran)
    assert all(t >= 0 for t in st.wall_times + st.compile_times)


def test_least_squares_theory(st):
    assert st.reached.all(), st.summary()
    # full-batch GD with a constant step is stable only below 2/L: the fastest rate to the target is below it
    assert st.best_learning_rates[-1] < 2 / PROB.lipschitz
    steps, examples = st.steps_to_target, st.examples_to_target
    # larger batches never need more updates (each batch size could use the smaller one's rate, with less noise)
    assert all(later <= earlier for earlier, later in itertools.pairwise(steps)), steps
    assert steps[-1] < steps[0] / 4
    # ... but past the critical batch size they need more examples
    assert examples[-1] > examples[-2] >= examples[0]
    assert st.critical_batch_size is not None and SIZES[0] < st.critical_batch_size < N
    assert st.min_steps is not None and 0 < st.min_steps <= min(steps)
    assert st.min_examples is not None and 0 < st.min_examples <= min(examples)
    assert st.recommended_batch_size in SIZES[1:]
    assert st.recommended_learning_rate == st.best_learning_rates[SIZES.index(st.recommended_batch_size)]


def test_sharpness_and_noise_scales_are_the_measurements_of_gdjax(st):
    assert st.sharpness == pytest.approx(PROB.lipschitz, rel=1e-3)  # the Hessian of least squares is exact
    assert st.noise_scale == pytest.approx(gd.noise_scale(MODEL.loss, P0, PROB.data), rel=1e-5)
    i = len(SIZES) - 1  # the largest batch size that reached the target
    assert st.noise_scale_batch_size == SIZES[i]
    at = st.sweeps[i].member_params(st.best_members[i])
    assert st.noise_scale_at_target == pytest.approx(gd.noise_scale(MODEL.loss, at, PROB.data), rel=1e-5)
    assert st.noise_scale_at_target > st.noise_scale  # the gradient shrinks faster than its noise
    assert set(st.measure_times) == {"sharpness", "noise_scale", "noise_scale_at_target"} and not st.measure_errors


def test_rows_and_summary(st):
    rows = st.to_rows()
    assert [r["batch_size"] for r in rows] == SIZES
    assert sum(r["recommended"] for r in rows) == 1
    first = rows[0]
    assert list(first)[:4] == ["batch_size", "steps_per_epoch", "best_learning_rate", "reached"]
    assert first["steps_to_target"] == st.steps_to_target[0] and first["compile_time"] == st.compile_times[0]
    text = st.summary()
    assert f"study of 4 batch sizes x 8 learning rates on {N} examples" in text
    assert "critical batch size" in text and "pick: batch size" in text and "sharpness" in text
    assert text.count(" *") == 1


def test_a_second_study_of_the_same_shapes_compiles_nothing(st, compiles):
    with compiles() as c:
        again = _study(key=jax.random.key(2), target=1.1 * PROB.min_loss)
    assert c.count == 0
    assert again.compile_times == [0.0] * len(SIZES)


def test_unreachable_target_gives_none_and_the_lowest_final_loss(st):
    below = _study(target=0.9 * PROB.min_loss, diagnostics=False)  # no parameters have a loss below the minimum
    assert not below.reached.any()
    assert below.steps_to_target == below.examples_to_target == below.seconds_to_target == [None] * len(SIZES)
    assert below.epochs_run == [EPOCHS] * len(SIZES)
    assert below.critical_batch_size is None and below.recommended_batch_size is None
    assert below.sharpness is None and below.noise_scale_at_target is None
    for i, sw in enumerate(below.sweeps):
        assert below.best_members[i] == sw.best_index  # no member reached it: the lowest final loss
    assert "no batch size reached the target" in below.summary()


def test_a_data_iterator_gives_its_data_and_its_batch_size_is_ignored(st):
    again = _study(gd.minibatch(PROB.data, 7), diagnostics=False)
    assert again.batch_sizes == SIZES and again.steps_to_target == st.steps_to_target
    assert again.best_learning_rates == st.best_learning_rates


def test_the_default_batch_sizes_are_the_powers_of_two_up_to_n_and_n():
    from gdjax._study_checks import default_batch_sizes

    assert default_batch_sizes(1) == [1]
    assert default_batch_sizes(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert default_batch_sizes(1797) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 1797]


BAD = [
    ({"batch_sizes": [4, 2.5]}, TypeError, r"batch_sizes\[1\] must be an integer"),
    ({"batch_sizes": [True]}, TypeError, r"batch_sizes\[0\] must be an integer"),
    ({"batch_sizes": "1,2"}, TypeError, "batch_sizes must be a sequence of integers"),
    ({"batch_sizes": []}, ValueError, "batch_sizes is empty"),
    ({"batch_sizes": [0, 4]}, ValueError, r"batch_sizes\[0\] is 0; every batch size must be at least 1"),
    ({"batch_sizes": [4, 16, 4]}, ValueError, "batch_sizes lists 4 more than once"),
    ({"batch_sizes": [4, 512]}, ValueError, f"batch_sizes 512 exceed the {N} examples"),
    ({"target": -0.1}, ValueError, "target must be a finite number >= 0"),
    ({"target": float("nan")}, ValueError, "target must be a finite number >= 0"),
    ({"target": float("inf")}, ValueError, "target must be a finite number >= 0"),
    ({"target": 1e40}, ValueError, r"target is 1e\+40, beyond the largest float32 \(3.403e\+38\)"),
    ({"target": "0.2"}, TypeError, "target must be a number"),
    ({"target": None}, TypeError, "target must be a number"),
    ({"learning_rates": []}, ValueError, "learning_rates is empty"),
    ({"learning_rates": [0.1, 0.0]}, ValueError, "learning_rates must be positive; entry 1 is 0"),
    ({"learning_rates": [0.1, -1.0]}, ValueError, "learning_rates must be finite and >= 0 everywhere; entry 1"),
    ({"learning_rates": [0.1, np.inf]}, ValueError, "learning_rates must be finite"),
    ({"learning_rates": None}, TypeError, "learning_rates is required"),
    ({"epochs": 0}, ValueError, "epochs must be at least 1"),
    ({"epochs": 2.5}, TypeError, "epochs must be an integer"),
    ({"epochs": 2**30, "batch_sizes": [1, 4]}, ValueError, "epochs=1073741824 with 256 steps per epoch"),
    ({"key": 0}, TypeError, "key must be a single JAX PRNG key"),
    ({"hyperparams": {"momentum": [0.0, 0.9]}}, ValueError, r"hyperparams\['momentum'\] must be one number"),
    ({"hyperparams": {"momentum": "high"}}, TypeError, r"hyperparams\['momentum'\] must be a number"),
    ({"progress": 1}, TypeError, "progress must be True or False"),
    ({"diagnostics": "yes"}, TypeError, "diagnostics must be True or False"),
]


@pytest.mark.parametrize(("kw", "error", "match"), BAD, ids=[m for _, _, m in BAD])
def test_bad_input_is_refused_before_anything_compiles(kw, error, match, compiles):
    with compiles() as c, pytest.raises(error, match=match):
        _study(**kw)
    assert c.count == 0


def test_bad_data_and_optimizer_are_refused_before_anything_compiles(compiles):
    args = {"learning_rates": LRS, "target": TARGET, "epochs": 2, "key": KEY}
    with compiles() as c:
        with pytest.raises(ValueError, match="leading axis"):
            gd.study(MODEL.loss, P0, optax.sgd, {"x": PROB.data["x"], "y": PROB.data["y"][:10]}, **args)
        with pytest.raises(TypeError, match="optimizer"):
            gd.study(MODEL.loss, P0, optax.sgd(0.1), PROB.data, **args)
        with pytest.raises(TypeError, match="loss_fn must be callable"):
            gd.study(None, P0, optax.sgd, PROB.data, **args)
    assert c.count == 0


def test_the_fit_recovers_mccandlish_model_exactly():
    b = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256], np.float64)
    for crit, s_min in ((20.0, 50.0), (3.0, 1000.0), (700.0, 7.0)):
        steps, examples = s_min * (1 + crit / b), s_min * crit * (1 + b / crit)
        fit = _study_fit.tradeoff(list(steps), list(examples))
        assert fit is not None and fit.points == len(b)
        assert fit.critical_batch_size == pytest.approx(crit, rel=1e-9)
        assert fit.min_steps == pytest.approx(s_min, rel=1e-9)
        assert fit.min_examples == pytest.approx(s_min * crit, rel=1e-9)
        np.testing.assert_allclose(fit.steps(b), steps, rtol=1e-9)
        np.testing.assert_allclose(fit.examples(b), examples, rtol=1e-9)
    # batch sizes that did not reach the target are skipped; fewer than 3 pairs, or no trade-off: no fit
    s, e = list(50 * (1 + 20 / b[:4])), list(50 * 20 * (1 + b[:4] / 20))
    assert _study_fit.tradeoff([*s, None], [*e, None]).critical_batch_size == pytest.approx(20)
    assert _study_fit.tradeoff([*s[:2], None], [*e[:2], None]) is None
    assert _study_fit.tradeoff([10, 20, 40], [10, 40, 160]) is None  # steps grow with the batch: no positive fit


def test_the_best_member_is_the_fewest_epochs_then_the_lowest_loss_then_the_smaller_rate(st):
    sw = st.sweeps[0]
    n = sw.num_members
    fake = dataclasses.replace(
        sw,
        converged=np.array([False, True, True, True] + [False] * (n - 4)),
        diverged=np.zeros(n, bool),
        num_epochs=np.array([3, 5, 4, 4] + [9] * (n - 4)),
        final_loss=np.array([0.1, 0.2, 0.3, 0.25] + [1.0] * (n - 4)),
    )
    r = _study_fit.read(fake)
    assert r.member == 3 and r.epochs_to_target == 4 and r.epochs_run == 9
    assert r.steps_to_target == 4 * sw.steps_per_epoch and r.seconds_to_target == pytest.approx(sw.wall_time * 4 / 9)


def test_a_target_beyond_float32_names_target_not_tol():
    with pytest.raises(ValueError, match="target is 1e") as raised:
        _study(target=1e40)
    assert "tol" not in str(raised.value)


def _one(st: gd.StudyResult, **kw) -> gd.StudyResult:
    """``st`` cut to its last batch size (the full batch: 1 step per epoch), with ``kw`` replaced."""
    k = len(st.batch_sizes)
    cut = {
        f.name: getattr(st, f.name)[-1:]
        for f in dataclasses.fields(st)
        if isinstance(getattr(st, f.name), list) and len(getattr(st, f.name)) == k
    }
    return dataclasses.replace(st, critical_batch_size=None, min_steps=None, min_examples=None, **{**cut, **kw})


def test_counts_of_one_are_singular(st, capsys):
    one = _one(st, learning_rates=LRS[-1:], epochs=1, epochs_to_target=[1], steps_to_target=[1], examples_to_target=[N])
    text = one.summary()
    assert f"study of 1 batch size x 1 learning rate on {N} examples" in text and "at most 1 epoch\n" in text
    assert f"(the knee of the trade-off, least steps x examples: 1 step, {N} examples)" in text
    assert f"note: batch size {N} reached the target within 1 or 2 epochs" in text and "so its steps" in text
    for wrong in ("1 steps", "1 epochs", "1 batch sizes", "1 learning rates", "batch sizes 256"):
        assert wrong not in text, wrong
    gd.study(MODEL.loss, P0, optax.sgd, PROB.data, batch_sizes=[N], learning_rates=LRS, target=TARGET, epochs=EPOCHS,
             key=KEY, diagnostics=False, progress=True)  # fmt: skip
    assert f"study: batch size {N} (1 of 1), 1 step per epoch" in capsys.readouterr().err


def test_notes_name_the_arguments_in_python_and_the_options_on_the_command_line(st):
    top = float(LRS.max())
    edge = dataclasses.replace(st, best_learning_rates=[top, *st.best_learning_rates[1:-1], float(LRS.min())])
    text = edge.summary()
    assert f"the best learning rate is the largest tried at batch size {SIZES[0]}: widen learning_rates upward" in text
    assert f"the best learning rate is the smallest tried at batch size {N}: widen learning_rates downward" in text
    notes = _study_report.notes(edge, _study_report.COMMAND_LINE)
    assert (
        f"the best learning rate is the largest tried at batch size {SIZES[0]}: widen the range with --lr-max" in notes
    )
    assert f"the best learning rate is the smallest tried at batch size {N}: widen the range with --lr-min" in notes
    assert not any("learning_rates" in note for note in notes)
    nothing = _one(st, steps_to_target=[None], examples_to_target=[None], epochs_to_target=[None])
    (note,) = _study_report.notes(nothing, _study_report.COMMAND_LINE)
    assert note.startswith(f"no batch size reached the target {TARGET:.6g} within {EPOCHS} epochs: raise --epochs")
    assert "raise epochs or the target" in _study_report.summary(nothing)
