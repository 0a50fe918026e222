"""Batch, stochastic and mini-batch gradient descent on one linear regression.

What this example teaches:

* The three textbook flavours of gradient descent differ only in the data
  iterator: ``gd.full_batch`` (one update per epoch on all ``N`` examples),
  ``gd.stochastic`` (``N`` updates per epoch, one example each) and
  ``gd.minibatch(data, 32)`` (``ceil(N / 32)`` updates per epoch). The loss,
  the model and the optimizer (``optax.sgd``) are the same in all three.
* How to pick step sizes from the problem: the cost is a quadratic whose
  Hessian has largest eigenvalue ``L`` (``prob.lipschitz``). Batch gradient
  descent converges for any step below ``2 / L`` and ``1 / L`` is the classic
  safe choice. Noisy gradients (SGD, mini-batches) need smaller steps to
  settle close to the minimum.
* How to judge the result: ``gd.problems.linear_regression`` also returns the
  exact least-squares answer (``prob.solution``, ``prob.min_loss``), so every
  method's final cost can be compared with the best possible one.

Run it with ``python examples/seed_lesson.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import optax

import gdjax as gd


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096, help="examples")
    parser.add_argument("--d", type=int, default=16, help="features")
    parser.add_argument("--batch-size", type=int, default=32, help="mini-batch size")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Train the regression three ways and print a comparison table.

    Args:
      argv: command-line arguments (``None`` reads ``sys.argv``; pass ``[]``
        for the defaults).

    Returns:
      A dict with ``"min_loss"`` (exact least-squares cost), ``"lipschitz"``,
      ``"distance_to_solution"`` (Euclidean distance of the batch-GD
      ``(w, b)`` from the least-squares ``(w, b)``) and ``"runs"``: a dict from
      method name to ``{"learning_rate", "epochs", "updates", "time",
      "final_cost"}``.
    """
    args = _parse(argv)
    data_key, init_key, order_key = jax.random.split(jax.random.key(args.seed), 3)
    prob = gd.problems.linear_regression(n=args.n, d=args.d, key=data_key)
    model = gd.models.linear()
    params = model.init(init_key, args.d)
    L = prob.lipschitz

    # name -> (iterator, step size, epochs). Each run does a similar amount of
    # arithmetic: about 100 passes over the data for batch GD, fewer for the
    # others, which make many more (cheaper) updates per pass.
    plans = {
        "batch GD": (gd.full_batch(prob.data), 1.0 / L, 100),
        "SGD": (gd.stochastic(prob.data), 0.05 / L, 5),
        f"mini-batch GD ({args.batch_size})": (gd.minibatch(prob.data, args.batch_size), 0.5 / L, 20),
    }
    results = {}
    runs = {}
    for name, (it, lr, epochs) in plans.items():
        res = gd.fit(model.loss, params, optax.sgd, it, epochs=epochs, key=order_key, learning_rate=lr)
        results[name] = res
        runs[name] = {
            "learning_rate": lr,
            "epochs": res.num_epochs,
            "updates": res.num_steps,
            "time": res.wall_time,
            "final_cost": res.final_loss,
        }

    batch = results["batch GD"].params
    diff = np.concatenate(
        [np.ravel(np.asarray(batch["w"]) - prob.solution["w"]), np.ravel(np.asarray(batch["b"]) - prob.solution["b"])]
    )
    distance = float(np.linalg.norm(diff))

    print(f"linear regression: n={args.n}, d={args.d}, L={L:.4f}")
    header = f"{'method':<22}{'step':>10}{'epochs':>8}{'updates':>10}{'time (ms)':>11}{'final cost':>13}"
    print(header)
    print("-" * len(header))
    for name, r in runs.items():
        print(
            f"{name:<22}{r['learning_rate']:>10.4f}{r['epochs']:>8}{r['updates']:>10}"
            f"{r['time'] * 1e3:>11.1f}{r['final_cost']:>13.6f}"
        )
    print(f"{'least squares (exact)':<22}{'':>10}{'':>8}{'':>10}{'':>11}{prob.min_loss:>13.6f}")
    print(f"batch GD distance from the least-squares weights: {distance:.2e}")

    return {
        "min_loss": prob.min_loss,
        "lipschitz": L,
        "distance_to_solution": distance,
        "runs": runs,
    }


if __name__ == "__main__":
    main()
