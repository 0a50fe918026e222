"""The ``gdjax study`` command: the batch size and learning rate of a model on a CSV file, measured.

It reads the file as ``gdjax sweep`` does (the same data cache, model and
optimizer options, checks and output folder rules: :mod:`gdjax.cli._sweepdata`,
:func:`gdjax.cli._limits.check_size`, :func:`gdjax.cli._files.out_dir`), chooses
the learning rates as ``gdjax sweep`` does (:mod:`gdjax.cli._lr_range`), then
runs :func:`gdjax.study` over ``--batch-sizes`` and writes ``study.csv`` (one
row per batch size), ``summary.json`` and ``study.png``.

Without ``--target-loss`` the target is chosen by a first (trial) sweep at the
largest batch size (its compiled program is the one the study runs there, so it
costs one run, no compilation): the lowest training loss any learning rate
reached there after 75% of ``--epochs``. The largest batch is the slowest per
example, so it takes about 75% of ``--epochs`` and every smaller batch size
fewer, as many as the trade-off saves: more ``--epochs``, finer resolution (the
study's resolution is one epoch). The trial sweep's seconds are the command's
too: its compile time is counted in the largest batch size's ``compile_time``
(study.csv, summary.json), its run time in the totals printed and in
summary.json's ``wall_time_s`` and ``total_time_s``, and both are in
summary.json's ``target_loss.trial_sweep``.

A figure that cannot be drawn is one ``gdjax: error:`` line and exit status 1,
after study.csv and summary.json are written.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

import gdjax as gd
from gdjax import _study_report
from gdjax._study_checks import check_target
from gdjax._study_measure import whole
from gdjax._types import plural
from gdjax.cli import _lr_range
from gdjax.cli._commands import _model, environment
from gdjax.cli._common import UsageError, check, gdjax_call
from gdjax.cli._files import json_ready, out_dir, write_error
from gdjax.cli._limits import check_size
from gdjax.cli._parser import LR_MAX, LR_MIN, MODELS, OPTIMIZERS, check_learning_rates
from gdjax.cli._sweepdata import find, load

__all__ = ["STUDY_FILES", "FigureError", "parse_batch_sizes", "study"]

STUDY_FILES = ("study.csv", "summary.json", "study.png")
#: The automatic target: the lowest loss the largest batch size reached after this fraction of ``--epochs``.
TARGET_FRACTION = 0.75


STUDY_EPILOG = """\
For each batch size, every learning rate is trained at once (one compiled program per batch size, as gdjax sweep \
does), each stopping once its training loss, measured after every epoch, is at most the target loss. The best \
learning rate of a batch size is the one that got there in the fewest epochs; steps = epochs x steps per epoch, \
examples = epochs x rows. The resolution is one epoch: choose a target that takes several epochs even at the \
smallest batch size.

Without --target-loss the target is chosen by a first sweep at the largest batch size (the program the study runs \
there, so nothing more is compiled): the lowest training loss any learning rate reached there after 75% of \
--epochs. The largest batch is the slowest per example, so it takes about 75% of --epochs to reach it and smaller \
batch sizes fewer, as many as the trade-off saves: more --epochs give a finer resolution. That trial sweep's \
compile time is counted in the largest batch size's compile_time, its run time in the totals.

Without --lr-min and --lr-max the learning rates are chosen from the sharpness, as for gdjax sweep (see gdjax \
sweep --help).

The study also measures the sharpness and the simple noise scale B_simple = tr(Sigma)/|G|^2 (McCandlish et al. \
2018) at the initial parameters and where the target was reached, and fits their model S = S_min (1 + B_crit/B), \
E = E_min (1 + B/B_crit) to the measured steps and examples: past the critical batch size B_crit, larger batches \
stop saving steps. The batch size to pick is the knee, the one with the least steps x examples. It writes study.csv \
(one row per batch size), summary.json (the pick, the target and how it was chosen, noise scale, sharpness, \
critical batch size, every setting, compile and run times per batch size) and study.png into --out.

examples:
  gdjax study data.csv --target y
  gdjax study data.csv --target label --model logistic --standardize --batch-sizes 1,4,16,64,256
  gdjax study data.csv --target y --target-loss 0.15 --epochs 100 --num-lrs 24
