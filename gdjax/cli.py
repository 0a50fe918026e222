"""The ``gdjax`` command line.

* ``gdjax demo`` trains one linear regression by batch, stochastic and
  mini-batch gradient descent on built-in data, sweeps 64 learning rates,
  prints a table of what each run cost and writes the figures.
* ``gdjax sweep DATA.csv --target COLUMN`` trains a model on a numeric CSV
  file once per learning rate, all in one compiled program, prints the
  sweep's summary and writes ``results.csv``, ``summary.json``, ``sweep.png``
  and ``curves.png``.

Any bad input (a missing or malformed file, an option out of range, an
argument gdjax refuses) ends the command with one line ``gdjax: error: ...``
on standard error and exit status 2, never a traceback. :func:`main` returns
the exit status rather than exiting (argparse's own usage errors still raise
``SystemExit(2)``).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import platform
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

import gdjax as gd
from gdjax import __version__, csvdata

__all__ = ["main"]

_OPTIMIZERS = {"sgd": optax.sgd, "momentum": functools.partial(optax.sgd, momentum=0.9), "adam": optax.adam}
_MODELS = {"linear": "linear regression", "logistic": "logistic regression", "mlp": "MLP regression"}
_MAX_SEED = 2**32 - 1
_FIRST_COLUMNS = ("learning_rate", "final_loss", "diverged", "converged", "num_steps", "num_epochs")

_SWEEP_EPILOG = """\
The final loss is the mean loss over the whole data set after the last epoch: squared error / 2 for linear \
and mlp, log-loss for logistic. A member whose loss or parameters become non-finite is stopped and marked diverged.

examples:
  gdjax sweep data.csv --target y
  gdjax sweep data.csv --target label --model logistic --standardize --optimizer adam
  gdjax sweep data.csv --target y --model mlp --hidden 64 --batch-size full --epochs 500
"""


class _Formatter(argparse.HelpFormatter):
    """Wraps each line of text on its own, keeps indented lines (examples) as they are, shows defaults."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = text.splitlines()
        return "\n".join(
            s if s[:1].isspace() else textwrap.fill(s, width, initial_indent=indent, break_on_hyphens=False)
            for s in lines
        )

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if action.option_strings and default is not None and default is not False and default != argparse.SUPPRESS:
            text += " (default: %(default)s)"
        return text


class _UsageError(Exception):
    """A bad input, reported as one ``gdjax: error:`` line with exit status 2."""


def _batch_size(text: str) -> int | str:
    if text == "full":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'full', got {text!r}") from None


