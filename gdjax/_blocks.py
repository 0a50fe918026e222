"""Full-data passes in blocks of rows, so their temporaries do not grow with the data (traced).

A full-data loss, a metric or an aux mean over ``N`` examples is computed as
a ``lax.scan`` over blocks of ``rows`` examples. Each block is a masked
:class:`gdjax.Batch`: the last block starts at ``N - rows`` (it never reads
past the data, so nothing is padded or copied) and masks the rows an
earlier block already counted. The block means are summed weighted by their
real rows and divided by ``N``, which is the mean over the data as long as
the measured function is a masked mean (as gdjax's losses, metrics and aux
are). A sweep's members share each block: under ``vmap`` the block is read
once and only the model's work is batched, so the temporaries are
``O(rows x features x members)``, not ``O(N x members)``.

A data set no larger than one block is measured in one piece, exactly as
without blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gdjax._types import PyTree, ceil_div
from gdjax.data import Batch, slice_rows

#: The values (rows times values per row, all leaves) one block of a full-data pass reads: 4 MiB of float32.
BLOCK_ELEMENTS = 1 << 20


class Rows(NamedTuple):
    """A data set as a full-data pass reads it.

    Attributes:
      read: ``read(start, count, next_start)`` returns rows ``[start, start + count)``
        as a pytree (traceable; ``next_start`` is where the pass reads next, a hint
        for streamed data).
      num_examples: ``N``.
      rows: the rows per block.
    """

    read: Callable[[Any, int, Any], PyTree]
    num_examples: int
    rows: int


def block_rows(data: PyTree, batch_size: int, elements: int = BLOCK_ELEMENTS) -> int:
    """Rows per block for ``data`` (leaves with a leading axis of examples): at least one batch, at most ``N``."""
    leaves = jax.tree.leaves(data)
    n = int(leaves[0].shape[0])
    per_row = sum(int(np.prod(x.shape[1:], dtype=np.int64)) for x in leaves)
    return int(min(n, max(batch_size, elements // max(1, per_row))))


def slicer(data: PyTree) -> Callable[[Any, int, Any], PyTree]:
    """``read`` for a pytree of device arrays: a dynamic slice of every leaf."""

    def read(start: Any, count: int, next_start: Any = None) -> PyTree:
        return slice_rows(data, start, count)

    return read


def mean(fn: Callable[[Batch], jax.Array], data: Rows) -> jax.Array:
    """The mean of ``fn`` (a vector of masked means over a batch) over every example of ``data``."""
    n, rows = data.num_examples, data.rows
    if rows >= n:
        return fn(Batch(data.read(0, n, 0), jnp.ones((n,), bool)))
    count = ceil_div(n, rows)
    first = lambda i: jnp.minimum(i * rows, n - rows)  # noqa: E731

    def block(total: jax.Array, i: jax.Array) -> tuple[jax.Array, None]:
        start = first(i)
        mask = start + jnp.arange(rows, dtype=jnp.int32) >= i * rows
        value = fn(Batch(data.read(start, rows, first(i + 1)), mask))
        return total + value * jnp.sum(mask, dtype=jnp.int32).astype(value.dtype), None

    shape = jax.eval_shape(lambda: fn(Batch(data.read(0, rows, 0), jnp.ones((rows,), bool))))
    total, _ = jax.lax.scan(block, jnp.zeros(shape.shape, shape.dtype), jnp.arange(count, dtype=jnp.int32))
    return total / jnp.asarray(n, total.dtype)
