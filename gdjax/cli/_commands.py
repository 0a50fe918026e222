"""The ``gdjax demo`` and ``gdjax sweep`` commands."""

from __future__ import annotations

import argparse
import functools
import math
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

import gdjax as gd
from gdjax import __version__
from gdjax._types import plural
from gdjax.cli import _lr_range
from gdjax.cli._common import check, gdjax_call
from gdjax.cli._files import SWEEP_FILES, json_ready, out_dir, write_error, write_results
from gdjax.cli._limits import check_size
from gdjax.cli._parser import MODELS, OPTIMIZERS
from gdjax.cli._sweepdata import Data, find, load

CHOSEN_BY = {"loss": "training loss", "eval_loss": "validation loss"}  # what the monitored value is, in plain words


def demo(args: argparse.Namespace) -> int:
    from gdjax.demo import format_table, run_demo, write_figures

    out = out_dir(args.out)
    demo = gdjax_call(run_demo, seed=args.seed, progress=not args.no_progress)
    n, d = demo.problem.data["x"].shape
    print(f"Linear regression, {n} examples, {d} features: the same problem three ways, then a sweep.\n")
    print(format_table(demo.problem, demo.variants, demo.sweep))
    print()
    try:
        paths = write_figures(demo, out)
    except OSError as exc:
        raise write_error(exc, out) from None
    for path in paths:
        print(f"wrote {path}")
    return 0


