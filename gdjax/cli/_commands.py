"""The ``gdjax demo`` and ``gdjax sweep`` commands."""

from __future__ import annotations

import argparse
import functools
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

import gdjax as gd
from gdjax import __version__
from gdjax.cli import csvdata
from gdjax.cli._common import check, gdjax_call, plural
from gdjax.cli._files import SWEEP_FILES, json_ready, out_dir, write_error, write_results
from gdjax.cli._limits import check_size
from gdjax.cli._parser import MODELS, OPTIMIZERS


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
    args: argparse.Namespace, sw: gd.SweepResult, info: dict[str, Any], accuracy: float | None = None
) -> dict[str, Any]:
    """What summary.json holds; ``accuracy`` is the best member's on the training rows (classification only).

    A linear model's ``weights`` map each feature to its weight, or with
    softmax regression to its list of weights, one per class (in the order
    of ``settings.classes``), and ``bias`` is then a list too.
    """
    k, lrs = sw.best_index, sw.learning_rates
    best: dict[str, Any] | None = None
    if k is not None and lrs is not None:
        best = {"learning_rate": float(lrs[k]), "final_loss": float(sw.final_loss[k]), "member": k}
        if accuracy is not None:
            best["train_accuracy"] = accuracy
        if args.model != "mlp":
            p = jax.device_get(sw.best_params)
            best["weights"] = dict(zip(info["features"], np.asarray(p["w"]).tolist(), strict=True))
            best["bias"] = np.asarray(p["b"]).tolist()  # a float, or one per class
    settings = {key: v for key, v in vars(args).items() if key != "command"}
    py = platform.python_version()
    summary = {
        "best": best,
        "num_members": sw.num_members,
        "num_diverged": int(sw.diverged.sum()),
        "initial_loss": float(sw.initial_loss[0]),
        "wall_time_s": sw.wall_time,
        "compile_time_s": sw.compile_time,
        "settings": {**settings, **info},
        "versions": {"gdjax": __version__, **{m.__name__: m.__version__ for m in (jax, optax, np)}, "python": py},
        "jax_backend": jax.default_backend(),
        "devices": sw.devices,
    }
    return json_ready(summary)


def _shown_classes(classes: list[int]) -> str:
    """``'2 classes: 0, 1'``, or with many classes the first three and the last: ``'10 classes: 0, 1, 2, ..., 9'``."""
    shown = [str(c) for c in classes] if len(classes) <= 6 else [*map(str, classes[:3]), "...", str(classes[-1])]
    return f"{len(classes)} classes: {', '.join(shown)}"


def _correct(model: gd.models.Model, params: Any, data: dict[str, np.ndarray]) -> int:
    """How many of ``data``'s rows the model puts in the class of their label."""
    hits = jax.vmap(model.metrics["acc"], in_axes=(None, 0))(params, data)
    return int(np.count_nonzero(np.asarray(hits)))


def sweep(args: argparse.Namespace) -> int:
    path = Path(args.data)
    x, y, features, classes = csvdata.load_csv(path, args.target, labels=args.model == "logistic")
    n, d = x.shape
    num_classes = len(classes) if classes is not None else None
    batch = {"full": n, None: min(n, 32)}.get(args.batch_size, args.batch_size)
    check(batch <= n, f"--batch-size {batch} is larger than the {n} rows of {path}; use at most {n}, or 'full'.")
    info: dict[str, Any] = {"data": str(path.resolve()), "rows": n, "features": features}
    info["batch_size"] = "full" if args.batch_size == "full" else batch
    if classes is not None:
        info["num_classes"], info["classes"] = num_classes, classes  # model class k is the label classes[k]
    if args.standardize:
        x, mean, std = csvdata.standardize(x)
        info["standardization"] = {name: {"mean": m, "std": v} for name, m, v in zip(features, mean, std, strict=True)}
    data = {"x": x, "y": y}
    it = gdjax_call(gd.full_batch, data) if args.batch_size == "full" else gdjax_call(gd.minibatch, data, batch)
    outputs = num_classes if num_classes is not None and num_classes > 2 else 1  # softmax regression: one per class
    softmax = outputs > 1
    check_size(args, n, d, batch, it.num_batches, num_outputs=outputs)
    out = out_dir(args.out, SWEEP_FILES, [path])
    makers: dict[str, Callable[[], gd.models.Model]] = {
        "linear": gd.models.linear,
        "logistic": functools.partial(gd.models.logistic, num_classes),
        "mlp": functools.partial(gd.models.mlp, (args.hidden,), task="regression"),
    }
    model = makers[args.model]()
    lrs = np.geomspace(args.lr_min, args.lr_max, args.num_lrs)
    info["steps_per_epoch"] = it.num_batches
    shown = ", ".join(features[:6]) + (f", ... ({d} in all)" if d > 6 else "")
    what = f"{'softmax regression' if softmax else MODELS[args.model]} of {args.target!r}"
    if classes is not None:
        what += f" ({_shown_classes(classes)})"
    print(f"gdjax sweep: {what} on {plural(d, 'feature')} ({shown}), ", end="")
    print(f"{plural(n, 'row')} of {path}")
    print(
        f"{plural(args.num_lrs, 'learning rate')} from {args.lr_min:g} to {args.lr_max:g}, {args.optimizer}, "
        f"batch size {batch} ({plural(it.num_batches, 'step')} per epoch), {plural(args.epochs, 'epoch')}\n",
        flush=True,  # seen now, not after the compilation and training, when standard output is a pipe or file
    )
    sw = gdjax_call(
        gd.sweep,
        model.loss,
        functools.partial(model.init, num_features=d),
        OPTIMIZERS[args.optimizer],
        it,
        learning_rates=lrs,
        epochs=args.epochs,
        key=jax.random.key(args.seed),
        progress=not args.no_progress,
    )
    print(sw.summary())
    k = sw.best_index
    accuracy = None
    if k is not None and "acc" in model.metrics:
        correct = _correct(model, sw.best_params, data)
        accuracy = correct / n
        print(f"training accuracy of the best: {accuracy:.4f} ({correct} of {plural(n, 'row')} classified right)")
    if k is not None and args.num_lrs > 2 and k in (0, args.num_lrs - 1):
        end, flag = ("smallest", "--lr-min") if k == 0 else ("largest", "--lr-max")
        print(f"note: the best learning rate is the {end} one tried; widen the range with {flag}.")
    print()
    try:
        for written in write_results(out, sw, summary_json(args, sw, info, accuracy)):
            print(f"wrote {written}")
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        raise write_error(exc, out) from None
    return 0
