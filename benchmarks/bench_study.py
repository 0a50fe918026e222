"""Benchmark ``gdjax.study`` against the sweeps it runs, done by hand: no hidden overhead.

Run: ``python benchmarks/bench_study.py [--quick] [--repeats N] [--json PATH]``
(``--quick``: 8 batch sizes of a 128-example problem, a smoke test of seconds).

One study of 8 batch sizes (least squares, ``linear_regression(n=4096, d=16)``
with feature scales from 1 to 0.1, plain SGD, 16 learning rates, at most 20
epochs, target 1.05 x the least-squares optimum) done in one process by:

  (a) ``gd.study(...)``, diagnostics included (the sharpness, the noise scale at
      the start and where the target was reached), end to end;
  (b) the same 8 sweeps by hand: ``gd.sweep(..., gd.minibatch(data, b), tol=target)``
      with the same arguments, one batch size after the other.

Each way starts from a fresh cache state (``gd.clear_caches()`` and
``jax.clear_caches()``), so both compile every program; the two ways alternate
which goes first. The requirement: (a) takes at most 1.2x the sum of (b)'s
sweeps' run plus compile times (their ``wall_time + compile_time``). The table
shows where the study's time goes: the sweeps' run and compile, the
diagnostics, and the rest (checking the data once, reading the results).
Both ways must find the same steps to the target at every batch size.
"""

from __future__ import annotations

import sys
from typing import Any

import _timing as tm
import jax
import numpy as np
import optax

import gdjax as gd

TARGET_RATIO = 1.20


def _config(quick: bool) -> dict[str, Any]:
    if quick:
        return {"n": 128, "d": 4, "sizes": [1, 2, 4, 8, 16, 32, 64, 128], "lrs": 8, "epochs": 5}
    return {"n": 4096, "d": 16, "sizes": [1, 4, 16, 64, 256, 1024, 2048, 4096], "lrs": 16, "epochs": 20}


def _fresh() -> None:
    gd.clear_caches()
    jax.clear_caches()


