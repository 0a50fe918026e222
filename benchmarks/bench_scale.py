"""Benchmark data larger than memory: ``gd.minibatch(..., on_device=False)`` streams a memmap (issue 12).

Run: ``python benchmarks/bench_scale.py [--quick] [--repeats N] [--json PATH] [--parts memory,speed] [--big]
[--data-dir DIR]``
(``--quick``: one round, N=10,000 rows everywhere (40,000 for ``big``), memory probe ``sweep4`` only, a
smoke test whose numbers mean nothing; ``--big`` adds part ``big``, which first
writes a 10 GB file: about a minute more; ``--data-dir``: write the data files there and keep them, reusing
those already there, instead of a temporary folder deleted at the end).

The data are float32 ``.npy`` memmaps this script writes itself (``np.lib.format.open_memmap``, filled in
chunks from a seeded generator): ``x`` of shape ``(N, 256)``, standard normal, and ``y = tanh(x @ w) + 0.05
noise``. Every part runs in fresh subprocesses of this script (``--probe``), so each measures a process that
has seen nothing else. The model is ``gd.models.mlp`` (tanh hidden layer, squared loss) or
``gd.models.linear``, ``optax.sgd``, batch 1024, one epoch unless said otherwise. Parts (``--parts``):

* ``memory``: N = 3,000,000 (3.08 GB with ``y``; the issue's size). One process per probe: ``minibatch``
  only (the iterator built, the data checked and placed), ``fit`` of an MLP(128) (learning rate 1e-3),
  ``sweep2`` and ``sweep4`` (``gd.sweep`` of 2 and 4 learning rates of the same), each with
  ``on_device=True`` and ``on_device=False``, the default ``eval_every`` (the full-data loss after the
  epoch, computed in blocks of rows). Per probe: peak RSS (``VmHWM``), peak ``RssAnon`` (sampled from
  /proc/self/status every 20 ms on a daemon thread: the kernel keeps no high-water mark of it, so a spike
  shorter than a sample can be missed), the data's size and ``peak - data``. Memory-mapped pages the
  process has touched count in RSS (as ``RssFile``), so a process that read the whole file has
  ``VmHWM >= data`` however it holds it; ``RssAnon`` is the memory it owns. The issue's target: the
  on-device 4-member sweep peaks at no more than data + 1 GB (``VmHWM - data <= 1 GB``). A probe's
  on-device and streamed runs read the same batches: their final losses must agree to 1e-5.
* ``speed``: N = 500,000, one process, ways timed on their compiled runs (``res.wall_time``; the compile
  time apart), every way once per round in a rotated order, medians over ``--repeats`` rounds. Models
  MLP(256) (compute-bound) and linear regression (gather-bound); data streamed (``on_device=False``), on
  the device (``on_device=True`` from the memmap) and "compute only" (``jnp`` arrays already in device
  memory). Runs: 1 epoch with ``eval_every=0``, 2 epochs with ``eval_every=0`` and 2 epochs with the
  default ``eval_every=1``. A run always computes the initial full-data loss and evaluates the final
  parameters, so the 1-epoch run is one epoch and two full-data passes (and with one epoch
  ``eval_every=1`` would do the same work); the training epoch alone is ``t(2 epochs) - t(1 epoch)``
  (``eval_every=0``) and one full-data pass ``t(2 epochs, default) - t(2 epochs, eval_every=0)``, both
  taken per round, medians over the rounds. Targets, streamed / on device: MLP(256) <= 1.15x, linear <=
  1.5x, judged on the 1-epoch run (and printed for the training epoch alone). Streamed and on-device runs
  read the same batches: their final losses must agree to 1e-5.
* ``big`` (only with ``--big``): N = 10,000,000 (10.28 GB), a 4-member sweep of the MLP(128) with
  ``on_device=False``, one epoch, ``eval_every=0`` and the default, each in its own process: peak
  ``RssAnon`` must stay under 1.5 GB; the run's wall time is printed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import _timing as tm
import jax
import jax.numpy as jnp
import numpy as np
import optax

import gdjax as gd

D = 256
BATCH = 1024
LEARNING_RATE = 1e-3
SWEEP_RATES = (1e-3, 2e-3, 5e-4, 3e-3)  # sweep2 takes the first two
GB = 1e9
SAMPLE_EVERY_S = 0.02
CHUNK_ROWS = 1 << 16  # rows written at a time

TARGET_MEMORY_GB = 1.0  # the on-device 4-member sweep: VmHWM - data
TARGET_SPEED = {"MLP(256)": 1.15, "linear": 1.5}  # streamed / on device
TARGET_BIG_ANON_GB = 1.5
SAME_TOLERANCE = 1e-5  # streamed and on-device runs read the same batches

PARTS = ("memory", "speed", "big")
MEMORY_PROBES = ("minibatch", "fit", "sweep2", "sweep4")
QUICK_MEMORY_PROBES = ("sweep4",)  # --quick: each compile takes seconds
PLACEMENTS = ("streamed", "on device", "compute only")
RUNS = ("1 epoch, eval_every=0", "2 epochs, eval_every=0", "2 epochs, default")


@dataclasses.dataclass(frozen=True)
class Sizes:
    memory: int
    speed: int
    big: int


def sizes(quick: bool) -> Sizes:
    # --quick: 10 batches of 1024 rows, so a streamed epoch still takes two reads (7 batches, then 3)
    return Sizes(10_000, 10_000, 40_000) if quick else Sizes(3_000_000, 500_000, 10_000_000)


# ----- the data --------------------------------------------------------------------------


def data_paths(folder: str, n: int) -> tuple[str, str]:
    stem = os.path.join(folder, f"scale_{n}x{D}_seed0")
    return stem + "_x.npy", stem + "_y.npy"


def data_bytes(n: int) -> int:
    return n * (D + 1) * 4


def reusable(xp: str, yp: str, n: int) -> bool:
    try:
        x, y = np.load(xp, mmap_mode="r"), np.load(yp, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return x.shape == (n, D) and y.shape == (n,) and x.dtype == y.dtype == np.float32


def make_data(folder: str, n: int) -> tuple[str, str, float]:
    """Write (or find) the ``x`` and ``y`` memmaps of ``n`` rows in ``folder``; their paths and the seconds taken."""
    xp, yp = data_paths(folder, n)
    if reusable(xp, yp, n):
        return xp, yp, 0.0
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(D) / np.sqrt(D)).astype(np.float32)
    tmp_x, tmp_y = xp + ".part.npy", yp + ".part.npy"  # renamed when complete: an interrupted write is not reused
    x = np.lib.format.open_memmap(tmp_x, mode="w+", dtype=np.float32, shape=(n, D))
    y = np.lib.format.open_memmap(tmp_y, mode="w+", dtype=np.float32, shape=(n,))
    for start in range(0, n, CHUNK_ROWS):
        stop = min(n, start + CHUNK_ROWS)
        xb = rng.standard_normal((stop - start, D), dtype=np.float32)
        x[start:stop] = xb
        y[start:stop] = np.tanh(xb @ w) + 0.05 * rng.standard_normal(stop - start, dtype=np.float32)
    x.flush()
    y.flush()
    del x, y
    os.replace(tmp_x, xp)
    os.replace(tmp_y, yp)
    return xp, yp, time.perf_counter() - t0


def load(spec: dict[str, Any]) -> dict[str, np.ndarray]:
    return {"x": np.load(spec["x"], mmap_mode="r"), "y": np.load(spec["y"], mmap_mode="r")}


# ----- memory, in the probe process -----------------------------------------------------------


def status_bytes() -> dict[str, int]:
    """The size lines of /proc/self/status that matter here, in bytes (empty without /proc)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                name = line.split(":", 1)[0]
                if name in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    out[name] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


