"""The data iterator: exact epochs, ragged batches, both faces, bad input."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import gdjax as gd

MAX_EPOCH = 2**31 - 1  # epochs are int32 in the compiled order


def _data(n, d=3):
    return {"x": np.arange(n * d, dtype=np.float32).reshape(n, d), "id": np.arange(n, dtype=np.int32)}


# One program per iterator spec (N, B, shuffle, drop_remainder), kept for the session: the key and the epoch are
# traced, so examples of the same spec run it again instead of compiling another.
_epoch_indices = jax.jit(lambda it, key, epoch: it.epoch_indices(key, epoch))


def _epoch_ids(it, key, epoch):
    """Example ids each epoch visits, with padding removed, from the compiled face."""
    idx, mask = _epoch_indices(it, key, epoch)
    idx, mask = np.asarray(idx), np.asarray(mask)
    assert idx.shape == mask.shape == (it.num_batches, it.batch_size)
    return idx[mask]


# (N, batch size) for the fast lane, each a program compiled once: one example; the smallest domain of the
# shuffle, in one full batch; a ragged last batch and cycle walking; a power of two split evenly (no walking, no
# padding); one example past a power of two (15 padded slots, the most walking); a typical ragged size; SGD.
# The slow lane draws any N and batch size.
SIZES = [(1, 1), (2, 2), (7, 3), (16, 4), (17, 16), (100, 7), (300, 1)]


def _check_every_example_once(n, b, seed, shuffle, first_epoch):
    it = gd.minibatch(_data(n), b, shuffle=shuffle)
    assert it.num_batches == -(-n // b)
    for epoch in (first_epoch, first_epoch + 1):
        ids = _epoch_ids(it, jax.random.key(seed), epoch)
        np.testing.assert_array_equal(np.sort(ids), np.arange(n))
    # only the last batch is ragged, and its padding is exactly the remainder
    _, mask = _epoch_indices(it, jax.random.key(seed), first_epoch)
    assert int((~np.asarray(mask)).sum()) == (-n) % b
    assert np.asarray(mask)[:-1].all()


@settings(max_examples=80, deadline=None)
@given(
    size=st.sampled_from(SIZES),
    seed=st.integers(0, 2**31 - 1),
    shuffle=st.booleans(),
    first_epoch=st.integers(0, MAX_EPOCH - 1),
)
def test_every_example_exactly_once_per_epoch(size, seed, shuffle, first_epoch):
    _check_every_example_once(*size, seed, shuffle, first_epoch)


# The slow lane's shapes: any N in [1, 300] and batch size in [1, N], each a program of its own (its compilation is
# nearly all of its cost), so 40 and 30 drawn at random; and always these ends: a last batch of one real example
# (N = 2B + 1), a last batch one short of full (N = 2B - 1), the largest N in one batch.
ANY_SIZE = st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n)))
EDGE_SIZES = [(257, 128), (299, 150), (300, 300)]


def _edge_examples(**kw):
    def add(test):
        for size in EDGE_SIZES:
            test = example(size=size, seed=0, **kw)(test)
        return test

    return add


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(size=ANY_SIZE, seed=st.integers(0, 2**31 - 1), shuffle=st.booleans())
@_edge_examples(shuffle=True)
def test_every_example_exactly_once_per_epoch_of_any_size(size, seed, shuffle):
    _check_every_example_once(*size, seed, shuffle, 0)


def _check_drops_n_mod_b(n, b, seed, epoch):
    it = gd.minibatch(_data(n), b, drop_remainder=True)
    assert it.num_batches == n // b
    ids = _epoch_ids(it, jax.random.key(seed), epoch)
    assert len(ids) == len(set(ids.tolist())) == n - n % b
    assert it.examples_per_epoch == n - n % b


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(size=st.sampled_from(SIZES), seed=st.integers(0, 2**31 - 1), epoch=st.integers(0, MAX_EPOCH))
def test_drop_remainder_drops_exactly_n_mod_b(size, seed, epoch):
    _check_drops_n_mod_b(*size, seed, epoch)


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(size=ANY_SIZE, seed=st.integers(0, 2**31 - 1))
@_edge_examples()
def test_drop_remainder_drops_exactly_n_mod_b_of_any_size(size, seed):
    _check_drops_n_mod_b(*size, seed, 0)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 300))
def test_sgd_takes_n_steps_and_full_batch_one(n):
    assert gd.stochastic(_data(n)).num_batches == n
    assert gd.stochastic(_data(n)).batch_size == 1
    full = gd.full_batch(_data(n))
    assert (full.num_batches, full.batch_size) == (1, n)


@pytest.mark.parametrize("n", [2, 7, 300])  # iterate compiles a program per N: three of them
def test_full_batch_is_the_data_in_storage_order(n):
    batches = list(gd.full_batch(_data(n)).iterate(jax.random.key(0)))
    assert len(batches) == 1
    np.testing.assert_array_equal(np.asarray(batches[0].data["id"]), np.arange(n))


def test_orders_differ_between_epochs_and_keys_and_repeat_for_same_key():
    it = gd.minibatch(_data(500), 32)
    a0 = _epoch_ids(it, jax.random.key(0), 0)
    assert not np.array_equal(a0, _epoch_ids(it, jax.random.key(0), 1))
    assert not np.array_equal(a0, _epoch_ids(it, jax.random.key(1), 0))
    np.testing.assert_array_equal(a0, _epoch_ids(it, jax.random.key(0), 0))
    # raw uint32 keys work too
    np.testing.assert_array_equal(_epoch_ids(it, jax.random.PRNGKey(5), 2), _epoch_ids(it, jax.random.PRNGKey(5), 2))


def test_unshuffled_is_storage_order():
    it = gd.minibatch(_data(10), 4, shuffle=False)
    ids = [np.asarray(b.data["id"])[np.asarray(b.mask)].tolist() for b in it.iterate(jax.random.key(0))]
    assert ids == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize(
    ("n", "b", "drop"),
    [
        (10, 4, False),  # a padded last batch
        (10, 4, True),  # a dropped remainder
        pytest.param(7, 7, False, marks=pytest.mark.slow),  # one full batch
        pytest.param(9, 1, False, marks=pytest.mark.slow),  # single examples
    ],
)
def test_host_face_equals_compiled_faces(n, b, drop):
    """iterate(), epoch_indices + gather inside jit, and init/next inside scan give the same batches."""
    it = gd.minibatch(_data(n), b, drop_remainder=drop)
    key = jax.random.key(42)

    @jax.jit  # the epoch is traced: one program for both epochs
    def compiled(it, epoch):
        idx, mask = it.epoch_indices(key, epoch)
        return jax.vmap(it.gather)(idx, mask)

    for epoch in range(2):
        host = list(it.iterate(key, epoch=epoch))
        assert len(host) == it.num_batches
        stacked = compiled(it, epoch)
        for i, batch in enumerate(host):
            np.testing.assert_array_equal(batch.mask, stacked.mask[i])
            for leaf_h, leaf_c in zip(jax.tree.leaves(batch.data), jax.tree.leaves(stacked.data), strict=True):
                np.testing.assert_array_equal(leaf_h, leaf_c[i])

    # the stateful face walks through epochs 0 and 1 in order, inside scan
    def body(state, _):
        batch, state = it.next(state)
        return state, batch

    final, walked = jax.jit(lambda s: jax.lax.scan(body, s, length=2 * it.num_batches))(it.init(key))
    host = list(it.iterate(key, 0)) + list(it.iterate(key, 1))
    for i, batch in enumerate(host):
        np.testing.assert_array_equal(batch.data["id"], walked.data["id"][i])
        np.testing.assert_array_equal(batch.mask, walked.mask[i])
    assert (int(final.epoch), int(final.batch)) == (2, 0)


def test_resume_mid_epoch_from_state():
    it = gd.minibatch(_data(50), 8)
    key = jax.random.key(1)
    step = jax.jit(lambda it, state: it.next(state))  # one program for the four steps
    state = it.init(key)
    for _ in range(3):
        _, state = step(it, state)
    restored = gd.IteratorState(*[jnp.asarray(np.asarray(x)) if i else x for i, x in enumerate(state)])
    resumed = [step(it, restored)[0].data["id"]]
    expected = next(it.iterate(key, 0, start=3)).data["id"]
    np.testing.assert_array_equal(resumed[0], expected)


def test_padding_points_at_real_examples_and_is_masked():
    it = gd.minibatch(_data(10), 4)
    last = list(it.iterate(jax.random.key(0)))[-1]
    assert np.asarray(last.mask).tolist() == [True, True, False, False]
    assert np.isfinite(np.asarray(last.data["x"])).all()
    assert last.data["x"].shape == (4, 3)


def test_pytree_data_of_tuples_and_jax_arrays():
    x = jnp.ones((6, 2), jnp.float32)
    it = gd.minibatch((x, np.zeros(6, np.float32)), 4)
    batch = next(it.iterate(jax.random.key(0)))
    assert isinstance(batch.data, tuple) and batch.data[0].shape == (4, 2) and batch.data[1].shape == (4,)


@pytest.mark.slow  # compiles two runs of its own
def test_data_placed_on_device_once(capfd):
    """minibatch puts the data on the device; iterate and fit use those buffers and never send the data again."""
    import optax

    model, key = gd.models.linear(), jax.random.key(0)
    fit = lambda it: gd.fit(model.loss, model.init(None, 5), optax.sgd, it, epochs=1, key=key, learning_rate=0.1)  # noqa: E731

    def data(extra):  # the loss reads x and y; extra leaves only ride along
        return {"x": np.ones((24, 5), np.float32), "y": np.zeros(24, np.float32)} | {
            f"z{i}": np.zeros((24, 3), np.float32) for i in range(extra)
        }

    def transfers(it, *, with_fit=True):
        """Host-to-device transfers of one iterate (and one fit), compiled already, counted from JAX's log."""
        capfd.readouterr()
        with jax.transfer_guard_host_to_device("log"):
            list(it.iterate(key, 1))
            if with_fit:
                fit(it)
        return capfd.readouterr().err.count("host-to-device transfer")

    placed = {extra: gd.minibatch(data(extra), 8) for extra in (0, 4)}
    on_host = {extra: gd.DataIterator(data(extra), *placed[extra].spec) for extra in (0, 4)}  # sent at every call
    for it in placed.values():
        fit(it)  # compile first: only the runs below are counted
    for it in [*placed.values(), *on_host.values()]:
        list(it.iterate(key))
    it = placed[0]
    leaves = jax.tree.leaves(it.data)
    assert all(isinstance(leaf, jax.Array) and leaf.devices() == {jax.devices()[0]} for leaf in leaves)
    pointers = [leaf.unsafe_buffer_pointer() for leaf in leaves]
    # the scalars (epoch, learning rate...) are sent either way, the data leaves only when they live on the host
    assert transfers(placed[0]) == transfers(placed[4]) > 0
    host = [transfers(on_host[extra], with_fit=False) for extra in (0, 4)]
    assert host[1] > host[0] > transfers(placed[0], with_fit=False)
    assert [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(it.data)] == pointers
    batch = next(it.iterate(key))
    assert all(leaf.devices() == {jax.devices()[0]} for leaf in jax.tree.leaves(batch))


