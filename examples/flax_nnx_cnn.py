"""A Flax NNX CNN with batch norm and dropout trained by gdjax, on the digits as 8x8 images.

What this example teaches:

* An NNX module is a mutable Python object; gdjax trains pure pytrees. Three
  lines connect the two (``graphdef`` holds the structure, ``params`` the
  ``nnx.Param`` arrays gdjax trains, ``batch_stats`` the ``nnx.BatchStat``
  arrays it carries from step to step without training them)::

      graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)

      def loss_fn(params, batch, *, key, model_state):
          m = nnx.merge(graphdef, params, model_state, copy=True)   # a fresh module per call
          logits = m(batch.data["x"], train=key is not None, key=key, mask=batch.mask)
          ...                                       # mean cross-entropy over batch.mask
          return loss, nnx.state(m, nnx.BatchStat)  # the statistics BatchNorm updated

      res = gd.fit(loss_fn, params, optax.adam, gd.minibatch(train, 64), batched=True,
                   with_key=True, model_state=batch_stats, ...)
      nnx.update(model, res.params, res.state.model_state)         # the trained model back

  ``copy=True`` matters: without it ``merge`` reuses the Variable objects of
  the state it is given, so BatchNorm's update writes into them (a tracer
  escapes its trace, and flax raises ``TraceContextError`` under ``grad``).
  For the same reason, ``nnx.update(model, ...)`` also writes the trained
  values into ``params`` and ``batch_stats``, which share their Variables
  with ``model``: keep ``nnx.to_pure_dict(batch_stats)`` first to compare.
  ``nnx.split`` must leave nothing else (no RNG streams): Dropout takes its
  key at call time here (``rngs=None`` at construction), so one ``graphdef``
  serves training and inference. Pass gdjax the pieces, not the module:
  NNX modules are pytrees, so ``gd.fit`` accepts one as it is, but then
  every float array is a parameter, the batch statistics included, and
  BatchNorm's in-place update is not carried from step to step (no error).
* ``with_key=True`` passes the loss each step's PRNG key (for dropout);
  where gdjax evaluates (the full-data loss, ``eval_data``) the key is
  None, which the loss reads as inference mode: running batch statistics,
  no dropout. ``model_state=`` makes the loss take and return the model
  state; ``res.state.model_state`` is the final one.
* ``batched=True``: the loss sees a whole :class:`gdjax.Batch` (batch norm
  needs the batch) and weights by ``batch.mask``; the padding rows of the
  ragged last batch are kept out of BatchNorm's statistics by its ``mask=``
  argument. gdjax also calls the loss once on the whole training set (1437
  rows, ``key=None``) for the full-data loss.
* ``metrics={"acc": acc_fn}`` are called ``acc_fn(params, batch,
  model_state=...)`` (batched, with a model state), in inference mode; the
  test accuracy gdjax reports (``res.final_metrics["eval_acc"]``) is checked
  against the merged-back model's own.
* Flax linen works the same way (:func:`linen_recipe`): ``params =
  variables["params"]``, the model state is the other collections
  (``{"batch_stats": ...}``), and the loss applies the model with
  ``mutable=["batch_stats"]`` and ``rngs={"dropout": key}`` when training.

The data are scikit-learn's digits (1797 images of 8x8 pixels, one channel,
divided by 16) in a stratified split of 1437 train / 360 test. The model is
Conv(32)-BatchNorm-ReLU, Conv(64)-BatchNorm-ReLU, 2x2 average pooling,
Dropout, Linear(128)-ReLU, Dropout, Linear(10), trained with Adam (learning
rate 0.01) on mini-batches of 64 for 5 epochs; it reaches about 98% test
accuracy.

Run it with ``python examples/flax_nnx_cnn.py`` (``--help`` for options;
``--linen`` also runs the linen variant; needs flax and scikit-learn:
``pip install -e .[dev]`` installs both). It takes 20 to 30 seconds on 2 CPU
cores, about 7 of them compiling (``--linen``: 10 more).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import gdjax as gd


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="passes over the training data")
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch size")
    parser.add_argument("--learning-rate", type=float, default=1e-2, help="Adam's step size")
    parser.add_argument("--dropout", type=float, default=0.3, help="dropout rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the initialisation and the order")
    parser.add_argument("--linen", action="store_true", help="also train the Flax linen variant (2 epochs)")
    return parser.parse_args(argv)


def digit_images(seed: int) -> tuple[dict, dict]:
    """The digits as ``{"x": (N, 8, 8, 1) float32 in [0, 1], "y": (N,) int32}``, stratified 1437/360 train/test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x, y = (d.images / 16.0).astype(np.float32)[..., None], d.target.astype(np.int32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=360, stratify=y, random_state=seed)
    return {"x": xtr, "y": ytr}, {"x": xte, "y": yte}


