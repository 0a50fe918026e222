"""Find the learning rate in one call: 64 step sizes trained at once with ``gd.sweep``.

What this example teaches:

* ``gd.sweep`` trains one model per learning rate, all inside one compiled
  program (``jit`` of ``vmap``), for about the cost of a single run.
* Members that blow up are frozen and flagged in ``sw.diverged``; they never
  spoil the others, and ``sw.best_index`` only considers the healthy ones.
* For least squares the theory is exact: full-batch gradient descent with a
  constant step is stable only below ``2 / L`` (``L`` the largest eigenvalue
  of the cost's Hessian), and the sweep finds that boundary.
* The same call works for an MLP, where no formula gives the answer.

Run it with ``python examples/lr_sweep.py``.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import optax

import gdjax as gd


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-lrs", type=int, default=64, help="learning rates to try")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    key = jax.random.key(args.seed)
    data_key, init_key, order_key = jax.random.split(key, 3)

    # 1. Linear regression, full-batch gradient descent: the answer is known.
    prob = gd.problems.linear_regression(n=2048, d=16, key=data_key)
    model = gd.models.linear()
    limit = 2.0 / prob.lipschitz
    lrs = np.geomspace(limit / 100, limit * 4, args.num_lrs)
    sw = gd.sweep(
        model.loss,
        model.init(init_key, 16),
        optax.sgd,
        gd.full_batch(prob.data),
        learning_rates=lrs,
        epochs=30,
        key=order_key,
    )
    print("Linear regression, full-batch gradient descent, 30 epochs\n")
    print(sw.summary(max_rows=12))
    best = sw.best_hyperparams["learning_rate"]
    # unstable: overflowed (diverged), or ended above where it started
    unstable = sw.diverged | ~(sw.final_loss < sw.initial_loss)
    first_unstable = sw.learning_rates[unstable].min()
    print(
        f"\nstability limit 2/L = {limit:.4g}; best learning rate {best:.4g} = {best / limit:.2f} x 2/L; "
        f"smallest unstable {first_unstable:.4g} = {first_unstable / limit:.3f} x 2/L "
        f"(grid step {lrs[1] / lrs[0]:.3f}x)\nexact least-squares cost {prob.min_loss:.6g}\n"
    )

    # 2. An MLP classifier with mini-batches and Adam: no formula, so sweep.
    blobs = gd.problems.classification(n=2048, d=2, num_classes=3, key=data_key)
    mlp = gd.models.mlp((32,), num_outputs=3, task="classification")
    sw_mlp = gd.sweep(
        mlp.loss,
        mlp.init(init_key, 2),
        optax.adam,
        gd.minibatch(blobs.data, 64),
        learning_rates=np.geomspace(1e-4, 3.0, args.num_lrs),
        epochs=5,
        key=order_key,
    )
    print("MLP classifier (2-32-3), Adam, mini-batches of 64, 5 epochs\n")
    print(sw_mlp.summary(max_rows=12))
    return {
        "linear": {
            "best_lr": best,
            "limit": limit,
            "first_unstable_lr": float(first_unstable),
            "grid_ratio": float(lrs[1] / lrs[0]),
            "unstable_lrs": sw.learning_rates[unstable].tolist(),
            "best_loss": float(sw.final_loss[sw.best_index]),
            "min_loss": prob.min_loss,
        },
        "mlp": {
            "best_lr": sw_mlp.best_hyperparams["learning_rate"],
            "best_loss": float(sw_mlp.final_loss[sw_mlp.best_index]),
            "initial_loss": float(sw_mlp.initial_loss[0]),
        },
    }


if __name__ == "__main__":
    main()
