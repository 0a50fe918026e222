"""The plan of a sweep, as plain values: which member runs what, in which chunk, on which devices.

The member table (:class:`Members`): hyperparameters are zipped (all arrays
the same length) or, with ``grid=True``, combined as a Cartesian product in
the order given, the last varying fastest (``learning_rate`` first). Seeds,
when given, are always combined as a grid with the hyperparameters: member
``k`` runs hyperparameter row ``k // num_seeds`` with seed
``seeds[k % num_seeds]``.

The chunks (:func:`chunks`): members run ``chunk_size`` at a time through one
compiled program, each chunk padded to a multiple of the device count with
copies of the last member (padding is dropped from the results). All of this
is numpy: it is tested without compiling anything.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from gdjax import _validate
from gdjax._optimizer import merge_learning_rate
from gdjax._types import ceil_div
from gdjax._validate_eval import loss_mapping


class Members(NamedTuple):
    """The sweep's member table.

    Attributes:
      hyperparams: name -> float64 array of shape ``(M,)``, the optimizer's values.
      seeds: int array of shape ``(M,)``, or None without seeds.
      loss_hyperparams: name -> float64 array of shape ``(M,)``, the loss's keyword values.
    """

    hyperparams: dict[str, np.ndarray]
    seeds: np.ndarray | None
    loss_hyperparams: dict[str, np.ndarray] = {}  # noqa: RUF012  # never mutated

    @property
    def size(self) -> int:
        return len(next(iter(self.hyperparams.values())))


def _as_values(name: str, value: Any, *, signed: bool = False) -> np.ndarray:
    arr = _validate.check_hyperparam(value, name, signed=signed)
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a number or a 1-D array; got shape {arr.shape}.")
    if arr.ndim == 1 and arr.size == 0:
        raise ValueError(f"{name} is empty; give at least one value.")
    return arr


def _check_seeds(seeds: Any) -> np.ndarray | None:
    if seeds is None:
        return None
    if isinstance(seeds, int | np.integer) and not isinstance(seeds, bool):
        count = _validate.check_positive_int(seeds, "seeds", low=1, high=2**32)
        return np.arange(count, dtype=np.int64)
    arr = np.asarray(seeds)
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "iu":
        raise TypeError(
            f"seeds must be a count (seeds=8) or a 1-D array of distinct integers; got {type(seeds).__name__} "
            f"with shape {arr.shape} and dtype {arr.dtype}."
        )
    if len(np.unique(arr)) != arr.size or (arr < 0).any() or (arr >= 2**32).any():
        raise ValueError("seeds must be distinct integers in [0, 2**32).")
    return arr.astype(np.int64)


def members(learning_rates: Any, hyperparams: Any, *, grid: bool, seeds: Any, loss_hyperparams: Any = None) -> Members:
    """Build and check the member table (loss hyperparameters are zipped or combined like the optimizer's).

    Raises:
      ValueError: no hyperparameters, a negative or non-finite value (its
        index named), or zipped arrays of unequal lengths.
      TypeError: a value that is not a number, or bad ``seeds``.
    """
    if not isinstance(grid, bool):
        raise TypeError(f"grid must be True or False; got {grid!r}.")
    merged = merge_learning_rate(learning_rates, hyperparams, name="learning_rates")
    named = {
        name: _as_values(
            "learning_rates" if name == "learning_rate" and learning_rates is not None else f"hyperparams[{name!r}]",
            value,
        )
        for name, value in merged.items()
    }
    if learning_rates is not None and named["learning_rate"].ndim == 0:
        named["learning_rate"] = named["learning_rate"][None]
    if not named:
        raise ValueError("sweep needs something to sweep: pass learning_rates=[...] and/or hyperparams={name: [...]}.")
    keywords = {f"loss_hyperparams[{k!r}]": k for k in loss_mapping(loss_hyperparams)}  # the table's key -> the keyword
    named.update({key: _as_values(key, loss_hyperparams[k], signed=True) for key, k in keywords.items()})
    swept = {k: v for k, v in named.items() if v.ndim == 1}
    fixed = {k: v for k, v in named.items() if v.ndim == 0}
    if grid:
        rows = list(itertools.product(*(range(len(v)) for v in swept.values()))) or [()]
        table = {k: np.array([v[r[i]] for r in rows]) for i, (k, v) in enumerate(swept.items())}
    else:
        lengths = {k: len(v) for k, v in swept.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            raise ValueError(
                f"zipped hyperparameters must have equal lengths, but {shown}. "
                f"Pass grid=True for every combination, or make them the same length."
            )
        table = dict(swept)
    length = len(next(iter(table.values()))) if table else 1
    table.update({k: np.full(length, v) for k, v in fixed.items()})
    table = {k: table[k] for k in named}  # keep the caller's order
    seed_values = _check_seeds(seeds)
    if seed_values is not None:
        table = {k: np.repeat(v, len(seed_values)) for k, v in table.items()}
        seed_values = np.tile(seed_values, length)
    opt = {k: v for k, v in table.items() if k not in keywords}
    return Members(opt, seed_values, {keywords[k]: v for k, v in table.items() if k in keywords})


class Chunk(NamedTuple):
    """One chunk of a sweep's members.

    Attributes:
      number: the chunk's number, from 0.
      rows: member indices of the program's rows (padded with the last member).
      real: rows that are real members (the first ``real``).
    """

    number: int
    rows: np.ndarray
    real: int


def chunk_rows(count: int, chunk_size: int | None, devices: int) -> int:
    """Rows per chunk: ``chunk_size`` (or every member), rounded up to a multiple of the device count."""
    size = count if chunk_size is None else min(chunk_size, count)
    return ceil_div(size, devices) * devices


def chunks(count: int, rows: int) -> list[Chunk]:
    """The chunks of ``count`` members, ``rows`` rows each (the last padded with the last member).

    Example:
      >>> [(c.rows.tolist(), c.real) for c in chunks(5, 4)]
      [([0, 1, 2, 3], 4), ([4, 4, 4, 4], 1)]
    """
    return [
        Chunk(i, np.minimum(np.arange(lo, lo + rows), count - 1), min(rows, count - lo))
        for i, lo in enumerate(range(0, count, rows))
    ]


def one_kind(devices: Sequence[Any]) -> None:
    """Refuse devices of several kinds (``platform``: cpu, gpu, tpu): one program runs on one kind."""
    kinds = sorted({d.platform for d in devices})
    if len(kinds) > 1:
        raise ValueError(
            f"devices mixes {' and '.join(kinds)} devices, but one program runs on one kind: pass devices of one "
            f"kind, e.g. devices=jax.devices({kinds[-1]!r})."
        )


def check_devices(devices: Sequence[jax.Device] | None) -> list[jax.Device]:
    if devices is None:
        return list(jax.devices())
    if isinstance(devices, jax.Device):
        raise TypeError(f"devices must be a sequence of devices; got the single device {devices}. Pass devices=[d].")
    if isinstance(devices, str | bytes) or not isinstance(devices, Iterable):
        devices = [devices]  # refused below, with the sentence for every other wrong value
    devices = list(devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise TypeError("devices must be a non-empty sequence of jax.Device, such as jax.devices(); or None for all.")
    one_kind(devices)
    if not any(d.process_index == jax.process_index() for d in devices):
        raise ValueError(
            f"devices holds none of this process's devices ({jax.local_devices()}), so it cannot take part: "
            f"every process passes the same list, with devices of each (jax.devices() lists them all)."
        )
    seen = set()
    for d in devices:
        if d in seen:
            raise ValueError(
                f"devices lists {d} more than once; give each device once, e.g. devices=jax.devices()[:2]."
            )
        seen.add(d)
    return devices
