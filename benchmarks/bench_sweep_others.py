"""Benchmark ``gdjax.sweep`` against scikit-learn and PyTorch, one learning rate at a time.

Run: ``python benchmarks/bench_sweep_others.py [--quick] [--repeats N] [--json PATH]``
(``--quick``: 16 learning rates of a tiny problem; ``pip install -e ".[bench]"`` for
scikit-learn and ``pip install torch==2.13.0`` for PyTorch: a way whose library does
not import is skipped).

The problem and learning rates of ``bench_sweep.py`` (64 learning rates,
``linear_regression(n=8192, d=64)``, params at zero, 5 epochs, plain SGD):

  (d) scikit-learn's ``SGDRegressor`` (single-sample SGD) once per learning rate,
      against ``gd.sweep`` over ``gd.stochastic(data)`` (and the expert
      ``jit(vmap)`` of ``bench_sweep.py``'s (b) with batch 1 for context);
  (e) a plain PyTorch loop per learning rate (``torch.randperm`` per epoch, index
      slicing, ``torch.optim.SGD``), batch 32, against ``gd.sweep`` over
      ``gd.minibatch(data, 32)`` (the (a) of ``bench_sweep.py``, timed again here).

Every method must land at similar final full-data losses for shared learning
rates, so none can win by skipping work.
"""

from __future__ import annotations

import sys
from typing import Any

import _programs as pg
import _timing as tm
import jax.numpy as jnp
import numpy as np

import gdjax as gd

TARGET_SKLEARN_VS_SWEEP = 5.0


