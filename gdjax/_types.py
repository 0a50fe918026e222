"""Types and tiny helpers every module shares (one definition each)."""

from __future__ import annotations

from typing import Any, TypeAlias

import jax

#: An array that is a ``jax.Array`` inside the compiled program and may be a numpy array on the host.
HostOrDevice: TypeAlias = Any

#: Any pytree: nested tuples, lists, dicts, NamedTuples, dataclasses and modules whose leaves are arrays.
PyTree: TypeAlias = Any


def x64_enabled() -> bool:
    """Whether JAX's 64-bit mode is on (``jax.config.update('jax_enable_x64', True)``)."""
    return bool(jax.config.read("jax_enable_x64"))


def ceil_div(a: int, b: int) -> int:
    """``a / b`` rounded up, for non-negative ``a`` and positive ``b``.

    Example:
      >>> ceil_div(10, 4), ceil_div(8, 4)
      (3, 2)
    """
    return -(-a // b)


def plural(count: int, noun: str) -> str:
    """``"1 step"``, ``"2 steps"``.

    Example:
      >>> plural(1, "step"), plural(2, "batch size")
      ('1 step', '2 batch sizes')
    """
    return f"{count} {noun}" + ("" if count == 1 else "s")
