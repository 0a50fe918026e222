"""The seams of the architecture: the plan as plain values, bounded caches, and partials that share programs."""

import functools

import jax
import numpy as np
import optax
import pytest

import gdjax as gd
from gdjax import _caches, _plan, _runner


def test_the_plan_is_computed_without_compiling(compiles):
    with compiles() as c:
        table = _plan.members([0.1, 0.2, 0.3], {"momentum": [0.0, 0.9]}, grid=True, seeds=[5, 7])
        rows = _plan.chunk_rows(table.size, chunk_size=5, devices=2)
        chunks = _plan.chunks(table.size, rows)
    assert c.count == 0
    assert table.size == 12
    np.testing.assert_array_equal(table.seeds, [5, 7] * 6)
    np.testing.assert_array_equal(table.hyperparams["learning_rate"], np.repeat([0.1, 0.2, 0.3], 4))
    np.testing.assert_array_equal(table.hyperparams["momentum"], np.tile(np.repeat([0.0, 0.9], 2), 3))
    assert rows == 6  # 5 rounded up to a multiple of the 2 devices
    assert [c.number for c in chunks] == [0, 1]
    assert [c.real for c in chunks] == [6, 6]
    odd = _plan.chunks(7, 3)
    assert [c.rows.tolist() for c in odd] == [[0, 1, 2], [3, 4, 5], [6, 6, 6]]  # padded with the last member
    assert [c.real for c in odd] == [3, 3, 1]


@pytest.mark.parametrize(("count", "chunk_size", "devices"), [(1, None, 1), (10, 3, 1), (10, 3, 4), (9, 100, 8)])
def test_every_member_runs_in_exactly_one_chunk(count, chunk_size, devices):
    rows = _plan.chunk_rows(count, chunk_size, devices)
    chunks = _plan.chunks(count, rows)
    assert rows % devices == 0 and all(len(c.rows) == rows for c in chunks)
    real = np.concatenate([c.rows[: c.real] for c in chunks])
    np.testing.assert_array_equal(real, np.arange(count))


def test_an_inline_partial_optimizer_shares_the_compiled_program(compiles, linear, small_run):
    params, it = small_run
    run = lambda: gd.fit(  # noqa: E731
        linear.loss,
        params,
        functools.partial(optax.sgd, nesterov=True),  # a new object every call, equal to the last
        it,
        epochs=2,
        key=jax.random.key(0),
        learning_rate=0.1,
        hyperparams={"momentum": 0.5},
    )
    first = run()
    with compiles() as c:
        second = run()
    assert c.count == 0 and second.compile_time == 0.0
    np.testing.assert_array_equal(first.losses, second.losses)


def test_clear_caches_empties_every_cache_and_the_next_call_builds_again(linear, small_run):
    params, it = small_run
    fit = lambda: gd.fit(linear.loss, params, optax.sgd, it, epochs=2, key=jax.random.key(0), learning_rate=0.1)  # noqa: E731
    fit()
    assert len(_runner._COMPILED) > 0
    gd.clear_caches()
    assert all(len(cache) == 0 for cache in _caches._ALL)
    again = fit()  # traced and lowered anew (XLA may still find the executable in JAX's own cache)
    assert again.compile_time > 0 and len(_runner._COMPILED) > 0


def test_caches_are_bounded_and_drop_the_least_recently_used():
    cache = _caches.BoundedCache[int]("test", 3)
    try:
        for i in range(3):
            cache.put(i, i)
        assert cache.get(0) == 0  # now the most recently used
        cache.put(3, 3)
        assert sorted(cache.keys()) == [0, 2, 3]
        for i in range(100):
            cache.put(("k", i), i)
        assert len(cache) == 3
    finally:
        _caches._ALL.remove(cache)


def test_the_seconds_an_epoch_took_die_with_the_compiled_program(monkeypatch, linear, small_run):
    params, it = small_run
    monkeypatch.setattr(_runner, "_COMPILED", _caches.BoundedCache("small", 1))
    gd.fit(linear.loss, params, optax.sgd, it, epochs=3, key=jax.random.key(0), learning_rate=0.1, progress=True)
    entries = [_runner._COMPILED.get(k) for k in _runner._COMPILED.keys()]  # noqa: SIM118
    assert len(entries) == 1 and entries[0].seconds_per_epoch is not None  # kept on the program's own entry
    _caches._ALL.remove(_runner._COMPILED)


def test_callable_key_meets_equal_partials_and_keeps_functions_apart():
    a = functools.partial(optax.sgd, nesterov=True)
    b = functools.partial(optax.sgd, nesterov=True)
    c = functools.partial(optax.sgd, nesterov=False)
    assert _caches.callable_key(a) == _caches.callable_key(b) != _caches.callable_key(c)
    assert _caches.callable_key(optax.sgd) != _caches.callable_key(optax.adam)
    unhashable = functools.partial(optax.sgd, momentum=np.array(0.9))
    assert _caches.callable_key(unhashable) != _caches.callable_key(
        functools.partial(optax.sgd, momentum=np.array(0.9))
    )
