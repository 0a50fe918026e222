"""Text views of a sweep's results, as the command line prints and writes them.

:func:`rows` gives one dict per member (the rows of ``results.csv``, ready
for pandas); :func:`summary` a readable table. ``SweepResult.to_rows()`` and
``SweepResult.summary()`` call these.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from gdjax.results import SweepResult

__all__ = ["rows", "summary"]


def rows(sw: SweepResult) -> list[dict[str, Any]]:
    """One dict per member: its hyperparameters, seed, losses and flags (for pandas or CSV).

    Example:
      >>> import jax, numpy as np, optax, gdjax as gd
      >>> prob = gd.problems.linear_regression(n=64, d=2, key=jax.random.key(0))
      >>> m = gd.models.linear()
      >>> sw = gd.sweep(m.loss, m.init(None, 2), optax.sgd, gd.full_batch(prob.data),
      ...               learning_rates=[0.1, 0.2], epochs=3, key=jax.random.key(0))
      >>> sorted(rows(sw)[0])[:4]
      ['best', 'best_epoch', 'converged', 'diverged']
    """
    best = sw.best_index
    out = []
    for k in range(sw.num_members):
        row: dict[str, Any] = {"member": k}
        row.update({name: float(v[k]) for name, v in {**sw.hyperparams, **sw.loss_hyperparams}.items()})
        if sw.seeds is not None:
            row["seed"] = int(sw.seeds[k])
        row.update(
            initial_loss=float(sw.initial_loss[k]),
            final_loss=float(sw.final_loss[k]),
            diverged=bool(sw.diverged[k]),
            diverged_at=int(sw.diverged_at[k]) if sw.diverged[k] else None,
            converged=bool(sw.converged[k]),
            stopped_early=bool(sw.stopped_early[k]),
            best_epoch=int(sw.best_epoch[k]) if sw.best_epoch[k] >= 0 else None,
            num_steps=int(sw.num_steps[k]),
            num_epochs=int(sw.num_epochs[k]),
            best=k == best,
        )
        out.append(row)
    return out


def summary(sw: SweepResult, max_rows: int = 20) -> str:
    """A readable table: one line per member (at most ``max_rows``, spread evenly), then the best.

    Status: ``converged`` (reached ``tol``), ``diverged`` (a non-finite loss
    or parameters), ``stopped`` (early stopping's patience ran out),
    ``worse`` (ended above its initial loss: unstable but not yet
    overflowed) or ``ran``; ``*`` marks the best member. When the
    members are ranked by something else than the final training loss (a
    ``monitor`` such as ``eval_loss``, or ``keep_best``), a column shows
    that value (:attr:`SweepResult.selection`). When every
    member diverged, the last line says whether the loss was already
    non-finite before any step (the data overflows: rescale it) or the
    learning rates were too large.
    """
    names = list(sw.hyperparams) + list(sw.loss_hyperparams) + (["seed"] if sw.seeds is not None else [])
    # the value members are ranked by, when it is not the final loss (eval_loss with evaluation data, ...)
    watched = sw.monitor if sw.monitor != "loss" or sw.best_epoch_params is not None else None
    label = None if watched is None else watched + (" (best)" if sw.best_epoch_params is not None else "")
    width = 0 if label is None else max(14, len(label) + 2)
    head = "".join(f"{n:>15}" for n in names) + f"{'final loss':>14}" + f"{label or '':>{width}}"
    head += f"{'epochs':>8}{'status':>11}"
    lines = [
        f"sweep of {sw.num_members} members on {sw.devices} {jax.default_backend()} device(s) "
        f"(jax {jax.__version__}), {sw.wall_time:.3f} s run + {sw.compile_time:.2f} s compile",
        head,
        "-" * len(head),
    ]
    shown: list[int] = list(range(sw.num_members))
    if sw.num_members > max_rows:
        shown = sorted(
            set(np.linspace(0, sw.num_members - 1, max_rows).round().astype(int).tolist())
            | ({sw.best_index} if sw.best_index is not None else set())
        )
    rows_ = rows(sw)
    selection = np.asarray(sw.selection, np.float64)
    for k in shown:
        r = rows_[k]
        status = (
            "diverged"
            if r["diverged"]
            else "converged"
            if r["converged"]
            else "stopped"  # early stopping: patience ran out
            if r["stopped_early"]
            else "worse"  # ended above where it started: unstable, though not yet overflowed
            if not r["final_loss"] < r["initial_loss"]
            else "ran"
        )
        cells = "".join(f"{r[n]:>15.6g}" if n != "seed" else f"{r[n]:>15d}" for n in names)
        ranked = f"{selection[k]:>{width}.6g}" if width else ""
        mark = status + (" *" if r["best"] else "")
        lines.append(f"{cells}{r['final_loss']:>14.6g}{ranked}{r['num_epochs']:>8d}{mark:>11}")
    if sw.num_members > max_rows:
        lines.append(f"({sw.num_members - len(shown)} more members not shown)")
    best = sw.best_hyperparams
    overflowed = ~np.isfinite(np.asarray(sw.initial_loss))  # non-finite before any step: not the learning rate
    if best is None and sw.num_members and overflowed.all():
        lines.append(
            "every member diverged, but the loss is already non-finite at the initial parameters, before any "
            "step: the data or the loss overflows, whatever the learning rate. Rescale the data (--standardize "
            "on the command line, or divide the large columns) instead of lowering the learning rate."
        )
    elif best is None and overflowed.any():
        lines.append(
            f"every member diverged; {int(overflowed.sum())} of {sw.num_members} already had a non-finite loss "
            "at their initial parameters (the data or the loss overflows: rescale the data, e.g. --standardize); "
            "for the others, try smaller learning rates."
        )
    elif best is None:
        lines.append("every member diverged: try smaller learning rates.")
    else:
        shown_best = ", ".join(f"{k}={v:.6g}" for k, v in best.items())
        i = sw.best_index
        by = "" if label is None else f", {label} {selection[i]:.6g} ({'highest' if sw.mode == 'max' else 'lowest'})"
        lines.append(
            f"best (*): {shown_best}{by}, final loss {sw.final_loss[i]:.6g}; "
            f"{int(sw.diverged.sum())} of {sw.num_members} diverged"
        )
    return "\n".join(lines)
