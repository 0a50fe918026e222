"""The learning rates of ``gdjax sweep``: given, or chosen from the sharpness at the initial parameters.

Constant-step gradient descent on a quadratic whose Hessian has largest
eigenvalue ``lam`` (the sharpness) is stable only for ``lr < 2 / lam``; with
heavy-ball momentum ``m`` (optax's ``sgd(momentum=m)``) only for
``lr < 2 (1 + m) / lam``. Without ``--lr-min`` and ``--lr-max`` the sweep
runs from :data:`LOW` to :data:`HIGH` times that limit (:data:`HIGH_LOGISTIC` for
``--model logistic``), with ``lam``
measured by :func:`gdjax.sharpness` on the training rows at the initial
parameters: three decades of stable rates and, past the edge, rates that
diverge, so the best one is inside the range. Adam's steps are divided by the
gradients' running size, so the sharpness does not bound them: adam keeps the
fixed range. So does a loss that is not finite at the initial parameters or
has no positive curvature there.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from typing import Any

import gdjax as gd
from gdjax._types import PyTree
from gdjax.cli._common import UsageError
from gdjax.cli._parser import LR_MAX, LR_MIN, MOMENTUM, check_learning_rates

#: The range is ``[LOW, HIGH]`` times the stability limit; ``HIGH_LOGISTIC`` for logistic and softmax
#: regression, whose curvature is largest at the start (predictions all equal) and only falls as they learn, so
#: their best rates lie well past the start's limit (measured on digits: up to 5x it for the full batch).
LOW, HIGH, HIGH_LOGISTIC = 1e-3, 2.0, 30.0
#: The sharpness to gd.sharpness's own default accuracy, so the value printed is the one gd.sharpness (and
#: gdjax study's diagnostics) give; a value not converged in MAX_ITERS still places a log-spaced range.
TOL, MAX_ITERS = 1e-5, 300
FLAGS = "pass --lr-min/--lr-max to set them"


def choose(args: argparse.Namespace, loss_fn: Callable[..., Any], params: PyTree, it: gd.DataIterator) -> dict:
    """Set ``args.lr_min`` and ``args.lr_max`` (unless given) and return summary.json's ``lr_range``.

    ``lr_range`` has ``min``, ``max``, ``source`` (``"given"``, ``"sharpness"`` or ``"fixed"``), ``sharpness``
    and ``stability_limit`` (None unless measured) and ``reason``, the sentence the command prints.
    """
    if args.lr_min is not None:  # given (the parser filled in the other one's fixed value)
        return _range(args, "given", None, None, "given")
    if args.optimizer == "adam":
        why = "fixed for adam, whose steps are scaled by the gradients' size, so the sharpness does not bound them"
        return _fixed(args, why)
    with warnings.catch_warnings(record=True):  # not converged in MAX_ITERS: the estimate still places the range
        warnings.simplefilter("always")
        try:
            lam = gd.sharpness(loss_fn, params, it, tol=TOL, max_iters=MAX_ITERS)
        except ValueError as exc:  # the loss (or its curvature) is not finite at the initial parameters
            return _fixed(args, f"fixed: no sharpness at the initial parameters ({_first_sentence(exc)})")
    if not lam > 0:
        return _fixed(args, f"fixed: the sharpness at the initial parameters is {lam:.4g}, not positive")
    factor = 2 * (1 + MOMENTUM) if args.optimizer == "momentum" else 2
    limit = factor / lam
    rule = "2(1+0.9)/sharpness" if args.optimizer == "momentum" else "2/sharpness"
    args.lr_min, args.lr_max = LOW * limit, (HIGH_LOGISTIC if args.model == "logistic" else HIGH) * limit
    try:
        check_learning_rates(args.lr_min, args.lr_max, ("the smallest learning rate", "the largest"))
    except UsageError as exc:
        return _fixed(args, f"fixed: the range from the sharpness {lam:.4g} is unusable ({exc})")
    reason = f"auto: sharpness {lam:.4g} at the initial parameters, {rule} = {limit:.3g}; {FLAGS}"
    return _range(args, "sharpness", lam, limit, reason)


def _fixed(args: argparse.Namespace, why: str) -> dict:
    args.lr_min, args.lr_max = LR_MIN, LR_MAX
    return _range(args, "fixed", None, None, f"{why}; {FLAGS}")


def _range(args: argparse.Namespace, source: str, lam: float | None, limit: float | None, reason: str) -> dict:
    return {
        "min": args.lr_min,
        "max": args.lr_max,
        "source": source,
        "sharpness": lam,
        "stability_limit": limit,
        "reason": reason,
    }


def line(lr_range: dict) -> str:
    """The line the command prints: ``learning rates: 1.2e-05 to 0.024 (auto: sharpness ...)``."""
    return f"learning rates: {lr_range['min']:.3g} to {lr_range['max']:.3g} ({lr_range['reason']})"


def _first_sentence(exc: Exception) -> str:
    """What gdjax's error says is wrong, without the fix that follows it."""
    return " ".join(str(exc).split()).split(": ", 1)[0].split(". ", 1)[0]