def test_epoch_beyond_int32_is_refused(compiles):
    it = gd.minibatch(_data(10), 4)
    key = jax.random.key(0)
    for epoch in (2**31, 2**40):
        with compiles() as c, pytest.raises(ValueError, match=r"epoch must be at most 2\*\*31 - 1 = 2147483647.*int32"):
            next(it.iterate(key, epoch=epoch))
        assert c.count == 0
        with pytest.raises(ValueError, match=r"epoch must be at most 2\*\*31 - 1"):
            it.epoch_indices(key, epoch)
    last = list(it.iterate(key, epoch=2**31 - 1))  # the largest epoch works, and is a permutation
    ids = np.concatenate([np.asarray(b.data["id"])[np.asarray(b.mask)] for b in last])
    np.testing.assert_array_equal(np.sort(ids), np.arange(10))


# ----- bad input -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "match"),
    [
        (
            {"x": np.zeros((5, 2), np.float32), "y": np.zeros(4, np.float32)},
            {},
            ValueError,
            r"data\['x'\] has 5.*data\['y'\] has 4",
        ),
        ({}, {}, ValueError, "data is empty"),
        (np.zeros((0, 3), np.float32), {}, ValueError, "data is empty: data has a leading axis of length 0"),
        (np.zeros((5, 0), np.float32), {}, ValueError, "zero features"),
        (
            {"x": np.array([[1.0], [np.nan], [2.0]], np.float32)},
            {},
            ValueError,
            r"data\['x'\] has a non-finite value.*row 1",
        ),
        ({"x": np.array([1.0, 2.0, np.inf], np.float32)}, {}, ValueError, "row 2"),
        (np.zeros(4, np.complex64), {}, TypeError, "complex"),
        (np.array(["a", "b"], object), {}, TypeError, "real numbers"),
        (np.float32(3.0), {}, ValueError, "scalar"),
        (np.zeros((5, 2), np.float32), {"batch_size": 0}, ValueError, "batch_size must be between 1 and 5; got 0"),
        (np.zeros((5, 2), np.float32), {"batch_size": -3}, ValueError, "batch_size must be between 1 and 5"),
        (np.zeros((5, 2), np.float32), {"batch_size": 6}, ValueError, "batch_size must be between 1 and 5; got 6"),
        (np.zeros((5, 2), np.float32), {"batch_size": 2.5}, TypeError, "batch_size must be an integer"),
        (np.zeros((5, 2), np.float32), {"batch_size": True}, TypeError, "batch_size must be an integer; got bool"),
        (np.zeros((5, 2), np.float32), {"batch_size": 2, "shuffle": "yes"}, TypeError, "shuffle must be True or False"),
    ],
)
def test_bad_input_is_explained(data, kwargs, error, match, compiles):
    kwargs = {"batch_size": 2, **kwargs}
    with compiles() as c, pytest.raises(error, match=match):
        gd.minibatch(data, **kwargs)
    assert c.count == 0
    # the function still works on good input afterwards
    assert gd.minibatch(np.zeros((5, 2), np.float32), 2).num_batches == 3


