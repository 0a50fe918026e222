"""A training run for the kill-and-resume tests: ``python _resume_child.py fit|sweep FOLDER|- OUT.json``.

Prints nothing; writes a JSON digest of the final state to OUT.json. Runs with
a checkpoint in FOLDER (or none with ``-``) so a test can SIGKILL it and run
it again. The problem is small; each checkpoint save first waits
``SAVE_DELAY`` seconds (a slow disk: the results do not change) so that the
run lasts long enough to be killed mid-run however fast the machine is.
"""

import hashlib
import json
import sys
import time

import jax
import numpy as np
import optax

import gdjax as gd
from gdjax import checkpoint

FIT_EPOCHS = 30
SWEEP_EPOCHS = 20
SAVE_DELAY = 0.02


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    return h.hexdigest()


def _slow_disk() -> None:
    save = checkpoint.Checkpointer.save

    def slow_save(self, tree, epoch, extra=None):
        time.sleep(SAVE_DELAY)
        return save(self, tree, epoch, extra)

    checkpoint.Checkpointer.save = slow_save


def main() -> None:
    kind, folder, out = sys.argv[1:4]
    ckpt = None if folder == "-" else folder
    _slow_disk()
    prob = gd.problems.linear_regression(n=1000, d=8, key=jax.random.key(0))
    model = gd.models.mlp((16,))
    it = gd.minibatch(prob.data, 8)
    init = model.init(jax.random.key(1), 8)
    if kind == "fit":
        res = gd.fit(
            model.loss,
            init,
            optax.adam,
            it,
            epochs=FIT_EPOCHS,
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
            epochs=SWEEP_EPOCHS,
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
            "resumed_from": sw.resumed_from.tolist(),
        }
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
