"""The model and problems several test files share: built once per session, read-only.

Fixtures in ``conftest.py`` hand them to tests; a module that needs one at import time (a parametrize list, a
helper's default argument) imports it from here. Sharing is also a speed-up: gdjax caches compiled programs by
loss function and shapes, so equal runs in different files compile once when they use the same ``LINEAR``.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

import jax
import numpy as np

import gdjax as gd

#: The linear model of every test file that trains one (one loss function for the whole session).
LINEAR = gd.models.linear()


@functools.cache
def linear_problem(n: int, d: int, seed: int = 0) -> gd.problems.Regression:
    """``gd.problems.linear_regression(n=n, d=d, key=jax.random.key(seed))``, built once; its arrays are read-only
    so that no test can change another's data."""
    prob = gd.problems.linear_regression(n=n, d=d, key=jax.random.key(seed))
    for array in jax.tree.leaves(prob):
        if isinstance(array, np.ndarray):
            array.setflags(write=False)
    return prob


#: The repository's examples folder.
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"gdjax_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
