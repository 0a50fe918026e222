"""The data cache of ``gdjax sweep``: a CSV file read in chunks into memory-mapped ``.npy`` files, once.

The chunk and block sizes are made tiny, so that files of a few rows span
many chunks; the in-memory loader (:func:`csvdata.load_csv`) and
:func:`csvdata.standardize` are the reference. Most tests stop the command
before training (the cache is written before): nothing is compiled.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

import gdjax as gd
from gdjax import cli
from gdjax.cli import _cacheview, _csvcache, _csvchunks, _npystore, _split, csvdata


class TrainedError(Exception):
    """Raised by a stand-in for ``gd.sweep``: the command got as far as training."""


def _train(*args, **kwargs):
    raise TrainedError


@pytest.fixture
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of at most 3 rows, blocks of 2 rows of 3 features: every file below spans many of both."""
    monkeypatch.setattr(_csvchunks, "CHUNK_ROWS", 3)
    monkeypatch.setattr(_cacheview, "BLOCK_ELEMENTS", 6)


def _csv(path: Path, rows: int = 23, seed: int = 0, labels: bool = False) -> Path:
    """``rows`` rows of a, b, c and y (with ``labels``, the labels -3, 5 and 8), with blank lines and odd spacing."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)) * [1.0, 100.0, 0.01] + [0.0, 500.0, 3.0]
    y = rng.choice([-3, 5, 8], size=rows) if labels else x @ [1.5, -0.02, 40.0] + rng.normal(size=rows)
    lines = ["a, b ,c,y"]
    for k in range(rows):
        lines.append(f"{float(x[k, 0])!r}, {x[k, 1]:.6e} ,{x[k, 2]:.9g},{y[k]}")
        if k % 5 == 1:
            lines.append(" , ,," if k % 10 == 1 else "")  # blank lines, skipped
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _cached(out: Path, path: Path, target: str = "y", labels: bool = False) -> tuple[_npystore.Entry, bool]:
    """Build (or reuse) the cache of ``path`` in ``out``, as the command does once ``out`` is checked."""
    out.mkdir(exist_ok=True)
    return _csvcache.rows_entry(out, _csvcache.find(str(out), path, target, labels), target)


@pytest.mark.parametrize("labels", [False, True], ids=["regression", "class-labels"])
def test_chunked_cache_holds_the_arrays_of_the_in_memory_loader(labels: bool, tiny_chunks, tmp_path: Path) -> None:
    path = _csv(tmp_path / "d.csv", labels=labels)
    table = csvdata.load_csv(path, "y", labels=labels)
    entry, built = _cached(tmp_path / "out", path, labels=labels)
    assert built and len(table.x) == 23 > 3 * _csvchunks.chunk_rows(4)
    x, y = entry.arrays["x"], entry.arrays["y"]
    assert isinstance(x, np.memmap) and x.dtype == np.float32 and y.dtype == table.y.dtype
    np.testing.assert_array_equal(x, table.x)
    np.testing.assert_array_equal(y, table.y)
    assert entry.manifest["features"] == table.features == ["a", "b", "c"]
    assert entry.manifest["classes"] == table.classes == ([-3, 5, 8] if labels else None)


def test_wide_files_are_read_in_fewer_rows_per_chunk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_csvchunks, "CHUNK_CELLS", 10)
    path = _csv(tmp_path / "d.csv", rows=7)
    assert _csvchunks.chunk_rows(4) == 2 and _csvchunks.chunk_rows(100) == 1
    assert [len(c.values) for c in _csvchunks.chunks(path, "y")] == [2, 2, 2, 1]
    np.testing.assert_array_equal(_cached(tmp_path / "out", path)[0].arrays["x"], csvdata.load_csv(path, "y").x)


@pytest.mark.parametrize("blocks", ["one-block", "many-blocks"])
@pytest.mark.parametrize("fraction", [None, 0.3])
def test_standardized_split_in_blocks_is_that_of_the_whole_array(
    fraction: float | None, blocks: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One block: bit for bit csvdata.standardize; many blocks: the same to float32 rounding (sums in another order)."""
    if blocks == "many-blocks":
        monkeypatch.setattr(_cacheview, "BLOCK_ELEMENTS", 6)
    path = _csv(tmp_path / "d.csv", rows=40, labels=True)
    table = csvdata.load_csv(path, "y", labels=True)
    entry, _ = _cached(tmp_path / "out", path, labels=True)
    split = None if fraction is None else _split.split_rows(40, fraction, 3, path)
    settings = {"validation": fraction, "seed": 3}
    view = _cacheview.view(tmp_path / "out" / _csvcache.FOLDER, entry, split, True, settings)
    z, mean, std = csvdata.standardize(table.x, None if split is None else split.train)
    exact = blocks == "one-block"
    check = np.testing.assert_array_equal if exact else lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12)
    check(view.mean, mean)
    check(view.std, std)
    sides = {"train": slice(None)} if split is None else {"train": split.train, "validation": split.validation}
    for side, rows in sides.items():
        arrays = view.train if side == "train" else view.validation
        assert arrays is not None and isinstance(arrays["x"], np.memmap)
        if exact:
            np.testing.assert_array_equal(arrays["x"], z[rows])
        else:
            np.testing.assert_allclose(arrays["x"], z[rows], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(arrays["y"], table.y[rows])


def test_split_without_standardizing_picks_the_rows_exactly(tiny_chunks, tmp_path: Path) -> None:
    path = _csv(tmp_path / "d.csv", rows=30)
    table = csvdata.load_csv(path, "y")
    entry, _ = _cached(tmp_path / "out", path)
    split = _split.split_rows(30, 0.25, 1, path)
    view = _cacheview.view(tmp_path / "out" / _csvcache.FOLDER, entry, split, False, {"validation": 0.25, "seed": 1})
    assert view.validation is not None and view.mean is None
    for arrays, rows in ((view.train, split.train), (view.validation, split.validation)):
        np.testing.assert_array_equal(arrays["x"], table.x[rows])
        np.testing.assert_array_equal(arrays["y"], table.y[rows])


def _sweep(path: Path, out: Path, *extra: str) -> None:
    """Run ``gdjax sweep`` up to the training (stood in for by TrainedError)."""
    with pytest.raises(TrainedError):
        cli.main(["sweep", str(path), "--target", "y", "--no-progress", "--out", str(out), *extra])


def _cache_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("data cache: ")]
    assert len(lines) == 1, lines
    return lines[0]


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_second_run_reuses_the_cache_and_a_changed_file_rebuilds_it(
    tiny_chunks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(gd, "sweep", _train)
    path, out = _csv(tmp_path / "d.csv"), tmp_path / "out"
    folder = out / _csvcache.FOLDER
    flags = ("--standardize", "--validation", "0.2")
    _sweep(path, out, *flags)
    assert _cache_line(capsys) == f"data cache: built {folder} (23 rows, 0.0 MB)"
    views = ["view.json", "train-x.npy", "train-y.npy", "validation-x.npy", "validation-y.npy"]
    assert sorted(_mtimes(folder)) == sorted(["data.json", "x.npy", "y.npy", *views])
    first = _mtimes(folder)

    def scan_refused(*args, **kwargs):
        raise AssertionError("the CSV file was read again")

    with monkeypatch.context() as m:
        m.setattr(_csvchunks, "scan", scan_refused)
        _sweep(path, out, *flags)
    assert _cache_line(capsys).startswith(f"data cache: reused {folder} (23 rows")
    assert _mtimes(folder) == first  # not rewritten

    _sweep(path, out, "--standardize", "--validation", "0.2", "--seed", "1")  # another split: the rows are reused
    assert _cache_line(capsys).endswith("; its training and validation arrays written now)")
    again = _mtimes(folder)
    assert again["x.npy"] == first["x.npy"] and again["view.json"] != first["view.json"]

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: rebuilt
    _sweep(path, out)
    assert _cache_line(capsys).startswith("data cache: built")
    assert _mtimes(folder)["x.npy"] != first["x.npy"] and not (folder / "view.json").exists()

    _csv(path, rows=25, seed=1)  # changed: rebuilt with the new rows
    _sweep(path, out)
    assert _cache_line(capsys).startswith(f"data cache: built {folder} (25 rows")
    entry = _npystore.open_entry(folder, "data", _csvcache.csv_key(path, "y", False))
    assert entry is not None
    np.testing.assert_array_equal(entry.arrays["x"], csvdata.load_csv(path, "y").x)


@pytest.mark.parametrize(
    ("target", "extra"), [("a", []), ("y", ["--model", "logistic"])], ids=["another-target", "class-labels"]
)
def test_another_target_or_label_mode_rebuilds(target: str, extra: list[str], tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(gd, "sweep", _train)
    path, out = tmp_path / "d.csv", tmp_path / "out"
    path.write_text("a,b,y\n1,2,0\n3,4,1\n5,6,1\n")
    _sweep(path, out)
    assert _cache_line(capsys).startswith("data cache: built")
    with pytest.raises(TrainedError):
        cli.main(["sweep", str(path), "--target", target, *extra, "--no-progress", "--out", str(out)])
    assert _cache_line(capsys).startswith("data cache: built")


def test_summary_records_the_cache(tmp_path: Path, capsys) -> None:
    path, out = _csv(tmp_path / "d.csv"), tmp_path / "out"
    args = ["sweep", str(path), "--target", "y", "--num-lrs", "2", "--epochs", "1", "--no-progress", "--out", str(out)]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("gdjax sweep: linear regression of 'y'")  # the header comes first, then the cache
    assert lines[2] == f"data cache: built {out / 'data-cache'} (23 rows, 0.0 MB)"
    assert lines[3] == "data: placed on the device" and lines[4] == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["data_cache"] == str((out / "data-cache").resolve())
    assert summary["settings"]["on_device"] is True


BAD_FILES = [
    ("non-number-in-a-later-chunk", "a,b,y\n" + "1,2,3\n" * 7 + "4,abc,6\n", False),
    ("empty-cell-in-a-later-chunk", "a,b,y\n" + "1,2,3\n" * 4 + "\n\n1,,3\n", False),
    ("float32-overflow", "a,b,y\n" + "1,2,3\n" * 5 + "1,1e39,3\n", False),
    ("nan-word", "a,b,y\n" + "1,2,3\n" * 5 + "1,2,nan\n", False),
    ("underscore", "a,b,y\n" + "1,2,3\n" * 5 + "1,1_000,3\n", False),
    ("ragged-row", "a,b,y\n" + "1,2,3\n" * 5 + "1,2\n", False),
    ("bad-cell-before-ragged-row", "a,b,y\n1,2,3\n1,2,3\n1,2,3\n1,x,3\n1,2\n", False),
    ("no-data-rows", "a,b,y\n\n , ,\n", False),
    ("label-fraction", "a,b,y\n" + "1,2,0\n" * 4 + "1,2,0.5\n1,2,1\n1,2,2.5\n", True),
    ("label-string", "a,b,y\n" + "1,2,0\n" * 4 + "1,2,cat\n", True),
    ("fraction-after-bad-cell", "a,b,y\n1,2,0.5\n" + "1,2,1\n" * 4 + "1,x,1\n", True),
    ("one-class", "a,b,y\n" + "1,2,4\n" * 7, True),
]


@pytest.mark.parametrize(("text", "labels"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_cells_raise_the_errors_of_the_in_memory_loader(text: str, labels: bool, tiny_chunks, tmp_path: Path):
    path = tmp_path / "d.csv"
    path.write_text(text)
    with pytest.raises(csvdata.CsvError) as expected:
        csvdata.load_csv(path, "y", labels=labels)
    with pytest.raises(csvdata.CsvError) as chunked:
        _csvchunks.scan(path, "y", labels=labels)
    assert str(chunked.value) == str(expected.value)
    assert "line" in str(expected.value) or "no data rows" in str(expected.value) or "label" in str(expected.value)


def test_a_bad_cell_is_one_error_line_and_nothing_is_written(tiny_chunks, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gd, "sweep", _train)
    Path("d.csv").write_text("a,b,y\n" + "1,2,3\n" * 10 + "4,abc,6\n")
    assert cli.main(["sweep", "d.csv", "--target", "y", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "gdjax: error: d.csv, line 12, column 'b': 'abc' is not a number; every column must be numeric.\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]  # no output folder, no cache


def _no_valid_cache(folder: Path, path: Path) -> None:
    assert _npystore.open_entry(folder, "data", _csvcache.csv_key(path, "y", False)) is None
    assert not (folder / "data.json").exists()
    assert not list(folder.glob(".*.tmp"))  # the temporary files are gone too


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("earlier", [False, True], ids=["first-build", "rebuild"])
def test_an_interrupted_build_leaves_no_valid_looking_cache(failure, earlier: bool, tiny_chunks, tmp_path, monkeypatch):
    path, out = _csv(tmp_path / "d.csv"), tmp_path / "out"
    folder = out / _csvcache.FOLDER
    out.mkdir()
    if earlier:  # a valid cache of the file as it was: the rebuild must not leave it looking valid
        _cached(out, path)
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    source = _csvcache.find(str(out), path, "y", False)
    assert source.entry is None
    real = _csvchunks.chunks

    def interrupted(*args, **kwargs):
        for k, chunk in enumerate(real(*args, **kwargs)):
            if k == 2:
                raise failure("interrupted mid-write")
            yield chunk

    monkeypatch.setattr(_csvchunks, "chunks", interrupted)
    with pytest.raises(failure):
        _csvcache.rows_entry(out, source, "y")
    _no_valid_cache(folder, path)
    monkeypatch.setattr(_csvchunks, "chunks", real)
    entry, built = _cached(out, path)  # the next run builds it whole
    assert built
    np.testing.assert_array_equal(entry.arrays["x"], csvdata.load_csv(path, "y").x)


def test_a_build_interrupted_before_its_manifest_is_not_valid(tmp_path: Path, monkeypatch) -> None:
    path, out = _csv(tmp_path / "d.csv"), tmp_path / "out"

    def no_manifest(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(_npystore, "_write_json", no_manifest)
    with pytest.raises(OSError):
        _cached(out, path)
    assert (out / "data-cache" / "x.npy").exists()  # every array in place, but no manifest
    _no_valid_cache(out / "data-cache", path)


def test_a_full_disk_is_one_error_line_and_no_cache(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(gd, "sweep", _train)
    path, out = _csv(tmp_path / "d.csv"), tmp_path / "out"

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    assert cli.main(["sweep", str(path), "--target", "y", "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"gdjax: error: cannot write the data cache {out / 'data-cache'}: No space left on device.\n"
    _no_valid_cache(out / "data-cache", path)


def test_a_file_changed_between_the_scan_and_the_build_is_refused(tiny_chunks, tmp_path: Path) -> None:
    path, out = _csv(tmp_path / "d.csv"), tmp_path / "out"
    out.mkdir()
    source = _csvcache.find(str(out), path, "y", False)
    _csv(path, rows=24)
    with pytest.raises(csvdata.CsvError, match="changed while gdjax was reading it"):
        _csvcache.rows_entry(out, source, "y")
    _no_valid_cache(out / "data-cache", path)


def test_a_damaged_cache_is_rebuilt(tmp_path: Path) -> None:
    path, out = _csv(tmp_path / "d.csv"), tmp_path / "out"
    _cached(out, path)
    (out / "data-cache" / "x.npy").write_bytes(b"not an array")
    entry, built = _cached(out, path)
    assert built
    np.testing.assert_array_equal(entry.arrays["x"], csvdata.load_csv(path, "y").x)