def main(argv: list[str] | None = None) -> int:
    args = tm.parse(tm.parser(__doc__, default_repeats=3), argv)
    cfg = _config(args.quick)
    info = tm.print_header(args.quick)
    n, d, sizes, epochs = cfg["n"], cfg["d"], cfg["sizes"], cfg["epochs"]
    prob = gd.problems.linear_regression(n=n, d=d, key=jax.random.key(0), scales=np.geomspace(1.0, 0.1, d))
    model = gd.models.linear()
    params = model.init(None, d)
    lrs = np.geomspace(1e-3, 1.2, cfg["lrs"]) * 2 / prob.lipschitz
    target = 1.05 * prob.min_loss
    tm.say(
        f"\n=== a study of {len(sizes)} batch sizes ({', '.join(map(str, sizes))}) x {len(lrs)} learning rates: "
        f"linear regression n={n} d={d}, plain SGD, at most {epochs} epochs, target {target:.5g} ==="
    )

    def study(r: int) -> gd.StudyResult:
        return gd.study(
            model.loss, params, optax.sgd, prob.data, batch_sizes=sizes, learning_rates=lrs, target=target,
            epochs=epochs, key=jax.random.key(r),
        )  # fmt: skip

    def by_hand(r: int) -> list[tuple[float, gd.SweepResult]]:
        out = []
        for b in sizes:
            t, sw = tm.timed(
                lambda b=b: gd.sweep(
                    model.loss, params, optax.sgd, gd.minibatch(prob.data, b), learning_rates=lrs, epochs=epochs,
                    key=jax.random.key(r), tol=target,
                )
            )  # fmt: skip
            out.append((t, sw))
        return out

    runs: dict[str, list[Any]] = {"study_s": [], "study": [], "hand_call_s": [], "hand": []}
    for r in range(args.repeats):
        order = ("study", "hand") if r % 2 == 0 else ("hand", "study")
        for way in order:
            _fresh()
            if way == "study":
                t, st = tm.timed(lambda r=r: study(r))
                runs["study_s"].append(t)
                runs["study"].append(st)
            else:
                hand = by_hand(r)
                runs["hand_call_s"].append([t for t, _ in hand])
                runs["hand"].append([sw for _, sw in hand])
        tm.say(f"  repeat {r + 1}/{args.repeats}: study {runs['study_s'][-1]:.2f} s")

    # ---- agreement: the same steps to the target at every batch size
    agree = True
    for st, hand in zip(runs["study"], runs["hand"], strict=True):
        for i, sw in enumerate(hand):
            eps = np.where(sw.converged & ~sw.diverged, sw.num_epochs, np.iinfo(np.int64).max)
            fewest = int(eps.min()) if (sw.converged & ~sw.diverged).any() else None
            agree &= st.epochs_to_target[i] == fewest
    last = runs["study"][-1]

    # ---- times (medians over repeats)
    med = tm.med
    study_s = med(runs["study_s"])
    s_run = [med([st.wall_times[i] for st in runs["study"]]) for i in range(len(sizes))]
    s_comp = [med([st.compile_times[i] for st in runs["study"]]) for i in range(len(sizes))]
    h_run = [med([hand[i].wall_time for hand in runs["hand"]]) for i in range(len(sizes))]
    h_comp = [med([hand[i].compile_time for hand in runs["hand"]]) for i in range(len(sizes))]
    h_call = [med([calls[i] for calls in runs["hand_call_s"]]) for i in range(len(sizes))]
    diag = {k: med([st.measure_times.get(k, 0.0) for st in runs["study"]]) for k in last.measure_times}
    sum_sweeps = sum(h_run) + sum(h_comp)
    tm.say(f"\ntimes per batch size (s, median over {args.repeats} repeats; compile = the sweep's compile_time)")
    head = (
        f"  {'batch':>6}{'steps/ep':>9}{'compile (a)':>13}{'compile (b)':>13}{'run (a)':>10}{'run (b)':>10}"
        f"{'call (b)':>10}{'steps to target':>17}"
    )
    tm.say(head)
    table = []
    for i, b in enumerate(sizes):
        steps = last.steps_to_target[i]
        tm.say(
            f"  {b:>6}{last.steps_per_epoch[i]:>9}{s_comp[i]:>13.3f}{h_comp[i]:>13.3f}{s_run[i]:>10.4f}"
            f"{h_run[i]:>10.4f}{h_call[i]:>10.3f}{'-' if steps is None else steps:>17}"
        )
        row = {"batch_size": b, "compile_a": s_comp[i], "compile_b": h_comp[i], "run_a": s_run[i], "run_b": h_run[i]}
        table.append({**row, "call_b": h_call[i], "steps_to_target": steps})
    rest = med(
        [
            t - sum(st.wall_times) - sum(st.compile_times) - sum(st.measure_times.values())
            for t, st in zip(runs["study_s"], runs["study"], strict=True)
        ]
    )
    tm.say(
        f"\nwhere (a)'s {study_s:.2f} s go: sweeps {sum(s_run):.3f} s run + {sum(s_comp):.2f} s compile; diagnostics "
        + ", ".join(f"{k} {v:.2f} s" for k, v in diag.items())
        + f" (compile included); the rest {rest:.3f} s (data checked once, results read)"
    )
    tm.say(
        f"(b) by hand: sweeps {sum(h_run):.3f} s run + {sum(h_comp):.2f} s compile = {sum_sweeps:.2f} s; whole calls "
        f"(minibatch + sweep) {sum(h_call):.2f} s"
    )
    ratios = {"study_vs_sweeps": study_s / sum_sweeps, "study_vs_calls": study_s / sum(h_call)}
    met = ratios["study_vs_sweeps"] <= TARGET_RATIO
    tm.say(
        f"\nratios: study / sum of sweeps = {ratios['study_vs_sweeps']:.2f}x (target <= {TARGET_RATIO:.2f}x: "
        f"{'met' if met else 'NOT met'}); study / sum of whole sweep calls = {ratios['study_vs_calls']:.2f}x"
    )
    tm.say(f"same steps to the target both ways: {agree}")
    tm.say("\n" + last.summary())
    error = None if agree else "the study and the sweeps by hand disagree on the steps to the target"
    return tm.finish(args.json, {
        "machine": info, "quick": args.quick, "repeats": args.repeats,
        "config": {**cfg, "target": target},
        "times": {"study_s": runs["study_s"], "hand_call_s": runs["hand_call_s"], "diagnostics_s": diag},
        "table": table, "ratios": ratios, "agree": agree,
    }, error)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