class CNN(nnx.Module):
    """The mode is chosen per call (``train``, ``key``, ``mask``), not by ``model.train()``/``model.eval()``.

    So one ``graphdef`` serves both modes, and Dropout, built without
    ``rngs``, owns no RNG state: ``nnx.split(model, nnx.Param, nnx.BatchStat)``
    covers the whole module.
    """

    def __init__(self, *, rngs: nnx.Rngs, dropout: float = 0.3) -> None:
        self.conv1 = nnx.Conv(1, 32, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(32, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), rngs=rngs)
        self.bn2 = nnx.BatchNorm(64, momentum=0.9, rngs=rngs)
        self.drop = nnx.Dropout(dropout)  # its key comes with each call
        self.fc1 = nnx.Linear(4 * 4 * 64, 128, rngs=rngs)
        self.fc2 = nnx.Linear(128, 10, rngs=rngs)

    def __call__(
        self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None, mask: jax.Array | None = None
    ) -> jax.Array:
        average = not train  # inference: BatchNorm's running statistics, no dropout
        m4 = None if mask is None else mask[:, None, None, None]  # the batch mask, broadcast over NHWC
        k1, k2 = jax.random.split(key) if train and key is not None else (None, None)
        x = nnx.relu(self.bn1(self.conv1(x), use_running_average=average, mask=m4))
        x = nnx.relu(self.bn2(self.conv2(x), use_running_average=average, mask=m4))
        x = nnx.avg_pool(x, (2, 2), strides=(2, 2))  # 8x8 -> 4x4
        x = self.drop(x.reshape(x.shape[0], -1), deterministic=not train, rngs=k1)
        x = self.drop(nnx.relu(self.fc1(x)), deterministic=not train, rngs=k2)
        return self.fc2(x)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the rows ``mask`` keeps (the real examples of a padded batch)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    w = mask.astype(ce.dtype)
    return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1.0)


def make_functions(graphdef: nnx.GraphDef) -> tuple:
    """``(loss_fn, acc_fn)`` for gdjax: pure functions of ``(params, batch)`` with the model state as a keyword."""

    def loss_fn(params: nnx.State, batch: gd.Batch, *, key: jax.Array | None, model_state: nnx.State) -> tuple:
        m = nnx.merge(graphdef, params, model_state, copy=True)
        logits = m(batch.data["x"], train=key is not None, key=key, mask=batch.mask)
        # in inference mode (key None) BatchNorm changes nothing: the state goes back as it came
        return masked_cross_entropy(logits, batch.data["y"], batch.mask), nnx.state(m, nnx.BatchStat)

    def acc_fn(params: nnx.State, batch: gd.Batch, *, model_state: nnx.State) -> jax.Array:
        m = nnx.merge(graphdef, params, model_state, copy=True)
        hit = (jnp.argmax(m(batch.data["x"]), axis=-1) == batch.data["y"]) & batch.mask
        return jnp.sum(hit) / jnp.maximum(jnp.sum(batch.mask), 1)

    return loss_fn, acc_fn


def train_nnx(
    train: dict,
    test: dict,
    *,
    epochs: int = 5,
    batch_size: int = 64,
    learning_rate: float = 1e-2,
    dropout: float = 0.3,
    seed: int = 0,
) -> tuple[CNN, gd.FitResult, dict]:
    """Build the CNN, train it with ``gd.fit``; return ``(trained model, result, initial batch statistics)``.

    The statistics are a pure dict of arrays (``nnx.to_pure_dict``).
    """
    init_key, order_key = jax.random.split(jax.random.key(seed))
    model = CNN(rngs=nnx.Rngs(init_key), dropout=dropout)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    loss_fn, acc_fn = make_functions(graphdef)
    res = gd.fit(
        loss_fn,
        params,
        optax.adam,
        gd.minibatch(train, batch_size),
        epochs=epochs,
        key=order_key,
        learning_rate=learning_rate,
        batched=True,
        with_key=True,
        model_state=batch_stats,
        eval_data=test,
        metrics={"acc": acc_fn},
    )
    initial_stats = nnx.to_pure_dict(batch_stats)  # the arrays: nnx.update below writes into batch_stats' Variables
    nnx.update(model, res.params, res.state.model_state)  # the trained weights and statistics, into the module
    return model, res, initial_stats


