"""Sweeping the peak of a learning-rate schedule: every peak in one compiled program.

What this example teaches:

* ``gd.sweep`` calls the optimizer factory with a *traced* learning rate (one
  value per member, all members in one ``jit`` + ``vmap``), so the factory
  must build its schedule from a traced number. A factory that takes
  ``total_steps`` is also given the run's total number of steps (epochs
  times steps per epoch) as a plain Python int: it is not in ``hyperparams``
  and is not swept. Here ``make(learning_rate, total_steps)`` uses it as the
  schedule's length, so the cosine ends exactly at the last step.
* optax's ``warmup_cosine_decay_schedule`` (and ``sgdr_schedule``, built on
  it) test the peak in Python (``0.0 if peak_value == 0.0 else ...``), which
  a traced peak cannot answer: passing ``learning_rate`` as the peak fails,
  before anything is compiled, with an error that says so and gives the
  recipe used here. The peak only scales the schedule, so build it with
  peak 1 (the start and end values as fractions of the peak) and multiply
  by the traced learning rate: ``lambda step: learning_rate * unit(step)``.
  The rates equal those of the schedule built with the peak to float
  rounding.
* Other optax schedules take a traced peak as they are:
  ``optax.cosine_onecycle_schedule(total_steps, learning_rate)`` is swept
  directly. Step counts, ``pct_start``, ``div_factor`` or ``decay_rate``
  cannot be traced; fix them in the factory (``functools.partial``) and run
  one sweep per value.

The data are scikit-learn's 8x8 digits (1797 images, features scaled to
[0, 1]) split 80/20 into train and validation with a fixed seed. The model
is softmax regression (``gd.models.logistic(10)``) trained by SGD with
Nesterov momentum 0.9 on mini-batches of 64, 9 peaks from 0.01 to 100, for
20 epochs (23 steps each: 460 steps); warm-up over the first 10% of the
steps, cosine decay to 1% of the peak. Each sweep ranks its members by the
validation loss after the last epoch: too small a peak under-fits in 20
epochs and too large a one overshoots (the validation loss rises again).
The best warmup-cosine and one-cycle peaks and their validation accuracies
are printed, with the total number of steps the factories were given and
the schedule's rate at the last step (its end value).

Run it with ``python examples/schedule_sweep.py`` (``--help`` for options;
needs scikit-learn, which the dev extra installs). It takes about 20
seconds on 2 CPU cores, nearly all of it compiling the two sweeps (one
program each; running them takes a fraction of a second).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax

import gdjax as gd

PEAKS = tuple(float(p) for p in np.geomspace(0.01, 100.0, 9))
WARMUP = 0.1  # fraction of the steps spent warming up
END = 0.01  # the end value, as a fraction of the peak


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs per member")
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the data order")
    return parser.parse_args(argv)


def digits_split(seed: int) -> tuple[dict, dict]:
    """scikit-learn's digits, features divided by 16, shuffled with ``seed`` and split 80/20."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype(np.float32), y.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    train, val = np.split(order, [int(0.8 * len(y))])
    return {"x": x[train], "y": y[train]}, {"x": x[val], "y": y[val]}


def unit_warmup_cosine(total_steps: int) -> optax.Schedule:
    """Warm-up then cosine decay with peak 1 over ``total_steps`` steps (a Python int)."""
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, max(1, int(WARMUP * total_steps)), total_steps, END)


#: The total_steps each factory was called with (the factories are called in Python, while tracing).
GIVEN: dict[str, list[int]] = {"warmup_cosine": [], "onecycle": []}


def make(learning_rate, total_steps):
    """Warmup-cosine with a traced peak: a peak-1 schedule built from ``total_steps``, scaled by the peak."""
    GIVEN["warmup_cosine"].append(total_steps)
    unit = unit_warmup_cosine(total_steps)
    return optax.sgd(lambda step: learning_rate * unit(step), momentum=0.9, nesterov=True)


def make_onecycle(learning_rate, total_steps):
    """One-cycle, which takes the traced peak directly (its step counts come from ``total_steps``)."""
    GIVEN["onecycle"].append(total_steps)
    return optax.sgd(optax.cosine_onecycle_schedule(total_steps, learning_rate), momentum=0.9, nesterov=True)


