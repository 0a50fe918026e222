"""Runs over several processes (JAX's multi-controller runtime) and data-parallel fits over several devices.

The multi-process tests start local processes joined by ``jax.distributed``
on 127.0.0.1 with gloo collectives (``_distributed_child.py``), the way
several machines run: each process drives one CPU device. The reference is
one process with as many forced CPU devices, whose program is split the
same way.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import gdjax as gd
from gdjax import _data_parallel, _distributed, _plan

CHILD = str(Path(__file__).with_name("_distributed_child.py"))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
ENV.pop("XLA_FLAGS", None)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(mode: str, pid: int, count: int, port: int, out: Path) -> subprocess.Popen:
    args = [sys.executable, CHILD, mode, str(pid), str(count), str(port), str(out)]
    return subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]
        errs.append(err)
    return errs


def _results(out: Path, mode: str, pid: int) -> tuple[dict, dict]:
    arrays = dict(np.load(out / f"{mode}-{pid}.npz"))
    return arrays, json.loads((out / f"{mode}-{pid}.json").read_text())


@pytest.mark.slow
def test_two_processes_give_the_single_process_results(tmp_path: Path) -> None:
    port = _port()
    errs = _finish([_start("runs", pid, 2, port, tmp_path) for pid in (0, 1)])
    _finish([_start("runs", -1, 2, 0, tmp_path)])
    ref, ref_messages = _results(tmp_path, "runs", -1)
    for pid in (0, 1):
        got, messages = _results(tmp_path, "runs", pid)
        # every process holds the whole result: the same bits as one process with as many devices
        for name in ("sweep_losses", "shown_losses", "sweep_final", "sweep_eval", "fit_losses", "fit_w", "fit_eval"):
            np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
        np.testing.assert_array_equal(got["again_losses"], got["fit_losses"])  # run to run: the same bits
        np.testing.assert_allclose(got["stream_losses"], got["fit_losses"], rtol=1e-6)
        assert (
            "progress: true on process 0, false on process 1" in messages["progress"]
            and "process 1" in messages["mismatch"]
            and "hyperparams.learning_rate[0]: 0.01 on process 0, 0.02" in (messages["mismatch"])
        )
    # data parallel against one device: float tolerance (the gradient is summed in another order)
    np.testing.assert_allclose(ref["fit_losses"], ref["one_losses"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ref["fit_w"], ref["one_w"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ref["fit_eval"], ref["one_eval"], rtol=1e-5, atol=1e-7)
    assert not np.array_equal(ref["sweep_losses"][0], ref["sweep_losses"][1])  # the members did differ
    assert "processes: 2 there, 1 now" in ref_messages["resume"]  # another process count is refused
    # one progress bar, drawn by process 0; one writer of the checkpoints
    assert "sweep: epoch 5/5" in errs[0] and "fit: epoch 5/5" in errs[0]
    assert "sweep: epoch" not in errs[1] and "fit: epoch" not in errs[1]
    assert sorted(p.name for p in (tmp_path / "ckpt-fit").glob("*.npz")) == ["epoch-00000004.npz", "epoch-00000005.npz"]


@pytest.mark.slow
def test_a_killed_process_is_reported_and_a_restart_resumes_exactly(tmp_path: Path) -> None:
    port = _port()
    procs = [_start("long", pid, 2, port, tmp_path) for pid in (0, 1)]
    folder = tmp_path / "ckpt-long"
    deadline = time.monotonic() + 180
    while len(list(folder.glob("chunk-*-epoch-*.npz"))) < 2:  # checkpoints of two epochs are there
        assert time.monotonic() < deadline and procs[0].poll() is None, procs[0].communicate()[1][-3000:]
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    out, err = procs[0].communicate(timeout=120)  # reports the lost process instead of waiting forever
    waited = time.monotonic() - t0
    procs[1].communicate()
    assert "finished" not in out and procs[0].returncode != 0
    assert "RuntimeError: process 0 lost contact with the other processes of this run" in err, err[:4000]
    assert waited < 100
    saved = max(int(p.name[-12:-4]) for p in folder.glob("chunk-*-epoch-*.npz"))
    assert saved < 40
    port = _port()
    _finish([_start("long", pid, 2, port, tmp_path) for pid in (0, 1)])
    _finish([_start("long", -1, 2, 0, tmp_path)])
    ref, _ = _results(tmp_path, "long", -1)
    for pid in (0, 1):
        got, _ = _results(tmp_path, "long", pid)
        assert (got["resumed"] >= saved).all() and (got["resumed"] > 0).all()
        np.testing.assert_array_equal(got["losses"], ref["losses"])
        np.testing.assert_array_equal(got["params"], ref["params"])


EIGHT = r"""
import json, jax, jax.numpy as jnp, numpy as np, optax, gdjax as gd
prob = gd.problems.linear_regression(n=1000, d=8, key=jax.random.key(0))
data = jax.tree.map(np.asarray, prob.data)
p0 = {"w": jnp.zeros(8), "b": jnp.zeros(())}

