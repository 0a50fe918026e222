"""Every benchmark runs: each script in ``benchmarks/`` with ``--quick`` in a subprocess (slow lane).

A benchmark that breaks (an API change, a crash, a mismatch of final losses) fails
here instead of going unnoticed until someone re-runs it. ``--quick`` uses tiny
sizes, so the numbers mean nothing; only the run and its ratio table are checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gdjax

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

# script -> lines its ratio table must print: the table's header and the ratios against the other ways
EXPECTED = {
    "bench_sweep": ["vs gd.sweep", "ratios: (a)/(b) gd.sweep / expert", "(c)/(a) python loop / gd.sweep"],
    "bench_progress": ["vs without", "cost:"],
    "bench_scaling": ["vs 1 member", "ratios: 16 members / 1 member"],
    "bench_memory": ["run peak - start", "ratios: main: gd.sweep / expert"],
    "bench_fit": ["vs gdjax.fit", "gdjax vs expert:", "python loop vs gdjax:", "permutation / epoch_indices:"],
    "bench_sweep_others": ["vs gd.sweep", "(d) stochastic gd.sweep / expert b=1"],
    "bench_large_sweep": ["% of big matmul", "of the big-matmul rate", "gd.sweep / expert =", "eval_every=0 reaches"],
    "bench_model": ["vs plain", "ratios: static leaves / plain", "same trajectory"],
    "bench_scale": [
        "peak - data",
        "target: sweep4 on device peak <= data + 1 GB:",
        "streamed / on device, MLP(256):",
        "streamed / on device, linear:",
        "target: linear streamed / on device <= 1.50x:",
    ],
    "bench_eval": [
        "vs eval_every=0, no eval data",
        "(a) no eval data: default / eval_every=0",
        "(b) one evaluation",
        "(c) with eval data: eval_every=1 / eval_every=0",
        "gd ways agree",
    ],
    "bench_distributed": [
        "vs (a)",
        "same results (a) and (b), bit for bit: True",
        "ratios: (b)/(a) 2 processes / 1 process (2 devices) =",
        "8 forced devices / 1 device =",
    ],
    "bench_study": [
        "compile (a)",
        "where (a)'s",
        "study / sum of sweeps =",
        "(target <= 1.20x",
        "same steps to the target both ways: True",
    ],
}


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One JAX compilation cache for all the scripts: most compile the same small sweep, so they share it."""
    return tmp_path_factory.mktemp("jax-cache")


def test_every_benchmark_is_listed() -> None:
    assert sorted(p.stem for p in BENCHMARKS.glob("bench_*.py")) == sorted(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED))  # bench_sweep first: later scripts reuse its programs
def test_benchmark_quick(name: str, tmp_path: Path, compile_cache: Path) -> None:
    env = dict(os.environ)  # inherited, with the gdjax this process imported first on the path
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(gdjax.__file__).resolve().parent.parent), env.get("PYTHONPATH")) if p
    )
    # Only to keep this file under a minute on 2 cores; --quick's numbers mean nothing anyway.
    env["JAX_COMPILATION_CACHE_DIR"] = str(compile_cache)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick", "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for line in EXPECTED[name]:
        assert line in proc.stdout, f"{line!r} not printed:\n{proc.stdout[-3000:]}"
    data = json.loads(report.read_text())
    assert data["quick"] is True and data["machine"]["gdjax"] == gdjax.__version__
    assert data["total_s"] > 0
