"""End-to-end tests of the ``gdjax`` command: ``demo``, ``sweep``, help, version and every bad input.

The successful runs and one failing run go through a real subprocess
(``python -m gdjax``); the many bad inputs call :func:`gdjax.cli.main`
in-process, since they fail before anything is compiled and a subprocess
would spend most of its time importing JAX.
"""

from __future__ import annotations

import _thread
import csv
import dataclasses
import errno
import gc
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import tomllib
import types
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import gdjax as gd
from gdjax import __version__, cli
from gdjax.cli import _files, _limits, _split, csvdata

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRUE_W, TRUE_B = np.array([1.5, -2.0, 0.5]), 3.0


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "gdjax", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _write(path: Path, header: list[str], rows: np.ndarray) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows.tolist())
    return path


@pytest.fixture(scope="module")
def linear_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 rows of y = x @ [1.5, -2, 0.5] + 3 + noise, columns x1, x2, x3, y."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    y = x @ TRUE_W + TRUE_B + 0.1 * rng.normal(size=300)
    return _write(tmp_path_factory.mktemp("data") / "data.csv", ["x1", "x2", "x3", "y"], np.column_stack([x, y]))


class TrainedError(Exception):
    """Raised by a stand-in for ``gd.sweep``: the command got as far as training."""


def _train(*args, **kwargs):
    raise TrainedError


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make reaching the training an error the test sees (the command must refuse before it)."""
    monkeypatch.setattr(gd, "sweep", _train)


def _strict_json(text: str):
    """``json.loads`` that refuses the non-standard ``NaN``, ``Infinity`` and ``-Infinity``."""

    def refuse(name: str):
        raise ValueError(f"summary.json holds {name}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


def _one_error_line(captured) -> str:
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gdjax: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.slow
def test_sweep_end_to_end(linear_csv: Path, tmp_path: Path) -> None:
    args = ["sweep", str(linear_csv), "--target", "y", "--num-lrs", "12", "--lr-max", "10", "--epochs", "20"]
    proc = _run([*args, "--no-progress", "--out", "out"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "best (*): learning_rate=" in proc.stdout
    out = tmp_path / "out"
    for name in ("results.csv", "summary.json", "sweep.png", "curves.png"):
        assert f"wrote {Path('out') / name}" in proc.stdout

    with (out / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    assert list(rows[0])[:5] == ["learning_rate", "final_loss", "diverged", "converged", "num_steps"]
    lrs = np.array([float(r["learning_rate"]) for r in rows])
    np.testing.assert_allclose(lrs, np.geomspace(1e-4, 10, 12), rtol=1e-12)
    healthy = [r for r in rows if r["diverged"] == "False"]
    assert 0 < len(healthy) < 12, "lr 10 must diverge on this problem, small ones must not"
    best_row = min(healthy, key=lambda r: float(r["final_loss"]))
    assert best_row["best"] == "True"
    assert all(r["num_steps"] == "200" for r in healthy)  # 20 epochs of ceil(300 / 32) = 10 steps

    summary = json.loads((out / "summary.json").read_text())
    best = summary["best"]
    assert best["learning_rate"] == float(best_row["learning_rate"])
    assert best["final_loss"] == pytest.approx(float(best_row["final_loss"]))
    assert summary["num_diverged"] == 12 - len(healthy)
    np.testing.assert_allclose([best["weights"][k] for k in ("x1", "x2", "x3")], TRUE_W, atol=0.05)
    assert best["bias"] == pytest.approx(TRUE_B, abs=0.05)
    settings = summary["settings"]
    assert settings["rows"] == 300 and settings["features"] == ["x1", "x2", "x3"]
    assert settings["target"] == "y" and settings["num_lrs"] == 12 and settings["epochs"] == 20
    assert settings["model"] == "linear" and settings["optimizer"] == "sgd" and settings["batch_size"] == 32
    assert Path(settings["data"]) == linear_csv.resolve()
    assert set(summary["versions"]) == {"gdjax", "jax", "optax", "numpy", "python"}
    assert summary["versions"]["gdjax"] == __version__
    assert summary["jax_backend"] in {"cpu", "gpu", "tpu", "cuda", "rocm"}
    assert _is_png(out / "sweep.png") and _is_png(out / "curves.png")


@pytest.mark.slow
def test_sweep_logistic_standardized_in_process(tmp_path: Path, monkeypatch, capsys) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 2)) * [1.0, 100.0] + [0.0, 500.0]
    label = (x[:, 0] + (x[:, 1] - 500.0) / 100.0 > 0).astype(float)
    const = np.full(200, 7.0)
    _write(tmp_path / "cls.csv", ["a", "b", "const", "label"], np.column_stack([x, const, label]))
    monkeypatch.chdir(tmp_path)
    args = ["sweep", "cls.csv", "--target", "label", "--model", "logistic", "--standardize"]
    args += ["--optimizer", "adam", "--batch-size", "full", "--num-lrs", "4", "--epochs", "30", "--no-progress"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "logistic regression of 'label'" in out and "best (*)" in out
    summary = json.loads((tmp_path / "gdjax-sweep" / "summary.json").read_text())
    stats = summary["settings"]["standardization"]
    assert stats["b"]["mean"] == pytest.approx(x[:, 1].mean()) and stats["b"]["std"] == pytest.approx(x[:, 1].std())
    assert stats["const"] == {"mean": 7.0, "std": 1.0}
    assert summary["best"]["weights"]["const"] == 0.0  # a constant column standardizes to zeros
    assert summary["best"]["final_loss"] < 0.3
    assert summary["settings"]["batch_size"] == "full" and summary["settings"]["steps_per_epoch"] == 1
    assert summary["settings"]["classes"] == [0, 1] and summary["settings"]["num_classes"] == 2
    assert summary["best"]["train_accuracy"] > 0.9 and isinstance(summary["best"]["bias"], float)


@pytest.mark.slow
def test_sweep_mlp_in_process(linear_csv: Path, tmp_path: Path, capsys) -> None:
    args = ["sweep", str(linear_csv), "--target", "y", "--model", "mlp", "--hidden", "8", "--optimizer", "momentum"]
    assert cli.main([*args, "--num-lrs", "3", "--epochs", "2", "--no-progress", "--out", str(tmp_path)]) == 0
    assert "MLP regression" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["hidden"] == 8 and "weights" not in (summary["best"] or {})


@pytest.fixture(scope="module")
def digits_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sklearn's digits (bundled, no download): 1797 rows, 64 pixel columns p0..p63, ten classes in 'digit'."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    header = [f"p{j}" for j in range(64)] + ["digit"]
    table = np.column_stack([digits.data, digits.target])
    return _write(tmp_path_factory.mktemp("digits") / "digits.csv", header, table)


def _digits_table(digits_csv: Path) -> tuple[np.ndarray, np.ndarray]:
    with digits_csv.open(newline="") as f:
        table = np.array(list(csv.reader(f))[1:], dtype=np.float64)
    return table[:, :64], table[:, 64]


@pytest.mark.slow  # the fast lane trains softmax regression on digits with a split (test_validation_split_on_digits)
def test_sweep_softmax_regression_on_digits(digits_csv: Path, tmp_path: Path, capsys) -> None:
    args = ["sweep", str(digits_csv), "--target", "digit", "--model", "logistic", "--standardize"]
    args += ["--optimizer", "adam"]
    args += ["--lr-min", "0.01", "--lr-max", "0.1", "--num-lrs", "2", "--epochs", "3", "--batch-size", "128"]
    assert cli.main([*args, "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "gdjax sweep: softmax regression of 'digit' (10 classes: 0, 1, 2, ..., 9) on 64 features" in out
    summary = _strict_json((tmp_path / "summary.json").read_text())
    settings, best = summary["settings"], summary["best"]
    assert settings["num_classes"] == 10 and settings["classes"] == list(range(10))
    accuracy = best["train_accuracy"]
    assert accuracy > 0.9, accuracy
    assert f"training accuracy of the best: {accuracy:.4f} ({round(accuracy * 1797)} of 1797 rows" in out
    # the written weights (one per feature and class) and biases are the model whose accuracy was reported
    x, y = _digits_table(digits_csv)
    features = [f"p{j}" for j in range(64)]
    mean = np.array([settings["standardization"][c]["mean"] for c in features])
    std = np.array([settings["standardization"][c]["std"] for c in features])
    w = np.array([best["weights"][c] for c in features])
    assert w.shape == (64, 10) and len(best["bias"]) == 10
    predicted = np.argmax((x - mean) / std @ w + np.array(best["bias"]), axis=1)
    assert np.mean(predicted == y) == pytest.approx(accuracy, abs=3 / len(y))  # float32 training, float64 here
    with (tmp_path / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(r["num_steps"] == "45" for r in rows)  # 3 epochs of ceil(1797 / 128) = 15
    assert all(float(r["initial_loss"]) == pytest.approx(np.log(10), rel=1e-6) for r in rows)  # zero start: log C


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _standardization(settings: dict, features: list[str]) -> tuple[np.ndarray, np.ndarray]:
    stats = settings["standardization"]
    return np.array([stats[c]["mean"] for c in features]), np.array([stats[c]["std"] for c in features])


def _held_out(split: dict, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out rows drawn again as summary.json says, and the training rows (every other)."""
    seed, held = split["seed"], split["validation_rows"]
    recipe = f"numpy.random.default_rng({seed}).permutation({rows})[:{held}]"
    assert split["validation_row_indices"].startswith(recipe)
    validation = np.random.default_rng(seed).permutation(rows)[:held]
    return np.setdiff1d(np.arange(rows), validation), validation


