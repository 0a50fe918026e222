"""``SweepResult``: what a sweep returns, with a summary table and rows."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from gdjax import _engine
from gdjax._members import Members
from gdjax.data import DataIterator

__all__ = ["SweepResult"]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """The results of every member of a sweep, stacked along a leading member axis.

    Attributes:
      hyperparams: name -> ``(M,)`` values per member (``learning_rate``
        first when swept).
      seeds: ``(M,)`` seed per member, or None without seeds.
      params: the final parameters, each leaf with a leading axis ``M``
        (for diverged members, the last ones that passed the divergence checks).
      losses: ``(M, W)`` mean step loss per window of ``log_every`` steps;
        NaN after a member stopped or diverged.
      epoch_losses: ``(M, E)`` full-data loss after each epoch; NaN where a
        member did not run that epoch.
      initial_loss: ``(M,)`` full-data loss before training.
      final_loss: ``(M,)`` full-data loss after each member's last epoch.
      diverged: ``(M,)`` bool, the member hit a non-finite loss or params.
      diverged_at: ``(M,)`` the rejected step, -1 where none.
      converged: ``(M,)`` bool, the member reached ``tol``.
      num_steps: ``(M,)`` updates taken.
      num_epochs: ``(M,)`` epochs run.
      log_every, steps_per_epoch, batch_size, examples_per_epoch: as in
        :class:`gdjax.FitResult`.
      wall_time: seconds the compiled runs took (compilation excluded).
      compile_time: seconds spent compiling (about 0 when cached).
      devices: devices the members were split over.
      resumed_from: ``(M,)`` the epoch a checkpoint resumed each member from
        (0: from the start). Each chunk of members (``chunk_size``) has its own
        checkpoints, so members of one chunk share a value; members of a chunk
        that had finished when the sweep was stopped show the final epoch.
    """

    hyperparams: dict[str, np.ndarray]
    seeds: np.ndarray | None
    params: PyTree
    losses: np.ndarray
    epoch_losses: np.ndarray
    initial_loss: np.ndarray
    final_loss: np.ndarray
    diverged: np.ndarray
    diverged_at: np.ndarray
    converged: np.ndarray
    num_steps: np.ndarray
    num_epochs: np.ndarray
    log_every: int
    steps_per_epoch: int
    batch_size: int
    examples_per_epoch: int
    wall_time: float
    compile_time: float
    devices: int = 1
    resumed_from: np.ndarray | None = None

    @classmethod
    def from_run(
        cls, cfg: _engine.Config, it: DataIterator, run: _engine.RunState, table: Members, **extra: Any
    ) -> SweepResult:
        """Build the result from the stacked run states of every member."""
        host = jax.device_get(run._replace(train=run.train.step))
        num_epochs = host.epoch.astype(np.int64)
        extra.setdefault("resumed_from", np.zeros(len(num_epochs), np.int64))
        steps = it.num_batches
        positions = [
            _engine.stop_position(int(e), int(d), steps) for e, d in zip(num_epochs, host.diverged_at, strict=True)
        ]
        width = -(-max(positions) // cfg.log_every) if positions else 0
        losses = np.full((len(positions), width), np.nan, host.loss_sums.dtype)
        for k, pos in enumerate(positions):
            means = _engine.window_means(host.loss_sums[k], pos, cfg.log_every)
            losses[k, : len(means)] = means
        epochs_run = int(num_epochs.max()) if len(num_epochs) else 0
        epoch_losses = host.epoch_losses[:, :epochs_run]
        last = np.clip(num_epochs - 1, 0, None)
        final = np.where(
            num_epochs > 0, epoch_losses[np.arange(len(last)), last] if epochs_run else np.nan, host.initial_loss
        )
        return cls(
            hyperparams=table.hyperparams,
            seeds=table.seeds,
            params=run.train.params,
            losses=losses,
            epoch_losses=epoch_losses,
            initial_loss=host.initial_loss,
            final_loss=final,
            diverged=host.diverged,
            diverged_at=host.diverged_at.astype(np.int64),
            converged=host.converged,
            num_steps=host.train.astype(np.int64),
            num_epochs=num_epochs,
            log_every=cfg.log_every,
            steps_per_epoch=steps,
            batch_size=it.batch_size,
            examples_per_epoch=it.examples_per_epoch,
            **extra,
        )

    @property
    def num_members(self) -> int:
        return len(self.final_loss)

    @property
    def learning_rates(self) -> np.ndarray | None:
        """Each member's learning rate, or None if it was not swept."""
        return self.hyperparams.get("learning_rate")

    @property
    def healthy(self) -> np.ndarray:
        """Members that did not diverge and ended with a finite loss."""
        return ~self.diverged & np.isfinite(self.final_loss)

    @property
    def best_index(self) -> int | None:
        """The healthy member with the lowest final full-data loss (None if every member diverged)."""
        if not self.healthy.any():
            return None
        return int(np.argmin(np.where(self.healthy, self.final_loss, np.inf)))

    @property
    def best_hyperparams(self) -> dict[str, float] | None:
        """The hyperparameters (and seed) of the best member."""
        k = self.best_index
        if k is None:
            return None
        best = {name: float(v[k]) for name, v in self.hyperparams.items()}
        if self.seeds is not None:
            best["seed"] = int(self.seeds[k])
        return best

    @property
    def best_params(self) -> PyTree | None:
        """The final parameters of the best member."""
        k = self.best_index
        return None if k is None else jax.tree.map(lambda x: x[k], self.params)

    def member_params(self, k: int) -> PyTree:
        """The final parameters of member ``k``."""
        return jax.tree.map(lambda x: x[k], self.params)

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per member: its hyperparameters, seed, losses and flags (for pandas or CSV).

        Example:
          >>> import jax, numpy as np, optax, gdjax as gd
          >>> prob = gd.problems.linear_regression(n=64, d=2, key=jax.random.key(0))
          >>> m = gd.models.linear()
          >>> sw = gd.sweep(m.loss, m.init(None, 2), optax.sgd, gd.full_batch(prob.data),
          ...               learning_rates=[0.1, 0.2], epochs=3, key=jax.random.key(0))
          >>> sorted(sw.to_rows()[0])[:4]
          ['best', 'converged', 'diverged', 'diverged_at']
        """
        best = self.best_index
        rows = []
        for k in range(self.num_members):
            row: dict[str, Any] = {"member": k}
            row.update({name: float(v[k]) for name, v in self.hyperparams.items()})
            if self.seeds is not None:
                row["seed"] = int(self.seeds[k])
            row.update(
                initial_loss=float(self.initial_loss[k]),
                final_loss=float(self.final_loss[k]),
                diverged=bool(self.diverged[k]),
                diverged_at=int(self.diverged_at[k]) if self.diverged[k] else None,
                converged=bool(self.converged[k]),
                num_steps=int(self.num_steps[k]),
                num_epochs=int(self.num_epochs[k]),
                best=k == best,
            )
            rows.append(row)
        return rows

    def summary(self, max_rows: int = 20) -> str:
        """A readable table: one line per member (at most ``max_rows``, spread evenly), then the best.

        Status: ``converged`` (reached ``tol``), ``diverged`` (a non-finite loss
        or parameters), ``worse`` (ended above its initial loss: unstable but
        not yet overflowed) or ``ran``; ``*`` marks the best member. When every
        member diverged, the last line says whether the loss was already
        non-finite before any step (the data overflows: rescale it) or the
        learning rates were too large.
        """
        names = list(self.hyperparams) + (["seed"] if self.seeds is not None else [])
        head = "".join(f"{n:>15}" for n in names) + f"{'final loss':>14}{'epochs':>8}{'status':>11}"
        lines = [
            f"sweep of {self.num_members} members on {self.devices} {jax.default_backend()} device(s) "
            f"(jax {jax.__version__}), {self.wall_time:.3f} s run + {self.compile_time:.2f} s compile",
            head,
            "-" * len(head),
        ]
        shown = range(self.num_members)
        if self.num_members > max_rows:
            shown = sorted(
                set(np.linspace(0, self.num_members - 1, max_rows).round().astype(int).tolist())
                | ({self.best_index} if self.best_index is not None else set())
            )
        rows = self.to_rows()
        for k in shown:
            r = rows[k]
            status = (
                "diverged"
                if r["diverged"]
                else "converged"
                if r["converged"]
                else "worse"  # ended above where it started: unstable, though not yet overflowed
                if not r["final_loss"] < r["initial_loss"]
                else "ran"
            )
            cells = "".join(f"{r[n]:>15.6g}" if n != "seed" else f"{r[n]:>15d}" for n in names)
            lines.append(
                f"{cells}{r['final_loss']:>14.6g}{r['num_epochs']:>8d}{status + (' *' if r['best'] else ''):>11}"
            )
        if self.num_members > max_rows:
            lines.append(f"({self.num_members - len(shown)} more members not shown)")
        best = self.best_hyperparams
        overflowed = ~np.isfinite(np.asarray(self.initial_loss))  # non-finite before any step: not the learning rate
        if best is None and self.num_members and overflowed.all():
            lines.append(
                "every member diverged, but the loss is already non-finite at the initial parameters, before any "
                "step: the data or the loss overflows, whatever the learning rate. Rescale the data (--standardize "
                "on the command line, or divide the large columns) instead of lowering the learning rate."
            )
        elif best is None and overflowed.any():
            lines.append(
                f"every member diverged; {int(overflowed.sum())} of {self.num_members} already had a non-finite loss "
                "at their initial parameters (the data or the loss overflows: rescale the data, e.g. --standardize); "
                "for the others, try smaller learning rates."
            )
        elif best is None:
            lines.append("every member diverged: try smaller learning rates.")
        else:
            shown_best = ", ".join(f"{k}={v:.6g}" for k, v in best.items())
            lines.append(
                f"best (*): {shown_best}, final loss {self.final_loss[self.best_index]:.6g}; "
                f"{int(self.diverged.sum())} of {self.num_members} diverged"
            )
        return "\n".join(lines)
