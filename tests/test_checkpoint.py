"""Checkpoints: atomic writes, exact resume (also after SIGKILL), refusal of another run's folder."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gdjax as gd
from gdjax import checkpoint

MODEL = gd.models.linear()
CHILD = Path(__file__).with_name("_resume_child.py")


def test_save_restore_round_trip_of_a_nested_state(tmp_path):
    state = gd.init({"w": jnp.arange(3.0), "layers": [jnp.ones((2, 2)), jnp.zeros(1, jnp.int32)]}, optax.adam(0.1))
    checkpoint.save(tmp_path / "a.npz", state, {"epoch": 3})
    back, meta = checkpoint.restore(tmp_path / "a.npz", state)
    assert meta == {"epoch": 3}
    assert jax.tree.structure(back) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:  # plain arrays only: nothing to unpickle
        assert all(z[k].dtype != object for k in z.files)


def test_restore_refuses_another_structure(tmp_path):
    checkpoint.save(tmp_path / "a.npz", {"w": jnp.zeros(3)})
    with pytest.raises(checkpoint.CheckpointError, match="different structure"):
        checkpoint.restore(tmp_path / "a.npz", {"v": jnp.zeros(3)})
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"leaf 0 is float32\[3\], expected float32\[4\]"):
        checkpoint.restore(tmp_path / "a.npz", {"w": jnp.zeros(4)})


def test_a_write_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "state.npz"
    checkpoint.save(path, {"w": jnp.zeros(3)}, {"n": 1})

    def torn(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(np, "savez", torn)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, {"w": jnp.ones(3)}, {"n": 2})
    monkeypatch.undo()
    tree, meta = checkpoint.restore(path, {"w": jnp.zeros(3)})
    assert meta == {"n": 1} and np.all(np.asarray(tree["w"]) == 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.npz"]  # no temporary left behind


def _fit(folder, epochs=6, lr=0.05, every=2, data=None, **kw):
    prob = data or gd.problems.linear_regression(n=300, d=4, key=jax.random.key(0))
    return gd.fit(
        MODEL.loss,
        MODEL.init(None, 4),
        optax.sgd,
        gd.minibatch(prob.data, 32),
        epochs=epochs,
        key=jax.random.key(1),
        learning_rate=lr,
        checkpoint=folder,
        checkpoint_every=every,
        **kw,
    )


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    full = _fit(tmp_path)
    files = sorted(tmp_path.glob("epoch-*.npz"))
    assert [f.name for f in files] == ["epoch-00000004.npz", "epoch-00000006.npz"]
    files[-1].write_bytes(b"not a checkpoint")
    again = _fit(tmp_path)
    assert again.resumed_from == 4
    np.testing.assert_array_equal(again.losses, full.losses)


def test_another_configuration_in_the_folder_is_refused_before_compiling(tmp_path, compiles):
    _fit(tmp_path)
    with (
        compiles() as c,
        pytest.raises(ValueError, match=r"other settings \(hyperparams: \{'learning_rate': 0.05\} there"),
    ):
        _fit(tmp_path, lr=0.07)
    assert c.count == 0
    with pytest.raises(ValueError, match="epochs: 6 there, 8 now"):
        _fit(tmp_path, epochs=8)
    assert _fit(tmp_path).resumed_from == 6  # the same arguments still resume


def test_checkpoint_arguments_are_checked(tmp_path):
    prob = gd.problems.linear_regression(n=50, d=4, key=jax.random.key(0))
    args = (MODEL.loss, MODEL.init(None, 4))
    it = gd.minibatch(prob.data, 8)
    with pytest.raises(ValueError, match="needs the optimizer as a factory"):
        gd.fit(*args, optax.sgd(0.1), it, epochs=1, key=jax.random.key(0), checkpoint=tmp_path)
    with pytest.raises(ValueError, match="checkpoint_every is set but checkpoint is not"):
        gd.fit(*args, optax.sgd, it, epochs=1, key=jax.random.key(0), learning_rate=0.1, checkpoint_every=2)
    with pytest.raises(ValueError, match="checkpoint_every must be at least 1"):
        gd.fit(
            *args,
            optax.sgd,
            it,
            epochs=1,
            key=jax.random.key(0),
            learning_rate=0.1,
            checkpoint=tmp_path,
            checkpoint_every=0,
        )
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; give a folder"):
        gd.fit(*args, optax.sgd, it, epochs=1, key=jax.random.key(0), learning_rate=0.1, checkpoint=tmp_path / "file")


def test_checkpoints_record_versions_and_backend(tmp_path):
    _fit(tmp_path)
    meta = checkpoint.read_metadata(next(tmp_path.glob("epoch-*.npz")))
    assert meta["environment"]["jax"] == jax.__version__
    assert meta["environment"]["backend"] == jax.default_backend()
    assert meta["settings"]["kind"] == "fit" and meta["epoch"] in (4, 6)


@settings(max_examples=10, deadline=None)
@given(n=st.integers(20, 120), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_resume_from_any_epoch_equals_an_uninterrupted_run(tmp_path_factory, n, data, seed):
    b = data.draw(st.integers(1, n), label="batch_size")
    epochs = data.draw(st.integers(2, 8), label="epochs")
    every = data.draw(st.integers(1, epochs - 1), label="checkpoint_every")
    folder = tmp_path_factory.mktemp("ckpt")
    prob = gd.problems.linear_regression(n=n, d=4, key=jax.random.key(seed))
    it = gd.minibatch(prob.data, b)
    kw = dict(epochs=epochs, key=jax.random.key(seed), learning_rate=0.01, checkpoint_every=every)
    ref = gd.fit(MODEL.loss, MODEL.init(None, 4), optax.adam, it, **{**kw, "checkpoint_every": None})
    gd.fit(MODEL.loss, MODEL.init(None, 4), optax.adam, it, checkpoint=folder, **kw)
    (folder / f"epoch-{epochs:08d}.npz").unlink()  # as if killed just before the last checkpoint was written
    resumed = gd.fit(MODEL.loss, MODEL.init(None, 4), optax.adam, it, checkpoint=folder, **kw)
    assert resumed.resumed_from == (epochs - 1) // every * every  # the checkpoint before the last
    np.testing.assert_array_equal(resumed.losses, ref.losses)
    np.testing.assert_array_equal(resumed.epoch_losses, ref.epoch_losses)
    for x, y in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(ref.state), strict=True):
        np.testing.assert_array_equal(x, y)


def _child(kind, folder, out, env):
    return subprocess.Popen([sys.executable, str(CHILD), kind, str(folder), str(out)], env=env)


@pytest.mark.parametrize("kind", ["fit", "sweep"])
def test_killed_with_sigkill_and_run_again_is_bit_identical(tmp_path, kind):
    """Also: two fresh processes with the same key give bit-identical results."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    ref_out = tmp_path / "ref.json"
    assert _child(kind, "-", ref_out, env).wait(timeout=300) == 0
    folder, out = tmp_path / "ckpt", tmp_path / "out.json"
    proc = _child(kind, folder, out, env)
    deadline = time.time() + 120
    while not list(folder.glob("*.npz")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)  # training has started once the first checkpoint exists
    time.sleep(random.uniform(0.0, 1.5))  # then a random moment, possibly mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not out.exists(), "the run finished before it could be killed"
    assert _child(kind, folder, out, env).wait(timeout=300) == 0
    ref, got = json.loads(ref_out.read_text()), json.loads(out.read_text())
    if kind == "fit":
        assert got.pop("resumed_from") > 0 and ref.pop("resumed_from") == 0
    assert got == ref


