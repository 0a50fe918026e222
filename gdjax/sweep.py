"""``sweep``: many training runs at once, one compiled program.

``sweep`` runs one :func:`gdjax.fit` per *member* (a learning rate, a setting
of other hyperparameters, a seed) with ``jax.vmap`` over the members, inside
one ``jit``. By default every member sees the same data order, so each batch
is gathered once for all members and the comparison is controlled.

Contract:

* member ``k`` gives the result of ``fit`` with its hyperparameters (and,
  with seeds, the keys from :func:`seed_keys`), to float tolerance;
* new values, a new key or new seeds with the same shapes reuse the compiled
  program; with ``chunk_size`` so does a new number of members;
* a member whose loss or parameters become non-finite is frozen at its last
  finite parameters and flagged in ``diverged``; nothing is reduced across
  members inside the program, so it cannot touch the others;
* with several devices, the member axis is split across them with
  ``jax.shard_map`` over a one-axis ``Mesh`` (members padded to a multiple of
  the device count, the padding dropped from the results).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gdjax import _checks, _engine, _members, _optimizer, _setup
from gdjax.checkpoint import digest, holding
from gdjax.data import DataIterator
from gdjax.progress import ProgressBar
from gdjax.sweep_result import SweepResult

__all__ = ["SweepResult", "seed_keys", "sweep"]

PyTree = Any
_AXIS = "members"


def seed_keys(key: jax.Array, seed: int | jax.Array) -> tuple[jax.Array, jax.Array]:
    """The ``(init_key, order_key)`` a sweep member with ``seed`` uses.

    ``fit(loss_fn, init(init_key), ..., key=order_key)`` reproduces that member.

    Example:
      >>> import jax, gdjax as gd
      >>> init_key, order_key = gd.seed_keys(jax.random.key(0), 3)
    """
    return tuple(jax.random.split(jax.random.fold_in(key, seed)))


class _Static(NamedTuple):
    """The static part of the sweep's programs: equal values share compiled code."""

    cfg: _engine.Config
    params_batched: bool
    keys_batched: bool
    mesh: Mesh | None


def _sharded(static: _Static, f: Callable, in_specs: tuple) -> Callable:
    mesh = static.mesh
    if mesh is None:
        return f
    # members never communicate; shared inputs stay replicated
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=P(_AXIS), check_vma=False)


def _spec(batched: bool) -> P:
    return P(_AXIS) if batched else P()


def _start_program(static: _Static, it, params, hparams):
    cfg, params_batched, _, _ = static
    f = functools.partial(_engine.start_members, cfg, params_batched=params_batched)
    return _sharded(static, f, (P(), _spec(params_batched), P(_AXIS)))(it, params, hparams)


def _train_program(static: _Static, it, runs, hparams, keys, epochs, tol):
    cfg, _, keys_batched, _ = static
    f = functools.partial(_engine.train, cfg, members=True, keys_batched=keys_batched)
    in_specs = (P(), P(_AXIS), P(_AXIS), _spec(keys_batched), P(), P())
    return _sharded(static, f, in_specs)(it, runs, hparams, keys, epochs, tol)


def _devices(devices: Sequence[jax.Device] | None) -> list[jax.Device]:
    if devices is None:
        return list(jax.devices())
    if isinstance(devices, jax.Device):
        raise TypeError(f"devices must be a sequence of devices; got the single device {devices}. Pass devices=[d].")
    if isinstance(devices, str | bytes) or not isinstance(devices, Iterable):
        devices = [devices]  # refused below, with the sentence for every other wrong value
    devices = list(devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise TypeError("devices must be a non-empty sequence of jax.Device, such as jax.devices(); or None for all.")
    seen = set()
    for d in devices:
        if d in seen:
            raise ValueError(
                f"devices lists {d} more than once; give each device once, e.g. devices=jax.devices()[:2]."
            )
        seen.add(d)
    return devices


def _check_init(init: Callable) -> None:
    """Fail now if the init function cannot be called as ``init(key)``."""
    try:
        signature = inspect.signature(init)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None)
    except TypeError as exc:
        raise TypeError(
            f"params must be the parameters or an init function called as params(key) with one PRNG key; "
            f"{getattr(init, '__name__', repr(init))} cannot take one argument ({exc}); define it as "
            f"def init(key): ... ."
        ) from None


