"""The hooks ``fit`` and ``sweep`` hand to the runner: the progress bar and checkpoints.

Each is a :class:`gdjax._runner.Hook`: the runner asks it where the next
chunk of epochs should end, and calls it after every chunk with the
:class:`gdjax._runner.Status` it computed once for all hooks.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from gdjax import _distributed, progress
from gdjax._checkpoint_files import history_layout as _history_layout
from gdjax._program import RunState
from gdjax._runner import Hook, HostHistory, Status
from gdjax.checkpoint import Checkpointer
from gdjax.progress import ProgressBar


class ProgressHook(Hook):
    """Redraws a :class:`gdjax.progress.ProgressBar` after chunks of epochs sized to take about 0.25 s.

    The first chunk is one epoch, to time it, unless an earlier run of the
    same compiled program already did.
    """

    def __init__(self, bar: ProgressBar) -> None:
        self.bar = bar

    def start(self, run: RunState, history: HostHistory) -> RunState:
        self.bar.start = time.perf_counter()  # count training time only, not compilation
        return run

    def stop_at(self, status: Status, seconds_per_epoch: float | None) -> int | None:
        if seconds_per_epoch is None:
            return status.epochs_done + 1
        return status.epochs_done + max(1, int(progress.MIN_INTERVAL / max(seconds_per_epoch, 1e-9)))

    def after(self, run: RunState, history: HostHistory, status: Status) -> None:
        self.bar.update(status.epochs_done - status.first, status.running, status.diverged)

    def close(self, status: Status) -> None:
        final = (status.epochs_done - status.first, status.running, status.diverged)
        if self.bar.state != final:  # a resumed run that had already finished ran no chunk to show
            self.bar.update(*final)
        self.bar.close()


class CheckpointHook(Hook):
    """Restores the newest checkpoint before training, and saves one every ``every`` epochs and at the end.

    A checkpoint holds the run's state and the history the runner moved to
    the host, so a resumed run is bit-identical to an uninterrupted one. Its
    metadata also records what :func:`gdjax.checkpoint.load` needs to read it
    without training code (``"run"``: the evaluation's ``columns``, or None
    where not given, ``log_every``, ``steps_per_epoch``, the real
    ``members`` and the sweep ``chunk`` number, None for a fit).
    """

    def __init__(self, checkpointer: Checkpointer, columns: Sequence[str] | None = None) -> None:
        self.ckpt = checkpointer
        self.columns = None if columns is None else [str(c) for c in columns]
        match = re.fullmatch(r"chunk-(\d{5})-", checkpointer.prefix)
        self.chunk = int(match.group(1)) if match else None

    def start(self, run: RunState, history: HostHistory) -> RunState:
        found = self.ckpt.restore(lambda epoch, meta: history.template(run, _history_layout(meta)))
        if found is None:
            return run
        (state, drained), meta = found
        return history.restore(state, drained, _history_layout(meta), run)

    def stop_at(self, status: Status, seconds_per_epoch: float | None) -> int | None:
        every = self.ckpt.every
        return (status.epochs_done // every + 1) * every

    def after(self, run: RunState, history: HostHistory, status: Status) -> None:
        if status.epochs_done % self.ckpt.every == 0 or status.finished:
            run_layout = {
                "columns": self.columns,
                "log_every": int(history.log_every),
                "steps_per_epoch": int(history.steps),
                "members": int(status.members),
                "chunk": self.chunk,
            }
            extra = {"history": history.layout(), "run": run_layout}
            tree = _distributed.to_host((run, history.drained(run)))  # every process gathers; process 0 writes
            if self.ckpt.writer:
                self.ckpt.save(tree, status.epochs_done, extra)


def hooks(
    bar: ProgressBar | None, checkpointer: Checkpointer | None, columns: Sequence[str] | None = None
) -> list[Hook]:
    """The hooks for a run with an optional bar and an optional checkpointer (``columns``: the evaluation's)."""
    out: list[Hook] = []
    if checkpointer is not None:
        out.append(CheckpointHook(checkpointer, columns))
    if bar is not None:
        out.append(ProgressHook(bar))
    return out
