"""Benchmark a large ``gdjax.sweep`` against this machine's float32 matrix-multiply rate.

Run: ``python benchmarks/bench_large_sweep.py [--quick] [--repeats N] [--json PATH]``
(``--quick``: 32 learning rates, D=128, a smoke test of seconds).

256 learning rates of least squares (``linear_regression(n=8192, d=512)``, batch
256, 2 epochs, plain SGD) by ``gd.sweep`` and by the expert's ``jit(vmap)`` of
``bench_sweep.py`` (with its per-member-order diagnostic); their achieved FLOP
rates, counting the training matrix products only, against ``jnp.dot`` of two
large square matrices, of the sweep's own shape, and a chain of dense SGD steps
of that shape, all measured in the same process.
"""

from __future__ import annotations

import sys
from typing import Any

import _timing as tm
import jax
import jax.numpy as jnp
import numpy as np
from _programs import LARGE_LR_RANGE, LOSS_TOLERANCE, Sweep, bench_expert, bench_gd_sweep, large_sweep, member_losses

import gdjax as gd

TARGET_MATMUL_FRACTION = 0.70


def matmul_rates(cfg: Sweep, n: int, repeats: int, flop: float) -> dict[str, Any]:
    """Rates of ``jnp.dot`` of two ``(n, n)`` matrices, of the sweep's shape (about ``flop`` FLOPs of calls), and
    of a chain of dense SGD steps of that shape."""
    k1, k2, k3, k4 = jax.random.split(jax.random.key(7), 4)
    a = jax.random.normal(k1, (n, n), jnp.float32)
    b = jax.random.normal(k2, (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))
    big, _ = tm.repeat_timed(lambda _: dot(a, b), repeats)
    big_rate = 2 * n**3 / tm.med(big)

    m, d, bsz = cfg.members, cfg.d, cfg.batch
    W = jax.random.normal(k3, (m, d), jnp.float32)
    Xb = jax.random.normal(k4, (bsz, d), jnp.float32)
    xt = Xb.T
    jax.block_until_ready(dot(W, xt))
    calls = max(20, int(flop / (2 * m * d * bsz)))
    small, _ = tm.repeat_timed(lambda _: dot(W, xt), calls)
    small_rate = 2 * m * d * bsz / tm.med(small)

    # The sweep's dense work with nothing else: K SGD steps of all members on one
    # batch, forward (M,D)@(D,B) then backward (M,B)@(B,D), in one program.
    K = 64

    @jax.jit
    def chain(W, Xb):
        def body(_, W):
            r = W @ Xb.T
            return W - 1e-6 * (r @ Xb)

        return jax.lax.fori_loop(0, K, body, W)

    jax.block_until_ready(chain(W, Xb))
    chains, _ = tm.repeat_timed(lambda _: chain(W, Xb), 5)
    chain_rate = 4 * m * d * bsz * K / tm.med(chains)
    return {
        "big_n": n, "big_s": big, "big_flops_per_s": big_rate,
        "sweep_shape": [m, d, bsz], "sweep_shape_calls": calls, "sweep_shape_median_s": tm.med(small),
        "sweep_shape_flops_per_s": small_rate,
        "step_chain_steps": K, "step_chain_s": chains, "step_chain_flops_per_s": chain_rate,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = tm.parse(tm.parser(__doc__, default_repeats=5), argv)
    repeats, cfg = args.repeats, large_sweep(args.quick)
    m, d, bsz, n, epochs, steps = cfg.members, cfg.d, cfg.batch, cfg.n, cfg.epochs, cfg.steps
    info = tm.print_header(args.quick)
    tm.say(
        f"\n=== large sweep: {m} learning rates, linear regression n={n} d={d} "
        f"(data {n}x{d} float32 = {n * d * 4 / 2**20:.0f} MiB), batch {bsz} ({steps} steps/epoch), {epochs} epochs ==="
    )
    prob = cfg.problem()
    tm.say(
        f"lrs geomspace({LARGE_LR_RANGE[0]:g}, {LARGE_LR_RANGE[1]:g}, {m}); "
        "timing gd.sweep, expert jit(vmap), matmuls ..."
    )
    sw = bench_gd_sweep(gd.minibatch(prob.data, bsz), d, cfg.lrs, epochs, repeats)
    ex = bench_expert(prob.data, d, cfg.lrs, bsz, epochs, repeats)
    diag = bench_expert(prob.data, d, cfg.lrs, bsz, epochs, repeats, key_per_member=True)
    diag.pop("params")
    X, y = jnp.asarray(prob.data["x"]), jnp.asarray(prob.data["y"])
    l_sw = np.asarray(member_losses(sw.pop("params"), X, y))
    l_ex = np.asarray(member_losses(ex.pop("params"), X, y))
    both = np.isfinite(l_sw) & np.isfinite(l_ex)
    rel = float(np.abs(l_ex[both] / l_sw[both] - 1).max()) if both.any() else float("nan")
    loss_ok = bool(both.any()) and rel <= LOSS_TOLERANCE
    mm = matmul_rates(cfg, *((1024, 3, 1e8) if args.quick else (4096, 5, 2e9)))

    train_flops = 4 * bsz * d * m * steps * epochs
    eval_flops = 2 * n * d * m * (epochs + 1)  # gd.sweep's full-data loss before training and after each epoch
    sw_wall, sw_run, ex_run = tm.med(sw["wall_time_s"]), tm.med(sw["run_s"]), tm.med(ex["run_s"])
    big = mm["big_flops_per_s"]
    rates = {
        "sweep_train_flops_per_s": train_flops / sw_wall,
        "sweep_all_flops_per_s": (train_flops + eval_flops) / sw_wall,
        "sweep_whole_call_train_flops_per_s": train_flops / sw_run,
        "expert_train_flops_per_s": train_flops / ex_run,
        "expert_key_per_member_train_flops_per_s": train_flops / tm.med(diag["run_s"]),
    }
    tm.say(
        f"gd.sweep diverged members: {sw['diverged']} of {m}; final losses gd.sweep vs expert: largest relative "
        f"difference {100 * rel:.2f}% -> {'OK' if loss_ok else 'MISMATCH'}"
    )
    tm.say(
        f"FLOPs counted: per step per member forward x@w 2*B*D + backward gradient 2*B*D = 4*B*D = "
        f"{4 * bsz * d:,}; x {m} members x {steps * epochs} steps = {train_flops / 1e9:.2f} GFLOP of training "
        f"(bias, loss and update elementwise work not counted). gd.sweep also evaluates the full-data loss "
        f"{epochs + 1} times per member (2*N*D*M each) = {eval_flops / 1e9:.2f} GFLOP more, which the expert skips."
    )
    tm.say(f"  {'':<44}{'compile (s)':>12}{'run (s)':>10}{'GFLOP/s':>10}{'% of big matmul':>17}")
    lines = [
        ("gd.sweep .wall_time, training FLOPs", sw["compile_s"], sw_wall, rates["sweep_train_flops_per_s"]),
        ("gd.sweep .wall_time, incl. full-data losses", None, sw_wall, rates["sweep_all_flops_per_s"]),
        ("gd.sweep whole call, training FLOPs", None, sw_run, rates["sweep_whole_call_train_flops_per_s"]),
        ("expert jit(vmap), training FLOPs", ex["compile_s"], ex_run, rates["expert_train_flops_per_s"]),
        ("expert, order per member (diagnostic)", diag["compile_s"], tm.med(diag["run_s"]),
         rates["expert_key_per_member_train_flops_per_s"]),
        (f"jnp.dot ({mm['big_n']},{mm['big_n']})@({mm['big_n']},{mm['big_n']})", None,
         tm.med(mm["big_s"]), mm["big_flops_per_s"]),
        (f"jnp.dot ({m},{d})@({d},{bsz}), the sweep's shape", None, mm["sweep_shape_median_s"],
         mm["sweep_shape_flops_per_s"]),
        (f"{mm['step_chain_steps']} dense SGD steps (M,D)@(D,B), (M,B)@(B,D)", None,
         tm.med(mm["step_chain_s"]), mm["step_chain_flops_per_s"]),
    ]  # fmt: skip
    for name, comp, t, rate in lines:
        comp_txt = f"{comp:>12.3f}" if comp is not None else f"{'-':>12}"
        tm.say(f"  {name:<44}{comp_txt}{t:>10.4f}{rate / 1e9:>10.1f}{100 * rate / big:>16.1f}%")
    frac = rates["sweep_train_flops_per_s"] / big
    tm.say(
        f"gd.sweep (compiled run, training FLOPs) reaches {100 * frac:.1f}% of the big-matmul rate "
        f"(target >= {100 * TARGET_MATMUL_FRACTION:.0f}%: {'met' if frac >= TARGET_MATMUL_FRACTION else 'NOT met'}), "
        f"{100 * rates['sweep_train_flops_per_s'] / mm['step_chain_flops_per_s']:.1f}% of the dense SGD step chain "
        f"of its own shape; gd.sweep / expert = {sw_wall / ex_run:.2f}x (compiled run), "
        f"{sw_run / ex_run:.2f}x (whole call)"
    )
    error = None if loss_ok else f"final losses differ by more than {100 * LOSS_TOLERANCE:.0f}%"
    return tm.finish(args.json, {
        "machine": info, "quick": args.quick, "repeats": repeats,
        "config": {"n": n, "d": d, "batch": bsz, "epochs": epochs, "members": m},
        "gd_sweep": sw, "expert": ex, "expert_key_per_member": diag, "matmul": mm, "rates": rates,
        "train_flops": train_flops, "eval_flops": eval_flops, "matmul_fraction": frac,
        "loss_check": {"worst_relative_difference": rel, "ok": loss_ok},
    }, error)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
