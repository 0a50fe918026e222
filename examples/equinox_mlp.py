"""An Equinox model trained by gdjax: ``eqx.nn.MLP`` on the digits, one ``fit``, then a sweep of seeds x learning rates.

What this example teaches:

* gdjax takes the model itself: ``gd.fit(loss, model, ...)`` with ``model``
  an ``eqx.nn.MLP``. Its float arrays (weights and biases) are trained and
  every other leaf (the activation function, the sizes) is held static, as
  ``eqx.partition(model, eqx.is_inexact_array)`` would do by hand, so the
  loss and the metrics are written against the whole model::

      def loss(model, example):                         # one example
          logits = model(example["x"])
          return optax.softmax_cross_entropy_with_integer_labels(logits, example["y"])

  and ``res.params`` is the trained ``eqx.nn.MLP``, ready to call.
* ``eval_data=test, metrics={"acc": accuracy}`` measures the held-out loss
  and accuracy inside the compiled run after every epoch
  (``res.history["eval_acc"]``, ``res.final_metrics["eval_acc"]``).
* ``gd.sweep(loss, None, optax.adam, it, init=make_model, seeds=3,
  learning_rates=[...])`` trains one model per seed and learning rate (here
  3 x 4 = 12) in one compiled program: each seed's model is built by
  ``make_model(init_key)`` under ``vmap`` (``gd.seed_keys`` gives the key),
  and its data order is drawn from that seed too. ``sw.best_index`` ranks
  the members by the monitored value (the held-out accuracy here, kept at
  each member's best epoch with ``keep_best=True``) and
  ``sw.member_params(k, best=True)`` is member ``k`` as a whole
  ``eqx.nn.MLP`` again.
* Picking by the held-out split that also reports the score flatters it a
  little; ``examples/model_selection.py`` keeps validation and test apart.

The data are scikit-learn's 8x8 digits (1797 images, 64 features divided by
16), split by a stratified 80/20 train/test split with a fixed seed. The
model is an MLP 64-64-64-10 (ReLU) trained with Adam on mini-batches of 64.

Run it with ``python examples/equinox_mlp.py`` (``--help`` for options;
needs equinox and scikit-learn: ``pip install -e .[dev]`` installs both).
It takes 12 to 18 seconds on 2 CPU cores, about half of them compiling.
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import gdjax as gd

LEARNING_RATES = (3e-4, 1e-3, 3e-3, 1e-2)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64, help="hidden units per layer")
    parser.add_argument("--depth", type=int, default=2, help="hidden layers")
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch size")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the single fit and of each sweep member")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="Adam's step size for the single fit")
    parser.add_argument("--seeds", type=int, default=3, help="seeds in the sweep (times 4 learning rates)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the initialisation and the order")
    return parser.parse_args(argv)


def digits(seed: int) -> tuple[dict, dict]:
    """scikit-learn's digits as ``{"x": (N, 64) float32 in [0, 1], "y": (N,) int32}``, stratified 80/20 train/test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype(np.float32), y.astype(np.int32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    return {"x": xtr, "y": ytr}, {"x": xte, "y": yte}


def loss(model: eqx.nn.MLP, example: dict) -> jax.Array:
    """Softmax cross-entropy of one example; gdjax averages it over each batch."""
    return optax.softmax_cross_entropy_with_integer_labels(model(example["x"]), example["y"])


def accuracy(model: eqx.nn.MLP, example: dict) -> jax.Array:
    """1.0 where one example's top class is its label (a metric: gdjax takes its mean over a data set)."""
    return (jnp.argmax(model(example["x"])) == example["y"]).astype(jnp.float32)


@eqx.filter_jit
def split_accuracy(model: eqx.nn.MLP, data: dict) -> jax.Array:
    """Accuracy over a whole split, computed outside gdjax (``eqx.filter_jit``: the model holds a function)."""
    return jnp.mean(jnp.argmax(jax.vmap(model)(data["x"]), axis=-1) == data["y"])


