"""The ``gdjax`` command's parser and the option checks that need no data."""

from __future__ import annotations

import argparse
import functools
import math
import textwrap
from collections.abc import Sequence
from typing import NoReturn

import numpy as np
import optax

from gdjax import __version__
from gdjax.cli._common import UsageError, check
from gdjax.cli._split import check_fraction

MOMENTUM = 0.9  # of --optimizer momentum
OPTIMIZERS = {"sgd": optax.sgd, "momentum": functools.partial(optax.sgd, momentum=MOMENTUM), "adam": optax.adam}
#: The learning rates of a sweep given one of --lr-min and --lr-max, or of adam given neither.
LR_MIN, LR_MAX = 1e-4, 1.0
MODELS = {"linear": "linear regression", "logistic": "logistic regression", "mlp": "MLP regression"}
MAX_SEED = 2**32 - 1
F32 = np.finfo(np.float32)

SWEEP_EPILOG = """\
The final loss is the mean loss over the training rows (every row, without --validation) after the last epoch: \
squared error / 2 for linear and mlp, log-loss for logistic (softmax cross-entropy with 3 classes or more). A member \
whose loss or parameters become non-finite is stopped and marked diverged.

Without --lr-min and --lr-max the learning rates are chosen from the sharpness: the largest eigenvalue of the \
Hessian of the training loss at the initial parameters (gd.sharpness, by power iteration on the training rows). \
Gradient descent with step size lr on a quadratic with that curvature is stable only below lr = 2/sharpness \
(2(1+m)/sharpness with momentum m = 0.9, heavy-ball momentum's limit), so the rates run from 1e-3 to 2 times that \
limit, log-spaced: three decades below the edge and past it, where the members diverge (to 30 times it with --model \
logistic, whose curvature is largest at the start and falls as it learns). The chosen range, the \
sharpness and the limit are printed and written to summary.json ("lr_range" in "settings"). For adam the fixed \
range 1e-4 to 1 is kept: its steps are scaled per parameter by the gradients' size, so the sharpness does not bound \
them. Given only one of the two options, the other keeps its fixed value (--lr-min 1e-4, --lr-max 1); the fixed \
range is also used when the loss is not finite at the initial parameters or has no positive curvature.

With --model logistic the target holds class labels, whole numbers: the distinct labels, sorted, are the classes \
0, 1, 2, ... (summary.json lists them as "classes"). Two give logistic regression, predicting the probability of \
the larger label; three or more give softmax regression, with one weight per feature and class. The training \
accuracy of every learning rate is computed in the compiled run: results.csv has it (train_accuracy), and the best \
one's is printed and written to summary.json.

With --validation FRACTION, that share of the rows (rounded to a whole number of rows) is held out, drawn with \
--seed after the labels are numbered: the models train on the other rows, every learning rate is evaluated on the \
held-out rows in the same compiled run, and the best learning rate is the one with the lowest validation loss, not \
the lowest training loss. results.csv then has a validation_loss column (and for classification \
validation_accuracy), summary.json a "split" entry with the rows on each side, and the figures show the validation \
loss. The held-out rows can be drawn again: numpy.random.default_rng(SEED).permutation(ROWS)[:HELD_OUT] are their \
0-based indices among the data rows (file order, header and blank lines not counted).

The CSV file is read a chunk of rows at a time, never whole, into the data cache DIR/data-cache/ (--out's folder): \
.npy files the sweep reads memory-mapped, about 4 bytes per cell, twice that with --standardize or --validation \
(their arrays are kept beside). A later sweep with the same --out reuses the cache without reading the file, as long \
as the file is unchanged (same path, size and modification time) and --target and the model kind (logistic or not) \
are the same; otherwise it is rebuilt. Delete the folder to free the space.

The compiled programs are kept in JAX's persistent compilation cache, $XDG_CACHE_HOME/gdjax/jax or \
~/.cache/gdjax/jax (a folder set by JAX_COMPILATION_CACHE_DIR is used instead), so a later run on data of the same \
shapes skips XLA's compilation. GDJAX_COMPILATION_CACHE=DIR keeps them in DIR; GDJAX_COMPILATION_CACHE=off turns \
the cache off.

examples:
  gdjax sweep data.csv --target y
  gdjax sweep data.csv --target label --model logistic --standardize --optimizer adam
  gdjax sweep data.csv --target label --model logistic --validation 0.2
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


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``gdjax: error: ...``, pointing to the command's help.

    argparse's own ``error`` prints the usage (several lines) and exits; this
    one raises :class:`UsageError`, which :func:`gdjax.cli.main` reports like
    every other bad input. The subcommands' parsers are of this class too, so
    an error inside ``gdjax sweep`` names ``gdjax sweep --help``.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gdjax",
        description="Gradient descent in JAX: whole training runs compiled, many learning rates at once.",
        epilog=(
            "examples:\n  gdjax demo\n  gdjax sweep data.csv --target y\n  gdjax study data.csv --target y\n"
            "  gdjax sweep --help"
        ),
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
        "compiled program: a regression (linear, mlp) or a classification of whole-number labels into 2 or more "
        "classes (logistic); print the summary and write results.csv (one row per learning rate), summary.json "
        "(best learning rate, settings, versions), sweep.png and curves.png into --out. With --validation, the "
        "best learning rate is chosen on held-out rows.",
        epilog=SWEEP_EPILOG,
        formatter_class=_Formatter,
    )
    sw.add_argument("data", metavar="DATA.csv", help="CSV file: a header row naming the columns, then numbers")
    sw.add_argument("--target", required=True, metavar="COLUMN", help="column to predict; every other is a feature")
    models_help = (
        "linear: linear regression; logistic: classification of whole-number labels, logistic regression for 2 "
        "classes and softmax regression for 3 or more; mlp: tanh MLP regression"
    )
    sw.add_argument("--model", choices=list(MODELS), default="linear", help=models_help)
    sw.add_argument("--hidden", type=int, default=32, metavar="N", help="hidden units of the mlp")
    auto = "default: chosen from the sharpness at the initial parameters, see below; 1e-4 to 1 for adam"
    sw.add_argument("--lr-min", type=float, metavar="X", help=f"smallest learning rate ({auto})")
    sw.add_argument("--lr-max", type=float, metavar="X", help=f"largest learning rate ({auto})")
    sw.add_argument("--num-lrs", type=int, default=32, metavar="N", help="learning rates, log-spaced from min to max")
    sw.add_argument(
        "--batch-size",
        type=_batch_size,
        metavar="N|full",
        help="examples per step; full: every row, batch GD (default: 32, or every row if the file has fewer)",
    )
    sw.add_argument("--epochs", type=int, default=50, metavar="N", help="passes over the data")
    optimizers_help = "sgd: plain gradient descent; momentum: sgd with momentum 0.9; adam"
    sw.add_argument("--optimizer", choices=list(OPTIMIZERS), default="sgd", help=optimizers_help)
    sw.add_argument(
        "--standardize",
        action="store_true",
        help="z-score every feature column (mean 0, std 1, float64 statistics) before training; the target is "
        "left as is, and a constant column becomes all zeros. With --validation the mean and std are those of the "
        "training rows only, and the held-out rows are scaled with them (nothing leaks from the validation rows)",
    )
    sw.add_argument(
        "--validation",
        type=float,
        metavar="FRACTION",
        help="hold out this share of the rows (between 0 and 1, such as 0.2), drawn with --seed, and choose the "
        "best learning rate by the loss on them (default: no split; the best is the lowest training loss)",
    )
    _add_common(sw, "gdjax-sweep", "seed of the validation split, the data order and the mlp's initial weights")

    from gdjax.cli._study import add_parser as add_study  # its options, help and examples live beside the command

    add_study(sub, _Formatter, _add_common, models_help, optimizers_help)
    return parser


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; a malformed one raises :class:`UsageError` (``--help``, ``--version``: SystemExit(0))."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # an unknown option inside a subcommand: point to that subcommand's help, not gdjax's
        prog = f"gdjax {args.command}" if args.command else "gdjax"
        raise UsageError(f"unrecognized arguments: {' '.join(extras)} (see {prog} --help)")
    if args.command is None:
        raise UsageError("a command is required: demo, sweep or study (see gdjax --help)")
    return args


def check_options(args: argparse.Namespace) -> None:
    check(0 <= args.seed <= MAX_SEED, f"--seed must be between 0 and {MAX_SEED}; got {args.seed}.")
    if args.command != "sweep":
        return
    batch = 1 if args.batch_size in ("full", None) else args.batch_size
    for flag, value in (("--num-lrs", args.num_lrs), ("--epochs", args.epochs), ("--batch-size", batch)):
        check(value >= 1, f"{flag} must be at least 1; got {value}.")
    check(args.hidden >= 1, f"--hidden must be at least 1; got {args.hidden}.")
    if args.validation is not None:
        check_fraction(args.validation)
    if args.lr_min is None and args.lr_max is None:
        return  # chosen from the sharpness once the data is read (gdjax.cli._lr_range)
    args.lr_min = LR_MIN if args.lr_min is None else args.lr_min
    args.lr_max = LR_MAX if args.lr_max is None else args.lr_max
    check_learning_rates(args.lr_min, args.lr_max)


def check_learning_rates(lr_min: float, lr_max: float, flags: tuple[str, str] = ("--lr-min", "--lr-max")) -> None:
    """The sweep's range: positive float32 numbers, ``lr_min < lr_max`` also in float32 (``flags`` name them)."""
    tiny, huge = float(F32.tiny), float(F32.max)
    for flag, value in zip(flags, (lr_min, lr_max), strict=True):
        check(math.isfinite(value) and value > 0, f"{flag} must be a positive number; got {value:g}.")
        with np.errstate(over="ignore", under="ignore"):
            single = float(np.float32(value))  # what training uses: 3.4028235e38 is above F32.max yet becomes it
        check(
            tiny <= single <= huge,
            f"{flag} {value:g} cannot be a float32 learning rate (the sweep trains in float32); "
            f"use a value between {tiny:.4g} and {huge:.4g}.",
        )
    low, high = flags
    check(lr_min < lr_max, f"{low} ({lr_min:g}) must be smaller than {high} ({lr_max:g}).")
    check(
        bool(np.float32(lr_min) < np.float32(lr_max)),
        f"{low} ({lr_min:.10g}) and {high} ({lr_max:.10g}) are the same number in float32, the "
        "precision the sweep trains in; widen the range.",
    )
