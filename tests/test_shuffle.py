"""The keyed bijection behind every epoch's order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gdjax.shuffle import permute, round_keys


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), seed=st.integers(0, 2**31 - 1), epoch=st.integers(0, 1000))
def test_permute_is_a_bijection_of_range_n(n, seed, epoch):
    order = np.asarray(permute(jnp.arange(n), round_keys(jax.random.key(seed), epoch), n))
    assert order.dtype == np.int32
    np.testing.assert_array_equal(np.sort(order), np.arange(n))


def test_permute_elementwise_equals_whole_epoch():
    n, keys = 1000, round_keys(jax.random.key(3), 7)
    whole = np.asarray(permute(jnp.arange(n), keys, n))
    parts = np.concatenate([np.asarray(permute(jnp.arange(i, min(i + 64, n)), keys, n)) for i in range(0, n, 64)])
    np.testing.assert_array_equal(whole, parts)


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
    firsts = jax.vmap(lambda k: permute(jnp.arange(1), round_keys(k, 0), n)[0])(
        jax.random.split(jax.random.key(0), draws)
    )
    counts = np.bincount(np.asarray(firsts), minlength=n)
    chi2 = np.sum((counts - draws / n) ** 2 / (draws / n))
    assert chi2 < 30  # 9 degrees of freedom: P(chi2 > 30) < 0.001


def test_permute_rejects_out_of_range_sizes():
    with pytest.raises(ValueError, match="n must be in"):
        permute(jnp.arange(1), round_keys(jax.random.key(0), 0), 0)