def _add_common(parser: argparse.ArgumentParser, out: str, seed_help: str) -> None:
    parser.add_argument("--seed", type=int, default=0, metavar="N", help=seed_help)
    parser.add_argument("--out", default=out, metavar="DIR", help="folder for the outputs, created if needed")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars on standard error")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gdjax",
        description="Gradient descent in JAX: whole training runs compiled, many learning rates at once.",
        epilog="examples:\n  gdjax demo\n  gdjax sweep data.csv --target y\n  gdjax sweep --help",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"gdjax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    demo = sub.add_parser(
        "demo",
        help="compare batch, stochastic and mini-batch gradient descent on built-in data",
        description="Train one linear regression (built-in data, 4096 examples, 16 features) by batch, stochastic and "
        "mini-batch gradient descent, sweep 64 learning rates, print a table and write the figures.",
        epilog="example:\n  gdjax demo --out figures --seed 1",
        formatter_class=_Formatter,
    )
    _add_common(demo, "gdjax-demo", "seed of the data, the initial parameters and the order")

    sw = sub.add_parser(
        "sweep",
        help="sweep learning rates of a model trained on a numeric CSV file",
        description="Train a model on a CSV file (a header row, then numbers only) once per learning rate, all in one "
        "compiled program; print the summary and write results.csv (one row per learning rate), summary.json "
        "(best learning rate, settings, versions), sweep.png and curves.png into --out.",
        epilog=_SWEEP_EPILOG,
        formatter_class=_Formatter,
    )
    sw.add_argument("data", metavar="DATA.csv", help="CSV file: a header row naming the columns, then numbers")
    sw.add_argument("--target", required=True, metavar="COLUMN", help="column to predict; every other is a feature")
    models_help = "linear: linear regression; logistic: binary classification (0/1 target); mlp: tanh MLP regression"
    sw.add_argument("--model", choices=list(_MODELS), default="linear", help=models_help)
    sw.add_argument("--hidden", type=int, default=32, metavar="N", help="hidden units of the mlp")
    sw.add_argument("--lr-min", type=float, default=1e-4, metavar="X", help="smallest learning rate")
    sw.add_argument("--lr-max", type=float, default=1.0, metavar="X", help="largest learning rate")
    sw.add_argument("--num-lrs", type=int, default=32, metavar="N", help="learning rates, log-spaced from min to max")
    sw.add_argument(
        "--batch-size",
        type=_batch_size,
        metavar="N|full",
        help="examples per step; full: every row, batch GD (default: 32, or every row if the file has fewer)",
    )
    sw.add_argument("--epochs", type=int, default=50, metavar="N", help="passes over the data")
    optimizers_help = "sgd: plain gradient descent; momentum: sgd with momentum 0.9; adam"
    sw.add_argument("--optimizer", choices=list(_OPTIMIZERS), default="sgd", help=optimizers_help)
    sw.add_argument(
        "--standardize",
        action="store_true",
        help="z-score every feature column (mean 0, std 1, float64 statistics) before training; the target is "
        "left as is, and a constant column becomes all zeros",
    )
    _add_common(sw, "gdjax-sweep", "seed of the data order and the mlp's initial weights")
    return parser


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise _UsageError(message)


def _check_options(args: argparse.Namespace) -> None:
    _check(0 <= args.seed <= _MAX_SEED, f"--seed must be between 0 and {_MAX_SEED}; got {args.seed}.")
    if args.command != "sweep":
        return
    batch = 1 if args.batch_size in ("full", None) else args.batch_size
    for flag, value in (("--num-lrs", args.num_lrs), ("--epochs", args.epochs), ("--batch-size", batch)):
        _check(value >= 1, f"{flag} must be at least 1; got {value}.")
    _check(args.hidden >= 1, f"--hidden must be at least 1; got {args.hidden}.")
    for flag, value in (("--lr-min", args.lr_min), ("--lr-max", args.lr_max)):
        _check(math.isfinite(value) and value > 0, f"{flag} must be a positive number; got {value:g}.")
    _check(args.lr_min < args.lr_max, f"--lr-min ({args.lr_min:g}) must be smaller than --lr-max ({args.lr_max:g}).")