def _recounted(x: np.ndarray, y: np.ndarray, logits_of) -> tuple[int, int]:
    """Rows the written model classifies right (float64), and rows too near a tie to tell (top two within 1e-3)."""
    logits = logits_of(x)
    top = np.sort(logits, axis=1)
    return int(np.sum(np.argmax(logits, axis=1) == y)), int(np.sum(top[:, -1] - top[:, -2] < 1e-3))


def test_validation_split_on_digits(digits_csv: Path, tmp_path: Path, capsys) -> None:
    """Softmax regression with --validation 0.2: the accuracies computed in the run are those of the written model."""
    args = ["sweep", str(digits_csv), "--target", "digit", "--model", "logistic", "--standardize"]
    args += ["--optimizer", "adam", "--validation", "0.2", "--seed", "7", "--lr-min", "0.01", "--lr-max", "0.1"]
    args += ["--num-lrs", "2", "--epochs", "3", "--batch-size", "128", "--no-progress", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    summary = _strict_json((tmp_path / "summary.json").read_text())
    split, best, settings = summary["split"], summary["best"], summary["settings"]
    assert split == {**split, "fraction": 0.2, "train_rows": 1438, "validation_rows": 359, "seed": 7}
    assert (summary["monitor"], summary["mode"], best["chosen_by"]) == ("eval_loss", "min", "validation loss")
    assert "validation: 359 of the 1797 rows held out (--validation 0.2, drawn with --seed 7)" in out
    train, held = _held_out(split, 1797)
    x, y = _digits_table(digits_csv)
    features = [f"p{j}" for j in range(64)]
    mean, std = _standardization(settings, features)
    np.testing.assert_allclose(mean, x[train].mean(axis=0), rtol=1e-12, atol=1e-12)  # the training rows' statistics
    w, b = np.array([best["weights"][c] for c in features]), np.array(best["bias"])

    def logits_of(rows: np.ndarray) -> np.ndarray:
        return (rows - mean) / std @ w + b

    for rows, name in ((held, "validation_accuracy"), (train, "train_accuracy")):
        right, near_tie = _recounted(x[rows], y[rows], logits_of)
        reported = best[name] * len(rows)
        assert reported == pytest.approx(round(reported), abs=1e-9)  # a whole number of rows
        assert abs(round(reported) - right) <= near_tie <= 2, (name, reported, right)
    assert best["validation_accuracy"] > 0.85, best
    acc = best["validation_accuracy"]
    assert f"validation {acc:.4f} ({round(acc * 359)} of 359 held-out rows classified right)" in out
    logits = logits_of(x[held])  # the validation loss is the cross-entropy on exactly those rows
    top = logits.max(axis=1)
    log_normalizer = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    cross_entropy = log_normalizer - logits[np.arange(359), y[held].astype(int)]
    assert best["validation_loss"] == pytest.approx(cross_entropy.mean(), rel=1e-4)
    rows_ = _read_rows(tmp_path / "results.csv")
    first = ["learning_rate", "final_loss", "validation_loss", "train_accuracy", "validation_accuracy"]
    assert list(rows_[0])[:5] == first
    chosen = min(rows_, key=lambda r: float(r["validation_loss"]))
    assert chosen["best"] == "True" and float(chosen["validation_accuracy"]) == acc


@pytest.fixture(scope="module")
def overfit_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 rows of 20 features far from mean 0 and a noisy target, columns f0..f19, y.

    Batch gradient descent on 40 of the rows with a large learning rate
    fits them best but generalises worse than a smaller one: the training
    loss and the validation loss choose different learning rates.
    """
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 20)) * rng.uniform(0.5, 3, 20) + rng.uniform(-5, 5, 20)
    y = (x - x.mean(axis=0)) @ rng.normal(size=20) * 0.3 + 2 + 1.5 * rng.normal(size=50)
    header = [f"f{j}" for j in range(20)] + ["y"]
    return _write(tmp_path_factory.mktemp("overfit") / "overfit.csv", header, np.column_stack([x, y]))


def test_validation_chooses_by_held_out_loss_with_training_statistics(overfit_csv: Path, tmp_path: Path, capsys):
    args = ["sweep", str(overfit_csv), "--target", "y", "--validation", "0.2", "--standardize", "--batch-size", "full"]
    args += ["--lr-min", "0.001", "--lr-max", "1", "--num-lrs", "6", "--epochs", "100", "--no-progress"]
    assert cli.main([*args, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = _read_rows(tmp_path / "results.csv")
    assert "train_accuracy" not in rows[0] and "validation_accuracy" not in rows[0]  # regression: no accuracy
    healthy = [r for r in rows if r["diverged"] == "False" and np.isfinite(float(r["validation_loss"]))]
    chosen = min(healthy, key=lambda r: float(r["validation_loss"]))
    assert [r["best"] for r in rows].count("True") == 1 and chosen["best"] == "True"
    assert chosen is not min(healthy, key=lambda r: float(r["final_loss"]))  # by training loss: another one
    summary = _strict_json((tmp_path / "summary.json").read_text())
    best, split = summary["best"], summary["split"]
    assert best["learning_rate"] == float(chosen["learning_rate"]) and best["member"] == int(chosen["member"])
    assert best["validation_loss"] == float(chosen["validation_loss"]) and "train_accuracy" not in best
    lr, k = float(chosen["learning_rate"]), int(chosen["member"])
    assert f"chosen by validation loss: learning rate {lr:.6g} (member {k}) has the lowest eval_loss" in out
    assert f"best (*): learning_rate={lr:.6g}, eval_loss {best['validation_loss']:.6g} (lowest), final loss" in out
    assert "final loss     eval_loss  epochs" in out  # the table shows the value the members are ranked by
    assert "validation: 10 of the 50 rows held out (--validation 0.2, drawn with --seed 0)" in out
    # --standardize: the mean and std of the 40 training rows, not of all 50
    table = np.array([list(map(float, r.values())) for r in _read_rows(overfit_csv)], np.float32)  # as read
    x, y = table[:, :20].astype(np.float64), table[:, 20].astype(np.float64)
    train, held = _held_out(split, 50)
    assert (len(train), len(held)) == (split["train_rows"], split["validation_rows"]) == (40, 10)
    features = [f"f{j}" for j in range(20)]
    mean, std = _standardization(summary["settings"], features)
    np.testing.assert_allclose(mean, x[train].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, x[train].std(axis=0), rtol=1e-12)
    assert np.abs(mean - x.mean(axis=0)).max() > 0.05  # all rows' mean is another
    # the written model's loss on the held-out rows, scaled with the training statistics, is the reported one
    w = np.array([best["weights"][c] for c in features])
    residual = (x[held] - mean) / std @ w + best["bias"] - y[held]
    assert best["validation_loss"] == pytest.approx(0.5 * np.mean(residual**2), rel=1e-4)


@pytest.mark.parametrize(("rows", "fraction", "seed"), [(2, 0.5, 0), (10, 0.3, 1), (1797, 0.2, 7), (1000, 0.999, 3)])
def test_split_is_reproducible_disjoint_and_complete(rows: int, fraction: float, seed: int) -> None:
    split = _split.split_rows(rows, fraction, seed, Path("d.csv"))
    again = _split.split_rows(rows, fraction, seed, Path("d.csv"))
    np.testing.assert_array_equal(split.train, again.train)
    np.testing.assert_array_equal(split.validation, again.validation)
    assert not set(split.train.tolist()) & set(split.validation.tolist())
    assert sorted([*split.train.tolist(), *split.validation.tolist()]) == list(range(rows))
    assert len(split.validation) == _split.num_held_out(rows, fraction) == max(1, round(fraction * rows))
    recipe = np.random.default_rng(seed).permutation(rows)[: len(split.validation)]  # as summary.json documents
    np.testing.assert_array_equal(split.validation, np.sort(recipe))
    if rows > 10:  # another seed, another split
        other = _split.split_rows(rows, fraction, seed + 1, Path("d.csv"))
        assert not np.array_equal(other.validation, split.validation)


@pytest.mark.parametrize("rows", [2, 3, 7, 30, 1797, 123_457])
def test_a_refused_split_suggests_a_fraction_that_works(rows: int) -> None:
    suggested = []
    for fraction in (0.1 / rows, 1 - 0.1 / rows):
        with pytest.raises(cli._common.UsageError) as exc:
            _split.split_rows(rows, fraction, 0, Path("d.csv"))
        suggested.append(float(re.search(r"; use ([0-9.e+-]+) \(", str(exc.value))[1]))
    low, high = (_split.split_rows(rows, f, 0, Path("d.csv")) for f in suggested)
    assert (len(low.validation), len(high.train)) == (1, 1)


def _binary_rows(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, 2))
    return x, (x[:, 0] - 0.5 * x[:, 1] + 0.3 * rng.normal(size=n) > 0).astype(float)


@pytest.mark.parametrize(("low", "high"), [(0, 1), (-1, 1), pytest.param(3, 7, marks=pytest.mark.slow)])
def test_two_labels_are_the_binary_model_as_before(low: int, high: int, tmp_path: Path, capsys) -> None:
    """Two labels train the binary logistic regression of ``gd.models.logistic()``, bit for bit, on 0/1."""
    x, y01 = _binary_rows()
    path = _write(tmp_path / "bin.csv", ["a", "b", "label"], np.column_stack([x, np.where(y01 == 1, high, low)]))
    args = ["sweep", str(path), "--target", "label", "--model", "logistic", "--batch-size", "full"]
    args += ["--lr-min", "0.1", "--lr-max", "1", "--num-lrs", "2", "--epochs", "5", "--no-progress"]
    assert cli.main([*args, "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"logistic regression of 'label' (2 classes: {low}, {high}) on 2 features" in out
    summary = _strict_json((tmp_path / "out" / "summary.json").read_text())
    assert summary["settings"]["classes"] == [low, high] and summary["settings"]["num_classes"] == 2
    best = summary["best"]
    assert isinstance(best["bias"], float) and all(isinstance(v, float) for v in best["weights"].values())
    model = gd.models.logistic()
    data = {"x": x.astype(np.float32), "y": y01.astype(np.float32)}  # the 0/1 float target of the binary model
    direct = gd.sweep(model.loss, model.init(None, 2), optax.sgd, gd.full_batch(data),
                      learning_rates=np.geomspace(0.1, 1, 2), epochs=5, key=jax.random.key(0))  # fmt: skip
    rows = _read_rows(tmp_path / "out" / "results.csv")
    final = [float(r["final_loss"]) for r in rows]
    np.testing.assert_array_equal(final, np.asarray(direct.final_loss, np.float64))  # accuracy changes nothing
    k = direct.best_index
    assert best["weights"] == dict(zip(["a", "b"], np.asarray(direct.params["w"][k]).tolist(), strict=True))
    # the accuracy computed in the compiled run (results.csv, summary.json) is the one counted here, for every member
    hits = jax.vmap(jax.vmap(model.metrics["acc"], in_axes=(None, 0)), in_axes=(0, None))(direct.params, data)
    counted = np.asarray(hits, np.float64).mean(axis=1)
    assert [float(r["train_accuracy"]) for r in rows] == counted.tolist()
    assert best["train_accuracy"] == counted[k] and best["chosen_by"] == "training loss"
    assert best["train_accuracy"] > 0.8 and summary["split"] is None and summary["monitor"] == "loss"


@pytest.mark.parametrize(
    ("labels", "classes", "expected"),
    [
        (["0", "1", "1", "0"], [0, 1], [0, 1, 1, 0]),
        (["-1", "1", "1"], [-1, 1], [0, 1, 1]),
        (["9", "3", "5", "3"], [3, 5, 9], [2, 0, 1, 0]),
        (["2.0", "1e1", " 2 ", "10."], [2, 10], [0, 1, 0, 1]),
        (["16777217", "16777216"], [16777216, 16777217], [1, 0]),  # one apart, past float32's exact whole numbers
    ],
    ids=["zero-one", "minus-one-one", "unsorted", "written-as-floats", "past-float32"],
)
def test_class_labels_are_numbered_in_sorted_order(labels, classes, expected, tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,y\n" + "".join(f"{i},{label}\n" for i, label in enumerate(labels)))
    table = csvdata.load_csv(path, "y", labels=True)
    assert table.classes == classes and all(type(c) is int for c in table.classes)
    assert table.y.dtype == np.int32 and table.y.tolist() == expected
    assert table.x[:, 0].tolist() == list(range(len(labels))) and table.features == ["a"]
    plain = csvdata.load_csv(path, "y")
    assert plain.classes is None and plain.y.dtype == np.float32


def test_memory_estimate_counts_a_weight_per_feature_and_class(monkeypatch) -> None:
    monkeypatch.setattr(_limits, "memory_limit", lambda: (256 * 2**20, "a test's limit"))
    args = types.SimpleNamespace(epochs=1, model="logistic", hidden=32, optimizer="sgd", num_lrs=1)
    _limits.check_size(args, 10, 10**6, 10, 1)  # one output: about 16 MB of parameters and their copies
    _limits.check_size(args, 10, 10**6, 10, 1, num_outputs=2)
    with pytest.raises(cli._common.UsageError, match=r"100,000,100 parameters"):  # (10**6 + 1) x 100 classes
        _limits.check_size(args, 10, 10**6, 10, 1, num_outputs=100)


@pytest.mark.slow
def test_demo(tmp_path: Path) -> None:
    proc = _run(["demo", "--out", "figs", "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "least squares (exact)" in proc.stdout and "best learning rate of the sweep" in proc.stdout
    pngs = sorted((tmp_path / "figs").glob("*.png"))
    assert len(pngs) >= 5 and all(_is_png(p) for p in pngs)
    for p in pngs:
        assert f"wrote {Path('figs') / p.name}" in proc.stdout


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"gdjax {__version__}"


SWEEP_OPTIONS = [
    "DATA.csv", "--target", "--model", "--hidden", "--lr-min", "--lr-max", "--num-lrs", "--batch-size",
    "--epochs", "--optimizer", "--standardize", "--seed", "--out", "--no-progress", "linear", "logistic", "mlp",
    "sgd", "momentum", "adam", "default: 32", "full", "examples:", "softmax regression", "whole-number labels",
    '"classes"', "training accuracy", "--validation FRACTION", "training rows only", "lowest validation loss",
    "default_rng(SEED).permutation(ROWS)[:HELD_OUT]", "validation_accuracy",
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["demo", "sweep", "--version", "examples:"]),
        (["demo"], ["--out", "--seed", "--no-progress", "default: gdjax-demo", "example:"]),
        (["sweep"], SWEEP_OPTIONS),
    ],
    ids=["main", "demo", "sweep"],
)
def test_help(argv: list[str], expected: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--help"])
    assert exc.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # help wraps to the terminal's width
    missing = [word for word in expected if "".join(word.split()) not in text]
    assert not missing, text


def test_no_command_is_one_error_line(capsys) -> None:
    assert cli.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "gdjax: error: a command is required: demo, sweep or study (see gdjax --help)\n"


GOOD = "a,b,y\n1,2,3\n4,5,6\n7,8,9\n"
LOGISTIC = ["--model", "logistic"]

# (id, file contents or None for no file, extra arguments, details the message must contain)
BAD_INPUTS = [
    ("missing-file", None, [], ["does not exist"]),
    ("directory", "DIR", [], ["is a directory"]),
    ("empty-file", "", [], ["is empty"]),
    ("blank-lines-only", "\n\n", [], ["is empty"]),
    ("header-only", "a,b,y\n", [], ["no data rows"]),
    ("missing-target", "a,b,c\n1,2,3\n", [], ["no column 'y'", "'a', 'b', 'c'"]),
    ("no-header", "1,2,3\n4,5,6\n", [], ["no column 'y'", "header row"]),
    ("semicolons", "a;b;y\n1;2;3\n", [], ["no column 'y'", "comma"]),
    ("non-numeric", "a,b,y\n1,2,3\n4,abc,6\n", [], ["line 3", "column 'b'", "'abc'", "not a number"]),
    ("empty-cell", "a,b,y\n1,,3\n", [], ["line 2", "column 'b'", "empty cell"]),
    ("ragged-short", "a,b,y\n1,2,3\n4,5\n", [], ["line 3", "2 fields", "3 columns"]),
    ("ragged-long", "a,b,y\n1,2,3,4\n", [], ["line 2", "4 fields", "3 columns"]),
    ("nan", "a,b,y\n1,2,3\n4,nan,6\n", [], ["line 3", "column 'b'", "'nan'", "finite"]),
    ("inf", "a,b,y\n1,2,3\n4,5,-inf\n", [], ["line 3", "column 'y'", "'-inf'", "finite"]),
    ("float32-overflow", "a,b,y\n1,1e39,3\n", [], ["line 2", "column 'b'", "float32"]),
    ("float32-overflow-barely", "a,b,y\n1,-3.40282357e38,3\n", [], ["'-3.40282357e38' is too large for float32"]),
    ("underscore-digits", "a,b,y\n1,1_000,3\n", [], ["line 2", "column 'b'", "'1_000' is not a number"]),
    ("arabic-indic-digit", "a,b,y\n1,2,\u0661\n", [], ["line 2", "column 'y'", "'\u0661' is not a number"]),
    ("fullwidth-digits", "a,b,y\n\uff11\uff12,2,3\n", [], ["column 'a'", "not a number"]),
    ("hex-like", "a,b,y\n1,0x10,3\n", [], ["'0x10' is not a number"]),
    ("infinity-word", "a,b,y\n1,+Infinity,3\n", [], ["'+Infinity' is not a finite number"]),
    ("duplicate-column", "a,a,y\n1,2,3\n", [], ["'a' twice"]),
    ("duplicate-target", "y,a,y\n1,2,3\n", [], ["'y' twice"]),
    ("only-nan-like", "a,b,y\nnan,NaN,inf\n", [], ["line 2", "column 'a'", "'nan'", "finite"]),
    ("huge-cell", "a,b,y\n1,2," + "9" * 100_000 + "\n", [], ["line 2", "column 'y'", "100,000 characters", "float32"]),
    ("huge-field", "a,b,y\n1,2," + "9" * 200_000 + "\n", [], ["not valid CSV", "field"]),
    ("huge-header", ",".join(f"c{i}" for i in range(100_000)) + "\n", [], ["no column 'y'", "100,000 columns"]),
    ("unnamed-column", "a,,y\n1,2,3\n", [], ["column 2", "no name"]),
    ("only-target", "y\n1\n2\n", [], ["only the target column 'y'", "feature"]),
    ("logistic-fraction", "a,b,y\n1,2,0\n\n3,4,0.5\n", LOGISTIC, ["line 4", "column 'y'", "0.5 is not a whole number"]),
    ("logistic-fraction-fix", "a,b,y\n1,2,0\n3,4,0.5\n", LOGISTIC, ["class labels", "1 of the 2 rows has a", "linear"]),
    ("logistic-nearly-whole", "a,b,y\n1,2,2.0000001\n3,4,1.5\n", LOGISTIC, ["line 2", "2.0000001 is not", "2 of the"]),
    ("logistic-string-label", "a,b,y\n1,2,0\n3,4,cat\n", LOGISTIC, ["line 3", "column 'y'", "'cat' is not a number"]),
    ("logistic-string-fix", "a,b,y\n1,2,cat\n", LOGISTIC, ["class labels as whole numbers", "as 0, 1, 2, ..."]),
    ("logistic-one-class", "a,b,y\n1,2,4\n3,4,4\n", LOGISTIC, ["column 'y'", "every row has the label 4", "two"]),
    ("logistic-string-feature", "a,b,y\n1,x,0\n", LOGISTIC, ["column 'b'", "'x' is not a number; every column must"]),
    ("linear-string-target", "a,b,y\n1,2,cat\n", [], ["column 'y'", "'cat' is not a number; every column must"]),
    ("num-lrs", GOOD, ["--num-lrs", "0"], ["--num-lrs", "at least 1", "got 0"]),
    ("lr-min-zero", GOOD, ["--lr-min", "0"], ["--lr-min", "positive"]),
    ("lr-min-negative", GOOD, ["--lr-min", "-1"], ["--lr-min", "positive"]),
    ("lr-max-nan", GOOD, ["--lr-max", "nan"], ["--lr-max", "positive"]),
    ("lr-min-above-max", GOOD, ["--lr-min", "1", "--lr-max", "0.1"], ["--lr-min (1)", "--lr-max (0.1)"]),
    ("lr-min-equals-max", GOOD, ["--lr-min", "0.1", "--lr-max", "0.1"], ["smaller than --lr-max"]),
    ("lr-below-float32", GOOD, ["--lr-min", "1e-300", "--lr-max", "1e-299"], ["--lr-min 1e-300", "1.175e-38"]),
    ("lr-above-float32", GOOD, ["--lr-max", "1e39"], ["--lr-max 1e+39", "float32", "3.403e+38"]),
    ("lrs-equal-in-float32", GOOD, ["--lr-min", "1", "--lr-max", "1.00000001"], ["same number in float32"]),
    ("epochs", GOOD, ["--epochs", "0"], ["--epochs", "at least 1"]),
    ("epochs-past-int32-steps", GOOD, ["--epochs", "3000000000"], ["--epochs 3000000000", "2**31", "2,147,483,647"]),
    ("num-lrs-past-any-memory", GOOD, ["--num-lrs", str(10**15)], ["--num-lrs", "GiB", "chunk_size"]),
    ("hidden-past-any-memory", GOOD, ["--model", "mlp", "--hidden", str(10**12)], ["even one", "--hidden", "GiB"]),
    ("batch-size-zero", GOOD, ["--batch-size", "0"], ["--batch-size", "at least 1"]),
    ("batch-size-above-rows", GOOD, ["--batch-size", "4"], ["--batch-size 4", "3 rows", "'full'"]),
    ("hidden", GOOD, ["--model", "mlp", "--hidden", "0"], ["--hidden", "at least 1"]),
    ("seed", GOOD, ["--seed", "-1"], ["--seed", "between 0 and"]),
    ("out-is-a-file", GOOD, ["--batch-size", "full", "--out", "data.csv"], ["--out data.csv", "is a file"]),
]

BAD_INPUTS += [
    ("validation-zero", GOOD, ["--validation", "0"], ["--validation must be a fraction strictly between 0", "got 0."]),
    ("validation-one", GOOD, ["--validation", "1"], ["--validation", "between 0 and 1", "such as 0.2", "got 1."]),
    ("validation-negative", GOOD, ["--validation", "-0.2"], ["--validation", "between 0 and 1", "got -0.2."]),
    ("validation-nan", GOOD, ["--validation", "nan"], ["--validation", "between 0 and 1", "got nan."]),
    ("validation-percent", GOOD, ["--validation", "20"], ["--validation", "share of the rows", "got 20."]),
    ("validation-no-row-held-out", GOOD, ["--validation", "0.1"],
     ["--validation 0.1 holds out no row of the 3 rows of data.csv", "; use 0.33 (one row) or more."]),
    ("validation-no-row-to-train", GOOD, ["--validation", "0.9"],
     ["--validation 0.9 holds out all 3 rows of data.csv, leaving none to train on", "; use 0.67 (keeping one"]),
    ("validation-one-row", "a,b,y\n1,2,3\n", ["--validation", "0.5"],
     ["--validation needs at least 2 rows", "data.csv has 1 row;", "drop --validation"]),
    ("batch-size-above-training-rows", GOOD, ["--validation", "0.3", "--batch-size", "3"],
     ["--batch-size 3 is larger than the 2 training rows (data.csv has 3; --validation holds out 1)", "at most 2,"]),
]  # fmt: skip


@pytest.mark.parametrize(("contents", "extra", "details"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input(contents: str | None, extra: list[str], details: list[str], tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _no_training(monkeypatch)
    if contents == "DIR":
        (tmp_path / "data.csv").mkdir()
    elif contents is not None:
        (tmp_path / "data.csv").write_text(contents, encoding="utf-8")
    code = cli.main(["sweep", "data.csv", "--target", "y", "--no-progress", *extra])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    line = _one_error_line(captured)
    for detail in details:
        assert detail in line
    assert len(line) < 1000  # a huge cell or header is cut short, not echoed whole
    assert not (tmp_path / "gdjax-sweep").exists()  # nothing written on bad input


def _mkdir(*parts: str):
    return lambda root: (root.joinpath(*parts)).mkdir(parents=True)


def _fifo(root: Path) -> None:
    (root / "out").mkdir()
    os.mkfifo(root / "out" / "summary.json")  # writing would block until a reader came


LONG = "x" * 5000  # longer than any file name may be (ENAMETOOLONG)

# (id, set-up of the folder or None, data file, extra arguments, details the message must contain)
BAD_OUTPUTS = [
    ("results-csv-is-a-folder", _mkdir("out", "results.csv"), "data.csv", ["--out", "out"],
     [f"{Path('out', 'results.csv')} is a folder"]),
    ("sweep-png-is-a-folder", _mkdir("out", "sweep.png"), "data.csv", ["--out", "out"],
     [f"{Path('out', 'sweep.png')} is a folder"]),
    ("output-is-a-fifo", _fifo, "data.csv", ["--out", "out"], ["summary.json exists and is not a regular file"]),
    ("out-under-a-file", None, "data.csv", ["--out", "data.csv/sub"], ["cannot create the output folder", "directory"]),
    ("out-not-writable", None, "data.csv", ["--out", "/proc/self"], ["/proc/self is not writable"]),
    ("out-empty", None, "data.csv", ["--out", ""], ["--out is empty"]),
    ("out-name-too-long", None, "data.csv", ["--out", LONG], ["cannot use --out", "too long"]),
    ("data-name-too-long", None, LONG, [], ["cannot read", "too long"]),
]  # fmt: skip


@pytest.mark.parametrize("cell", ["3.4028235e38", "-3.4028235e38", "3.40282356e38"])
def test_float32_max_as_printed_is_read(cell: str, tmp_path: Path) -> None:
    """``3.4028235e38`` is how float32's largest value prints: a little above it in float64, yet finite in float32."""
    path = tmp_path / "d.csv"
    path.write_text(f"a,y\n{cell},1\n1,2\n")
    x = csvdata.load_csv(path, "y").x
    assert np.isfinite(x).all() and abs(x[0, 0]) == np.finfo(np.float32).max
    limit = csvdata._FLOAT32_OVERFLOW  # the first float64 that float32 rounds to inf, the next below stays finite
    with np.errstate(over="ignore"):
        assert np.isinf(np.float32(limit)) and np.isfinite(np.float32(np.nextafter(limit, 0.0)))


def test_plain_numbers_are_read(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b,c,d,e,f,y\n 1.5 ,-2,+.5,1e3,7.,2E-2,0\n")
    x, y, _, classes = csvdata.load_csv(path, "y")
    assert classes is None and y.dtype == np.float32
    np.testing.assert_array_equal(x, np.array([[1.5, -2, 0.5, 1000, 7, 0.02]], np.float32))
    assert y.tolist() == [0.0]


def test_float32_max_as_printed_is_a_learning_rate(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _no_training(monkeypatch)
    Path("data.csv").write_text(GOOD)
    with pytest.raises(TrainedError):  # got past every check
        cli.main(["sweep", "data.csv", "--target", "y", "--no-progress", "--lr-max", "3.4028235e38"])


@pytest.mark.parametrize(
    ("setup", "data", "extra", "details"), [c[1:] for c in BAD_OUTPUTS], ids=[c[0] for c in BAD_OUTPUTS]
)
def test_bad_output_refused_before_training(setup, data, extra, details, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _no_training(monkeypatch)
    (tmp_path / "data.csv").write_text(GOOD)
    if setup is not None:
        setup(tmp_path)
    assert cli.main(["sweep", data, "--target", "y", "--no-progress", *extra]) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured)
    for detail in details:
        assert detail in line
    assert captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["data.csv", *(["out"] if setup else [])])
    if (tmp_path / "out").is_dir():
        assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".gdjax")]  # no probe left behind