def main(argv: list[str] | None = None) -> dict:
    """Fit one MLP, sweep seeds x learning rates, and report test accuracies.

    Args:
      argv: command-line arguments (``None`` reads ``sys.argv``; pass ``[]``
        for the defaults).

    Returns:
      A dict with ``"fit"`` (``test_accuracy`` from the trained model,
      ``eval_acc`` as gdjax measured it, ``initial_loss``, ``final_loss``,
      ``model``: the trained ``eqx.nn.MLP``), ``"sweep"`` (``best_index``,
      ``best_hyperparams``, ``best_epoch``, ``test_accuracy`` of the pick,
      ``final_eval_acc``: ``(M,)`` each member's final held-out accuracy,
      ``learning_rates``, ``seeds``, ``model``: the picked ``eqx.nn.MLP``)
      and ``"times"`` (seconds: compile and run of each, and the total).
    """
    args = _parse(argv)
    t_start = time.perf_counter()
    train, test = digits(args.seed)
    init_key, order_key = jax.random.split(jax.random.key(args.seed))

    def make_model(key: jax.Array) -> eqx.nn.MLP:
        return eqx.nn.MLP(64, 10, args.width, args.depth, activation=jax.nn.relu, key=key)

    it = gd.minibatch(train, args.batch_size)
    evaluation = dict(eval_data=test, metrics={"acc": accuracy})

    # 1. One model: the eqx.nn.MLP goes in as it is, and comes back trained.
    res = gd.fit(
        loss,
        make_model(init_key),
        optax.adam,
        it,
        epochs=args.epochs,
        key=order_key,
        learning_rate=args.learning_rate,
        **evaluation,
    )
    fit_acc = float(split_accuracy(res.params, test))

    # 2. Seeds x learning rates: each seed builds its own model (init=) and draws its own data order.
    sw = gd.sweep(
        loss,
        None,
        optax.adam,
        it,
        init=make_model,
        seeds=args.seeds,
        learning_rates=LEARNING_RATES,
        epochs=args.epochs,
        key=order_key,
        monitor="eval_acc",
        keep_best=True,
        **evaluation,
    )
    k = sw.best_index
    assert k is not None, "every member diverged"
    best = sw.member_params(k, best=True)  # a whole eqx.nn.MLP
    sweep_acc = float(split_accuracy(best, test))

    n_train, n_test = len(train["y"]), len(test["y"])
    print(
        f"digits: {n_train} train / {n_test} test; eqx.nn.MLP 64-{'-'.join([str(args.width)] * args.depth)}-10 (relu), "
        f"Adam, batch {args.batch_size}, {args.epochs} epochs\n"
    )
    print(
        f"fit (lr={args.learning_rate:g}): cross-entropy {res.initial_loss:.3f} -> {res.final_loss:.4f}; "
        f"test accuracy {fit_acc:.4f} (gdjax's eval_acc {res.final_metrics['eval_acc']:.4f}); "
        f"res.params is a {type(res.params).__name__} with activation {res.params.activation.__name__}\n"
    )
    print(sw.summary())
    hp = sw.best_hyperparams
    assert hp is not None
    print(
        f"\npicked member {k}: seed {hp['seed']}, lr {hp['learning_rate']:g}, best epoch {int(sw.best_epoch[k])}; "
        f"test accuracy {sweep_acc:.4f} (a {type(best).__name__})"
    )
    total = time.perf_counter() - t_start
    print(
        f"\ntimes: fit {res.compile_time:.2f} s compile + {res.wall_time:.2f} s run; sweep of {sw.num_members} "
        f"members {sw.compile_time:.2f} s compile + {sw.wall_time:.2f} s run; {total:.1f} s in all"
    )
    return {
        "fit": {
            "test_accuracy": fit_acc,
            "eval_acc": float(res.final_metrics["eval_acc"]),
            "initial_loss": res.initial_loss,
            "final_loss": res.final_loss,
            "model": res.params,
        },
        "sweep": {
            "best_index": k,
            "best_hyperparams": hp,
            "best_epoch": int(sw.best_epoch[k]),
            "test_accuracy": sweep_acc,
            "final_eval_acc": np.asarray(sw.final_metrics["eval_acc"]),
            "learning_rates": np.asarray(sw.hyperparams["learning_rate"]),
            "seeds": np.asarray(sw.seeds),
            "model": best,
        },
        "times": {
            "fit_compile": res.compile_time,
            "fit_run": res.wall_time,
            "sweep_compile": sw.compile_time,
            "sweep_run": sw.wall_time,
            "total": total,
        },
    }


if __name__ == "__main__":
    main()