"""


def add_parser(
    sub: Any, formatter: type[argparse.HelpFormatter], add_common: Any, models_help: str, optimizers_help: str
) -> None:
    """The ``study`` subcommand's options (``gdjax.cli._parser.build_parser`` calls this)."""
    st = sub.add_parser(
        "study",
        help="measure the best batch size and learning rate of a model on a numeric CSV file",
        description="For each batch size, train a model on a CSV file (a header row, then numbers only) once per "
        "learning rate, all at once, until the training loss reaches a target; print the steps, examples and "
        "seconds each batch size took with its best learning rate, the noise scale, the critical batch size and "
        "the batch size to pick; write study.csv, summary.json and study.png into --out.",
        epilog=STUDY_EPILOG,
        formatter_class=formatter,
    )
    st.add_argument("data", metavar="DATA.csv", help="CSV file: a header row naming the columns, then numbers")
    st.add_argument("--target", required=True, metavar="COLUMN", help="column to predict; every other is a feature")
    st.add_argument("--model", choices=list(MODELS), default="linear", help=models_help)
    st.add_argument("--hidden", type=int, default=32, metavar="N", help="hidden units of the mlp")
    st.add_argument(
        "--batch-sizes",
        metavar="B1,B2,...",
        help="batch sizes to study, whole numbers separated by commas (default: the powers of two up to the rows, "
        "and the rows)",
    )
    st.add_argument(
        "--target-loss",
        type=float,
        metavar="X",
        help="the training loss to reach (default: chosen by a first sweep at the largest batch size, see below)",
    )
    auto = "default: chosen from the sharpness at the initial parameters, as gdjax sweep does; 1e-4 to 1 for adam"
    st.add_argument("--lr-min", type=float, metavar="X", help=f"smallest learning rate ({auto})")
    st.add_argument("--lr-max", type=float, metavar="X", help=f"largest learning rate ({auto})")
    st.add_argument("--num-lrs", type=int, default=16, metavar="N", help="learning rates, log-spaced from min to max")
    st.add_argument("--epochs", type=int, default=50, metavar="N", help="the most passes over the data per run")
    st.add_argument("--optimizer", choices=list(OPTIMIZERS), default="sgd", help=optimizers_help)
    st.add_argument(
        "--standardize", action="store_true", help="z-score every feature column before training, as gdjax sweep does"
    )
    add_common(st, "gdjax-study", "seed of the data order and the mlp's initial weights")
    st.set_defaults(validation=None, batch_size=None)  # what the shared data loading reads: no split


def parse_batch_sizes(text: str | None, rows: int, path: Path) -> list[int]:
    """``--batch-sizes`` (``"1,4,16"``) as sorted distinct whole numbers in ``[1, rows]``.

    None: the powers of two below ``rows``, and ``rows``.
    """
    if text is None:
        return [1 << k for k in range(rows.bit_length()) if 1 << k < rows] + [rows]
    example = "such as --batch-sizes 1,4,16,64"
    parts = [p.strip() for p in text.split(",")]
    check(
        all(p.isascii() and p.isdigit() for p in parts),
        f"--batch-sizes must be whole numbers separated by commas, {example}; got {text!r}.",
    )
    sizes = [int(p) for p in parts]
    check(min(sizes) >= 1, f"--batch-sizes must be at least 1; got {min(sizes)} in {text!r}.")
    twice = sorted({b for b in sizes if sizes.count(b) > 1})
    check(not twice, f"--batch-sizes lists {', '.join(map(str, twice))} more than once; give each batch size once.")
    big = [b for b in sizes if b > rows]
    check(
        not big,
        f"--batch-sizes {', '.join(map(str, big))} {'is' if len(big) == 1 else 'are'} larger than the {rows} rows of "
        f"{path}; use batch sizes up to {rows}.",
    )
    return sorted(sizes)


def _check_options(args: argparse.Namespace) -> None:
    """What ``gdjax sweep``'s option checks cover, for the study's options (before the data is read)."""
    for flag, value in (("--num-lrs", args.num_lrs), ("--epochs", args.epochs), ("--hidden", args.hidden)):
        check(value >= 1, f"{flag} must be at least 1; got {value}.")
    if args.target_loss is not None:  # finite, >= 0 and within float32, the loss's dtype, as gd.study checks it
        gdjax_call(check_target, args.target_loss, "--target-loss")
    if args.lr_min is None and args.lr_max is None:
        return  # from the sharpness, as gdjax sweep does
    args.lr_min = LR_MIN if args.lr_min is None else args.lr_min
    args.lr_max = LR_MAX if args.lr_max is None else args.lr_max
    check_learning_rates(args.lr_min, args.lr_max)


