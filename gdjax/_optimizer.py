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
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import linecache
import os
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gdjax import _validate
from gdjax._caches import BoundedCache, callable_key
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
                f"hyperparams gives {name!r} ({_value_text(given[name])}), but {name} is a step count: optax needs "
                f"step counts as Python ints, and hyperparams are traced (so step counts cannot be swept in one "
                f"program either). gdjax gives a factory that takes {name} the run's total number of steps itself "
                f"(here {int(total)}: epochs times steps per epoch, from step 0). Drop {name!r} from hyperparams, "
                f"or bind another number: pass functools.partial({_qualified(optimizer)}, {name}=...) as the "
                f"optimizer."
            )
    if not takes or takes[0] in _unwrap(optimizer)[2]:  # none, or the caller fixed it
        return optimizer
    bound = functools.partial(optimizer, **{takes[0]: int(total)})
    setattr(bound, _BOUND_BY_GDJAX, (takes[0],))  # named as the caller gave it in error messages
    return bound


#: The attribute that marks the keywords :func:`with_total_steps` bound on a ``functools.partial``.
_BOUND_BY_GDJAX = "_gdjax_bound"


def _value_text(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
            f"optimizer factory {_short(factory)} cannot take {sorted(names)}: {exc}. "
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
        raise _explain(factory, exc, culprits or dict.fromkeys(names, exc), known=bool(culprits)) from exc
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
                f"optimizer factory {_short(factory)} must return an optax GradientTransformation; it returned "
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


def _explain(factory: Callable, exc: Exception, culprits: Mapping[str, Exception], *, known: bool) -> TypeError:
    """The sentence for a factory that fails with traced hyperparameters.

    ``culprits`` maps each hyperparameter found at fault to the error tracing
    it alone raised (with ``known`` False: every name, to the error of all
    of them traced together).
    """
    name, names = _short(factory), list(culprits)
    which = f"hyperparameter {names[0]!r}" if len(names) == 1 else f"hyperparameters {names}"
    if not known:
        which = f"one of the hyperparameters {names}"
    if any(_in_schedule(e) for e in culprits.values()):
        if not known or len(names) == 1:
            culprit = "learning_rate" if "learning_rate" in names else names[0]
            part = _schedule_advice(factory, culprit, culprits[culprit], given=known)
            return TypeError(f"optimizer factory {name} cannot take {which} as a traced value: {part}")
        parts = " ".join(f"{n!r}: {_schedule_advice(factory, n, e, given=True)}" for n, e in culprits.items())
        return TypeError(f"optimizer factory {name} cannot take {which} as traced values. {parts}")
    error = _error_text(exc)
    example = names[0] if known else "nesterov"
    return TypeError(
        f"optimizer factory {name} cannot take {which} as a traced number: it uses the value in Python (a flag, a "
        f"dtype, a size or a branch), which fails while tracing ({error}). Only numeric hyperparameters can be "
        f"traced; fix the others in the factory instead, passing {_partial_text(factory, example)} as the "
        f"optimizer, and leave them out of hyperparams."
    )


#: Parameters of optax schedules that only scale the schedule: one of peak 1 times the traced value does the same.
_SCALES = frozenset({"peak_value", "init_value", "end_value", "value", "learning_rate"})
#: Hyperparameter names taken for a schedule's peak where the traceback does not tell which parameter failed.
_PEAK_NAMES = frozenset({"learning_rate", "lr", "peak", "peak_value", "peak_lr", "max_lr", "max_learning_rate"})
#: The step a schedule is called with (traced in every run): never the culprit.
_STEP_NAMES = frozenset({"count", "step"})


@dataclasses.dataclass(frozen=True)
class _Site:
    """Where in optax a traced hyperparameter failed."""

    function: str  # the optax schedule the value reached as a parameter ("optax.exponential_decay")
    called: str  # the outermost optax schedule (the one the factory called; may be ``function``)
    params: tuple[str, ...]  # the parameters of ``function`` holding the traced value
    where: str  # "optax/schedules/_schedule.py:296": the innermost optax line, where Python tested the value
    code: str  # that line's text ("if decay_rate == 0:")


def _site(exc: Exception) -> _Site | None:
    """Which optax schedule (and parameter) the traced value failed in, from the traceback; None if not in optax."""
    try:
        frames = []
        tb = exc.__traceback__
        while tb is not None:
            frames.append((tb.tb_frame, tb.tb_lineno))
            tb = tb.tb_next
        inside = [(f, n) for f, n in frames if _in_optax(f.f_code.co_filename)]
        if not inside:
            return None
        schedules = [f for f, _ in inside if "schedule" in os.path.basename(f.f_code.co_filename)]
        function = ""
        params: tuple[str, ...] = ()
        for frame in schedules:
            found = _traced_parameters(frame)
            if found:
                function, params = _optax_name(frame.f_code.co_name), found
                break
        called = _optax_name(schedules[0].f_code.co_name) if schedules else ""
        frame, line = inside[-1]
        path = frame.f_code.co_filename
        code = linecache.getline(path, line).strip()
        where = os.path.relpath(path, os.path.dirname(_OPTAX_DIR)).replace(os.sep, "/")
        return _Site(function or called, called, params, f"{where}:{line}", code)
    except Exception:  # only for a better sentence: never let reading the traceback fail the check
        return None


_OPTAX_DIR = os.path.dirname(os.path.abspath(optax.__file__))


def _in_optax(path: str) -> bool:
    return os.path.abspath(path).startswith(_OPTAX_DIR + os.sep)


def _traced_parameters(frame: Any) -> tuple[str, ...]:
    """The parameters (else the closure values) of ``frame``'s function that hold traced values, the step aside."""
    code, values = frame.f_code, frame.f_locals
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    found = tuple(n for n in names if n not in _STEP_NAMES and isinstance(values.get(n), jax.core.Tracer))
    return found or tuple(n for n in code.co_freevars if isinstance(values.get(n), jax.core.Tracer))


def _optax_name(function: str) -> str:
    return f"optax.{function}" if callable(getattr(optax, function, None)) else "an optax schedule"


def _is_peak(culprit: str, site: _Site | None) -> bool:
    """Whether the traced value is a schedule's peak (a scale), which a schedule of peak 1 times the value replaces."""
    if site is not None and site.params:
        return all(p in _SCALES for p in site.params)
    return culprit in _PEAK_NAMES


def _schedule_advice(factory: Callable, culprit: str, exc: Exception, *, given: bool) -> str:
    """What went wrong with ``culprit`` inside an optax schedule, and the fix that fits it (a sentence or three)."""
    site = _site(exc)
    error = _error_text(exc)
    subject = "it" if given else "the traced value"
    if site is not None and site.params:
        reach = f"{subject} reaches {site.function} as {' and '.join(site.params)}"
        if site.called not in (site.function, "an optax schedule"):
            reach += f" (called by {site.called})"
    else:
        reach = f"{subject} reaches an optax schedule"
    quote = f"{site.where}: {site.code!r}" if site is not None and site.code else ""
    if _is_peak(culprit, site):
        tested = f" ({quote})" if quote else ""
        return (
            f"{reach}, and optax tests that value in Python{tested}, which fails while tracing ({error}). "
            f"The peak only scales the schedule, so build the schedule with peak 1 and multiply it by the traced "
            f"{culprit}: unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total_steps) (init and end "
            f"values as fractions of the peak; peak_value=1.0 likewise for another schedule), and pass the "
            f"factory lambda {culprit}, total_steps: optax.sgd(lambda step: {culprit} * unit(step)). gdjax gives "
            f"a factory that takes total_steps the run's total number of steps as a Python int, so the factory "
            f"can build unit itself; the rates equal the schedule built with the peak to float rounding."
        )
    param = site.params[0] if site is not None and site.params else culprit
    tested = f" ({quote})" if quote else ""
    return (
        f"{reach}, which optax needs as a Python value, {_kind(param)}{tested}; tracing it fails ({error}). "
        f"Scaling a schedule of peak 1 does not help: {param} is not the peak. Fix it in the factory instead, "
        f"passing {_partial_text(factory, culprit)} as the optimizer and leaving {culprit!r} out of hyperparams "
        f"(one compiled program per value), or write the schedule with jax.numpy (jnp.where, not if), which takes "
        f"traced values."
    )


def _kind(param: str) -> str:
    """What optax uses a schedule parameter for in Python."""
    if "boundar" in param:
        return "a boundary"
    if "steps" in param or param in ("transition_begin", "pct_start"):
        return "a step count"
    if param == "staircase":
        return "a flag"
    if param == "decay_rate":
        return "for a check like decay_rate == 0"
    return "for a check in Python"


def _error_text(exc: Exception) -> str:
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _in_schedule(exc: Exception) -> bool:
    """Whether the error was raised inside an optax schedule."""
    frames = traceback.extract_tb(exc.__traceback__)
    return any(_in_optax(f.filename) and "schedule" in f.filename for f in frames) or "schedule" in str(exc)


def _unwrap(factory: Any) -> tuple[Any, tuple, dict[str, Any]]:
    """A ``functools.partial``'s function, arguments and keywords (nested ones joined; gdjax's step count left out)."""
    args: tuple = ()
    keywords: dict[str, Any] = {}
    while isinstance(factory, functools.partial):
        ours = getattr(factory, _BOUND_BY_GDJAX, ())
        args = factory.args + args
        keywords = {**{k: v for k, v in factory.keywords.items() if k not in ours}, **keywords}
        factory = factory.func
    return factory, args, keywords


def _short(factory: Callable) -> str:
    """The factory's name (a ``functools.partial``'s function's)."""
    factory = _unwrap(factory)[0]
    return getattr(factory, "__name__", None) or repr(factory)


def _qualified(factory: Callable) -> str:
    """How a user names the factory: ``optax.sgd`` for optax's own, else its name (inside a ``functools.partial``)."""
    factory = _unwrap(factory)[0]
    name = _short(factory)
    module = getattr(factory, "__module__", "") or ""
    return f"optax.{name}" if module.startswith("optax") and name.isidentifier() else name


def _partial_text(factory: Callable, name: str) -> str:
    """``functools.partial(optax.sgd, momentum=0.9, nesterov=...)``: the factory as given, with ``name`` fixed."""
    _, args, keywords = _unwrap(factory)
    bound = [_value_text(a) for a in args] + [f"{k}={_value_text(v)}" for k, v in keywords.items() if k != name]
    return f"functools.partial({', '.join([_qualified(factory), *bound, f'{name}=...'])})"