@pytest.mark.parametrize("how", ["inside-out", "symlink", "hardlink"])
@pytest.mark.parametrize("name", ["results.csv", "summary.json", "sweep.png", "curves.png"])
def test_never_overwrites_its_input(name: str, how: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    _no_training(monkeypatch)
    (tmp_path / "d").mkdir()
    if how == "inside-out":  # gdjax sweep d/results.csv --out d
        data = Path("d", name)
        data.write_text(GOOD)
    else:  # d/<name> is another name of the data file
        data = Path("data.csv")
        data.write_text(GOOD)
        (os.symlink if how == "symlink" else os.link)(tmp_path / data, tmp_path / "d" / name)
    assert cli.main(["sweep", str(data), "--target", "y", "--no-progress", "--out", "d"]) == 2
    line = _one_error_line(capsys.readouterr())
    assert f"would overwrite the input {data} with {name}" in line
    assert data.read_text() == GOOD


@pytest.mark.parametrize("link", ["dangling", "to-another-file"])
@pytest.mark.parametrize("name", ["results.csv", "summary.json", "sweep.png", "curves.png"])
def test_symlinked_output_refused_before_training(name: str, link: str, tmp_path: Path, monkeypatch, capsys) -> None:
    """A dangling link failed only after training; a link to another file had that file overwritten."""
    monkeypatch.chdir(tmp_path)
    _no_training(monkeypatch)
    Path("data.csv").write_text(GOOD)
    Path("other.csv").write_text("keep me\n")
    Path("out").mkdir()
    pointee = "/nonexistent/x" if link == "dangling" else "../other.csv"
    os.symlink(pointee, Path("out", name))
    assert cli.main(["sweep", "data.csv", "--target", "y", "--no-progress", "--out", "out"]) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured)
    assert f"{Path('out', name)} is a symbolic link (to {pointee})" in line
    assert "remove the link or choose another --out" in line
    assert captured.out == ""
    assert Path("other.csv").read_text() == "keep me\n"
    assert [p.name for p in Path("out").iterdir()] == [name]  # nothing written, no probe left behind


