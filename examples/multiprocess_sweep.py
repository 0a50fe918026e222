"""A learning-rate and seed sweep over several processes (several machines), then a data-parallel fit.

What this example teaches:

* After ``jax.distributed.initialize`` in every process, ``jax.devices()``
  lists the devices of all of them, and the same ``gd.sweep`` call in every
  process splits the members over all those devices. Every process gets the
  whole ``SweepResult``; process 0 draws the progress bar and writes the
  checkpoints (on a file system every process sees).
* ``gd.fit(..., devices=jax.devices())`` trains one model data parallel: each
  batch split over every device of every process.
* Every process must run the same script with the same arguments and data;
  gdjax compares them before compiling and names the first difference.

How to run it:

* one machine, two local processes (each one CPU device, gloo collectives)::

    python examples/multiprocess_sweep.py --spawn 2

* two machines by hand (process 0's host is the coordinator)::

    python examples/multiprocess_sweep.py --coordinator host0:1234 --num-processes 2 --process-id 0  # host0
    python examples/multiprocess_sweep.py --coordinator host0:1234 --num-processes 2 --process-id 1  # host1

  or the same from the environment: ``GDJAX_COORDINATOR``,
  ``GDJAX_NUM_PROCESSES``, ``GDJAX_PROCESS_ID`` (JAX's
  ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` too);

* SLURM, one task per node (``jax.distributed.initialize()`` reads the job)::

    srun --nodes=2 --ntasks-per-node=1 python examples/multiprocess_sweep.py

* a TPU pod slice, the same command on every worker::

    gcloud compute tpus tpu-vm ssh NAME --worker=all --command="python examples/multiprocess_sweep.py"

* alone, no runtime at all: ``python examples/multiprocess_sweep.py --local``.

The data is scikit-learn's digits (bundled with it, the same everywhere),
standardised the same way in every process.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

ENVIRONMENT = {
    "coordinator": ("GDJAX_COORDINATOR", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("GDJAX_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    "process_id": ("GDJAX_PROCESS_ID", "JAX_PROCESS_ID"),
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", help="HOST:PORT of process 0 (env GDJAX_COORDINATOR)")
    parser.add_argument("--num-processes", type=int, help="processes in the run (env GDJAX_NUM_PROCESSES)")
    parser.add_argument("--process-id", type=int, help="this process's number, from 0 (env GDJAX_PROCESS_ID)")
    parser.add_argument("--spawn", type=int, metavar="N", help="start N local processes of this script and wait")
    parser.add_argument("--local", action="store_true", help="run alone, without jax.distributed")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--num-lrs", type=int, default=16, help="learning rates to try")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per learning rate")
    parser.add_argument("--checkpoint", help="a folder every process sees: run again to resume")
    parser.add_argument("--out", help="a folder for the loss-against-learning-rate figure (process 0)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the tests")
    args = parser.parse_args(argv)
    for name, variables in ENVIRONMENT.items():
        if getattr(args, name) is None:
            value = next((os.environ[v] for v in variables if os.environ.get(v)), None)
            if value is not None:
                setattr(args, name, value if name == "coordinator" else int(value))
    if args.num_processes is not None and args.num_processes < 1:
        parser.error(f"--num-processes must be 1 or more; got {args.num_processes}")
    if args.spawn is not None and args.spawn < 1:
        parser.error(f"--spawn must be 1 or more; got {args.spawn}")
    if args.num_processes and args.num_processes > 1 and args.coordinator is None:
        parser.error("--num-processes above 1 needs --coordinator HOST:PORT (or GDJAX_COORDINATOR)")
    return args


def spawn(count: int, argv: list[str]) -> int:
    """Start ``count`` local copies of this script joined on a free port; the first failure code, or 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rest = [a for i, a in enumerate(argv) if not a.startswith("--spawn") and (i == 0 or argv[i - 1] != "--spawn")]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device per process
    joined = [sys.executable, __file__, *rest, "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(count)]
    procs = [subprocess.Popen([*joined, "--process-id", str(i)], env=env) for i in range(count)]
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c), 0)


def start_runtime(args: argparse.Namespace) -> None:
    """Join JAX's multi-controller runtime (before any other JAX call), unless running alone."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes exchange with gloo
    if args.local or args.num_processes == 1:
        return
    if args.coordinator is None and args.num_processes is None and args.process_id is None:
        jax.distributed.initialize()  # a cluster JAX detects itself: SLURM, a TPU pod, ...
        return
    jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)


def digits():
    """The digits data set, standardised (every process computes the same bits)."""
    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
    return {"x": x, "y": y.astype(np.int32)}


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    if args.spawn:
        sys.exit(spawn(args.spawn, sys.argv[1:] if argv is None else argv))
    start_runtime(args)
    import jax
    import numpy as np
    import optax

    import gdjax as gd

    first = jax.process_index() == 0
    say = print if first else (lambda *a, **k: None)
    data = digits()
    model = gd.models.logistic(num_classes=10)
    epochs, num_lrs = (3, 4) if args.quick else (args.epochs, args.num_lrs)
    lrs = np.geomspace(1e-3, 3.0, num_lrs)
    batch = 64 * jax.device_count()  # a multiple of the device count, for the data-parallel fit below
    it = gd.minibatch(data, batch)
    members = num_lrs * args.seeds
    say(
        f"{jax.process_count()} process(es), {jax.device_count()} device(s) in all ({jax.local_device_count()} here); "
        f"{members} members, {-(-members // jax.device_count())} per device"
    )
    t0 = time.perf_counter()
    sw = gd.sweep(
        model.loss,
        model.init(jax.random.key(0), 64),
        optax.sgd,
        it,
        learning_rates=lrs,
        seeds=args.seeds,
        epochs=epochs,
        key=jax.random.key(1),
        metrics=model.metrics,
        progress=True,
        checkpoint=args.checkpoint,
    )
    seconds = time.perf_counter() - t0
    if sw.resumed_from.max() > 0:
        say(f"resumed from the checkpoint at epoch {sw.resumed_from.max()}")
    whole = sw.final_loss.shape == (members,)
    print(f"process {jax.process_index()}: the whole result, {sw.final_loss.shape[0]} members: {whole}", flush=True)
    best = sw.best_index
    say(
        f"sweep: {seconds:.1f} s ({sw.compile_time:.1f} s compiling); best learning rate "
        f"{sw.learning_rates[best]:.4g} (seed {sw.seeds[best]}): loss {sw.final_loss[best]:.4f}, "
        f"accuracy {sw.final_metrics['acc'][best]:.3f}"
    )
    res = gd.fit(
        model.loss,
        model.init(jax.random.key(0), 64),
        optax.sgd,
        it,
        epochs=epochs,
        key=jax.random.key(1),
        learning_rate=float(sw.learning_rates[best]),
        metrics=model.metrics,
        devices=jax.devices(),
    )
    say(
        f"data-parallel fit over {jax.device_count()} device(s), batches of {batch}: loss {res.final_loss:.4f}, "
        f"accuracy {res.history['acc'][-1]:.3f}"
    )
    if args.out and first:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "multiprocess_sweep.png")
        gd.plot.save(gd.plot.sweep(sw), path)
        say(f"wrote {path}")
    return {"sweep": sw, "fit": res, "whole": whole}


if __name__ == "__main__":
    main()
