"""The command line's outputs: the folder checked before any work, strict JSON, the files written."""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gdjax.cli._common import UsageError, check, strerror
from gdjax.results import SweepResult

FIRST_COLUMNS = ("learning_rate", "final_loss", "diverged", "converged", "num_steps", "num_epochs")
SWEEP_FILES = ("results.csv", "summary.json", "sweep.png", "curves.png")


def out_dir(text: str, names: Sequence[str] = (), inputs: Sequence[Path] = ()) -> Path:
    """Check the output folder before any work: create it, prove it writable, and check the files to be written.

    Refuses an ``--out`` that is a file or cannot be created or written
    into, an output file (``names``) that is a symbolic link (dangling or
    not), a folder or not a regular file, and an output file that is one of
    ``inputs`` (writing would destroy it).
    """
    check(text != "", "--out is empty; name a folder (it is created if needed).")
    out = Path(text)
    try:
        check(not out.exists() or out.is_dir(), f"--out {out} is a file; name a folder (it is created if needed).")
        for name in names:
            target = out / name
            for data in inputs:
                same = target.resolve() == data.resolve() or (target.exists() and os.path.samefile(target, data))
                check(
                    not same,
                    f"--out {out} would overwrite the input {data} with {name}; choose another --out folder "
                    "(or move the data file).",
                )
            if target.is_symlink():  # dangling or not: writing through it would land elsewhere, or fail after training
                raise UsageError(
                    f"{target} is a symbolic link (to {os.readlink(target)}); gdjax does not write its {name} through "
                    "a link: remove the link or choose another --out."
                )
            check(not target.is_dir(), f"{target} is a folder; gdjax would write its {name} there: move it away.")
            check(
                not target.exists() or target.is_file(),
                f"{target} exists and is not a regular file; gdjax would write its {name} there: move it away.",
            )
    except OSError as exc:
        raise UsageError(f"cannot use --out {out}: {strerror(exc)}.") from None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {out}: {strerror(exc)}.") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".gdjax-probe-", dir=out)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise UsageError(
            f"the output folder {out} is not writable (creating a file in it failed: {strerror(exc)}); "
            "choose another --out."
        ) from None
    return out


def write_error(exc: OSError, out: Path) -> UsageError:
    where = exc.filename if exc.filename is not None else out
    return UsageError(f"cannot write {where}: {strerror(exc)}.")


def nonfinite_kinds(value: Any) -> list[str]:
    if isinstance(value, float):
        return [] if math.isfinite(value) else [str(value)]  # 'inf', '-inf' or 'nan'
    if isinstance(value, list):
        return sorted({kind for v in value for kind in nonfinite_kinds(v)})
    return []


def json_ready(value: Any) -> Any:
    """Strict JSON: a non-finite float becomes null, and its dict gains ``"<key>_nonfinite"`` saying what it was.

    The flag is ``"inf"``, ``"-inf"`` or ``"nan"``; a list holding non-finite
    floats has them as null, and its flag names their kinds (``"inf, nan"``).
    """
    if isinstance(value, dict):
        ready = {}
        for key, v in value.items():
            ready[key] = json_ready(v)
            kinds = nonfinite_kinds(v)
            if kinds:
                ready[f"{key}_nonfinite"] = ", ".join(kinds)
        return ready
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def smooth_window(steps: int) -> int | None:
    """The textbook's moving-average window (10, 100, 1000...) for a curve of ``steps`` points."""
    return None if steps <= 200 else 10 ** round(math.log10(steps / 20))


def write_results(
    out: Path, sw: SweepResult, summary: dict[str, Any], columns: dict[str, list[float]] | None = None
) -> Iterator[Path]:
    """Write the four outputs, yielding each path once written (``OSError`` as the file system raises it).

    ``columns`` (name -> one value per member) are added to results.csv's
    rows, right after ``final_loss``.
    """
    from gdjax import plot

    columns = columns or {}
    rows = [{**row, **{name: values[k] for name, values in columns.items()}} for k, row in enumerate(sw.to_rows())]
    first = [c for c in FIRST_COLUMNS if c in rows[0]]
    first[first.index("final_loss") + 1 : first.index("final_loss") + 1] = list(columns)
    names = first + [c for c in rows[0] if c not in first]
    paths = [out / name for name in SWEEP_FILES]
    text = json.dumps(summary, indent=2, allow_nan=False) + "\n"  # strict JSON: _summary made every number finite
    with paths[0].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    yield paths[0]
    paths[1].write_text(text, encoding="utf-8")
    yield paths[1]
    plot.save(plot.sweep(sw), paths[2])
    yield paths[2]
    plot.save(plot.curves(sw, x="epoch", smooth=smooth_window(sw.losses.shape[1])), paths[3])
    yield paths[3]
