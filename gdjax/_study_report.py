"""Text views of a :class:`gdjax.StudyResult`: one dict per batch size (for CSV), and a readable summary."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from gdjax._types import plural

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gdjax.study import StudyResult

__all__ = ["COMMAND_LINE", "PYTHON", "Wording", "edge", "notes", "rows", "summary"]


def _sizes(sizes: list[int]) -> str:
    """``"batch size 4"`` or ``"batch sizes 4, 16"``."""
    return ("batch size " if len(sizes) == 1 else "batch sizes ") + ", ".join(map(str, sizes))


@dataclasses.dataclass(frozen=True)
class Wording:
    """How the notes name what to change: the Python arguments (the default) or the command's options.

    ``gdjax study`` passes :data:`COMMAND_LINE`: its notes say ``--lr-max``, not ``learning_rates``.
    """

    widen_up: str = "widen learning_rates upward"
    widen_down: str = "widen learning_rates downward"
    raise_epochs: str = "raise epochs or the target"


#: The notes of ``st.summary()``: the arguments of :func:`gdjax.study`.
PYTHON = Wording()
#: The notes of ``gdjax study``: its options, as ``gdjax sweep`` names them.
COMMAND_LINE = Wording(
    widen_up="widen the range with --lr-max",
    widen_down="widen the range with --lr-min",
    raise_epochs="raise --epochs or --target-loss",
)


def edge(st: StudyResult, i: int) -> str | None:
    """``"smallest"`` or ``"largest"`` when batch size ``i``'s best learning rate is at that end of the grid."""
    lr, lrs = st.best_learning_rates[i], st.learning_rates
    if lr is None or len(lrs) < 3:
        return None
    if lr == float(lrs.min()):
        return "smallest"
    return "largest" if lr == float(lrs.max()) else None


def rows(st: StudyResult) -> list[dict[str, Any]]:
    """One dict per batch size: what it took to reach the target, its best learning rate, its sweep's times."""
    pick = st.recommended_index
    out = []
    for i, b in enumerate(st.batch_sizes):
        sw = st.sweeps[i]
        out.append(
            {
                "batch_size": b,
                "steps_per_epoch": st.steps_per_epoch[i],
                "best_learning_rate": st.best_learning_rates[i],
                "reached": st.steps_to_target[i] is not None,
                "epochs_to_target": st.epochs_to_target[i],
                "steps_to_target": st.steps_to_target[i],
                "examples_to_target": st.examples_to_target[i],
                "seconds_to_target": st.seconds_to_target[i],
                "final_loss": st.final_losses[i],
                "best_lr_at_edge": edge(st, i),
                "num_reached": int((sw.converged & ~sw.diverged).sum()),
                "num_diverged": int(sw.diverged.sum()),
                "epochs_run": st.epochs_run[i],
                "wall_time": st.wall_times[i],
                "compile_time": st.compile_times[i],
                "recommended": i == pick,
            }
        )
    return out


