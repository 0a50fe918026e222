"""Benchmark the cost of evaluation inside ``gd.fit`` and ``gd.sweep``: ``eval_data``, ``metrics``, ``eval_every``.

Run: ``python benchmarks/bench_eval.py [--quick] [--repeats N] [--json PATH]``
(``--quick``: N=2000, D=16, hidden 16, a smoke test of seconds).

An MLP classifier (``gd.models.mlp((128,), 10, task="classification")``, Adam,
batch 128) on ``gd.problems.classification(n=20000, d=64, num_classes=10)``,
10 epochs; the evaluation set is a tenth of the training set (2000 more
examples of the same draw) and the metric is the model's accuracy
(``model.metrics["acc"]``). Ways, each timed on its compiled run
(``wall_time``), all in interleaved rounds (every way once per round, so a
change of load hits them alike), medians over the rounds:

* the expert's ``jit`` of ``lax.scan`` over epochs and batches, with no
  evaluation at all (Adam, the same batches drawn by ``jax.random.permutation``);
* ``gd.fit`` without evaluation data, ``eval_every=1`` (the default: the
  full-data training loss after every epoch) and ``eval_every=0`` (only at
  the end);
* ``gd.fit`` with ``eval_data`` and ``metrics={"acc": ...}``,
  ``eval_every`` 1, 5 and 0;
* the forward passes an evaluation adds, measured directly as ``jax.jit``
  programs: the mean loss over the training set, and the mean loss and
  accuracy over the training set and the evaluation set;
* the same ``gd.sweep`` configurations with 8 learning rates, and the forward
  passes ``vmap``-ed over the 8 members, and those of one member (times 8:
  what the members' forward passes cost at one member's speed; the ``vmap``
  over the whole data set holds every member's hidden activations for every
  example at once, 80 MB here, and runs well below that speed).

Costs reported: (a) without evaluation data, the default against the expert
and against ``eval_every=0``; (b) an evaluation's cost, ``(t(eval_every=1) -
t(eval_every=0)) / (epochs - 1)`` (the two differ by ``epochs - 1``
evaluations: every epoch, against one at the end), as a ratio to the cost of
its forward passes measured directly (target <= 1, roughly); (c)
``eval_every`` 0, 1 and 5 against each other. Every ``gd`` way trains the
same trajectory (evaluation never changes training): their final losses
must agree to 1e-4, and the expert's (another order) within 10%.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import _timing as tm
import jax
import jax.numpy as jnp
import numpy as np
import optax

import gdjax as gd

TARGET_EVAL_RATIO = 1.0  # an evaluation should cost about its forward passes, no more
SAME_TRAJECTORY_TOLERANCE = 1e-4  # final losses of the gd ways: evaluation never changes training
EXPERT_TOLERANCE = 0.10  # the expert draws another order


@dataclasses.dataclass(frozen=True)
class Size:
    n: int
    d: int
    hidden: int
    classes: int
    batch: int
    epochs: int
    members: int
    every: int  # the eval_every > 1 measured

    @property
    def n_eval(self) -> int:
        return self.n // 10


def size(quick: bool) -> Size:
    if quick:
        return Size(n=2000, d=16, hidden=16, classes=4, batch=64, epochs=5, members=4, every=2)
    return Size(n=20000, d=64, hidden=128, classes=10, batch=128, epochs=10, members=8, every=5)


def expert_program(model: gd.models.Model, batch: int, epochs: int, lr: float) -> Callable:
    """``jit`` of ``run(params, data, key) -> (params, step losses)``: Adam over shuffled batches, no evaluation."""
    opt = optax.adam(lr)

    def batch_loss(params: Any, xb: jax.Array, yb: jax.Array) -> jax.Array:
        return jnp.mean(jax.vmap(model.loss, (None, 0))(params, {"x": xb, "y": yb}))

    @jax.jit
    def run(params: Any, data: dict, key: jax.Array) -> tuple[Any, jax.Array]:
        n = data["y"].shape[0]
        steps = n // batch  # the ragged last batch dropped: the expert's usual shortcut

        def step(carry: tuple, idx: jax.Array) -> tuple:
            params, state = carry
            loss, grads = jax.value_and_grad(batch_loss)(params, data["x"][idx], data["y"][idx])
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        def epoch(carry: tuple, e: jax.Array) -> tuple:
            perm = jax.random.permutation(jax.random.fold_in(key, e), n)[: steps * batch].reshape(steps, batch)
            return jax.lax.scan(step, carry, perm)

        (params, _), losses = jax.lax.scan(epoch, (params, opt.init(params)), jnp.arange(epochs))
        return params, losses

    return run


def forward_programs(model: gd.models.Model, members: bool) -> dict[str, Callable]:
    """The forward passes an evaluation adds, written plainly and jitted (vmapped over members for a sweep)."""
    acc = model.metrics["acc"]

    def mean(fn: Callable, params: Any, data: dict) -> jax.Array:
        return jnp.mean(jax.vmap(fn, (None, 0))(params, data))

    def train_loss(params: Any, train: dict, val: dict) -> jax.Array:
        return mean(model.loss, params, train)

    def everything(params: Any, train: dict, val: dict) -> jax.Array:
        return jnp.stack([mean(f, params, d) for d in (train, val) for f in (model.loss, acc)])

    wrap = (lambda f: jax.jit(jax.vmap(f, (0, None, None)))) if members else jax.jit
    return {"train loss": wrap(train_loss), "train + eval loss and acc": wrap(everything)}


def run_rounds(ways: dict[str, Way], repeats: int) -> dict[str, dict[str, Any]]:
    """Compile every way (its first call), then ``repeats`` rounds calling each once, in a rotated order."""
    out: dict[str, dict[str, Any]] = {}
    for name, way in ways.items():
        first_s, (compile_s, result) = tm.timed(lambda way=way: way.first())
        out[name] = {"first_call_s": first_s, "compile_s": compile_s, "run_s": [], "result": result}
    names = list(ways)
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            seconds, result = ways[name].call(r + 1)
            out[name]["run_s"].append(seconds)
            out[name]["result"] = result
    return out


@dataclasses.dataclass
class Way:
    """``call(seed) -> (seconds of the compiled run, result)``; ``first()`` compiles: ``(compile seconds, result)``."""

    call: Callable[[int], tuple[float, Any]]
    first: Callable[[], tuple[float, Any]]


def gd_way(run: Callable[[int], Any]) -> Way:
    """A ``gd.fit``/``gd.sweep`` call timed by its result's ``wall_time`` (the compiled run, compilation apart)."""

    def call(seed: int) -> tuple[float, Any]:
        res = run(seed)
        jax.block_until_ready(res.params)
        return res.wall_time, res

    def first() -> tuple[float, Any]:
        res = call(0)[1]
        return res.compile_time, res

    return Way(call, first)


