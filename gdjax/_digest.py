"""Digests for checkpoint settings: of a pytree's bytes, and of what a function computes.

:func:`function_digest` follows a loss function's bytecode and constants,
defaults, closure values, ``functools.partial`` arguments and the module
globals it reads, so a resumed run whose loss is another closure of the same
name is refused. Numbers, strings, arrays and containers of them count by
value; any other captured object by its type; functions of other modules by
name.
"""

from __future__ import annotations

import dis
import functools
import hashlib
import types
from typing import Any

import jax
import numpy as np

from gdjax._types import PyTree


def digest(tree: PyTree) -> str:
    """A SHA-256 of a pytree's structure, shapes, dtypes and bytes."""
    h = hashlib.sha256()
    leaves, treedef = jax.tree.flatten(tree)
    h.update(str(treedef).encode())
    for leaf in leaves:
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if isinstance(leaf, jax.Array) or not hasattr(leaf, "shape"):
            leaf = np.asarray(jax.device_get(leaf))
        _feed_rows(h, leaf)
    return h.hexdigest()


#: Bytes of a host array's rows :func:`digest` reads at a time (a memmap or a streamed source is never read whole).
_DIGEST_BLOCK = 64 << 20


def _feed_rows(h: Any, leaf: Any) -> None:
    """Hash an array-like's dtype (as JAX would use it), shape and bytes, a block of rows at a time."""
    dtype = np.dtype(jax.dtypes.canonicalize_dtype(leaf.dtype)) if leaf.dtype != object else np.dtype(object)
    shape = tuple(int(s) for s in leaf.shape)
    h.update(f"{dtype.str}{shape}".encode())
    if not shape:
        h.update(np.ascontiguousarray(np.asarray(leaf, dtype)).tobytes())
        return
    row = max(1, int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
    step = max(1, _DIGEST_BLOCK // row)
    for start in range(0, shape[0], step):
        h.update(np.ascontiguousarray(np.asarray(leaf[start : start + step], dtype)).tobytes())


#: How many levels of functions captured by functions :func:`function_digest` follows.
_DIGEST_DEPTH = 8
_SCALARS = (bool, int, float, complex, str, bytes, type(None), type(Ellipsis))


def function_digest(fn: Any) -> str:
    """A SHA-256 of what a function computes, as far as Python lets it be seen.

    It covers the function's code (bytecode, constants and names, nested
    functions included; not its docstring or line numbers), its defaults and
    closure values, a ``functools.partial``'s function, arguments and keywords,
    and the values of the module globals its code reads; functions found there
    are followed in turn (a closure over another function, a helper of the same
    module), up to 8 levels. Numbers, strings, arrays, and tuples, lists and
    dicts of them count by value; modules, classes and functions of other
    modules (libraries) by name; any other object by its type only, so a change
    inside such an object (a captured model instance, say) goes unnoticed.
    The bytecode is the running Python's: another Python version gives another
    digest.

    Example:
      >>> from gdjax.checkpoint import function_digest
      >>> scaled = lambda s: lambda x: s * x
      >>> function_digest(scaled(1.0)) == function_digest(scaled(1.0)) != function_digest(scaled(2.0))
      True
    """
    h = hashlib.sha256()
    _feed(h, fn, 0, set())
    return h.hexdigest()


def _name(obj: Any) -> str:
    kind = obj if isinstance(obj, type | types.FunctionType) else type(obj)
    return f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', '?')}"


def _feed(h: Any, obj: Any, depth: int, seen: set[int]) -> None:
    def put(*parts: Any) -> None:
        h.update(repr(parts).encode() + b"\0")

    if isinstance(obj, _SCALARS):
        put("value", type(obj).__name__, obj)
    elif isinstance(obj, np.ndarray | np.generic | jax.Array):
        put("array", digest(obj))
    elif isinstance(obj, types.ModuleType):
        put("module", obj.__name__)
    elif isinstance(obj, type):
        put("class", _name(obj))
    elif id(obj) in seen or depth > _DIGEST_DEPTH:
        put("seen" if id(obj) in seen else "too deep", _name(obj))
    else:
        seen.add(id(obj))
        inner = functools.partial(_feed, h, depth=depth + 1, seen=seen)
        if isinstance(obj, functools.partial):
            put("partial")
            for x in (obj.func, obj.args, obj.keywords):
                inner(x)
        elif isinstance(obj, types.MethodType):
            put("method")
            inner(obj.__func__)
            inner(obj.__self__)
        elif isinstance(obj, types.FunctionType):
            put("function", _name(obj))
            _feed_code(h, obj.__code__, doc=obj.__doc__)
            inner(obj.__defaults__)
            inner(obj.__kwdefaults__)
            for cell in obj.__closure__ or ():
                try:
                    inner(cell.cell_contents)
                except ValueError:  # a cell not yet filled
                    put("empty cell")
            for name in sorted(_globals_read(obj.__code__)):
                value = obj.__globals__.get(name, _MISSING)
                if value is _MISSING:  # a builtin
                    put("global", name)
                elif callable(value) and getattr(value, "__module__", None) != obj.__module__:
                    put("global", name, _name(value))  # another module's function: by name
                else:
                    put("global", name)
                    inner(value)
        elif isinstance(obj, tuple | list):
            put(type(obj).__name__, len(obj))
            for x in obj:
                inner(x)
        elif isinstance(obj, dict):
            put("dict", len(obj))
            for k, v in sorted(obj.items(), key=lambda kv: repr(kv[0])):
                inner(k)
                inner(v)
        elif callable(getattr(obj, "__wrapped__", None)):  # jax.jit, functools.wraps and the like
            put("wrapped", _name(obj))
            inner(obj.__wrapped__)
        else:
            put("object", _name(obj))  # not digested: only its type counts (see the docstring)


_MISSING = object()


def _feed_code(h: Any, code: types.CodeType, doc: Any = None) -> None:
    h.update(repr(("code", code.co_name, code.co_argcount, code.co_kwonlyargcount, code.co_names)).encode())
    h.update(code.co_code)
    for i, const in enumerate(code.co_consts):
        if isinstance(const, types.CodeType):
            _feed_code(h, const)
        elif not (i == 0 and doc is not None and const is doc):
            h.update(_const(const).encode() + b"\0")


def _const(c: Any) -> str:
    """A constant's text, the same in every process (frozensets are sorted: string hashes vary)."""
    if isinstance(c, frozenset):
        return "frozenset(" + ",".join(sorted(_const(x) for x in c)) + ")"
    if isinstance(c, tuple):
        return "(" + ",".join(_const(x) for x in c) + ")"
    return f"{type(c).__name__}:{c!r}"


def _globals_read(code: types.CodeType) -> set[str]:
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _globals_read(const)
    return names
