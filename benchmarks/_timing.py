"""Shared by the benchmarks: timing loops, peak memory, the machine header, the command line and JSON.

The rules every benchmark follows: times are medians over repeated runs, compilation is
timed apart from running, and results are printed as ratios against the other ways
measured in the same process (absolute times move with the machine, ratios much less).

Not a benchmark; the scripts beside it import it as ``_timing``, which works because
Python puts a script's own folder first on ``sys.path`` (``python benchmarks/bench_fit.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

import gdjax as gd

# ----- timing -----------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds ``fn()`` takes, its result blocked until ready."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def repeat_timed(fn: Callable[[int], Any], repeats: int) -> tuple[list[float], list[Any]]:
    """Seconds and results of ``fn(1)``, ..., ``fn(repeats)``: a new seed each run, cache warm."""
    runs, outs = [], []
    for r in range(1, repeats + 1):
        t, out = timed(lambda r=r: fn(r))
        runs.append(t)
        outs.append(out)
    return runs, outs


def time_result_calls(call: Callable[[int], Any], repeats: int) -> dict[str, Any]:
    """Time a ``gd.fit`` or ``gd.sweep`` call: ``call(seed)`` returns its result.

    The first call (seed 0) compiles; its result's ``compile_time`` is the compile time.
    Then ``repeats`` whole calls on a warm cache, with their results' own ``wall_time``
    (the compiled run only) and ``compile_time`` (the cache look-up).
    """
    first_s, first = timed(lambda: call(0))
    runs, results = repeat_timed(call, repeats)
    return {
        "first_call_s": first_s,
        "compile_s": first.compile_time,
        "run_s": runs,  # whole calls, end to end, cache warm
        "wall_time_s": [r.wall_time for r in results],
        "compile_time_cached_s": [r.compile_time for r in results],
        "result": results[-1],
    }


def time_compiled(jitted: Any, args: Callable[[int], tuple], repeats: int) -> dict[str, Any]:
    """Time a ``jax.jit`` program: ``lower().compile()`` apart, then runs of ``args(seed)``."""
    compile_s, compiled = timed(lambda: jitted.lower(*args(0)).compile())
    first_run_s, _ = timed(lambda: compiled(*args(0)))
    runs, outs = repeat_timed(lambda r: compiled(*args(r)), repeats)
    return {"first_call_s": compile_s + first_run_s, "compile_s": compile_s, "run_s": runs, "out": outs[-1]}


def ratio_text(r: float) -> str:
    if abs(r - 1.0) < 0.005:
        return "1.00x (same)"
    return f"{r:.2f}x slower" if r > 1 else f"{1 / r:.2f}x faster"


# ----- peak memory --------------------------------------------------------------------


def status_mib(field: str) -> float | None:
    """A size line of /proc/self/status (Linux), in MiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_mib() -> float:
    """This process's peak RSS.

    VmHWM where there is /proc: ``ru_maxrss`` is not used there because Linux
    carries it over ``fork``/``exec``, so a child of a big parent reports at least
    the parent's size.
    """
    hwm = status_mib("VmHWM")
    if hwm is not None:
        return hwm
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform == "darwin" else kb / 1024  # bytes on macOS, KiB elsewhere


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----- the machine, the command line, the output ----------------------------------------


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
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def say(*args: Any) -> None:
    print(*args, flush=True)


_started = [time.perf_counter()]


def print_header(quick: bool) -> dict[str, Any]:
    """Print the machine line every benchmark starts with (and start the clock of ``finish``); return it as a dict."""
    _started[0] = time.perf_counter()
    info = machine_info()
    say(
        f"machine: {info['processor']} ({info['machine']}), os.cpu_count()={info['cpu_count']}, "
        f"device={info['backend']}:{info['device_kind']}, jax {info['jax']}, optax {info['optax']}, "
        f"gdjax {info['gdjax']}, numpy {info['numpy']}, python {info['python']}"
        + (" [--quick: small sizes]" if quick else "")
    )
    return info


def parser(doc: str, default_repeats: int | None) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--quick``, ``--repeats`` (not where None), ``--json``."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    if default_repeats is not None:
        p.add_argument(
            "--repeats", type=int, default=default_repeats, help=f"timed runs of each way (default {default_repeats})"
        )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes, at most 3 repeats, XLA's quickest compiles: a smoke test"
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    return p


# --quick: XLA compiles without its backend optimizations. A smoke test's time is nearly all compiling (a
# second or more a program on CPU, its runs milliseconds), a quarter to a third of which this saves; its numbers mean
# nothing anyway. Set before JAX starts its backend (importing jax and gdjax does not), inherited by the probes.
QUICK_XLA_FLAG = "--xla_backend_optimization_level=0"


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = p.parse_args(argv)
    if args.quick and QUICK_XLA_FLAG not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {QUICK_XLA_FLAG}".strip()
    if getattr(args, "repeats", None) is None:
        return args
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.quick:
        args.repeats = min(args.repeats, 3)
    return args


def to_json(x: Any) -> Any:
    """``x`` with arrays as lists, numpy scalars as Python ones and non-finite floats as None."""
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


def finish(json_path: str | None, report: dict[str, Any], error: str | None = None) -> int:
    """End a benchmark: print its total time, write ``report`` as JSON where asked, report ``error``; exit status."""
    report["total_s"] = time.perf_counter() - _started[0]
    say(f"\ntotal time {report['total_s']:.1f} s")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(to_json(report), f, indent=2)
        say(f"wrote {json_path}")
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
