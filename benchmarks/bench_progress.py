"""Benchmark the cost of ``progress=True``: the same ``gdjax.sweep`` with and without its progress bar.

Run: ``python benchmarks/bench_progress.py [--quick] [--repeats N] [--json PATH]``
(``--quick``: the tiny sweep of ``bench_sweep.py --quick``, a smoke test of seconds).

The sweep of ``bench_sweep.py`` (64 learning rates, ``linear_regression(n=8192,
d=64)``, batch 32, 5 epochs) run alternately with and without ``progress=True``
(the bar's text discarded), at least 9 runs each after two that compile;
compared on ``SweepResult.wall_time`` medians.
"""

from __future__ import annotations

import contextlib
import io
import sys

import _timing as tm
import jax
import optax
from _programs import main_sweep

import gdjax as gd

TARGET_COST = 0.05


def main(argv: list[str] | None = None) -> int:
    args = tm.parse(tm.parser(__doc__, default_repeats=9), argv)
    cfg = main_sweep(args.quick)
    info = tm.print_header(args.quick)
    tm.say(
        f"\n=== progress bar: the bench_sweep.py sweep ({cfg.members} members) with progress=True against without ==="
    )
    it = gd.minibatch(cfg.problem().data, cfg.batch)
    model = gd.models.linear()
    params = model.init(None, cfg.d)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(2 * max(args.repeats, 9) + 2):
        show = bool(i % 2)
        with contextlib.redirect_stderr(io.StringIO()):
            sw = gd.sweep(
                model.loss, params, optax.sgd, it, learning_rates=cfg.lrs, epochs=cfg.epochs,
                key=jax.random.key(i), progress=show,
            )  # fmt: skip
        if i >= 2:  # the first two compile
            times[show].append(sw.wall_time)
    off, on = tm.med(times[False]), tm.med(times[True])
    tm.say(f"  {'':<10}{'run (ms)':>10}  vs without (SweepResult.wall_time)")
    tm.say(f"  {'without':<10}{1e3 * off:>10.2f}  reference")
    tm.say(f"  {'with':<10}{1e3 * on:>10.2f}  {tm.ratio_text(on / off)}")
    tm.say(
        f"  without: {1e3 * off:.2f} ms   with: {1e3 * on:.2f} ms   cost: {100 * (on / off - 1):+.1f}% "
        f"(target <= {100 * TARGET_COST:.0f}%; medians of {len(times[True])} alternating runs)"
    )
    return tm.finish(args.json, {
        "machine": info, "quick": args.quick, "members": cfg.members,
        "off_s": times[False], "on_s": times[True], "cost_fraction": on / off - 1,
    })  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
