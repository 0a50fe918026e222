"""End-to-end tests of the scripts in examples/: each runs with its defaults and gives sound results."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from _shared import load_example

pytestmark = pytest.mark.slow  # each script trains its models with its defaults: seconds each


def test_seed_lesson(capsys):
    out = load_example("seed_lesson").main([])
    runs, min_loss = out["runs"], out["min_loss"]
    assert set(runs) == {"batch GD", "SGD", "mini-batch GD (32)"}
    batch = runs["batch GD"]
    assert batch["final_cost"] == pytest.approx(min_loss, rel=1e-3)
    assert out["distance_to_solution"] < 1e-3
    # one update per epoch for batch GD, N per epoch for SGD, ceil(N / 32) for mini-batches
    assert batch["updates"] == batch["epochs"]
    assert runs["SGD"]["updates"] == 4096 * runs["SGD"]["epochs"]
    assert runs["mini-batch GD (32)"]["updates"] == 128 * runs["mini-batch GD (32)"]["epochs"]
    for r in runs.values():
        # no run goes below the exact minimum; the noisy ones settle near it
        assert min_loss * (1 - 1e-4) <= r["final_cost"] < 2 * min_loss
        assert r["time"] >= 0
    assert "least squares (exact)" in capsys.readouterr().out


def test_mlp_classifier():
    # optax's Adam is not strict-promotion safe (`b1 ** count`), so pin standard promotion here.
    with jax.numpy_dtype_promotion("standard"):
        out = load_example("mlp_classifier").main([])
    assert out["accuracy"] > 0.8
    assert out["accuracy"] > out["chance"] + 0.4
    assert np.all(np.isfinite(out["epoch_losses"]))
    assert out["last_epoch_loss"] < out["first_epoch_loss"] < out["initial_loss"]


def test_hand_written_loop():
    out = load_example("hand_written_loop").main([])
    mask = out["last_mask"]
    # N=1000, batch 64: the 16th batch holds 40 real examples and 24 masked padding slots, real ones first
    assert mask.shape == (64,)
    assert mask.sum() == 1000 - 15 * 64
    assert mask[:40].all() and not mask[40:].any()
    assert out["ragged_loss_error"] < 1e-6
    assert out["num_steps"] == out["fit_num_steps"] == 16 * 10
    assert out["max_abs_diff"] < 1e-5
    assert out["factory_max_abs_diff"] < 1e-5
    np.testing.assert_allclose(out["epoch_losses"], out["fit_epoch_losses"], rtol=1e-5)
    assert out["epoch_losses"][-1] < 1.1 * out["min_loss"]


def test_lr_sweep(capsys):
    out = load_example("lr_sweep").main([])
    lin = out["linear"]
    # the best constant step for least squares sits below the stability limit 2/L, and members above it diverge
    assert lin["best_lr"] < lin["limit"]
    assert all(lr >= lin["first_unstable_lr"] for lr in lin["unstable_lrs"])
    assert lin["limit"] <= lin["first_unstable_lr"] <= lin["limit"] * lin["grid_ratio"]
    assert lin["best_loss"] == pytest.approx(lin["min_loss"], rel=1e-2)
    assert out["mlp"]["best_loss"] < out["mlp"]["initial_loss"] / 2
    text = capsys.readouterr().out
    assert "best (*)" in text and "2/L" in text


def test_model_selection(capsys):
    with jax.numpy_dtype_promotion("standard"):  # optax's AdamW, as above
        out = load_example("model_selection").main([])
    sel, other = out["selected"], out["train_loss_pick"]
    assert sel["test_accuracy"] >= 0.9
    # 20% of the training labels are wrong: the member that fits them best (no weight decay, 100 epochs) has
    # memorised them, and the validation split sees it
    assert other["hyperparams"]["weight_decay"] == 0.0
    assert other["train_loss"] < 0.1 < other["val_loss"]
    assert sel["val_loss"] < other["val_loss"]
    assert sel["test_accuracy"] > other["test_accuracy"] + 0.03
    # early stopping ran: some members stopped before 100 epochs, each a patience (10) after its best epoch
    assert out["stopped_early"].any() and (out["num_epochs"] < 100).any()
    assert 1 <= sel["epoch"] < 100 and other["epoch"] == 100
    text = capsys.readouterr().out
    assert "validation pick (*)" in text and "training-loss pick" in text and "best (*)" in text


def test_schedule_sweep():
    out = load_example("schedule_sweep").main([])
    assert out["given"] == {"warmup_cosine": [out["total_steps"]], "onecycle": [out["total_steps"]]}
    assert out["hyperparams"].keys() == {"learning_rate"}  # total_steps is given, not swept
    for name in ("warmup_cosine", "onecycle"):
        assert out[name]["best_val_accuracy"] > 0.9
    np.testing.assert_allclose(out["last_rate"], out["end_rate"], rtol=0.01)  # the schedule ends at its end value
    assert "peak 1" in out["direct_error"] and "learning_rate" in out["direct_error"]


def test_choose_batch_size(tmp_path, capsys):
    out = load_example("choose_batch_size").main(["--quick", "--synthetic", "--out", str(tmp_path)])
    dig, lsq = out["digits"], out["synthetic"]
    st = dig["study"]
    assert st.sharpness == pytest.approx(dig["sharpness"], rel=1e-6) and dig["noise_scale"] > 0
    assert st.reached.sum() >= 3 and st.recommended_batch_size in st.batch_sizes
    assert dig["figure"].is_file() and lsq["figure"].is_file()
    prob, study = lsq["problem"], lsq["study"]
    assert lsq["sharpness"] == pytest.approx(prob.lipschitz, rel=1e-3)  # least squares: the sharpness is L
    assert study.best_learning_rates[-1] < 2 / prob.lipschitz  # full-batch GD: stable only below 2/L
    steps = [s for s in study.steps_to_target if s is not None]
    assert len(steps) >= 3 and steps[-1] < steps[0]
    simple, _ = lsq["exact"]["target"]
    assert study.noise_scale_at_target == pytest.approx(simple, rel=1e-2)  # gd.noise_scale is B_simple
    text = capsys.readouterr().out
    assert "what to pick: batch size" in text and "exact at the target" in text


def test_multiprocess_sweep(tmp_path):
    """Two local processes joined by jax.distributed (the README's one-machine command), then one alone."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "multiprocess_sweep.py"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, str(script), "--quick", *args], env=env, capture_output=True, text=True, timeout=240
    )
    two = run("--spawn", "2", "--out", str(tmp_path), "--checkpoint", str(tmp_path / "ckpt"))
    assert two.returncode == 0, two.stderr[-3000:]
    out = two.stdout
    assert "2 process(es), 2 device(s) in all (1 here); 8 members, 4 per device" in out
    assert all(f"process {i}: the whole result, 8 members: True" in out for i in (0, 1))
    assert "best learning rate" in out and "data-parallel fit over 2 device(s), batches of 128" in out
    assert (tmp_path / "multiprocess_sweep.png").is_file()
    assert two.stderr.count("sweep: epoch 3/3") == 1  # one progress bar, drawn by process 0
    assert len(list((tmp_path / "ckpt").glob("chunk-*.npz"))) == 2  # one writer
    alone = run("--local", "--checkpoint", str(tmp_path / "ckpt"))  # another process count: refused, clearly
    assert alone.returncode != 0 and "processes: 2 there, 1 now" in alone.stderr
    bad = run("--num-processes", "2")
    assert bad.returncode == 2 and "--num-processes above 1 needs --coordinator" in bad.stderr