def _out_dir(text: str) -> Path:
    out = Path(text)
    _check(not out.exists() or out.is_dir(), f"--out {out} is a file; name a folder (it is created if needed).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _UsageError(f"cannot create the output folder {out}: {exc.strerror or exc}.") from None
    return out


def _gdjax_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call into gdjax, turning its ValueError/TypeError (clear sentences) into usage errors."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        raise _UsageError(str(exc)) from exc


def _demo(args: argparse.Namespace) -> int:
    from gdjax.demo import format_table, run_demo, write_figures

    out = _out_dir(args.out)
    demo = _gdjax_call(run_demo, seed=args.seed, progress=not args.no_progress)
    n, d = demo.problem.data["x"].shape
    print(f"Linear regression, {n} examples, {d} features: the same problem three ways, then a sweep.\n")
    print(format_table(demo.problem, demo.variants, demo.sweep))
    print()
    for path in write_figures(demo, out):
        print(f"wrote {path}")
    return 0


def _smooth_window(steps: int) -> int | None:
    """The textbook's moving-average window (10, 100, 1000...) for a curve of ``steps`` points."""
    return None if steps <= 200 else 10 ** round(math.log10(steps / 20))


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _summary(args: argparse.Namespace, sw: gd.SweepResult, info: dict[str, Any]) -> dict[str, Any]:
    k = sw.best_index
    best = None
    if k is not None:
        best = {"learning_rate": float(sw.learning_rates[k]), "final_loss": float(sw.final_loss[k]), "member": k}
        if args.model != "mlp":
            p = jax.device_get(sw.best_params)
            best["weights"] = dict(zip(info["features"], np.asarray(p["w"]).tolist(), strict=True))
            best["bias"] = float(p["b"])
    settings = {key: v for key, v in vars(args).items() if key != "command"}
    py = platform.python_version()
    return {
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


def _write_results(out: Path, sw: gd.SweepResult, summary: dict[str, Any]) -> list[Path]:
    from gdjax import plot

    rows = sw.to_rows()
    names = [c for c in _FIRST_COLUMNS if c in rows[0]] + [c for c in rows[0] if c not in _FIRST_COLUMNS]
    paths = [out / "results.csv", out / "summary.json", out / "sweep.png", out / "curves.png"]
    with paths[0].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    paths[1].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot.sweep(sw).figure.savefig(paths[2])
    plot.curves(sw, x="epoch", smooth=_smooth_window(sw.losses.shape[1])).figure.savefig(paths[3])
    return paths


def _sweep(args: argparse.Namespace) -> int:
    path = Path(args.data)
    x, y, features = csvdata.load_csv(path, args.target, binary=args.model == "logistic")
    n, d = x.shape
    batch = {"full": n, None: min(n, 32)}.get(args.batch_size, args.batch_size)
    _check(batch <= n, f"--batch-size {batch} is larger than the {n} rows of {path}; use at most {n}, or 'full'.")
    info: dict[str, Any] = {"data": str(path.resolve()), "rows": n, "features": features}
    info["batch_size"] = "full" if args.batch_size == "full" else batch
    if args.standardize:
        x, mean, std = csvdata.standardize(x)
        info["standardization"] = {name: {"mean": m, "std": v} for name, m, v in zip(features, mean, std, strict=True)}
    out = _out_dir(args.out)
    data = {"x": x, "y": y}
    it = _gdjax_call(gd.full_batch, data) if args.batch_size == "full" else _gdjax_call(gd.minibatch, data, batch)
    mlp = functools.partial(gd.models.mlp, (args.hidden,), task="regression")
    model = {"linear": gd.models.linear, "logistic": gd.models.logistic, "mlp": mlp}[args.model]()
    lrs = np.geomspace(args.lr_min, args.lr_max, args.num_lrs)
    info["steps_per_epoch"] = it.num_batches
    shown = ", ".join(features[:6]) + (f", ... ({d} in all)" if d > 6 else "")
    print(f"gdjax sweep: {_MODELS[args.model]} of {args.target!r} on {_plural(d, 'feature')} ({shown}), ", end="")
    print(f"{_plural(n, 'row')} of {path}")
    print(
        f"{_plural(args.num_lrs, 'learning rate')} from {args.lr_min:g} to {args.lr_max:g}, {args.optimizer}, "
        f"batch size {batch} ({_plural(it.num_batches, 'step')} per epoch), {_plural(args.epochs, 'epoch')}\n"
    )
    sw = _gdjax_call(
        gd.sweep,
        model.loss,
        functools.partial(model.init, num_features=d),
        _OPTIMIZERS[args.optimizer],
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
    for written in _write_results(out, sw, _summary(args, sw, info)):
        print(f"wrote {written}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gdjax`` command.

    Args:
      argv: the arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
      The exit status: 0 on success, 2 for bad input (after printing one
      ``gdjax: error:`` line on standard error), 130 when interrupted.

    Raises:
      SystemExit: from argparse, for ``--help``, ``--version`` and malformed
        command lines.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        _check_options(args)
        return _demo(args) if args.command == "demo" else _sweep(args)
    except (_UsageError, csvdata.CsvError) as exc:
        print("gdjax: error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gdjax: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
