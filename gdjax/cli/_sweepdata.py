"""The data of a command-line sweep: found (in the data cache, or by a scan of the CSV file), split and loaded.

:func:`find` runs before anything is written: it finds the rows in a valid
cache (:mod:`gdjax.cli._csvcache`) or checks every cell of the file with a
scan, and draws the ``--validation`` split. :func:`load` runs once the output
folder is checked: it writes the cache if needed, then the standardized and
split arrays (:mod:`gdjax.cli._cacheview`), and prints a line saying so.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gdjax.cli import _cacheview, _csvcache
from gdjax.cli._common import UsageError, strerror
from gdjax.cli._split import Split, split_rows

__all__ = ["Data", "Found", "find", "load"]


class Data(NamedTuple):
    """The rows a command-line sweep trains on and, with ``--validation``, evaluates on (memory-mapped)."""

    train: dict[str, np.ndarray]
    validation: dict[str, np.ndarray] | None
    split: dict[str, Any] | None  # summary.json's "split"


class Found(NamedTuple):
    """The data as known before anything is written: its source (the cache or a scan of the file) and the split."""

    source: _csvcache.Source
    rows: Split | None
    split: dict[str, Any] | None  # summary.json's "split"


def find(args: argparse.Namespace, path: Path, info: dict[str, Any]) -> Found:
    """Find the rows (a valid cache, or a scan checking every cell of the file), draw the split; fill ``info``."""
    source = _csvcache.find(args.out, path, args.target, args.model == "logistic")
    n = source.rows
    rows = None if args.validation is None else split_rows(n, args.validation, args.seed, path)
    info.update(data=str(path.resolve()), rows=n, features=source.features)
    if source.classes is not None:
        info["num_classes"], info["classes"] = len(source.classes), source.classes  # class k is the label classes[k]
    if rows is None:
        return Found(source, None, None)
    held = len(rows.validation)
    split = {
        "fraction": args.validation,
        "train_rows": len(rows.train),
        "validation_rows": held,
        "seed": args.seed,
        "validation_row_indices": f"numpy.random.default_rng({args.seed}).permutation({n})[:{held}], 0-based "
        "indices of the data rows in file order (the header and blank lines not counted)",
    }
    return Found(source, rows, split)


def load(args: argparse.Namespace, out: Path, found: Found, info: dict[str, Any]) -> Data:
    """Build or reuse the data cache, then the standardized and split arrays; print a line about the cache.

    Called once the output folder is checked: the cache is written inside it.
    """
    folder = _csvcache.folder_of(out)
    try:
        entry, built = _csvcache.rows_entry(out, found.source, args.target)
        settings = {"validation": args.validation, "seed": None if found.rows is None else args.seed}
        view = _cacheview.view(folder, entry, found.rows, args.standardize, settings)
    except OSError as exc:
        raise UsageError(f"cannot write the data cache {folder}: {strerror(exc)}.") from None
    if view.mean is not None and view.std is not None:
        stats = zip(info["features"], view.mean.tolist(), view.std.tolist(), strict=True)
        info["standardization"] = {name: {"mean": m, "std": v} for name, m, v in stats}
    info["data_cache"] = str(folder.resolve())
    entries = [entry] if view.entry is None else [entry, view.entry]
    print(_csvcache.describe(folder, info["rows"], entries, built, view.built), flush=True)
    return Data(view.train, view.validation, found.split)
