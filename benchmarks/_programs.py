"""Shared by the benchmarks: the least-squares problem, its sizes and the ways of training it.

The problem is ``gd.problems.linear_regression``, loss ``mean(0.5 * (x @ w + b - y) ** 2)``
per batch, params starting at zero, plain SGD. The ways measured by more than one
benchmark live here: ``gd.sweep`` timed through the public API, the expert's
hand-written ``lax.scan`` program (``jax.jit`` of it, or of ``jax.vmap`` of it over
learning rates) and the Python loop over a jitted optax step. Every way's final
parameters are judged by one yardstick, the mean loss over the whole data set.

Not a benchmark; imported as ``_programs`` by the scripts beside it (see ``_timing``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _timing import med, ratio_text, say, time_compiled, time_result_calls, timed

import gdjax as gd

LOSS_TOLERANCE = 0.10  # final full-data losses of shared learning rates must agree within 10%
LARGE_LR_RANGE = (1e-3, 0.2)  # the large sweep; above about 0.3 final losses after 2 epochs vary by >10% between orders


# ----- sizes ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One sweep's problem and learning rates."""

    n: int
    d: int
    batch: int
    epochs: int
    lrs: np.ndarray  # mini-batch SGD learning rates, one per member
    sgd_lrs: np.ndarray  # single-sample SGD learning rates (the main sweep only)
    key: int  # of the problem's data

    @property
    def members(self) -> int:
        return len(self.lrs)

    @property
    def steps(self) -> int:
        return self.n // self.batch

    def problem(self) -> gd.problems.Regression:
        return gd.problems.linear_regression(n=self.n, d=self.d, key=jax.random.key(self.key))


def main_sweep(quick: bool) -> Sweep:
    """The 64-learning-rate sweep of the README's table (16 rates of a tiny problem with ``--quick``)."""
    n, d, epochs, m = (1024, 16, 2, 16) if quick else (8192, 64, 5, 64)
    return Sweep(n, d, 32, epochs, np.geomspace(1e-4, 0.05, m), np.geomspace(1e-5, 3e-3, m), key=0)


def large_sweep(quick: bool) -> Sweep:
    """The large sweep: 256 learning rates, D=512, batch 256 (32 rates, D=128 with ``--quick``)."""
    n, d, batch, m = (2048, 128, 64, 32) if quick else (8192, 512, 256, 256)
    return Sweep(n, d, batch, 2, np.geomspace(*LARGE_LR_RANGE, m), np.zeros(0), key=1)


def subset(m: int, k: int) -> np.ndarray:
    """``k`` member indices spread evenly over ``[0, m)`` (first and last included)."""
    return np.unique(np.linspace(0, m - 1, min(k, m)).round().astype(int))


# ----- the loss and the yardstick ---------------------------------------------------------


def batch_mean_loss(params: dict, xb: jax.Array, yb: jax.Array) -> jax.Array:
    return jnp.mean(0.5 * (xb @ params["w"] + params["b"] - yb) ** 2)


