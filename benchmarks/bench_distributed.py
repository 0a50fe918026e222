"""Benchmark the distributed paths where they buy nothing: several processes, or devices, on one 2-core machine.

Run: ``python benchmarks/bench_distributed.py [--quick] [--repeats N] [--json PATH]``
(``--quick``: tiny sizes, a smoke test of seconds).

Sweep: ``gd.sweep`` of 64 learning rates (``linear_regression(n=8192, d=64)``,
batch 32, 20 epochs, plain SGD) run (a) in one process with two forced CPU
devices (the members split over both cores), (b) in two processes joined by
``jax.distributed`` (gloo collectives), one CPU device each: the same split,
plus the exchanges between processes, and (c) in one process with one device.
(a) and (b) compute the same bits.

Data-parallel fit: ``gd.fit`` of an MLP (64-256-1, batch 256, 3 epochs) with
``devices=jax.devices()`` on eight forced CPU devices against the same fit on
one device, in one process.

Each way runs in its own subprocess (the device count is fixed when JAX
starts); times are medians over ``--repeats`` calls after the first, which
compiles (compile time apart). On one machine these are costs, not speedups:
the distributed paths pay where the devices are real (GPUs, TPUs, hosts).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import Any

import _timing as tm
import numpy as np

CHILD = "--child"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(way: str, devices: int, quick: bool, repeats: int, processes: int = 1) -> dict[str, Any]:
    """Run ``way`` in ``processes`` subprocesses of ``devices`` CPU devices each; process 0's JSON line."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    flags = [f"--xla_force_host_platform_device_count={devices}"] + ([tm.QUICK_XLA_FLAG] if quick else [])
    env["XLA_FLAGS"] = " ".join(flags)
    port = _port()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, CHILD, way, str(i), str(processes), str(port), str(int(quick)), str(repeats)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode:
            raise RuntimeError(f"{way} failed:\n{err[-3000:]}")
    return json.loads(outs[0][0].strip().splitlines()[-1])


def _child(way: str, pid: int, processes: int, port: int, quick: bool, repeats: int) -> None:
    import jax

    if processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=processes, process_id=pid)
    import optax

    import gdjax as gd

    if way == "sweep":
        n, d, lrs, epochs = (1024, 8, 4, 2) if quick else (8192, 64, 64, 20)
        prob = gd.problems.linear_regression(n=n, d=d, key=jax.random.key(0))
        model = gd.models.linear()
        it = gd.minibatch(prob.data, 32)
        rates = np.geomspace(1e-3, 0.1, lrs)

        def call(seed: int) -> Any:
            return gd.sweep(
                model.loss, model.init(jax.random.key(1), d), optax.sgd, it,
                learning_rates=rates, epochs=epochs, key=jax.random.key(seed),
            )  # fmt: skip

        r = tm.time_result_calls(call, repeats)
        out = {"compile_s": r["compile_s"], "run_s": r["wall_time_s"], "final": r["result"].final_loss.tolist()}
    else:
        n, hidden, epochs = (2048, 32, 1) if quick else (16384, 256, 3)
        prob = gd.problems.linear_regression(n=n, d=64, key=jax.random.key(0))
        model = gd.models.mlp((hidden,))
        it = gd.minibatch(prob.data, 256)
        out = {}
        for name, devices in (("one", None), ("all", jax.devices())):

            def call(seed: int, devices: Any = devices) -> Any:
                return gd.fit(
                    model.loss, model.init(jax.random.key(1), 64), optax.sgd, it,
                    epochs=epochs, key=jax.random.key(seed), learning_rate=0.01, devices=devices,
                )  # fmt: skip

            r = tm.time_result_calls(call, repeats)
            out[name] = {"compile_s": r["compile_s"], "run_s": r["wall_time_s"], "losses": r["result"].losses.tolist()}
        out["devices"] = jax.device_count()
    if pid == 0:
        print(json.dumps(out), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = tm.parse(tm.parser(__doc__, default_repeats=5), argv)
    repeats, quick = args.repeats, args.quick
    info = tm.print_header(quick)
    report: dict[str, Any] = {"machine": info, "quick": quick, "repeats": repeats}
    tm.say("\n=== sweep of 64 learning rates (4 with --quick): two processes against one ===")
    ways = {
        "(a) 1 process, 2 devices": _spawn("sweep", 2, quick, repeats),
        "(b) 2 processes, 1 device each": _spawn("sweep", 1, quick, repeats, processes=2),
        "(c) 1 process, 1 device": _spawn("sweep", 1, quick, repeats),
    }
    base = tm.med(ways["(a) 1 process, 2 devices"]["run_s"])
    tm.say(f"  {'way':<34}{'compile (s)':>12}{'run (s)':>10}{'vs (a)':>9}")
    for name, r in ways.items():
        run = tm.med(r["run_s"])
        tm.say(f"  {name:<34}{r['compile_s']:>12.3f}{run:>10.4f}{run / base:>8.2f}x")
    same = ways["(a) 1 process, 2 devices"]["final"] == ways["(b) 2 processes, 1 device each"]["final"]
    tm.say(f"  same results (a) and (b), bit for bit: {same}")
    report["sweep"] = ways
    tm.say("\n=== data-parallel fit, MLP 64-256-1 (64-32-1 with --quick), batch 256: 8 forced devices against 1 ===")
    fit = _spawn("fit", 8, quick, repeats)
    one, eight = tm.med(fit["one"]["run_s"]), tm.med(fit["all"]["run_s"])
    tm.say(f"  {'way':<34}{'compile (s)':>12}{'run (s)':>10}{'vs 1 device':>13}")
    for name, r in (("1 device", fit["one"]), (f"{fit['devices']} forced devices", fit["all"])):
        run = tm.med(r["run_s"])
        tm.say(f"  {name:<34}{r['compile_s']:>12.3f}{run:>10.4f}{run / one:>12.2f}x")
    gap = float(np.max(np.abs(np.asarray(fit["one"]["losses"]) - np.asarray(fit["all"]["losses"]))))
    tm.say(f"  largest difference of the step losses, 8 devices against 1: {gap:.2e} (float tolerance)")
    report["fit"] = fit
    two = tm.med(ways["(b) 2 processes, 1 device each"]["run_s"]) / base
    alone = tm.med(ways["(c) 1 process, 1 device"]["run_s"]) / base
    compile_ratio = fit["all"]["compile_s"] / fit["one"]["compile_s"]
    tm.say(
        f"ratios: (b)/(a) 2 processes / 1 process (2 devices) = {two:.2f}x; (c)/(a) 1 device / 2 devices = "
        f"{alone:.2f}x; 8 forced devices / 1 device = {eight / one:.2f}x (compile {compile_ratio:.2f}x)"
    )
    tm.say("the distributed paths buy nothing on one 2-core machine: these are their costs")
    report["ratios"] = {"processes": two, "one_device": alone, "fit_devices": eight / one, "fit_compile": compile_ratio}
    return tm.finish(args.json, report, None if same else "the two-process sweep differs from one process")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        way, pid, processes, port, quick, repeats = sys.argv[2:8]
        _child(way, int(pid), int(processes), int(port), quick == "1", int(repeats))
    else:
        sys.exit(main())