def bench_sklearn(data: dict, lrs: np.ndarray, idx: np.ndarray, epochs: int, repeats: int) -> dict[str, Any] | None:
    try:
        import sklearn
        from sklearn.linear_model import SGDRegressor
    except ImportError:
        return None
    X, y = data["x"], data["y"]

    def fit(lr: float):
        return SGDRegressor(
            loss="squared_error", penalty=None, learning_rate="constant", eta0=lr, max_iter=epochs,
            tol=None, shuffle=True, random_state=0, fit_intercept=True,
        ).fit(X, y)  # fmt: skip

    fit(float(lrs[0]))  # warm-up: imports, first-call costs
    finals: dict[int, dict] = {}

    def all_lrs(_: int) -> None:
        for k in idx:
            reg = fit(float(lrs[k]))
            finals[int(k)] = {"w": reg.coef_.astype(np.float32), "b": np.float32(reg.intercept_[0])}

    runs, _ = tm.repeat_timed(all_lrs, repeats)
    return {"version": sklearn.__version__, "timed_lrs": len(idx), "subset_run_s": runs, "params_by_index": finals}


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

    warm_s, _ = tm.timed(lambda: run(float(lrs[0]), 0, max_steps=50))  # torch's first-call costs (about a second)
    finals: dict[int, dict] = {}

    def all_lrs(_: int) -> None:
        for k in idx:
            finals[int(k)] = run(float(lrs[k]), 1)

    runs, _ = tm.repeat_timed(all_lrs, 1)
    return {
        "version": torch.__version__, "threads": torch.get_num_threads(), "warmup_s": warm_s,
        "timed_lrs": len(idx), "subset_run_s": runs, "params_by_index": finals,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = tm.parse(tm.parser(__doc__, default_repeats=5), argv)
    repeats, cfg = args.repeats, pg.main_sweep(args.quick)
    m = cfg.members
    sk_idx, sk_repeats = pg.subset(m, 4 if args.quick else m), (1 if args.quick else 3)
    torch_idx = pg.subset(m, 2 if args.quick else 8)
    info = tm.print_header(args.quick)
    tm.say(
        f"\n=== {m} learning rates, one at a time in other libraries: linear regression n={cfg.n} d={cfg.d}, "
        f"{cfg.epochs} epochs, plain SGD ==="
    )
    tm.say(
        f"single-sample lrs: geomspace({cfg.sgd_lrs[0]:g}, {cfg.sgd_lrs[-1]:g}, {m}); mini-batch (batch {cfg.batch}) "
        f"lrs: geomspace({cfg.lrs[0]:g}, {cfg.lrs[-1]:g}, {m}); params start at zero"
    )
    prob = cfg.problem()
    data = prob.data
    X, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])

    tm.say("running (d) gd.sweep over gd.stochastic, expert jit(vmap) with batch 1 ...")
    res: dict[str, Any] = {"d_sweep": pg.bench_gd_sweep(gd.stochastic(data), cfg.d, cfg.sgd_lrs, cfg.epochs, repeats)}
    res["d_expert"] = pg.bench_expert(data, cfg.d, cfg.sgd_lrs, 1, cfg.epochs, repeats)
    tm.say(f"running (d) sklearn SGDRegressor over {len(sk_idx)} lrs x {sk_repeats} ...")
    res["d_sklearn"] = bench_sklearn(data, cfg.sgd_lrs, sk_idx, cfg.epochs, sk_repeats)
    tm.say(f"running (e) torch over {len(torch_idx)} lrs ...")
    res["e"] = bench_torch(data, cfg.d, cfg.lrs, torch_idx, cfg.batch, cfg.epochs)
    if res["e"]:
        tm.say("running (a) gd.sweep, the reference of (e) ...")
        res["a"] = pg.bench_gd_sweep(gd.minibatch(data, cfg.batch), cfg.d, cfg.lrs, cfg.epochs, repeats)
    for name, lib in (("sklearn", "d_sklearn"), ("torch", "e")):
        if res[lib] is None:
            tm.say(f"  ({name} does not import: its rows are skipped)")

    # ---- final losses: every method's params on the full data set
    def all_members(r: dict) -> np.ndarray:
        return np.asarray(pg.member_losses(r.pop("params"), X, y), np.float64)

    loss_sgd = {
        "gd.sweep stoch.": all_members(res["d_sweep"]),
        "expert b=1": all_members(res["d_expert"]),
        "sklearn": pg.losses_at(res["d_sklearn"].pop("params_by_index"), m, X, y) if res["d_sklearn"] else None,
    }
    tm.say(f"\n(gd.sweep diverged members: {res['d_sweep']['diverged']} of {m} single-sample)")
    checks = {"single_sample": pg.loss_table(
        "final full-data loss, single-sample SGD (sklearn's squared_error is 0.5*(pred-y)^2 like gdjax's):",
        cfg.sgd_lrs, pg.subset(m, 6), loss_sgd, "gd.sweep stoch.",
    )}  # fmt: skip
    loss = {}
    if res["e"]:
        loss = {"gd.sweep": all_members(res["a"]), "torch": pg.losses_at(res["e"].pop("params_by_index"), m, X, y)}
        checks["minibatch"] = pg.loss_table(
            f"final full-data loss, mini-batch SGD (batch {cfg.batch}), at the lrs torch ran:",
            cfg.lrs, torch_idx, loss, "gd.sweep",
        )  # fmt: skip

    # ---- times
    rows: list[tuple[str, str, float | None, float, str]] = []  # name, members timed, compile, run (s, all m), note
    refs, ratios = {}, {}
    if res["e"]:
        a_run, (e_run, e_note) = tm.med(res["a"]["run_s"]), pg.extrapolated(res["e"], m)
        refs["(a) gd.sweep, whole call"] = a_run
        rows.append(("(a) gd.sweep, whole call", f"{m}", res["a"]["compile_s"], a_run, ""))
        rows.append(("(e) torch loop", f"{res['e']['timed_lrs']}", None, e_run, e_note + ", 1 run"))
        ratios["torch_vs_sweep"] = e_run / a_run
    d_run, d_wall = tm.med(res["d_sweep"]["run_s"]), tm.med(res["d_sweep"]["wall_time_s"])
    d_expert = tm.med(res["d_expert"]["run_s"])
    refs["(d) gd.sweep stochastic"] = d_run
    rows.append(("(d) gd.sweep stochastic", f"{m}", res["d_sweep"]["compile_s"], d_run, "batch 1"))
    rows.append(("(d) gd.sweep stoch. .wall_time", f"{m}", None, d_wall, "compiled run only"))
    rows.append(("(d) expert jit(vmap), batch 1", f"{m}", res["d_expert"]["compile_s"], d_expert, ""))
    ratios["stochastic_sweep_vs_expert"] = d_run / d_expert
    if res["d_sklearn"]:
        s_run, s_note = pg.extrapolated(res["d_sklearn"], m)
        rows.append(("(d) sklearn SGDRegressor", f"{res['d_sklearn']['timed_lrs']}", None, s_run, s_note))
        ratios["sklearn_vs_stochastic_sweep"] = s_run / d_run
    tm.say(
        f"\ntimes for all {m} learning rates (median over runs; gd.sweep, expert: {repeats} runs, a new key each; "
        f"sklearn: {sk_repeats}; torch: 1)"
    )
    table = pg.times_table(m, rows, refs)
    tm.say(
        "  'timed': learning rates actually run; times of subsets are scaled linearly to all of them.\n"
        "  whole call = gd.sweep() end to end on a warm cache; expert compile = lower().compile(); sklearn times\n"
        "  .fit() calls. (e) is compared with the mini-batch gd.sweep, the (d) rows with the stochastic one."
    )
    lines = [f"(e)/(a) torch loop / gd.sweep = {ratios['torch_vs_sweep']:.1f}x"] if res["e"] else []
    lines.append(f"(d) stochastic gd.sweep / expert b=1 = {ratios['stochastic_sweep_vs_expert']:.2f}x")
    if res["d_sklearn"]:
        met = ratios["sklearn_vs_stochastic_sweep"] >= TARGET_SKLEARN_VS_SWEEP
        member_steps = m * cfg.epochs * cfg.n
        lines.append(
            f"(d) sklearn / stochastic gd.sweep = {ratios['sklearn_vs_stochastic_sweep']:.2f}x "
            f"(target >= {TARGET_SKLEARN_VS_SWEEP:.0f}x: {'met' if met else 'NOT met'})"
        )
        lines.append(
            f"single-sample: {member_steps:,} member-steps; gd.sweep {1e9 * d_wall / member_steps:.0f} ns "
            f"per member-step (compiled run), sklearn {1e9 * s_run / member_steps:.0f} ns"
        )
    tm.say("\nratios: " + "\n        ".join(lines))
    ok = all(c["ok"] for c in checks.values())
    error = None if ok else f"final losses differ by more than {100 * pg.LOSS_TOLERANCE:.0f}% somewhere"
    return tm.finish(args.json, {
        "machine": info, "quick": args.quick, "repeats": repeats,
        "config": {"n": cfg.n, "d": cfg.d, "batch": cfg.batch, "epochs": cfg.epochs, "members": m},
        "results": res, "table": table, "ratios": ratios,
        "losses": {k: v for k, v in loss.items() if v is not None},
        "losses_sgd": {k: v for k, v in loss_sgd.items() if v is not None},
        "loss_check": {**checks, "min_loss": prob.min_loss},
    }, error)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
