"""JAX's multi-controller runtime, as gdjax uses it: one process per host, the same calls in every process.

After ``jax.distributed.initialize``, ``jax.devices()`` lists every
process's devices and a program over a mesh of them runs in all processes at
once, each driving its own (addressable) devices. gdjax's host code then
follows four rules, all here:

* :func:`put`: inputs every process holds alike (the same data, params and
  keys, built from the same file or seed) are placed on a sharding that may
  span other processes' devices, each process writing only its own shards,
  without the whole-array equality check ``jax.device_put`` makes there;
* :func:`to_host`: a result split over several processes is gathered, so
  every process reads all of it (a collective: every process must call it,
  in the same order);
* :func:`is_writer`: files are written by the first process of a run alone
  (progress bars drawn by it alone), the others read them;
* :func:`agree`: before anything is compiled, the processes compare what
  each was asked to run and refuse, in every process, arguments that differ,
  naming the first difference.

With one process every function here is the plain single-process operation.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, Sharding
from jax.sharding import PartitionSpec as P

from gdjax._types import PyTree


def processes() -> int:
    """The number of processes in JAX's runtime (1 without ``jax.distributed``)."""
    return jax.process_count()


def spans(devices: Sequence[jax.Device]) -> bool:
    """Whether ``devices`` belong to more than one process (a run every one of them must join)."""
    return len({d.process_index for d in devices}) > 1


def is_writer(devices: Sequence[jax.Device] | None = None) -> bool:
    """Whether this process writes the files and draws the progress bar of a run on ``devices``.

    The first process that holds one of the devices does (default: of all devices, so process 0).
    """
    owners = [d.process_index for d in (jax.devices() if devices is None else devices)]
    return jax.process_index() == min(owners)


#: How XLA's failed statuses begin (a failed collective reaches Python as JaxRuntimeError or, from some
#: helpers, ValueError with the status in front).
_STATUSES = ("UNKNOWN:", "UNAVAILABLE:", "INTERNAL:", "DEADLINE_EXCEEDED:", "ABORTED:", "CANCELLED:")


def is_lost(exc: Exception) -> bool:
    """Whether ``exc`` is a failed exchange between processes (not an error of the caller's arguments)."""
    return isinstance(exc, jax.errors.JaxRuntimeError) or (
        isinstance(exc, ValueError) and str(exc).lstrip().startswith(_STATUSES)
    )


def lost(exc: Exception) -> RuntimeError:
    """The error a run over several processes raises when a collective fails: another process has gone."""
    cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return RuntimeError(
        f"process {jax.process_index()} lost contact with the other processes of this run ({cause[:200]}): one of "
        f"them stopped or was killed, and the run cannot go on without it. Start every process again with the "
        f"same arguments; a run with checkpoint= resumes from its newest checkpoint, exactly."
    )


