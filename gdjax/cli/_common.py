"""Pieces every ``gdjax`` command shares: the usage error, checks, plurals, calls into gdjax."""

from __future__ import annotations

from typing import Any


class UsageError(Exception):
    """A bad input, reported as one ``gdjax: error:`` line with exit status 2."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def gdjax_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call into gdjax, turning its ValueError/TypeError (clear sentences) into usage errors."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from exc


def strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"