def jit_way(jitted: Any, args: Callable[[int], tuple]) -> Way:
    """A ``jax.jit`` program: ``lower().compile()`` apart, then runs of ``args(seed)``."""
    compiled: list[Any] = []

    def first() -> tuple[float, Any]:
        compile_s, program = tm.timed(lambda: jitted.lower(*args(0)).compile())
        compiled.append(program)
        return compile_s, program(*args(0))

    def call(seed: int) -> tuple[float, Any]:
        return tm.timed(lambda: compiled[0](*args(seed)))

    return Way(call, first)


def bench(
    label: str,
    sz: Size,
    model: gd.models.Model,
    params: Any,
    train: dict,
    val: dict,
    repeats: int,
    lrs: np.ndarray | None,
) -> tuple[dict[str, Any], str | None]:
    """Time one family (``gd.fit`` when ``lrs`` is None, else ``gd.sweep`` over ``lrs``); print its table."""
    it = gd.minibatch(train, sz.batch)
    metrics = {"acc": model.metrics["acc"]}
    members = lrs is not None

    def gd_call(**kw: Any) -> Way:
        if members:
            return gd_way(
                lambda seed: gd.sweep(
                    model.loss, params, optax.adam, it, learning_rates=lrs, epochs=sz.epochs,
                    key=jax.random.key(seed), **kw,
                )
            )  # fmt: skip
        return gd_way(
            lambda seed: gd.fit(
                model.loss, params, optax.adam, it, epochs=sz.epochs, key=jax.random.key(seed),
                learning_rate=3e-3, **kw,
            )
        )  # fmt: skip

    evald = {"eval_data": val, "metrics": metrics}
    ways: dict[str, Way] = {}
    if not members:
        expert = expert_program(model, sz.batch, sz.epochs, 3e-3)
        ways["expert jit(scan), no evaluation"] = jit_way(expert, lambda seed: (params, train, jax.random.key(seed)))
    ways.update({
        "no eval data, eval_every=1 (default)": gd_call(),
        "no eval data, eval_every=0": gd_call(eval_every=0),
        "eval data + acc, eval_every=1": gd_call(**evald),
        f"eval data + acc, eval_every={sz.every}": gd_call(**evald, eval_every=sz.every),
        "eval data + acc, eval_every=0": gd_call(**evald, eval_every=0),
    })  # fmt: skip
    fwd = forward_programs(model, members)
    # the forward passes' cost does not depend on the parameters' values: the initial ones (one per member)
    at = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(lrs), *x.shape)), params) if members else params
    for name, f in fwd.items():
        ways[f"forward: {name}"] = jit_way(f, lambda seed: (at, train, val))
    if members:
        single = forward_programs(model, False)["train + eval loss and acc"]
        ways["forward: one member, train + eval loss and acc"] = jit_way(single, lambda seed: (params, train, val))

    tm.say(f"\n--- {label}: timing {len(ways)} ways, {repeats} interleaved rounds ---")
    r = run_rounds(ways, repeats)
    t = {name: tm.med(v["run_s"]) for name, v in r.items()}

    # every gd way trains the same trajectory; the expert (another order) within 10%
    gd_names = [n for n in ways if not n.startswith(("expert", "forward"))]
    finals = {n: np.asarray(r[n]["result"].final_loss, np.float64) for n in gd_names}
    ref = finals[gd_names[0]]
    worst = max(float(np.max(np.abs(finals[n] / ref - 1))) for n in gd_names)
    error = None
    if not worst <= SAME_TRAJECTORY_TOLERANCE:
        error = f"{label}: final losses of the gd ways differ by {worst:.2e} (evaluation changed training?)"
    expert_rel = None
    if not members:
        ex_params = r["expert jit(scan), no evaluation"]["result"][0]
        ex_loss = float(fwd["train loss"](ex_params, train, val))
        expert_rel = abs(ex_loss / float(ref) - 1)
        if not expert_rel <= EXPERT_TOLERANCE:
            error = f"{label}: expert's final loss {ex_loss:.4g} vs gd's {float(ref):.4g}"

    e = sz.epochs
    base = t["no eval data, eval_every=0"]
    tm.say(f"  {'way':<50}{'compile (s)':>12}{'run (ms)':>10}{'per epoch':>11}  vs eval_every=0, no eval data")
    for name in ways:
        comp = r[name]["compile_s"]
        comp_txt = f"{comp:>12.3f}" if comp is not None else f"{'-':>12}"
        per = f"{1e3 * t[name] / e:>11.2f}" if not name.startswith("forward") else f"{'-':>11}"
        tm.say(f"  {name:<50}{comp_txt}{1e3 * t[name]:>10.2f}{per}  {tm.ratio_text(t[name] / base)}")

    one_eval = (t["eval data + acc, eval_every=1"] - t["eval data + acc, eval_every=0"]) / (e - 1)
    one_loss = (t["no eval data, eval_every=1 (default)"] - base) / (e - 1)
    f_all, f_loss = t["forward: train + eval loss and acc"], t["forward: train loss"]
    epoch_train = base / e  # an epoch's training, with no evaluation (one final, small against it)
    ratios = {
        "eval_cost_s": one_eval,
        "eval_forward_s": f_all,
        "eval_ratio": one_eval / f_all,
        "default_loss_cost_s": one_loss,
        "default_loss_forward_s": f_loss,
        "default_loss_ratio": one_loss / f_loss,
        "eval_per_epoch_fraction": one_eval / epoch_train,
        "every_1_over_0": t["eval data + acc, eval_every=1"] / t["eval data + acc, eval_every=0"],
        f"every_{sz.every}_over_0": t[f"eval data + acc, eval_every={sz.every}"] / t["eval data + acc, eval_every=0"],
        "default_over_every_0": t["no eval data, eval_every=1 (default)"] / base,
    }
    if members:
        m = len(lrs)
        ratios["eval_forward_one_member_s"] = t["forward: one member, train + eval loss and acc"]
        ratios["eval_ratio_vs_members_x_one"] = one_eval / (m * ratios["eval_forward_one_member_s"])
    if not members:
        ratios["default_over_expert"] = t["no eval data, eval_every=1 (default)"] / t["expert jit(scan), no evaluation"]
        ratios["every_0_over_expert"] = base / t["expert jit(scan), no evaluation"]
    tm.say(f"  ratios ({label}):")
    if not members:
        tm.say(
            f"  (a) no eval data: default (eval_every=1) / expert = {ratios['default_over_expert']:.2f}x, "
            f"eval_every=0 / expert = {ratios['every_0_over_expert']:.2f}x (gd also checks every step for "
            "divergence, masks the batches and logs every step's loss)"
        )
    tm.say(
        f"  (a) no eval data: default / eval_every=0 = {ratios['default_over_every_0']:.2f}x; the per-epoch "
        f"full-data loss costs {1e3 * one_loss:.2f} ms, its forward pass {1e3 * f_loss:.2f} ms: "
        f"ratio {ratios['default_loss_ratio']:.2f}"
    )
    tm.say(
        f"  (b) one evaluation (eval set = train/10, + acc) costs {1e3 * one_eval:.2f} ms = "
        f"{100 * ratios['eval_per_epoch_fraction']:.0f}% of an epoch's training; its forward passes "
        f"{1e3 * f_all:.2f} ms: ratio {ratios['eval_ratio']:.2f} (target <= {TARGET_EVAL_RATIO:.0f}, roughly: "
        f"{'met' if ratios['eval_ratio'] <= 1.1 * TARGET_EVAL_RATIO else 'NOT met'})"
    )
    if members:
        tm.say(
            f"  (b) against {m} x one member's forward passes ({1e3 * m * ratios['eval_forward_one_member_s']:.2f} "
            f"ms): ratio {ratios['eval_ratio_vs_members_x_one']:.2f}"
        )
    tm.say(
        f"  (c) with eval data: eval_every=1 / eval_every=0 = {ratios['every_1_over_0']:.2f}x, "
        f"eval_every={sz.every} / eval_every=0 = {ratios[f'every_{sz.every}_over_0']:.2f}x"
    )
    tm.say(
        f"  final losses: gd ways agree to {worst:.1e}"
        + (f"; expert vs gd {100 * expert_rel:.2f}%" if expert_rel is not None else "")
    )
    for v in r.values():
        v.pop("result")
    return {"ways": r, "median_run_s": t, "ratios": ratios, "same_trajectory_worst": worst}, error


