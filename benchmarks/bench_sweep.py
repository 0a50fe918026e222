"""Benchmark ``gdjax.sweep`` (many learning rates in one compiled program) against the expert's program and a loop.

Run: ``python benchmarks/bench_sweep.py [--quick] [--repeats N] [--json PATH]``
(``--quick``: 16 learning rates of a tiny problem, a smoke test of seconds).

One 64-learning-rate sweep of least squares (``linear_regression(n=8192, d=64)``,
params at zero, batch 32, 5 epochs, plain SGD, the same learning rates for every
method) done in one process by:

  (a) ``gd.sweep(model.loss, params, optax.sgd, gd.minibatch(data, 32), ...)``;
  (b) the expert's hand-written ``jax.jit(jax.vmap(run))`` over learning rates of
      ``bench_fit.py``'s scan program (``jax.random.permutation`` per epoch,
      ``lax.scan`` over batches gathering ``X[idx]``); and, as a diagnostic (b'),
      the same with the order drawn per member (what vmapping a whole training
      loop does; gd.sweep shares its epoch loop among the members to avoid it);
  (c) a Python loop over the learning rates of ``bench_fit.py``'s plain loop
      (host-sliced numpy batches, a jitted optax step taking the learning rate as
      an argument, so it compiles once).

Every method must land at similar final full-data losses for shared learning
rates, so none can win by skipping work. The scikit-learn and PyTorch rows are in
``bench_sweep_others.py``; the large sweep, memory, scaling and the progress bar
in ``bench_large_sweep.py``, ``bench_memory.py``, ``bench_scaling.py`` and
``bench_progress.py``.
"""

from __future__ import annotations

import sys
from typing import Any

import _timing as tm
import jax
import jax.numpy as jnp
import numpy as np
from _programs import (
    LOSS_TOLERANCE,
    bench_expert,
    bench_gd_sweep,
    extrapolated,
    loss_table,
    losses_at,
    main_sweep,
    member_losses,
    python_loop,
    subset,
    times_table,
    zero_params,
)

import gdjax as gd

TARGET_LOOP_VS_SWEEP = 50.0


def bench_python_loop(data: dict, d: int, lrs: np.ndarray, idx: np.ndarray, batch: int, epochs: int, repeats: int):
    """(c): the loop run for the learning rates ``idx``; its time is scaled to all of them."""
    compile_s, run = python_loop(data, d, batch, epochs)  # compile_s: the first step call
    finals: dict[int, Any] = {}

    def all_lrs(r: int) -> None:
        for k in idx:
            finals[int(k)] = run(float(lrs[k]), 1000 * r)[0]

    runs, _ = tm.repeat_timed(all_lrs, repeats)
    return {"compile_s": compile_s, "timed_lrs": len(idx), "subset_run_s": runs, "params_by_index": finals}


