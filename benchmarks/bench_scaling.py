"""Benchmark how ``gdjax.sweep``'s time grows with its number of members.

Run: ``python benchmarks/bench_scaling.py [--quick] [--repeats N] [--json PATH]``
(``--quick``: 1 and 16 members of a tiny problem, a smoke test of seconds).

The sweep of ``bench_sweep.py`` (``linear_regression(n=8192, d=64)``, batch 32,
5 epochs, plain SGD) with 1, 8, 64 and 512 members, learning rates spread over the
same range; each member count compiles its own program. Times are
``SweepResult.wall_time`` (the compiled run), as ratios against 1 member.
"""

from __future__ import annotations

import sys
from typing import Any

import _timing as tm
import numpy as np
from _programs import bench_gd_sweep, main_sweep

import gdjax as gd


def main(argv: list[str] | None = None) -> int:
    args = tm.parse(tm.parser(__doc__, default_repeats=5), argv)
    repeats, cfg = args.repeats, main_sweep(args.quick)
    scaling = (1, 16) if args.quick else (1, 8, 64, 512)
    info = tm.print_header(args.quick)
    tm.say(
        f"\n=== scaling: gd.sweep on the bench_sweep.py problem (n={cfg.n} d={cfg.d}, batch {cfg.batch}, "
        f"{cfg.epochs} epochs) with {', '.join(map(str, scaling))} members ==="
    )
    it = gd.minibatch(cfg.problem().data, cfg.batch)
    base = cfg.lrs
    out: dict[str, Any] = {}
    tm.say(
        f"  {'members':>8}{'compile (s)':>12}{'run (s)':>10}{'whole call (s)':>15}{'per member (ms)':>16}"
        f"{'vs 1 member':>12}{'per member-step (ns)':>22}"
    )
    one = None
    for m in scaling:
        lrs = base[np.arange(m) * len(base) // m] if m <= len(base) else np.resize(base, m)
        r = bench_gd_sweep(it, cfg.d, lrs, cfg.epochs, repeats)
        r.pop("params")
        r.pop("sweep_final_loss")
        wall = tm.med(r["wall_time_s"])
        one = wall if one is None else one
        r.update(members=m, wall_median_s=wall, run_median_s=tm.med(r["run_s"]), ratio_vs_one=wall / one)
        out[str(m)] = r
        tm.say(
            f"  {m:>8}{r['compile_s']:>12.3f}{wall:>10.4f}{r['run_median_s']:>15.4f}{1e3 * wall / m:>16.3f}"
            f"{wall / one:>11.2f}x{1e9 * wall / (m * cfg.steps * cfg.epochs):>22.1f}"
        )
    tm.say(
        f"  run = SweepResult.wall_time (compiled run, compile excluded), median of {repeats}; "
        "whole call = gd.sweep() end to end, warm cache."
    )
    ratios = {f"{m}_vs_1": out[str(m)]["ratio_vs_one"] for m in scaling[1:]}
    tm.say("ratios: " + ", ".join(f"{m} members / 1 member = {ratios[f'{m}_vs_1']:.2f}x" for m in scaling[1:]))
    return tm.finish(args.json, {
        "machine": info, "quick": args.quick, "repeats": repeats,
        "config": {"n": cfg.n, "d": cfg.d, "batch": cfg.batch, "epochs": cfg.epochs, "members": list(scaling)},
        "scaling": out, "ratios": ratios,
    })  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