def summary_json(
    args: argparse.Namespace,
    sw: gd.SweepResult,
    info: dict[str, Any],
    columns: dict[str, list[float]] | None = None,
    split: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What summary.json holds.

    ``columns`` are the per-member columns of results.csv beyond the
    sweep's own (:func:`evaluation_columns`): the best member's values are
    copied into ``best``. ``split`` describes the held-out rows (None:
    no split). A linear model's ``weights`` map each feature to its weight,
    or with softmax regression to its list of weights, one per class (in the
    order of ``settings.classes``), and ``bias`` is then a list too.
    """
    k, lrs = sw.best_index, sw.learning_rates
    best: dict[str, Any] | None = None
    if k is not None and lrs is not None:
        best = {"learning_rate": float(lrs[k]), "final_loss": float(sw.final_loss[k]), "member": k}
        best["chosen_by"] = CHOSEN_BY.get(sw.monitor, sw.monitor)
        best.update({name: values[k] for name, values in (columns or {}).items()})
        if args.model != "mlp":
            p = jax.device_get(sw.best_params)
            best["weights"] = dict(zip(info["features"], np.asarray(p["w"]).tolist(), strict=True))
            best["bias"] = np.asarray(p["b"]).tolist()  # a float, or one per class
    settings = {key: v for key, v in vars(args).items() if key != "command"}
    summary = {
        "best": best,
        "monitor": sw.monitor,
        "mode": sw.mode,
        "split": split,
        "num_members": sw.num_members,
        "num_diverged": int(sw.diverged.sum()),
        "initial_loss": float(sw.initial_loss[0]),
        "wall_time_s": sw.wall_time,
        "compile_time_s": sw.compile_time,
        "settings": {**settings, **info},
        **environment(),
        "devices": sw.devices,
    }
    return json_ready(summary)


def environment() -> dict[str, Any]:
    """summary.json's ``versions`` (gdjax, JAX, optax, NumPy, Python) and ``jax_backend``, for every command."""
    py = platform.python_version()
    return {
        "versions": {"gdjax": __version__, **{m.__name__: m.__version__ for m in (jax, optax, np)}, "python": py},
        "jax_backend": jax.default_backend(),
    }


def _hits(rate: float, rows: int) -> int:
    """The whole number of rows behind an accuracy computed in float32 over ``rows`` rows (exact below 2**23 rows)."""
    return round(rate * rows)


def _accuracy(rate: Any, rows: int) -> float:
    """An accuracy computed in the compiled run (float32), as ``hits / rows`` in float64; NaN stays NaN."""
    rate = float(rate)
    return _hits(rate, rows) / rows if math.isfinite(rate) else rate


def evaluation_columns(sw: gd.SweepResult, train_rows: int, validation_rows: int) -> dict[str, list[float]]:
    """results.csv's columns beyond the sweep's own, one value per member, from ``sw.final_metrics``.

    ``validation_loss`` (with a split), ``train_accuracy`` and
    ``validation_accuracy`` (classification), each for the final parameters.
    """
    final = sw.final_metrics
    columns: dict[str, list[float]] = {}
    if "eval_loss" in final:
        columns["validation_loss"] = [float(v) for v in final["eval_loss"]]
    accuracies = {"acc": ("train_accuracy", train_rows), "eval_acc": ("validation_accuracy", validation_rows)}
    for name, (column, rows) in accuracies.items():
        if name in final:
            columns[column] = [_accuracy(v, rows) for v in final[name]]
    return columns


def _shown_classes(classes: list[int]) -> str:
    """``'2 classes: 0, 1'``, or with many classes the first three and the last: ``'10 classes: 0, 1, 2, ..., 9'``."""
    shown = [str(c) for c in classes] if len(classes) <= 6 else [*map(str, classes[:3]), "...", str(classes[-1])]
    return f"{len(classes)} classes: {', '.join(shown)}"


def _batch(args: argparse.Namespace, path: Path, n: int, held_out: int) -> int:
    """The batch size: --batch-size, 'full' (every training row), or by default 32 or every training row if fewer."""
    batch: int = {"full": n, None: min(n, 32)}.get(args.batch_size, args.batch_size)
    rows = f"the {n} rows of {path}"
    if held_out:
        rows = f"the {n} training rows ({path} has {n + held_out}; --validation holds out {held_out})"
    check(batch <= n, f"--batch-size {batch} is larger than {rows}; use at most {n}, or 'full'.")
    return batch


def _header(
    args: argparse.Namespace, path: Path, info: dict[str, Any], split: dict[str, Any] | None, batch: int, steps: int
) -> str:
    """The lines printed before training: the task, the data, the split and the sweep."""
    features, d, n = info["features"], len(info["features"]), info["rows"]
    softmax = info.get("num_classes", 0) > 2
    shown = ", ".join(features[:6]) + (f", ... ({d} in all)" if d > 6 else "")
    what = f"{'softmax regression' if softmax else MODELS[args.model]} of {args.target!r}"
    if "classes" in info:
        what += f" ({_shown_classes(info['classes'])})"
    lines = [f"gdjax sweep: {what} on {plural(d, 'feature')} ({shown}), {plural(n, 'row')} of {path}"]
    if split is not None:
        held, kept = split["validation_rows"], split["train_rows"]
        lines.append(
            f"validation: {held} of the {n} rows held out (--validation {args.validation:g}, drawn with --seed "
            f"{args.seed}), training on the other {kept}; the best learning rate is chosen by validation loss"
        )
    lrs = "(range chosen below)" if args.lr_min is None else f"from {args.lr_min:g} to {args.lr_max:g}"
    lines.append(
        f"{plural(args.num_lrs, 'learning rate')} {lrs}, {args.optimizer}, "
        f"batch size {batch} ({plural(steps, 'step')} per epoch), {plural(args.epochs, 'epoch')}"
    )
    return "\n".join(lines)


def _chosen(sw: gd.SweepResult, columns: dict[str, list[float]], data: Data) -> list[str]:
    """The lines printed after the summary table: which member was chosen, by what, and its accuracy."""
    k = sw.best_index
    if k is None:
        return []
    train = len(data.train["y"])
    if data.validation is None:
        if "train_accuracy" not in columns:
            return []
        rate = columns["train_accuracy"][k]
        correct = _hits(rate, train)
        return [f"training accuracy of the best: {rate:.4f} ({correct} of {plural(train, 'row')} classified right)"]
    held = len(data.validation["y"])
    lr = float(sw.hyperparams["learning_rate"][k])
    lines = [
        f"chosen by validation loss: learning rate {lr:.6g} (member {k}) has the lowest eval_loss, the mean loss on "
        f"the {held} held-out rows (final loss is the loss on the {train} training rows)"
    ]
    if "train_accuracy" in columns:
        rate, held_rate = columns["train_accuracy"][k], columns["validation_accuracy"][k]
        lines.append(
            f"accuracy of the chosen member: validation {held_rate:.4f} ({_hits(held_rate, held)} of {held} "
            f"held-out rows classified right), training {rate:.4f} ({_hits(rate, train)} of {train})"
        )
    return lines


def _iterator(args: argparse.Namespace, data: Data, batch: int) -> gd.DataIterator:
    """The batches of the training rows, from the memory-mapped arrays (placed when they fit, else streamed)."""
    if args.batch_size == "full":
        return gdjax_call(gd.full_batch, data.train)
    return gdjax_call(gd.minibatch, data.train, batch)


def _model(args: argparse.Namespace, num_classes: int | None) -> gd.models.Model:
    makers: dict[str, Callable[[], gd.models.Model]] = {
        "linear": gd.models.linear,
        "logistic": functools.partial(gd.models.logistic, num_classes),
        "mlp": functools.partial(gd.models.mlp, (args.hidden,), task="regression"),
    }
    return makers[args.model]()


def _prepare(args: argparse.Namespace, path: Path, info: dict[str, Any]) -> tuple[Path, Data, gd.DataIterator]:
    """Check all that can be checked, then write or reuse the data cache: the output folder, the data, the batches."""
    found = find(args, path, info)
    n = info["rows"] if found.rows is None else len(found.rows.train)
    d, classes = len(info["features"]), info.get("num_classes")
    held = 0 if found.rows is None else len(found.rows.validation)
    batch = _batch(args, path, n, held)
    info["batch_size"] = "full" if args.batch_size == "full" else batch
    steps = 1 if args.batch_size == "full" else -(-n // batch)
    outputs = classes if classes is not None and classes > 2 else 1  # softmax regression: one per class
    check_size(args, info["rows"], d, batch, steps, num_outputs=outputs)
    out = out_dir(args.out, SWEEP_FILES, [path])
    info["steps_per_epoch"] = steps
    print(_header(args, path, info, found.split, batch, steps), flush=True)  # seen now, not after the training
    data = load(args, out, found, info)
    it = _iterator(args, data, batch)
    info["on_device"] = it.on_device  # summary.json's settings say where the data was
    where = "placed on the device" if it.on_device else "streamed from the host (larger than half the free memory)"
    print(f"data: {where}")
    print()
    return out, data, it


def sweep(args: argparse.Namespace) -> int:
    path = Path(args.data)
    info: dict[str, Any] = {}
    out, data, it = _prepare(args, path, info)
    n, d = data.train["x"].shape
    held = 0 if data.validation is None else len(data.validation["y"])
    model = _model(args, info.get("num_classes"))
    evaluation: dict[str, Any] = {"metrics": model.metrics or None}  # accuracy, computed in the compiled run
    if data.validation is not None:
        evaluation.update(eval_data=data.validation, monitor="eval_loss", mode="min")
    key = jax.random.key(args.seed)
    params = model.init(gd.seed_keys(key, 0)[0], num_features=d)  # every member starts from the same parameters
    info["lr_range"] = _lr_range.choose(args, model.loss, params, it)
    if info["lr_range"]["source"] != "given":
        print(_lr_range.line(info["lr_range"]))
        print()
    sw = gdjax_call(
        gd.sweep,
        model.loss,
        params,
        OPTIMIZERS[args.optimizer],
        it,
        learning_rates=np.geomspace(args.lr_min, args.lr_max, args.num_lrs),
        epochs=args.epochs,
        key=key,
        progress=not args.no_progress,
        **evaluation,
    )
    print(sw.summary())
    columns = evaluation_columns(sw, n, held)
    for line in _chosen(sw, columns, data):
        print(line)
    k = sw.best_index
    if k is not None and args.num_lrs > 2 and k in (0, args.num_lrs - 1):
        end, flag = ("smallest", "--lr-min") if k == 0 else ("largest", "--lr-max")
        print(f"note: the best learning rate is the {end} one tried; widen the range with {flag}.")
    print()
    try:
        for written in write_results(out, sw, summary_json(args, sw, info, columns, data.split), columns):
            print(f"wrote {written}")
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        raise write_error(exc, out) from None
    return 0