def main(argv: list[str] | None = None) -> int:
    args = tm.parse(tm.parser(__doc__, default_repeats=5), argv)
    repeats, cfg = args.repeats, main_sweep(args.quick)
    loop_idx = subset(cfg.members, 4 if args.quick else cfg.members)
    loop_repeats = 1 if args.quick else 2
    info = tm.print_header(args.quick)

    m = cfg.members
    tm.say(
        f"\n=== one sweep of {m} learning rates: linear regression n={cfg.n} d={cfg.d}, batch {cfg.batch} "
        f"({cfg.steps} steps/epoch), {cfg.epochs} epochs, plain SGD ==="
    )
    tm.say(f"mini-batch lrs: geomspace({cfg.lrs[0]:g}, {cfg.lrs[-1]:g}, {m}); params start at zero")
    prob = cfg.problem()
    data = prob.data
    X, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])

    tm.say("running (a) gd.sweep ...")
    res: dict[str, Any] = {"a": bench_gd_sweep(gd.minibatch(data, cfg.batch), cfg.d, cfg.lrs, cfg.epochs, repeats)}
    tm.say("running (b) expert jit(vmap) ...")
    res["b"] = bench_expert(data, cfg.d, cfg.lrs, cfg.batch, cfg.epochs, repeats)
    res["b_diag"] = bench_expert(data, cfg.d, cfg.lrs, cfg.batch, cfg.epochs, repeats, key_per_member=True)
    res["b_diag"].pop("params")
    tm.say(f"running (c) python loop over {len(loop_idx)} lrs x {loop_repeats} ...")
    res["c"] = bench_python_loop(data, cfg.d, cfg.lrs, loop_idx, cfg.batch, cfg.epochs, loop_repeats)

    # ---- final losses: every method's params on the full data set
    loss = {
        "gd.sweep": np.asarray(member_losses(res["a"].pop("params"), X, y), np.float64),
        "expert": np.asarray(member_losses(res["b"].pop("params"), X, y), np.float64),
        "python loop": losses_at(res["c"].pop("params_by_index"), m, X, y),
    }
    own = np.abs(res["a"]["sweep_final_loss"] / loss["gd.sweep"] - 1).max()
    initial = float(member_losses(jax.tree.map(lambda a: a[None], zero_params(cfg.d)), X, y)[0])
    tm.say(
        f"\n(gd.sweep diverged members: {res['a']['diverged']} of {m}; SweepResult.final_loss agrees with the "
        f"yardstick within {100 * own:.3f}%; least-squares optimum {prob.min_loss:.5f}, initial loss {initial:.3f})"
    )
    check = loss_table(
        f"final full-data loss, mini-batch SGD (batch {cfg.batch}), at {min(8, m)} of the lrs:",
        cfg.lrs, subset(m, 8), loss, "gd.sweep",
    )  # fmt: skip

    # ---- times
    a_run, a_wall, b_run = tm.med(res["a"]["run_s"]), tm.med(res["a"]["wall_time_s"]), tm.med(res["b"]["run_s"])
    c_run, c_note = extrapolated(res["c"], m)
    rows = [  # name, members timed, compile, run (s, all m), note
        ("(a) gd.sweep, whole call", f"{m}", res["a"]["compile_s"], a_run, ""),
        ("(a) gd.sweep, .wall_time", f"{m}", None, a_wall, "compiled run only"),
        ("(b) expert jit(vmap)", f"{m}", res["b"]["compile_s"], b_run, ""),
        ("(b') expert, order per member", f"{m}", res["b_diag"]["compile_s"], tm.med(res["b_diag"]["run_s"]),
         "diagnostic, see below"),
        ("(c) python loop", f"{res['c']['timed_lrs']}", res["c"]["compile_s"], c_run, c_note),
    ]  # fmt: skip
    tm.say(
        f"\ntimes for all {m} learning rates (median over runs; (a),(b): {repeats} runs, a new key each; "
        f"python loop: {loop_repeats})"
    )
    table = times_table(m, rows, {"(a) gd.sweep, whole call": a_run})
    tm.say(
        "  'timed': learning rates actually run; times of subsets are scaled linearly to all of them.\n"
        "  (a) whole call = gd.sweep() end to end on a warm cache (checks, host-side result building);\n"
        "  (b) compile = lower().compile(); (c) compile = the first jitted step call.\n"
        "  (b') diagnostic = (b) drawing orders with gdjax's Feistel shuffle (DataIterator.epoch_indices) from one\n"
        "  copy of the same key per member: same orders for all, but every member computes its own order, gathers\n"
        "  its own batch and does matrix-vector products. That is what vmapping a whole training loop, epoch loop\n"
        "  included, does; gd.sweep runs one epoch loop shared by all members and vmaps only the epoch body, so\n"
        "  the order and the gather are shared, like (b)."
    )
    ratios = {
        "sweep_vs_expert": a_run / b_run,
        "sweep_wall_vs_expert": a_wall / b_run,
        "python_loop_vs_sweep": c_run / a_run,
    }
    tm.say(
        f"\nratios: (a)/(b) gd.sweep / expert = {ratios['sweep_vs_expert']:.2f}x (compiled run only: "
        f"{ratios['sweep_wall_vs_expert']:.2f}x)"
    )
    met = ratios["python_loop_vs_sweep"] >= TARGET_LOOP_VS_SWEEP
    tm.say(
        f"        (c)/(a) python loop / gd.sweep = {ratios['python_loop_vs_sweep']:.1f}x "
        f"(target >= {TARGET_LOOP_VS_SWEEP:.0f}x: {'met' if met else 'NOT met'})"
    )
    error = None if check["ok"] else f"final losses differ by more than {100 * LOSS_TOLERANCE:.0f}% somewhere"
    return tm.finish(args.json, {
        "machine": info, "quick": args.quick, "repeats": repeats,
        "config": {"n": cfg.n, "d": cfg.d, "batch": cfg.batch, "epochs": cfg.epochs, "members": m,
                   "python_loop_lrs": len(loop_idx), "python_loop_repeats": loop_repeats},
        "results": res, "table": table, "ratios": ratios,
        "losses": {k: v for k, v in loss.items() if v is not None},
        "loss_check": {"minibatch": check, "min_loss": prob.min_loss},
    }, error)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
