"""The ``gdjax`` command line.

* ``gdjax demo`` trains one linear regression by batch, stochastic and
  mini-batch gradient descent on built-in data, sweeps 64 learning rates,
  prints a table of what each run cost and writes the figures.
* ``gdjax sweep DATA.csv --target COLUMN`` trains a model on a numeric CSV
  file once per learning rate, all in one compiled program, prints the
  sweep's summary and writes ``results.csv``, ``summary.json``, ``sweep.png``
  and ``curves.png``.

Any bad input (a missing or malformed file, an option out of range, an
argument gdjax refuses, an output that cannot be written) ends the command
with one line ``gdjax: error: ...`` on standard error and exit status 2, never
a traceback. What can be checked is checked before anything is compiled: the
options (learning rates representable in float32, fewer than 2**31 steps, the
estimated memory against half of this machine's memory), the data file, and
the output folder (created, probed with a temporary file, no output that is a
folder or the input itself). :func:`main` returns the exit status rather than
exiting (argparse's own usage errors still raise ``SystemExit(2)``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import json
import math
import os
import platform
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator, Sequence
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
_SWEEP_FILES = ("results.csv", "summary.json", "sweep.png", "curves.png")
_F32 = np.finfo(np.float32)
_MAX_STEPS = 2**31  # steps are counted in int32 on the device
_MEMORY_FRACTION = 0.5  # of physical memory: the most a sweep may plan to use
_FALLBACK_MEMORY = 16 * 2**30  # when the machine's memory cannot be read
_OPTIMIZER_COPIES = {"sgd": 0, "momentum": 1, "adam": 2}  # optimizer state, in copies of the parameters
_ROW_BYTES = 2048  # a member's row of the results table, as Python objects

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
    tiny, huge = float(_F32.tiny), float(_F32.max)
    for flag, value in (("--lr-min", args.lr_min), ("--lr-max", args.lr_max)):
        _check(math.isfinite(value) and value > 0, f"{flag} must be a positive number; got {value:g}.")
        _check(
            tiny <= value <= huge,
            f"{flag} {value:g} cannot be a float32 learning rate (the sweep trains in float32); "
            f"use a value between {tiny:.4g} and {huge:.4g}.",
        )
    _check(args.lr_min < args.lr_max, f"--lr-min ({args.lr_min:g}) must be smaller than --lr-max ({args.lr_max:g}).")
    _check(
        np.float32(args.lr_min) < np.float32(args.lr_max),
        f"--lr-min ({args.lr_min:.10g}) and --lr-max ({args.lr_max:.10g}) are the same number in float32, the "
        "precision the sweep trains in; widen the range.",
    )


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _out_dir(text: str, names: Sequence[str] = (), inputs: Sequence[Path] = ()) -> Path:
    """Check the output folder before any work: create it, prove it writable, and check the files to be written.

    Refuses an ``--out`` that is a file or cannot be created or written
    into, an output file (``names``) that is a folder or not a regular file,
    and an output file that is one of ``inputs`` (writing would destroy it).
    """
    _check(text != "", "--out is empty; name a folder (it is created if needed).")
    out = Path(text)
    try:
        _check(not out.exists() or out.is_dir(), f"--out {out} is a file; name a folder (it is created if needed).")
        for name in names:
            target = out / name
            for data in inputs:
                same = target.resolve() == data.resolve() or (target.exists() and os.path.samefile(target, data))
                _check(
                    not same,
                    f"--out {out} would overwrite the input {data} with {name}; choose another --out folder "
                    "(or move the data file).",
                )
            _check(not target.is_dir(), f"{target} is a folder; gdjax would write its {name} there: move it away.")
            _check(
                not target.exists() or target.is_file(),
                f"{target} exists and is not a regular file; gdjax would write its {name} there: move it away.",
            )
    except OSError as exc:
        raise _UsageError(f"cannot use --out {out}: {_strerror(exc)}.") from None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _UsageError(f"cannot create the output folder {out}: {_strerror(exc)}.") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".gdjax-probe-", dir=out)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise _UsageError(
            f"the output folder {out} is not writable (creating a file in it failed: {_strerror(exc)}); "
            "choose another --out."
        ) from None
    return out


def _write_error(exc: OSError, out: Path) -> _UsageError:
    where = exc.filename if exc.filename is not None else out
    return _UsageError(f"cannot write {where}: {_strerror(exc)}.")


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
    try:
        paths = write_figures(demo, out)
    except OSError as exc:
        raise _write_error(exc, out) from None
    for path in paths:
        print(f"wrote {path}")
    return 0


def _smooth_window(steps: int) -> int | None:
    """The textbook's moving-average window (10, 100, 1000...) for a curve of ``steps`` points."""
    return None if steps <= 200 else 10 ** round(math.log10(steps / 20))


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def _memory_limit() -> tuple[int, str]:
    """The memory a sweep may plan to use, and a phrase saying where the limit comes from."""
    limit, where = None, ""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        physical = 0
    if physical > 0:
        limit, where = int(physical * _MEMORY_FRACTION), f"half of this machine's {_gib(physical)}"
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    available = (stats or {}).get("bytes_limit")
    if available and (limit is None or available < limit):
        limit, where = int(available), f"the memory of the {device.platform} device"
    if limit is None:
        limit, where = _FALLBACK_MEMORY, "a fixed limit, as this machine's memory is unknown"
    return limit, where


