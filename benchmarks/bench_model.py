"""Benchmark what models of any library, keys and model state cost in ``gd.fit`` (issue 11).

Run: ``python benchmarks/bench_model.py [--quick] [--repeats N] [--json PATH]``
(``--quick``: N=2000, D=16, hidden 16, a smoke test of seconds).

An MLP classifier (``gd.models.mlp((128,), 10, task="classification")``,
Adam, batch 128) on ``gd.problems.classification(n=20000, d=64,
num_classes=10)``, 5 epochs. Ways, each timed on its compiled run
(``wall_time``), in interleaved rounds (every way once per round), medians
over the rounds:

* ``plain``: the params as a dict of arrays, the per-example loss;
* ``static leaves``: the same params inside a pytree that also holds a
  function and an int (an Equinox-style model: gdjax holds them static);
* ``key ignored``: ``with_key=True`` with a loss that takes the key and does
  not use it (the derivation must cost nothing: XLA drops it);
* ``dropout, per-example keys``: ``with_key=True``, the loss drops a tenth of
  the hidden units with ``jax.random.bernoulli`` of its example's key (the
  real cost of per-example randomness: a key derivation and a draw per
  example and step);
* ``dropout, one key per batch``: the same dropout written as a
  ``batched=True`` loss that draws the whole batch's masks from one key;
* ``model state``: a ``batched=True`` loss that also carries a running mean
  of the hidden activations (as batch norm does), against ``batched=True``
  without it.

Ratios are printed against ``plain`` (and the model-state run against its
batched twin). The ``plain``, ``static leaves`` and ``key ignored`` ways
train the same trajectory: their final losses must agree to 1e-6.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import _timing as tm
import jax
import jax.numpy as jnp
import optax

import gdjax as gd

SAME_TRAJECTORY_TOLERANCE = 1e-6
DROP = 0.1


@dataclasses.dataclass(frozen=True)
class Size:
    n: int
    d: int
    hidden: int
    classes: int
    batch: int
    epochs: int


def size(quick: bool) -> Size:
    return Size(2000, 16, 16, 10, 128, 2) if quick else Size(20000, 64, 128, 10, 128, 5)


def _hidden(p: Any, x: jax.Array) -> jax.Array:
    return jnp.tanh(x @ p["w1"] + p["b1"])


def _out(p: Any, h: jax.Array, y: jax.Array) -> jax.Array:
    logits = h @ p["w2"] + p["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def plain(p: Any, ex: Any) -> jax.Array:
    return _out(p, _hidden(p, ex["x"]), ex["y"])


def static_leaves(model: Any, ex: Any) -> jax.Array:
    h = model["act"](ex["x"] @ model["p"]["w1"] + model["p"]["b1"]) * model["scale"]
    return _out(model["p"], h, ex["y"])


def key_ignored(p: Any, ex: Any, *, key: Any) -> jax.Array:
    return plain(p, ex)


def dropout(p: Any, ex: Any, *, key: Any) -> jax.Array:
    h = _hidden(p, ex["x"])
    if key is not None:
        h = jnp.where(jax.random.bernoulli(key, 1 - DROP, h.shape), h / (1 - DROP), 0.0)
    return _out(p, h, ex["y"])


def dropout_batched(p: Any, batch: gd.Batch, *, key: Any) -> jax.Array:
    h = _hidden(p, batch.data["x"])
    if key is not None:
        h = jnp.where(jax.random.bernoulli(key, 1 - DROP, h.shape), h / (1 - DROP), 0.0)
    return gd.masked_mean(_out(p, h, batch.data["y"]), batch.mask)


def batched(p: Any, batch: gd.Batch) -> jax.Array:
    return gd.masked_mean(_out(p, _hidden(p, batch.data["x"]), batch.data["y"]), batch.mask)


def stateful(p: Any, batch: gd.Batch, *, model_state: Any) -> tuple[jax.Array, Any]:
    h = _hidden(p, batch.data["x"])
    mean = gd.masked_mean(h, batch.mask)
    loss = gd.masked_mean(_out(p, h - model_state["mean"] * 0.0, batch.data["y"]), batch.mask)
    return loss, {"mean": 0.9 * model_state["mean"] + 0.1 * mean}


def ways(sz: Size, params: Any) -> dict[str, tuple[Callable, Any, dict[str, Any]]]:
    model = {"p": params, "act": jnp.tanh, "scale": 1}
    state = {"mean": jnp.zeros(sz.hidden)}
    return {
        "plain": (plain, params, {}),
        "static leaves": (static_leaves, model, {}),
        "key ignored": (key_ignored, params, {"with_key": True}),
        "dropout, per-example keys": (dropout, params, {"with_key": True}),
        "dropout, one key per batch": (dropout_batched, params, {"with_key": True, "batched": True}),
        "batched, no state": (batched, params, {"batched": True}),
        "model state": (stateful, params, {"batched": True, "model_state": state}),
    }


def main(argv: list[str] | None = None) -> int:
    args = tm.parse(tm.parser(__doc__, default_repeats=7), argv)
    sz = size(args.quick)
    info = tm.print_header(args.quick)
    prob = gd.problems.classification(n=sz.n, d=sz.d, num_classes=sz.classes, key=jax.random.key(0))
    it = gd.minibatch(prob.data, sz.batch)
    k1, k2 = jax.random.split(jax.random.key(1))
    params = {
        "w1": jax.random.normal(k1, (sz.d, sz.hidden)) / sz.d**0.5,
        "b1": jnp.zeros(sz.hidden),
        "w2": jax.random.normal(k2, (sz.hidden, sz.classes)) / sz.hidden**0.5,
        "b2": jnp.zeros(sz.classes),
    }
    tm.say(
        f"\n=== model costs: MLP {sz.d}-{sz.hidden}-{sz.classes}, n={sz.n}, batch {sz.batch} "
        f"({it.num_batches} steps/epoch), Adam, {sz.epochs} epochs ==="
    )
    table = ways(sz, params)

    def call(name: str, seed: int) -> gd.FitResult:
        loss, p, kw = table[name]
        return gd.fit(loss, p, optax.adam, it, epochs=sz.epochs, key=jax.random.key(seed), learning_rate=1e-3, **kw)

    compile_s = {name: call(name, 0).compile_time for name in table}
    runs: dict[str, list[float]] = {name: [] for name in table}
    finals: dict[str, float] = {}
    for r in range(1, args.repeats + 1):
        for name in table:
            res = call(name, 1)
            runs[name].append(res.wall_time)
            finals[name] = res.final_loss
        del r
    t = {name: tm.med(v) for name, v in runs.items()}
    tm.say(f"{'way':<30} {'run (ms)':>10} {'compile (s)':>12}  vs plain")
    for name in table:
        base = t["batched, no state"] if name == "model state" else t["plain"]
        vs = "(batched twin) " if name == "model state" else ""
        tm.say(f"{name:<30} {1e3 * t[name]:>10.2f} {compile_s[name]:>12.2f}  {vs}{tm.ratio_text(t[name] / base)}")
    ratios = {
        "static_over_plain": t["static leaves"] / t["plain"],
        "key_ignored_over_plain": t["key ignored"] / t["plain"],
        "dropout_keys_over_plain": t["dropout, per-example keys"] / t["plain"],
        "dropout_batch_key_over_plain": t["dropout, one key per batch"] / t["plain"],
        "state_over_batched": t["model state"] / t["batched, no state"],
    }
    same = ("plain", "static leaves", "key ignored")
    worst = max(abs(finals[a] - finals["plain"]) / abs(finals["plain"]) for a in same)
    tm.say(
        f"ratios: static leaves / plain = {ratios['static_over_plain']:.2f}x, key ignored / plain = "
        f"{ratios['key_ignored_over_plain']:.2f}x, per-example dropout keys / plain = "
        f"{ratios['dropout_keys_over_plain']:.2f}x, one key per batch / plain = "
        f"{ratios['dropout_batch_key_over_plain']:.2f}x, model state / batched = {ratios['state_over_batched']:.2f}x"
    )
    tm.say(f"same trajectory (plain, static leaves, key ignored): final losses agree to {worst:.1e}")
    error = f"final losses differ by {worst:.1e}" if worst > SAME_TRAJECTORY_TOLERANCE else None
    return tm.finish(args.json, {
        "machine": info, "quick": args.quick, "repeats": args.repeats, "config": dataclasses.asdict(sz),
        "run_s": runs, "median_run_s": t, "compile_s": compile_s, "ratios": ratios, "same_trajectory_worst": worst,
    }, error)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