@pytest.mark.slow  # trains a sweep of its own
def test_write_failure_after_training_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """A failure no check can foresee (here sweep.png becomes a folder during training) is still one line."""
    monkeypatch.chdir(tmp_path)
    Path("data.csv").write_text(GOOD)
    real = gd.sweep

    def sweep_then_block(*args, **kwargs):
        result = real(*args, **kwargs)
        Path("out", "sweep.png").mkdir()
        return result

    monkeypatch.setattr(gd, "sweep", sweep_then_block)
    args = ["sweep", "data.csv", "--target", "y", "--num-lrs", "2", "--epochs", "1", "--no-progress", "--out", "out"]
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured)
    assert f"cannot write {Path('out', 'sweep.png')}" in line and "Is a directory" in line
    assert f"wrote {Path('out', 'summary.json')}" in captured.out and "curves.png" not in captured.out


def test_demo_checks_its_folder_first_and_reports_a_full_disk(tmp_path: Path, monkeypatch, capsys) -> None:
    import gdjax.demo

    monkeypatch.setattr(gdjax.demo, "run_demo", _train)
    assert cli.main(["demo", "--out", "/proc/self", "--no-progress"]) == 2
    assert "/proc/self is not writable" in _one_error_line(capsys.readouterr())

    # a full disk cannot be made for real: stand in for the demo and its writer
    fake = types.SimpleNamespace(problem=types.SimpleNamespace(data={"x": np.zeros((4, 2))}), variants=[], sweep=None)
    monkeypatch.setattr(gdjax.demo, "run_demo", lambda **kwargs: fake)
    monkeypatch.setattr(gdjax.demo, "format_table", lambda *args: "table")

    def full_disk(demo, out):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "compare_step.png"))

    monkeypatch.setattr(gdjax.demo, "write_figures", full_disk)
    assert cli.main(["demo", "--out", str(tmp_path), "--no-progress"]) == 2
    line = _one_error_line(capsys.readouterr())
    assert line == f"gdjax: error: cannot write {tmp_path / 'compare_step.png'}: No space left on device."


