"""Streamed data: examples read from the host in the compiled program's order, with a read ahead.

A streamed :class:`gdjax.DataIterator` keeps its data where it is (numpy
arrays, memmaps, or a random-access source with ``__len__`` and
``__getitem__`` of an index array) and hands the compiled program a
:class:`Stream`: a small integer token (a traced input, so programs are
shared between data sets of the same shapes) and a static :class:`Spec`.
The program asks for rows with :func:`take` (the rows of an index array, a
block of steps' batches at a time) and :func:`rows` (a contiguous block, for
full-data passes); both are ``jax.pure_callback`` calls that the host
answers from the :class:`Reader` the token names.

Every request also names the rows the program will ask for next. The reader
starts reading those on a background thread at once, so the read and the
copy of the next block overlap with the computation on the current one
(double buffering); a request whose rows were read ahead is answered
without waiting. Answers are kept by content in a small cache, so several
devices asking for the same block (a sweep split over a mesh) read it once.

The indices are those the on-device program gathers (the same traced
:func:`gdjax.shuffle.permute`), so streamed and on-device runs see the same
batches bit for bit. The data must not change while a run reads it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gdjax._types import PyTree

#: Bytes of examples one block of streamed steps reads (the read-ahead holds two or three such blocks).
CHUNK_BYTES = 8 << 20
#: Answers kept per reader (by content): the current block, the one read ahead, and one for a second device.
_KEEP = 4


def example_layout(leaves: list[Any]) -> tuple[tuple[tuple[int, ...], np.dtype], ...]:
    """``(shape, dtype)`` of one example of each leaf, in the dtype JAX uses."""
    return tuple((tuple(int(d) for d in x.shape[1:]), np.dtype(jax.dtypes.canonicalize_dtype(x.dtype))) for x in leaves)


def row_bytes(rows: tuple[tuple[tuple[int, ...], np.dtype], ...]) -> int:
    """Bytes of one example with leaves of these ``(shape, dtype)``."""
    return sum(int(np.prod(shape, dtype=np.int64)) * dt.itemsize for shape, dt in rows)


def read_batches(row_bytes: int, batch_size: int) -> int:
    """Batches of ``batch_size`` examples of ``row_bytes`` each that one read of a streamed epoch takes."""
    return max(1, CHUNK_BYTES // max(1, batch_size * row_bytes))


class Spec(NamedTuple):
    """The static description of streamed data: equal specs share compiled programs.

    Attributes:
      treedef: the structure of one example's pytree.
      rows: ``(shape, dtype)`` of one example of each leaf (the dtype gdjax uses).
      chunk_steps: batches one :func:`take` of a training epoch reads.
    """

    treedef: Any
    rows: tuple[tuple[tuple[int, ...], np.dtype], ...]
    chunk_steps: int

    def shapes(self, lead: tuple[int, ...]) -> list[jax.ShapeDtypeStruct]:
        return [jax.ShapeDtypeStruct(lead + shape, dtype) for shape, dtype in self.rows]


class Stream(NamedTuple):
    """What a streamed iterator carries: the reader's token (traced in programs), the spec, the reader (host)."""

    token: Any
    spec: Spec
    reader: Reader | None


