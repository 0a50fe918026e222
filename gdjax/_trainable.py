"""Models of any library: the trained leaves of a pytree, and the rest held static.

A model from Equinox (or any pytree) may hold leaves that are not trained:
activation functions, integer sizes, strings, integer arrays. gdjax trains
the inexact-array leaves (float and complex arrays) and holds every other leaf
static, as ``equinox.partition(model, equinox.is_inexact_array)`` does:
:func:`split` makes the two halves (each a copy of the tree with ``None``
where the other half's leaves are), :func:`combine` puts them back together.

The static half is part of a run's static configuration (:class:`Static`, which
compares by value so that equal models share compiled programs); the
loss, the metrics and the results see the whole model, the optimizer and the
compiled program only the trained half.

Example:
  >>> import jax.numpy as jnp
  >>> model = {"w": jnp.ones(2), "act": jnp.tanh, "n": 3}
  >>> train, static = split(model)
  >>> [k for k, v in train.items() if v is not None], [k for k, v in static.items() if v is not None]
  (['w'], ['act', 'n'])
  >>> combine(train, static)["n"]
  3
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gdjax._types import PyTree


def is_trained(leaf: Any) -> bool:
    """Whether a leaf is trained: an array (or array shape) of a float or complex dtype."""
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and hasattr(leaf, "shape") and jnp.issubdtype(dtype, jnp.inexact)


def split(tree: PyTree) -> tuple[PyTree, PyTree]:
    """``(trained, static)``: two copies of ``tree``, each with ``None`` where the other's leaves are."""
    trained = jax.tree.map(lambda x: x if is_trained(x) else None, tree)
    static = jax.tree.map(lambda x: None if is_trained(x) else x, tree)
    return trained, static


def combine(trained: PyTree, static: PyTree) -> PyTree:
    """The whole tree again from the two halves :func:`split` made (either may hold tracers)."""
    return jax.tree.map(lambda a, b: b if a is None else a, trained, static, is_leaf=lambda x: x is None)


def has_static(tree: PyTree) -> bool:
    """Whether ``tree`` has any leaf that is not trained."""
    return any(not is_trained(x) for x in jax.tree.leaves(tree))


class Static:
    """The static half of a model, compared by value: a hashable part of a run's configuration.

    Two halves are equal when their structures are equal and so are their
    leaves: arrays by shape, dtype and bytes, everything else by ``==``
    (functions by identity), so the same model passed again shares the
    compiled program, and a model with another activation compiles its own.
    """

    def __init__(self, tree: PyTree) -> None:
        self.tree = tree
        leaves, treedef = jax.tree.flatten(tree)
        self._treedef: Any = treedef
        self._keys = tuple(_leaf_key(x) for x in leaves)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Static) and self._treedef == other._treedef and self._keys == other._keys

    def __hash__(self) -> int:
        return hash((self._treedef, self._keys))

    def __repr__(self) -> str:
        return f"Static({self.tree!r})"

    def describe(self) -> list[str]:
        """A readable, process-independent description of the leaves (for checkpoint settings)."""
        paths = jax.tree_util.tree_flatten_with_path(self.tree)[0]
        return [f"{jax.tree_util.keystr(p)}={_describe(x)}" for p, x in paths]


def describe_leaves(tree: PyTree, limit: int = 40) -> list[str]:
    """``"path: dtype[shape]"`` for each array leaf (at most ``limit``, then a count): compact and readable,
    where a tree's repr (an Equinox model's) would run to pages."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shape = getattr(leaf, "shape", None)
        what = f"{leaf.dtype}{list(shape)}" if shape is not None and hasattr(leaf, "dtype") else _describe(leaf)
        out.append(f"{jax.tree_util.keystr(path) or '(root)'}: {what}")
    return out if len(out) <= limit else [*out[:limit], f"... {len(out) - limit} more"]


def _leaf_key(leaf: Any) -> Any:
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)  # a typed key compares by its bits
        arr = np.asarray(leaf)
        return ("array", arr.shape, str(arr.dtype), arr.tobytes())
    try:
        hash(leaf)
    except TypeError:
        return ("object", id(leaf))
    return ("value", type(leaf), leaf)


def _describe(leaf: Any) -> str:
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return f"{leaf.dtype}{list(np.shape(leaf))}"
    if callable(leaf):
        inner = getattr(leaf, "__wrapped__", leaf)
        return f"{getattr(inner, '__module__', '?')}.{getattr(inner, '__qualname__', type(inner).__name__)}"
    return repr(leaf)
