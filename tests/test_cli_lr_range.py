"""``gdjax sweep`` without ``--lr-min``/``--lr-max``: the learning rates come from the sharpness at the initial params.

Most tests stop the command where it would train (a stand-in for ``gd.sweep`` records the learning rates it was
given), so only the sharpness is compiled; one runs a whole sweep and reads ``summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

import gdjax as gd
from gdjax import cli

ROWS = 120


class ReachedTrainingError(Exception):
    """Raised by the stand-in for ``gd.sweep``: the command got as far as training."""


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 rows of y = x @ [1, -2, 0.5] + 3 + noise, the features of scales 1, 2 and 4."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 3)) * [1.0, 2.0, 4.0]
    y = x @ [1.0, -2.0, 0.5] + 3 + 0.1 * rng.normal(size=ROWS)
    path = tmp_path_factory.mktemp("data") / "data.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header="a,b,c,y", comments="")
    return path


@pytest.fixture
def swept(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Stand in for ``gd.sweep``: its arguments land in the returned dict, then it raises ReachedTrainingError."""
    seen: dict = {}

    def stand_in(loss_fn, params, optimizer, it, **kwargs):
        seen.update(kwargs, params=params, it=it)
        raise ReachedTrainingError

    monkeypatch.setattr(gd, "sweep", stand_in)
    return seen


def _run(csv_file: Path, tmp_path: Path, *extra: str) -> None:
    args = ["sweep", str(csv_file), "--target", "y", "--num-lrs", "5", "--no-progress", "--out", str(tmp_path)]
    with pytest.raises(ReachedTrainingError):
        cli.main([*args, *extra])


def _sharpness(csv_file: Path, params) -> float:
    """The sharpness of the linear model's training loss, computed here, with the command's tolerance."""
    table = np.loadtxt(csv_file, delimiter=",", skiprows=1, dtype=np.float32)
    data = {"x": table[:, :3], "y": table[:, 3]}
    return gd.sharpness(gd.models.linear().loss, params, data, tol=1e-5, max_iters=300)


@pytest.mark.parametrize(("optimizer", "factor", "rule"), [("sgd", 2.0, "2/sharpness"), ("momentum", 3.8, "2(1+0.9)")])
def test_the_range_is_the_rule_applied_to_the_sharpness(
    optimizer: str, factor: float, rule: str, csv_file: Path, tmp_path: Path, swept: dict, capsys
) -> None:
    _run(csv_file, tmp_path, "--optimizer", optimizer)
    lam = _sharpness(csv_file, swept["params"])
    limit = factor / lam
    np.testing.assert_allclose(swept["learning_rates"], np.geomspace(1e-3 * limit, 2 * limit, 5), rtol=1e-6)
    x = np.column_stack([np.loadtxt(csv_file, delimiter=",", skiprows=1)[:, :3], np.ones(ROWS)])
    assert lam == pytest.approx(np.linalg.eigvalsh(x.T @ x / ROWS)[-1], rel=2e-3)  # the Hessian, exactly
    out = capsys.readouterr().out
    assert "5 learning rates (range chosen below), " + optimizer in out
    line = (
        f"learning rates: {1e-3 * limit:.3g} to {2 * limit:.3g} (auto: sharpness {lam:.4g} at the initial "
        f"parameters, {rule}"
    )
    assert line in out and f"= {limit:.3g}; pass --lr-min/--lr-max to set them)" in out


def test_the_mlp_range_comes_from_the_initial_parameters_the_sweep_uses(
    csv_file: Path, tmp_path: Path, swept: dict, capsys
) -> None:
    _run(csv_file, tmp_path, "--model", "mlp", "--hidden", "4", "--seed", "3")
    model = gd.models.mlp((4,), task="regression")
    params = model.init(gd.seed_keys(jax.random.key(3), 0)[0], 3)
    jax.tree.map(np.testing.assert_array_equal, params, swept["params"])  # the same draw as the sweep's members
    table = np.loadtxt(csv_file, delimiter=",", skiprows=1, dtype=np.float32)
    lam = gd.sharpness(model.loss, params, {"x": table[:, :3], "y": table[:, 3]}, tol=1e-5, max_iters=300)
    assert swept["learning_rates"][-1] == pytest.approx(4 / lam, rel=1e-6)
    assert "(auto: sharpness" in capsys.readouterr().out