@pytest.mark.parametrize(
    ("extra", "flags"),
    [
        (["--num-lrs", "10000000"], ["lower --num-lrs", "chunk_size"]),
        (["--model", "mlp", "--hidden", "10000000"], ["lower --num-lrs or --hidden", "at most 8 learning rates"]),
        (["--epochs", "100000000"], ["lower --num-lrs or --epochs"]),
        (["--epochs", "1000000000"], ["even one learning rate", "lower --epochs"]),
    ],
    ids=["num-lrs", "hidden", "epochs", "epochs-one-member"],
)
def test_memory_estimate_refuses_sweeps_that_do_not_fit(extra, flags, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    _no_training(monkeypatch)
    monkeypatch.setattr(_limits, "memory_limit", lambda: (8 * 2**30, "a test's limit"))  # a 16 GiB machine
    Path("data.csv").write_text(GOOD)
    assert cli.main(["sweep", "data.csv", "--target", "y", "--no-progress", *extra]) == 2
    line = _one_error_line(capsys.readouterr())
    assert "of memory" in line and "more than the limit of 8.0 GiB (a test's limit)" in line
    for flag in flags:
        assert flag in line


@pytest.mark.parametrize("model", ["linear", "mlp"])
def test_memory_estimate_lets_ordinary_sweeps_run(model: str, linear_csv: Path, monkeypatch) -> None:
    _no_training(monkeypatch)
    monkeypatch.setattr(_limits, "memory_limit", lambda: (64 * 2**20, "a test's limit"))
    with pytest.raises(TrainedError):  # the defaults (32 learning rates, 50 epochs, 32 hidden units) fit in 64 MiB
        cli.main(["sweep", str(linear_csv), "--target", "y", "--model", model, "--optimizer", "adam", "--no-progress"])


def test_memory_limit_is_half_the_machine() -> None:
    limit, where = _limits.memory_limit()
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < limit <= physical // 2 and where


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sweep", "data.csv"], "the following arguments are required: --target (see gdjax sweep --help)"),
        (["sweep", "data.csv", "--target", "y", "--batch-size", "abc"], "--batch-size: expected a whole number"),
        (["sweep", "data.csv", "--target", "y", "--model", "tree"], "invalid choice: 'tree'"),
        (["sweep", "data.csv", "--target", "y", "--epochs", "1.5"], "invalid int value: '1.5'"),
        (["sweep", "data.csv", "--target", "y", "--epochs", "1e3"], "argument --epochs: invalid int value: '1e3'"),
        (["sweep", "data.csv", "--target", "y", "--bogus"], "unrecognized arguments: --bogus (see gdjax sweep --help)"),
        (["sweep", "data.csv", "--target", "y", "--validation", "20%"], "--validation: invalid float value: '20%'"),
        (["demo", "--seed", "x"], "argument --seed: invalid int value: 'x' (see gdjax demo --help)"),
        (["train"], "invalid choice: 'train' (choose from 'demo', 'sweep', 'study') (see gdjax --help)"),
        (["--bogus"], "unrecognized arguments: --bogus (see gdjax --help)"),
    ],
    ids=[
        "no-target", "batch-size-word", "unknown-model", "float-epochs", "exponent-epochs", "unknown-option",
        "validation-percent",
        "demo-seed-word", "unknown-command", "unknown-option-no-command",
    ],
)  # fmt: skip
def test_argparse_errors_are_one_line(argv: list[str], message: str, capsys) -> None:
    """argparse's own errors too: no usage lines, one ``gdjax: error:`` line naming the help to read, status 2."""
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line = _one_error_line(captured)
    assert message in line and line.endswith("--help)")
    command = argv[0] if argv[0] in ("demo", "sweep") else None
    assert line.endswith(f"(see gdjax {command} --help)" if command else "(see gdjax --help)")


