"""Shared test helpers: a compilation counter, and the model and problems several files share (``_shared``)."""

from __future__ import annotations

import contextlib
import os

import _shared
import jax
import pytest
from jax import monitoring

import gdjax as gd

# `gdjax` processes the tests start keep out of the user's persistent compilation cache (~/.cache/gdjax/jax);
# a test of the cache names its own folder.
os.environ["GDJAX_COMPILATION_CACHE"] = "off"

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = [0]


def _listener(name: str, duration: float, **kwargs) -> None:
    if name == _COMPILE_EVENT:
        _compiles[0] += 1


monitoring.register_event_duration_secs_listener(_listener)


class CompileCounter:
    """Counts XLA backend compilations inside a ``with`` block."""

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def __call__(self):
        start = _compiles[0]
        try:
            yield self
        finally:
            self.count = _compiles[0] - start


@pytest.fixture
def compiles() -> CompileCounter:
    """``with compiles() as c: ...`` then ``c.count`` is the number of XLA compilations."""
    return CompileCounter()


@pytest.fixture
def strict_dtypes():
    """Strict dtype promotion, as equinox's tests use (optax's Adam itself does not pass it)."""
    with jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture(scope="session")
def linear():
    """The linear model every test file shares (``_shared.LINEAR``): equal runs share compiled programs."""
    return _shared.LINEAR


@pytest.fixture(scope="session")
def linear_problem():
    """``linear_problem(n, d, seed=0)``: the linear-regression problem with ``key(seed)``, built once, read-only."""
    return _shared.linear_problem


@pytest.fixture(scope="session")
def small_problem():
    """64 examples of 3 features (key 0): the problem of the progress, long-run, edge and architecture tests."""
    return _shared.linear_problem(64, 3)


@pytest.fixture(scope="session")
def small_run(small_problem):
    """``(params, it)``: the linear model's zero parameters and mini-batches of 16 over ``small_problem``."""
    return _shared.LINEAR.init(None, 3), gd.minibatch(small_problem.data, 16)


# Doctests of gdjax/ that train and draw figures (seconds each; test_plot checks the figures): slow lane.
SLOW_DOCTESTS = ("gdjax/demo.py::", "gdjax/plot/runs.py::", "gdjax/plot/sweeps.py::", "gdjax/plot/history.py::")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.nodeid.startswith(SLOW_DOCTESTS):
            item.add_marker(pytest.mark.slow)