def test_logistic_models_range_to_thirty_times_the_limit(tmp_path: Path, swept: dict) -> None:
    """Logistic regression's curvature only falls from the start, so its range goes well past 2/sharpness."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(ROWS, 3))
    path = tmp_path / "labels.csv"
    np.savetxt(path, np.column_stack([x, x[:, 0] > 0]), delimiter=",", header="a,b,c,y", comments="", fmt="%g")
    _run(path, tmp_path / "out", "--model", "logistic")
    model = gd.models.logistic(num_classes=2)
    data = {"x": x.astype(np.float32), "y": (x[:, 0] > 0).astype(np.int32)}
    lam = gd.sharpness(model.loss, swept["params"], data, tol=1e-5, max_iters=300)
    np.testing.assert_allclose(swept["learning_rates"][[0, -1]], [1e-3 * 2 / lam, 30 * 2 / lam], rtol=1e-5)


def test_given_flags_are_respected_and_the_sharpness_is_not_computed(
    csv_file: Path, tmp_path: Path, swept: dict, monkeypatch, capsys
) -> None:
    def refused(*args, **kwargs):
        raise AssertionError("the sharpness was computed although the range was given")

    monkeypatch.setattr(gd, "sharpness", refused)
    _run(csv_file, tmp_path, "--lr-min", "0.01", "--lr-max", "0.5")
    np.testing.assert_allclose(swept["learning_rates"], np.geomspace(0.01, 0.5, 5))
    assert "5 learning rates from 0.01 to 0.5" in capsys.readouterr().out
    _run(csv_file, tmp_path, "--lr-max", "0.5")  # the other keeps its fixed value
    np.testing.assert_allclose(swept["learning_rates"], np.geomspace(1e-4, 0.5, 5))
    _run(csv_file, tmp_path, "--lr-min", "0.01")
    np.testing.assert_allclose(swept["learning_rates"], np.geomspace(0.01, 1.0, 5))
    _run(csv_file, tmp_path, "--optimizer", "adam")  # the fixed range: the sharpness does not bound adam
    np.testing.assert_allclose(swept["learning_rates"], np.geomspace(1e-4, 1.0, 5))
    out = capsys.readouterr().out
    assert "learning rates: 0.0001 to 1 (fixed for adam" in out and "pass --lr-min/--lr-max to set them)" in out


def test_a_loss_overflowing_at_the_initial_parameters_keeps_the_fixed_range(tmp_path: Path, swept: dict, capsys):
    path = tmp_path / "big.csv"
    path.write_text("a,b,y\n1e30,2e30,3e30\n4e30,5,6e30\n7,8e30,9\n")
    _run(path, tmp_path / "out")
    np.testing.assert_allclose(swept["learning_rates"], np.geomspace(1e-4, 1.0, 5))
    assert "(fixed: no sharpness at the initial parameters (the loss at params is not finite" in capsys.readouterr().out


def test_the_help_describes_the_rule(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    words_list = ("chosen from the sharpness at the initial parameters", "2/sharpness", "heavy-ball", "For adam")
    for words in (*words_list, "GDJAX_COMPILATION_CACHE=off"):
        assert words in text


@pytest.mark.slow
def test_summary_json_records_the_range(csv_file: Path, tmp_path: Path) -> None:
    args = ["sweep", str(csv_file), "--target", "y", "--num-lrs", "3", "--epochs", "2", "--no-progress"]
    assert cli.main([*args, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    lr_range, settings = summary["settings"]["lr_range"], summary["settings"]
    lam = _sharpness(csv_file, gd.models.linear().init(None, 3))
    assert lr_range["source"] == "sharpness" and lr_range["sharpness"] == pytest.approx(lam, rel=1e-6)
    assert lr_range["stability_limit"] == pytest.approx(2 / lam, rel=1e-6)
    assert (lr_range["min"], lr_range["max"]) == (settings["lr_min"], settings["lr_max"])
    assert lr_range["max"] == pytest.approx(4 / lam, rel=1e-6) and summary["compile_time_s"] > 0
