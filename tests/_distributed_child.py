"""One process of a multi-process run: ``python _distributed_child.py MODE PID COUNT PORT OUT``.

``PID`` of ``COUNT`` processes join JAX's runtime on ``127.0.0.1:PORT``
(gloo collectives on the CPU, one device each); ``PID`` -1 runs alone on
``COUNT`` forced CPU devices, the single-process reference. Results go to
``OUT/<mode>-<pid>.npz`` (and a JSON of messages beside it).

Modes:
  runs: calls whose arguments differ between processes (refused), a 6-member
    sweep with a progress bar, the same with evaluation and a checkpoint, a data-parallel fit with a
    checkpoint, the same fit again, and the fit on streamed data; the
    reference also fits on one device and tries to resume the two-process
    checkpoint (refused: another process count).
  long: a sweep with a checkpoint every epoch that saves slowly, so a test can
    kill one process mid-run and start both again.
"""

import json
import os
import sys
import time

SCRIPT = __name__ == "__main__"  # pytest's doctest collection imports this file too: then it does nothing
ARGS = sys.argv[1:6] if SCRIPT else ["runs", "-1", "1", "0", "."]
MODE, PID, COUNT, PORT, OUT = ARGS[0], int(ARGS[1]), int(ARGS[2]), ARGS[3], ARGS[4]
if SCRIPT and PID < 0:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={COUNT}"

import jax  # noqa: E402

if SCRIPT and PID >= 0:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{PORT}", num_processes=COUNT, process_id=PID, heartbeat_timeout_seconds=10)

import numpy as np  # noqa: E402
import optax  # noqa: E402

import gdjax as gd  # noqa: E402
from gdjax import checkpoint  # noqa: E402

LRS = np.geomspace(0.01, 1.0, 6)


def problem(n: int, d: int):
    prob = gd.problems.linear_regression(n=n, d=d, key=jax.random.key(0))
    model = gd.models.linear()
    return jax.tree.map(np.asarray, prob.data), model, model.init(jax.random.key(1), d)


def runs() -> tuple[dict, dict]:
    data, model, p0 = problem(256, 4)
    it = gd.minibatch(data, 32)
    messages = {}
    sweep = lambda **kw: gd.sweep(model.loss, p0, optax.sgd, it, epochs=5, key=jax.random.key(2), **kw)  # noqa: E731
    if PID >= 0:
        try:
            sweep(learning_rates=LRS * (1 + PID))
        except ValueError as exc:
            messages["mismatch"] = str(exc)
        try:
            sweep(learning_rates=LRS, progress=PID == 0)
        except ValueError as exc:
            messages["progress"] = str(exc)
    shown = sweep(learning_rates=LRS, progress=True)  # without a checkpoint: process 0 alone times the bar
    metrics = {"abs": lambda p, ex: abs(model.apply(p, ex["x"]) - ex["y"])}
    folder = os.path.join(OUT, "ckpt-sweep")
    if PID < 0:
        try:
            sweep(learning_rates=LRS, eval_data=data, metrics=metrics, checkpoint=folder)
        except ValueError as exc:
            messages["resume"] = str(exc)
    sw = sweep(
        learning_rates=LRS, eval_data=data, metrics=metrics, progress=True, checkpoint=None if PID < 0 else folder
    )
    kw = dict(epochs=5, key=jax.random.key(2), learning_rate=0.1, eval_data=data, metrics=metrics)
    ckpt = None if PID < 0 else os.path.join(OUT, "ckpt-fit")
    fit = gd.fit(model.loss, p0, optax.sgd, it, devices=jax.devices(), checkpoint=ckpt, progress=True, **kw)
    again = gd.fit(model.loss, p0, optax.sgd, it, devices=jax.devices(), **kw)
    streamed = gd.minibatch(data, 32, on_device=False)
    stream = gd.fit(model.loss, p0, optax.sgd, streamed, devices=jax.devices(), **kw)
    out = {
        "sweep_losses": sw.losses,
        "shown_losses": shown.losses,
        "sweep_final": sw.final_loss,
        "sweep_eval": sw.history["eval_abs"],
        "fit_losses": fit.losses,
        "fit_w": fit.params["w"],
        "fit_eval": fit.history["eval_abs"],
        "again_losses": again.losses,
        "stream_losses": stream.losses,
    }
    if PID < 0:
        one = gd.fit(model.loss, p0, optax.sgd, it, **kw)
        out.update(one_losses=one.losses, one_w=one.params["w"], one_eval=one.history["eval_abs"])
    return out, messages


def long() -> tuple[dict, dict]:
    save = checkpoint.Checkpointer.save

    def slow_save(self, tree, epoch, extra=None):  # a slow disk: the run lasts long enough to be killed mid-run
        time.sleep(0.1)
        return save(self, tree, epoch, extra)

    checkpoint.Checkpointer.save = slow_save
    data, model, p0 = problem(512, 8)
    folder = None if PID < 0 else os.path.join(OUT, "ckpt-long")
    sw = gd.sweep(
        model.loss, p0, optax.sgd, gd.minibatch(data, 8), learning_rates=LRS / 10, epochs=40, key=jax.random.key(3),
        checkpoint=folder,
    )  # fmt: skip
    print("finished", flush=True)
    return {"losses": sw.losses, "params": sw.params["w"], "resumed": sw.resumed_from}, {}


if __name__ == "__main__":
    arrays, messages = {"runs": runs, "long": long}[MODE]()
    np.savez(os.path.join(OUT, f"{MODE}-{PID}.npz"), **arrays)
    with open(os.path.join(OUT, f"{MODE}-{PID}.json"), "w") as f:
        json.dump(messages, f)
