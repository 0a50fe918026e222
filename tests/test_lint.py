"""The project's own checks run with the tests: ruff (lint and format) and mypy, clean on the package."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_ruff_is_clean():
    lint = _run(sys.executable, "-m", "ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _run(sys.executable, "-m", "ruff", "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.slow
def test_mypy_is_clean_on_the_package():
    typed = _run(sys.executable, "-m", "mypy")  # files and options from pyproject.toml
    assert typed.returncode == 0, typed.stdout + typed.stderr
    assert "Success" in typed.stdout
