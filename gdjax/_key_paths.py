"""Trees rebuilt from the key paths a checkpoint records for its leaves.

:mod:`gdjax._npz` stores each leaf's path in the saved tree as a
:data:`~gdjax._npz.KeyPath` (``("dict", "w")``, ``("attr", "params")``,
``("index", 0)``, ...). :func:`build` rebuilds nested dicts (dict keys and
attribute names) and lists (positions) from ``(path, leaf)`` pairs, with no
template; :func:`like` puts the stored leaves into the structure of a given
tree instead, checking that their paths and shapes match its trained leaves.
:func:`keystr` writes a path as ``.params['w'][0]`` for error messages, and
:func:`array` makes a stored leaf a jax array where that keeps its dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from gdjax._npz import KeyPath, key_path
from gdjax._trainable import combine, split
from gdjax._types import PyTree


def array(a: np.ndarray) -> Any:
    """A jax array of ``a`` (a numpy one where jax would change its dtype: 64 bits without x64)."""
    return jax.numpy.asarray(a) if jax.dtypes.canonicalize_dtype(a.dtype) == a.dtype else a


def build(leaves: list[tuple[KeyPath, Any]]) -> Any:
    """Nested dicts (dict keys and attribute names) and lists (positions) from ``(path, leaf)`` pairs; None if none."""
    if not leaves:
        return None
    if len(leaves) == 1 and leaves[0][0] == ():
        return leaves[0][1]
    groups: dict[Any, list[tuple[KeyPath, Any]]] = {}
    kinds = set()
    for path, leaf in leaves:
        if path == ():
            raise ValueError("the checkpoint's paths overlap (a leaf at a node that has children).")
        kinds.add(path[0][0] == "index")
        groups.setdefault(path[0][1], []).append((path[1:], leaf))
    if len(kinds) != 1:
        raise ValueError("the checkpoint's paths mix positions and names at one node.")
    if kinds.pop():
        out = [None] * (max(groups) + 1)  # a position left out held no arrays
        for i, group in groups.items():
            out[i] = build(group)
        return out
    return {k: build(group) for k, group in groups.items()}


def keystr(path: KeyPath) -> str:
    return "".join(f"[{k}]" if kind == "index" else f".{k}" if kind == "attr" else f"[{k!r}]" for kind, k in path)


def like(like: PyTree, stored: list[tuple[KeyPath, Any]], members: bool) -> PyTree:
    """``like`` with its trained leaves replaced by the ``stored`` ones, in order (its other leaves kept)."""
    trained, static = split(like)
    flat, treedef = jax.tree_util.tree_flatten_with_path(trained)
    if len(flat) != len(stored):
        raise ValueError(
            f"like= has {len(flat)} trained leaves (float arrays); the checkpoint holds {len(stored)} "
            f"(at {', '.join(keystr(p) or 'the root' for p, _ in stored[:4])}{', ...' if len(stored) > 4 else ''})."
        )
    for (keys, leaf), (path, a) in zip(flat, stored, strict=True):
        where = key_path(keys)
        shape = np.shape(a)[1:] if members else np.shape(a)
        if where != path or shape != np.shape(leaf):
            raise ValueError(
                f"the trained leaf of like at {keystr(where) or 'the root'} is {list(np.shape(leaf))}; the checkpoint "
                f"holds {list(shape)} at {keystr(path) or 'the root'}"
                + (" per member" if members else "")
                + ". Pass the parameters (or model) the run started from."
            )
    return combine(jax.tree.unflatten(treedef, [a for _, a in stored]), static)
