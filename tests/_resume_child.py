"""A training run for the kill-and-resume tests: ``python _resume_child.py fit|sweep FOLDER|- OUT.json``.

Prints nothing; writes a JSON digest of the final state to OUT.json. Runs with
a checkpoint in FOLDER (or none with ``-``) so a test can SIGKILL it and run
it again.
"""

import hashlib
import json
import sys

import jax
import numpy as np
import optax

import gdjax as gd


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    return h.hexdigest()


def main() -> None:
    kind, folder, out = sys.argv[1:4]
    ckpt = None if folder == "-" else folder
    prob = gd.problems.linear_regression(n=60000, d=24, key=jax.random.key(0))
    model = gd.models.mlp((32,))
    it = gd.minibatch(prob.data, 8)
    init = model.init(jax.random.key(1), 24)
    if kind == "fit":
        res = gd.fit(
            model.loss,
            init,
            optax.adam,
            it,
            epochs=40,
            key=jax.random.key(2),
            learning_rate=1e-3,
            log_every=50,
            checkpoint=ckpt,
        )
        result = {
            "params": digest(*jax.tree.leaves(res.params)),
            "losses": digest(res.losses, res.epoch_losses),
            "resumed_from": res.resumed_from,
            "epochs": res.num_epochs,
        }
    else:
        sw = gd.sweep(
            model.loss,
            init,
            optax.adam,
            it,
            learning_rates=np.geomspace(1e-4, 10.0, 6),
            epochs=15,
            key=jax.random.key(2),
            log_every=50,
            checkpoint=ckpt,
            chunk_size=3,
        )
        result = {
            "params": digest(*jax.tree.leaves(sw.params)),
            "losses": digest(sw.losses, sw.epoch_losses),
            "diverged": sw.diverged.tolist(),
            "epochs": sw.num_epochs.tolist(),
        }
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
