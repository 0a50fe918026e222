"""The checks of :func:`gdjax.study` that run before anything is compiled, and its per-batch-size iterators.

The data is checked once (by :func:`gdjax.minibatch`) and every batch size's
iterator shares the checked arrays: a study of 12 batch sizes does not scan
(or place on the device) its data 12 times.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from gdjax import _plan, _sources, _validate
from gdjax._types import PyTree
from gdjax.data import DataIterator, minibatch

__all__ = ["check_batch_sizes", "check_learning_rates", "check_target", "default_batch_sizes", "iterators"]


def default_batch_sizes(n: int) -> list[int]:
    """Powers of two from 1 up to ``n``, and ``n`` itself if it is not one.

    Example:
      >>> default_batch_sizes(100)
      [1, 2, 4, 8, 16, 32, 64, 100]
      >>> default_batch_sizes(64)
      [1, 2, 4, 8, 16, 32, 64]
    """
    sizes = [1 << k for k in range(n.bit_length()) if 1 << k <= n]
    return sizes if sizes[-1] == n else [*sizes, n]


def check_batch_sizes(batch_sizes: Any) -> list[int] | None:
    """``batch_sizes`` as a sorted list of distinct positive ints (the bound ``N`` is checked by :func:`iterators`)."""
    if batch_sizes is None:
        return None
    fix = "pass a list of whole numbers such as batch_sizes=[1, 4, 16, 64], or None for powers of two up to N"
    if isinstance(batch_sizes, str | bytes | Mapping) or not isinstance(batch_sizes, Sequence | np.ndarray):
        raise TypeError(f"batch_sizes must be a sequence of integers; got {type(batch_sizes).__name__}: {fix}.")
    values = list(np.asarray(batch_sizes).ravel()) if isinstance(batch_sizes, np.ndarray) else list(batch_sizes)
    if not values:
        raise ValueError(f"batch_sizes is empty; {fix}.")
    for i, b in enumerate(values):
        if isinstance(b, bool | np.bool_) or not isinstance(b, numbers.Integral):
            raise TypeError(f"batch_sizes[{i}] must be an integer; got {type(b).__name__} {b!r}: {fix}.")
        if b < 1:
            raise ValueError(f"batch_sizes[{i}] is {int(b)}; every batch size must be at least 1.")
    sizes = [int(b) for b in values]
    twice = sorted({b for b in sizes if sizes.count(b) > 1})
    if twice:
        raise ValueError(f"batch_sizes lists {', '.join(map(str, twice))} more than once; give each batch size once.")
    return sorted(sizes)


def check_target(target: Any, name: str = "target") -> float:
    """The target loss: a finite number >= 0 that the loss's dtype can hold (float32 unless x64 is enabled).

    ``name`` is the argument named in the errors (``gdjax study`` passes ``"--target-loss"``).

    Example:
      >>> check_target(0.25)
      0.25
      >>> check_target(1e40)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ValueError: target is 1e+40, beyond the largest float32 (3.403e+38), the dtype of the loss; ...
    """
    if isinstance(target, bool) or not isinstance(target, numbers.Real):
        raise TypeError(
            f"{name} must be a number, the full-data loss to reach (such as {name}=0.2); got "
            f"{type(target).__name__} {target!r}."
        )
    value = float(target)
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{name} must be a finite number >= 0, the full-data loss to reach; got {target}. Pick a loss the "
            "runs can reach in several epochs, below the initial loss and above the best loss possible."
        )
    dtype = np.dtype(jnp.result_type(float))  # the dtype of the loss the runs compare with the target
    largest = float(np.finfo(dtype).max)
    if value > largest:
        raise ValueError(
            f"{name} is {value:g}, beyond the largest {dtype} ({largest:.4g}), the dtype of the loss; pick a loss "
            "below the initial loss that the runs can reach in several epochs."
        )
    return value


def check_learning_rates(
    learning_rates: Any, hyperparams: Mapping[str, Any] | None, loss_hyperparams: Mapping[str, Any] | None
) -> np.ndarray:
    """The learning rates (1-D, positive, finite); the other values must be fixed numbers, checked as sweep does."""
    if learning_rates is None:
        raise TypeError("learning_rates is required: pass the rates to try, such as np.geomspace(1e-3, 1, 16).")
    for where, values in (("hyperparams", hyperparams), ("loss_hyperparams", loss_hyperparams)):
        for name, value in (values or {}).items() if isinstance(values, Mapping) else ():  # else members says why
            if not isinstance(value, str) and np.ndim(value) != 0:
                raise ValueError(
                    f"{where}[{name!r}] must be one number: a study sweeps the learning rate only, at every batch "
                    f"size. Run one study per value of {name}."
                )
    table = _plan.members(learning_rates, hyperparams, grid=False, seeds=None, loss_hyperparams=loss_hyperparams)
    lrs = np.asarray(table.hyperparams["learning_rate"], np.float64)
    if (lrs <= 0).any():
        i = int(np.flatnonzero(lrs <= 0)[0])
        raise ValueError(
            f"learning_rates must be positive; entry {i} is {lrs[i]:g}. Use positive rates, such as "
            "np.geomspace(1e-3, 1, 16)."
        )
    return lrs


def iterators(
    data: PyTree | DataIterator,
    batch_sizes: list[int] | None,
    *,
    shuffle: bool,
    drop_remainder: bool,
    on_device: bool | None,
    epochs: int,
) -> list[DataIterator]:
    """One iterator per batch size over the same checked data (a DataIterator's data is taken, its batch size not)."""
    if isinstance(data, DataIterator):
        data = data.data
    base = minibatch(data, 1, shuffle=shuffle, drop_remainder=drop_remainder, on_device=on_device)
    n = base.num_examples
    sizes = default_batch_sizes(n) if batch_sizes is None else batch_sizes
    if sizes[-1] > n:
        too_big = [b for b in sizes if b > n]
        raise ValueError(
            f"batch_sizes {', '.join(map(str, too_big))} exceed the {n} examples of the data; every batch size must "
            f"be between 1 and {n} (N)."
        )
    out = []
    for b in sizes:
        if b == 1:
            it = base
        else:
            stream = None if base.on_device else _sources.stream(base.data, b)
            it = DataIterator(base.data, n, b, shuffle, drop_remainder, stream)
        _validate.check_steps(epochs, it.num_batches)
        out.append(it)
    return out