def main(argv: list[str] | None = None) -> int:
    args = tm.parse(tm.parser(__doc__, default_repeats=7), argv)
    sz = size(args.quick)
    info = tm.print_header(args.quick)
    prob = gd.problems.classification(n=sz.n + sz.n_eval, d=sz.d, num_classes=sz.classes, key=jax.random.key(0))
    data = prob.data
    train = {k: jnp.asarray(v[: sz.n]) for k, v in data.items()}
    val = {k: jnp.asarray(v[sz.n :]) for k, v in data.items()}
    model = gd.models.mlp((sz.hidden,), num_outputs=sz.classes, task="classification")
    params = model.init(jax.random.key(1), sz.d)
    steps = -(-sz.n // sz.batch)
    tm.say(
        f"\n=== evaluation costs: MLP {sz.d}-{sz.hidden}-{sz.classes}, classification n={sz.n} (eval set "
        f"{sz.n_eval}), batch {sz.batch} ({steps} steps/epoch), Adam, {sz.epochs} epochs; metric: accuracy ==="
    )
    fit, err_fit = bench("gd.fit", sz, model, params, train, val, args.repeats, None)
    lrs = np.geomspace(1e-3, 1e-2, sz.members)
    sweep, err_sweep = bench(f"gd.sweep, {sz.members} learning rates", sz, model, params, train, val, args.repeats, lrs)
    return tm.finish(args.json, {
        "machine": info, "quick": args.quick, "repeats": args.repeats, "config": dataclasses.asdict(sz),
        "fit": fit, "sweep": sweep,
    }, err_fit or err_sweep)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
