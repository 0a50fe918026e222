"""Data parallelism for one run (``fit(..., devices=[...])``): batches split over devices, the rest replicated.

The run is the same program as on one device, compiled for a one-axis mesh
(:data:`BATCH_AXIS`) of the devices: params, optimizer state, model state
and the data set are replicated on every device, and each batch (its
indices, then its examples) and each block of a full-data pass is split
along its leading axis with a sharding constraint, so every device computes
the loss and gradient of its share of the examples and XLA sums the
partial gradients across devices (an all-reduce) before the update, which
every device then applies alike. Only the order of that sum differs from
one device: results agree to float tolerance, and from run to run bit for
bit. The batch size must divide by the device count (each device the same
number of rows): refused before compiling otherwise.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gdjax import _distributed
from gdjax._types import PyTree
from gdjax.data import DataIterator

#: The name of the mesh axis a data-parallel run splits its batches along.
BATCH_AXIS = "batch"


def _divisors(n: int, most: int) -> list[int]:
    return [k for k in range(1, most + 1) if n % k == 0]


def mesh(devices: list[jax.Device], it: DataIterator) -> Mesh | None:
    """The mesh a run on ``devices`` is split over (None for one device).

    Raises:
      ValueError: the batch size does not divide by the number of devices (with the sizes that would).
    """
    count = len(devices)
    if count == 1:
        return None
    b = it.batch_size
    if b % count:
        lower, upper = b // count * count, (b // count + 1) * count
        sizes = f"batch_size={upper}" if lower == 0 else f"batch_size={lower} or {upper}"
        fits = max(_divisors(b, count))
        raise ValueError(
            f"the batch of {b} example{'s' if b != 1 else ''} cannot be split evenly over {count} devices (each "
            f"device takes the same number of rows): use {sizes}, or devices=jax.devices()[:{fits}] "
            f"({fits} device{'s' if fits != 1 else ''} divide{'s' if fits == 1 else ''} {b})."
        )
    return Mesh(np.array(devices), (BATCH_AXIS,))


def sharding(m: Mesh) -> NamedSharding:
    """Rows split over the mesh (a batch, a block of a full-data pass)."""
    return NamedSharding(m, P(BATCH_AXIS))


def split(data_sharding: Any, tree: PyTree) -> PyTree:
    """``tree`` (arrays with a leading axis of rows) split along it, or as it is without a sharding."""
    if data_sharding is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, data_sharding)


def whole(data_sharding: Any, tree: PyTree) -> PyTree:
    """Rows read from the host (streamed data: by the first device's process) sent whole to every device.

    The callback answers on one device; XLA would otherwise warn that it splits that answer the slow way
    (by sending it whole first, which this does without the warning).
    """
    if data_sharding is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, NamedSharding(data_sharding.mesh, P()))


def replicated(m: Mesh | None, tree: PyTree) -> PyTree:
    """``tree`` (traced) held whole by every device of the mesh, as the run's outputs are."""
    return tree if m is None else jax.lax.with_sharding_constraint(tree, NamedSharding(m, P()))


def place(tree: PyTree, m: Mesh) -> PyTree:
    """The run's inputs, replicated on every device of the mesh (each process writes its own)."""
    return _distributed.put(tree, NamedSharding(m, P()))
