"""The held-out validation split of ``gdjax sweep --validation FRACTION``.

The split is drawn from the command's ``--seed`` with NumPy, so it can be
drawn again outside gdjax::

    held_out = numpy.random.default_rng(seed).permutation(rows)[:num_held_out(rows, fraction)]

are the validation rows: 0-based indices of the data rows in file order (the
header and blank lines not counted); every other row is a training row.
Classes are numbered before the split, from every row of the file, so a
class seen only among the held-out rows keeps its number.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gdjax._types import plural
from gdjax.cli._common import UsageError

__all__ = ["Split", "check_fraction", "num_held_out", "split_rows"]


class Split(NamedTuple):
    """The row indices of each side, each sorted (file order)."""

    train: np.ndarray
    validation: np.ndarray


def check_fraction(fraction: float) -> None:
    """Refuse a ``--validation`` that is not a number strictly between 0 and 1 (before the data is read)."""
    if not (math.isfinite(fraction) and 0 < fraction < 1):
        raise UsageError(
            f"--validation must be a fraction strictly between 0 and 1, the share of the rows held out for "
            f"validation (such as 0.2); got {fraction:g}."
        )


def num_held_out(rows: int, fraction: float) -> int:
    """How many of ``rows`` rows ``fraction`` holds out: ``fraction * rows``, rounded to the nearest (halves up).

    Example:
      >>> num_held_out(1797, 0.2), num_held_out(10, 0.25), num_held_out(10, 0.3)
      (359, 3, 3)
    """
    return math.floor(fraction * rows + 0.5)


def _shortest(rows: int, held: int) -> str:
    """The shortest text of a fraction that holds out exactly ``held`` of ``rows`` rows."""
    for digits in range(2, 18):
        text = f"{held / rows:.{digits}g}"
        if num_held_out(rows, float(text)) == held:
            return text
    return repr(held / rows)


def split_rows(rows: int, fraction: float, seed: int, path: Path) -> Split:
    """Draw the split of ``rows`` data rows: ``num_held_out(rows, fraction)`` for validation, the rest for training.

    Raises:
      UsageError: a side would be empty (too few rows, or a fraction too
        close to 0 or 1 for this many rows), with the fraction to use instead.

    Example:
      >>> s = split_rows(10, 0.3, 0, Path("d.csv"))
      >>> len(s.train), len(s.validation), sorted([*s.train, *s.validation]) == list(range(10))
      (7, 3, True)
    """
    if rows < 2:
        raise UsageError(
            f"--validation needs at least 2 rows (one to train on, one to hold out), but {path} has "
            f"{plural(rows, 'row')}; add rows or drop --validation."
        )
    held = num_held_out(rows, fraction)
    if held < 1:
        raise UsageError(
            f"--validation {fraction:g} holds out no row of the {rows} rows of {path} ({fraction:g} x {rows}, "
            f"rounded); use {_shortest(rows, 1)} (one row) or more."
        )
    if held > rows - 1:
        raise UsageError(
            f"--validation {fraction:g} holds out all {rows} rows of {path}, leaving none to train on; use "
            f"{_shortest(rows, rows - 1)} (keeping one row to train on) or less."
        )
    order = np.random.default_rng(seed).permutation(rows)
    return Split(np.sort(order[held:]), np.sort(order[:held]))
