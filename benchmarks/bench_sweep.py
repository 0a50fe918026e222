"""Benchmark ``gdjax.sweep`` (many learning rates in one compiled program) against the alternatives.

Sections:

1. One 64-learning-rate sweep of least squares (``linear_regression(n=8192,
   d=64)``, params at zero, batch 32, 5 epochs, plain SGD, the same learning
   rates for every method) done by:

   (a) ``gd.sweep(model.loss, params, optax.sgd, gd.minibatch(data, 32), ...)``;
   (b) the expert's hand-written ``jax.jit(jax.vmap(run))`` over learning rates
       of ``bench_fit.py``'s scan program (``jax.random.permutation`` per epoch,
       ``lax.scan`` over batches gathering ``X[idx]``); and, as a diagnostic
       (b'), the same with the order drawn per member (what a vmapped per-member
       epoch loop does; gd.sweep keeps one shared epoch loop to avoid it);
   (c) a Python loop over the learning rates of ``bench_fit.py``'s plain loop
       (host-sliced numpy batches, a jitted optax step taking the learning rate
       as an argument, so it compiles once);
   (d) scikit-learn's ``SGDRegressor`` (single-sample SGD) once per learning
       rate, against ``gd.sweep`` over ``gd.stochastic(data)`` (and the expert
       ``jit(vmap)`` with batch 1 for context);
   (e) a plain PyTorch loop per learning rate (``torch.randperm`` per epoch,
       index slicing, ``torch.optim.SGD``), if torch imports.

   Every method must land at similar final full-data losses for shared
   learning rates, so none can win by skipping work.
2. A large sweep: 256 learning rates, ``d=512``, batch 256: its achieved FLOP
   rate against this machine's float32 matrix-multiply rate.
3. Peak memory (process peak RSS, one subprocess per configuration).
4. Scaling: ``gd.sweep`` with 1, 8, 64 and 512 members.

Run ``python benchmarks/bench_sweep.py`` (``--quick`` for a smoke test of
small sizes, ``--skip-large`` to leave out section 2 and the large memory
probes, ``--json PATH`` to save the results).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gdjax as gd
from gdjax.shuffle import permute, round_keys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fit import batch_mean_loss, machine_info, ratio_text, timed, zero_params

LOSS_TOLERANCE = 0.10  # final full-data losses of shared learning rates must agree within 10%
TARGET_LOOP_VS_SWEEP = 50.0
TARGET_SKLEARN_VS_SWEEP = 5.0
TARGET_MATMUL_FRACTION = 0.70
LARGE_LR_RANGE = (1e-3, 0.2)  # section 2; above about 0.3 final losses after 2 epochs vary by >10% between orders


@dataclasses.dataclass(frozen=True)
class Config:
    # section 1: the main sweep
    n: int
    d: int
    batch: int
    epochs: int
    lrs: np.ndarray  # mini-batch SGD learning rates, one per member
    sgd_lrs: np.ndarray  # single-sample SGD learning rates
    loop_count: int  # learning rates the python loop is timed on (extrapolated to all)
    loop_repeats: int
    sklearn_count: int
    sklearn_repeats: int
    torch_count: int
    # section 2: the large sweep
    large_n: int
    large_d: int
    large_batch: int
    large_epochs: int
    large_members: int
    matmul_n: int
    matmul_repeats: int
    # section 4
    scaling: tuple[int, ...]


def make_config(quick: bool) -> Config:
    if quick:
        m = 16
        return Config(
            n=1024, d=16, batch=32, epochs=2,
            lrs=np.geomspace(1e-4, 0.05, m), sgd_lrs=np.geomspace(1e-5, 3e-3, m),
            loop_count=4, loop_repeats=1, sklearn_count=4, sklearn_repeats=1, torch_count=2,
            large_n=2048, large_d=128, large_batch=64, large_epochs=2, large_members=32,
            matmul_n=1024, matmul_repeats=3, scaling=(1, 8, 64),
        )  # fmt: skip
    m = 64
    return Config(
        n=8192, d=64, batch=32, epochs=5,
        lrs=np.geomspace(1e-4, 0.05, m), sgd_lrs=np.geomspace(1e-5, 3e-3, m),
        loop_count=m, loop_repeats=2, sklearn_count=m, sklearn_repeats=3, torch_count=8,
        large_n=8192, large_d=512, large_batch=256, large_epochs=2, large_members=256,
        matmul_n=4096, matmul_repeats=5, scaling=(1, 8, 64, 512),
    )  # fmt: skip


def subset(m: int, k: int) -> np.ndarray:
    """``k`` member indices spread evenly over ``[0, m)`` (first and last included)."""
    return np.unique(np.linspace(0, m - 1, min(k, m)).round().astype(int))


def med(xs: list[float]) -> float:
    return statistics.median(xs)


@jax.jit
def member_losses(params: dict, X: jax.Array, y: jax.Array) -> jax.Array:
    """The common yardstick: each member's mean loss over the whole data set."""
    return jax.vmap(batch_mean_loss, in_axes=(0, None, None))(params, X, y)


def flush_print(*args: Any) -> None:
    print(*args, flush=True)


# ----- (a) gd.sweep ---------------------------------------------------------------


def bench_gd_sweep(it: gd.DataIterator, d: int, lrs: np.ndarray, epochs: int, repeats: int) -> dict[str, Any]:
    model = gd.models.linear()
    params = zero_params(d)

    def call(seed: int) -> gd.SweepResult:
        sw = gd.sweep(model.loss, params, optax.sgd, it, learning_rates=lrs, epochs=epochs, key=jax.random.key(seed))
        jax.block_until_ready(sw.params)
        return sw

    first_s, sw = timed(lambda: call(0))
    compile_s = sw.compile_time
    runs, walls, cached_compiles = [], [], []
    for r in range(repeats):
        t, sw = timed(lambda r=r: call(r + 1))
        runs.append(t)
        walls.append(sw.wall_time)
        cached_compiles.append(sw.compile_time)
    return {
        "first_call_s": first_s,
        "compile_s": compile_s,  # SweepResult.compile_time of the first call
        "run_s": runs,  # whole gd.sweep() calls, end to end, warm cache
        "wall_time_s": walls,  # SweepResult.wall_time: the compiled run only
        "compile_time_cached_s": cached_compiles,
        "diverged": int(sw.diverged.sum()),
        "sweep_final_loss": np.asarray(sw.final_loss),
        "params": sw.params,
    }