def test_bfloat16_state_round_trips_and_resumes(tmp_path):
    checkpoint.save(tmp_path / "b.npz", {"w": jnp.arange(3, dtype=jnp.bfloat16)})
    tree, _ = checkpoint.restore(tmp_path / "b.npz", {"w": jnp.zeros(3, jnp.bfloat16)})
    assert tree["w"].dtype == jnp.bfloat16 and tree["w"].tolist() == [0, 1, 2]
    prob = gd.problems.linear_regression(n=64, d=4, key=jax.random.key(0))
    data = {k: jnp.asarray(v, jnp.bfloat16) for k, v in prob.data.items()}
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), MODEL.init(None, 4))
    kw = dict(epochs=4, key=jax.random.key(0), learning_rate=0.01, checkpoint=tmp_path / "run")
    ref = gd.fit(MODEL.loss, params, optax.adam, gd.minibatch(data, 16), **kw)
    (tmp_path / "run" / "epoch-00000004.npz").unlink()
    again = gd.fit(MODEL.loss, params, optax.adam, gd.minibatch(data, 16), **kw)
    assert again.resumed_from == 3
    np.testing.assert_array_equal(again.losses, ref.losses)


def test_a_checkpoint_of_other_shapes_is_refused_not_silently_restarted(tmp_path):
    init = lambda width: lambda k: gd.models.mlp((width,)).init(k, 4)  # noqa: E731 - same name, other shapes
    prob = gd.problems.linear_regression(n=64, d=4, key=jax.random.key(0))
    kw = dict(learning_rates=[0.01], seeds=1, epochs=2, key=jax.random.key(0), checkpoint=tmp_path)
    gd.sweep(gd.models.mlp((3,)).loss, init(3), optax.sgd, gd.minibatch(prob.data, 16), **kw)
    shapes = r"leaf 0 is float32\[1, 3\], expected float32\[1, 5\]\. The run.s parameters or settings changed"
    with pytest.raises(ValueError, match=shapes):
        gd.sweep(gd.models.mlp((5,)).loss, init(5), optax.sgd, gd.minibatch(prob.data, 16), **kw)
