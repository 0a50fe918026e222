"""Numeric CSV files for the ``gdjax`` command line: load, check, standardize.

A file is read with the standard :mod:`csv` module (no pandas): UTF-8 text
(a byte-order mark is fine), comma-separated, a header row naming every
column, then one row per example, every cell a finite number written plainly
(``-1.5``, ``2e-3``, ``.5``: ASCII digits, no ``1_000``, no ``inf`` or ``nan``)
that float32 can hold. Blank lines are skipped. The target column becomes
``y`` and every other column, in file order, a feature of ``x``. For
classification (``labels=True``) the target holds class labels, whole
numbers: the distinct labels, sorted, become the classes ``0 .. C-1``.

Every problem raises :class:`CsvError` with one sentence that names the file,
the line (counting the header as line 1, as an editor does), the column and
the offending value (cut short if long), and says how to fix it.

:func:`load_csv` reads a whole file into memory. ``gdjax sweep`` reads files
larger than memory a chunk of rows at a time (:mod:`gdjax.cli._csvchunks`)
with the same rules and messages: the pieces both share are the public
functions below that are not in ``__all__`` (:func:`reading`,
:func:`read_header`, :func:`data_rows`, :func:`parse_row`, the errors).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = ["CsvError", "Table", "load_csv", "standardize"]

# The smallest float64 that float32 rounds to infinity: float32's largest value plus half of its last step (2**104).
# A cell is refused as too large when it reaches this, not when it passes float32's largest value: '3.4028235e38',
# how that largest value prints, is a little above it in float64 and still becomes a finite float32.
_FLOAT32_OVERFLOW = 2.0**128 - 2.0**103
# A plain decimal number: optional sign, digits with an optional fraction (or a fraction alone), optional exponent.
# ASCII digits only: float() also takes '1_000' and other scripts' digits ('\u0661' is 1), which a CSV should not hold.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SPACES = " \t\r\n\f\v"  # ASCII white space, allowed around a number
_SHOWN_CHARS = 40  # a cell or column name longer than this is cut short in messages
_SHOWN_COLUMNS = 20  # at most this many column names are listed in a message
_NONFINITE_WORDS = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


def _shown(text: str) -> str:
    """``repr`` of a cell or name, cut short: one bad cell of 100,000 digits must not make a 100,000-character line."""
    text = text.strip()
    if len(text) <= _SHOWN_CHARS:
        return repr(text)
    return repr(text[:_SHOWN_CHARS]) + f"... ({len(text):,} characters)"


class CsvError(ValueError):
    """A CSV file that gdjax cannot use; the message says where and why."""


class Table(NamedTuple):
    """A loaded CSV file: features, target, the feature names and, for class labels, the classes.

    Attributes:
      x: float32 features of shape ``(n, d)``.
      y: the target of shape ``(n,)``: float32 values, or with class labels
        int32 classes ``0 .. C-1``, class ``k`` standing for the label
        ``classes[k]``.
      features: the ``d`` feature column names in file order.
      classes: with class labels, the ``C`` distinct labels of the file,
        sorted (``[0, 1]`` for a 0/1 target); otherwise None.
    """

    x: np.ndarray
    y: np.ndarray
    features: list[str]
    classes: list[int] | None = None


def read_header(reader: Any, name: str, target: str) -> list[str]:
    """The checked header row: every column named once, the target among them, at least one feature."""
    for header in reader:
        if any(cell.strip() for cell in header):
            break
    else:
        raise CsvError(f"{name} is empty; it needs a header row naming the columns, then rows of numbers.")
    columns = [cell.strip() for cell in header]
    line = reader.line_num
    seen: set[str] = set()  # not columns.index: a header of 100,000 columns must not take quadratic time
    for j, column in enumerate(columns):
        if not column:
            raise CsvError(f"{name}, line {line}: column {j + 1} of the header has no name; name every column.")
        if column in seen:
            raise CsvError(
                f"{name}, line {line}: the header names column {_shown(column)} twice; names must be unique."
            )
        seen.add(column)
    if target not in columns:
        shown = ", ".join(_shown(c) for c in columns[:_SHOWN_COLUMNS])
        if len(columns) > _SHOWN_COLUMNS:
            shown += f", ... ({len(columns):,} columns)"
        hint = ""
        if len(columns) == 1 and any(sep in columns[0] for sep in ";\t|"):
            hint = " (the file does not seem to be comma-separated; gdjax reads commas only)"
        elif all(_is_number(c) for c in columns):
            hint = " (the first line holds numbers: the file needs a header row naming the columns)"
        raise CsvError(f"{name} has no column {_shown(target)}; its columns are {shown}{hint}.")
    if len(columns) == 1:
        raise CsvError(f"{name} has only the target column {_shown(target)}; it needs at least one feature column too.")
    return columns


def _is_number(text: str) -> bool:
    return _PLAIN_NUMBER.fullmatch(text.strip(_SPACES)) is not None


def parse_cell(text: str, name: str, line: int, column: str, label: bool = False) -> float:
    """One cell as a float64, or :class:`CsvError` saying where and why not (``label``: a class label's advice)."""
    where = f"{name}, line {line}, column {_shown(column)}"
    if not text.strip():
        raise CsvError(f"{where}: empty cell; every cell must be a number (fill in or drop missing values).")
    plain = text.strip(_SPACES)
    if _PLAIN_NUMBER.fullmatch(plain) is None:
        if plain.lower() in _NONFINITE_WORDS:
            raise CsvError(f"{where}: {_shown(text)} is not a finite number; clean or drop that row.")
        if label:
            raise CsvError(
                f"{where}: {_shown(text)} is not a number; gdjax reads class labels as whole numbers only: "
                "encode the classes as 0, 1, 2, ..."
            )
        raise CsvError(f"{where}: {_shown(text)} is not a number; every column must be numeric.")
    value = float(plain)
    if not abs(value) < _FLOAT32_OVERFLOW:  # also a number too long for float64, which reads as inf
        raise CsvError(f"{where}: {_shown(text)} is too large for float32 (at most about 3.4e38); rescale it.")
    return value


def fraction_error(name: str, target: str, line: int, value: float, bad: int, rows: int) -> CsvError:
    """The error of a class label that is not a whole number: the first such (at ``line``), of ``bad`` of ``rows``."""
    rows_text = f"{bad} of the {rows} rows {'has' if bad == 1 else 'have'} a fraction"
    return CsvError(
        f"{name}, line {line}, column {_shown(target)}: {value!r} is not a whole number; classification "
        f"needs class labels such as 0/1 or 0, 1, 2, ... ({rows_text}; to predict a number, use --model linear)."
    )


def one_class_error(name: str, target: str, label: int) -> CsvError:
    """The error of a file whose every row has the same class label."""
    return CsvError(
        f"{name}, column {_shown(target)}: every row has the label {label}; classification needs at least two classes."
    )


def _classes(y: np.ndarray, lines: list[int], name: str, target: str) -> tuple[np.ndarray, list[int]]:
    """Whole-number labels (float64, exact) as int32 classes ``0 .. C-1`` in sorted order, and the labels."""
    bad = np.flatnonzero(y != np.round(y))
    if len(bad):
        k = int(bad[0])
        raise fraction_error(name, target, lines[k], float(y[k]), len(bad), len(y))
    labels, classes = np.unique(y, return_inverse=True)
    if len(labels) < 2:
        raise one_class_error(name, target, int(labels[0]))
    return classes.reshape(-1).astype(np.int32), [int(v) for v in labels]


@contextmanager
def reading(path: Path) -> Iterator[Any]:
    """A :func:`csv.reader` over the file; whatever goes wrong while reading becomes one :class:`CsvError`."""
    name = str(path)
    try:
        if path.is_dir():
            raise CsvError(f"{name} is a directory, not a CSV file.")
        with path.open(newline="", encoding="utf-8-sig") as f:
            yield csv.reader(f)
    except FileNotFoundError:
        raise CsvError(f"{name} does not exist; check the path.") from None
    except UnicodeDecodeError:
        raise CsvError(f"{name} is not UTF-8 text; is it really a CSV file?") from None
    except csv.Error as exc:
        raise CsvError(f"{name} is not valid CSV: {exc}.") from None
    except OSError as exc:
        raise CsvError(f"cannot read {name}: {exc.strerror or exc}.") from None


def data_rows(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """The rows after the header, blank ones skipped, each with its line number (the header's is 1)."""
    for fields in reader:
        if (fields and fields[0].strip()) or any(cell.strip() for cell in fields):  # the first cell: the usual case
            yield reader.line_num, fields


def field_count_error(name: str, line: int, fields: int, columns: int) -> CsvError:
    """The error of a row with ``fields`` fields under a header of ``columns`` columns."""
    return CsvError(
        f"{name}, line {line}: {fields} fields, but the header has {columns} columns; every row needs one value "
        "per column."
    )


def no_rows_error(name: str) -> CsvError:
    """The error of a file with a header and nothing else."""
    return CsvError(f"{name} has a header but no data rows; add at least one row of numbers.")


def parse_row(fields: list[str], name: str, line: int, columns: list[str], label_column: int) -> list[float]:
    """Every cell of one row (as many as ``columns``), checked one by one; ``label_column`` holds class labels."""
    return [
        parse_cell(text, name, line, col, j == label_column)
        for j, (text, col) in enumerate(zip(fields, columns, strict=True))
    ]


def load_csv(path: str | Path, target: str, *, labels: bool = False) -> Table:
    """Read a numeric CSV file into features and a target.

    Args:
      path: the CSV file: a header row, then one row of numbers per example.
      target: the name of the target column; every other is a feature.
      labels: the target holds class labels (for classification): whole
        numbers, at least two distinct ones. ``y`` then holds int32 classes
        ``0 .. C-1``, the labels in sorted order (``-1, 1`` become ``0, 1``;
        ``3, 5, 9`` become ``0, 1, 2``), and ``classes`` the labels.

    Returns:
      A :class:`Table` ``(x, y, features, classes)``: ``x`` float32 of
      shape ``(n, d)``; ``y`` of shape ``(n,)``, float32 or, with
      ``labels``, int32 classes; the ``d`` feature column names in file
      order; the sorted labels, or None without ``labels``.

    Raises:
      CsvError: the file is missing, unreadable, empty or has no data rows;
        the target column is missing or is the only column; a row has the
        wrong number of fields; a cell is empty, not a number, NaN or
        infinite, or out of float32 range; with ``labels``, a target value
        is not a whole number, or every row has the same one.

    Example:
      >>> import pathlib, tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "data.csv"
      >>> _ = path.write_text("a,label\\n0.5,3\\n1.5,9\\n2.5,3\\n")
      >>> table = load_csv(path, "label", labels=True)
      >>> table.y.tolist(), table.classes, table.features
      ([0, 1, 0], [3, 9], ['a'])
    """
    path = Path(path)
    name = str(path)
    with reading(path) as reader:
        columns = read_header(reader, name, target)
        t = columns.index(target)
        rows, lines = [], []
        for line, fields in data_rows(reader):
            if len(fields) != len(columns):
                raise field_count_error(name, line, len(fields), len(columns))
            rows.append(parse_row(fields, name, line, columns, t if labels else -1))
            lines.append(line)
    if not rows:
        raise no_rows_error(name)
    table = np.asarray(rows, dtype=np.float64)
    features = [c for j, c in enumerate(columns) if j != t]
    x = np.delete(table, t, axis=1).astype(np.float32)
    if labels:
        y, classes = _classes(table[:, t], lines, name, target)
        return Table(x, y, features, classes)
    return Table(x, table[:, t].astype(np.float32), features)


def standardize(x: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-score each column: ``(x - mean) / std``, with statistics in float64.

    A constant column (standard deviation 0) is only centred, so it becomes
    all zeros rather than NaN; its reported ``std`` is 1.

    Args:
      x: array of shape ``(n, d)``.
      rows: the indices of the rows the statistics are taken from (the
        training rows, so that held-out rows leak nothing into training);
        every row when None. Every row is scaled with them.

    Returns:
      ``(z, mean, std)``: ``z`` in the dtype of ``x``, ``mean`` and ``std``
      float64 of shape ``(d,)``, so that ``z == (x - mean) / std``.

    Example:
      >>> z, mean, std = standardize(np.array([[1.0, 5.0], [3.0, 5.0]], np.float32))
      >>> z.tolist(), mean.tolist(), std.tolist()
      ([[-1.0, 0.0], [1.0, 0.0]], [2.0, 5.0], [1.0, 1.0])
      >>> z, mean, std = standardize(np.array([[1.0], [3.0], [11.0]], np.float32), rows=np.array([0, 1]))
      >>> z.ravel().tolist(), mean.tolist()
      ([-1.0, 1.0, 9.0], [2.0])
    """
    wide = np.asarray(x, np.float64)
    fitted = wide if rows is None else wide[rows]
    mean = fitted.mean(axis=0)
    std = fitted.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return ((wide - mean) / std).astype(x.dtype), mean, std
