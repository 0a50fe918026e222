"""A numeric CSV file read a bounded number of rows at a time, for files larger than memory.

The rules and every error message are those of :mod:`gdjax.cli.csvdata`
(which reads a whole file into memory): this module only reads the rows in
chunks of at most :data:`CHUNK_ROWS` rows and :data:`CHUNK_CELLS` cells, so
that no more than one chunk is ever held as Python strings and floats. A
file is read twice: :func:`scan` checks every cell, counts the rows and
collects the class labels, before anything is written; :func:`chunks` then
yields the parsed rows again, for the cache (:mod:`gdjax.cli._csvcache`) to
write them.

A chunk is parsed at once when every cell is a plain number (the usual
case): one screen of its characters, then :class:`float` on each cell. A
chunk with anything else in it is parsed again cell by cell with
:func:`csvdata.parse_cell`, which raises the error of its first bad cell.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gdjax.cli import csvdata

__all__ = ["CHUNK_CELLS", "CHUNK_ROWS", "Chunk", "Scan", "chunks", "read_columns", "scan"]

CHUNK_ROWS = 65536  # at most this many rows in a chunk
CHUNK_CELLS = 1 << 20  # and at most about this many cells: a cell read as a Python string takes about 60 bytes
# A character that cannot be part of a plain number (nor the ',' that joins the cells of a chunk): what float()
# takes but csvdata refuses ('1_000', 'inf', 'nan', other scripts' digits and spaces) always has one.
_NOT_PLAIN = re.compile(r"[^0-9eE+\-.,\t\n\v\f\r ]")


class Chunk(NamedTuple):
    """Consecutive data rows of a file.

    Attributes:
      values: float64 of shape ``(rows, columns)``: every column of the
        file, the target included, in file order.
      lines: int64 of shape ``(rows,)``: the line of each row (the header
        is line 1).
    """

    values: np.ndarray
    lines: np.ndarray


class Scan(NamedTuple):
    """What the first pass over a file found: its columns, its data rows and, for class labels, the labels.

    Attributes:
      columns: every column name, in file order.
      rows: the number of data rows (blank lines not counted).
      labels: with class labels, the distinct labels of the target, sorted
        (float64, whole numbers); otherwise None.
    """

    columns: list[str]
    rows: int
    labels: np.ndarray | None


def chunk_rows(columns: int) -> int:
    """Rows per chunk for a file of ``columns`` columns: :data:`CHUNK_ROWS`, fewer for wide files."""
    return max(1, min(CHUNK_ROWS, CHUNK_CELLS // columns))


def _at_once(rows: list[list[str]], width: int) -> np.ndarray | None:
    """The chunk as float64 if every cell is a plain number that float32 can hold; None to check cell by cell."""
    if _NOT_PLAIN.search(",".join(itertools.chain.from_iterable(rows))) is not None:
        return None
    try:
        values = np.fromiter(map(float, itertools.chain.from_iterable(rows)), np.float64, count=len(rows) * width)
    except ValueError:  # an empty cell, '1e', '+-1', ...: the cell-by-cell check says which and where
        return None
    if not (np.abs(values) < csvdata._FLOAT32_OVERFLOW).all():
        return None
    return values.reshape(len(rows), width)


def _parse(rows: list[list[str]], lines: list[int], name: str, columns: list[str], label_column: int) -> Chunk:
    """The chunk's rows as numbers, or the :class:`csvdata.CsvError` of its first bad cell."""
    values = _at_once(rows, len(columns))
    if values is None:
        parsed = [csvdata.parse_row(f, name, line, columns, label_column) for f, line in zip(rows, lines, strict=True)]
        values = np.array(parsed, np.float64).reshape(len(rows), len(columns))
    return Chunk(values, np.array(lines, np.int64))


def read_columns(path: Path, target: str) -> list[str]:
    """The checked header of the file (:class:`csvdata.CsvError` as :func:`csvdata.load_csv` raises it)."""
    with csvdata.reading(path) as reader:
        return csvdata.read_header(reader, str(path), target)


def chunks(path: Path, target: str, *, labels: bool = False) -> Iterator[Chunk]:
    """The data rows of the file, in chunks of at most :func:`chunk_rows` rows, every cell checked.

    Raises:
      csvdata.CsvError: what :func:`csvdata.load_csv` raises while reading
        (a missing or unreadable file, a bad header, a row with the wrong
        number of fields, a bad cell), at the same first problem of the
        file; the chunks before it are yielded first.
    """
    name = str(path)
    with csvdata.reading(path) as reader:
        columns = csvdata.read_header(reader, name, target)
        label_column = columns.index(target) if labels else -1
        size = chunk_rows(len(columns))
        rows: list[list[str]] = []
        lines: list[int] = []
        for line, fields in csvdata.data_rows(reader):
            if len(fields) != len(columns):
                _parse(rows, lines, name, columns, label_column)  # a bad cell above this row is the first problem
                raise csvdata.field_count_error(name, line, len(fields), len(columns))
            rows.append(fields)
            lines.append(line)
            if len(rows) == size:
                yield _parse(rows, lines, name, columns, label_column)
                rows, lines = [], []
        if rows:
            yield _parse(rows, lines, name, columns, label_column)


class _Labels:
    """The class labels seen so far: the distinct ones, and the first and the count of those with a fraction."""

    def __init__(self) -> None:
        self.distinct = np.empty(0, np.float64)
        self.fractions = 0
        self.first: tuple[int, float] | None = None  # line and value of the first label with a fraction

    def add(self, y: np.ndarray, lines: np.ndarray) -> None:
        bad = np.flatnonzero(y != np.round(y))
        if len(bad) and self.first is None:
            self.first = int(lines[bad[0]]), float(y[bad[0]])
        self.fractions += len(bad)
        if not self.fractions:
            self.distinct = np.union1d(self.distinct, y)

    def check(self, name: str, target: str, rows: int) -> np.ndarray:
        """The sorted labels, or the error of :func:`csvdata.load_csv` (a fraction, a single class)."""
        if self.first is not None:
            raise csvdata.fraction_error(name, target, *self.first, self.fractions, rows)
        if len(self.distinct) < 2:
            raise csvdata.one_class_error(name, target, int(self.distinct[0]))
        return self.distinct


def scan(path: Path, target: str, *, labels: bool = False) -> Scan:
    """Read the whole file once, a chunk at a time, keeping nothing of its size: check it and count its rows.

    Raises:
      csvdata.CsvError: every error of :func:`csvdata.load_csv`, in the
        same order (the first bad row or cell; then no data rows; then,
        with ``labels``, a label with a fraction or a single label).
    """
    columns = read_columns(path, target)
    t = columns.index(target)
    rows = 0
    seen = _Labels()
    for chunk in chunks(path, target, labels=labels):
        rows += len(chunk.values)
        if labels:
            seen.add(chunk.values[:, t], chunk.lines)
    if not rows:
        raise csvdata.no_rows_error(str(path))
    return Scan(columns, rows, seen.check(str(path), target, rows) if labels else None)
