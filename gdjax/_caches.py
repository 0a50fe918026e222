"""The process-wide caches, each bounded, all in one place, and :func:`clear_caches`.

gdjax keeps three kinds of memo so that repeated calls with the same shapes
cost a dictionary look-up rather than a trace: the checked configuration of a
run, the compiled programs (with the time one epoch took, for the progress
bar), and the optimizer factories already checked. Each is a
:class:`BoundedCache` (least recently used entries are dropped first), and
:func:`clear_caches` empties them all.

Keys use :func:`callable_key`, so ``functools.partial(optax.sgd,
nesterov=True)`` written inline at every call is the same optimizer each time
(keyed by its function, arguments and keywords), not a new one.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

V = TypeVar("V")

_ALL: list[BoundedCache[Any]] = []


class BoundedCache(Generic[V]):
    """A dictionary that keeps at most ``size`` entries, dropping the least recently used.

    Example:
      >>> c = BoundedCache[int]("demo", 2)
      >>> c.put("a", 1); c.put("b", 2); c.get("a"); c.put("c", 3)
      1
      >>> sorted(c.keys())
      ['a', 'c']
    """

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        _ALL.append(self)

    def get(self, key: Hashable) -> V | None:
        """The value for ``key`` (now the most recently used), or None."""
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> None:
        """Store ``value``, dropping the least recently used entry when full."""
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def keys(self) -> list[Hashable]:
        return list(self._data)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


def clear_caches() -> None:
    """Empty gdjax's caches (checked configurations, compiled programs, checked optimizers).

    The next call of ``fit`` or ``sweep`` checks and compiles again. JAX's
    own caches are JAX's: ``jax.clear_caches()`` empties them.

    Example:
      >>> import gdjax as gd
      >>> gd.clear_caches()
    """
    for cache in _ALL:
        cache.clear()


def callable_key(fn: Any) -> Hashable:
    """A key under which equal callables meet: a ``functools.partial`` by its function, arguments and keywords.

    Anything else is keyed by itself (functions by identity). A partial whose
    arguments cannot be hashed is keyed by identity too.

    Example:
      >>> import functools, optax
      >>> a = functools.partial(optax.sgd, nesterov=True)
      >>> b = functools.partial(optax.sgd, nesterov=True)
      >>> callable_key(a) == callable_key(b), a == b
      (True, False)
    """
    if isinstance(fn, functools.partial):
        key = ("partial", callable_key(fn.func), fn.args, tuple(sorted(fn.keywords.items())))
        try:
            hash(key)
        except TypeError:
            return ("id", id(fn))
        return key
    try:
        hash(fn)
    except TypeError:
        return ("id", id(fn))
    return fn
