"""A small neural network classifier trained with Adam on mini-batches.

What this example teaches:

* ``gd.models.mlp(..., task="classification")`` is a pure model: ``init``
  makes the parameters (a list of ``{"w", "b"}`` layers), ``apply`` maps
  features to class logits, and ``loss`` is the softmax cross-entropy of
  **one** example. gdjax averages the per-example loss over each batch.
* Any optax optimizer works with ``gd.fit``. Passing the factory
  (``optax.adam``) with ``learning_rate=...`` rather than a built
  ``optax.adam(3e-3)`` makes the learning rate a traced value, so trying
  another rate reuses the compiled program.
* Accuracy is not a loss: compute it after training with ``model.apply``
  on the whole data set (``apply`` takes one example or a batch).
* ``res.epoch_losses`` is the cross-entropy over the whole data set after each
  epoch, the curve a textbook plots.

Run it with ``python examples/mlp_classifier.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gdjax as gd


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="examples")
    parser.add_argument("--classes", type=int, default=3, help="number of classes")
    parser.add_argument("--hidden", type=int, default=32, help="hidden units")
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch size")
    parser.add_argument("--epochs", type=int, default=30, help="passes over the data")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="Adam's step size")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Train the MLP and report its accuracy and loss curve.

    Args:
      argv: command-line arguments (``None`` reads ``sys.argv``; pass ``[]``
        for the defaults).

    Returns:
      A dict with ``"accuracy"`` (train accuracy from ``model.apply``),
      ``"chance"`` (accuracy of always guessing the most common class),
      ``"first_epoch_loss"``, ``"last_epoch_loss"``, ``"initial_loss"``,
      ``"epoch_losses"`` (numpy array), ``"updates"`` and ``"time"``.
    """
    args = _parse(argv)
    data_key, init_key, order_key = jax.random.split(jax.random.key(args.seed), 3)
    d = 2
    prob = gd.problems.classification(n=args.n, d=d, num_classes=args.classes, key=data_key)
    model = gd.models.mlp((args.hidden,), num_outputs=prob.num_classes, task="classification")
    params = model.init(init_key, d)

    it = gd.minibatch(prob.data, args.batch_size)
    res = gd.fit(
        model.loss, params, optax.adam, it, epochs=args.epochs, key=order_key, learning_rate=args.learning_rate
    )

    logits = model.apply(res.params, jnp.asarray(prob.data["x"]))
    predicted = np.asarray(jnp.argmax(logits, axis=-1))
    accuracy = float(np.mean(predicted == prob.data["y"]))
    chance = float(np.bincount(prob.data["y"]).max() / len(prob.data["y"]))

    print(
        f"MLP {d}-{args.hidden}-{prob.num_classes} on {args.n} points, Adam lr={args.learning_rate}, "
        f"batch {args.batch_size}, {res.num_epochs} epochs ({res.num_steps} updates, {res.wall_time * 1e3:.1f} ms)"
    )
    print(
        f"cross-entropy: before {res.initial_loss:.4f}, after epoch 1 {res.epoch_losses[0]:.4f}, "
        f"after epoch {res.num_epochs} {res.epoch_losses[-1]:.4f}"
    )
    marks = sorted({0, res.num_epochs // 4, res.num_epochs // 2, 3 * res.num_epochs // 4, res.num_epochs - 1})
    print("loss curve: " + ", ".join(f"epoch {e + 1}: {res.epoch_losses[e]:.4f}" for e in marks))
    print(f"train accuracy: {accuracy:.3f} (chance: {chance:.3f})")

    return {
        "accuracy": accuracy,
        "chance": chance,
        "initial_loss": res.initial_loss,
        "first_epoch_loss": float(res.epoch_losses[0]),
        "last_epoch_loss": float(res.epoch_losses[-1]),
        "epoch_losses": res.epoch_losses,
        "updates": res.num_steps,
        "time": res.wall_time,
    }


if __name__ == "__main__":
    main()
