"""``gdjax study``: its files against gd.study run in-process with the same settings, its help, and bad input.

The command runs in-process (:func:`gdjax.cli.main`), as most of test_cli.py's do; its linear model is the
session's shared one, so the in-process gd.study below reuses the command's compiled programs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import _shared
import jax
import numpy as np
import optax
import pytest

import gdjax as gd
from gdjax import cli

ROWS = 128
ARGS = ["--batch-sizes", "8,32,128", "--epochs", "16", "--num-lrs", "6", "--no-progress"]


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROWS rows of y = x @ [1.5, -2, 0.5] + 3 + noise, features of different scales; columns a, b, c, y."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 3)) * [1.0, 0.5, 0.2]
    y = x @ [1.5, -2.0, 0.5] + 3.0 + 0.3 * rng.normal(size=ROWS)
    path = tmp_path_factory.mktemp("study") / "data.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "c", "y"])
        writer.writerows(np.column_stack([x, y]).tolist())
    return path


@pytest.fixture
def shared_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's linear model is the session's shared one (same loss function: shared compiled programs)."""
    monkeypatch.setattr(gd.models, "linear", lambda: _shared.LINEAR)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _number(text: str) -> float | None:
    return None if text == "" else float(text)


@pytest.mark.slow  # trains: about 20 s (three batch sizes compiled, the sharpness twice); the rest of the file is fast
def test_study_writes_what_gd_study_measures(data_csv: Path, tmp_path: Path, shared_model, capsys) -> None:
    out = tmp_path / "out"
    assert cli.main(["study", str(data_csv), "--target", "y", *ARGS, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "gdjax study: linear regression of 'y' on 3 features, 128 rows" in printed
    assert "batch sizes 8, 32, 128; 6 learning rates each" in printed
    assert "learning rates: " in printed and "(auto: sharpness" in printed
    assert "target loss: " in printed and "after 12 epochs (75% of --epochs" in printed
    assert "study of 3 batch sizes x 6 learning rates on 128 examples" in printed and "pick: batch size" in printed
    for name in ("study.csv", "summary.json", "study.png"):
        assert f"wrote {out / name}" in printed
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    summary = json.loads((out / "summary.json").read_text())
    rows = _rows(out / "study.csv")
    assert [int(r["batch_size"]) for r in rows] == [8, 32, 128]
    settings, target = summary["settings"], summary["target_loss"]
    assert settings["batch_sizes"] == [8, 32, 128] and settings["rows"] == ROWS and settings["epochs"] == 16
    assert target["source"] == "auto" and target["pilot_epoch"] == 12
    assert summary["versions"]["gdjax"] == gd.__version__ and summary["jax_backend"]
    assert [r["compile_time"] for r in summary["batch_sizes"]] == [float(r["compile_time"]) for r in rows]
    # the trial sweep that chose the target compiled the program the study ran at 128 (which read 0 s): its compile
    # time is counted there, its run time and seconds in the totals
    trial = target["trial_sweep"]
    assert trial["batch_size"] == 128 and trial["wall_time_s"] > 0 and trial["compile_time_s"] >= 0
    assert trial["total_time_s"] >= trial["wall_time_s"] + trial["compile_time_s"]
    assert float(rows[-1]["compile_time"]) == pytest.approx(trial["compile_time_s"])
    run = sum(float(r["wall_time"]) for r in rows)
    assert summary["compile_time_s"] == pytest.approx(sum(float(r["compile_time"]) for r in rows))
    assert summary["wall_time_s"] == pytest.approx(run + trial["wall_time_s"])
    assert summary["total_time_s"] >= trial["total_time_s"] + run
    (line,) = [line for line in printed.splitlines() if line.startswith("sweeps: ")]
    assert f"{summary['wall_time_s']:.3f} s run + {summary['compile_time_s']:.2f} s compile" in line
    assert "the trial sweep that chose the target included" in line and "whole study" in line

    # the same study in-process, on the command's data cache (the float32 rows it trained on)
    cache = out / "data-cache"
    data = {"x": np.load(cache / "x.npy"), "y": np.load(cache / "y.npy")}
    key = jax.random.key(0)
    params = _shared.LINEAR.init(gd.seed_keys(key, 0)[0], num_features=3)
    lrs = np.geomspace(settings["lr_range"]["min"], settings["lr_range"]["max"], 6)
    st = gd.study(
        _shared.LINEAR.loss, params, optax.sgd, data, batch_sizes=[8, 32, 128], learning_rates=lrs,
        target=target["value"], epochs=16, key=key,
    )  # fmt: skip
    assert st.compile_times == [0.0, 0.0, 0.0]  # the command's programs
    assert st.reached[-1]  # the automatic target: the largest batch size reaches it after 12 epochs
    assert st.epochs_to_target[-1] == 12
    for i, row in enumerate(rows):
        assert _number(row["steps_to_target"]) == st.steps_to_target[i]
        assert _number(row["examples_to_target"]) == st.examples_to_target[i]
        assert float(row["best_learning_rate"]) == pytest.approx(st.best_learning_rates[i], rel=1e-12)
        assert row["recommended"] == str(i == st.recommended_index)
    pick = summary["recommended"]
    assert pick["batch_size"] == st.recommended_batch_size
    assert pick["learning_rate"] == pytest.approx(st.recommended_learning_rate, rel=1e-12)
    assert summary["sharpness"] == pytest.approx(st.sharpness, rel=1e-6)
    assert summary["noise_scale"] == pytest.approx(st.noise_scale, rel=1e-6)
    assert summary["critical_batch_size"] == (
        None if st.critical_batch_size is None else pytest.approx(st.critical_batch_size, rel=1e-9)
    )

    # a given target and learning rates: used as they are
    again = ["study", str(data_csv), "--target", "y", *ARGS, "--out", str(out), "--target-loss", "0.5"]
    assert cli.main([*again, "--lr-min", "0.01", "--lr-max", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target_loss"] == {"value": 0.5, "source": "given", "reason": "--target-loss"}  # no trial sweep
    assert summary["settings"]["lr_range"]["source"] == "given"
    assert "target loss: 0.5 (--target-loss)" in capsys.readouterr().out


def test_help_has_examples(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["study", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--batch-sizes B1,B2,..." in text and "--target-loss X" in text
    assert "examples:\n  gdjax study data.csv --target y\n" in text
    assert "resolution is" in text and "critical batch size" in text


class TrainedError(Exception):
    """Raised by the stand-ins for gd.study, gd.sweep and gd.sharpness: the command got as far as training."""


def _refuse(*args, **kwargs):
    raise TrainedError


BAD = [
    (["--target", "z"], "has no column 'z'"),
    (["--target", "y", "--batch-sizes", "4,x"], "--batch-sizes must be whole numbers separated by commas"),
    (["--target", "y", "--batch-sizes", ""], "--batch-sizes must be whole numbers separated by commas"),
    (["--target", "y", "--batch-sizes", "0,4"], "--batch-sizes must be at least 1; got 0"),
    (["--target", "y", "--batch-sizes", "4,16,4"], "--batch-sizes lists 4 more than once"),
    (["--target", "y", "--batch-sizes", "4,500"], f"--batch-sizes 500 is larger than the {ROWS} rows of"),
    (["--target", "y", "--target-loss", "-1"], "--target-loss must be a finite number >= 0"),
    (["--target", "y", "--target-loss", "nan"], "--target-loss must be a finite number >= 0"),
    (["--target", "y", "--target-loss", "1e40"], "--target-loss is 1e+40, beyond the largest float32 (3.403e+38)"),
    (["--target", "y", "--epochs", "0"], "--epochs must be at least 1; got 0"),
    (["--target", "y", "--lr-min", "1", "--lr-max", "0.1"], "--lr-min (1) must be smaller than --lr-max (0.1)"),
    (["--target", "y", "--batch-sizes", "1", "--epochs", "20000000"], "gdjax counts steps in 32-bit integers"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_error_line_before_training(
    argv: list[str], message: str, data_csv: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(gd, "study", _refuse)
    monkeypatch.setattr(gd, "sweep", _refuse)
    monkeypatch.setattr(gd, "sharpness", _refuse)
    assert cli.main(["study", str(data_csv), *argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gdjax: error: "), captured.err
    assert message in lines[0], lines[0]


def test_counts_of_one_are_singular_in_the_header(data_csv: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(gd, "sharpness", _refuse)
    argv = ["study", str(data_csv), "--target", "y", "--batch-sizes", "128", "--epochs", "1", "--num-lrs", "1"]
    with pytest.raises(TrainedError):
        cli.main([*argv, "--out", str(tmp_path / "out"), "--no-progress"])
    assert "\nbatch size 128; 1 learning rate each, sgd, at most 1 epoch\n" in capsys.readouterr().out


@pytest.mark.slow  # trains three batch sizes (the programs of the test above, if it ran first in this process)
def test_an_unreachable_target_still_draws_the_figure_and_the_notes_name_options(
    data_csv: Path, tmp_path: Path, shared_model, monkeypatch, capsys
) -> None:
    out = tmp_path / "out"
    argv = ["study", str(data_csv), "--target", "y", *ARGS, "--out", str(out), "--target-loss", "1e-6"]
    argv += ["--lr-min", "1e-4", "--lr-max", "1e-3"]  # too small: the best rate is the largest at every batch size
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == "", captured.err  # no traceback
    printed = captured.out
    assert "note: no batch size reached the target 1e-06 within 16 epochs: raise --epochs or --target-loss" in printed
    edge = "note: the best learning rate is the largest tried at batch sizes 8, 32, 128: widen the range with --lr-max"
    assert edge in printed
    assert "learning_rates" not in printed and "pick: " not in printed
    assert f"wrote {out / 'study.png'}" in printed
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recommended"] is None and not any(r["reached"] for r in summary["batch_sizes"])
    assert [r["best_lr_at_edge"] for r in summary["batch_sizes"]] == ["largest"] * 3

    # a figure that cannot be drawn: one error line and exit status 1, the numbers written
    def fail(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(gd.plot, "study", fail)
    (out / "study.png").unlink()
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"gdjax: error: could not draw {out / 'study.png'} (RuntimeError: drawing failed); the results are in "
        f"{out / 'study.csv'} and {out / 'summary.json'}."
    ]
    assert f"wrote {out / 'summary.json'}" in captured.out and not (out / "study.png").exists()
