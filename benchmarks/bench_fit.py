"""Benchmark ``gdjax.fit`` against a hand-written expert program and a plain Python loop.

Run: ``python benchmarks/bench_fit.py [--quick] [--repeats N] [--json PATH]``
(``--quick``: tiny sizes, a smoke test of seconds).

The same training run is done three ways in one process:

  (a) ``gdjax.fit`` with ``optax.sgd`` in factory form (learning rate traced);
  (b) what a JAX expert writes by hand: one ``jax.jit`` of a ``lax.scan`` over
      epochs, each a ``lax.scan`` over device-gathered batches;
  (c) what most users write: a Python loop over epochs and batches that slices
      numpy batches on the host and calls a jitted optax step.

The problem is least squares, ``gdjax.problems.linear_regression(n=8192,
d=64)``, loss ``mean(0.5 * (x @ w + b - y) ** 2)`` per batch, params starting
at zero, batch size 32, 5 epochs, SGD with learning rate 0.01. All three must
reach a similar full-data loss, so none of them can win by skipping work.

A second, small section times drawing one epoch's order of examples:
``jax.random.permutation`` (a sort) against gdjax's Feistel bijection
(``DataIterator.epoch_indices``).
"""

from __future__ import annotations

import sys
from typing import Any

import _timing as tm
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _programs import batch_mean_loss, expert_run, python_loop, zero_params

import gdjax as gd

LR = 0.01
BATCH = 32
LOSS_TOLERANCE = 0.10  # final full-data losses must agree within 10%


@jax.jit
def full_data_loss(params: dict, X: jax.Array, y: jax.Array) -> jax.Array:
    """The common yardstick: mean loss over the whole data set."""
    return batch_mean_loss(params, X, y)


def bench_gdjax(data: dict, d: int, epochs: int, repeats: int) -> dict[str, Any]:
    model = gd.models.linear()
    params = zero_params(d)
    # The iterator is built once, outside the timings: like X and y for the
    # expert program, the data is placed on the device before the clock starts.
    build_s, it = tm.timed(lambda: gd.minibatch(data, BATCH))

    def call(seed: int) -> gd.FitResult:
        res = gd.fit(model.loss, params, optax.sgd, it, epochs=epochs, key=jax.random.key(seed), learning_rate=LR)
        jax.block_until_ready(res.params)
        return res

    r = tm.time_result_calls(call, repeats)  # compile_s: FitResult.compile_time of the first call
    res = r.pop("result")
    r["fit_wall_time_s"] = r.pop("wall_time_s")  # FitResult.wall_time (compiled run only)
    r["fit_compile_time_cached_s"] = r.pop("compile_time_cached_s")  # fit's lower().compile() on a warm cache
    r.update(minibatch_build_s=build_s, params=res.params, fit_final_loss=res.final_loss)
    return r


def bench_expert(data: dict, d: int, epochs: int, repeats: int) -> dict[str, Any]:
    X, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    params, lr = zero_params(d), jnp.asarray(LR, jnp.float32)
    r = tm.time_compiled(
        jax.jit(expert_run(BATCH, epochs)), lambda seed: (lr, params, X, y, jax.random.key(seed)), repeats
    )
    r["params"] = r.pop("out")[0]
    return r


def bench_python_loop(data: dict, d: int, epochs: int, repeats: int) -> dict[str, Any]:
    compile_s, run = python_loop(data, d, BATCH, epochs)  # compile_s: the first step call
    first_s, _ = tm.timed(lambda: run(LR, 0))
    runs, outs = tm.repeat_timed(lambda r: run(LR, 1000 * r), repeats)
    return {"first_call_s": compile_s + first_s, "compile_s": compile_s, "run_s": runs, "params": outs[-1][0]}