def zero_params(d: int) -> dict[str, jax.Array]:
    return {"w": jnp.zeros((d,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


@jax.jit
def member_losses(params: dict, X: jax.Array, y: jax.Array) -> jax.Array:
    """The common yardstick: each member's mean loss over the whole data set."""
    return jax.vmap(batch_mean_loss, in_axes=(0, None, None))(params, X, y)


def stack_params(by_index: dict[int, dict], keys: list[int]) -> dict:
    return {
        "w": jnp.asarray(np.stack([np.asarray(by_index[k]["w"]) for k in keys])),
        "b": jnp.asarray(np.stack([np.asarray(by_index[k]["b"]) for k in keys])),
    }


def losses_at(by_index: dict[int, dict] | None, m: int, X: jax.Array, y: jax.Array) -> np.ndarray | None:
    """Full-data losses of the members some way ran (by index), NaN for the others."""
    if by_index is None:
        return None
    out = np.full(m, np.nan)
    keys = sorted(by_index)
    out[keys] = np.asarray(member_losses(stack_params(by_index, keys), X, y), np.float64)
    return out


# ----- gd.sweep ---------------------------------------------------------------------------


def bench_gd_sweep(it: gd.DataIterator, d: int, lrs: np.ndarray, epochs: int, repeats: int) -> dict[str, Any]:
    model = gd.models.linear()
    params = zero_params(d)

    def call(seed: int) -> gd.SweepResult:
        sw = gd.sweep(model.loss, params, optax.sgd, it, learning_rates=lrs, epochs=epochs, key=jax.random.key(seed))
        jax.block_until_ready(sw.params)
        return sw

    # compile_s: SweepResult.compile_time of the first call; run_s: whole gd.sweep() calls;
    # wall_time_s: SweepResult.wall_time, the compiled run only.
    r = time_result_calls(call, repeats)
    sw = r.pop("result")
    r.update(diverged=int(sw.diverged.sum()), sweep_final_loss=np.asarray(sw.final_loss), params=sw.params)
    return r


# ----- the expert's hand-written program ----------------------------------------------------


def expert_run(batch: int, epochs: int, *, order: gd.DataIterator | None = None) -> Callable:
    """``run(lr, params, X, y, key) -> (params, losses)``: one ``jax.jit`` (or ``jit(vmap)``) of it is the expert's.

    A ``lax.scan`` over epochs, each drawing its order with ``jax.random.permutation``
    and running a ``lax.scan`` over batches that gathers ``X[idx]`` on the device. The
    learning rate is traced, so another one reuses the compiled program.

    ``order`` (for the diagnostic): draw each epoch's order with this iterator's
    ``epoch_indices``, gdjax's Feistel bijection, instead of the sort.
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
            if order is not None:
                batches = order.epoch_indices(key, e)[0]
            else:
                perm = jax.random.permutation(jax.random.fold_in(key, e), n)
                batches = perm[: steps * batch].reshape(steps, batch)
            return jax.lax.scan(step, carry, batches)

        (params, _), losses = jax.lax.scan(epoch, (params, opt.init(params)), jnp.arange(epochs))
        return params, losses  # losses: (epochs, steps)

    return run


def bench_expert(
    data: dict, d: int, lrs: np.ndarray, batch: int, epochs: int, repeats: int, *, key_per_member: bool = False
) -> dict[str, Any]:
    """Time the expert's ``jit(vmap(run))`` over learning rates.

    With ``key_per_member`` (a diagnostic) every member gets its own copy of the
    same key and the order is drawn with gdjax's Feistel bijection: the members
    see the same orders as before, but the order, the gather and the matrix
    products become per member (``(M, B, D)`` batches, matrix-vector products)
    instead of one shared batch and one ``(M, D) @ (D, B)`` product. That is what
    vmapping a whole training loop, epoch loop included, costs. gd.sweep avoids it:
    its epoch loop is shared by all members and only the epoch body is vmapped, so
    the order is drawn and each batch gathered once, as in the plain (b).
    """
    X, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    n = X.shape[0]
    assert n % batch == 0, "the expert program assumes no ragged last batch"
    params = zero_params(d)
    lr = jnp.asarray(lrs, jnp.float32)
    m = len(lrs)

    def args(seed: int) -> tuple:
        key = jax.random.key(seed)
        return lr, params, X, y, (jnp.repeat(key[None], m, axis=0) if key_per_member else key)

    # Data and params are arguments rather than closed-over constants, so they are
    # not baked into the program; only the learning rate (and the key) is mapped.
    order = gd.minibatch({"x": np.zeros((n, 1), np.float32)}, batch) if key_per_member else None
    axes = (0, None, None, None, 0 if key_per_member else None)
    program = jax.jit(jax.vmap(expert_run(batch, epochs, order=order), in_axes=axes))
    r = time_compiled(program, args, repeats)
    r["params"] = r.pop("out")[0]
    return r


# ----- the Python loop most users write --------------------------------------------------------


def python_loop(data: dict, d: int, batch: int, epochs: int) -> tuple[float, Callable]:
    """A Python loop over epochs and batches slicing numpy batches on the host, calling a jitted optax step.

    Returns the seconds of the first step call (it compiles the step) and
    ``run(lr, seed) -> (params, losses)``. The learning rate is an argument of the
    step, so one compiled step serves every learning rate.
    """
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
        lr = np.float32(lr)
        losses = []
        for e in range(epochs):
            perm = np.random.default_rng(seed + e).permutation(n)
            for s in range(steps):
                i = perm[s * batch : (s + 1) * batch]
                params, opt_state, loss = step(params, opt_state, X[i], y[i], lr)
                # Fairer, faster variant: keep the device arrays and convert at
                # the end. Most users write float(loss) here, which syncs the
                # host with the device every step and is slower still.
                losses.append(loss)
        losses = [float(v) for v in jax.device_get(losses)]
        return jax.block_until_ready(params), losses

    params0 = zero_params(d)
    compile_s, _ = timed(lambda: step(params0, optax.sgd(0.0).init(params0), X[:batch], y[:batch], np.float32(0.0)))
    return compile_s, run


# ----- printing ----------------------------------------------------------------------------------


def loss_table(
    title: str, lrs: np.ndarray, rows: np.ndarray, columns: dict[str, np.ndarray | None], ref: str
) -> dict[str, Any]:
    """Print final losses at ``rows`` for each column; check every column against ``ref`` on its own rows."""
    names = [c for c, v in columns.items() if v is not None]
    say(f"\n{title}")
    say(f"  {'lr':>10}" + "".join(f"{c:>16}" for c in names))
    for k in rows:
        cells = "".join(f"{columns[c][k]:>16.5f}" if np.isfinite(columns[c][k]) else f"{'-':>16}" for c in names)
        say(f"  {lrs[k]:>10.3g}{cells}")
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
        say(
            f"  {c} vs {ref}: {int(have.sum())} shared lrs, largest relative difference "
            f"{100 * worst[c]:.2f}% -> {'OK' if good else 'MISMATCH'}"
        )
    return {"worst_relative_difference": worst, "ok": ok}


def extrapolated(r: dict, m: int) -> tuple[float, str]:
    """Median seconds of a way timed on ``r['timed_lrs']`` of ``m`` learning rates, scaled to all ``m``."""
    t = med(r["subset_run_s"]) * m / r["timed_lrs"]
    return t, ("" if r["timed_lrs"] == m else f"x{m / r['timed_lrs']:.0f} from {r['timed_lrs']} lrs")


def times_table(m: int, rows: list[tuple[str, str, float | None, float, str]], ref: dict[str, float]) -> list[dict]:
    """Print ``(name, learning rates timed, compile s, run s for all m, note)`` rows with ratios.

    ``ref`` maps a row name to the reference run time of the rows that follow it,
    up to the next reference.
    """
    say(f"  {'method':<32}{'timed':>6}{'compile (s)':>12}{'run (s)':>10}{'per lr (ms)':>12}  vs gd.sweep")
    table, base = [], None
    for name, timed_n, comp, run_s, note in rows:
        base = ref.get(name, base)
        rel = "reference" if name in ref else ratio_text(run_s / base)
        comp_txt = f"{comp:>12.3f}" if comp is not None else f"{'-':>12}"
        note_txt = f"; {note}" if note else ""
        say(f"  {name:<32}{timed_n:>6}{comp_txt}{run_s:>10.3f}{1e3 * run_s / m:>12.2f}  {rel}{note_txt}")
        table.append({"method": name, "timed_lrs": timed_n, "compile_s": comp, "run_s": run_s, "note": note})
    return table