class Reader:
    """Reads examples of host data by index, with one read ahead on a background thread.

    A failed read (the source raised, or returned rows of another shape) is
    kept in :attr:`error` for the host to raise as itself once the program
    has stopped (:func:`wait`); :meth:`cancel` makes every later read fail, so
    an interrupted run stops at its next read.

    Args:
      read: ``read(indices) -> list of numpy arrays`` (one per leaf, the
        rows of the flat int64 ``indices`` in their order).
      dtypes: the dtype each leaf is given as (float64 becomes float32 without x64).
      rows: the shape of one example of each leaf.
      names: each leaf's name in messages (``data['x']``).
    """

    def __init__(
        self,
        read: Callable[[np.ndarray], Sequence[np.ndarray]],
        dtypes: Sequence[np.dtype],
        rows: Sequence[tuple[int, ...]],
        names: Sequence[str] = (),
    ):
        self._read = read
        self._dtypes = list(dtypes)
        self._rows = [tuple(r) for r in rows]
        self._names = list(names) or [f"leaf {i}" for i in range(len(self._rows))]
        self.error: BaseException | None = None
        self.cancelled = False
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[Any, concurrent.futures.Future] = collections.OrderedDict()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.data: PyTree = None  # the host data it reads (set by the iterator that owns it)
        self.token = next(_TOKENS)
        _READERS[self.token] = self

    def take(self, idx: np.ndarray) -> list[np.ndarray]:
        """The rows at the flat indices ``idx``, in that order, as the dtypes gdjax uses."""
        idx = np.asarray(idx, np.int64)
        leaves = [np.asarray(x, d) for x, d in zip(self._read(idx), self._dtypes, strict=True)]
        for name, x, row in zip(self._names, leaves, self._rows, strict=True):
            if x.shape != (len(idx), *row):
                raise ValueError(
                    f"the data source returned {name} with shape {x.shape} for {len(idx)} rows, but its examples "
                    f"had shape {row} when the iterator was built: a source must keep its shapes while a run reads it."
                )
        return leaves

    def guard(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on behalf of a running program: a failure is kept in :attr:`error` and stops the program."""
        if self.cancelled:
            raise RuntimeError("gdjax: the run was interrupted; stopping at this read of the streamed data.")
        try:
            return fn()
        except Exception as exc:
            self.error = self.error or exc
            raise RuntimeError(
                f"gdjax: reading the streamed data failed ({type(exc).__name__}); the run stops and gdjax raises it."
            ) from None

    def cancel(self) -> None:
        """Make every later read of a running program fail (an interrupted run stops at its next read)."""
        self.cancelled = True

    def get(self, key: Any, fn: Callable[[], list[np.ndarray]]) -> list[np.ndarray]:
        """``fn()``, or its answer read ahead under ``key``."""
        with self._lock:
            future = self._cache.get(key)
            if future is not None:
                self._cache.move_to_end(key)
        if future is None:
            return self._put(key, fn()).result()
        return future.result()

    def ahead(self, key: Any, fn: Callable[[], list[np.ndarray]]) -> None:
        """Start ``fn()`` on the background thread, to be answered under ``key``."""
        with self._lock:
            if key in self._cache:
                return
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gdjax-read-ahead")
            self._store(key, self._pool.submit(fn))

    def _put(self, key: Any, value: list[np.ndarray]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(value)
        with self._lock:
            self._store(key, future)
        return future

    def _store(self, key: Any, future: concurrent.futures.Future) -> None:
        self._cache[key] = future
        while len(self._cache) > _KEEP:
            self._cache.popitem(last=False)

    def close(self) -> None:
        """Drop the cache and stop the read-ahead thread (a later read starts it again)."""
        with self._lock:
            pool, self._pool = self._pool, None
            self._cache.clear()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # at most the read under way
        self.cancelled = False


def readers(tree: PyTree) -> list[Reader]:
    """The readers of the streamed iterators in ``tree`` (a run's inputs)."""
    from gdjax.data import DataIterator  # data imports this module

    found = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, DataIterator))
    streams = [x.stream for x in found if isinstance(x, DataIterator) and x.stream is not None]
    return list({id(s.reader): s.reader for s in streams if s.reader is not None}.values())


def wait(run: Callable[[], PyTree], readers: Sequence[Reader]) -> PyTree:
    """``jax.block_until_ready(run())`` for a program reading streamed data: Ctrl-C stops it; a source error is raised.

    The program runs on a worker thread (a program with host reads may run to its end inside the call that
    starts it) while the caller waits in short sleeps, so a KeyboardInterrupt reaches it at once; the readers
    are then cancelled, which stops the program at its next read. A read that failed is raised as the
    source's own exception once the program has stopped, not as XLA's runtime error.
    """
    if not readers:
        return jax.block_until_ready(run())
    with _quiet_callback_log():
        return _wait(run, readers)


@contextlib.contextmanager
def _quiet_callback_log() -> Iterator[None]:
    """JAX logs a failed callback's traceback; gdjax raises the cause itself, so that log is only noise."""
    log = logging.getLogger("jax._src.callback")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _wait(run: Callable[[], PyTree], readers: Sequence[Reader]) -> PyTree:
    box: list[tuple[bool, Any]] = []
    done = threading.Event()  # waited on, not Thread.join: a join interrupted by Ctrl-C may return early later

    def work() -> None:
        box.append(_outcome(run))
        done.set()

    threading.Thread(target=work, name="gdjax-run", daemon=True).start()
    try:
        while not done.wait(0.01):
            pass
    except KeyboardInterrupt:
        for r in readers:
            r.cancel()
        done.wait()
        raise
    finally:
        error = next((r.error for r in readers if r.error is not None), None)
        for r in readers:
            r.error, r.cancelled = None, False
    ok, value = box[0]
    if ok:
        return value
    if error is not None:
        error.add_note("gdjax: raised by the streamed data source while a compiled run read it; the run stopped.")
        raise error from None
    raise value


