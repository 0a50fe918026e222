"""Benchmark a large ``gdjax.sweep`` against this machine's float32 matrix-multiply rate.

Run: ``python benchmarks/bench_large_sweep.py [--quick] [--repeats N] [--json PATH]``
(``--quick``: 32 learning rates, D=128, a smoke test of seconds).

256 learning rates of least squares (``linear_regression(n=8192, d=512)``, batch
256, 2 epochs, plain SGD) by ``gd.sweep`` (the default ``eval_every=1``: the
full-data loss after every epoch; and ``eval_every=0``: only after the last)
and by the expert's ``jit(vmap)`` of ``bench_sweep.py`` (with its
per-member-order diagnostic); their achieved FLOP rates, counting the training
matrix products only, against ``jnp.dot`` of two large square matrices, of the
sweep's own shape, and a chain of dense SGD steps of that shape.

All of them are timed in the same process, in interleaved rounds (each way
once per round, in a rotated order, medians over the rounds), so that a
change of the machine's load or clock hits every way alike: on a shared
2-core machine the big-matmul rate alone moves by 30% between runs.
(The per-member-order diagnostic, 15x slower, is timed apart.)

Every ``gd.sweep`` also computes the full-data loss of the shared initial
parameters (once: it is the same for every member) and of every member's
parameters at each evaluation (``2*N*D`` FLOPs per member each). With 2
epochs an evaluation of all members is half an epoch's training FLOPs, so
even with ``eval_every=0`` the final one adds a quarter to the training
FLOPs.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import _timing as tm
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _programs import LARGE_LR_RANGE, LOSS_TOLERANCE, bench_expert, expert_run, large_sweep, member_losses, zero_params

import gdjax as gd

TARGET_MATMUL_FRACTION = 0.70  # gd.sweep as it runs by default (eval_every=1)
TARGET_EVERY_0_FRACTION = 0.80  # gd.sweep with eval_every=0 (issue 10)


@dataclasses.dataclass
class Way:
    """``call(seed) -> (seconds, extra)``, timed once per round after ``first()`` (which compiles) ran."""

    call: Callable[[int], tuple[float, Any]]
    first: Callable[[], float]  # compile seconds
    compile_s: float | None = None
    run_s: list[float] = dataclasses.field(default_factory=list)
    extra: list[Any] = dataclasses.field(default_factory=list)
    result: Any = None  # the last result (gd.sweep ways)


def sweep_way(it: gd.DataIterator, d: int, lrs: np.ndarray, epochs: int, eval_every: int) -> Way:
    """``gd.sweep``: seconds are the result's ``wall_time`` (compiled run); ``extra`` the whole call's seconds."""
    model = gd.models.linear()
    params = zero_params(d)

    def run(seed: int) -> gd.SweepResult:
        sw = gd.sweep(
            model.loss, params, optax.sgd, it, learning_rates=lrs, epochs=epochs, key=jax.random.key(seed),
            eval_every=eval_every,
        )  # fmt: skip
        jax.block_until_ready(sw.params)
        way.result = sw
        return sw

    def call(seed: int) -> tuple[float, Any]:
        whole, sw = tm.timed(lambda: run(seed))
        return sw.wall_time, whole

    way = Way(call, lambda: run(0).compile_time)
    return way


def jit_way(jitted: Any, args: Callable[[int], tuple], calls: int = 1) -> Way:
    """A ``jax.jit`` program, compiled apart; one timing is the median of ``calls`` calls."""
    compiled: list[Any] = []

    def first() -> float:
        compile_s, program = tm.timed(lambda: jitted.lower(*args(0)).compile())
        compiled.append(program)
        jax.block_until_ready(program(*args(0)))
        return compile_s

    def call(seed: int) -> tuple[float, Any]:
        times, outs = tm.repeat_timed(lambda _: compiled[0](*args(seed)), calls)
        return tm.med(times), outs[-1]

    return Way(call, first)


def matmul_ways(m: int, d: int, bsz: int, n: int, flop: float) -> tuple[dict[str, Way], dict[str, Any]]:
    """``jnp.dot`` of two ``(n, n)`` matrices, of the sweep's shape (about ``flop`` FLOPs of calls), and a chain
    of dense SGD steps of that shape; with their FLOPs per timing."""
    k1, k2, k3, k4 = jax.random.split(jax.random.key(7), 4)
    a = jax.random.normal(k1, (n, n), jnp.float32)
    b = jax.random.normal(k2, (n, n), jnp.float32)
    W = jax.random.normal(k3, (m, d), jnp.float32)
    Xb = jax.random.normal(k4, (bsz, d), jnp.float32)
    calls = max(20, int(flop / (2 * m * d * bsz)))

    # The sweep's dense work with nothing else: K SGD steps of all members on one
    # batch, forward (M,D)@(D,B) then backward (M,B)@(B,D), in one program.
    K = 64

    @jax.jit
    def chain(W: jax.Array, Xb: jax.Array) -> jax.Array:
        def body(_: Any, W: jax.Array) -> jax.Array:
            r = W @ Xb.T
            return W - 1e-6 * (r @ Xb)

        return jax.lax.fori_loop(0, K, body, W)

    ways = {
        "big": jit_way(jax.jit(jnp.dot), lambda _: (a, b)),
        "small": jit_way(jax.jit(jnp.dot), lambda _: (W, Xb.T), calls),
        "chain": jit_way(chain, lambda _: (W, Xb)),
    }
    flops = {"big": 2 * n**3, "small": 2 * m * d * bsz, "chain": 4 * m * d * bsz * K}
    return ways, {"big_n": n, "sweep_shape": [m, d, bsz], "sweep_shape_calls": calls, "step_chain_steps": K,
                  "flops": flops}  # fmt: skip


def run_rounds(ways: dict[str, Way], repeats: int) -> None:
    """Compile every way, then ``repeats`` rounds calling each once, in a rotated order."""
    for way in ways.values():
        way.compile_s = way.first()
    names = list(ways)
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            seconds, extra = ways[name].call(r + 1)
            ways[name].run_s.append(seconds)
            ways[name].extra.append(extra)


def main(argv: list[str] | None = None) -> int:
    args = tm.parse(tm.parser(__doc__, default_repeats=15), argv)
    repeats, cfg = args.repeats, large_sweep(args.quick)
    m, d, bsz, n, epochs, steps = cfg.members, cfg.d, cfg.batch, cfg.n, cfg.epochs, cfg.steps
    info = tm.print_header(args.quick)
    tm.say(
        f"\n=== large sweep: {m} learning rates, linear regression n={n} d={d} "
        f"(data {n}x{d} float32 = {n * d * 4 / 2**20:.0f} MiB), batch {bsz} ({steps} steps/epoch), {epochs} epochs ==="
    )
    prob = cfg.problem()
    X, y = jnp.asarray(prob.data["x"]), jnp.asarray(prob.data["y"])
    tm.say(
        f"lrs geomspace({LARGE_LR_RANGE[0]:g}, {LARGE_LR_RANGE[1]:g}, {m}); timing gd.sweep (eval_every=1 and 0), "
        f"expert jit(vmap), matmuls in {repeats} interleaved rounds ..."
    )
    it = gd.minibatch(prob.data, bsz)
    lr = jnp.asarray(cfg.lrs, jnp.float32)
    expert = jax.jit(jax.vmap(expert_run(bsz, epochs), in_axes=(0, None, None, None, None)))
    mm_ways, mm = matmul_ways(m, d, bsz, *((1024, 1e8) if args.quick else (4096, 2e9)))
    ways = {
        "sweep": sweep_way(it, d, cfg.lrs, epochs, eval_every=1),
        "sweep0": sweep_way(it, d, cfg.lrs, epochs, eval_every=0),
        "expert": jit_way(expert, lambda seed: (lr, zero_params(d), X, y, jax.random.key(seed))),
        **mm_ways,
    }
    run_rounds(ways, repeats)
    diag = bench_expert(prob.data, d, cfg.lrs, bsz, epochs, min(repeats, 5), key_per_member=True)
    diag.pop("params")

    sw, sw0, ex = ways["sweep"], ways["sweep0"], ways["expert"]
    res, res0 = sw.result, sw0.result
    l_sw = np.asarray(member_losses(res.params, X, y))
    l_sw0 = np.asarray(member_losses(res0.params, X, y))
    l_ex = np.asarray(member_losses(ex.extra[-1][0], X, y))
    both = np.isfinite(l_sw) & np.isfinite(l_ex)
    rel = float(np.abs(l_ex[both] / l_sw[both] - 1).max()) if both.any() else float("nan")
    # eval_every changes no step: the two gd.sweep runs (same key) end with the same parameters
    same = np.isfinite(l_sw) & np.isfinite(l_sw0)
    rel0 = float(np.abs(l_sw0[same] / l_sw[same] - 1).max()) if same.any() else float("nan")
    loss_ok = bool(both.any()) and rel <= LOSS_TOLERANCE and bool(same.any()) and rel0 <= 1e-5

    train_flops = 4 * bsz * d * m * steps * epochs
    # gd.sweep's full-data losses: of the shared initial parameters once (the same for every member, computed
    # once), then of every member after each epoch (eval_every=1) or after the last (eval_every=0)
    eval_flops = 2 * n * d * (1 + m * epochs)
    eval_flops_0 = 2 * n * d * (1 + m)
    t = {name: tm.med(w.run_s) for name, w in ways.items()}
    whole, whole0 = tm.med(sw.extra), tm.med(sw0.extra)
    rate = {name: mm["flops"][name] / t[name] for name in mm_ways}
    big = rate["big"]
    rates = {
        "sweep_train_flops_per_s": train_flops / t["sweep"],
        "sweep_all_flops_per_s": (train_flops + eval_flops) / t["sweep"],
        "sweep_whole_call_train_flops_per_s": train_flops / whole,
        "sweep_every_0_train_flops_per_s": train_flops / t["sweep0"],
        "sweep_every_0_all_flops_per_s": (train_flops + eval_flops_0) / t["sweep0"],
        "sweep_every_0_whole_call_train_flops_per_s": train_flops / whole0,
        "expert_train_flops_per_s": train_flops / t["expert"],
        "expert_key_per_member_train_flops_per_s": train_flops / tm.med(diag["run_s"]),
        "big_matmul_flops_per_s": big,
        "sweep_shape_flops_per_s": rate["small"],
        "step_chain_flops_per_s": rate["chain"],
    }
    tm.say(
        f"gd.sweep diverged members: {int(res.diverged.sum())} of {m} (eval_every=0: {int(res0.diverged.sum())}); "
        f"final losses gd.sweep vs expert: largest relative difference {100 * rel:.2f}%, gd.sweep eval_every=0 "
        f"vs 1: {rel0:.1e} -> {'OK' if loss_ok else 'MISMATCH'}"
    )
    tm.say(
        f"FLOPs counted: per step per member forward x@w 2*B*D + backward gradient 2*B*D = 4*B*D = "
        f"{4 * bsz * d:,}; x {m} members x {steps * epochs} steps = {train_flops / 1e9:.2f} GFLOP of training "
        f"(bias, loss and update elementwise work not counted). gd.sweep also evaluates the full-data loss "
        f"(2*N*D per member each) of the shared initial parameters once and of every member after each epoch: "
        f"{eval_flops / 1e9:.2f} GFLOP more (eval_every=0: after the last epoch only, {eval_flops_0 / 1e9:.2f} "
        "GFLOP), which the expert skips."
    )
    tm.say(f"  {'':<50}{'compile (s)':>12}{'run (s)':>10}{'GFLOP/s':>10}{'% of big matmul':>17}")
    lines = [
        ("gd.sweep .wall_time, training FLOPs", sw.compile_s, t["sweep"], rates["sweep_train_flops_per_s"]),
        ("gd.sweep .wall_time, incl. full-data losses", None, t["sweep"], rates["sweep_all_flops_per_s"]),
        ("gd.sweep whole call, training FLOPs", None, whole, rates["sweep_whole_call_train_flops_per_s"]),
        ("gd.sweep eval_every=0 .wall_time, training FLOPs", sw0.compile_s, t["sweep0"],
         rates["sweep_every_0_train_flops_per_s"]),
        ("gd.sweep eval_every=0 .wall_time, incl. losses", None, t["sweep0"], rates["sweep_every_0_all_flops_per_s"]),
        ("gd.sweep eval_every=0 whole call, training FLOPs", None, whole0,
         rates["sweep_every_0_whole_call_train_flops_per_s"]),
        ("expert jit(vmap), training FLOPs", ex.compile_s, t["expert"], rates["expert_train_flops_per_s"]),
        ("expert, order per member (diagnostic)", diag["compile_s"], tm.med(diag["run_s"]),
         rates["expert_key_per_member_train_flops_per_s"]),
        (f"jnp.dot ({mm['big_n']},{mm['big_n']})@({mm['big_n']},{mm['big_n']})", None, t["big"], big),
        (f"jnp.dot ({m},{d})@({d},{bsz}), the sweep's shape", None, t["small"], rate["small"]),
        (f"{mm['step_chain_steps']} dense SGD steps (M,D)@(D,B), (M,B)@(B,D)", None, t["chain"], rate["chain"]),
    ]  # fmt: skip
    for name, comp, secs, r in lines:
        comp_txt = f"{comp:>12.3f}" if comp is not None else f"{'-':>12}"
        tm.say(f"  {name:<50}{comp_txt}{secs:>10.4f}{r / 1e9:>10.1f}{100 * r / big:>16.1f}%")
    frac = rates["sweep_train_flops_per_s"] / big
    frac0 = rates["sweep_every_0_train_flops_per_s"] / big
    chain = rate["chain"]
    tm.say(
        f"gd.sweep (compiled run, training FLOPs) reaches {100 * frac:.1f}% of the big-matmul rate "
        f"(target >= {100 * TARGET_MATMUL_FRACTION:.0f}%: {'met' if frac >= TARGET_MATMUL_FRACTION else 'NOT met'}), "
        f"{100 * rates['sweep_train_flops_per_s'] / chain:.1f}% of the dense SGD step chain "
        f"of its own shape; gd.sweep / expert = {t['sweep'] / t['expert']:.2f}x (compiled run), "
        f"{whole / t['expert']:.2f}x (whole call)"
    )
    tm.say(
        f"gd.sweep eval_every=0 reaches {100 * frac0:.1f}% of the big-matmul rate (target >= "
        f"{100 * TARGET_EVERY_0_FRACTION:.0f}%: {'met' if frac0 >= TARGET_EVERY_0_FRACTION else 'NOT met'}), "
        f"{100 * rates['sweep_every_0_train_flops_per_s'] / chain:.1f}% of the dense SGD step chain; "
        f"eval_every=0 / eval_every=1 = {t['sweep0'] / t['sweep']:.2f}x; gd.sweep eval_every=0 / expert = "
        f"{t['sweep0'] / t['expert']:.2f}x (compiled run)"
    )
    error = None if loss_ok else "final losses differ (gd.sweep vs expert by more than 10%, or eval_every=0 vs 1)"
    timings = {
        name: {"compile_s": w.compile_s, "run_s": w.run_s, **({"whole_call_s": w.extra} if name.startswith("sweep")
                                                               else {})}
        for name, w in ways.items()
    }  # fmt: skip
    return tm.finish(args.json, {
        "machine": info, "quick": args.quick, "repeats": repeats,
        "config": {"n": n, "d": d, "batch": bsz, "epochs": epochs, "members": m},
        "timings": timings, "expert_key_per_member": diag, "matmul": mm, "rates": rates,
        "train_flops": train_flops, "eval_flops": eval_flops, "eval_flops_every_0": eval_flops_0,
        "matmul_fraction": frac, "matmul_fraction_every_0": frac0,
        "chain_fraction": rates["sweep_train_flops_per_s"] / chain,
        "chain_fraction_every_0": rates["sweep_every_0_train_flops_per_s"] / chain,
        "loss_check": {"worst_relative_difference": rel, "every_0_vs_1": rel0, "ok": loss_ok},
    }, error)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