def _target(
    args: argparse.Namespace, model: gd.models.Model, params: Any, it: gd.DataIterator, lrs: np.ndarray
) -> dict[str, Any]:
    """summary.json's ``target_loss``: the given one, or the automatic one from a first sweep at batch size ``it``'s.

    The automatic one carries ``trial_sweep``: that sweep's batch size and seconds (compile, run, and the whole
    call), which :func:`study` adds to the study's.
    """
    if args.target_loss is not None:
        return {"value": args.target_loss, "source": "given", "reason": "--target-loss"}
    start_time = time.perf_counter()
    sw = gdjax_call(
        gd.sweep,
        model.loss,
        params,
        OPTIMIZERS[args.optimizer],
        it,
        learning_rates=lrs,
        epochs=args.epochs,  # all of them, so that the program is the study's (its history's size follows the epochs)
        key=jax.random.key(args.seed),
        progress=not args.no_progress,
    )
    trial = {
        "batch_size": it.batch_size,
        "compile_time_s": sw.compile_time,
        "wall_time_s": sw.wall_time,
        "total_time_s": time.perf_counter() - start_time,
        "counted": "its compile time in this batch size's compile_time (the study reused its program); its run "
        "time in wall_time_s; its seconds in total_time_s",
    }
    epoch = max(1, math.ceil(TARGET_FRACTION * args.epochs))
    losses = np.where(sw.diverged, np.nan, np.asarray(sw.epoch_losses, np.float64)[:, epoch - 1])
    start = float(sw.initial_loss[0])
    if not np.isfinite(losses).any() or not np.nanmin(losses) < start:
        raise UsageError(
            f"cannot choose a target loss: no learning rate lowered the training loss at batch size {it.batch_size} "
            f"in {plural(epoch, 'epoch')} (initial loss {start:.6g}); pass --target-loss, more --epochs or "
            "other learning rates (--lr-min, --lr-max)."
        )
    k = int(np.nanargmin(losses))
    value = float(losses[k])
    reason = (
        f"auto: the lowest training loss at batch size {it.batch_size} after {plural(epoch, 'epoch')} "
        f"({TARGET_FRACTION:.0%} of --epochs; learning rate {float(sw.hyperparams['learning_rate'][k]):.4g}); "
        "pass --target-loss to set it"
    )
    return {
        "value": value,
        "source": "auto",
        "reason": reason,
        "initial_loss": start,
        "pilot_epoch": epoch,
        "trial_sweep": trial,
    }


def _header(args: argparse.Namespace, path: Path, info: dict[str, Any], sizes: list[int]) -> str:
    features, n = info["features"], info["rows"]
    softmax = info.get("num_classes", 0) > 2
    what = f"{'softmax regression' if softmax else MODELS[args.model]} of {args.target!r}"
    shown = ("batch size " if len(sizes) == 1 else "batch sizes ") + ", ".join(map(str, sizes))
    return (
        f"gdjax study: {what} on {plural(len(features), 'feature')}, {plural(n, 'row')} of {path}\n"
        f"{shown}; {plural(args.num_lrs, 'learning rate')} each, {args.optimizer}, at most "
        f"{plural(args.epochs, 'epoch')}"
    )


def _summary(
    args: argparse.Namespace, st: gd.StudyResult, info: dict[str, Any], target: dict[str, Any]
) -> dict[str, Any]:
    """What summary.json holds: the recommendation, the target, the diagnostics, per batch size, settings, versions."""
    i = st.recommended_index
    pick = None
    if i is not None:
        pick = {
            "batch_size": st.batch_sizes[i],
            "learning_rate": st.best_learning_rates[i],
            "epochs_to_target": st.epochs_to_target[i],
            "steps_to_target": st.steps_to_target[i],
            "examples_to_target": st.examples_to_target[i],
            "seconds_to_target": st.seconds_to_target[i],
            "chosen_by": "the knee of the measured trade-off: least steps x examples to the target",
        }
    settings = {key: v for key, v in vars(args).items() if key not in ("command", "validation", "batch_size")}
    summary = {
        "recommended": pick,
        "target_loss": target,
        "initial_loss": st.initial_loss,
        "noise_scale": st.noise_scale,
        "noise_scale_at_target": st.noise_scale_at_target,
        "noise_scale_batch_size": st.noise_scale_batch_size,
        "sharpness": st.sharpness,
        "critical_batch_size": st.critical_batch_size,
        "min_steps": st.min_steps,
        "min_examples": st.min_examples,
        "batch_sizes": st.to_rows(),
        "compile_time_s": sum(st.compile_times),  # the trial sweep's included (in the largest batch size's)
        "wall_time_s": sum(st.wall_times) + _trial(target).get("wall_time_s", 0.0),
        "measure_times_s": st.measure_times,
        "total_time_s": st.total_time,
        "settings": {**settings, **info},
        **environment(),
    }
    return json_ready(summary)


