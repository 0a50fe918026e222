"""A progress bar for long compiled runs, fed from inside the program.

``fit(..., progress=True)`` and ``sweep(..., progress=True)`` compile a
``jax.debug.callback`` into the loop over epochs (outside ``vmap``, so one
bar serves a whole sweep). The program calls back at most about 100 times a
run (every ``ceil(epochs / 100)`` epochs, and at the last), and the bar
redraws at most :data:`MIN_INTERVAL` seconds apart, so the cost stays small.
The bar is plain text on standard error: redrawn in place on a terminal, a
line every few seconds otherwise. No dependency beyond the standard library.
"""

from __future__ import annotations

import sys
import time
from typing import IO

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["MIN_INTERVAL", "ProgressBar", "report"]

#: Seconds between redraws of the bar.
MIN_INTERVAL = 0.25
#: Callbacks from the program per run, at most (plus the last epoch).
MAX_REPORTS = 100

_ACTIVE: list[ProgressBar] = []


class ProgressBar:
    """A text progress bar over epochs; a context manager that makes itself the current bar.

    Example:
      >>> import io
      >>> out = io.StringIO()
      >>> with ProgressBar(10, "fit", file=out) as bar:
      ...     bar.update(10, 1, 0)
      >>> "10/10" in out.getvalue()
      True
    """

    def __init__(self, total: int, desc: str, *, members: int = 1, file: IO[str] | None = None) -> None:
        self.total, self.desc, self.members = total, desc, members
        self.file = file if file is not None else sys.stderr
        self.tty = bool(getattr(self.file, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.last_draw = -np.inf
        self.state = (0, members, 0)
        self.lines = 0

    def __enter__(self) -> ProgressBar:
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        self.draw(final=True)
        if self.tty:
            self.file.write("\n")
        self.file.flush()

    def update(self, epoch: int, running: int, diverged: int) -> None:
        """Record that ``epoch`` epochs are done with ``running`` members still going."""
        self.state = (int(epoch), int(running), int(diverged))
        now = time.perf_counter()
        interval = MIN_INTERVAL if self.tty else 10 * MIN_INTERVAL * 4
        if now - self.last_draw >= interval:
            self.draw()

    def draw(self, final: bool = False) -> None:
        epoch, running, diverged = self.state
        self.last_draw = time.perf_counter()
        width = 24
        filled = int(width * min(epoch, self.total) / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        who = f", {running} of {self.members} running, {diverged} diverged" if self.members > 1 else ""
        text = f"{self.desc}: epoch {epoch}/{self.total} [{bar}]{who}, {self.last_draw - self.start:.1f} s"
        if self.tty:
            self.file.write("\r" + text)
        elif final or self.lines == 0 or epoch < self.total:
            self.file.write(text + "\n")
            self.lines += 1
        self.file.flush()


def _host_report(epoch: np.ndarray, running: np.ndarray, diverged: np.ndarray) -> None:
    if _ACTIVE:
        _ACTIVE[-1].update(int(epoch), int(running), int(diverged))


def report(epoch: jax.Array, epochs: jax.Array, running: jax.Array, diverged: jax.Array) -> None:
    """Inside a compiled loop: tell the current bar that ``epoch`` epochs are done (rate-limited)."""
    every = jnp.maximum(1, (epochs + MAX_REPORTS - 1) // MAX_REPORTS)
    due = (epoch % every == 0) | (epoch >= epochs) | (running == 0)
    jax.lax.cond(due, lambda: jax.debug.callback(_host_report, epoch, running, diverged), lambda: None)
