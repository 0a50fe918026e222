"""The data iterator: single samples, full batch or shuffled mini-batches.

A :class:`DataIterator` holds a pytree of arrays that share a leading axis of
``N`` examples and a static batch shape. The data is placed on the device
once, or (``on_device=False``, or by size with the default ``None``) left
where it is, numpy arrays, memmaps or a random-access source, and streamed:
the compiled program reads the same batches from the host a block at a time
(:mod:`gdjax._stream`). It has two faces that yield the same batches:

* the **compiled face**, used inside ``jit``/``scan``/``vmap``:
  :meth:`DataIterator.epoch_indices` gives the whole epoch's indices and
  masks, :meth:`DataIterator.gather` gathers one batch on the device, and the
  pair :meth:`DataIterator.init` / :meth:`DataIterator.next` steps through the
  data one batch at a time with an :class:`IteratorState` that is just
  ``(key, epoch, batch)``, so a run can stop and resume mid-epoch exactly;
* the **host face** :meth:`DataIterator.iterate`, a Python generator for
  hand-written loops.

Contract:

* one epoch visits every example exactly once, in an order drawn from
  ``(key, epoch)`` by :mod:`gdjax.shuffle` (or in storage order when
  ``shuffle=False``);
* every batch has the static shape ``batch_size``; the ragged last batch is
  padded (with copies of a real example) and its :attr:`Batch.mask` marks the
  padding ``False``, so losses weighted by the mask are exact;
* only ``drop_remainder=True`` skips examples: exactly ``N % batch_size`` of
  them per epoch, a different set each epoch when shuffled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gdjax import _sources, _stream, _validate, _validate_data
from gdjax._types import PyTree, ceil_div
from gdjax.shuffle import permute, round_keys

__all__ = ["Batch", "DataIterator", "IteratorState", "full_batch", "minibatch", "stochastic"]


class Batch(NamedTuple):
    """One batch of examples.

    Attributes:
      data: the pytree of ``data`` with a leading axis of ``batch_size``.
      mask: bool array of shape ``(batch_size,)``; ``False`` marks padding.
    """

    data: PyTree
    mask: jax.Array


class IteratorState(NamedTuple):
    """Where an iterator stands: a small pytree that jit, scan and vmap carry.

    Attributes:
      key: the PRNG key the epoch orders are drawn from.
      epoch: int32 scalar, the current epoch (from 0).
      batch: int32 scalar, the next batch of that epoch (from 0).
    """

    key: jax.Array
    epoch: jax.Array
    batch: jax.Array


@dataclasses.dataclass(frozen=True)
class DataIterator:
    """Batches over a pytree of arrays that share a leading axis.

    Build one with :func:`minibatch`, :func:`stochastic` or :func:`full_batch`
    rather than directly. It is a pytree whose leaves are the data arrays, so
    it can be passed into ``jax.jit`` as an argument.

    Attributes:
      data: the pytree of device arrays, each with leading axis ``num_examples``.
      num_examples: ``N``, the examples in the data.
      batch_size: the static batch size ``B``.
      shuffle: whether each epoch has a fresh order drawn from ``(key, epoch)``.
      drop_remainder: whether the last ``N % B`` examples of each epoch's
        order are skipped instead of padded.
      stream: for streamed data (``on_device=False``), how the compiled
        program reads it from the host (:mod:`gdjax._stream`); None when
        the data is on the device.
    """

    data: PyTree
    num_examples: int
    batch_size: int
    shuffle: bool
    drop_remainder: bool
    stream: _stream.Stream | None = dataclasses.field(default=None, compare=False)

    @property
    def on_device(self) -> bool:
        """Whether the data is on the device (False: streamed from where it lives, read in the epoch's order)."""
        return self.stream is None

    def __repr__(self) -> str:
        where = "on the device" if self.on_device else "streamed from the host"
        return (
            f"DataIterator(N={self.num_examples}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_remainder={self.drop_remainder}, data {where})"
        )

    @property
    def num_batches(self) -> int:
        """Batches (steps) per epoch."""
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_remainder else ceil_div(n, b)

    @property
    def examples_per_epoch(self) -> int:
        """Examples that carry weight in one epoch (``N`` unless dropping)."""
        if self.drop_remainder:
            return self.num_batches * self.batch_size
        return self.num_examples

    @property
    def padded(self) -> bool:
        """Whether an epoch has a batch with padding rows (its mask not all True): known before compiling."""
        return self.num_batches * self.batch_size != self.examples_per_epoch

    @property
    def spec(self) -> tuple[int, int, bool, bool]:
        """The static part ``(N, B, shuffle, drop_remainder)``: equal specs share compiled code."""
        return (self.num_examples, self.batch_size, self.shuffle, self.drop_remainder)

    # ----- the compiled face -------------------------------------------------

    def indices(self, key: jax.Array, epoch: jax.Array | int, batch: jax.Array | int) -> tuple[jax.Array, jax.Array]:
        """Indices and mask of one batch of one epoch; traceable.

        Args:
          key: PRNG key of the run.
          epoch: epoch number (may be traced).
          batch: batch number within the epoch, in ``[0, num_batches)``.

        Returns:
          ``(idx, mask)``: int32 ``(batch_size,)`` indices into the data and
          the bool mask; padded slots point at a real example and are masked.
        """
        positions = batch * self.batch_size + jnp.arange(self.batch_size, dtype=jnp.int32)
        return self._lookup(key, epoch, positions)

    def epoch_indices(
        self, key: jax.Array, epoch: jax.Array | int, count: int | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Indices and masks of every batch of one epoch (or of its first ``count``); traceable.

        Returns:
          ``(idx, mask)`` of shapes ``(num_batches, batch_size)``; row ``b``
          equals ``self.indices(key, epoch, b)``.
        """
        count = self.num_batches if count is None else count
        positions = jnp.arange(count * self.batch_size, dtype=jnp.int32)
        idx, mask = self._lookup(key, epoch, positions)
        shape = (count, self.batch_size)
        return idx.reshape(shape), mask.reshape(shape)

    def _lookup(self, key: jax.Array, epoch: jax.Array | int, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        if isinstance(epoch, int | np.integer):
            _check_epoch(epoch)
        n = self.num_examples
        mask = positions < n
        positions = jnp.where(mask, positions, 0)
        idx = permute(positions, round_keys(key, epoch), n) if self.shuffle else positions
        return idx, mask

    def gather(self, idx: jax.Array, mask: jax.Array, upcoming: jax.Array | None = None) -> Batch:
        """The batch at ``idx`` (from :meth:`indices`; any leading shape), gathered on the device.

        For streamed data the rows are read on the host; ``upcoming`` (indices,
        -1 for none) names the rows the next call will ask for, read ahead.
        """
        if self.stream is not None:
            return Batch(_stream.take(self.stream, idx, upcoming), mask)
        if self.is_whole_data and idx.ndim == 1:
            return Batch(self.data, mask)
        return Batch(take_rows(self.data, idx), mask)

    def read(self, start: jax.Array | int, count: int, next_start: jax.Array | int | None = None) -> PyTree:
        """Rows ``[start, start + count)`` of the data, in storage order (traceable; ``count`` static).

        ``next_start`` is where the caller reads next (streamed data reads it ahead).
        """
        if self.stream is not None:
            return _stream.rows(
                self.stream, jnp.asarray(start), count, None if next_start is None else jnp.asarray(next_start)
            )
        return slice_rows(self.data, start, count)

    @property
    def chunk_steps(self) -> int:
        """Batches a streamed epoch reads from the host at a time (for data on the device: would read)."""
        if self.stream is not None:
            return min(self.num_batches, self.stream.spec.chunk_steps)
        row_bytes = _stream.row_bytes(_stream.example_layout(jax.tree.leaves(self.data)))
        return min(self.num_batches, _stream.read_batches(row_bytes, self.batch_size))

    @property
    def is_whole_data(self) -> bool:
        """True when every batch is the data itself in storage order (full batch, unshuffled)."""
        return self.batch_size == self.num_examples and not self.shuffle

    def init(self, key: jax.Array) -> IteratorState:
        """The state at the start of epoch 0 for ``key``."""
        key = _validate.check_key(key)
        zero = jnp.zeros((), jnp.int32)
        return IteratorState(key, zero, zero)

    def next(self, state: IteratorState) -> tuple[Batch, IteratorState]:
        """The batch at ``state`` and the state after it; pure and traceable.

        Example:
          >>> import jax, jax.numpy as jnp, gdjax as gd
          >>> it = gd.minibatch(jnp.arange(10.0), batch_size=4)
          >>> batch, state = it.next(it.init(jax.random.key(0)))
          >>> batch.data.shape, int(state.batch)
          ((4,), 1)
        """
        idx, mask = self.indices(state.key, state.epoch, state.batch)
        nxt = state.batch + 1
        wrap = nxt >= self.num_batches
        new = IteratorState(state.key, state.epoch + wrap.astype(jnp.int32), jnp.where(wrap, 0, nxt).astype(jnp.int32))
        return self.gather(idx, mask), new

    # ----- the host face -----------------------------------------------------

    def iterate(self, key: jax.Array, epoch: int = 0, *, start: int = 0) -> Iterator[Batch]:
        """Yield the batches of one epoch, for hand-written Python loops.

        These are the batches the compiled loops use for the same key and
        epoch, bit for bit, gathered on the device.

        Args:
          key: PRNG key of the run.
          epoch: which epoch's order to use, in ``[0, 2**31)`` (epochs are int32).
          start: the first batch to yield (to resume mid-epoch).

        Yields:
          :class:`Batch` values, ``num_batches - start`` of them.

        Example:
          >>> import jax, jax.numpy as jnp, gdjax as gd
          >>> it = gd.minibatch({"x": jnp.ones((10, 3))}, batch_size=4)
          >>> [int(b.mask.sum()) for b in it.iterate(jax.random.key(0))]
          [4, 4, 2]
        """
        key = _validate.check_key(key)
        epoch = _check_epoch(epoch)
        start = _validate.check_positive_int(start, "start", low=0, high=self.num_batches)
        idx, mask = _epoch_indices(self, key, epoch)
        if self.stream is None:
            for b in range(start, self.num_batches):
                yield _gather(self, idx[b], mask[b])
            return
        reader, treedef = self.stream.reader, self.stream.spec.treedef
        assert reader is not None
        order = np.asarray(idx).astype(np.int64)
        for b in range(start, self.num_batches):
            if b + 1 < self.num_batches:
                _stream.read_ahead(reader, order[b + 1])
            rows = _stream.answer(reader, order[b])
            yield Batch(jax.tree.unflatten(treedef, [jax.device_put(x) for x in rows]), mask[b])

    def __iter__(self):
        raise TypeError("A DataIterator needs a key to iterate: use it.iterate(jax.random.key(seed), epoch=0).")


def take_rows(data: PyTree, idx: jax.Array) -> PyTree:
    """The examples of ``data`` (device arrays) at ``idx``, any shape of indices (traceable)."""
    return jax.tree.map(lambda x: jnp.take(x, idx, axis=0, mode="clip"), data)


def slice_rows(data: PyTree, start: jax.Array | int, count: int) -> PyTree:
    """Rows ``[start, start + count)`` of ``data`` (device arrays; ``count`` static, traceable)."""
    return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, count), data)


def _flatten(it: DataIterator) -> tuple[tuple[Any], tuple]:
    spec = None if it.stream is None else it.stream.spec
    aux = (it.num_examples, it.batch_size, it.shuffle, it.drop_remainder, spec)
    if it.stream is None:
        return (it.data,), aux
    token = it.stream.token
    return (np.int32(token) if isinstance(token, int) else token,), aux


def _unflatten(aux: tuple, children: tuple[Any]) -> DataIterator:
    n, b, shuffle, drop, spec = aux
    (child,) = children
    if spec is None:
        return DataIterator(child, n, b, shuffle, drop)
    reader = _stream.lookup(child)  # a concrete token names its reader; inside a trace only the spec is known
    data = reader.data if reader is not None else jax.tree.unflatten(spec.treedef, spec.shapes((n,)))
    return DataIterator(data, n, b, shuffle, drop, _stream.Stream(child, spec, reader))


jax.tree_util.register_pytree_node(DataIterator, _flatten, _unflatten)


#: The largest epoch number: epochs are int32 in the compiled programs (and uint32 in the shuffle's key).
MAX_EPOCH = 2**31 - 1


def _check_epoch(epoch: Any) -> int:
    epoch = _validate.check_positive_int(epoch, "epoch", low=0)
    if epoch > MAX_EPOCH:
        raise ValueError(
            f"epoch must be at most 2**31 - 1 = {MAX_EPOCH} (epochs are int32 in the compiled order); got {epoch}."
        )
    return epoch


@jax.jit
def _epoch_indices(it: DataIterator, key: jax.Array, epoch: jax.Array) -> tuple[jax.Array, jax.Array]:
    return it.epoch_indices(key, epoch)


@jax.jit
def _gather(it: DataIterator, idx: jax.Array, mask: jax.Array) -> Batch:
    return it.gather(idx, mask)


def minibatch(
    data: PyTree, batch_size: int, *, shuffle: bool = True, drop_remainder: bool = False, on_device: bool | None = None
) -> DataIterator:
    """Mini-batches of ``batch_size`` examples, reshuffled every epoch.

    Args:
      data: a pytree of arrays (numpy, memmaps or JAX) that share a leading
        axis of ``N`` examples, for example ``{"x": X, "y": y}`` or
        ``(X, y)``; or a random-access source: an object with ``__len__``
        and ``__getitem__(index_array)`` returning the pytree of those
        examples (a grain data source, an adapter over an h5py file).
      batch_size: examples per batch, in ``[1, N]``.
      shuffle: draw a fresh order each epoch from ``(key, epoch)``; with
        ``False`` batches follow storage order.
      drop_remainder: skip the last ``N % batch_size`` examples of each
        epoch's order instead of padding them into a masked last batch.
      on_device: ``True`` places the data on the device once; ``False``
        leaves it where it is and streams it: the compiled run reads each
        block of batches from the host in the epoch's order (the same
        batches, bit for bit), reading the next block while it computes on
        this one. ``None`` (the default) places arrays that take at most
        half the device's free memory and streams the rest (and random-access
        sources); ``repr`` and the results say which.

    Returns:
      A :class:`DataIterator`.

    Raises:
      ValueError: leading axes differ, data is empty, has a zero-length
        feature axis or a non-finite value, ``batch_size`` is out of range, or
        ``on_device=True`` and the data does not fit the device's free memory.
      TypeError: a leaf is not a real-valued array, a source lacks
        ``__len__``/``__getitem__``, or ``batch_size`` is not an integer.

    Example:
      >>> import numpy as np, gdjax as gd
      >>> it = gd.minibatch({"x": np.zeros((100, 3), np.float32), "y": np.zeros(100, np.float32)}, batch_size=32)
      >>> it.num_batches, it.batch_size, it.on_device
      (4, 32, True)
      >>> gd.minibatch(np.zeros((100, 3), np.float32), 32, on_device=False)
      DataIterator(N=100, batch_size=32, shuffle=True, drop_remainder=False, data streamed from the host)
    """
    return _build(data, batch_size, shuffle, drop_remainder, on_device)


def _build(
    data: PyTree,
    batch_size: int | None,
    shuffle: bool,
    drop_remainder: bool,
    on_device: bool | None,
    root: str = "data",
) -> DataIterator:
    """Check everything and build the iterator; ``batch_size=None`` means ``N``; ``root`` names the argument."""
    if isinstance(data, DataIterator):
        raise TypeError(f"{root} is already a DataIterator; pass its .data to build another one.")
    if not isinstance(shuffle, bool):
        raise TypeError(f"shuffle must be True or False; got {shuffle!r}.")
    if not isinstance(drop_remainder, bool):
        raise TypeError(f"drop_remainder must be True or False; got {drop_remainder!r}.")
    tree = _sources.as_tree(data, root)
    shaped = all(hasattr(x, "shape") for _, x in _validate.leaves_with_paths(tree, root))
    device = _sources.place(on_device, tree, root) if shaped else on_device is not False  # else check_tree says why
    if device:
        tree = _sources.load(tree)
    leaves = _validate_data.check_tree(tree, root, convert=device)
    n = leaves[0][1].shape[0]
    batch_size = n if batch_size is None else _validate.check_positive_int(batch_size, "batch_size", low=1, high=n)
    treedef = jax.tree.structure(tree)
    if device:
        arrays = jax.tree.unflatten(treedef, [jax.device_put(leaf) for _, leaf in leaves])
        return DataIterator(arrays, n, batch_size, shuffle, drop_remainder)
    host = jax.tree.unflatten(treedef, [leaf for _, leaf in leaves])
    return DataIterator(host, n, batch_size, shuffle, drop_remainder, _sources.stream(host, batch_size))


def stochastic(data: PyTree, *, shuffle: bool = True, on_device: bool | None = None) -> DataIterator:
    """One example per step, shuffled each epoch: stochastic gradient descent (``on_device`` as in :func:`minibatch`).

    Example:
      >>> import numpy as np, gdjax as gd
      >>> gd.stochastic(np.zeros((50, 2), np.float32)).num_batches
      50
    """
    return _build(data, 1, shuffle, False, on_device)


def full_batch(data: PyTree, *, on_device: bool | None = None) -> DataIterator:
    """All ``N`` examples in every step, one step per epoch: batch gradient descent.

    ``on_device`` is as in :func:`minibatch`; streamed, every step reads the whole data set.

    Example:
      >>> import numpy as np, gdjax as gd
      >>> gd.full_batch(np.zeros((50, 2), np.float32)).num_batches
      1
    """
    return _build(data, None, False, False, on_device)
