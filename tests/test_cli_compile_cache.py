"""The ``gdjax`` command's persistent compilation cache: where it lives, and a second process that skips XLA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gdjax.cli import _compile_cache


@pytest.mark.parametrize(
    ("environ", "want"),
    [
        ({"GDJAX_COMPILATION_CACHE": "/tmp/c"}, Path("/tmp/c")),
        ({"GDJAX_COMPILATION_CACHE": "off", "XDG_CACHE_HOME": "/x"}, None),
        ({"GDJAX_COMPILATION_CACHE": ""}, None),
        ({"XDG_CACHE_HOME": "/x"}, Path("/x/gdjax/jax")),
        ({}, Path("~/.cache/gdjax/jax").expanduser()),
    ],
    ids=["named", "off", "empty", "xdg", "home"],
)
def test_the_folder_follows_the_environment(environ: dict, want: Path | None, monkeypatch) -> None:
    monkeypatch.setattr(_compile_cache, "_jax_folder", lambda: None)  # no JAX_COMPILATION_CACHE_DIR
    assert _compile_cache.folder(environ) == want


def test_a_folder_jax_already_has_is_kept(monkeypatch) -> None:
    monkeypatch.setattr(_compile_cache, "_jax_folder", lambda: "/from/JAX_COMPILATION_CACHE_DIR")
    assert _compile_cache.folder({"XDG_CACHE_HOME": "/x"}) is None  # nothing to set: JAX's own is used
    assert _compile_cache.folder({"GDJAX_COMPILATION_CACHE": "/mine"}) == Path("/mine")  # named: it wins


def test_the_library_alone_leaves_jax_settings_alone() -> None:
    code = "import jax, gdjax, gdjax.cli; print(jax.config.jax_compilation_cache_dir)"
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "GDJAX_COMPILATION_CACHE")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "None", out.stderr


def _sweep(csv: Path, out: Path, cache: Path) -> float:
    env = {**os.environ, "GDJAX_COMPILATION_CACHE": str(cache), "MPLBACKEND": "Agg"}
    args = ["sweep", str(csv), "--target", "y", "--num-lrs", "4", "--epochs", "3", "--no-progress", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "gdjax", *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "summary.json").read_text())["compile_time_s"]


@pytest.mark.slow
def test_a_second_process_reads_the_compiled_programs_from_the_cache(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    csv = tmp_path / "data.csv"
    np.savetxt(csv, np.column_stack([x, x @ [1.0, 2.0, 3.0]]), delimiter=",", header="a,b,c,y", comments="")
    cache = tmp_path / "cache"
    first = _sweep(csv, tmp_path / "one", cache)
    assert any(cache.iterdir())
    second = _sweep(csv, tmp_path / "two", cache)
    assert second < 0.5 * first, (first, second)
