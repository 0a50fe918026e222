"""The arrays a command-line sweep trains and evaluates on, made from the cached rows a block at a time.

Without ``--standardize`` and ``--validation`` the sweep trains on the cached
``x.npy`` and ``y.npy`` themselves. Otherwise the arrays it needs are written
into the cache beside them, under the manifest ``view.json`` (keyed on the
cached rows' build, ``--standardize``, ``--validation`` and ``--seed``, so a
repeated sweep reuses them): ``x-standardized.npy`` (every row, scaled), or
with a split ``train-x.npy``, ``train-y.npy``, ``validation-x.npy`` and
``validation-y.npy`` (the rows of each side in file order, scaled with the
training rows' statistics).

Every pass reads :data:`BLOCK_ELEMENTS` values at a time: the mean and the
standard deviation are sums of blocks in float64 (two passes: the mean, then
the squared deviations from it), and the rows of each side are picked from
each block with the sorted row indices of the split. Nothing of the data's
size is held in memory. On data of one block the results are those of
:func:`gdjax.cli.csvdata.standardize` bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gdjax.cli._npystore import Entry, EntryWriter, open_entry
from gdjax.cli._split import Split

__all__ = ["BLOCK_ELEMENTS", "View", "statistics", "view"]

BLOCK_ELEMENTS = 1 << 20  # values per block of rows (8 MB in float64)
ENTRY = "view"


class View(NamedTuple):
    """The arrays of a sweep, memory-mapped.

    Attributes:
      train: ``{"x": ..., "y": ...}`` of the training rows (every row without a split).
      validation: the same of the held-out rows, or None.
      mean: with ``--standardize``, the mean of each feature (float64), else None.
      std: the same for the standard deviation (1 for a constant column).
      entry: the entry written for this view, or None when the cached rows serve as they are.
      built: whether the entry was written now (rather than found valid).
    """

    train: dict[str, np.ndarray]
    validation: dict[str, np.ndarray] | None
    mean: np.ndarray | None
    std: np.ndarray | None
    entry: Entry | None
    built: bool


def _blocks(n: int, d: int) -> Iterator[tuple[int, int]]:
    rows = max(1, BLOCK_ELEMENTS // max(1, d))
    for start in range(0, n, rows):
        yield start, min(n, start + rows)


def _picked(rows: np.ndarray | None, start: int, stop: int) -> np.ndarray | slice:
    """The positions within the block ``[start, stop)`` of the sorted ``rows`` (None: every row)."""
    if rows is None:
        return slice(None)
    lo, hi = np.searchsorted(rows, [start, stop])
    return rows[lo:hi] - start


def _block_sum(x: np.ndarray, rows: np.ndarray | None, fn: Any) -> np.ndarray:
    """``sum(fn(x[rows]), axis=0)`` in float64, a block of rows at a time."""
    total = np.zeros(x.shape[1], np.float64)
    for start, stop in _blocks(*x.shape):
        block = np.asarray(x[start:stop][_picked(rows, start, stop)], np.float64)
        part = fn(block).sum(axis=0)
        total = part if start == 0 else total + part
    return total


def statistics(x: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The mean and standard deviation of each column of ``x`` over ``rows`` (sorted; None: every row).

    As :func:`gdjax.cli.csvdata.standardize` computes them (float64, a
    constant column's deviation reported as 1), in blocks of rows.

    Example:
      >>> statistics(np.array([[1.0, 5.0], [3.0, 5.0], [11.0, 5.0]], np.float32), np.array([0, 1]))
      (array([2., 5.]), array([1., 1.]))
    """
    count = x.shape[0] if rows is None else len(rows)
    mean = _block_sum(x, rows, lambda b: b) / count
    var = _block_sum(x, rows, lambda b: np.square(b - mean)) / count
    std = np.sqrt(var)
    return mean, np.where(std > 0, std, 1.0)


class _Side(NamedTuple):
    """One array pair being written: the sorted rows it takes (None: every row) and its maps (``y``: None if shared)."""

    rows: np.ndarray | None
    x: np.ndarray
    y: np.ndarray | None


def _sides(writer: EntryWriter, x: np.ndarray, y: np.ndarray, split: Split | None) -> list[_Side]:
    """The arrays to write: training and validation rows, or with no split every row's scaled features."""
    if split is None:
        return [_Side(None, writer.array("all-x", "x-standardized.npy", x.shape, np.float32), None)]
    sides = []
    for side, rows in (("train", split.train), ("validation", split.validation)):
        side_x = writer.array(f"{side}-x", f"{side}-x.npy", (len(rows), x.shape[1]), np.float32)
        sides.append(_Side(rows, side_x, writer.array(f"{side}-y", f"{side}-y.npy", (len(rows),), y.dtype)))
    return sides


def _write(writer: EntryWriter, rows: Entry, split: Split | None, scale: tuple[np.ndarray, np.ndarray] | None) -> None:
    """Write each side's rows (features scaled with ``scale``, the mean and std, when given), a block at a time."""
    x, y = rows.arrays["x"], rows.arrays["y"]
    sides = _sides(writer, x, y, split)
    done = [0] * len(sides)
    for start, stop in _blocks(*x.shape):
        block = x[start:stop]
        if scale is not None:
            block = ((np.asarray(block, np.float64) - scale[0]) / scale[1]).astype(np.float32)
        for k, side in enumerate(sides):
            where = _picked(side.rows, start, stop)
            part = block[where]
            side.x[done[k] : done[k] + len(part)] = part
            if side.y is not None:
                side.y[done[k] : done[k] + len(part)] = y[start:stop][where]
            done[k] += len(part)


def _arrays(entry: Entry | None, rows: Entry) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    a, cached = ({} if entry is None else entry.arrays), rows.arrays
    if "all-x" in a:
        return {"x": a["all-x"], "y": cached["y"]}, None
    if "train-x" in a:
        return {"x": a["train-x"], "y": a["train-y"]}, {"x": a["validation-x"], "y": a["validation-y"]}
    return {"x": cached["x"], "y": cached["y"]}, None


def view(folder: Path, rows: Entry, split: Split | None, standardize: bool, settings: dict[str, Any]) -> View:
    """The arrays to train and evaluate on: found valid in the cache, or written now.

    Args:
      folder: the cache folder, holding the cached rows ``rows``.
      rows: the cached rows' entry (``x``, ``y``).
      split: the split (:class:`gdjax.cli._split.Split`, sorted row
        indices), or None.
      standardize: scale the features with the training rows' statistics.
      settings: what else the split depends on (the fraction and the seed),
        part of the view's key.

    Raises:
      OSError: the files could not be written; no valid view is left.
    """
    if split is None and not standardize:
        train, _ = _arrays(None, rows)
        return View(train, None, None, None, None, False)
    key = {"build": rows.manifest["build"], "standardize": standardize, **settings}
    entry, built = open_entry(folder, ENTRY, key), False
    if entry is None:
        scale = statistics(rows.arrays["x"], None if split is None else split.train) if standardize else None
        with EntryWriter(folder, ENTRY) as writer:
            _write(writer, rows, split, scale)
            stats = {} if scale is None else {"mean": scale[0].tolist(), "std": scale[1].tolist()}
            writer.commit({"key": key, **stats})
        entry, built = open_entry(folder, ENTRY, key), True
        if entry is None:
            raise OSError(f"the data cache just written in {folder} cannot be read back")
    mean, std = (np.array(entry.manifest[k], np.float64) if standardize else None for k in ("mean", "std"))
    train, validation = _arrays(entry, rows)
    return View(train, validation, mean, std, entry, built)