def loss(params, batch, *, model_state):  # centres x by the batch mean, a running mean kept as model state
    x, y, m = batch.data["x"], batch.data["y"], batch.mask.astype(jnp.float32)
    mu = jnp.sum(x * m[:, None], 0) / jnp.sum(m)
    err = (x - mu) @ params["w"] + params["b"] - y
    return jnp.sum(m * err**2) / jnp.sum(m), 0.9 * model_state + 0.1 * mu

def mae(params, batch, *, model_state):
    err = (batch.data["x"] - model_state) @ params["w"] + params["b"] - batch.data["y"]
    return jnp.sum(batch.mask * jnp.abs(err)) / jnp.sum(batch.mask)

kw = dict(epochs=4, key=jax.random.key(2), learning_rate=0.05, batched=True, model_state=jnp.zeros(8),
          eval_data={k: v[:300] for k, v in data.items()}, metrics={"mae": mae})
out = {}
for name, it in [("device", gd.minibatch(data, 64)), ("streamed", gd.minibatch(data, 64, on_device=False)),
                 ("full", gd.full_batch(data))]:
    one = gd.fit(loss, p0, optax.sgd, it, **kw)
    eight = gd.fit(loss, p0, optax.sgd, it, devices=jax.devices(), **kw)
    again = gd.fit(loss, p0, optax.sgd, it, devices=jax.devices(), **kw)
    diff = lambda a, b: float(np.nanmax(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
    out[name] = {
        "losses": diff(one.losses, eight.losses),
        "history": max(diff(one.history[k], eight.history[k]) for k in one.history),
        "params": max(diff(one.params[k], eight.params[k]) for k in one.params),
        "state": diff(one.state.model_state, eight.state.model_state),
        "same_bits": bool(np.array_equal(eight.losses, again.losses))
        and bool(np.array_equal(eight.params["w"], again.params["w"])),
        "spec": str(eight.params["w"].sharding.spec), "devices": len(eight.params["w"].sharding.device_set),
        "moved": diff(one.params["w"], p0["w"]),
    }
print(json.dumps(out))
"""


@pytest.mark.slow
def test_a_fit_over_eight_devices_equals_one_device() -> None:
    env = {**ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    out = subprocess.run([sys.executable, "-c", EIGHT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "rematerialization" not in out.stderr  # XLA did not have to split anything the slow way
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result) == {"device", "streamed", "full"}
    for r in result.values():
        assert r["moved"] > 0.1  # training happened
        assert r["losses"] < 1e-5 and r["history"] < 1e-5 and r["params"] < 1e-5 and r["state"] < 1e-6
        assert r["same_bits"] and r["devices"] == 8 and r["spec"] == "P()"


# --- bad input, before anything is compiled (one device is enough) ---

PROB = gd.problems.linear_regression(n=100, d=3, key=jax.random.key(0))
MODEL = gd.models.linear()
P0 = MODEL.init(jax.random.key(1), 3)


def test_a_batch_that_does_not_divide_by_the_devices_is_refused_with_the_sizes_that_do() -> None:
    it = gd.minibatch(PROB.data, 30)
    dev = jax.devices()[0]
    with pytest.raises(ValueError, match=r"batch of 30 examples cannot be split evenly over 8 devices") as info:
        _data_parallel.mesh([dev] * 8, it)
    assert "batch_size=24 or 32" in str(info.value) and "devices=jax.devices()[:6]" in str(info.value)
    with pytest.raises(ValueError, match=r"use batch_size=4, or devices=jax.devices\(\)\[:1\]"):
        _data_parallel.mesh([dev] * 4, gd.stochastic(PROB.data))
    assert _data_parallel.mesh([dev], it) is None  # one device: nothing to split


def test_devices_of_several_kinds_are_refused() -> None:
    kinds = [types.SimpleNamespace(platform="cpu"), types.SimpleNamespace(platform="gpu")]
    with pytest.raises(ValueError, match=r"devices mixes cpu and gpu devices.*devices=jax.devices\('gpu'\)"):
        _plan.one_kind(kinds)
    _plan.one_kind(kinds[:1])  # one kind: accepted


@pytest.mark.parametrize("bad", ["cpu", [], [0], jax.devices()[0]])
def test_fit_devices_must_be_a_sequence_of_devices(bad) -> None:
    with pytest.raises(TypeError, match="devices must be"):
        gd.fit(MODEL.loss, P0, optax.sgd, gd.minibatch(PROB.data, 10), epochs=1, key=jax.random.key(0),
               learning_rate=0.1, devices=bad)  # fmt: skip


def test_fit_on_one_listed_device_equals_the_default() -> None:
    kw = dict(epochs=3, key=jax.random.key(0), learning_rate=0.1)
    it = gd.minibatch(PROB.data, 10)
    a = gd.fit(MODEL.loss, P0, optax.sgd, it, **kw)
    b = gd.fit(MODEL.loss, P0, optax.sgd, it, devices=jax.devices()[:1], **kw)
    np.testing.assert_array_equal(a.losses, b.losses)
    assert b.params["w"].devices() == {jax.devices()[0]}


def test_differences_name_the_first_setting_that_differs() -> None:
    ours = {"kind": "sweep", "hyperparams": {"learning_rate": [0.1, 0.2]}, "data": {"digest": "ab"}}
    theirs = {"kind": "sweep", "hyperparams": {"learning_rate": [0.1, 0.3]}, "data": {"digest": "cd"}}
    assert _distributed.differences(ours, theirs) == [
        "hyperparams.learning_rate[1]: 0.2 on process 0, 0.3 on this one",
        'data.digest: "ab" on process 0, "cd" on this one',
    ]
    assert _distributed.differences(ours, ours) == []
    _distributed.agree("gd.sweep", ours)  # one process: nothing to compare


def test_one_process_gathers_nothing() -> None:
    x = jax.numpy.arange(4.0)
    tree = {"a": x, "b": np.ones(2)}
    assert _distributed.to_host(tree)["a"] is x and _distributed.is_writer() and _distributed.processes() == 1
    assert _distributed.from_first(7) == 7
    _distributed.check_same(3, "the epoch", "fix it")  # one process: the same by definition


def test_a_failed_exchange_is_told_from_bad_arguments() -> None:
    assert _distributed.is_lost(ValueError("UNKNOWN: Gloo all-reduce failed: Connection closed by peer"))
    assert not _distributed.is_lost(ValueError("epochs must be a positive integer"))
    assert "lost contact" in str(_distributed.lost(RuntimeError("UNAVAILABLE: peer gone")))
