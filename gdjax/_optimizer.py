"""Checks of an optimizer factory, run on the host before anything is compiled.

``fit`` and ``sweep`` call the factory with traced hyperparameters inside the
compiled program. Two things can go wrong there, and both are caught here
with a plain sentence instead of a trace:

* the factory does not take a keyword (:func:`check_keywords`, by its
  signature);
* the factory (or the optimizer it builds) needs a Python value: a flag
  (``nesterov``), a dtype, or a schedule that branches on its peak in Python
  (:func:`check_traceable`, by building the optimizer once under
  ``jax.eval_shape`` with traced hyperparameters and running its ``init`` and
  ``update`` on the parameters' shapes).

Which hyperparameters are at fault is found here, by tracing them one at a
time; the sentence that explains why, and the fix, is
:func:`gdjax._optimizer_errors.explain`'s.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gdjax import _validate
from gdjax._caches import BoundedCache, callable_key
from gdjax._optimizer_errors import BOUND_BY_GDJAX, explain, qualified, short, unwrap, value_text
from gdjax._types import PyTree

#: The errors JAX raises when Python needs the value of a traced array.
TRACER_ERRORS = (
    jax.errors.ConcretizationTypeError,  # TracerBoolConversionError is one
    jax.errors.TracerIntegerConversionError,
    jax.errors.TracerArrayConversionError,
)

#: Factories, hyperparameter names and parameter shapes already found traceable.
_CHECKED: BoundedCache[bool] = BoundedCache("checked optimizers", 256)


def is_factory(optimizer: Any, name: str = "optimizer") -> bool:
    """Whether ``optimizer`` is a factory (``optax.sgd``) rather than a built ``GradientTransformation``."""
    if isinstance(optimizer, optax.GradientTransformation):
        return False
    if callable(optimizer):
        return True
    raise TypeError(
        f"{name} must be an optax GradientTransformation (optax.sgd(0.1)) or a factory "
        f"(optax.sgd, with learning_rate=...); got {type(optimizer).__name__}."
    )


def require_factory(optimizer: Any, name: str = "optimizer_fn") -> None:
    """Refuse a built optimizer where each run needs its own values (a sweep)."""
    if not is_factory(optimizer, name):
        raise TypeError(
            f"{name} must be an optax factory such as optax.sgd or optax.adam (not a built optimizer): "
            f"sweep calls it with each member's learning_rate and hyperparams."
        )


#: The keywords a factory may take the run's total number of steps as (for schedules).
STEP_COUNT_NAMES = ("total_steps", "num_steps")


def with_total_steps(optimizer: Any, total: int, given: Any = ()) -> Any:
    """A factory that takes ``total_steps`` (or ``num_steps``) with the run's total bound; others as they are.

    A name the caller bound already (``functools.partial(make, total_steps=20)``)
    is left as it is.

    Raises:
      TypeError: ``given`` (the caller's hyperparameters) names a step count
        the factory takes: it would be traced, and step counts must be
        Python ints (gdjax supplies it; another number is bound with
        ``functools.partial``).
    """
    if not is_factory(optimizer):
        return optimizer
    try:
        parameters = inspect.signature(optimizer).parameters
    except (TypeError, ValueError):
        return optimizer
    takes = [
        name
        for name in STEP_COUNT_NAMES
        if (p := parameters.get(name)) is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    for name in takes:
        if name in given:
            raise TypeError(
                f"hyperparams gives {name!r} ({value_text(given[name])}), but {name} is a step count: optax needs "
                f"step counts as Python ints, and hyperparams are traced (so step counts cannot be swept in one "
                f"program either). gdjax gives a factory that takes {name} the run's total number of steps itself "
                f"(here {int(total)}: epochs times steps per epoch, from step 0). Drop {name!r} from hyperparams, "
                f"or bind another number: pass functools.partial({qualified(optimizer)}, {name}=...) as the "
                f"optimizer."
            )
    if not takes or takes[0] in unwrap(optimizer)[2]:  # none, or the caller fixed it
        return optimizer
    bound = functools.partial(optimizer, **{takes[0]: int(total)})
    setattr(bound, BOUND_BY_GDJAX, (takes[0],))  # named as the caller gave it in error messages
    return bound


def build(optimizer: Any, hyperparams: Mapping[str, Any]) -> optax.GradientTransformation:
    """The optimizer with these (concrete) values: a factory called, a built one as it is."""
    if not is_factory(optimizer):
        return optimizer
    return optimizer(**{k: float(np.ravel(v)[0]) for k, v in hyperparams.items()})


def merge_learning_rate(learning_rate: Any, hyperparams: Any, *, name: str = "learning_rate") -> dict[str, Any]:
    """``hyperparams`` (checked to be a mapping of names) with ``learning_rate`` first, given once."""
    merged = _validate.check_hyperparams(hyperparams)
    if learning_rate is None:
        return merged
    if "learning_rate" in merged:
        raise ValueError(f"learning_rate is given twice: as {name}= and in hyperparams. Give it once.")
    return {"learning_rate": learning_rate, **merged}


def hyperparameters(optimizer: Any, learning_rate: Any, hyperparams: Any, *, allow_arrays: bool) -> dict[str, Any]:
    """Collect ``learning_rate`` and ``hyperparams`` into one checked mapping of numpy values."""
    factory = is_factory(optimizer)
    hyperparams = merge_learning_rate(learning_rate, hyperparams)
    if not factory:
        if hyperparams:
            raise ValueError(
                f"optimizer is already built (a GradientTransformation), so {sorted(hyperparams)} cannot be "
                f"applied. Pass the factory instead, e.g. optimizer=optax.sgd, learning_rate=0.1."
            )
        return {}
    if not hyperparams:
        raise ValueError(
            f"optimizer {getattr(optimizer, '__name__', optimizer)!r} is a factory, so it needs its values: "
            f"pass learning_rate=... (and hyperparams={{...}} for others), or pass a built optimizer."
        )
    check_keywords(optimizer, hyperparams)
    out = {}
    for name, value in hyperparams.items():
        arr = _validate.check_hyperparam(value, name)
        if arr.ndim != 0 and not allow_arrays:
            raise ValueError(f"{name} must be a single number in fit; got shape {arr.shape}. Use gd.sweep for many.")
        out[name] = arr
    return out


def check_keywords(factory: Callable, names: Any, *, learning_rate: str = "learning_rate") -> None:
    """Fail now, with a plain sentence, if ``factory`` does not take the keywords ``names``.

    ``learning_rate`` names the argument the learning rate came from
    (``learning_rate`` in ``fit``, ``learning_rates`` in ``sweep``).
    """
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins and odd callables: the traced build below tells
        return
    try:
        signature.bind(**dict.fromkeys(names))
    except TypeError as exc:
        raise TypeError(
            f"optimizer factory {short(factory)} cannot take {sorted(names)}: {exc}. "
            f"It accepts {list(signature.parameters)}; check the names in {learning_rate}= and hyperparams=."
        ) from None


def check_traceable(factory: Callable, params: PyTree, hyperparams: Mapping[str, Any]) -> None:
    """Build ``factory(**hyperparams)`` with traced values and run its init and update on ``params``' shapes.

    Raises:
      TypeError: the factory does not return a ``GradientTransformation``, or
        it (or its optimizer) needs a hyperparameter as a Python value; the
        hyperparameters at fault are named when trying them one at a time
        tells which.
    """
    names = tuple(hyperparams)
    if not names:
        return
    key = _cache_key(factory, names, params)
    if key is not None and _CHECKED.get(key):
        return
    exc = _failure(factory, params, hyperparams, traced=names)
    if exc is not None:
        if _failure(factory, params, hyperparams, traced=()) is not None:
            raise exc  # it fails with every hyperparameter concrete too: not theirs to explain
        alone = {n: _failure(factory, params, hyperparams, traced=(n,)) for n in names}
        culprits = {n: e for n, e in alone.items() if e is not None}
        raise explain(factory, exc, culprits or dict.fromkeys(names, exc), known=bool(culprits)) from exc
    if key is not None:
        _CHECKED.put(key, True)


def _cache_key(factory: Callable, names: tuple, params: PyTree) -> Any:
    leaves, treedef = jax.tree.flatten(params)
    shapes = tuple((np.shape(x), str(getattr(x, "dtype", type(x)))) for x in leaves)
    key = (callable_key(factory), names, treedef, shapes)
    try:
        hash(key)
    except TypeError:
        return None
    return key


class _NotAnOptimizerError(TypeError):
    pass


def _failure(factory: Callable, params: PyTree, hyperparams: Mapping[str, Any], *, traced: tuple) -> Exception | None:
    """The tracer error building and running the optimizer raises with ``traced`` traced (others concrete), or None."""
    dtype = jnp.result_type(float)
    fixed = {k: float(np.ravel(v)[0]) for k, v in hyperparams.items() if k not in traced}

    def run(values: dict[str, jax.Array], params: PyTree) -> PyTree:
        opt = factory(**values, **fixed)
        if not isinstance(opt, optax.GradientTransformation):
            got = "an array" if isinstance(opt, jax.Array) else type(opt).__name__
            raise _NotAnOptimizerError(
                f"optimizer factory {short(factory)} must return an optax GradientTransformation; it returned "
                f"{got}. Pass a factory such as optax.sgd, or a function of the hyperparameters that builds one "
                f"(lambda learning_rate: optax.sgd(learning_rate))."
            )
        updates, _ = opt.update(params, opt.init(params), params)
        return updates

    try:
        jax.eval_shape(run, {k: jax.ShapeDtypeStruct((), dtype) for k in traced}, params)
    except _NotAnOptimizerError as exc:
        raise TypeError(str(exc)) from None
    except TRACER_ERRORS as exc:
        return exc
    except TypeError as exc:
        if "unhashable" in str(exc):
            return exc
        if len(traced) < len(hyperparams):  # trying one name: another failure is not this name's doing
            return None
        raise
    except Exception:
        if len(traced) < len(hyperparams):
            return None
        raise
    return None
