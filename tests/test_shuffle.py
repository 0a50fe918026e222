"""The keyed bijection behind every epoch's order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gdjax.shuffle import permute, round_keys

MAX_N = 5000
SLOTS = 8192  # one array shape for every n <= MAX_N, so the op-by-op run below compiles nothing per n

_round_keys = jax.jit(round_keys)  # the epoch is traced: one program for every (key, epoch)
_permute = jax.jit(permute, static_argnums=2)  # the compiled order: one program per (shape, n)


def _order_op_by_op(n, keys):
    """``permute(arange(n), keys, n)``, the library's code run op by op (``jax.disable_jit``).

    A compiled ``permute`` is a new program for every ``n`` (about 0.2 s to compile); op by op, each
    operation is compiled once for the one shape ``(SLOTS,)`` and any ``n`` reuses it. ``permute`` maps
    each position on its own, so the slots past ``n`` hold position 0 and are dropped afterwards.
    Integer arithmetic is exact, so this is the compiled order bit for bit
    (:func:`test_permute_elementwise_equals_whole_epoch` checks that).
    """
    positions = np.arange(SLOTS, dtype=np.int32)
    positions[n:] = 0
    with jax.disable_jit():
        return np.asarray(permute(jnp.asarray(positions), keys, n))[:n]


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, MAX_N), seed=st.integers(0, 2**31 - 1), epoch=st.integers(0, 1000))
def test_permute_is_a_bijection_of_range_n(n, seed, epoch):
    order = _order_op_by_op(n, _round_keys(jax.random.key(seed), epoch))
    assert order.dtype == np.int32
    np.testing.assert_array_equal(np.sort(order), np.arange(n))


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, MAX_N), seed=st.integers(0, 2**31 - 1), epoch=st.integers(0, 1000))
def test_compiled_permute_is_a_bijection_of_range_n(n, seed, epoch):
    """The same property through the compiled program, a new one for every n."""
    order = np.asarray(_permute(jnp.arange(n), round_keys(jax.random.key(seed), epoch), n))
    assert order.dtype == np.int32
    np.testing.assert_array_equal(np.sort(order), np.arange(n))


@pytest.mark.parametrize("n", [1, 1000, 4096])  # one item, cycle walking, a power of two (no walking)
def test_permute_elementwise_equals_whole_epoch(n):
    """Compiled for the whole epoch, compiled for chunks of 64 positions, and op by op: one order."""
    keys = round_keys(jax.random.key(3), 7)
    whole = np.asarray(_permute(jnp.arange(n), keys, n))
    starts = np.arange(0, n, 64)
    chunks = np.minimum(starts[:, None] + np.arange(64), n - 1)  # the last chunk padded with position n - 1
    parts = np.concatenate([np.asarray(_permute(jnp.asarray(c, jnp.int32), keys, n)) for c in chunks])[:n]
    np.testing.assert_array_equal(whole, parts)
    np.testing.assert_array_equal(whole, _order_op_by_op(n, keys))


def test_orders_look_random():
    """Different keys and epochs give unrelated orders, and no order stays near the identity."""
    n = 4096
    orders = [
        np.asarray(permute(jnp.arange(n), round_keys(jax.random.key(k), e), n)) for k in range(3) for e in range(3)
    ]
    for i, a in enumerate(orders):
        # A random permutation has about one fixed point; its rank correlation with the identity is ~N(0, 1/n).
        assert np.sum(a == np.arange(n)) < 10
        assert abs(np.corrcoef(a, np.arange(n))[0, 1]) < 5 / np.sqrt(n)
        for b in orders[i + 1 :]:
            assert np.sum(a == b) < 10
            assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(n)
    # neighbours in position land far apart: the mean gap of a random order is about n / 3
    gaps = np.abs(np.diff(orders[0]))
    assert n / 4 < gaps.mean() < n / 2.5


def test_first_positions_are_uniform():
    """Across many keys, the first index of an epoch is spread evenly over [0, n)."""
    n, draws = 10, 4000

    @jax.jit  # one program: the 4000 keys' orders op by op would take seconds
    def firsts(key):
        return jax.vmap(lambda k: permute(jnp.arange(1), round_keys(k, 0), n)[0])(jax.random.split(key, draws))

    counts = np.bincount(np.asarray(firsts(jax.random.key(0))), minlength=n)
    chi2 = np.sum((counts - draws / n) ** 2 / (draws / n))
    assert chi2 < 30  # 9 degrees of freedom: P(chi2 > 30) < 0.001


def test_permute_rejects_out_of_range_sizes():
    with pytest.raises(ValueError, match="n must be in"):
        permute(jnp.arange(1), round_keys(jax.random.key(0), 0), 0)
