"""Streamed data (``on_device=False``): the same batches, hence the same bits, as data on the device.

Every comparison here is exact (``np.array_equal``): a streamed run reads the
rows the on-device run gathers, in the same order, and computes the same
steps. ``CHUNK_BYTES`` is made tiny so an epoch is read in several blocks with
a remainder, which exercises the block scan, the read-ahead and its cache.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _shared import LINEAR, linear_problem
from hypothesis import given, settings

import gdjax as gd
from gdjax import _sources, _stream

KEY = jax.random.key(7)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of three batches of 16 rows of 5 values: an epoch of 13 batches reads 4 blocks and a remainder."""
    monkeypatch.setattr(_stream, "CHUNK_BYTES", 3 * 16 * 5 * 4)


def same(a: Any, b: Any) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True) for x, y in zip(la, lb, strict=True)
    )


def data(n: int = 200, d: int = 4) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in linear_problem(n, d).data.items()}


class Source:
    """A random-access source: ``__len__`` and ``__getitem__`` of an index array, as grain's data sources are."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays, self.reads = arrays, 0

    def __len__(self) -> int:
        return len(self.arrays["x"])

    def __getitem__(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        self.reads += 1
        return {k: v[np.asarray(idx)] for k, v in self.arrays.items()}


def fit(it: gd.DataIterator, **kw: Any) -> gd.FitResult:
    params = LINEAR.init(None, it.data["x"].shape[1])
    return gd.fit(LINEAR.loss, params, optax.sgd, it, epochs=3, key=KEY, learning_rate=0.05, **kw)


def test_streamed_fit_equals_on_device_bit_for_bit() -> None:
    arrays = data()
    on, off = gd.minibatch(arrays, 16), gd.minibatch(arrays, 16, on_device=False)
    assert on.on_device and not off.on_device and off.chunk_steps == 3 and off.num_batches == 13
    a, b = fit(on), fit(off)
    assert a.on_device and not b.on_device
    assert same(a.params, b.params) and same(a.losses, b.losses) and same(a.epoch_losses, b.epoch_losses)
    assert a.final_loss == b.final_loss and a.initial_loss == b.initial_loss


@pytest.mark.parametrize(
    "build",
    [
        lambda d, od: gd.stochastic(d, on_device=od),
        lambda d, od: gd.full_batch(d, on_device=od),
        lambda d, od: gd.minibatch(d, 32, drop_remainder=True, on_device=od),
        lambda d, od: gd.minibatch(d, 48, shuffle=False, on_device=od),
    ],
    ids=["stochastic", "full_batch", "drop_remainder", "unshuffled"],
)
def test_every_iterator_kind_streams_the_same_bits(build: Any) -> None:
    arrays = data(120)
    a, b = fit(build(arrays, True)), fit(build(arrays, False))
    assert same(a.params, b.params) and same(a.losses, b.losses)


def test_streamed_sweep_equals_on_device_with_shared_and_per_member_keys() -> None:
    arrays = data()
    params = LINEAR.init(None, 4)
    for kw in ({"learning_rates": [0.01, 0.1, 50.0]}, {"learning_rates": [0.01, 0.1], "seeds": [0, 1]}):
        runs = [
            gd.sweep(LINEAR.loss, params, optax.sgd, gd.minibatch(arrays, 16, on_device=od), epochs=2, key=KEY, **kw)
            for od in (True, False)
        ]
        assert same(runs[0].params, runs[1].params) and same(runs[0].losses, runs[1].losses)
        assert same(runs[0].diverged, runs[1].diverged) and not runs[1].on_device
    assert runs[0].num_members == 4


def test_evaluation_metrics_and_eval_data_stream_the_same_bits() -> None:
    arrays, held = data(200), data(90)
    acc = {"close": lambda p, ex: (jnp.abs(ex["x"] @ p["w"] + p["b"] - ex["y"]) < 0.5).astype(jnp.float32)}
    runs = []
    for od in (True, False):
        it, val = gd.minibatch(arrays, 16, on_device=od), gd.minibatch(held, 16, on_device=od)
        runs.append(fit(it, eval_data=val, metrics=acc))
    assert same(runs[0].history, runs[1].history) and set(runs[1].history) == {
        "loss",
        "close",
        "eval_loss",
        "eval_close",
    }


def test_a_random_access_source_streams_or_loads() -> None:
    arrays = data()
    source = Source(arrays)
    it = gd.minibatch(source, 16)
    assert not it.on_device, "a source is streamed by default"
    reads = source.reads
    a, b, c = fit(gd.minibatch(arrays, 16)), fit(it), fit(gd.minibatch(source, 16, on_device=True))
    assert source.reads > reads, "the run read the source"
    assert same(a.params, b.params) and same(a.params, c.params)


def test_a_streamed_memmap_and_float64_convert_block_by_block(tmp_path: Any) -> None:
    x = np.random.default_rng(0).standard_normal((100, 5))  # float64: gdjax uses float32 without x64
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    with pytest.warns(UserWarning, match="float64"):
        on = gd.minibatch({"x": x}, 10)
    off = gd.minibatch({"x": mm}, 10, on_device=False)  # warned once per name already
    assert off.data["x"] is mm, "the memmap stays where it is"
    got = [b.data["x"] for b in off.iterate(KEY, 1)]
    want = [b.data["x"] for b in on.iterate(KEY, 1)]
    assert got[0].dtype == jnp.float32 and same(got, want)


def test_iterate_and_next_give_the_on_device_batches() -> None:
    arrays = data(70)
    on, off = gd.minibatch(arrays, 16), gd.minibatch(arrays, 16, on_device=False)
    assert same(list(on.iterate(KEY, 3)), list(off.iterate(KEY, 3)))
    assert same(list(on.iterate(KEY, 3, start=2)), list(off.iterate(KEY, 3, start=2)))
    step = jax.jit(lambda it, s: it.next(s))
    s_on, s_off = on.init(KEY), off.init(KEY)
    for _ in range(6):  # across the epoch's end
        (b_on, s_on), (b_off, s_off) = step(on, s_on), step(off, s_off)
        assert same(b_on, b_off) and same(s_on[1:], s_off[1:])


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 60), batch=st.integers(1, 64), epoch=st.integers(0, 5))
def test_every_example_once_per_epoch_streamed(n: int, batch: int, epoch: int) -> None:
    batch = min(batch, n)
    it = gd.minibatch({"i": np.arange(n, dtype=np.int32)}, batch, on_device=False)
    seen = np.concatenate([np.asarray(b.data["i"])[np.asarray(b.mask)] for b in it.iterate(KEY, epoch)])
    assert sorted(seen.tolist()) == list(range(n))


def test_on_device_none_decides_by_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = data(100)
    assert gd.minibatch(arrays, 10).on_device
    size = _sources.nbytes(arrays)
    monkeypatch.setattr(_sources, "free_bytes", lambda device=None: size)  # the data would take all of it
    it = gd.minibatch(arrays, 10)
    assert not it.on_device and "streamed from the host" in repr(it)
    assert gd.minibatch(arrays, 10, on_device=True).on_device, "True still places data that fits"
    monkeypatch.setattr(_sources, "free_bytes", lambda device=None: size - 1)
    with pytest.raises(ValueError, match=r"data takes 0\.00 GiB but the device has .* on_device=False to stream"):
        gd.minibatch(arrays, 10, on_device=True)


@pytest.mark.parametrize(
    ("bad", "kwargs", "error", "match"),
    [
        (lambda d: d, {"on_device": "yes"}, TypeError, "on_device must be True, False or None"),
        (lambda d: object(), {}, TypeError, "neither a pytree of arrays nor a random-access source"),
        (lambda d: Source({"x": d["x"][:0], "y": d["y"][:0]}), {}, ValueError, "data is empty"),
        (lambda d: {"x": d["x"], "y": d["y"][:-1]}, {"on_device": False}, ValueError, "must share the leading axis"),
        (
            lambda d: {"x": np.where(np.arange(30)[:, None] == 9, np.nan, d["x"])},
            {"on_device": False},
            ValueError,
            "row 9",
        ),
    ],
    ids=["on_device-type", "no-getitem", "empty-source", "lengths", "nan"],
)
def test_bad_streamed_input_is_refused_clearly(bad: Any, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        gd.minibatch(bad(data(30)), 8, **kwargs)


def test_a_source_that_returns_the_wrong_shape_is_refused() -> None:
    class Flat(Source):
        def __getitem__(self, idx: np.ndarray) -> dict[str, np.ndarray]:
            return {"x": self.arrays["x"][int(np.asarray(idx)[0])]}  # one row without its leading axis

    with pytest.raises(ValueError, match=r"leading axis of 1"):
        gd.minibatch(Flat(data(30)), 8)


def test_a_streamed_checkpoint_resumes_exactly_and_across_placements(tmp_path: Any) -> None:
    arrays = data()
    params = LINEAR.init(None, 4)
    run = lambda it, epochs, folder: gd.fit(  # noqa: E731
        LINEAR.loss, params, optax.sgd, it, epochs=epochs, key=KEY, learning_rate=0.05, checkpoint=folder
    )
    uninterrupted = run(gd.minibatch(arrays, 16), 4, None)
    run(gd.minibatch(arrays, 16, on_device=False), 2, tmp_path / "a")
    resumed = run(gd.minibatch(arrays, 16, on_device=False), 4, tmp_path / "a")
    assert resumed.resumed_from == 2 and same(resumed.params, uninterrupted.params)
    run(gd.minibatch(arrays, 16), 2, tmp_path / "b")
    across = run(gd.minibatch(arrays, 16, on_device=False), 4, tmp_path / "b")
    assert across.resumed_from == 2 and same(across.params, uninterrupted.params)


class Failing(Source):
    """A source whose reads start failing (or changing shape) once the run is under way."""

    def __init__(self, arrays: dict[str, np.ndarray], after: int, error: Exception | None):
        super().__init__(arrays)
        self.after, self.error = after, error

    def __getitem__(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        rows = super().__getitem__(idx)
        if self.reads > self.after:
            if self.error is not None:
                raise self.error
            return {"x": rows["x"][:, :2], "y": rows["y"]}
        return rows


@pytest.mark.parametrize(
    ("error", "raised", "match"),
    [
        (OSError("disk on fire"), OSError, "disk on fire"),
        (None, ValueError, r"returned data\['x'\] with shape \(\d+, 2\) .* had shape \(4,\) .* keep its shapes"),
    ],
    ids=["raises", "changes-shape"],
)
def test_a_source_that_fails_mid_run_raises_its_own_error(error: Any, raised: type, match: str) -> None:
    source = Failing(data(), after=10**9, error=error)
    it = gd.minibatch(source, 16)  # the checks read the source once per leaf: then the run's reads fail
    source.after = source.reads + 3
    with pytest.raises(raised, match=match) as info:
        fit(it)
    assert any("streamed data source" in note for note in getattr(info.value, "__notes__", []))
    assert fit(gd.minibatch(data(), 16, on_device=False)).num_epochs == 3, "the next run is unaffected"


def test_a_streamed_batch_too_large_to_hold_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = data(100)
    monkeypatch.setattr(_sources, "free_bytes", lambda device=None: 2 * _sources.nbytes(arrays))
    assert gd.minibatch(arrays, 10, on_device=False).chunk_steps >= 1, "small batches stream"
    with pytest.raises(ValueError, match=r"a batch of 100 examples takes .* three times .* smaller batch_size"):
        gd.full_batch(arrays, on_device=False)


def test_eval_data_of_another_dtype_is_refused_before_its_values_are_read() -> None:
    arrays = data(60)
    held = Source({"x": arrays["x"].astype(np.float16), "y": arrays["y"]})
    with pytest.raises(ValueError, match=r"eval_data\['x'\] has examples of shape \(4,\) and dtype float16"):
        fit(gd.minibatch(arrays, 16), eval_data=held)
    assert held.reads == 1, "only the probe of one row was read"


def test_a_source_read_error_names_the_rows_and_its_length() -> None:
    class Short(Source):
        def __len__(self) -> int:
            return super().__len__() + 1  # one row more than it holds

    with pytest.raises(IndexError) as info:
        gd.minibatch(Short(data(30)), 8)
    assert any("its len() is 31: every index below it must be readable" in n for n in info.value.__notes__)