def sweep(
    loss_fn: Callable,
    params: PyTree | Callable[[jax.Array], PyTree],
    optimizer_fn: Callable[..., optax.GradientTransformation],
    data: DataIterator,
    *,
    learning_rates: Any = None,
    hyperparams: Mapping[str, Any] | None = None,
    grid: bool = False,
    seeds: int | Sequence[int] | None = None,
    epochs: int,
    key: jax.Array,
    tol: float | None = None,
    log_every: int = 1,
    chunk_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    has_aux: bool = False,
    batched: bool = False,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
) -> SweepResult:
    """Train one model per hyperparameter setting (and seed), all in one compiled program.

    Args:
      loss_fn: ``loss_fn(params, example) -> scalar``, as for :func:`gdjax.fit`.
      params: initial parameters shared by every member, or ``init(key) ->
        params``, called with each seed's ``init_key`` (see :func:`seed_keys`;
        without seeds, with ``seed_keys(key, 0)[0]``).
      optimizer_fn: an optax factory such as ``optax.sgd`` or ``optax.adam``;
        member ``k`` uses ``optimizer_fn(learning_rate=lr_k, **hyperparams_k)``.
        To sweep a schedule's peak, scale a schedule of peak 1 in a small
        factory (some optax schedules branch on their values in Python and
        cannot take a traced peak): ``unit = optax.cosine_decay_schedule(1.0,
        1000)`` and ``lambda learning_rate: optax.sgd(lambda t: learning_rate * unit(t))``.
      data: a :class:`gdjax.DataIterator`.
      learning_rates: 1-D array of learning rates.
      hyperparams: name -> 1-D array (swept) or number (fixed), passed to
        ``optimizer_fn`` as keywords.
      grid: combine ``learning_rates`` and ``hyperparams`` as a Cartesian
        product instead of zipping them.
      seeds: a count or 1-D array of seeds; each seed gets its own
        initialisation (when ``params`` is a function) and data order, and
        is combined with every hyperparameter setting.
      epochs: epochs per member (at most, with ``tol``).
      key: PRNG key; without seeds every member uses it for the data order.
      tol: a member stops once its full-data loss is ``<= tol``; the program
        stops when every member has converged or diverged.
      log_every: average step losses over windows of this many steps.
      chunk_size: run at most this many members at a time (one compiled
        program for every chunk) to bound memory.
      devices: devices to split the members over; default all of
        ``jax.devices()`` (one device: no splitting).
      has_aux: ``loss_fn`` returns ``(loss, aux)``.
      batched: ``loss_fn`` takes a whole :class:`gdjax.Batch`.
      progress: show one progress bar for the whole sweep on standard error
        (see :mod:`gdjax.progress`); the results are the same.
      checkpoint: a folder to save the sweep's state in, as for
        :func:`gdjax.fit` (one file series per chunk of members, one lock
        for the whole sweep); called again with the same arguments, the sweep
        resumes from it (``SweepResult.resumed_from`` says where).
      checkpoint_every: save every this many epochs (default 1), and at the end.

    Returns:
      A :class:`SweepResult`.

    Raises:
      TypeError, ValueError: bad arguments, before anything is compiled.

    Example:
      >>> import jax, numpy as np, optax, gdjax as gd
      >>> prob = gd.problems.linear_regression(n=256, d=4, key=jax.random.key(0))
      >>> model = gd.models.linear()
      >>> sw = gd.sweep(model.loss, model.init(jax.random.key(1), 4), optax.sgd,
      ...               gd.full_batch(prob.data), learning_rates=np.geomspace(0.01, 10, 8),
      ...               epochs=50, key=jax.random.key(2))
      >>> sw.final_loss.shape, bool(sw.diverged[-1]), bool(sw.diverged[0])
      ((8,), True, False)
    """
    if isinstance(optimizer_fn, optax.GradientTransformation) or not callable(optimizer_fn):
        raise TypeError(
            "optimizer_fn must be an optax factory such as optax.sgd or optax.adam (not a built optimizer): "
            "sweep calls it with each member's learning_rate and hyperparams."
        )
    it, epochs, key, tol, log_every = _setup.common(
        loss_fn, params, optimizer_fn, data, epochs, key, tol, log_every, progress
    )
    table = _members.members(learning_rates, hyperparams, grid=grid, seeds=seeds)
    _optimizer.check_keywords(optimizer_fn, table.hyperparams, learning_rate="learning_rates")
    if chunk_size is not None:
        chunk_size = _checks.check_positive_int(chunk_size, "chunk_size", low=1)
    devs = _devices(devices)
    if callable(params):
        _check_init(params)
    m = table.count

    # chunks, padded to a multiple of the device count
    size = m if chunk_size is None else min(chunk_size, m)
    size = -(-size // len(devs)) * len(devs)
    chunks = range(0, m, size)
    chunk_rows = [np.minimum(np.arange(lo, lo + size), m - 1) for lo in chunks]  # padded with the last member

    # parameters: shared by every member, or (an init function with seeds) one per seed, made chunk by chunk;
    # keys: the one key, or one order key per seed
    params_batched = table.seeds is not None and callable(params)
    keys_batched = table.seeds is not None
    if table.seeds is None:
        member_keys = key
        start = params(seed_keys(key, 0)[0]) if callable(params) else params
    else:
        pairs = jax.vmap(lambda s: jnp.stack(seed_keys(key, s)))(jnp.asarray(table.seeds, jnp.uint32))
        init_keys, member_keys = np.asarray(jax.random.key_data(pairs[:, 0])), pairs[:, 1]
        start = params
    chunk_params = (lambda rows: _init_many(params, _wrap(init_keys[rows], key))) if params_batched else None
    first_params = chunk_params(chunk_rows[0]) if params_batched else None  # reused by the first chunk
    if params_batched:
        start = jax.tree.map(lambda x: x[0], first_params)
    _setup.check_params(start, "params(key)" if callable(params) else "params")
    _optimizer.check_traceable(optimizer_fn, start, table.hyperparams)
    cfg = _setup.config(
        loss_fn,
        optimizer_fn,
        start,
        it,
        epochs=epochs,
        log_every=log_every,
        has_aux=has_aux,
        batched=batched,
        members=size,
    )

    mesh = Mesh(np.array(devs), (_AXIS,)) if len(devs) > 1 else None
    static = _Static(cfg, params_batched, keys_batched, mesh)
    settings = functools.cache(
        lambda: _setup.run_settings(  # only called with a checkpoint, once
            "sweep",
            loss_fn,
            optimizer_fn,
            it,
            key,
            hyperparams={k: np.asarray(v).tolist() for k, v in table.hyperparams.items()},
            seeds=None if table.seeds is None else table.seeds.tolist(),
            epochs=epochs,
            tol=tol,
            log_every=log_every,
            has_aux=bool(has_aux),
            batched=bool(batched),
            chunk=size,
            devices=len(devs),
            params=_setup.describe(params) if callable(params) else digest(params),
        )
    )
    ckpts = [
        _setup.checkpointer(
            checkpoint, checkpoint_every, optimizer=optimizer_fn, settings=settings, prefix=f"chunk-{c:05d}-"
        )
        for c in range(-(-m // size))
    ]
    hp_all = {k: np.asarray(v) for k, v in table.hyperparams.items()}
    whole = NamedSharding(mesh, P()) if mesh is not None else devs[0]
    tol_array = jax.device_put(jnp.asarray(-np.inf if tol is None else tol, cfg.loss_dtype), whole)

    compile_time, wall_time, outs, resumed_from = 0.0, 0.0, [], []
    with holding(ckpts):  # one lock on the folder for every chunk, until sweep returns or raises
        for n_chunk, (lo, rows) in enumerate(zip(chunks, chunk_rows, strict=True)):
            initial = start  # shared by every member, or each seed's own for this chunk's members:
            if params_batched:
                initial = first_params if n_chunk == 0 else chunk_params(rows)
            args = [
                it,
                initial,
                {k: _setup.float_array(v[rows]) for k, v in hp_all.items()},
                member_keys[rows] if keys_batched else member_keys,
            ]
            args = _place(args, mesh, devs[0], params_batched, keys_batched)
            it_c, params_c, hp_c, keys_c = args
            desc = "sweep" if len(chunks) == 1 else f"sweep, chunk {n_chunk + 1}/{len(chunks)}"
            out, seconds, run_seconds, resumed = _engine.execute(
                static,
                _start_program,
                (it_c, params_c, hp_c),
                _train_program,
                lambda target, keys_c=keys_c: (
                    keys_c,
                    jax.device_put(jnp.asarray(target, jnp.int32), whole),
                    tol_array,
                ),
                epochs,
                ProgressBar(epochs, desc, members=min(size, m - lo)) if progress else None,
                ckpts[n_chunk],
            )
            compile_time += seconds
            wall_time += run_seconds
            outs.append((out, min(size, m - lo)))
            resumed_from += [resumed] * min(size, m - lo)
    if len(outs) == 1 and size == m:
        run = outs[0][0]  # device arrays, split over the devices as computed
    else:  # trim the padding and join the chunks on the host: no small programs to compile
        host = [_engine.pad_history(jax.tree.map(lambda x, n=n: np.asarray(x)[:n], out), outs) for out, n in outs]
        run = jax.tree.map(lambda *xs: np.concatenate(xs), *host)
        run = run._replace(train=run.train._replace(params=jax.device_put(run.train.params)))
    return SweepResult.from_run(
        cfg,
        it,
        run,
        table,
        wall_time=wall_time,
        compile_time=compile_time,
        devices=len(devs),
        resumed_from=np.asarray(resumed_from, np.int64),
    )


def _wrap(key_data: np.ndarray, like: jax.Array) -> jax.Array:
    """Keys from their raw data, typed like ``like`` (typed keys stay typed, raw uint32 keys raw)."""
    if jax.dtypes.issubdtype(like.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(jnp.asarray(key_data), impl=jax.random.key_impl(like))
    return jnp.asarray(key_data)


def _place(args: list, mesh: Mesh | None, device: jax.Device, params_batched: bool, keys_batched: bool) -> list:
    """Put one chunk's arguments where they run: split over the mesh, or on the one device."""
    if mesh is None:
        split = whole = device
    else:
        split, whole = NamedSharding(mesh, P(_AXIS)), NamedSharding(mesh, P())
    it, params, hp, keys = args
    put = lambda tree, s: jax.tree.map(lambda x: jax.device_put(x, s), tree)  # noqa: E731
    return [
        put(it, whole),
        put(params, split if params_batched else whole),
        put(hp, split),
        put(keys, split if keys_batched else whole),
    ]


@functools.partial(jax.jit, static_argnums=0)
def _init_many(init: Callable, keys: jax.Array) -> PyTree:
    return jax.vmap(init)(keys)
