"""Streamed data in processes of their own: a sweep over eight CPU devices, and Ctrl-C during a run (slow lane)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SHARDED = """
import json, jax, numpy as np, optax, gdjax as gd
from gdjax import _stream
_stream.CHUNK_BYTES = 3 * 16 * 4 * 4
assert len(jax.devices()) == 8
prob = gd.problems.linear_regression(n=150, d=3, key=jax.random.key(0))
data = {k: np.asarray(v) for k, v in prob.data.items()}
m = gd.models.linear()
out = {}
for seeds in (None, [0, 1]):
    kw = dict(learning_rates=np.geomspace(1e-3, 1e3, 5), epochs=2, key=jax.random.key(1), seeds=seeds)
    its = [gd.minibatch(data, 16, on_device=od) for od in (True, False)]
    runs = [gd.sweep(m.loss, m.init(None, 3), optax.sgd, it, **kw) for it in its]
    pairs = list(zip(jax.tree.leaves((runs[0].params, runs[0].losses, runs[0].epoch_losses)),
                     jax.tree.leaves((runs[1].params, runs[1].losses, runs[1].epoch_losses))))
    same = all(np.array_equal(a, b, equal_nan=True) for a, b in pairs)
    ok = ~runs[0].diverged & (runs[0].final_loss < runs[0].initial_loss)
    close = all(np.allclose(a[ok], b[ok], rtol=1e-5) for a, b in pairs)
    verdicts = bool((runs[0].diverged == runs[1].diverged).all())
    out[str(seeds)] = [same, close and verdicts, runs[1].devices, runs[1].on_device]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_a_streamed_sweep_over_eight_devices_equals_on_device() -> None:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # With one key the members share each block and the bits are the same; with a key per member (seeds) the
    # members' reads differ, and over a mesh XLA compiles their gathers in another form: float tolerance.
    assert result["None"] == [True, True, 8, False]
    assert result["[0, 1]"][1:] == [True, 8, False]


INTERRUPTED = """
import os, signal, threading, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a session started in the background hands it ignored
import jax, numpy as np, optax, gdjax as gd
rng = np.random.default_rng(0)
arrays = {"x": rng.standard_normal((20000, 32), dtype=np.float32), "y": rng.standard_normal(20000, dtype=np.float32)}

class Source:  # sends SIGINT from its third read once armed: the run is then surely under way
    armed, reads, sent = False, 0, None
    def __len__(self):
        return 20000
    def __getitem__(self, idx):
        if self.armed:
            self.reads += 1
            if self.reads == 3:
                self.sent = time.perf_counter()
                os.kill(os.getpid(), signal.SIGINT)
        return {k: v[idx] for k, v in arrays.items()}

source = Source()
m = gd.models.mlp((64,))
it = gd.minibatch(source, 32)
fit = lambda epochs: gd.fit(m.loss, m.init(jax.random.key(0), 32), optax.sgd, it, epochs=epochs,
                            key=jax.random.key(1), learning_rate=1e-3)
fit(1)  # compiled: the timed run below is all training
t0 = time.perf_counter(); fit(1); epoch = time.perf_counter() - t0
source.armed = True
try:
    fit(1000)
    print("finished", flush=True)
except KeyboardInterrupt:
    print("interrupted", time.perf_counter() - source.sent, epoch, [t.name for t in threading.enumerate()], flush=True)
os._exit(0)  # as the gdjax command does after Ctrl-C: XLA's threads can crash the interpreter's teardown
"""


@pytest.mark.slow
def test_ctrl_c_stops_a_streamed_run_at_once() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", INTERRUPTED], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    word, seconds, epoch, threads = out.stdout.split(maxsplit=3)
    assert word == "interrupted", out.stdout
    # 1000 epochs would take 1000 x epoch; the interrupt lands at the next read, a block of steps later
    assert float(seconds) < min(5.0, 20 * float(epoch)), out.stdout
    assert "gdjax-run" not in threads, "the run's thread has stopped"