def test_gdjax_errors_become_one_line(linear_csv: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    def refuse(*args, **kwargs):
        raise ValueError("data is not right:\n  fix it.")

    monkeypatch.setattr(gd, "sweep", refuse)
    assert cli.main(["sweep", str(linear_csv), "--target", "y", "--no-progress", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "gdjax: error: data is not right: fix it.\n"


def test_console_script_is_the_entry() -> None:
    """``gdjax`` (the console script) and ``python -m gdjax`` both go through :func:`gdjax.cli.entry`."""
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"] == {"gdjax": "gdjax.cli:entry"}
    assert "entry()" in (Path(cli.__file__).parents[1] / "__main__.py").read_text()


def test_ctrl_c_in_a_gc_callback_is_put_off(monkeypatch) -> None:
    """Raised in a garbage-collector callback (JAX has one), KeyboardInterrupt would be dropped: it is put off."""
    fired: list[int] = []
    monkeypatch.setattr(_thread, "interrupt_main", lambda: fired.append(1))  # not the test run's main thread
    outcomes: list[str] = []

    def callback(phase, info):
        try:
            cli._on_ctrl_c(signal.SIGINT, sys._getframe())
        except KeyboardInterrupt:
            outcomes.append("raised")
        else:
            outcomes.append("put off")

    gc.callbacks.append(callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    assert outcomes and set(outcomes) == {"put off"}
    for _ in range(500):  # the timers interrupt the main thread again a moment later
        if len(fired) == len(outcomes):
            break
        threading.Event().wait(0.01)
    assert len(fired) == len(outcomes)
    with pytest.raises(KeyboardInterrupt):  # anywhere else, at once
        cli._on_ctrl_c(signal.SIGINT, sys._getframe())


def _readline_within(stream, seconds: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    return lines.get(timeout=seconds)


@pytest.mark.slow
def test_ctrl_c_while_compiling_exits_130(linear_csv: Path, tmp_path: Path) -> None:
    """Ctrl-C once the header is out (the program is being traced and compiled): one line and status 130.

    It used to die by SIGSEGV in the interpreter's teardown, or, when the
    interrupt landed in JAX's garbage-collector callback, lose it and train on.
    """
    args = ["sweep", str(linear_csv), "--target", "y", "--model", "mlp", "--num-lrs", "4", "--epochs", "100000"]
    # SIGINT back to Python's handler in the child: a test session started in the background (`cmd &` in a
    # script) hands its children SIGINT ignored, and gdjax then rightly leaves it ignored.
    main = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'gdjax'; runpy.run_module('gdjax', run_name='__main__', alter_sys=True)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", main, *args, "--no-progress", "--out", "out"],
        cwd=tmp_path, env={**os.environ, "MPLBACKEND": "Agg"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        header = _readline_within(proc.stdout, 120)
        assert header.startswith("gdjax sweep: MLP regression"), header
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, err) == (130, "gdjax: interrupted\n")
    assert not (tmp_path / "out" / "results.csv").exists()


@pytest.mark.slow
def test_bad_input_exit_code_in_subprocess(linear_csv: Path, tmp_path: Path) -> None:
    proc = _run(["sweep", str(linear_csv), "--target", "price"], tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == f"gdjax: error: {linear_csv} has no column 'price'; its columns are 'x1', 'x2', 'x3', 'y'.\n"


def test_json_ready_turns_non_finite_numbers_into_flagged_nulls() -> None:
    raw = {"a": float("inf"), "b": {"c": float("nan"), "d": 1.5}, "e": [1.0, float("-inf"), float("nan")], "f": "x"}
    ready = _files.json_ready(raw)
    assert ready == {
        "a": None,
        "a_nonfinite": "inf",
        "b": {"c": None, "c_nonfinite": "nan", "d": 1.5},  # flagged beside the value, not again above it
        "e": [1.0, None, None],
        "e_nonfinite": "-inf, nan",
        "f": "x",
    }
    json.dumps(ready, allow_nan=False)


def test_sweep_of_overflowing_data(tmp_path: Path, monkeypatch, capsys) -> None:
    """Values of 1e30 square to inf: every member diverges, but smaller learning rates would not help."""
    monkeypatch.chdir(tmp_path)
    Path("big.csv").write_text("a,b,y\n1e30,2e30,3e30\n4e30,5,6e30\n7,8e30,9\n")
    args = ["sweep", "big.csv", "--target", "y", "--num-lrs", "3", "--epochs", "2", "--no-progress", "--out", "out"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "non-finite at the initial parameters" in out and "--standardize" in out
    assert "try smaller learning rates" not in out
    summary = _strict_json(Path("out", "summary.json").read_text())
    assert summary["initial_loss"] is None and summary["initial_loss_nonfinite"] == "inf"
    assert summary["best"] is None and summary["num_diverged"] == 3


def test_summary_when_only_some_members_start_overflowed() -> None:
    prob = gd.problems.linear_regression(n=32, d=2, key=jax.random.key(0))
    m = gd.models.linear()
    sw = gd.sweep(
        m.loss, m.init(None, 2), optax.sgd, gd.full_batch(prob.data), learning_rates=[0.1, 0.2, 0.3], epochs=1,
        key=jax.random.key(0),
    )  # fmt: skip
    diverged = dataclasses.replace(sw, diverged=np.ones(3, bool))
    assert diverged.summary().endswith("every member diverged: try smaller learning rates.")
    some = dataclasses.replace(diverged, initial_loss=np.array([np.inf, 1.0, 1.0], np.float32))
    assert "1 of 3 already had a non-finite loss" in some.summary().splitlines()[-1]
    every = dataclasses.replace(diverged, initial_loss=np.full(3, np.nan, np.float32))
    assert "the data or the loss overflows" in every.summary().splitlines()[-1]
    assert "smaller learning rates" not in every.summary()


def _cp1252() -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(), encoding="cp1252")  # errors="strict", as a Windows console


@pytest.mark.slow  # trains a sweep of its own
def test_unencodable_names_on_a_cp1252_terminal(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("omega.csv").write_text("a,b,\u03a9\n1,2,3\n4,5,6\n7,8,9\n", encoding="utf-8")
    stdout, stderr = _cp1252(), _cp1252()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    args = ["sweep", "omega.csv", "--num-lrs", "2", "--epochs", "1", "--no-progress", "--out", "out"]
    assert cli.main([*args, "--target", "\u03a9"]) == 0
    assert cli.main([*args, "--target", "\u03a9\u03a9"]) == 2
    stdout.flush()
    stderr.flush()
    assert b"of '\\u03a9' on 2 features" in stdout.buffer.getvalue()
    assert b"wrote out" in stdout.buffer.getvalue()
    err = stderr.buffer.getvalue().decode("cp1252")
    assert err == "gdjax: error: omega.csv has no column '\\u03a9\\u03a9'; its columns are 'a', 'b', '\\u03a9'.\n"
    assert stdout.errors == "strict" and stderr.errors == "strict"  # put back as they were


@pytest.mark.slow
def test_unencodable_names_in_a_subprocess(tmp_path: Path) -> None:
    """The real standard output of a cp1252 console (standard error escapes on its own)."""
    Path(tmp_path, "omega.csv").write_text("a,b,\u03a9\n1,2,3\n4,5,6\n", encoding="utf-8")
    env = {**os.environ, "PYTHONIOENCODING": "cp1252", "MPLBACKEND": "Agg"}
    args = ["sweep", "omega.csv", "--target", "\u03a9", "--num-lrs", "2", "--epochs", "1", "--no-progress"]
    proc = subprocess.run(
        [sys.executable, "-m", "gdjax", *args], cwd=tmp_path, env=env, capture_output=True, timeout=300
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode("cp1252")
    assert b"regression of '\\u03a9' on 2 features" in proc.stdout
    assert b"wrote " in proc.stdout and proc.stderr == b""