def bench_permutation(n: int, repeats: int, loop_epochs: int) -> dict[str, Any]:
    """One epoch's order: ``jax.random.permutation`` against ``DataIterator.epoch_indices``."""
    it = gd.minibatch({"x": np.zeros((n, 1), np.float32)}, BATCH, drop_remainder=True)
    key = jax.random.key(0)

    def sort_perm(key, e):
        return jax.random.permutation(jax.random.fold_in(key, e), n)

    def feistel(key, e):
        return it.epoch_indices(key, e)[0].reshape(-1)

    def in_loop(fn):
        # Many epochs in one compiled loop: no dispatch cost. XOR-ing every
        # order into the carry keeps XLA from skipping any index.
        def body(e, acc):
            return acc ^ fn(key, e)

        return jax.jit(lambda: jax.lax.fori_loop(0, loop_epochs, body, jnp.zeros((n,), jnp.int32)))

    out: dict[str, Any] = {"n": n, "repeats": repeats, "loop_epochs": loop_epochs}
    for name, f in (("jax.random.permutation", sort_perm), ("gdjax epoch_indices", feistel)):
        fn, loop = jax.jit(f), in_loop(f)
        order = np.asarray(fn(key, 0))
        assert np.array_equal(np.sort(order), np.arange(n)), name
        times, _ = tm.repeat_timed(lambda r, fn=fn: fn(key, jnp.asarray(r % 1000, jnp.int32)), repeats)
        jax.block_until_ready(loop())
        loop_times, _ = tm.repeat_timed(lambda r, loop=loop: loop(), max(3, repeats // 200))
        out[name] = {"call_us": [t * 1e6 for t in times], "in_loop_us": [t * 1e6 / loop_epochs for t in loop_times]}
    return out


def report_times(results: dict[str, dict]) -> dict[str, float]:
    ref = tm.med(results["gdjax.fit"]["run_s"])
    tm.say(
        f"\n{'method':<18} {'compile (s)':>11} {'first call (s)':>14} {'run median (ms)':>15} {'run min (ms)':>12}"
        f"  vs gdjax.fit"
    )
    for name, r in results.items():
        med, mn = tm.med(r["run_s"]), min(r["run_s"])
        r["run_median_s"], r["run_min_s"], r["ratio_vs_fit"] = med, mn, med / ref
        tm.say(
            f"{name:<18} {r['compile_s']:>11.3f} {r['first_call_s']:>14.3f} {1e3 * med:>15.2f} {1e3 * mn:>12.2f}"
            f"  {tm.ratio_text(med / ref) if name != 'gdjax.fit' else 'reference'}"
        )
    tm.say(
        "  compile: fit = FitResult.compile_time of the first call; expert = lower().compile(); "
        "python loop = first step call.\n"
        "  run: whole call, wall clock, warm caches, a new key/seed per run."
    )
    fr = results["gdjax.fit"]
    tm.say(
        f"  inside gdjax.fit (medians): compiled run (FitResult.wall_time) "
        f"{1e3 * tm.med(fr['fit_wall_time_s']):.2f} ms, its lower().compile() on a warm cache "
        f"{1e3 * tm.med(fr['fit_compile_time_cached_s']):.2f} ms; "
        f"gd.minibatch() build {1e3 * fr['minibatch_build_s']:.2f} ms (not timed above)"
    )
    expert = results["expert jit+scan"]["run_median_s"]
    loop = results["python loop"]["run_median_s"]
    tm.say(f"\ngdjax vs expert:      gdjax.fit takes {ref / expert:.2f}x the expert program's time")
    tm.say(f"python loop vs gdjax: the python loop takes {loop / ref:.2f}x gdjax.fit's time")
    return {"gdjax_vs_expert": ref / expert, "python_loop_vs_gdjax": loop / ref}


def report_permutation(perm: dict[str, Any]) -> None:
    tm.say(
        f"\none epoch's order of {perm['n']} examples (jitted, median of {perm['repeats']} calls; "
        "in-loop: per epoch of a"
    )
    tm.say(f"fori_loop over {perm['loop_epochs']} epochs in one program, no dispatch cost):")
    tm.say(f"  {'method':<24} {'per call (us)':>13} {'in loop (us)':>13}")
    for name in ("jax.random.permutation", "gdjax epoch_indices"):
        p = perm[name]
        p["call_median_us"], p["in_loop_median_us"] = tm.med(p["call_us"]), tm.med(p["in_loop_us"])
        tm.say(f"  {name:<24} {p['call_median_us']:>13.1f} {p['in_loop_median_us']:>13.1f}")
    sort_p, feistel_p = perm["jax.random.permutation"], perm["gdjax epoch_indices"]
    perm["ratio_call"] = sort_p["call_median_us"] / feistel_p["call_median_us"]
    perm["ratio_in_loop"] = sort_p["in_loop_median_us"] / feistel_p["in_loop_median_us"]
    tm.say(f"  permutation / epoch_indices: {perm['ratio_call']:.2f}x per call, {perm['ratio_in_loop']:.2f}x in loop")


def main(argv: list[str] | None = None) -> int:
    args = tm.parse(tm.parser(__doc__, default_repeats=7), argv)
    repeats = args.repeats
    if args.quick:
        n, d, epochs, loop_repeats, perm_repeats, perm_loop_epochs = 1024, 16, 2, 1, 50, 16
    else:
        n, d, epochs, loop_repeats, perm_repeats, perm_loop_epochs = 8192, 64, 5, min(repeats, 3), 2000, 256
    assert n % BATCH == 0, "the expert program assumes no ragged last batch"

    info = tm.print_header(args.quick)
    steps = n // BATCH
    tm.say(
        f"problem: linear regression n={n} d={d}, batch {BATCH} ({steps} steps/epoch), {epochs} epochs "
        f"= {steps * epochs} SGD steps, lr={LR}; repeats: {repeats} (python loop: {loop_repeats})"
    )
    prob = gd.problems.linear_regression(n=n, d=d, key=jax.random.key(0))
    data = prob.data
    # JAX's first compilation in a process also warms its own lowering caches: do that on an unrelated small
    # program (other shapes, so nothing is shared), so neither way's compile time pays for it.
    small = gd.problems.linear_regression(n=64, d=3, key=jax.random.key(1)).data
    bench_expert(small, 3, 1, 1)
    results = {
        "gdjax.fit": bench_gdjax(data, d, epochs, repeats),
        "expert jit+scan": bench_expert(data, d, epochs, repeats),
        "python loop": bench_python_loop(data, d, epochs, loop_repeats),
    }

    # Same answer check: everyone's final params on the full data set.
    X, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    for r in results.values():
        r["final_loss"] = float(full_data_loss(r.pop("params"), X, y))
    losses = [r["final_loss"] for r in results.values()]
    spread = max(losses) / min(losses) - 1
    ok = spread <= LOSS_TOLERANCE
    initial = float(full_data_loss(zero_params(d), X, y))
    tm.say(f"\nfinal full-data loss (least-squares optimum {prob.min_loss:.5f}, initial {initial:.3f}):")
    for name, r in results.items():
        tm.say(f"  {name:<18} {r['final_loss']:.5f}")
    fit_loss = results["gdjax.fit"]["fit_final_loss"]
    tm.say(f"  (FitResult.final_loss {fit_loss:.5f}); spread {100 * spread:.2f}% -> {'OK' if ok else 'MISMATCH'}")

    ratios = report_times(results)
    perm = bench_permutation(n, perm_repeats, perm_loop_epochs)
    report_permutation(perm)

    error = None if ok else f"final losses differ by more than {100 * LOSS_TOLERANCE:.0f}%"
    return tm.finish(args.json, {
        "machine": info, "quick": args.quick,
        "config": {
            "n": n, "d": d, "batch_size": BATCH, "epochs": epochs, "learning_rate": LR,
            "repeats": repeats, "python_loop_repeats": loop_repeats, "quick": args.quick,
        },
        "results": results,
        "ratios": ratios,
        "loss_check": {"min_loss": prob.min_loss, "spread": spread, "tolerance": LOSS_TOLERANCE, "ok": ok},
        "permutation": perm,
    }, error)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