# ----- (b) the expert's jit(vmap(...)) --------------------------------------------


def make_expert_run(batch: int, epochs: int, *, feistel: bool = False) -> Callable:
    """``bench_fit.make_expert``'s program with the batch size as a parameter and ``lr`` first.

    ``feistel`` (for the diagnostic): draw each epoch's order with gdjax's Feistel
    bijection (:mod:`gdjax.shuffle`) instead of ``jax.random.permutation``'s sort.
    """

    def run(lr: jax.Array, params: dict, X: jax.Array, y: jax.Array, key: jax.Array):
        n = X.shape[0]
        steps = n // batch
        opt = optax.sgd(lr)

        def step(carry, idx):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(batch_mean_loss)(params, X[idx], y[idx])
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        def epoch(carry, e):
            if feistel:
                perm = permute(jnp.arange(n, dtype=jnp.int32), round_keys(key, e), n)
            else:
                perm = jax.random.permutation(jax.random.fold_in(key, e), n)
            batches = perm[: steps * batch].reshape(steps, batch)
            return jax.lax.scan(step, carry, batches)

        (params, _), losses = jax.lax.scan(epoch, (params, opt.init(params)), jnp.arange(epochs))
        return params, losses

    return run


def bench_expert(
    data: dict, d: int, lrs: np.ndarray, batch: int, epochs: int, repeats: int, *, key_per_member: bool = False
) -> dict[str, Any]:
    """Time the expert's ``jit(vmap(run))`` over learning rates.

    With ``key_per_member`` (a diagnostic) every member gets its own copy of the
    same key and the order is drawn with gdjax's Feistel bijection: the
    members see the same orders as before, but the order, the gather and the
    matrix products become per member (``(M, B, D)`` batches, matrix-vector
    products) instead of one shared batch and one ``(M, D) @ (D, B)`` product.
    This is the shape of gd.sweep's program, whose epoch counter is per member.
    """
    X, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    assert X.shape[0] % batch == 0, "the expert program assumes no ragged last batch"
    params = zero_params(d)
    lr = jnp.asarray(lrs, jnp.float32)
    m = len(lrs)

    def keys(seed: int) -> jax.Array:
        key = jax.random.key(seed)
        return jnp.repeat(key[None], m, axis=0) if key_per_member else key

    # Data and params are arguments rather than closed-over constants, so they are
    # not baked into the program; only the learning rate (and the key) is mapped.
    axes = (0, None, None, None, 0 if key_per_member else None)
    program = jax.jit(jax.vmap(make_expert_run(batch, epochs, feistel=key_per_member), in_axes=axes))
    compile_s, compiled = timed(lambda: program.lower(lr, params, X, y, keys(0)).compile())
    first_run_s, _ = timed(lambda: compiled(lr, params, X, y, keys(0)))
    runs = []
    for r in range(repeats):
        t, (out, _losses) = timed(lambda r=r: compiled(lr, params, X, y, keys(r + 1)))
        runs.append(t)
    return {"first_call_s": compile_s + first_run_s, "compile_s": compile_s, "run_s": runs, "params": out}


# ----- (c) a Python loop of the plain jitted-step loop ----------------------------


def bench_python_loop(
    data: dict, d: int, lrs: np.ndarray, idx: np.ndarray, batch: int, epochs: int, repeats: int
) -> dict[str, Any]:
    X, y = data["x"], data["y"]  # numpy arrays on the host
    n = X.shape[0]
    steps = n // batch

    @jax.jit
    def step(params, opt_state, xb, yb, lr):
        loss, grads = jax.value_and_grad(batch_mean_loss)(params, xb, yb)
        updates, opt_state = optax.sgd(lr).update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def run(lr: float, seed: int):
        params = zero_params(d)
        opt_state = optax.sgd(lr).init(params)
        lr = np.float32(lr)  # a traced argument: one compiled step for every learning rate
        losses = []
        for e in range(epochs):
            perm = np.random.default_rng(seed + e).permutation(n)
            for s in range(steps):
                i = perm[s * batch : (s + 1) * batch]
                params, opt_state, loss = step(params, opt_state, X[i], y[i], lr)
                losses.append(loss)
        losses = [float(v) for v in jax.device_get(losses)]
        return jax.block_until_ready(params), losses

    params0, opt0 = zero_params(d), optax.sgd(0.0).init(zero_params(d))
    compile_s, _ = timed(lambda: step(params0, opt0, X[:batch], y[:batch], np.float32(lrs[0])))
    runs, finals = [], {}
    for r in range(repeats):
        t0 = time.perf_counter()
        for k in idx:
            finals[int(k)] = run(float(lrs[k]), 1000 * (r + 1))[0]
        runs.append(time.perf_counter() - t0)
    return {"compile_s": compile_s, "timed_lrs": len(idx), "subset_run_s": runs, "params_by_index": finals}


# ----- (d) scikit-learn SGDRegressor ----------------------------------------------


