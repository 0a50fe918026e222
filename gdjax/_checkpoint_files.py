"""The files of a checkpoint folder: which are checkpoints, and what every one of them records.

A run's checkpoints are named ``epoch-NNNNNNNN.npz`` (a fit's) or
``chunk-NNNNN-epoch-NNNNNNNN.npz`` (each chunk's of a sweep).
:func:`checkpoint_files` lists a folder's, oldest first, leaving out entries
that are not regular files; :func:`run_metadata` and :func:`history_layout`
check the metadata every checkpoint of :class:`gdjax.checkpoint.Checkpointer`
records, raising a :class:`~gdjax.checkpoint.CheckpointError` (so the file is
skipped as damaged) where it is missing or wrong. They are shared by
:mod:`gdjax.checkpoint` (writing and resuming), :mod:`gdjax._hooks` (the
checkpoint hook) and :mod:`gdjax._load` (reading a run back).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from gdjax._npz import CheckpointError

#: A pattern for the prefix of any run's checkpoints: a fit's (none) or a sweep chunk's.
ANY = r"(?:chunk-\d{5}-)?"
#: The prefix of a sweep chunk's checkpoints; group 1 is the chunk's number.
CHUNK = re.compile(r"chunk-(\d{5})-")


def checkpoint_files(folder: Path, prefix: str) -> list[tuple[int, Path]]:
    """The checkpoint files in ``folder`` whose prefix matches the pattern ``prefix``, oldest first.

    Entries that are not regular files (folders, FIFOs, links) are left out.
    """
    pattern = re.compile(prefix + r"epoch-(\d{8})\.npz")
    try:
        with os.scandir(folder) as entries:
            found = [(int(m.group(1)), Path(e.path)) for e in entries if (m := pattern.fullmatch(e.name))]
    except OSError:
        return []
    return sorted((epoch, path) for epoch, path in found if path.is_file() and not path.is_symlink())


def run_metadata(path: Path, epoch: int, meta: dict[str, Any]) -> dict[str, Any]:
    """The metadata a :class:`~gdjax.checkpoint.Checkpointer` wrote, checked (a CheckpointError where it is not)."""
    if not isinstance(meta.get("settings"), dict) or type(meta.get("epoch")) is not int or meta["epoch"] != epoch:
        raise CheckpointError(f"checkpoint {path} cannot be read (its run settings or epoch are missing or wrong).")
    return meta


def history_layout(meta: dict[str, Any]) -> dict[str, int]:
    """The history layout a checkpoint recorded (a CheckpointError, so skipped as damaged, where it is not)."""
    layout = meta.get("history")
    if not isinstance(layout, dict) or any(type(layout.get(k)) is not int for k in ("base", "capacity", "first")):
        raise CheckpointError("the checkpoint does not record its history layout (base, capacity, first)")
    return layout