class AnonPeak:
    """The peak of ``RssAnon``, sampled every 20 ms on a daemon thread (the kernel keeps no high-water mark of it)."""

    def __init__(self) -> None:
        self.peak = status_bytes().get("RssAnon", 0)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.sample()

    def sample(self) -> None:
        self.peak = max(self.peak, status_bytes().get("RssAnon", 0))
        self.samples += 1

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.peak


def mlp_run(what: str, it: gd.DataIterator, hidden: int, eval_every: int = 1) -> Any:
    """``fit`` or ``sweepK`` of an MLP(hidden) for one epoch; the result, blocked until ready."""
    model = gd.models.mlp((hidden,))
    params = model.init(jax.random.key(0), D)
    key = jax.random.key(1)
    if what == "fit":
        res = gd.fit(
            model.loss, params, optax.sgd, it, epochs=1, key=key, learning_rate=LEARNING_RATE, eval_every=eval_every
        )
    else:
        rates = list(SWEEP_RATES[: int(what.removeprefix("sweep"))])
        res = gd.sweep(
            model.loss, params, optax.sgd, it, learning_rates=rates, epochs=1, key=key, eval_every=eval_every
        )
    jax.block_until_ready(res.params)
    return res


def memory_probe(spec: dict[str, Any]) -> dict[str, Any]:
    """One memory probe (``part`` memory or big): build the iterator, run ``what`` once, report the peaks."""
    sampler = AnonPeak()
    data = load(spec)
    before = status_bytes()
    t0 = time.perf_counter()
    it = gd.minibatch(data, BATCH, on_device=spec["on_device"])
    if it.on_device:
        jax.block_until_ready(it.data)
    minibatch_s = time.perf_counter() - t0
    placed = status_bytes()
    out: dict[str, Any] = {}
    if spec["what"] != "minibatch":
        res = mlp_run(spec["what"], it, spec["hidden"], spec.get("eval_every", 1))
        out = {
            "wall_time_s": res.wall_time,
            "compile_time_s": res.compile_time,
            "final_loss": np.asarray(res.final_loss).tolist(),
        }
    peak_anon = sampler.stop()
    end = status_bytes()
    stats = jax.devices()[0].memory_stats()
    return {
        **spec,
        **out,
        "iterator_on_device": it.on_device,
        "data_bytes": sum(int(x.nbytes) for x in data.values()),
        "minibatch_s": minibatch_s,
        "peak_rss_bytes": end.get("VmHWM"),
        "peak_anon_bytes": peak_anon,
        "anon_samples": sampler.samples,
        "anon_before_minibatch_bytes": before.get("RssAnon"),
        "anon_after_minibatch_bytes": placed.get("RssAnon"),
        "file_after_minibatch_bytes": placed.get("RssFile"),
        "rss_end_bytes": end.get("VmRSS"),
        "file_end_bytes": end.get("RssFile"),
        "device_peak_bytes": stats.get("peak_bytes_in_use") if stats else None,
    }