def _trial(target: dict[str, Any]) -> dict[str, Any]:
    """The trial sweep that chose the target (:func:`_target`), or ``{}`` for a given target."""
    trial: dict[str, Any] = target.get("trial_sweep", {})
    return trial


def _with_trial(st: gd.StudyResult, target: dict[str, Any]) -> gd.StudyResult:
    """The study with the trial sweep's seconds: its compile in the largest batch size's, its call in the total.

    The trial sweep compiled the program the study then ran at that batch size (which read 0 compile seconds).
    """
    trial = _trial(target)
    if not trial:
        return st
    compile_times = [*st.compile_times[:-1], st.compile_times[-1] + trial["compile_time_s"]]
    return dataclasses.replace(st, compile_times=compile_times, total_time=st.total_time + trial["total_time_s"])


class FigureError(Exception):
    """study.png could not be drawn (after study.csv and summary.json were written): one error line, exit 1."""


def _write(out: Path, st: gd.StudyResult, summary: dict[str, Any]) -> Iterator[Path]:
    """Write the three outputs, yielding each path once written (``OSError`` as the file system raises it).

    A figure that fails otherwise raises :class:`FigureError`: the command's results are in the other two files.
    """
    from gdjax import plot

    paths = [out / name for name in STUDY_FILES]
    rows = st.to_rows()
    with paths[0].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    yield paths[0]
    paths[1].write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    yield paths[1]
    try:
        plot.save(plot.study(st), paths[2])
    except OSError:
        raise
    except Exception as exc:  # a bug drawing the figure: say so in one line, the numbers are written
        raise FigureError(
            f"could not draw {paths[2]} ({type(exc).__name__}: {exc}); the results are in {paths[0]} and {paths[1]}."
        ) from exc
    yield paths[2]


def study(args: argparse.Namespace) -> int:
    _check_options(args)
    path = Path(args.data)
    info: dict[str, Any] = {}
    found = find(args, path, info)
    n, d = info["rows"], len(info["features"])
    sizes = parse_batch_sizes(args.batch_sizes, n, path)
    info["batch_sizes"] = sizes
    classes = info.get("num_classes")
    outputs = classes if classes is not None and classes > 2 else 1
    for b in (sizes[0], sizes[-1]):  # the most steps (the loss history), the largest batch (the activations)
        check_size(args, n, d, b, -(-n // b), num_outputs=outputs)
    out = out_dir(args.out, STUDY_FILES, [path])
    print(_header(args, path, info, sizes), flush=True)
    data = load(args, out, found, info)
    model = _model(args, classes)
    key = jax.random.key(args.seed)
    params = model.init(gd.seed_keys(key, 0)[0], num_features=d)  # every run starts from the same parameters
    largest = gdjax_call(gd.minibatch, data.train, sizes[-1])  # the study's own iterator at that batch size
    info["on_device"] = largest.on_device
    info["lr_range"] = _lr_range.choose(args, model.loss, params, whole(largest))
    print(_lr_range.line(info["lr_range"]))
    lrs = np.geomspace(args.lr_min, args.lr_max, args.num_lrs)
    target = _target(args, model, params, largest, lrs)
    print(f"target loss: {target['value']:.6g} ({target['reason']})\n", flush=True)
    st = gdjax_call(
        gd.study,
        model.loss,
        params,
        OPTIMIZERS[args.optimizer],
        data.train,
        batch_sizes=sizes,
        learning_rates=lrs,
        target=target["value"],
        epochs=args.epochs,
        key=key,
        progress=not args.no_progress,
    )
    st = _with_trial(st, target)
    trial = _trial(target)
    seconds = {"wall_time": trial["wall_time_s"], "compile_time": trial["compile_time_s"]} if trial else None
    print(_study_report.summary(st, _study_report.COMMAND_LINE, seconds))
    print()
    try:
        for written in _write(out, st, _summary(args, st, info, target)):
            print(f"wrote {written}")
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        raise write_error(exc, out) from None
    except FigureError as exc:
        print(f"gdjax: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 0
