"""Where a sweep's members start: shared parameters, one initialisation per seed, or a sweep continued.

:func:`seed_keys` gives a member's ``(init_key, order_key)`` from the sweep's
key and its seed; :class:`Starts` gives each chunk of members its starting
:class:`gdjax.TrainState` and order keys, and one member's parameters and
model state to check the loss on before compiling.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gdjax import _plan, _validate, _validate_model
from gdjax._trainable import split
from gdjax._types import PyTree
from gdjax.step import TrainState


def seed_keys(key: jax.Array, seed: int | jax.Array) -> tuple[jax.Array, jax.Array]:
    """The ``(init_key, order_key)`` a sweep member with ``seed`` uses.

    ``fit(loss_fn, init(init_key), ..., key=order_key)`` reproduces that member.

    Example:
      >>> import jax, gdjax as gd
      >>> init_key, order_key = gd.seed_keys(jax.random.key(0), 3)

    Raises:
      TypeError, ValueError: ``seed`` is not an integer in ``[0, 2**32)`` (a
        traced JAX integer is taken as it is), or ``key`` is not a PRNG key.
    """
    key = _validate.check_key(key)
    if not isinstance(seed, jax.core.Tracer):  # inside a sweep's vmap the seeds are traced, and already checked
        if isinstance(seed, jax.Array) and seed.ndim == 0 and jnp.issubdtype(seed.dtype, jnp.integer):
            seed = int(seed)
        seed = _validate.check_positive_int(seed, "seed", low=0, high=2**32 - 1)
    init_key, order_key = jax.random.split(jax.random.fold_in(key, seed))
    return init_key, order_key


def check_init(init: Any, params: Any, seeds: Any) -> None:
    """Fail now unless ``init`` is a function ``init(key)`` given with seeds and without params."""
    if init is None:
        return
    if not callable(init):
        raise TypeError(f"init must be a function init(key) -> params; got {type(init).__name__}.")
    if isinstance(params, TrainState):
        raise ValueError(
            "params is a sweep's state to continue and init is given too: a continued sweep starts from its state, "
            "so drop init= (keep the same learning_rates, hyperparams and seeds)."
        )
    if params is not None:
        raise ValueError(
            "params and init are both given: pass params=None with init= (each member is initialised by "
            "init(init_key) from its seed), or drop init to start every member from params."
        )
    if seeds is None:
        raise ValueError(
            "init= needs seeds=: each seed gives a member its own initialisation (init(init_key), see "
            "gd.seed_keys). Pass seeds=3 (or a list of seeds), or pass params=init(key) to share one start."
        )
    try:
        signature = inspect.signature(init)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None)
    except TypeError as exc:
        raise TypeError(
            f"init must be called as init(key) with one PRNG key; {getattr(init, '__name__', repr(init))} cannot "
            f"take one argument ({exc}); define it as def init(key): ... ."
        ) from None


class Starts:
    """Each chunk's starting states and order keys: shared by every member, one per seed, or a sweep continued.

    With ``init`` (and seeds), each chunk's parameters are made by
    ``vmap(init)`` over its members' init keys when the chunk runs (the
    first member's once before, eagerly, to check them and find the static
    leaves of the model). With a sweep's ``state``, each member continues its own.
    """

    def __init__(
        self, params: Any, init: Any, table: _plan.Members, key: jax.Array, model_state: Any, steps: int
    ) -> None:
        self.init = init
        self.keys_batched = table.seeds is not None
        if table.seeds is None:
            self.order_keys = key
        else:
            pairs = jax.vmap(lambda s: jnp.stack(seed_keys(key, s)))(jnp.asarray(table.seeds, jnp.uint32))
            self.init_keys, self.order_keys = pairs[:, 0], pairs[:, 1]
        if init is not None:
            self.start = _validate_model.start(init(self.init_keys[0]), model_state, steps, name="init(key)")
        else:
            continuing = isinstance(params, TrainState)
            self.start = _validate_model.start(params, model_state, steps, members=continuing)
            if continuing and len(np.asarray(params.step)) != table.size:
                raise ValueError(
                    f"params is the state of a sweep of {len(np.asarray(params.step))} members, but this sweep has "
                    f"{table.size}. Continue it with the same learning_rates, hyperparams and seeds."
                )
        self.params_batched = init is not None or self.start.continuing
        self._first: PyTree = None

    def state(self, chunk: _plan.Chunk) -> TrainState:
        """The starting :class:`TrainState` of the chunk's rows (or the one all members share)."""
        start = self.start.init
        if self.init is None:
            return jax.tree.map(lambda x: x[chunk.rows], start) if self.params_batched else start
        if chunk.number == 0 and self._first is not None:
            params = self._first
        else:
            params = init_many(self.init, self.init_keys[chunk.rows])
            if chunk.number == 0:
                self._first = params
        rows = len(chunk.rows)
        model_state = jax.tree.map(lambda x: jnp.broadcast_to(x, (rows, *jnp.shape(x))), start.model_state)
        return TrainState(params, None, None, model_state)  # type: ignore[arg-type]

    def one(self) -> tuple[PyTree, PyTree]:
        """One member's trained parameters and model state, to check them and the loss."""
        start = self.start.init
        if self.start.continuing:
            return jax.tree.map(lambda x: x[0], (start.params, start.model_state))
        return start.params, start.model_state

    def keys(self, chunk: _plan.Chunk) -> jax.Array:
        return self.order_keys[chunk.rows] if self.keys_batched else self.order_keys


@functools.partial(jax.jit, static_argnums=0)
def init_many(init: Callable[[jax.Array], PyTree], keys: jax.Array) -> PyTree:
    """The trained leaves of ``init(key)`` for each key (the static ones are the first member's)."""
    return jax.vmap(lambda k: split(init(k))[0])(keys)