def _exchange(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (an exchange between processes) with a failed exchange reported as a lost process."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (jax.errors.JaxRuntimeError, ValueError) as exc:
            if is_lost(exc):
                raise lost(exc) from exc
            raise

    return wrapper


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def put_leaf(x: Any, sharding: Sharding) -> Any:
    """One array (or typed key) placed on ``sharding`` (see :func:`put`)."""
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    if _is_key(x):
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(put_leaf(jax.random.key_data(x), sharding), impl=impl)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put(tree: PyTree, sharding: Sharding) -> PyTree:
    """``tree`` placed on ``sharding``; across processes each writes its own shards of its (equal) copy."""
    return jax.tree.map(lambda x: put_leaf(x, sharding), tree)


def _gathered(x: Any) -> Any:
    return isinstance(x, jax.Array) and not x.is_fully_addressable


def _identity(*xs: Any) -> tuple[Any, ...]:
    return xs


@functools.lru_cache(maxsize=16)
def _replicate(mesh: Mesh) -> Callable[..., tuple[Any, ...]]:
    """A program that gathers its inputs whole onto every device of ``mesh`` (compiled once per shapes)."""
    return jax.jit(_identity, out_shardings=NamedSharding(mesh, P()))


@_exchange
def to_host(tree: PyTree) -> PyTree:
    """``tree`` with every array split over several processes gathered into one numpy array in each.

    Arrays held whole by this process are left as they are. Across processes
    this is a collective: every process calls it with the same structure.
    """
    leaves, treedef = jax.tree.flatten(tree)
    split = [i for i, x in enumerate(leaves) if _gathered(x)]
    if split:
        keys = [i for i in split if _is_key(leaves[i])]
        plain = [jax.random.key_data(leaves[i]) if i in keys else leaves[i] for i in split]
        mesh = plain[0].sharding.mesh if isinstance(plain[0].sharding, NamedSharding) else None
        if mesh is not None and all(getattr(x.sharding, "mesh", None) == mesh for x in plain):
            whole = _replicate(mesh)(*plain)  # one gather for all
            values = [np.asarray(x.addressable_data(0)) for x in whole]
        else:
            values = [np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in plain]
        for i, v in zip(split, values, strict=True):
            impl = jax.random.key_impl(leaves[i]) if i in keys else None
            leaves[i] = v if impl is None else jax.random.wrap_key_data(jnp.asarray(v), impl=impl)
    return jax.tree.unflatten(treedef, leaves)


@_exchange
def from_first(value: int) -> int:
    """Process 0's ``value`` in every process (a collective): where the processes would choose apart."""
    return int(np.asarray(multihost_utils.broadcast_one_to_all(np.array(value, np.int64))))


def check_same(value: int, what: str, fix: str) -> None:
    """Refuse, in every process, an integer ``value`` that is not the same in all (a collective).

    Raises:
      ValueError: ``what`` differs, with each process's value, and ``fix``.
    """
    values = _gather_ints(value)
    if (values != values[0]).any():
        shown = ", ".join(f"{v} in process {i}" for i, v in enumerate(values.tolist()))
        raise ValueError(f"{what} differs between the processes ({shown}): {fix}")


@_exchange
def _gather_ints(value: int) -> np.ndarray:
    """Every process's ``value``, in process order (a collective)."""
    return np.asarray(multihost_utils.process_allgather(np.array([value], np.int64))).reshape(-1)


@_exchange
def _gather_bytes(payload: bytes) -> list[bytes]:
    """Every process's ``payload``, in process order (a collective)."""
    size = np.array([len(payload)], np.int64)
    sizes = np.asarray(multihost_utils.process_allgather(size)).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: len(payload)] = np.frombuffer(payload, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [bytes(row[:n]) for row, n in zip(rows, sizes, strict=True)]


def differences(theirs: Any, ours: Any, name: str = "") -> list[str]:
    """The paths where two JSON-like values differ, ``name: X on process 0, Y here``, in their order."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        keys = list(theirs) + [k for k in ours if k not in theirs]
        return [d for k in keys for d in differences(theirs.get(k), ours.get(k), f"{name}.{k}" if name else k)]
    if isinstance(theirs, list) and isinstance(ours, list) and len(theirs) == len(ours):
        return [d for i, (a, b) in enumerate(zip(theirs, ours, strict=True)) for d in differences(a, b, f"{name}[{i}]")]
    return [] if theirs == ours else [f"{name}: {_short(theirs)} on process 0, {_short(ours)} on this one"]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def agree(what: str, settings: dict[str, Any], **asked: Any) -> None:
    """Refuse, in every process, a run whose ``settings`` (and ``asked``) differ between processes.

    Nothing happens with one process. ``asked`` are the call's other arguments (epochs, the checkpoint
    folder, ...), compared by their ``str`` where they are not JSON.

    Each process sends the JSON of its settings to all; each compares every
    process's with process 0's, so all raise the same error together instead
    of some waiting forever in a program the others never start.

    Raises:
      ValueError: naming the first process that differs and its first differing setting.
    """
    if processes() == 1:
        return
    mine = json.loads(json.dumps({**settings, **asked}, sort_keys=True, default=str))
    every = [json.loads(b) for b in _gather_bytes(json.dumps(mine, sort_keys=True).encode())]
    for index, theirs in enumerate(every[1:], start=1):
        diffs = differences(every[0], theirs)
        if diffs:
            shown = diffs[0].replace("on this one", f"on process {index}")
            more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
            raise ValueError(
                f"{what} was called with other arguments in process {index} than in process 0: {shown}{more}. "
                f"Every process must make the same call with the same data, params, key and options (build "
                f"them from the same file or seed)."
            )
