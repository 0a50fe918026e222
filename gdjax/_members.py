"""The members of a sweep: which hyperparameters and which seed each one runs.

Hyperparameters are zipped (all arrays the same length) or, with
``grid=True``, combined as a Cartesian product in the order given, the last
varying fastest (``learning_rate`` first). Seeds, when given, are always
combined as a grid with the hyperparameters: member ``k`` runs hyperparameter
row ``k // num_seeds`` with seed ``seeds[k % num_seeds]``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from gdjax import _checks


class Members(NamedTuple):
    """The sweep's member table.

    Attributes:
      hyperparams: name -> float64 array of shape ``(M,)``.
      seeds: int array of shape ``(M,)``, or None without seeds.
    """

    hyperparams: dict[str, np.ndarray]
    seeds: np.ndarray | None

    @property
    def count(self) -> int:
        return len(next(iter(self.hyperparams.values())))


def _as_values(name: str, value: Any) -> np.ndarray:
    arr = _checks.check_hyperparam(value, name)
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a number or a 1-D array; got shape {arr.shape}.")
    if arr.ndim == 1 and arr.size == 0:
        raise ValueError(f"{name} is empty; give at least one value.")
    return arr


def _check_seeds(seeds: Any) -> np.ndarray | None:
    if seeds is None:
        return None
    if isinstance(seeds, int | np.integer) and not isinstance(seeds, bool):
        count = _checks.check_positive_int(seeds, "seeds", low=1, high=2**32)
        return np.arange(count, dtype=np.int64)
    arr = np.asarray(seeds)
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "iu":
        raise TypeError(
            f"seeds must be a count (seeds=8) or a 1-D array of distinct integers; got {type(seeds).__name__} "
            f"with shape {arr.shape} and dtype {arr.dtype}."
        )
    if len(np.unique(arr)) != arr.size or (arr < 0).any() or (arr >= 2**32).any():
        raise ValueError("seeds must be distinct integers in [0, 2**32).")
    return arr.astype(np.int64)


def members(learning_rates: Any, hyperparams: Mapping[str, Any] | None, *, grid: bool, seeds: Any) -> Members:
    """Build and check the member table.

    Raises:
      ValueError: no hyperparameters, a negative or non-finite value (its
        index named), or zipped arrays of unequal lengths.
      TypeError: a value that is not a number, or bad ``seeds``.
    """
    if not isinstance(grid, bool):
        raise TypeError(f"grid must be True or False; got {grid!r}.")
    hyperparams = _checks.check_hyperparams(hyperparams)
    if "learning_rate" in hyperparams and learning_rates is not None:
        raise ValueError("learning_rate is given twice: as learning_rates= and in hyperparams. Give it once.")
    named: dict[str, np.ndarray] = {}
    if learning_rates is not None:
        named["learning_rate"] = _as_values("learning_rates", learning_rates)
        if named["learning_rate"].ndim == 0:
            named["learning_rate"] = named["learning_rate"][None]
    for name, value in hyperparams.items():
        named[name] = _as_values(f"hyperparams[{name!r}]", value)
    if not named:
        raise ValueError("sweep needs something to sweep: pass learning_rates=[...] and/or hyperparams={name: [...]}.")
    swept = {k: v for k, v in named.items() if v.ndim == 1}
    fixed = {k: v for k, v in named.items() if v.ndim == 0}
    if grid:
        rows = list(itertools.product(*(range(len(v)) for v in swept.values()))) or [()]
        table = {k: np.array([v[r[i]] for r in rows]) for i, (k, v) in enumerate(swept.items())}
    else:
        lengths = {k: len(v) for k, v in swept.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            raise ValueError(
                f"zipped hyperparameters must have equal lengths, but {shown}. "
                f"Pass grid=True for every combination, or make them the same length."
            )
        table = dict(swept)
    rows = len(next(iter(table.values()))) if table else 1
    table.update({k: np.full(rows, v) for k, v in fixed.items()})
    table = {k: table[k] for k in named}  # keep the caller's order
    seed_values = _check_seeds(seeds)
    if seed_values is None:
        return Members(table, None)
    s = len(seed_values)
    return Members({k: np.repeat(v, s) for k, v in table.items()}, np.tile(seed_values, rows))