def _cell(value: Any, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def _table(st: StudyResult) -> list[str]:
    head = (
        f"{'batch':>7}{'steps/epoch':>12}{'best lr':>11}{'epochs':>8}{'steps':>10}{'examples':>11}"
        f"{'seconds':>10}{'final loss':>12}{'reached':>9}"
    )
    lines = [head, "-" * len(head)]
    pick = st.recommended_index
    for i, r in enumerate(rows(st)):
        mark = " *" if i == pick else ""
        lines.append(
            f"{r['batch_size']:>7d}{r['steps_per_epoch']:>12d}{_cell(r['best_learning_rate'], '.4g', 11)}"
            f"{_cell(r['epochs_to_target'], 'd', 8)}{_cell(r['steps_to_target'], 'd', 10)}"
            f"{_cell(r['examples_to_target'], 'd', 11)}{_cell(r['seconds_to_target'], '.4f', 10)}"
            f"{_cell(r['final_loss'], '.5g', 12)}{r['num_reached']:>4d}/{len(st.learning_rates):<3d}{mark}"
        )
    return lines


def _diagnostics(st: StudyResult) -> list[str]:
    lines = []
    if st.sharpness is not None:
        limit = f"2/sharpness = {2 / st.sharpness:.4g}" if st.sharpness > 0 else "no curvature bound (not positive)"
        lines.append(f"sharpness {st.sharpness:.4g} at the initial parameters: full-batch GD is stable below {limit}")
    if st.noise_scale is not None:
        text = f"noise scale B_simple {st.noise_scale:.4g} at the initial parameters"
        if st.noise_scale_at_target is not None:
            where = f"best run of batch size {st.noise_scale_batch_size}"
            text += f", {st.noise_scale_at_target:.4g} at the target ({where})"
        lines.append(text)
    if st.critical_batch_size is not None and st.min_steps is not None and st.min_examples is not None:
        lines.append(
            f"critical batch size {st.critical_batch_size:.4g} (McCandlish's model fitted to "
            f"{plural(int(st.reached.sum()), 'batch size')}: S_min {st.min_steps:.4g} steps, E_min "
            f"{st.min_examples:.4g} examples)"
        )
    else:
        lines.append("critical batch size: not fitted (needs 3 batch sizes that reach the target, and a trade-off)")
    return lines


def notes(st: StudyResult, wording: Wording = PYTHON) -> list[str]:
    """Warnings about the measurement: coarse resolution, learning rates at the grid's edge, a target never reached.

    ``wording`` names what to change (:data:`COMMAND_LINE` for ``gdjax study``).
    """
    out = []
    if not st.reached.any():
        out.append(
            f"no batch size reached the target {st.target:.6g} within {plural(st.epochs, 'epoch')}: "
            f"{wording.raise_epochs} (best final losses are shown)"
        )
    if st.target >= st.initial_loss:
        out.append(f"the target {st.target:.6g} is at or above the initial loss {st.initial_loss:.6g}: lower it")
    first = [b for b, e in zip(st.batch_sizes, st.epochs_to_target, strict=True) if e is not None and e <= 2]
    if first:
        out.append(
            f"{_sizes(first)} reached the target within 1 or 2 epochs; the resolution is one epoch (the loss is "
            f"measured after each), so {'its' if len(first) == 1 else 'their'} steps and examples are rough upper "
            "bounds: a lower target separates them"
        )
    for name, message in st.measure_errors.items():
        out.append(f"{name} could not be measured: {message}")
    for end, fix in (("largest", wording.widen_up), ("smallest", wording.widen_down)):
        at = [b for i, b in enumerate(st.batch_sizes) if edge(st, i) == end]
        if at:
            out.append(f"the best learning rate is the {end} tried at {_sizes(at)}: {fix}")
    return out


def summary(st: StudyResult, wording: Wording = PYTHON, trial: Mapping[str, float] | None = None) -> str:
    """The table (``*``: the recommended batch size), the diagnostics, the recommendation and the notes.

    ``wording``: how the notes name what to change (:data:`COMMAND_LINE` for ``gdjax study``). ``trial``: the
    ``wall_time`` and ``compile_time`` of a sweep run at the largest batch size before the study, to choose its
    target (``gdjax study`` without ``--target-loss``). Its run time is added to the sweeps' run time here; its
    compile time the caller has already counted in the largest batch size's ``compile_times`` (it compiled the
    program the study then reused) and its seconds in ``total_time``. Both are named beside the totals.
    """
    n, k, m = st.num_examples, len(st.batch_sizes), len(st.learning_rates)
    run, compiled = sum(st.wall_times), sum(st.compile_times)
    extra = ""
    if trial is not None:
        run += trial["wall_time"]
        extra = (
            f", the trial sweep that chose the target included ({trial['wall_time']:.3f} s run + "
            f"{trial['compile_time']:.2f} s compile, at batch size {st.batch_sizes[-1]}, whose program the study "
            "reused)"
        )
    lines = [
        f"study of {plural(k, 'batch size')} x {plural(m, 'learning rate')} on {plural(n, 'example')}: target loss "
        f"{st.target:.6g} (initial {st.initial_loss:.6g}), at most {plural(st.epochs, 'epoch')}",
        f"sweeps: {run:.3f} s run + {compiled:.2f} s compile{extra}"
        + (f"; diagnostics {sum(st.measure_times.values()):.2f} s" if st.measure_times else "")
        + f"; whole study {st.total_time:.2f} s",
        *_table(st),
        "(epochs, steps, examples: to the target, in whole epochs; seconds: the sweep's run time to get there; "
        "reached: learning rates that reached it)",
        *_diagnostics(st),
    ]
    i = st.recommended_index
    if i is not None:
        steps, examples = st.steps_to_target[i], st.examples_to_target[i]
        assert steps is not None and examples is not None
        lines.append(
            f"pick: batch size {st.batch_sizes[i]} with learning rate {st.best_learning_rates[i]:.4g} (the knee of the "
            f"trade-off, least steps x examples: {plural(steps, 'step')}, {plural(examples, 'example')})"
        )
    lines += [f"note: {text}" for text in notes(st, wording)]
    return "\n".join(lines)