def make_direct(learning_rate, total_steps):
    """The direct form, refused before compiling: optax tests the traced peak in Python."""
    return optax.sgd(optax.warmup_cosine_decay_schedule(0.0, learning_rate, total_steps // 10, total_steps))


def main(argv: list[str] | None = None) -> dict:
    """Sweep the peak of warmup-cosine and of one-cycle, each in one compiled program.

    Args:
      argv: command-line arguments (``None`` reads ``sys.argv``; pass ``[]``
        for the defaults).

    Returns:
      A dict with ``"total_steps"`` (epochs times steps per epoch),
      ``"given"`` (the ``total_steps`` each factory was called with),
      ``"hyperparams"`` (the warmup-cosine sweep's: only ``learning_rate``),
      ``"warmup_cosine"`` and ``"onecycle"`` (each: ``peaks``, ``val_loss``,
      ``val_accuracy``, ``diverged``, ``best_peak``, ``best_val_accuracy``),
      ``"last_rate"`` (the best warmup-cosine member's rate at the last
      step) and ``"end_rate"`` (its end value, ``END`` times the peak),
      ``"direct_error"`` (the message of the refused direct form) and
      ``"times"`` (seconds).
    """
    args = _parse(argv)
    t_start = time.perf_counter()
    train, val = digits_split(args.seed)
    model = gd.models.logistic(10)
    params = model.init(None, train["x"].shape[1])
    it = gd.minibatch(train, args.batch_size)
    total_steps = args.epochs * it.num_batches
    common = dict(
        learning_rates=PEAKS,
        epochs=args.epochs,
        key=jax.random.key(args.seed),
        eval_data=val,
        metrics=model.metrics,
        eval_every=0,  # evaluate once, after the last epoch
    )

    # The direct form fails before compiling, with the recipe used by `make`.
    try:
        gd.sweep(model.loss, params, make_direct, it, **common)
        direct_error = ""
    except TypeError as exc:
        direct_error = str(exc)

    sweeps = {
        "warmup_cosine": gd.sweep(model.loss, params, make, it, **common),
        "onecycle": gd.sweep(model.loss, params, make_onecycle, it, **common),
    }
    out: dict = {"total_steps": total_steps, "given": {k: sorted(set(v)) for k, v in GIVEN.items()}}
    out["hyperparams"] = {k: np.asarray(v).tolist() for k, v in sweeps["warmup_cosine"].hyperparams.items()}
    for name, sw in sweeps.items():
        k = sw.best_index
        assert k is not None, "every member diverged"
        out[name] = {
            "peaks": list(PEAKS),
            "val_loss": sw.history["eval_loss"][:, -1].tolist(),
            "val_accuracy": sw.history["eval_acc"][:, -1].tolist(),
            "diverged": sw.diverged.tolist(),
            "best_peak": float(sw.hyperparams["learning_rate"][k]),
            "best_val_accuracy": float(sw.history["eval_acc"][k, -1]),
        }
    best = out["warmup_cosine"]["best_peak"]
    unit = unit_warmup_cosine(total_steps)
    out["last_rate"] = best * float(unit(total_steps - 1))
    out["end_rate"] = best * END

    print(
        f"digits: {len(train['y'])} train / {len(val['y'])} validation; softmax regression, SGD (Nesterov 0.9), "
        f"batch {args.batch_size}, {args.epochs} epochs of {it.num_batches} steps; {len(PEAKS)} peaks per sweep, "
        f"one compiled program each\n"
    )
    print(f"the direct form, warmup_cosine_decay_schedule(0.0, learning_rate, ...), is refused:\n  {direct_error}\n")
    print(f"{'peak':>8}{'warmup-cosine':>22}{'one-cycle':>22}")
    print(f"{'':>8}{'val loss':>12}{'val acc':>10}{'val loss':>12}{'val acc':>10}")
    for m, peak in enumerate(PEAKS):
        cells = ""
        for name in sweeps:
            r = out[name]
            cells += (
                f"{'diverged':>22}" if r["diverged"][m] else f"{r['val_loss'][m]:>12.4f}{r['val_accuracy'][m]:>10.4f}"
            )
        print(f"{peak:>8.3g}{cells}")
    for name, label in (("warmup_cosine", "warmup-cosine"), ("onecycle", "one-cycle")):
        r = out[name]
        print(f"best {label} peak: {r['best_peak']:.3g} (validation accuracy {r['best_val_accuracy']:.4f})")
    print(
        f"\ntotal_steps given to the factories: {out['given']} (= {args.epochs} epochs x {it.num_batches} steps "
        f"= {total_steps}); sw.hyperparams holds only what was swept: {sorted(out['hyperparams'])}\n"
        f"the best warmup-cosine member's rate at the last step ({total_steps - 1}): {out['last_rate']:.4g}, "
        f"its end value {END:g} x peak = {out['end_rate']:.4g}"
    )
    total = time.perf_counter() - t_start
    times = {name: {"compile": sw.compile_time, "run": sw.wall_time} for name, sw in sweeps.items()}
    print(
        "\ntimes: "
        + "; ".join(f"{n} {t['compile']:.2f} s compile + {t['run']:.2f} s run" for n, t in times.items())
        + f"; {total:.1f} s in all"
    )
    out["direct_error"] = direct_error
    out["times"] = {**times, "total": total}
    return out


if __name__ == "__main__":
    main()
