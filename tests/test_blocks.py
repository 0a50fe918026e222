"""Full-data passes in blocks: the same means as one pass over all rows, with temporaries of one block."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _shared import LINEAR, linear_problem
from hypothesis import given, settings
from hypothesis import strategies as st

import gdjax as gd
from gdjax import _blocks
from gdjax.data import Batch


def masked(batch: Batch) -> jax.Array:
    return jnp.reshape(gd.masked_mean(batch.data, batch.mask), (1,))


def mean_of(values: np.ndarray, rows: int) -> float:
    data = jnp.asarray(values)
    return float(_blocks.mean(masked, _blocks.Rows(_blocks.slicer(data), len(values), rows))[0])


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 300), rows=st.integers(1, 300))
def test_blocks_count_every_row_once(n: int, rows: int) -> None:
    # Integers: every partial sum is exact in float32, so the blocked mean equals the plain one exactly,
    # and a row counted twice or missed (the last block overlaps the one before) would show.
    values = np.arange(1, n + 1, dtype=np.float32) ** 2
    assert mean_of(values, min(rows, n)) * n == pytest.approx(float(values.sum()), rel=0, abs=0.5)


def test_one_block_is_the_plain_pass_bit_for_bit() -> None:
    values = np.random.default_rng(0).standard_normal(500).astype(np.float32)
    plain = masked(Batch(jnp.asarray(values), jnp.ones(500, bool)))[0]
    assert mean_of(values, 500) == float(plain)


def test_a_blocked_pass_holds_one_block_of_temporaries() -> None:
    n, d, hidden = 20_000, 32, 256
    x = jnp.ones((n, d))
    w1, w2 = jnp.ones((d, hidden)) / d, jnp.ones((hidden, 8)) / hidden

    def fn(batch: Batch) -> jax.Array:  # a two-layer network: the hidden activations feed a second matmul
        out = jnp.tanh(batch.data @ w1) @ w2
        return jnp.reshape(gd.masked_mean(out.sum(axis=1), batch.mask), (1,))

    def program(rows: int) -> str:  # the optimised HLO XLA runs
        pass_ = jax.jit(lambda data: _blocks.mean(fn, _blocks.Rows(_blocks.slicer(data), n, rows)))
        return pass_.lower(x).compile().as_text()

    whole = f"f32[{n},{hidden}]"
    assert whole in program(n), "one pass over all rows makes the N x hidden activations"
    blocked = program(1000)
    assert whole not in blocked and f"f32[1000,{hidden}]" in blocked, "a blocked pass makes one block's"


def run(it: gd.DataIterator, **kw: Any) -> gd.FitResult:
    params = LINEAR.init(None, 3)
    close = {"close": lambda p, ex: (jnp.abs(ex["x"] @ p["w"] + p["b"] - ex["y"]) < 0.3).astype(jnp.float32)}
    return gd.fit(
        LINEAR.loss, params, optax.sgd, it, epochs=3, key=jax.random.key(1), learning_rate=0.1, metrics=close, **kw
    )


def test_blocked_evaluation_matches_one_pass_and_never_changes_training(monkeypatch: pytest.MonkeyPatch) -> None:
    prob = linear_problem(1000, 3)
    train = jax.tree.map(lambda a: a[:700], prob.data)
    held = jax.tree.map(lambda a: a[700:], prob.data)
    whole = run(gd.minibatch(train, 64), eval_data=held)
    monkeypatch.setattr(_blocks, "BLOCK_ELEMENTS", 64 * 4)  # 64-row blocks: 11 of them, the last overlapping
    blocked = run(gd.minibatch(train, 64), eval_data=held)
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(blocked.params), strict=True):
        assert np.array_equal(a, b)
    assert whole.history.keys() == blocked.history.keys()
    for name in whole.history:
        np.testing.assert_allclose(blocked.history[name], whole.history[name], rtol=2e-6, err_msg=name)
    assert blocked.initial_loss == pytest.approx(whole.initial_loss, rel=2e-6)