def bench_sklearn(data: dict, lrs: np.ndarray, idx: np.ndarray, epochs: int, repeats: int) -> dict[str, Any] | None:
    try:
        from sklearn.linear_model import SGDRegressor
    except ImportError:
        return None
    import sklearn

    X, y = data["x"], data["y"]

    def fit(lr: float):
        return SGDRegressor(
            loss="squared_error", penalty=None, learning_rate="constant", eta0=lr, max_iter=epochs,
            tol=None, shuffle=True, random_state=0, fit_intercept=True,
        ).fit(X, y)  # fmt: skip

    fit(float(lrs[0]))  # warm-up: imports, first-call costs
    runs, finals = [], {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        for k in idx:
            reg = fit(float(lrs[k]))
            finals[int(k)] = {"w": reg.coef_.astype(np.float32), "b": np.float32(reg.intercept_[0])}
        runs.append(time.perf_counter() - t0)
    return {"version": sklearn.__version__, "timed_lrs": len(idx), "subset_run_s": runs, "params_by_index": finals}


# ----- (e) PyTorch ------------------------------------------------------------------


def bench_torch(data: dict, d: int, lrs: np.ndarray, idx: np.ndarray, batch: int, epochs: int) -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(2)
    X, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    n = X.shape[0]
    steps = n // batch

    def run(lr: float, seed: int, max_steps: int | None = None):
        gen = torch.Generator().manual_seed(seed)
        lin = torch.nn.Linear(d, 1)
        with torch.no_grad():
            lin.weight.zero_()
            lin.bias.zero_()
        opt = torch.optim.SGD(lin.parameters(), lr=lr)
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for s in range(steps if max_steps is None else max_steps):
                i = perm[s * batch : (s + 1) * batch]
                xb, yb = X[i], y[i]
                opt.zero_grad(set_to_none=True)
                loss = (0.5 * (lin(xb).squeeze(-1) - yb) ** 2).mean()
                loss.backward()
                opt.step()
        return {"w": lin.weight.detach().numpy()[0].copy(), "b": np.float32(lin.bias.detach().numpy()[0])}

    t0 = time.perf_counter()
    run(float(lrs[0]), 0, max_steps=50)  # warm-up: torch's first-call costs (about a second)
    warm_s = time.perf_counter() - t0
    finals = {}
    t0 = time.perf_counter()
    for k in idx:
        finals[int(k)] = run(float(lrs[k]), 1)
    return {
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
        "warmup_s": warm_s,
        "timed_lrs": len(idx),
        "subset_run_s": [time.perf_counter() - t0],
        "params_by_index": finals,
    }


# ----- section 1 ----------------------------------------------------------------------


def stack_params(by_index: dict[int, dict], keys: list[int]) -> dict:
    return {
        "w": jnp.asarray(np.stack([np.asarray(by_index[k]["w"]) for k in keys])),
        "b": jnp.asarray(np.stack([np.asarray(by_index[k]["b"]) for k in keys])),
    }


def loss_table(
    title: str, lrs: np.ndarray, rows: np.ndarray, columns: dict[str, np.ndarray | None], ref: str
) -> dict[str, Any]:
    """Print final losses at ``rows`` for each column; check every column against ``ref`` on its own rows."""
    names = [c for c, v in columns.items() if v is not None]
    flush_print(f"\n{title}")
    flush_print(f"  {'lr':>10}" + "".join(f"{c:>16}" for c in names))
    for k in rows:
        cells = "".join(f"{columns[c][k]:>16.5f}" if np.isfinite(columns[c][k]) else f"{'-':>16}" for c in names)
        flush_print(f"  {lrs[k]:>10.3g}{cells}")
    worst: dict[str, float] = {}
    ok = True
    for c in names:
        if c == ref:
            continue
        have = np.isfinite(columns[c]) & np.isfinite(columns[ref])
        rel = np.abs(columns[c][have] / columns[ref][have] - 1)
        worst[c] = float(rel.max()) if rel.size else float("nan")
        good = rel.size > 0 and worst[c] <= LOSS_TOLERANCE
        ok &= good
        flush_print(
            f"  {c} vs {ref}: {int(have.sum())} shared lrs, largest relative difference "
            f"{100 * worst[c]:.2f}% -> {'OK' if good else 'MISMATCH'}"
        )
    return {"worst_relative_difference": worst, "ok": ok}


def section_main(cfg: Config, repeats: int) -> dict[str, Any]:
    m = len(cfg.lrs)
    steps = cfg.n // cfg.batch
    flush_print(
        f"\n=== 1. one sweep of {m} learning rates: linear regression n={cfg.n} d={cfg.d}, batch {cfg.batch} "
        f"({steps} steps/epoch), {cfg.epochs} epochs, plain SGD ==="
    )
    flush_print(
        f"mini-batch lrs: geomspace({cfg.lrs[0]:g}, {cfg.lrs[-1]:g}, {m}); single-sample lrs: "
        f"geomspace({cfg.sgd_lrs[0]:g}, {cfg.sgd_lrs[-1]:g}, {m}); params start at zero"
    )
    prob = gd.problems.linear_regression(n=cfg.n, d=cfg.d, key=jax.random.key(0))
    data = prob.data
    X, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    it = gd.minibatch(data, cfg.batch)
    it1 = gd.stochastic(data)

    loop_idx = subset(m, cfg.loop_count)
    sk_idx = subset(m, cfg.sklearn_count)
    torch_idx = subset(m, cfg.torch_count)

    flush_print("running (a) gd.sweep ...")
    res: dict[str, Any] = {"a": bench_gd_sweep(it, cfg.d, cfg.lrs, cfg.epochs, repeats)}
    flush_print("running (b) expert jit(vmap) ...")
    res["b"] = bench_expert(data, cfg.d, cfg.lrs, cfg.batch, cfg.epochs, repeats)
    res["b_diag"] = bench_expert(data, cfg.d, cfg.lrs, cfg.batch, cfg.epochs, repeats, key_per_member=True)
    res["b_diag"].pop("params")
    flush_print(f"running (c) python loop over {len(loop_idx)} lrs x {cfg.loop_repeats} ...")
    res["c"] = bench_python_loop(data, cfg.d, cfg.lrs, loop_idx, cfg.batch, cfg.epochs, cfg.loop_repeats)
    flush_print("running (d) gd.sweep over gd.stochastic, expert jit(vmap) with batch 1 ...")
    res["d_sweep"] = bench_gd_sweep(it1, cfg.d, cfg.sgd_lrs, cfg.epochs, repeats)
    res["d_expert"] = bench_expert(data, cfg.d, cfg.sgd_lrs, 1, cfg.epochs, repeats)
    flush_print(f"running (d) sklearn SGDRegressor over {len(sk_idx)} lrs x {cfg.sklearn_repeats} ...")
    res["d_sklearn"] = bench_sklearn(data, cfg.sgd_lrs, sk_idx, cfg.epochs, cfg.sklearn_repeats)
    flush_print(f"running (e) torch over {len(torch_idx)} lrs ...")
    res["e"] = bench_torch(data, cfg.d, cfg.lrs, torch_idx, cfg.batch, cfg.epochs)

    # ---- final losses: every method's params on the full data set
    def losses_all(params: dict) -> np.ndarray:
        return np.asarray(member_losses(params, X, y), np.float64)

    def losses_at(by_index: dict[int, dict] | None) -> np.ndarray | None:
        if by_index is None:
            return None
        out = np.full(m, np.nan)
        keys = sorted(by_index)
        out[keys] = losses_all(stack_params(by_index, keys))
        return out

    loss = {
        "gd.sweep": losses_all(res["a"].pop("params")),
        "expert": losses_all(res["b"].pop("params")),
        "python loop": losses_at(res["c"].pop("params_by_index")),
        "torch": losses_at(res["e"].pop("params_by_index") if res["e"] else None),
    }
    loss_sgd = {
        "gd.sweep stoch.": losses_all(res["d_sweep"].pop("params")),
        "expert b=1": losses_all(res["d_expert"].pop("params")),
        "sklearn": losses_at(res["d_sklearn"].pop("params_by_index") if res["d_sklearn"] else None),
    }
    own = np.abs(res["a"]["sweep_final_loss"] / loss["gd.sweep"] - 1).max()
    zero = jax.tree.map(lambda a: a[None], zero_params(cfg.d))
    initial = float(member_losses(zero, X, y)[0])
    flush_print(
        f"\n(gd.sweep diverged members: {res['a']['diverged']} of {m} mini-batch, {res['d_sweep']['diverged']} of {m} "
        f"single-sample; SweepResult.final_loss agrees with the yardstick within {100 * own:.3f}%; "
        f"least-squares optimum {prob.min_loss:.5f}, initial loss {initial:.3f})"
    )
    check_mb = loss_table(
        f"final full-data loss, mini-batch SGD (batch {cfg.batch}), at the lrs torch ran:",
        cfg.lrs, torch_idx, loss, "gd.sweep",
    )  # fmt: skip
    check_sgd = loss_table(
        "final full-data loss, single-sample SGD (sklearn's squared_error is 0.5*(pred-y)^2 like gdjax's):",
        cfg.sgd_lrs, subset(m, 6), loss_sgd, "gd.sweep stoch.",
    )  # fmt: skip

    # ---- times
    rows: list[tuple[str, str, float | None, float, str]] = []  # name, members timed, compile, run (s, all m), note
    a_run, a_wall = med(res["a"]["run_s"]), med(res["a"]["wall_time_s"])
    rows.append(("(a) gd.sweep, whole call", f"{m}", res["a"]["compile_s"], a_run, ""))
    rows.append(("(a) gd.sweep, .wall_time", f"{m}", None, a_wall, "compiled run only"))
    b_run = med(res["b"]["run_s"])
    rows.append(("(b) expert jit(vmap)", f"{m}", res["b"]["compile_s"], b_run, ""))
    b_diag = med(res["b_diag"]["run_s"])
    rows.append(("(b') expert, order per member", f"{m}", res["b_diag"]["compile_s"], b_diag, "diagnostic, see below"))

    def extrapolated(r: dict) -> tuple[float, str]:
        t = med(r["subset_run_s"]) * m / r["timed_lrs"]
        return t, ("" if r["timed_lrs"] == m else f"x{m / r['timed_lrs']:.0f} from {r['timed_lrs']} lrs")

    c_run, c_note = extrapolated(res["c"])
    rows.append(("(c) python loop", f"{res['c']['timed_lrs']}", res["c"]["compile_s"], c_run, c_note))
    if res["e"]:
        e_run, e_note = extrapolated(res["e"])
        rows.append(("(e) torch loop", f"{res['e']['timed_lrs']}", None, e_run, e_note + ", 1 run"))
    d_run, d_wall = med(res["d_sweep"]["run_s"]), med(res["d_sweep"]["wall_time_s"])
    rows.append(("(d) gd.sweep stochastic", f"{m}", res["d_sweep"]["compile_s"], d_run, "batch 1"))
    rows.append(("(d) gd.sweep stoch. .wall_time", f"{m}", None, d_wall, "compiled run only"))
    d_expert = med(res["d_expert"]["run_s"])
    rows.append(("(d) expert jit(vmap), batch 1", f"{m}", res["d_expert"]["compile_s"], d_expert, ""))
    if res["d_sklearn"]:
        s_run, s_note = extrapolated(res["d_sklearn"])
        rows.append(("(d) sklearn SGDRegressor", f"{res['d_sklearn']['timed_lrs']}", None, s_run, s_note))

    flush_print(
        f"\ntimes for all {m} learning rates (median over runs; (a),(b): {repeats} runs, a new key each; "
        f"python loop: {cfg.loop_repeats}; sklearn: {cfg.sklearn_repeats}; torch: 1)"
    )
    flush_print(f"  {'method':<32}{'timed':>6}{'compile (s)':>12}{'run (s)':>10}{'per lr (ms)':>12}  vs gd.sweep")
    table = []
    for name, timed_n, comp, run_s, note in rows:
        single = name.startswith("(d)")  # compared with the stochastic sweep
        ref = d_run if single else a_run
        is_ref = name in ("(a) gd.sweep, whole call", "(d) gd.sweep stochastic")
        rel = "reference" if is_ref else ratio_text(run_s / ref)
        comp_txt = f"{comp:>12.3f}" if comp is not None else f"{'-':>12}"
        note_txt = f"; {note}" if note else ""
        flush_print(f"  {name:<32}{timed_n:>6}{comp_txt}{run_s:>10.3f}{1e3 * run_s / m:>12.2f}  {rel}{note_txt}")
        table.append({"method": name, "timed_lrs": timed_n, "compile_s": comp, "run_s": run_s, "note": note})
    flush_print(
        "  'timed': learning rates actually run; times of subsets are scaled linearly to all of them.\n"
        "  (a) whole call = gd.sweep() end to end on a warm cache (checks, host-side result building);\n"
        "  (b) compile = lower().compile(); (c) compile = the first jitted step call; sklearn times .fit() calls.\n"
        "  Stochastic rows (d) are compared with the stochastic gd.sweep whole call.\n"
        "  (b') diagnostic = (b) drawing orders with gdjax's Feistel shuffle from one copy of the same key per\n"
        "  member: same orders for all, but every member computes its own order, gathers its own batch and does\n"
        "  matrix-vector products. That is what a per-member epoch loop under vmap does; gd.sweep keeps one\n"
        "  epoch counter outside vmap so the order and the gather are shared, like (b)."
    )
    ratios = {
        "sweep_vs_expert": a_run / b_run,
        "sweep_wall_vs_expert": a_wall / b_run,
        "python_loop_vs_sweep": c_run / a_run,
    }
    flush_print(
        f"\nratios: (a)/(b) gd.sweep / expert = {ratios['sweep_vs_expert']:.2f}x (compiled run only: "
        f"{ratios['sweep_wall_vs_expert']:.2f}x)"
    )
    met = ratios["python_loop_vs_sweep"] >= TARGET_LOOP_VS_SWEEP
    flush_print(
        f"        (c)/(a) python loop / gd.sweep = {ratios['python_loop_vs_sweep']:.1f}x "
        f"(target >= {TARGET_LOOP_VS_SWEEP:.0f}x: {'met' if met else 'NOT met'})"
    )
    if res["e"]:
        ratios["torch_vs_sweep"] = e_run / a_run
        flush_print(f"        (e)/(a) torch loop / gd.sweep = {ratios['torch_vs_sweep']:.1f}x")
    if res["d_sklearn"]:
        ratios["sklearn_vs_stochastic_sweep"] = s_run / d_run
        ratios["stochastic_sweep_vs_expert"] = d_run / d_expert
        met = ratios["sklearn_vs_stochastic_sweep"] >= TARGET_SKLEARN_VS_SWEEP
        flush_print(
            f"        (d) sklearn / stochastic gd.sweep = {ratios['sklearn_vs_stochastic_sweep']:.2f}x "
            f"(target >= {TARGET_SKLEARN_VS_SWEEP:.0f}x: {'met' if met else 'NOT met'}); "
            f"stochastic gd.sweep / expert b=1 = {ratios['stochastic_sweep_vs_expert']:.2f}x"
        )
        member_steps = m * cfg.epochs * cfg.n
        flush_print(
            f"        single-sample: {member_steps:,} member-steps; gd.sweep {1e9 * d_wall / member_steps:.0f} ns "
            f"per member-step (compiled run), sklearn {1e9 * s_run / member_steps:.0f} ns"
        )
    return {
        "config": {"n": cfg.n, "d": cfg.d, "batch": cfg.batch, "epochs": cfg.epochs, "members": m},
        "results": res,
        "table": table,
        "ratios": ratios,
        "losses": {k: v for k, v in loss.items() if v is not None},
        "losses_sgd": {k: v for k, v in loss_sgd.items() if v is not None},
        "loss_check": {"minibatch": check_mb, "single_sample": check_sgd, "min_loss": prob.min_loss},
        "ok": check_mb["ok"] and check_sgd["ok"],
    }


# ----- section 2: the large sweep and the machine's matmul rate ------------------------


def matmul_rates(cfg: Config) -> dict[str, Any]:
    k1, k2, k3, k4 = jax.random.split(jax.random.key(7), 4)
    n = cfg.matmul_n
    a = jax.random.normal(k1, (n, n), jnp.float32)
    b = jax.random.normal(k2, (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))
    big = [timed(lambda: dot(a, b))[0] for _ in range(cfg.matmul_repeats)]
    big_rate = 2 * n**3 / med(big)

    m, d, bsz = cfg.large_members, cfg.large_d, cfg.large_batch
    W = jax.random.normal(k3, (m, d), jnp.float32)
    Xb = jax.random.normal(k4, (bsz, d), jnp.float32)
    xt = Xb.T
    jax.block_until_ready(dot(W, xt))
    calls = max(20, int(2e9 / (2 * m * d * bsz)))  # about 2 GFLOP of calls
    small = [timed(lambda: dot(W, xt))[0] for _ in range(calls)]
    small_rate = 2 * m * d * bsz / med(small)

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
    chains = [timed(lambda: chain(W, Xb))[0] for _ in range(5)]
    chain_rate = 4 * m * d * bsz * K / med(chains)
    return {
        "big_n": n, "big_s": big, "big_flops_per_s": big_rate,
        "sweep_shape": [m, d, bsz], "sweep_shape_calls": calls, "sweep_shape_median_s": med(small),
        "sweep_shape_flops_per_s": small_rate,
        "step_chain_steps": K, "step_chain_s": chains, "step_chain_flops_per_s": chain_rate,
    }  # fmt: skip


def section_large(cfg: Config, repeats: int) -> dict[str, Any]:
    m, d, bsz, n, epochs = cfg.large_members, cfg.large_d, cfg.large_batch, cfg.large_n, cfg.large_epochs
    steps = n // bsz
    flush_print(
        f"\n=== 2. large sweep: {m} learning rates, linear regression n={n} d={d} "
        f"(data {n}x{d} float32 = {n * d * 4 / 2**20:.0f} MiB), batch {bsz} ({steps} steps/epoch), {epochs} epochs ==="
    )
    prob = gd.problems.linear_regression(n=n, d=d, key=jax.random.key(1))
    lrs = np.geomspace(LARGE_LR_RANGE[0], LARGE_LR_RANGE[1], m)
    it = gd.minibatch(prob.data, bsz)
    flush_print(
        f"lrs geomspace({LARGE_LR_RANGE[0]:g}, {LARGE_LR_RANGE[1]:g}, {m}); "
        "timing gd.sweep, expert jit(vmap), matmuls ..."
    )
    sw = bench_gd_sweep(it, d, lrs, epochs, repeats)
    ex = bench_expert(prob.data, d, lrs, bsz, epochs, repeats)
    diag = bench_expert(prob.data, d, lrs, bsz, epochs, repeats, key_per_member=True)
    diag.pop("params")
    X, y = jnp.asarray(prob.data["x"]), jnp.asarray(prob.data["y"])
    l_sw = np.asarray(member_losses(sw.pop("params"), X, y))
    l_ex = np.asarray(member_losses(ex.pop("params"), X, y))
    both = np.isfinite(l_sw) & np.isfinite(l_ex)
    rel = float(np.abs(l_ex[both] / l_sw[both] - 1).max()) if both.any() else float("nan")
    loss_ok = bool(both.any()) and rel <= LOSS_TOLERANCE
    mm = matmul_rates(cfg)

    train_flops = 4 * bsz * d * m * steps * epochs
    eval_flops = 2 * n * d * m * (epochs + 1)  # gd.sweep's full-data loss before training and after each epoch
    sw_wall, sw_run, ex_run = med(sw["wall_time_s"]), med(sw["run_s"]), med(ex["run_s"])
    big = mm["big_flops_per_s"]
    rates = {
        "sweep_train_flops_per_s": train_flops / sw_wall,
        "sweep_all_flops_per_s": (train_flops + eval_flops) / sw_wall,
        "sweep_whole_call_train_flops_per_s": train_flops / sw_run,
        "expert_train_flops_per_s": train_flops / ex_run,
        "expert_key_per_member_train_flops_per_s": train_flops / med(diag["run_s"]),
    }
    flush_print(
        f"gd.sweep diverged members: {sw['diverged']} of {m}; final losses gd.sweep vs expert: largest relative "
        f"difference {100 * rel:.2f}% -> {'OK' if loss_ok else 'MISMATCH'}"
    )
    flush_print(
        f"FLOPs counted: per step per member forward x@w 2*B*D + backward gradient 2*B*D = 4*B*D = "
        f"{4 * bsz * d:,}; x {m} members x {steps * epochs} steps = {train_flops / 1e9:.2f} GFLOP of training "
        f"(bias, loss and update elementwise work not counted). gd.sweep also evaluates the full-data loss "
        f"{epochs + 1} times per member (2*N*D*M each) = {eval_flops / 1e9:.2f} GFLOP more, which the expert skips."
    )
    flush_print(f"  {'':<44}{'compile (s)':>12}{'run (s)':>10}{'GFLOP/s':>10}{'% of big matmul':>17}")
    lines = [
        ("gd.sweep .wall_time, training FLOPs", sw["compile_s"], sw_wall, rates["sweep_train_flops_per_s"]),
        ("gd.sweep .wall_time, incl. full-data losses", None, sw_wall, rates["sweep_all_flops_per_s"]),
        ("gd.sweep whole call, training FLOPs", None, sw_run, rates["sweep_whole_call_train_flops_per_s"]),
        ("expert jit(vmap), training FLOPs", ex["compile_s"], ex_run, rates["expert_train_flops_per_s"]),
        ("expert, order per member (diagnostic)", diag["compile_s"], med(diag["run_s"]),
         rates["expert_key_per_member_train_flops_per_s"]),
        (f"jnp.dot ({mm['big_n']},{mm['big_n']})@({mm['big_n']},{mm['big_n']})", None,
         med(mm["big_s"]), mm["big_flops_per_s"]),
        (f"jnp.dot ({m},{d})@({d},{bsz}), the sweep's shape", None, mm["sweep_shape_median_s"],
         mm["sweep_shape_flops_per_s"]),
        (f"{mm['step_chain_steps']} dense SGD steps (M,D)@(D,B), (M,B)@(B,D)", None,
         med(mm["step_chain_s"]), mm["step_chain_flops_per_s"]),
    ]  # fmt: skip
    for name, comp, t, rate in lines:
        comp_txt = f"{comp:>12.3f}" if comp is not None else f"{'-':>12}"
        flush_print(f"  {name:<44}{comp_txt}{t:>10.4f}{rate / 1e9:>10.1f}{100 * rate / big:>16.1f}%")
    frac = rates["sweep_train_flops_per_s"] / big
    flush_print(
        f"gd.sweep (compiled run, training FLOPs) reaches {100 * frac:.1f}% of the big-matmul rate "
        f"(target >= {100 * TARGET_MATMUL_FRACTION:.0f}%: {'met' if frac >= TARGET_MATMUL_FRACTION else 'NOT met'}), "
        f"{100 * rates['sweep_train_flops_per_s'] / mm['step_chain_flops_per_s']:.1f}% of the dense SGD step chain "
        f"of its own shape; gd.sweep / expert = {sw_wall / ex_run:.2f}x (compiled run), "
        f"{sw_run / ex_run:.2f}x (whole call)"
    )
    return {
        "config": {"n": n, "d": d, "batch": bsz, "epochs": epochs, "members": m},
        "gd_sweep": sw, "expert": ex, "expert_key_per_member": diag, "matmul": mm, "rates": rates,
        "train_flops": train_flops, "eval_flops": eval_flops, "matmul_fraction": frac,
        "loss_check": {"worst_relative_difference": rel, "ok": loss_ok},
    }  # fmt: skip


# ----- section 3: peak memory, one subprocess per configuration -------------------------


def _status_mib(field: str) -> float | None:
    """A size line of /proc/self/status (Linux), in MiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_mib() -> float:
    """This process's peak RSS.

    VmHWM where there is /proc: ``ru_maxrss`` is not used there because Linux
    carries it over ``fork``/``exec``, so a child of a big parent reports at least
    the parent's size.
    """
    hwm = _status_mib("VmHWM")
    if hwm is not None:
        return hwm
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform == "darwin" else kb / 1024  # bytes on macOS, KiB elsewhere


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_probe(name: str, quick: bool) -> dict[str, Any]:
    """Runs in a subprocess: set up one configuration, optionally run it once, report peak RSS."""
    cfg = make_config(quick)
    what, size = name.split("-")
    if size == "main":
        n, d, bsz, epochs, lrs = cfg.n, cfg.d, cfg.batch, cfg.epochs, cfg.lrs
        key = jax.random.key(0)
    else:
        n, d, bsz, epochs = cfg.large_n, cfg.large_d, cfg.large_batch, cfg.large_epochs
        lrs, key = np.geomspace(*LARGE_LR_RANGE, cfg.large_members), jax.random.key(1)
    prob = gd.problems.linear_regression(n=n, d=d, key=key)
    it = gd.minibatch(prob.data, bsz)
    X, y = jnp.asarray(prob.data["x"]), jnp.asarray(prob.data["y"])
    params = zero_params(d)
    jax.block_until_ready((it.data, X, y))
    setup_peak, setup_rss = _peak_mib(), _status_mib("VmRSS")
    reset = _reset_peak()
    if what == "sweep1":
        lrs = lrs[len(lrs) // 2 :][:1]
    if what in ("sweep", "sweep1"):
        sw = gd.sweep(gd.models.linear().loss, params, optax.sgd, it, learning_rates=lrs, epochs=epochs, key=key)
        jax.block_until_ready(sw.params)
    elif what == "expert":
        program = jax.jit(jax.vmap(make_expert_run(bsz, epochs), in_axes=(0, None, None, None, None)))
        jax.block_until_ready(program(jnp.asarray(lrs, jnp.float32), params, X, y, key))
    run_peak = _peak_mib()
    stats = jax.devices()[0].memory_stats()
    return {
        "name": name,
        "members": len(lrs),
        "peak_mib": max(setup_peak, run_peak),
        "setup_peak_mib": setup_peak,
        "rss_before_run_mib": setup_rss,
        # with the reset: the peak while running, over the RSS it started from
        "run_increase_mib": run_peak - setup_rss if reset and setup_rss is not None else None,
        "rss_after_mib": _status_mib("VmRSS"),
        "device_peak_bytes": stats.get("peak_bytes_in_use") if stats else None,
    }


def section_memory(cfg: Config, quick: bool, skip_large: bool) -> dict[str, Any]:
    flush_print("\n=== 3. peak memory: process peak RSS, one fresh subprocess per configuration ===")
    stats = jax.devices()[0].memory_stats()
    flush_print(
        f"jax.devices()[0].memory_stats() is {'available' if stats else 'None on this backend'}; "
        "using process peak RSS. Each subprocess imports gdjax, builds the problem, the iterator and the data "
        "on the device (baseline), then runs the configuration once (compile + run: the peak includes XLA "
        "compilation)."
    )
    sizes = ["main"] + ([] if skip_large else ["large"])
    whats = ["baseline", "sweep"] + ([] if quick else ["sweep1", "expert"])
    out: dict[str, Any] = {}
    here = os.path.abspath(__file__)
    for size in sizes:
        for what in whats:
            name = f"{what}-{size}"
            cmd = [sys.executable, here, "--memory-probe", name] + (["--quick"] if quick else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                flush_print(f"  {name}: failed (rc {proc.returncode}): {proc.stderr.strip()[-500:]}")
                continue
            out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    flush_print(
        f"  {'configuration':<18}{'members':>8}{'peak RSS (MiB)':>16}{'vs baseline':>13}"
        f"{'run peak - start':>18}{'RSS after (MiB)':>17}"
    )
    for name, r in out.items():
        base = out.get("baseline-" + name.split("-")[1])
        inc = r["peak_mib"] - base["peak_mib"] if base else float("nan")
        r["increase_vs_baseline_mib"] = inc
        members = "-" if name.startswith("baseline") else str(r["members"])
        run_inc = r["run_increase_mib"]
        run_txt = f"{run_inc:>+18.1f}" if run_inc is not None and members != "-" else f"{'-':>18}"
        after = f"{r['rss_after_mib']:>17.1f}" if r["rss_after_mib"] is not None else f"{'-':>17}"
        flush_print(f"  {name:<18}{members:>8}{r['peak_mib']:>16.1f}{inc:>+13.1f}{run_txt}{after}")
    for size in sizes:
        if size == "main":
            m, n, d, steps = len(cfg.lrs), cfg.n, cfg.d, cfg.n // cfg.batch
            cap = 1 << max(0, cfg.epochs - 1).bit_length()
        else:
            m, n, d, steps = cfg.large_members, cfg.large_n, cfg.large_d, cfg.large_n // cfg.large_batch
            cap = 1 << max(0, cfg.large_epochs - 1).bit_length()
        results = m * (d + 1) * 4 + m * cap * steps * 4
        full_eval = m * n * 4
        flush_print(
            f"  {size}: data {n * (d + 1) * 4 / 2**20:.1f} MiB; sweep results (params + step-loss history of "
            f"{cap} epochs x {steps} steps) {results / 2**20:.2f} MiB; one full-data loss of all members needs an "
            f"(N, M) float32 intermediate of {full_eval / 2**20:.1f} MiB"
        )
    flush_print(
        "  peak RSS = VmHWM of the subprocess (ru_maxrss where there is no /proc); 'run peak - start': within the\n"
        "  same subprocess, the peak RSS while compiling and running (VmHWM reset just before) minus the RSS just\n"
        "  before. sweep1 = the same sweep with 1 member: the part of the memory that does not grow with members."
    )
    return out


# ----- section 4: scaling with the number of members ------------------------------------


def section_scaling(cfg: Config, repeats: int) -> dict[str, Any]:
    steps = cfg.n // cfg.batch
    flush_print(
        f"\n=== 4. scaling: gd.sweep on the section-1 problem (n={cfg.n} d={cfg.d}, batch {cfg.batch}, "
        f"{cfg.epochs} epochs) with {', '.join(map(str, cfg.scaling))} members ==="
    )
    prob = gd.problems.linear_regression(n=cfg.n, d=cfg.d, key=jax.random.key(0))
    it = gd.minibatch(prob.data, cfg.batch)
    base = cfg.lrs
    out: dict[str, Any] = {}
    flush_print(
        f"  {'members':>8}{'compile (s)':>12}{'run (s)':>10}{'whole call (s)':>15}{'per member (ms)':>16}"
        f"{'vs 1 member':>12}{'per member-step (ns)':>22}"
    )
    one = None
    for m in cfg.scaling:
        lrs = base[np.arange(m) * len(base) // m] if m <= len(base) else np.resize(base, m)
        r = bench_gd_sweep(it, cfg.d, lrs, cfg.epochs, repeats)
        r.pop("params")
        r.pop("sweep_final_loss")
        wall = med(r["wall_time_s"])
        one = wall if one is None else one
        r.update(members=m, wall_median_s=wall, run_median_s=med(r["run_s"]), ratio_vs_one=wall / one)
        out[str(m)] = r
        flush_print(
            f"  {m:>8}{r['compile_s']:>12.3f}{wall:>10.4f}{r['run_median_s']:>15.4f}{1e3 * wall / m:>16.3f}"
            f"{wall / one:>11.2f}x{1e9 * wall / (m * steps * cfg.epochs):>22.1f}"
        )
    flush_print(
        f"  run = SweepResult.wall_time (compiled run, compile excluded), median of {repeats}; "
        "whole call = gd.sweep() end to end, warm cache."
    )
    return out


# ----- section 5: the cost of the progress bar ------------------------------------------


def section_progress(cfg: Config, repeats: int) -> dict[str, Any]:
    """The section-1 sweep with and without ``progress=True``, alternating runs (bar text discarded)."""
    import contextlib
    import io

    flush_print("\n=== 5. progress bar: the section-1 sweep with progress=True against without ===")
    prob = gd.problems.linear_regression(n=cfg.n, d=cfg.d, key=jax.random.key(0))
    it = gd.minibatch(prob.data, cfg.batch)
    model = gd.models.linear()
    params = model.init(None, cfg.d)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(2 * max(repeats, 9) + 2):
        show = bool(i % 2)
        with contextlib.redirect_stderr(io.StringIO()):
            sw = gd.sweep(
                model.loss,
                params,
                optax.sgd,
                it,
                learning_rates=cfg.lrs,
                epochs=cfg.epochs,
                key=jax.random.key(i),
                progress=show,
            )
        if i >= 2:  # the first two compile
            times[show].append(sw.wall_time)
    off, on = med(times[False]), med(times[True])
    flush_print(
        f"  without: {1e3 * off:.2f} ms   with: {1e3 * on:.2f} ms   cost: {100 * (on / off - 1):+.1f}% "
        f"(target <= 5%; medians of {len(times[True])} alternating runs)"
    )
    return {"off_s": times[False], "on_s": times[True], "cost_fraction": on / off - 1}


# ----- main ------------------------------------------------------------------------------


def to_json(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): to_json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_json(v) for v in x]
    if isinstance(x, np.ndarray | jax.Array):
        return to_json(np.asarray(x).tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the compiled programs (default 5)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test that runs in seconds")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--skip-large", action="store_true", help="leave out section 2 and the large memory probes")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)  # internal: section 3's subprocesses
    args = parser.parse_args(argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.quick)))
        return 0
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    repeats = min(args.repeats, 3) if args.quick else args.repeats
    cfg = make_config(args.quick)

    t_start = time.perf_counter()
    info = machine_info()
    flush_print(
        f"machine: {info['processor']} ({info['machine']}), os.cpu_count()={info['cpu_count']}, "
        f"device={info['backend']}:{info['device_kind']}, jax {info['jax']}, optax {info['optax']}, "
        f"gdjax {info['gdjax']}, numpy {np.__version__}, python {info['python']}"
        + (" [--quick: small sizes]" if args.quick else "")
    )
    report: dict[str, Any] = {"machine": info, "quick": args.quick, "repeats": repeats}
    report["main"] = section_main(cfg, repeats)
    ok = report["main"]["ok"]
    if not args.skip_large:
        report["large"] = section_large(cfg, repeats)
        ok &= report["large"]["loss_check"]["ok"]
    report["memory"] = section_memory(cfg, args.quick, args.skip_large)
    report["scaling"] = section_scaling(cfg, repeats)
    report["progress"] = section_progress(cfg, repeats)
    report["total_s"] = time.perf_counter() - t_start
    flush_print(f"\ntotal time {report['total_s']:.1f} s")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(to_json(report), f, indent=2)
        flush_print(f"wrote {args.json}")
    if not ok:
        print(f"error: final losses differ by more than {100 * LOSS_TOLERANCE:.0f}% somewhere", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
