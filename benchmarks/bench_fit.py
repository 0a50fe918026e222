"""Benchmark ``gdjax.fit`` against a hand-written expert program and a plain Python loop.

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

Run ``python benchmarks/bench_fit.py`` (``--quick`` for a smoke test that takes
a few seconds, ``--json PATH`` to save the results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gdjax as gd

LR = 0.01
BATCH = 32
LOSS_TOLERANCE = 0.10  # final full-data losses must agree within 10%


# ----- helpers ----------------------------------------------------------------


def cpu_name() -> str:
    """The processor's name: platform.processor(), or /proc/cpuinfo where that is empty (Linux)."""
    name = platform.processor()
    if name and name not in ("x86_64", "aarch64", "arm", "i386"):
        return name
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name or platform.machine()


def machine_info() -> dict[str, Any]:
    dev = jax.devices()[0]
    return {
        "processor": cpu_name(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "jax": jax.__version__,
        "optax": optax.__version__,
        "gdjax": gd.__version__,
        "python": platform.python_version(),
    }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds ``fn()`` takes, its result blocked until ready."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def batch_mean_loss(params: dict, xb: jax.Array, yb: jax.Array) -> jax.Array:
    return jnp.mean(0.5 * (xb @ params["w"] + params["b"] - yb) ** 2)


@jax.jit
def full_data_loss(params: dict, X: jax.Array, y: jax.Array) -> jax.Array:
    """The common yardstick: mean loss over the whole data set."""
    return batch_mean_loss(params, X, y)


def zero_params(d: int) -> dict[str, jax.Array]:
    return {"w": jnp.zeros((d,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


# ----- (a) gdjax.fit ------------------------------------------------------------


def bench_gdjax(data: dict, d: int, epochs: int, repeats: int) -> dict[str, Any]:
    model = gd.models.linear()
    params = zero_params(d)
    # The iterator is built once, outside the timings: like X and y for the
    # expert program, the data is placed on the device before the clock starts.
    build_s, it = timed(lambda: gd.minibatch(data, BATCH))

    def call(seed: int) -> gd.FitResult:
        res = gd.fit(model.loss, params, optax.sgd, it, epochs=epochs, key=jax.random.key(seed), learning_rate=LR)
        jax.block_until_ready(res.params)
        return res

    first_s, res = timed(lambda: call(0))
    first_compile = res.compile_time
    runs, self_wall, self_compile = [], [], []
    for r in range(repeats):
        t, res = timed(lambda r=r: call(r + 1))
        runs.append(t)
        self_wall.append(res.wall_time)
        self_compile.append(res.compile_time)
    return {
        "first_call_s": first_s,
        "compile_s": first_compile,  # FitResult.compile_time of the first call
        "run_s": runs,  # whole fit() calls, end to end, cache warm
        "fit_wall_time_s": self_wall,  # FitResult.wall_time (compiled run only)
        "fit_compile_time_cached_s": self_compile,  # fit's lower().compile() on a warm cache
        "minibatch_build_s": build_s,
        "params": res.params,
        "fit_final_loss": res.final_loss,
    }


# ----- (b) the expert's hand-written program -----------------------------------


def make_expert(epochs: int) -> Callable:
    def train(params: dict, X: jax.Array, y: jax.Array, key: jax.Array, lr: jax.Array):
        n = X.shape[0]
        steps = n // BATCH
        opt = optax.sgd(lr)  # lr is traced: another learning rate reuses the program

        def step(carry, idx):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(batch_mean_loss)(params, X[idx], y[idx])
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        def epoch(carry, e):
            perm = jax.random.permutation(jax.random.fold_in(key, e), n)
            batches = perm[: steps * BATCH].reshape(steps, BATCH)
            return jax.lax.scan(step, carry, batches)

        (params, _), losses = jax.lax.scan(epoch, (params, opt.init(params)), jnp.arange(epochs))
        return params, losses  # losses: (epochs, steps)

    return jax.jit(train)


def bench_expert(data: dict, d: int, epochs: int, repeats: int) -> dict[str, Any]:
    X, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    params = zero_params(d)
    lr = jnp.asarray(LR, jnp.float32)
    jitted = make_expert(epochs)
    compile_s, compiled = timed(lambda: jitted.lower(params, X, y, jax.random.key(0), lr).compile())
    first_run_s, _ = timed(lambda: compiled(params, X, y, jax.random.key(0), lr))
    runs = []
    for r in range(repeats):
        t, (out, _losses) = timed(lambda r=r: compiled(params, X, y, jax.random.key(r + 1), lr))
        runs.append(t)
    return {"first_call_s": compile_s + first_run_s, "compile_s": compile_s, "run_s": runs, "params": out}


# ----- (c) the Python loop most users write -------------------------------------


def bench_python_loop(data: dict, d: int, epochs: int, repeats: int) -> dict[str, Any]:
    X, y = data["x"], data["y"]  # numpy arrays on the host
    n = X.shape[0]
    steps = n // BATCH
    opt = optax.sgd(LR)

    @jax.jit
    def step(params, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(batch_mean_loss)(params, xb, yb)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def run(seed: int, first_step_time: list | None = None):
        params = zero_params(d)
        opt_state = opt.init(params)
        losses = []
        for e in range(epochs):
            perm = np.random.default_rng(seed + e).permutation(n)
            for s in range(steps):
                idx = perm[s * BATCH : (s + 1) * BATCH]
                if first_step_time is not None and not first_step_time:
                    t, (params, opt_state, loss) = timed(lambda p=params, o=opt_state, i=idx: step(p, o, X[i], y[i]))
                    first_step_time.append(t)
                else:
                    params, opt_state, loss = step(params, opt_state, X[idx], y[idx])
                # Fairer, faster variant: keep the device arrays and convert at
                # the end. Most users write float(loss) here, which syncs the
                # host with the device every step and is slower still.
                losses.append(loss)
        losses = [float(v) for v in jax.device_get(losses)]
        return jax.block_until_ready(params), losses

    first_step: list[float] = []
    first_s, _ = timed(lambda: run(0, first_step))  # includes compiling the step
    runs = []
    for r in range(repeats):
        t, (params, _losses) = timed(lambda r=r: run(1000 * (r + 1)))
        runs.append(t)
    return {"first_call_s": first_s, "compile_s": first_step[0], "run_s": runs, "params": params}


# ----- section 2: one epoch's order -------------------------------------------


def bench_permutation(n: int, repeats: int, loop_epochs: int) -> dict[str, Any]:
    it = gd.minibatch({"x": np.zeros((n, 1), np.float32)}, BATCH, drop_remainder=True)
    key = jax.random.key(0)

    def sort_perm(key, e):
        return jax.random.permutation(jax.random.fold_in(key, e), n)

    def feistel(it, key, e):
        return it.epoch_indices(key, e)[0].reshape(-1)

    fns = {"jax.random.permutation": jax.jit(sort_perm), "gdjax epoch_indices": jax.jit(lambda k, e: feistel(it, k, e))}

    def in_loop(fn):
        # Many epochs in one compiled loop: no dispatch cost. XOR-ing every
        # order into the carry keeps XLA from skipping any index.
        def body(e, acc):
            return acc ^ fn(key, e)

        return jax.jit(lambda: jax.lax.fori_loop(0, loop_epochs, body, jnp.zeros((n,), jnp.int32)))

    loops = {
        "jax.random.permutation": in_loop(sort_perm),
        "gdjax epoch_indices": in_loop(lambda k, e: feistel(it, k, e)),
    }
    out: dict[str, Any] = {"n": n, "repeats": repeats, "loop_epochs": loop_epochs}
    for name, fn in fns.items():
        order = np.asarray(fn(key, 0))
        assert np.array_equal(np.sort(order), np.arange(n)), name
        times = []
        for r in range(repeats):
            e = jnp.asarray(r % 1000, jnp.int32)
            t, _ = timed(lambda fn=fn, e=e: fn(key, e))
            times.append(t)
        jax.block_until_ready(loops[name]())
        loop_times = [timed(loops[name])[0] / loop_epochs for _ in range(max(3, repeats // 200))]
        out[name] = {"call_us": [t * 1e6 for t in times], "in_loop_us": [t * 1e6 for t in loop_times]}
    return out


# ----- report -----------------------------------------------------------------


def ratio_text(r: float) -> str:
    if abs(r - 1.0) < 0.005:
        return "1.00x (same)"
    return f"{r:.2f}x slower" if r > 1 else f"{1 / r:.2f}x faster"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of fit and the expert program (default 7)")
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds: a smoke test")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    if args.quick:
        n, d, epochs, repeats, loop_repeats = 1024, 16, 2, min(args.repeats, 3), 1
        perm_repeats, perm_loop_epochs = 200, 16
    else:
        n, d, epochs, repeats, loop_repeats = 8192, 64, 5, args.repeats, min(args.repeats, 3)
        perm_repeats, perm_loop_epochs = 2000, 256
    assert n % BATCH == 0, "the expert program assumes no ragged last batch"

    info = machine_info()
    print(
        f"machine: {info['processor']} ({info['machine']}), os.cpu_count()={info['cpu_count']}, "
        f"device={info['backend']}:{info['device_kind']}, jax {info['jax']}, optax {info['optax']}, "
        f"gdjax {info['gdjax']}, python {info['python']}"
    )
    steps = n // BATCH
    print(
        f"problem: linear regression n={n} d={d}, batch {BATCH} ({steps} steps/epoch), {epochs} epochs "
        f"= {steps * epochs} SGD steps, lr={LR}; repeats: {repeats} (python loop: {loop_repeats})"
    )
    prob = gd.problems.linear_regression(n=n, d=d, key=jax.random.key(0))
    data = prob.data

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
    print(f"\nfinal full-data loss (least-squares optimum {prob.min_loss:.5f}, initial {initial:.3f}):")
    for name, r in results.items():
        print(f"  {name:<18} {r['final_loss']:.5f}")
    fit_loss = results["gdjax.fit"]["fit_final_loss"]
    print(f"  (FitResult.final_loss {fit_loss:.5f}); spread {100 * spread:.2f}% -> {'OK' if ok else 'MISMATCH'}")

    ref = statistics.median(results["gdjax.fit"]["run_s"])
    print(
        f"\n{'method':<18} {'compile (s)':>11} {'first call (s)':>14} {'run median (ms)':>15} {'run min (ms)':>12}"
        f"  vs gdjax.fit"
    )
    for name, r in results.items():
        med, mn = statistics.median(r["run_s"]), min(r["run_s"])
        r["run_median_s"], r["run_min_s"], r["ratio_vs_fit"] = med, mn, med / ref
        print(
            f"{name:<18} {r['compile_s']:>11.3f} {r['first_call_s']:>14.3f} {1e3 * med:>15.2f} {1e3 * mn:>12.2f}"
            f"  {ratio_text(med / ref) if name != 'gdjax.fit' else 'reference'}"
        )
    print(
        "  compile: fit = FitResult.compile_time of the first call; expert = lower().compile(); "
        "python loop = first step call.\n"
        "  run: whole call, wall clock, warm caches, a new key/seed per run."
    )
    fr = results["gdjax.fit"]
    print(
        f"  inside gdjax.fit (medians): compiled run (FitResult.wall_time) "
        f"{1e3 * statistics.median(fr['fit_wall_time_s']):.2f} ms, its lower().compile() on a warm cache "
        f"{1e3 * statistics.median(fr['fit_compile_time_cached_s']):.2f} ms; "
        f"gd.minibatch() build {1e3 * fr['minibatch_build_s']:.2f} ms (not timed above)"
    )
    expert = results["expert jit+scan"]["run_median_s"]
    loop = results["python loop"]["run_median_s"]
    ratios = {"gdjax_vs_expert": ref / expert, "python_loop_vs_gdjax": loop / ref}
    print(f"\ngdjax vs expert:      gdjax.fit takes {ref / expert:.2f}x the expert program's time")
    print(f"python loop vs gdjax: the python loop takes {loop / ref:.2f}x gdjax.fit's time")

    perm = bench_permutation(n, perm_repeats, perm_loop_epochs)
    print(f"\none epoch's order of {n} examples (jitted, median of {perm_repeats} calls; in-loop: per epoch of a")
    print(f"fori_loop over {perm_loop_epochs} epochs in one program, no dispatch cost):")
    print(f"  {'method':<24} {'per call (us)':>13} {'in loop (us)':>13}")
    for name in ("jax.random.permutation", "gdjax epoch_indices"):
        p = perm[name]
        p["call_median_us"] = statistics.median(p["call_us"])
        p["in_loop_median_us"] = statistics.median(p["in_loop_us"])
        print(f"  {name:<24} {p['call_median_us']:>13.1f} {p['in_loop_median_us']:>13.1f}")
    sort_p, feistel_p = perm["jax.random.permutation"], perm["gdjax epoch_indices"]
    perm["ratio_call"] = sort_p["call_median_us"] / feistel_p["call_median_us"]
    perm["ratio_in_loop"] = sort_p["in_loop_median_us"] / feistel_p["in_loop_median_us"]
    print(f"  permutation / epoch_indices: {perm['ratio_call']:.2f}x per call, {perm['ratio_in_loop']:.2f}x in loop")

    if args.json:
        report = {
            "machine": info,
            "config": {
                "n": n, "d": d, "batch_size": BATCH, "epochs": epochs, "learning_rate": LR,
                "repeats": repeats, "python_loop_repeats": loop_repeats, "quick": args.quick,
            },
            "results": results,
            "ratios": ratios,
            "loss_check": {"min_loss": prob.min_loss, "spread": spread, "tolerance": LOSS_TOLERANCE, "ok": ok},
            "permutation": perm,
        }  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {args.json}")

    if not ok:
        print(f"error: final losses differ by more than {100 * LOSS_TOLERANCE:.0f}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
