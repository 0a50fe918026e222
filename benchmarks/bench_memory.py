"""Benchmark the peak memory of ``gdjax.sweep`` against the expert's ``jit(vmap)``: one fresh process per configuration.

Run: ``python benchmarks/bench_memory.py [--quick] [--skip-large] [--json PATH]``
(``--quick``: the tiny main sweep's gd.sweep and expert probes only; ``--skip-large``:
leave out the large sweep's probes).

Each configuration runs in a subprocess of this script (``--memory-probe NAME``),
which imports gdjax, builds the problem, the iterator and the data on the device
(the baseline), then runs the configuration once (compile + run: the peak includes
XLA compilation) and reports its peak RSS as one line of JSON. Configurations:
``baseline``, ``sweep`` (gd.sweep of all the learning rates), ``sweep1`` (the same
with 1 member: the part that does not grow with members) and ``expert`` (the
``jit(vmap)`` of ``bench_sweep.py``'s (b)), each for the ``main`` sweep of
``bench_sweep.py`` and the ``large`` sweep of ``bench_large_sweep.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import _timing as tm
import jax
import jax.numpy as jnp
import optax
from _programs import expert_run, large_sweep, main_sweep, zero_params

import gdjax as gd


def memory_probe(name: str, quick: bool) -> dict[str, Any]:
    """Runs in a subprocess: set up one configuration, optionally run it once, report peak RSS."""
    what, size = name.split("-")
    cfg = main_sweep(quick) if size == "main" else large_sweep(quick)
    key = jax.random.key(cfg.key)
    prob = cfg.problem()
    it = gd.minibatch(prob.data, cfg.batch)
    X, y = jnp.asarray(prob.data["x"]), jnp.asarray(prob.data["y"])
    params = zero_params(cfg.d)
    jax.block_until_ready((it.data, X, y))
    setup_peak, setup_rss = tm.peak_mib(), tm.status_mib("VmRSS")
    reset = tm.reset_peak()
    lrs = cfg.lrs[len(cfg.lrs) // 2 :][:1] if what == "sweep1" else cfg.lrs
    if what in ("sweep", "sweep1"):
        sw = gd.sweep(gd.models.linear().loss, params, optax.sgd, it, learning_rates=lrs, epochs=cfg.epochs, key=key)
        jax.block_until_ready(sw.params)
    elif what == "expert":
        program = jax.jit(jax.vmap(expert_run(cfg.batch, cfg.epochs), in_axes=(0, None, None, None, None)))
        jax.block_until_ready(program(jnp.asarray(lrs, jnp.float32), params, X, y, key))
    run_peak = tm.peak_mib()
    stats = jax.devices()[0].memory_stats()
    return {
        "name": name,
        "members": len(lrs),
        "peak_mib": max(setup_peak, run_peak),
        "setup_peak_mib": setup_peak,
        "rss_before_run_mib": setup_rss,
        # with the reset: the peak while running, over the RSS it started from
        "run_increase_mib": run_peak - setup_rss if reset and setup_rss is not None else None,
        "rss_after_mib": tm.status_mib("VmRSS"),
        "device_peak_bytes": stats.get("peak_bytes_in_use") if stats else None,
    }


def run_probes(names: list[str], quick: bool) -> dict[str, Any]:
    """One subprocess per configuration: one after the other, or all at once with ``quick`` (peaks are per process)."""
    out: dict[str, Any] = {}
    here = os.path.abspath(__file__)
    started: dict[str, subprocess.Popen] = {}

    def collect(name: str) -> None:
        stdout, stderr = started[name].communicate(timeout=600)
        if started[name].returncode != 0:
            tm.say(f"  {name}: failed (rc {started[name].returncode}): {stderr.strip()[-500:]}")
        else:
            out[name] = json.loads(stdout.strip().splitlines()[-1])

    for name in names:
        cmd = [sys.executable, here, "--memory-probe", name] + (["--quick"] if quick else [])
        started[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if not quick:
            collect(name)
    for name in names if quick else []:
        collect(name)
    return out


def main(argv: list[str] | None = None) -> int:
    p = tm.parser(__doc__, default_repeats=None)  # one run per probe
    p.add_argument("--skip-large", action="store_true", help="leave out the large sweep's probes")
    p.add_argument("--memory-probe", help="internal: run one configuration and print its peak as JSON")
    args = tm.parse(p, argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.quick)))
        return 0

    info = tm.print_header(args.quick)
    tm.say("\n=== peak memory: process peak RSS, one fresh subprocess per configuration ===")
    stats = jax.devices()[0].memory_stats()
    tm.say(
        f"jax.devices()[0].memory_stats() is {'available' if stats else 'None on this backend'}; "
        "using process peak RSS. Each subprocess imports gdjax, builds the problem, the iterator and the data "
        "on the device (baseline), then runs the configuration once (compile + run: the peak includes XLA "
        "compilation)."
    )
    sizes = ["main"] + ([] if args.skip_large or args.quick else ["large"])
    whats = ["sweep", "expert"] if args.quick else ["baseline", "sweep", "sweep1", "expert"]
    out = run_probes([f"{what}-{size}" for size in sizes for what in whats], args.quick)
    tm.say(
        f"  {'configuration':<18}{'members':>8}{'peak RSS (MiB)':>16}{'vs baseline':>13}"
        f"{'run peak - start':>18}{'RSS after (MiB)':>17}"
    )
    for name, r in out.items():
        base = out.get("baseline-" + name.split("-")[1])
        r["increase_vs_baseline_mib"] = r["peak_mib"] - base["peak_mib"] if base else None
        members = "-" if name.startswith("baseline") else str(r["members"])
        run_inc, inc = r["run_increase_mib"], r["increase_vs_baseline_mib"]
        inc_txt = f"{inc:>+13.1f}" if inc is not None else f"{'-':>13}"
        run_txt = f"{run_inc:>+18.1f}" if run_inc is not None and members != "-" else f"{'-':>18}"
        after = f"{r['rss_after_mib']:>17.1f}" if r["rss_after_mib"] is not None else f"{'-':>17}"
        tm.say(f"  {name:<18}{members:>8}{r['peak_mib']:>16.1f}{inc_txt}{run_txt}{after}")
    for size in sizes:
        cfg = main_sweep(args.quick) if size == "main" else large_sweep(args.quick)
        m, n, d, steps = cfg.members, cfg.n, cfg.d, cfg.steps
        cap = 1 << max(0, cfg.epochs - 1).bit_length()
        results = m * (d + 1) * 4 + m * cap * steps * 4
        tm.say(
            f"  {size}: data {n * (d + 1) * 4 / 2**20:.1f} MiB; sweep results (params + step-loss history of "
            f"{cap} epochs x {steps} steps) {results / 2**20:.2f} MiB; one full-data loss of all members needs an "
            f"(N, M) float32 intermediate of {m * n * 4 / 2**20:.1f} MiB"
        )
    tm.say(
        "  peak RSS = VmHWM of the subprocess (ru_maxrss where there is no /proc); 'run peak - start': within the\n"
        "  same subprocess, the peak RSS while compiling and running (VmHWM reset just before) minus the RSS just\n"
        "  before. sweep1 = the same sweep with 1 member: the part of the memory that does not grow with members."
    )
    ratios = {}
    for size in sizes:  # on the run's own increase ('run peak - start'), or over the baseline where /proc lacks it
        sw, ex = out.get(f"sweep-{size}"), out.get(f"expert-{size}")
        field = "run_increase_mib" if sw and sw["run_increase_mib"] is not None else "increase_vs_baseline_mib"
        if sw and ex and sw[field] is not None and ex[field]:
            ratios[size] = sw[field] / ex[field]
            what = "run peak - start" if field == "run_increase_mib" else "peak RSS over the baseline"
            tm.say(f"ratios: {size}: gd.sweep / expert, {what} = {ratios[size]:.2f}x")
    missing = len(sizes) * len(whats) - len(out)
    report = {"machine": info, "quick": args.quick, "probes": out, "ratios": ratios}
    return tm.finish(args.json, report, error=f"{missing} probe(s) failed" if missing else None)


if __name__ == "__main__":
    sys.exit(main())
