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


def summary_json(args: argparse.Namespace, sw: gd.SweepResult, info: dict[str, Any]) -> dict[str, Any]:
    k, lrs = sw.best_index, sw.learning_rates
    best: dict[str, Any] | None = None
    if k is not None and lrs is not None:
        best = {"learning_rate": float(lrs[k]), "final_loss": float(sw.final_loss[k]), "member": k}
        if args.model != "mlp":
            p = jax.device_get(sw.best_params)
            best["weights"] = dict(zip(info["features"], np.asarray(p["w"]).tolist(), strict=True))
            best["bias"] = float(p["b"])
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


def sweep(args: argparse.Namespace) -> int:
    path = Path(args.data)
    x, y, features = csvdata.load_csv(path, args.target, binary=args.model == "logistic")
    n, d = x.shape
    batch = {"full": n, None: min(n, 32)}.get(args.batch_size, args.batch_size)
    check(batch <= n, f"--batch-size {batch} is larger than the {n} rows of {path}; use at most {n}, or 'full'.")
    info: dict[str, Any] = {"data": str(path.resolve()), "rows": n, "features": features}
    info["batch_size"] = "full" if args.batch_size == "full" else batch
    if args.standardize:
        x, mean, std = csvdata.standardize(x)
        info["standardization"] = {name: {"mean": m, "std": v} for name, m, v in zip(features, mean, std, strict=True)}
    data = {"x": x, "y": y}
    it = gdjax_call(gd.full_batch, data) if args.batch_size == "full" else gdjax_call(gd.minibatch, data, batch)
    check_size(args, n, d, batch, it.num_batches)
    out = out_dir(args.out, SWEEP_FILES, [path])
    makers: dict[str, Callable[[], gd.models.Model]] = {
        "linear": gd.models.linear,
        "logistic": gd.models.logistic,
        "mlp": functools.partial(gd.models.mlp, (args.hidden,), task="regression"),
    }
    model = makers[args.model]()
    lrs = np.geomspace(args.lr_min, args.lr_max, args.num_lrs)
    info["steps_per_epoch"] = it.num_batches
    shown = ", ".join(features[:6]) + (f", ... ({d} in all)" if d > 6 else "")
    print(f"gdjax sweep: {MODELS[args.model]} of {args.target!r} on {plural(d, 'feature')} ({shown}), ", end="")
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
    if k is not None and args.num_lrs > 2 and k in (0, args.num_lrs - 1):
        end, flag = ("smallest", "--lr-min") if k == 0 else ("largest", "--lr-max")
        print(f"note: the best learning rate is the {end} one tried; widen the range with {flag}.")
    print()
    try:
        for written in write_results(out, sw, summary_json(args, sw, info)):
            print(f"wrote {written}")
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        raise write_error(exc, out) from None
    return 0
