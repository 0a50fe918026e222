"""A training loop written by hand from gdjax's building blocks, checked against ``gd.fit``.

What this example teaches:

* ``gd.fit`` is not magic. It is the loop below compiled into one XLA
  program: ``state = gd.init(params, opt)`` makes a ``TrainState(params,
  opt_state, step)``; ``gd.make_step(loss_fn, opt)`` builds a pure
  ``step(state, batch) -> (state, metrics)`` that you ``jax.jit`` yourself;
  and ``it.iterate(key, epoch=e)`` yields the batches of epoch ``e``, the same
  batches that ``gd.fit`` draws from the same key.
* The ragged last batch: with ``N`` not divisible by the batch size the last
  batch is padded to the full batch shape, and ``batch.mask`` marks the
  padding ``False``. The step weights each example's loss by the mask, so the
  batch loss is exactly the mean over the real examples (this example checks
  that), and nothing is recompiled for the odd-sized batch.
* ``has_aux=True``: the loss may return ``(loss, aux)``; ``metrics["aux"]``
  then holds the batch mean of each float leaf of ``aux`` (here the absolute
  error), masked like the loss.
* A hand-written loop and ``gd.fit`` with the same optimizer, data, key and
  epochs end at the same parameters, to float tolerance.

Run it with ``python examples/hand_written_loop.py`` (``--help`` for options).
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
    parser.add_argument("--n", type=int, default=1000, help="examples (not a multiple of the batch size)")
    parser.add_argument("--d", type=int, default=8, help="features")
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch size")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the data")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed")
    return parser.parse_args(argv)


def _max_abs_diff(a, b) -> float:
    diffs = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)
    return max(jax.tree.leaves(diffs))


def main(argv: list[str] | None = None) -> dict:
    """Train by hand, then with ``gd.fit``, and compare.

    Args:
      argv: command-line arguments (``None`` reads ``sys.argv``; pass ``[]``
        for the defaults).

    Returns:
      A dict with ``"params"`` (from the hand-written loop), ``"epoch_losses"``
      (full-data cost after each epoch, hand-written loop),
      ``"fit_epoch_losses"`` (the same from ``gd.fit``), ``"num_steps"``,
      ``"fit_num_steps"``, ``"last_mask"`` (numpy bool mask of the last batch
      of epoch 0), ``"ragged_loss_error"`` (how far the last batch's masked
      loss is from the mean over its real examples), ``"max_abs_diff"``
      (largest parameter difference between the loop and ``gd.fit`` with the
      built optimizer), ``"factory_max_abs_diff"`` (the same with the factory
      form) and ``"min_loss"`` (the exact least-squares cost).
    """
    args = _parse(argv)
    data_key, init_key, order_key = jax.random.split(jax.random.key(args.seed), 3)
    prob = gd.problems.linear_regression(n=args.n, d=args.d, key=data_key)
    model = gd.models.linear()
    params0 = model.init(init_key, args.d)

    def loss_fn(params, example):
        error = model.apply(params, example["x"]) - example["y"]
        return 0.5 * error**2, {"abs_error": jnp.abs(error)}

    def cost(params):
        """The full-data cost J: the mean per-example loss over all N examples."""
        losses, _ = jax.vmap(loss_fn, in_axes=(None, 0))(params, prob.data)
        return float(jnp.mean(losses))

    it = gd.minibatch(prob.data, args.batch_size)
    learning_rate = 0.5 / prob.lipschitz
    opt = optax.sgd(learning_rate)
    print(
        f"N={it.num_examples}, batch size {it.batch_size}: {it.num_batches} batches per epoch, "
        f"the last with {it.num_examples - (it.num_batches - 1) * it.batch_size} real examples"
    )

    # ---- the hand-written loop ---------------------------------------------
    state = gd.init(params0, opt)
    step = jax.jit(gd.make_step(loss_fn, opt, has_aux=True))
    epoch_losses = []
    last_mask = None
    ragged_loss_error = None
    for epoch in range(args.epochs):
        batch_losses = []
        for batch in it.iterate(order_key, epoch=epoch):
            before = state.params
            state, metrics = step(state, batch)
            batch_losses.append(float(metrics["loss"]))
            if epoch == 0 and not bool(batch.mask.all()):
                # The ragged batch: padded to the static shape, padding masked out.
                last_mask = np.asarray(batch.mask)
                real = {name: column[last_mask] for name, column in batch.data.items()}
                exact, _ = jax.vmap(loss_fn, in_axes=(None, 0))(before, real)
                ragged_loss_error = abs(float(metrics["loss"]) - float(jnp.mean(exact)))
                print(
                    f"last batch of epoch 0: x has shape {batch.data['x'].shape}, "
                    f"{int(last_mask.sum())} real + {int((~last_mask).sum())} padding"
                )
                print("  mask: " + "".join("1" if m else "0" for m in last_mask))
                print(
                    f"  masked batch loss {float(metrics['loss']):.6f} vs mean over real examples "
                    f"{float(jnp.mean(exact)):.6f} (|diff| = {ragged_loss_error:.1e}); "
                    f"mean |error| (aux) {float(metrics['aux']['abs_error']):.4f}"
                )
        epoch_losses.append(cost(state.params))
        print(f"epoch {epoch + 1:>3}: mean batch loss {np.mean(batch_losses):.6f}, cost J {epoch_losses[-1]:.6f}")

    # ---- the same run, compiled by gd.fit ----------------------------------
    # A built optimizer takes no learning_rate= ...
    res = gd.fit(loss_fn, params0, opt, it, epochs=args.epochs, key=order_key, has_aux=True)
    diff = _max_abs_diff(state.params, res.params)
    # ... the factory form takes it (traced, so other rates reuse the program).
    res_factory = gd.fit(
        loss_fn, params0, optax.sgd, it, epochs=args.epochs, key=order_key, has_aux=True, learning_rate=learning_rate
    )
    factory_diff = _max_abs_diff(state.params, res_factory.params)
    print(f"hand-written loop: {int(state.step)} updates; gd.fit: {res.num_steps} updates")
    print(f"final cost: loop {epoch_losses[-1]:.6f}, gd.fit {res.final_loss:.6f}, least squares {prob.min_loss:.6f}")
    print(
        f"max |params(loop) - params(fit)| = {diff:.2e} (built optax.sgd), "
        f"{factory_diff:.2e} (factory optax.sgd, learning_rate=...)"
    )

    return {
        "params": state.params,
        "epoch_losses": np.asarray(epoch_losses),
        "fit_epoch_losses": res.epoch_losses,
        "num_steps": int(state.step),
        "fit_num_steps": res.num_steps,
        "last_mask": last_mask,
        "ragged_loss_error": ragged_loss_error,
        "max_abs_diff": diff,
        "factory_max_abs_diff": factory_diff,
        "min_loss": prob.min_loss,
    }


if __name__ == "__main__":
    main()
