"""The data cache of ``gdjax sweep``: the rows of the CSV file as ``.npy`` files, read memory-mapped.

A CSV file is parsed once, a chunk of rows at a time
(:mod:`gdjax.cli._csvchunks`), into ``<out>/data-cache/``:

* ``x.npy``: the features, float32 of shape ``(rows, features)``;
* ``y.npy``: the target, float32, or with class labels the int32 classes
  ``0 .. C-1``;
* ``data.json``: the manifest: what the files were made from (the key: the
  CSV file's absolute path, size and modification time in nanoseconds, the
  target column and whether it holds class labels), the rows, the feature
  names, the classes and the files' shapes.

A later sweep with the same ``--out`` whose key is unchanged reads nothing
of the CSV file: it maps the files (a touched or edited file, another
``--target`` or ``--model logistic`` versus not rebuild them). The files are
written atomically (:mod:`gdjax.cli._npystore`): an interrupted build never
leaves a cache that looks valid. The training and validation arrays of
``--standardize`` and ``--validation`` are kept beside them
(:mod:`gdjax.cli._cacheview`).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gdjax.cli import _csvchunks, csvdata
from gdjax.cli._common import UsageError
from gdjax.cli._npystore import Entry, EntryWriter, open_entry, remove_entry

__all__ = ["FOLDER", "Source", "find", "folder_of", "rows_entry"]

FOLDER = "data-cache"  # the cache's folder inside --out
FORMAT = 1  # the layout of the files; another value is another cache
ENTRY = "data"  # the rows' manifest is data.json
VIEW_ENTRY = "view"  # the training and validation arrays' (gdjax.cli._cacheview)


class Source(NamedTuple):
    """What is known of the data before anything is written: from a valid cache, or from a scan of the file.

    Attributes:
      path: the CSV file.
      key: the file's key (None if it could not be read: the scan said why).
      rows: the number of data rows.
      features: the feature column names, in file order.
      classes: with class labels, the sorted labels; otherwise None.
      entry: the cached rows when the cache was valid, else None.
      scan: the scan of the file when the cache was not valid, else None.
    """

    path: Path
    key: dict[str, Any] | None
    rows: int
    features: list[str]
    classes: list[int] | None
    entry: Entry | None
    scan: _csvchunks.Scan | None


def folder_of(out: str | Path) -> Path:
    """The cache folder of the output folder ``out``."""
    return Path(out) / FOLDER


def csv_key(path: Path, target: str, labels: bool) -> dict[str, Any] | None:
    """What the cached rows of ``path`` depend on; None when the file cannot be looked at."""
    try:
        stat = path.stat()
        where = str(path.resolve())
    except (OSError, RuntimeError):
        return None
    return {
        "format": FORMAT,
        "csv": where,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "target": target,
        "labels": labels,
    }


def find(out: str, path: Path, target: str, labels: bool) -> Source:
    """The cached rows of ``path`` in ``out`` if valid, else a scan of the file; nothing is written.

    Raises:
      csvdata.CsvError: the scan found the file unusable (as
        :func:`csvdata.load_csv` would).
    """
    key = csv_key(path, target, labels)
    entry = open_entry(folder_of(out), ENTRY, key) if key is not None and out else None
    if entry is not None:
        m = entry.manifest
        return Source(path, key, m["rows"], m["features"], m["classes"], entry, None)
    scan = _csvchunks.scan(path, target, labels=labels)
    features = [c for c in scan.columns if c != target]
    classes = None if scan.labels is None else [int(v) for v in scan.labels]
    return Source(path, key, scan.rows, features, classes, None, scan)


def _changed(path: Path) -> csvdata.CsvError:
    return csvdata.CsvError(f"{path} changed while gdjax was reading it; run the command again once it is written.")


def _fill(source: Source, target: str, x: np.ndarray, y: np.ndarray) -> None:
    """Parse the file again, chunk by chunk, into the maps ``x`` and ``y`` (as :func:`csvdata.load_csv` would)."""
    assert source.scan is not None
    t, labels = source.scan.columns.index(target), source.scan.labels
    start = 0
    for chunk in _csvchunks.chunks(source.path, target, labels=labels is not None):
        stop = start + len(chunk.values)
        if stop > source.rows or chunk.values.shape[1] != len(source.scan.columns):
            raise _changed(source.path)
        x[start:stop] = np.delete(chunk.values, t, axis=1)  # float64 to float32, rounded as load_csv rounds
        column = chunk.values[:, t]
        if labels is None:
            y[start:stop] = column
        else:
            classes = np.searchsorted(labels, column)
            if not (classes < len(labels)).all() or (labels[classes] != column).any():
                raise _changed(source.path)
            y[start:stop] = classes
        start = stop
    if start != source.rows:
        raise _changed(source.path)


def _remove_stale(folder: Path) -> None:
    """Remove the temporary files of a build that was killed (its own cleanup never ran)."""
    for pattern in (".*.npy.*.tmp", ".*.json.*.tmp"):
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)


def _build(folder: Path, source: Source, target: str) -> Entry:
    """Write the rows' entry from the file (its key taken before the scan, checked again after the parse)."""
    if source.key is None:  # the file could not be looked at before the scan, yet was read: it changed
        raise _changed(source.path)
    if folder.resolve() in Path(source.key["csv"]).parents:
        raise UsageError(f"{source.path} is inside the data cache {folder}; move it out, or choose another --out.")
    folder.mkdir(exist_ok=True)
    _remove_stale(folder)
    remove_entry(folder, VIEW_ENTRY)  # made from the old rows
    n, d, labels = source.rows, len(source.features), source.classes is not None
    with EntryWriter(folder, ENTRY) as writer:
        x = writer.array("x", "x.npy", (n, d), np.float32)
        y = writer.array("y", "y.npy", (n,), np.int32 if labels else np.float32)
        _fill(source, target, x, y)
        del x, y  # unmapped before the files are renamed
        if csv_key(source.path, target, labels) != source.key:
            raise _changed(source.path)
        manifest = {"key": source.key, "build": uuid.uuid4().hex, "rows": n}
        writer.commit({**manifest, "features": source.features, "classes": source.classes})
    entry = open_entry(folder, ENTRY, source.key)
    if entry is None:
        raise OSError(f"the data cache just written in {folder} cannot be read back")
    return entry


def rows_entry(out: Path, source: Source, target: str) -> tuple[Entry, bool]:
    """The cached rows (built now from the file unless :func:`find` found them valid), and whether they were built.

    Raises:
      OSError: the cache could not be written (a full disk, a folder that
        cannot be created); no valid-looking cache is left.
      csvdata.CsvError: the file changed since it was scanned.
    """
    if source.entry is not None:
        return source.entry, False
    return _build(folder_of(out), source, target), True


def describe(folder: Path, rows: int, entries: list[Entry], built: bool, view_built: bool) -> str:
    """The line printed about the cache: built or reused, where, its rows and the size of the arrays in use.

    Example:
      >>> describe(Path("out/data-cache"), 300_000, [], built=False, view_built=True)
      'data cache: reused out/data-cache (300,000 rows, 0.0 MB; its training and validation arrays written now)'
    """
    size = f"{sum(e.nbytes for e in entries) / 1e6:,.1f} MB"
    if not built and view_built:
        size += "; its training and validation arrays written now"
    return f"data cache: {'built' if built else 'reused'} {folder} ({rows:,} rows, {size})"