def linen_recipe(train: dict, test: dict, *, epochs: int = 2, seed: int = 0) -> tuple[float, gd.FitResult]:
    """The same recipe with Flax linen: a small CNN, ``variables["params"]`` trained, ``batch_stats`` carried.

    Returns ``(test accuracy of the trained variables, result)``.
    """
    import flax.linen as nn

    class LinenCNN(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
            m4 = None if mask is None else mask[:, None, None, None]
            x = nn.Conv(32, (3, 3))(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x, mask=m4))
            x = nn.avg_pool(x, (2, 2), strides=(2, 2)).reshape(x.shape[0], -1)
            x = nn.Dropout(0.3, deterministic=not train)(x)  # its key: rngs={"dropout": key}
            return nn.Dense(10)(x)

    init_key, order_key = jax.random.split(jax.random.key(seed))
    model = LinenCNN()
    variables = model.init(init_key, jnp.zeros((1, 8, 8, 1)), train=False)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}  # {"batch_stats": ...}

    def loss_fn(params: dict, batch: gd.Batch, *, key: jax.Array | None, model_state: dict) -> tuple:
        x, y = batch.data["x"], batch.data["y"]
        if key is None:  # inference: nothing mutable, the state unchanged
            logits, new_state = model.apply({"params": params, **model_state}, x, train=False), model_state
        else:
            logits, new_state = model.apply(
                {"params": params, **model_state},
                x,
                train=True,
                mask=batch.mask,
                rngs={"dropout": key},
                mutable=list(model_state),
            )
        return masked_cross_entropy(logits, y, batch.mask), dict(new_state)

    res = gd.fit(
        loss_fn,
        params,
        optax.adam,
        gd.minibatch(train, 64),
        epochs=epochs,
        key=order_key,
        learning_rate=1e-2,
        batched=True,
        with_key=True,
        model_state=model_state,
    )
    trained = {"params": res.params, **res.state.model_state}
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(trained, test["x"])
    return float(jnp.mean(jnp.argmax(logits, axis=-1) == test["y"])), res


def main(argv: list[str] | None = None) -> dict:
    """Train the NNX CNN, merge it back and check its test accuracy against gdjax's.

    Args:
      argv: command-line arguments (``None`` reads ``sys.argv``; pass ``[]``
        for the defaults).

    Returns:
      A dict with ``"test_accuracy"`` (of the merged-back model, computed
      outside gdjax), ``"eval_acc"`` (``res.final_metrics["eval_acc"]``),
      ``"history_eval_acc"`` (per epoch), ``"initial_loss"``, ``"final_loss"``,
      ``"batch_stats_changed"`` (the running statistics moved from their
      start), ``"model"`` (the trained :class:`CNN`), ``"times"`` (seconds)
      and, with ``--linen``, ``"linen_test_accuracy"``.
    """
    args = _parse(argv)
    t_start = time.perf_counter()
    train, test = digit_images(args.seed)
    model, res, initial_stats = train_nnx(
        train,
        test,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        dropout=args.dropout,
        seed=args.seed,
    )
    # the accuracy of the merged-back module, outside gdjax (a fresh one from the pieces works too:
    # nnx.merge(graphdef, res.params, res.state.model_state))
    logits = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(test["x"]))
    test_acc = float(jnp.mean(jnp.argmax(logits, axis=-1) == test["y"]))
    changed = any(
        not np.allclose(a, b)
        for a, b in zip(
            jax.tree.leaves(initial_stats),
            jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))),
            strict=True,
        )
    )

    print(
        f"digits as 8x8x1 images: {len(train['y'])} train / {len(test['y'])} test; NNX CNN (conv-bn x2, dropout "
        f"{args.dropout:g}), Adam lr={args.learning_rate:g}, batch {args.batch_size}, {res.num_epochs} epochs"
    )
    for epoch, loss, eval_loss, acc in zip(
        res.history_epochs, res.history["loss"], res.history["eval_loss"], res.history["eval_acc"], strict=True
    ):
        print(f"  epoch {int(epoch):>2}: train loss {loss:.4f}  test loss {eval_loss:.4f}  test acc {acc:.4f}")
    print(
        f"test accuracy of the merged-back model: {test_acc:.4f} (gdjax's eval_acc "
        f"{res.final_metrics['eval_acc']:.4f}); batch statistics moved from their start: {changed}"
    )
    out = {
        "test_accuracy": test_acc,
        "eval_acc": float(res.final_metrics["eval_acc"]),
        "history_eval_acc": np.asarray(res.history["eval_acc"]),
        "initial_loss": res.initial_loss,
        "final_loss": res.final_loss,
        "batch_stats_changed": changed,
        "model": model,
    }
    times = {"compile": res.compile_time, "run": res.wall_time}
    if args.linen:
        linen_acc, linen_res = linen_recipe(train, test, seed=args.seed)
        out["linen_test_accuracy"] = linen_acc
        times.update(linen_compile=linen_res.compile_time, linen_run=linen_res.wall_time)
        print(f"linen variant, {linen_res.num_epochs} epochs: test accuracy {linen_acc:.4f}")
    times["total"] = time.perf_counter() - t_start
    print(f"times: {res.compile_time:.2f} s compile + {res.wall_time:.2f} s run; {times['total']:.1f} s in all")
    out["times"] = times
    return out


if __name__ == "__main__":
    main()