def _outcome(run: Callable[[], PyTree]) -> tuple[bool, Any]:
    try:
        return True, jax.block_until_ready(run())
    except BaseException as exc:  # handed to the waiting thread
        return False, exc


_TOKENS = itertools.count(1)
_READERS: weakref.WeakValueDictionary[int, Reader] = weakref.WeakValueDictionary()


def lookup(token: Any) -> Reader | None:
    """The reader a concrete token names (None for a tracer or an unknown token)."""
    try:
        return _READERS.get(int(np.asarray(token).reshape(-1)[0]))
    except (
        TypeError,
        ValueError,
        IndexError,
        jax.errors.ConcretizationTypeError,
        jax.errors.TracerIntegerConversionError,
    ):
        return None


def _reader(token: np.ndarray) -> Reader:
    reader = lookup(token)
    if reader is None:
        raise RuntimeError(
            "gdjax: the streamed data this program reads is gone (its DataIterator was deleted); keep it alive while "
            "the run uses it."
        )
    return reader


def take_key(idx: np.ndarray) -> tuple[str, bytes]:
    """The cache key of a read of the rows ``idx`` names (its entries from 0; -1 pads a read ahead)."""
    return ("take", valid(idx).tobytes())


def valid(idx: np.ndarray) -> np.ndarray:
    """The entries of ``idx`` from 0 on, flattened (int64)."""
    flat = np.asarray(idx, np.int64).reshape(-1)
    return flat[flat >= 0]


def answer(reader: Reader, idx: np.ndarray) -> list[np.ndarray]:
    """The rows at ``idx`` (every entry from 0), shaped ``idx.shape + row``: read ahead, or read now."""
    rows = reader.get(take_key(idx), functools.partial(reader.take, valid(idx)))
    return [x.reshape(*np.shape(idx), *x.shape[1:]) for x in rows]


def read_ahead(reader: Reader, idx: np.ndarray) -> None:
    """Start reading the rows at ``idx`` (-1 entries skipped) on the reader's background thread."""
    if np.any(np.asarray(idx) >= 0):
        reader.ahead(take_key(idx), functools.partial(reader.take, valid(idx)))


def _host_take(token: np.ndarray, idx: np.ndarray, upcoming: np.ndarray) -> tuple[np.ndarray, ...]:
    reader = _reader(token)
    out = reader.guard(lambda: answer(reader, idx))
    read_ahead(reader, upcoming)
    return tuple(out)


def take(stream: Stream, idx: jax.Array, upcoming: jax.Array | None = None) -> PyTree:
    """The examples at ``idx`` (traced; any shape), read on the host; ``upcoming`` is read ahead (-1: none)."""
    upcoming = jnp.full((1,), -1, jnp.int32) if upcoming is None else upcoming
    shapes = stream.spec.shapes(tuple(idx.shape))
    out = jax.pure_callback(_host_take, shapes, stream.token, idx, upcoming, vmap_method="broadcast_all")
    return jax.tree.unflatten(stream.spec.treedef, list(out))


def _host_rows(token: np.ndarray, start: np.ndarray, next_start: np.ndarray, count: int) -> tuple[np.ndarray, ...]:
    reader = _reader(token)
    starts, nexts = np.asarray(start).reshape(-1), np.asarray(next_start).reshape(-1)
    read = lambda s: functools.partial(reader.take, np.arange(s, s + count, dtype=np.int64))  # noqa: E731
    blocks = []
    for at, then in zip(starts.tolist(), nexts.tolist(), strict=True):  # one block, or one per member under vmap
        blocks.append(reader.guard(functools.partial(reader.get, ("rows", at, count), read(at))))
        if then != at:
            reader.ahead(("rows", then, count), read(then))
    lead = np.shape(start)
    if len(blocks) == 1:
        return tuple(leaf.reshape(*lead, *leaf.shape) for leaf in blocks[0])
    return tuple(np.stack(leaf).reshape(*lead, *leaf[0].shape) for leaf in zip(*blocks, strict=True))


def rows(stream: Stream, start: jax.Array, count: int, next_start: jax.Array | None = None) -> PyTree:
    """Rows ``[start, start + count)`` (traced), read on the host; the block at ``next_start`` is read ahead."""
    next_start = start if next_start is None else next_start
    shapes = stream.spec.shapes((count,))
    host = functools.partial(_host_rows, count=count)
    start, next_start = jnp.asarray(start, jnp.int32), jnp.asarray(next_start, jnp.int32)
    out = jax.pure_callback(host, shapes, stream.token, start, next_start, vmap_method="broadcast_all")
    return jax.tree.unflatten(stream.spec.treedef, list(out))