def _check_size(args: argparse.Namespace, n: int, d: int, batch: int, steps_per_epoch: int) -> None:
    """Refuse a sweep that cannot run: too many steps for int32, or more memory than the limit."""
    steps = args.epochs * steps_per_epoch
    _check(
        steps < _MAX_STEPS,
        f"--epochs {args.epochs} makes {steps:,} steps ({_plural(steps_per_epoch, 'step')} per epoch); gdjax counts "
        f"steps in 32-bit integers, so there must be fewer than 2**31: use --epochs "
        f"{(_MAX_STEPS - 1) // steps_per_epoch:,} or fewer (or a larger --batch-size).",
    )
    mlp = args.model == "mlp"
    params = (d + 2) * args.hidden + 1 if mlp else d + 1
    # per member: parameters, gradient, update and last good parameters, plus the optimizer's copies; the
    # activations of the full-data loss (every row) or of a step (forward, derivative, backward)
    width = args.hidden if mlp else 1
    model = 4 * ((4 + _OPTIMIZER_COPIES[args.optimizer]) * params + max(2 * n, 3 * batch) * width)
    # the loss of every step (the history's capacity is a power of two of epochs): on the device, back on the
    # host, and in float64 for the results and the figures
    capacity = 1 << max(0, args.epochs - 1).bit_length()
    history = 16 * capacity * (steps_per_epoch + 1)
    member = model + history + _ROW_BYTES
    need = args.num_lrs * member + 8 * n * (d + 1)
    limit, where = _memory_limit()
    if need <= limit:
        return
    fixes = ["--hidden"] if mlp and model >= history else []
    fixes += ["--epochs"] if history > model else []
    if member > limit:
        raise _UsageError(
            f"even one learning rate would need about {_gib(member)} of memory ({params:,} parameters, "
            f"{steps:,} steps of loss history), more than the limit of {_gib(limit)} ({where}); "
            f"lower {' or '.join(fixes or ['--hidden', '--epochs'])}."
        )
    raise _UsageError(
        f"this sweep would need about {_gib(need)} of memory ({args.num_lrs:,} learning rates, each "
        f"{params:,} parameters and {steps:,} steps of loss history), more than the limit of {_gib(limit)} "
        f"({where}); lower {' or '.join(['--num-lrs', *fixes])} (at most {max(1, limit // member):,} learning "
        f"rates fit), or run the members in chunks from Python with gdjax.sweep(..., chunk_size=N)."
    )


def _nonfinite_kinds(value: Any) -> list[str]:
    if isinstance(value, float):
        return [] if math.isfinite(value) else [str(value)]  # 'inf', '-inf' or 'nan'
    if isinstance(value, list):
        return sorted({kind for v in value for kind in _nonfinite_kinds(v)})
    return []


def _json_ready(value: Any) -> Any:
    """Strict JSON: a non-finite float becomes null, and its dict gains ``"<key>_nonfinite"`` saying what it was.

    The flag is ``"inf"``, ``"-inf"`` or ``"nan"``; a list holding non-finite
    floats has them as null, and its flag names their kinds (``"inf, nan"``).
    """
    if isinstance(value, dict):
        ready = {}
        for key, v in value.items():
            ready[key] = _json_ready(v)
            kinds = _nonfinite_kinds(v)
            if kinds:
                ready[f"{key}_nonfinite"] = ", ".join(kinds)
        return ready
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
    return _json_ready(summary)


def _write_results(out: Path, sw: gd.SweepResult, summary: dict[str, Any]) -> Iterator[Path]:
    """Write the four outputs, yielding each path once written (``OSError`` as the file system raises it)."""
    from gdjax import plot

    rows = sw.to_rows()
    names = [c for c in _FIRST_COLUMNS if c in rows[0]] + [c for c in rows[0] if c not in _FIRST_COLUMNS]
    paths = [out / name for name in _SWEEP_FILES]
    text = json.dumps(summary, indent=2, allow_nan=False) + "\n"  # strict JSON: _summary made every number finite
    with paths[0].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    yield paths[0]
    paths[1].write_text(text, encoding="utf-8")
    yield paths[1]
    plot.sweep(sw).figure.savefig(paths[2])
    yield paths[2]
    plot.curves(sw, x="epoch", smooth=_smooth_window(sw.losses.shape[1])).figure.savefig(paths[3])
    yield paths[3]


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
    data = {"x": x, "y": y}
    it = _gdjax_call(gd.full_batch, data) if args.batch_size == "full" else _gdjax_call(gd.minibatch, data, batch)
    _check_size(args, n, d, batch, it.num_batches)
    out = _out_dir(args.out, _SWEEP_FILES, [path])
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
    try:
        for written in _write_results(out, sw, _summary(args, sw, info)):
            print(f"wrote {written}")
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        raise _write_error(exc, out) from None
    return 0


def _tolerant_streams() -> Callable[[], None]:
    """Make standard output and error escape what their encoding cannot show, rather than raise.

    A column named ``Ω`` printed to a cp1252 console becomes ``\\u03a9``.
    Returns a function that puts the streams back as they were.
    """
    undo: list[Callable[[], None]] = []
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", None) == "strict":
            reconfigure(errors="backslashreplace")
            undo.append(functools.partial(reconfigure, errors="strict"))

    def restore() -> None:
        for fn in undo:
            with contextlib.suppress(OSError, ValueError):  # a closed or broken stream: nothing left to print on it
                fn()

    return restore


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
    restore = _tolerant_streams()
    try:
        return _main(argv)
    finally:
        restore()


def _main(argv: Sequence[str] | None) -> int:
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