def test_float64_without_x64_warns_once_and_uses_float32():
    data = {"f64_leaf": np.zeros((4, 2))}
    with pytest.warns(
        UserWarning, match=r"data\['f64_leaf'\] is float64 but JAX's x64 mode is off, so gdjax uses float32"
    ):
        it = gd.minibatch(data, 2)
    assert it.data["f64_leaf"].dtype == jnp.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gd.minibatch(data, 2)  # second time: no warning


def test_float64_kept_with_x64():
    with jax.enable_x64(True):
        it = gd.full_batch({"x": np.zeros((4, 2))})
        assert it.data["x"].dtype == jnp.float64


@pytest.mark.parametrize("key", [0, np.array([1, 2, 3], np.uint32), jax.random.split(jax.random.key(0), 2)])
def test_iterate_needs_a_single_key(key):
    it = gd.minibatch(np.zeros((5, 2), np.float32), 2)
    with pytest.raises(TypeError, match="key must be a single JAX PRNG key"):
        next(it.iterate(key))


def test_plain_iteration_asks_for_a_key():
    with pytest.raises(TypeError, match=r"it.iterate\(jax.random.key"):
        iter(gd.minibatch(np.zeros((5, 2), np.float32), 2))


def test_bfloat16_and_float16_data_are_accepted():
    for dtype in (jnp.bfloat16, jnp.float16):
        it = gd.minibatch({"x": jnp.ones((6, 2), dtype)}, 4)
        assert it.data["x"].dtype == dtype
    with pytest.raises(ValueError, match="non-finite value"):
        gd.minibatch({"x": jnp.array([1.0, jnp.inf], jnp.bfloat16)}, 1)