# ----- speed, in the probe process -------------------------------------------------------------


def speed_probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Every speed way in interleaved rounds (compiled first); per way its run times, compile time and final losses."""
    data = load(spec)
    its, build_s = {}, {}
    for placement in PLACEMENTS:
        t0 = time.perf_counter()
        if placement == "compute only":
            its[placement] = gd.minibatch({k: jnp.array(v) for k, v in data.items()}, BATCH)
        else:
            its[placement] = gd.minibatch(data, BATCH, on_device=placement == "on device")
        jax.block_until_ready(its[placement].data if its[placement].on_device else 0)
        build_s[placement] = time.perf_counter() - t0
    models = {"MLP(256)": gd.models.mlp((256,)), "linear": gd.models.linear()}
    params = {name: m.init(jax.random.key(0), D) for name, m in models.items()}
    runs = {RUNS[0]: (1, 0), RUNS[1]: (2, 0), RUNS[2]: (2, 1)}
    ways = [(m, p, r) for m in models for p in PLACEMENTS for r in RUNS]

    def call(way: tuple[str, str, str], seed: int) -> Any:
        model, placement, run = way
        epochs, eval_every = runs[run]
        res = gd.fit(
            models[model].loss,
            params[model],
            optax.sgd,
            its[placement],
            epochs=epochs,
            key=jax.random.key(seed),
            learning_rate=LEARNING_RATE,
            eval_every=eval_every,
        )
        jax.block_until_ready(res.params)
        return res

    out = {"|".join(w): {"run_s": [], "final_loss": [], "compile_s": call(w, 0).compile_time} for w in ways}
    for r in range(spec["repeats"]):
        k = r % len(ways)
        for way in ways[k:] + ways[:k]:
            res = call(way, r + 1)
            out["|".join(way)]["run_s"].append(res.wall_time)
            out["|".join(way)]["final_loss"].append(float(res.final_loss))
    return {
        **spec,
        "on_device": {p: it.on_device for p, it in its.items()},
        "minibatch_s": build_s,
        "ways": out,
    }


# ----- running the probes ---------------------------------------------------------------------


def run_probes(specs: list[dict[str, Any]], together: bool, timeout: float | None) -> list[dict[str, Any] | None]:
    """Each spec in a fresh subprocess of this script: one after the other, or all at once with ``together``."""
    here = os.path.abspath(__file__)
    started: list[subprocess.Popen] = []
    out: list[dict[str, Any] | None] = []

    def collect(proc: subprocess.Popen, spec: dict[str, Any]) -> None:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            stderr += f"\n(killed after {timeout} s)"
        if proc.returncode != 0 or not stdout.strip():
            tm.say(f"  probe {spec.get('name', spec['part'])} failed (rc {proc.returncode}): {stderr.strip()[-800:]}")
            out.append(None)
        else:
            out.append(json.loads(stdout.strip().splitlines()[-1]))

    for spec in specs:
        proc = subprocess.Popen(
            [sys.executable, here, "--probe", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        if not together:
            collect(proc, spec)
    for proc, spec in zip(started, specs, strict=True) if together else ():
        collect(proc, spec)
    return out


def gb(b: float | None) -> str:
    return "-" if b is None else f"{b / GB:.2f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def memory_part(args: Any, folder: str, n: int) -> tuple[dict[str, Any], list[str]]:
    xp, yp, made_s = make_data(folder, n)
    tm.say(
        f"\n=== part memory: peak memory, N={n:,} x {D} float32 + y ({data_bytes(n) / GB:.2f} GB, "
        f"{data_bytes(n) / 2**30:.2f} GiB), one fresh process per probe ===\n"
        + (f"(data written in {made_s:.1f} s)" if made_s else "(data files reused)")
    )
    specs = [
        {"part": "memory", "name": f"{what} {'on device' if od else 'streamed'}", "what": what, "on_device": od,
         "hidden": 128, "x": xp, "y": yp}
        for what in (QUICK_MEMORY_PROBES if args.quick else MEMORY_PROBES) for od in (True, False)
    ]  # fmt: skip
    results = run_probes(specs, together=args.quick, timeout=300 if args.quick else None)
    tm.say(
        f"  {'probe':<22}{'on_device':>10}{'peak RSS':>10}{'peak RssAnon':>14}{'data':>7}{'peak - data':>13}"
        f"{'anon placed':>13}{'run (s)':>9}{'compile (s)':>13}"
    )
    probes: dict[str, Any] = {}
    errors = []
    for spec, r in zip(specs, results, strict=True):
        if r is None:
            errors.append(f"memory probe {spec['name']} failed")
            continue
        probes[spec["name"]] = r
        if r["iterator_on_device"] != spec["on_device"]:
            errors.append(f"{spec['name']}: it.on_device is {r['iterator_on_device']}")
        peak, data = r["peak_rss_bytes"], r["data_bytes"]
        r["peak_minus_data_bytes"] = None if peak is None else peak - data
        placed = None
        if r["anon_after_minibatch_bytes"] is not None and r["anon_before_minibatch_bytes"] is not None:
            placed = r["anon_after_minibatch_bytes"] - r["anon_before_minibatch_bytes"]
        run_s = f"{r['wall_time_s']:>9.2f}" if "wall_time_s" in r else f"{'-':>9}"
        comp_s = f"{r['compile_time_s']:>13.2f}" if "compile_time_s" in r else f"{'-':>13}"
        tm.say(
            f"  {spec['name']:<22}{r['iterator_on_device']!s:>10}{gb(peak):>10}{gb(r['peak_anon_bytes']):>14}"
            f"{gb(data):>7}{gb(r['peak_minus_data_bytes']):>13}{gb(placed):>13}{run_s}{comp_s}"
        )
    tm.say(
        "  GB = 1e9 bytes. peak RSS = VmHWM (anonymous + file-backed pages: a process that read the memmap whole,\n"
        "  as the data check does, has touched every page of it); peak RssAnon = the memory the process owns,\n"
        f"  sampled every {1e3 * SAMPLE_EVERY_S:.0f} ms; anon placed = RssAnon after gd.minibatch(...) minus before "
        "(what placing\n  the data added); run = res.wall_time (compile excluded), one epoch, default eval_every."
    )
    for od in (True, False):
        fits = [probes.get(f"{w} {'on device' if od else 'streamed'}") for w in ("fit", "sweep2", "sweep4")]
        if all(fits):
            anon = [f["peak_anon_bytes"] for f in fits]
            tm.say(
                f"  {'on device' if od else 'streamed'}: peak RssAnon fit / sweep2 / sweep4 = "
                f"{' / '.join(gb(a) for a in anon)} GB (sweep4 - fit: {(anon[2] - anon[0]) / GB:+.2f} GB)"
            )
    for what in MEMORY_PROBES[1:]:  # the same batches, whatever holds the data: the same final losses
        pair = [probes.get(f"{what} {where}") for where in ("on device", "streamed")]
        if all(pair):
            a, b = (np.asarray(r["final_loss"]) for r in pair)
            if np.max(np.abs(a - b) / np.abs(a)) > SAME_TOLERANCE:
                errors.append(f"{what}: final losses differ between on device ({a}) and streamed ({b})")
    mb = probes.get("minibatch on device")
    if mb and mb["anon_after_minibatch_bytes"] is not None and mb["iterator_on_device"]:
        added = mb["anon_after_minibatch_bytes"] - mb["anon_before_minibatch_bytes"]
        if added < 0.1 * mb["data_bytes"]:
            tm.say(
                f"  on_device=True added {added / GB:.2f} GB of anonymous memory for {mb['data_bytes'] / GB:.2f} GB of "
                f"data: on this backend ({jax.default_backend()}) the device\n  array aliases the memmap's pages "
                "(no copy), so the data counts in RssFile, not in RssAnon."
            )
    device_peaks = {name: r["device_peak_bytes"] for name, r in probes.items() if r["device_peak_bytes"] is not None}
    if device_peaks:  # an accelerator: the data placed on it is not in the process's RSS
        tm.say("  device peak_bytes_in_use (GB): " + ", ".join(f"{k} {gb(v)}" for k, v in device_peaks.items()))
    target = probes.get("sweep4 on device")
    passed = None
    if target and target["peak_minus_data_bytes"] is not None:
        over = target["peak_minus_data_bytes"] / GB
        passed = over <= TARGET_MEMORY_GB
        tm.say(
            f"target: sweep4 on device peak <= data + {TARGET_MEMORY_GB:.0f} GB: {verdict(passed)} ({over:.2f} GB)"
            + (" [--quick: means nothing]" if args.quick else "")
        )
    return {"n": n, "data_bytes": data_bytes(n), "made_s": made_s, "probes": probes, "target_pass": passed}, errors


def speed_part(args: Any, folder: str, n: int) -> tuple[dict[str, Any], list[str]]:
    xp, yp, made_s = make_data(folder, n)
    steps = -(-n // BATCH)
    tm.say(
        f"\n=== part speed: streamed vs on device, gd.fit, N={n:,} x {D} float32 ({data_bytes(n) / GB:.2f} GB), "
        f"batch {BATCH} ({steps} steps/epoch), SGD, {args.repeats} interleaved rounds in one fresh process ===\n"
        + (f"(data written in {made_s:.1f} s)" if made_s else "(data files reused)")
    )
    (r,) = run_probes(
        [{"part": "speed", "x": xp, "y": yp, "repeats": args.repeats}],
        together=False,
        timeout=600 if args.quick else None,
    )
    if r is None:
        return {"n": n, "made_s": made_s}, ["speed probe failed"]
    errors = []
    ways = r["ways"]
    derived: dict[str, dict[str, Any]] = {}
    tm.say(
        f"  {'model':<10}{'data':<14}{'1 ep, eval 0':>13}{'2 ep, eval 0':>13}{'2 ep, default':>14}"
        f"{'epoch':>9}{'rows/s':>11}{'full pass':>11}{'compile':>9}{'minibatch':>11}  (seconds, medians)"
    )
    for model in TARGET_SPEED:
        for placement in PLACEMENTS:
            w = [ways[f"{model}|{placement}|{run}"] for run in RUNS]
            a, b, c = (np.asarray(x["run_s"]) for x in w)
            d = {
                "runs_s": {run: tm.med(list(x["run_s"])) for run, x in zip(RUNS, w, strict=True)},
                "epoch_s": float(np.median(b - a)),  # per round, then the median
                "full_pass_s": float(np.median(c - b)),
                "compile_s": sum(x["compile_s"] for x in w),
            }
            derived[f"{model}|{placement}"] = d
            rate = n / d["epoch_s"] if d["epoch_s"] > 0 else float("nan")
            t = d["runs_s"]
            tm.say(
                f"  {model:<10}{placement:<14}{t[RUNS[0]]:>13.3f}{t[RUNS[1]]:>13.3f}{t[RUNS[2]]:>14.3f}"
                f"{d['epoch_s']:>9.3f}{rate:>11,.0f}{d['full_pass_s']:>11.3f}{d['compile_s']:>9.2f}"
                f"{r['minibatch_s'][placement]:>11.2f}"
            )
        for run in RUNS:  # the same batches: the same final losses, whatever holds the data
            losses = {p: np.asarray(ways[f"{model}|{p}|{run}"]["final_loss"]) for p in PLACEMENTS}
            worst = max(
                float(np.max(np.abs(v - losses["on device"]) / np.abs(losses["on device"]))) for v in losses.values()
            )
            derived[f"{model}|{run}|worst_loss_difference"] = worst
            if worst > SAME_TOLERANCE:
                errors.append(f"{model}, {run}: final losses differ by {worst:.1e} between data placements")
    tm.say(
        "  epoch = t(2 ep, eval 0) - t(1 ep, eval 0): the training epoch alone; full pass = t(2 ep, default) -\n"
        "  t(2 ep, eval 0): one full-data loss (each run also computes the initial loss and evaluates the final\n"
        "  params: the 1-epoch run is 1 epoch + 2 full passes); both per round, medians; rows/s = N / epoch;\n"
        "  compile = the three runs' compile_time; minibatch = building the iterator (checks the data, places it)."
    )
    ratios: dict[str, Any] = {}
    for model, target in TARGET_SPEED.items():
        s, o, c = (derived[f"{model}|{p}"] for p in PLACEMENTS)
        q = {
            "run_1_epoch": s["runs_s"][RUNS[0]] / o["runs_s"][RUNS[0]],
            "epoch": s["epoch_s"] / o["epoch_s"] if o["epoch_s"] > 0 else float("nan"),
            "full_pass": s["full_pass_s"] / o["full_pass_s"] if o["full_pass_s"] > 0 else float("nan"),
            "run_2_epochs_default": s["runs_s"][RUNS[2]] / o["runs_s"][RUNS[2]],
            "on_device_over_compute_only": o["runs_s"][RUNS[0]] / c["runs_s"][RUNS[0]],
        }
        q["target"], q["pass"], q["epoch_pass"] = target, q["run_1_epoch"] <= target, q["epoch"] <= target
        ratios[model] = q
        tm.say(
            f"streamed / on device, {model}: 1-epoch run (eval_every=0) {q['run_1_epoch']:.2f}x, training epoch "
            f"{q['epoch']:.2f}x, full-data pass {q['full_pass']:.2f}x, 2 epochs default "
            f"{q['run_2_epochs_default']:.2f}x; on device / compute only {q['on_device_over_compute_only']:.2f}x"
        )
    for model, q in ratios.items():
        tm.say(
            f"target: {model} streamed / on device <= {q['target']:.2f}x: {verdict(q['pass'])} ({q['run_1_epoch']:.2f}x"
            f", 1-epoch run); training epoch alone: {verdict(q['epoch_pass'])} ({q['epoch']:.2f}x)"
            + (" [--quick: means nothing]" if args.quick else "")
        )
    return {"n": n, "made_s": made_s, "probe": r, "derived": derived, "ratios": ratios}, errors


def big_part(args: Any, folder: str, n: int) -> tuple[dict[str, Any], list[str]]:
    tm.say(
        f"\n=== part big: a {data_bytes(n) / GB:.2f} GB memmap (N={n:,} x {D} float32 + y), 4-member sweep of an "
        "MLP(128), on_device=False, one fresh process per run ==="
    )
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    if total:
        tm.say(f"  this machine has {total / GB:.1f} GB of memory: the data is {data_bytes(n) / total:.0%} of it")
    if not reusable(*data_paths(folder, n), n):
        tm.say(f"  writing the data file ({data_bytes(n) / GB:.1f} GB): about a minute per 10 GB ...")
    xp, yp, made_s = make_data(folder, n)
    tm.say(f"  (data written in {made_s:.1f} s)" if made_s else "  (data files reused)")
    specs = [
        {"part": "big", "name": f"sweep4 streamed, {label}", "what": "sweep4", "on_device": False, "hidden": 128,
         "eval_every": ev, "x": xp, "y": yp}
        for label, ev in (("eval_every=0", 0), ("default", 1))
    ]  # fmt: skip
    results = run_probes(specs, together=False, timeout=600 if args.quick else None)
    tm.say(f"  {'run':<32}{'peak RssAnon':>14}{'peak RSS':>10}{'run (s)':>10}{'compile (s)':>13}  peak RssAnon target")
    probes, errors = {}, []
    for spec, r in zip(specs, results, strict=True):
        if r is None:
            errors.append(f"big probe {spec['name']} failed")
            continue
        probes[spec["name"]] = r
        r["pass"] = r["peak_anon_bytes"] < TARGET_BIG_ANON_GB * GB
        tm.say(
            f"  {spec['name']:<32}{gb(r['peak_anon_bytes']):>14}{gb(r['peak_rss_bytes']):>10}{r['wall_time_s']:>10.1f}"
            f"{r['compile_time_s']:>13.2f}  < {TARGET_BIG_ANON_GB} GB: {verdict(r['pass'])}"
        )
    tm.say(
        "  run = res.wall_time: one epoch plus the two full-data passes every run makes (the initial loss and the\n"
        "  final parameters'; with one epoch eval_every=0 and the default do the same work)."
    )
    for name, r in probes.items():
        tm.say(
            f"target: big {name.split(', ')[1]}: peak RssAnon < {TARGET_BIG_ANON_GB} GB: {verdict(r['pass'])} "
            f"({r['peak_anon_bytes'] / GB:.2f} GB); epoch wall time {r['wall_time_s']:.1f} s"
        )
    return {"n": n, "data_bytes": data_bytes(n), "made_s": made_s, "probes": probes}, errors


def main(argv: list[str] | None = None) -> int:
    p = tm.parser(__doc__, default_repeats=5)
    p.add_argument("--parts", default="memory,speed", help="parts to run, comma-separated: memory, speed, big")
    p.add_argument("--big", action="store_true", help="also run part big (writes a 10 GB file: about a minute)")
    p.add_argument("--data-dir", help="write the data files here and keep them (reusing those there)")
    p.add_argument("--probe", help="internal: run one probe (JSON) and print its result as JSON")
    args = tm.parse(p, argv)
    if args.quick:
        args.repeats = 1  # a smoke test: one round is enough to see every way run
    if args.probe:
        spec = json.loads(args.probe)
        print(json.dumps(speed_probe(spec) if spec["part"] == "speed" else memory_probe(spec)))
        return 0
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if args.big and "big" not in parts:
        parts.append("big")
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    if "big" in parts and not args.big:
        p.error("part big writes a 10 GB file: pass --big to run it")

    info = tm.print_header(args.quick)
    sz = sizes(args.quick)
    folder = args.data_dir or tempfile.mkdtemp(prefix="gdjax-bench-scale-")
    os.makedirs(folder, exist_ok=True)
    tm.say(f"data files in {folder} ({'kept' if args.data_dir else 'deleted at the end'})")
    report: dict[str, Any] = {"machine": info, "quick": args.quick, "repeats": args.repeats, "parts": parts}
    errors: list[str] = []
    try:
        for part, fn, n in (
            ("memory", memory_part, sz.memory),
            ("speed", speed_part, sz.speed),
            ("big", big_part, sz.big),
        ):
            if part in parts:
                report[part], errs = fn(args, folder, n)
                errors += errs
    finally:
        if not args.data_dir:
            shutil.rmtree(folder, ignore_errors=True)
    return tm.finish(args.json, report, error="; ".join(errors) if errors else None)


if __name__ == "__main__":
    sys.exit(main())
