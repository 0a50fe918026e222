"""Shared test helpers: a compilation counter and small problems."""

from __future__ import annotations

import contextlib

import jax
import pytest
from jax import monitoring

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
