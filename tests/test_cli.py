"""End-to-end tests of the ``gdjax`` command: ``demo``, ``sweep``, help, version and every bad input.

The successful runs and one failing run go through a real subprocess
(``python -m gdjax``); the many bad inputs call :func:`gdjax.cli.main`
in-process, since they fail before anything is compiled and a subprocess
would spend most of its time importing JAX.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gdjax import __version__, cli

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


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_SIGNATURE


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


def test_sweep_mlp_in_process(linear_csv: Path, tmp_path: Path, capsys) -> None:
    args = ["sweep", str(linear_csv), "--target", "y", "--model", "mlp", "--hidden", "8", "--optimizer", "momentum"]
    assert cli.main([*args, "--num-lrs", "3", "--epochs", "2", "--no-progress", "--out", str(tmp_path)]) == 0
    assert "MLP regression" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["hidden"] == 8 and "weights" not in (summary["best"] or {})


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
    "sgd", "momentum", "adam", "default: 32", "full", "examples:",
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


def test_no_command_prints_help(capsys) -> None:
    assert cli.main([]) == 2
    assert "usage: gdjax" in capsys.readouterr().out


GOOD = "a,b,y\n1,2,3\n4,5,6\n7,8,9\n"

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
    ("duplicate-column", "a,a,y\n1,2,3\n", [], ["'a' twice"]),
    ("unnamed-column", "a,,y\n1,2,3\n", [], ["column 2", "no name"]),
    ("only-target", "y\n1\n2\n", [], ["only the target column 'y'", "feature"]),
    ("logistic-non-binary", "a,b,y\n1,2,0\n\n3,4,2\n", ["--model", "logistic"], ["line 4", "column 'y'", "0 or 1"]),
    ("num-lrs", GOOD, ["--num-lrs", "0"], ["--num-lrs", "at least 1", "got 0"]),
    ("lr-min-zero", GOOD, ["--lr-min", "0"], ["--lr-min", "positive"]),
    ("lr-min-negative", GOOD, ["--lr-min", "-1"], ["--lr-min", "positive"]),
    ("lr-max-nan", GOOD, ["--lr-max", "nan"], ["--lr-max", "positive"]),
    ("lr-min-above-max", GOOD, ["--lr-min", "1", "--lr-max", "0.1"], ["--lr-min (1)", "--lr-max (0.1)"]),
    ("lr-min-equals-max", GOOD, ["--lr-min", "0.1", "--lr-max", "0.1"], ["smaller than --lr-max"]),
    ("epochs", GOOD, ["--epochs", "0"], ["--epochs", "at least 1"]),
    ("batch-size-zero", GOOD, ["--batch-size", "0"], ["--batch-size", "at least 1"]),
    ("batch-size-above-rows", GOOD, ["--batch-size", "4"], ["--batch-size 4", "3 rows", "'full'"]),
    ("hidden", GOOD, ["--model", "mlp", "--hidden", "0"], ["--hidden", "at least 1"]),
    ("seed", GOOD, ["--seed", "-1"], ["--seed", "between 0 and"]),
    ("out-is-a-file", GOOD, ["--batch-size", "full", "--out", "data.csv"], ["--out data.csv", "is a file"]),
]


@pytest.mark.parametrize(("contents", "extra", "details"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input(contents: str | None, extra: list[str], details: list[str], tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if contents == "DIR":
        (tmp_path / "data.csv").mkdir()
    elif contents is not None:
        (tmp_path / "data.csv").write_text(contents)
    code = cli.main(["sweep", "data.csv", "--target", "y", "--no-progress", *extra])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gdjax: error: "), captured.err
    for detail in details:
        assert detail in lines[0]
    assert "Traceback" not in captured.err
    assert not (tmp_path / "gdjax-sweep").exists()  # nothing written on bad input


@pytest.mark.parametrize(
    "argv",
    [
        ["sweep", "data.csv"],  # --target is required
        ["sweep", "data.csv", "--target", "y", "--batch-size", "abc"],
        ["sweep", "data.csv", "--target", "y", "--model", "tree"],
        ["sweep", "data.csv", "--target", "y", "--epochs", "1.5"],
        ["train"],
    ],
    ids=["no-target", "batch-size-word", "unknown-model", "float-epochs", "unknown-command"],
)
def test_argparse_errors(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("gdjax") and "error" in last and "Traceback" not in err


def test_gdjax_errors_become_one_line(linear_csv: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    def refuse(*args, **kwargs):
        raise ValueError("data is not right:\n  fix it.")

    monkeypatch.setattr(cli.gd, "sweep", refuse)
    assert cli.main(["sweep", str(linear_csv), "--target", "y", "--no-progress", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "gdjax: error: data is not right: fix it.\n"


def test_bad_input_exit_code_in_subprocess(linear_csv: Path, tmp_path: Path) -> None:
    proc = _run(["sweep", str(linear_csv), "--target", "price"], tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == f"gdjax: error: {linear_csv} has no column 'price'; its columns are 'x1', 'x2', 'x3', 'y'.\n"
