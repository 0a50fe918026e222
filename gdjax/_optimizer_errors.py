"""Why a factory cannot take a traced value, in a sentence.

:func:`gdjax._optimizer.check_traceable` finds that building or running an
optimizer fails with a traced hyperparameter; :func:`explain` turns the
errors it caught into one ``TypeError`` that names the hyperparameters at
fault and the fix that fits them. Inside an optax schedule it reads the
traceback for the schedule and parameter the value reached and the line of
optax that tested it (:func:`_site`): a schedule's peak is replaced by a
schedule of peak 1 times the traced value, anything else is fixed in the
factory with ``functools.partial``. Reading the traceback only improves the
sentence: it never fails the check.

It also names factories as a user would write them (:func:`short`,
:func:`qualified`, :func:`unwrap` for a ``functools.partial``, leaving out
the step count gdjax bound, marked by :data:`BOUND_BY_GDJAX`), which
:mod:`gdjax._optimizer` uses in its own errors.
"""

from __future__ import annotations

import dataclasses
import functools
import linecache
import os
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

#: The attribute that marks the keywords :func:`gdjax._optimizer.with_total_steps` bound on a ``functools.partial``.
BOUND_BY_GDJAX = "_gdjax_bound"


def value_text(value: Any) -> str:
    """``repr(value)``, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def explain(factory: Callable, exc: Exception, culprits: Mapping[str, Exception], *, known: bool) -> TypeError:
    """The sentence for a factory that fails with traced hyperparameters.

    ``culprits`` maps each hyperparameter found at fault to the error tracing
    it alone raised (with ``known`` False: every name, to the error of all
    of them traced together).
    """
    name, names = short(factory), list(culprits)
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


def unwrap(factory: Any) -> tuple[Any, tuple, dict[str, Any]]:
    """A ``functools.partial``'s function, arguments and keywords (nested ones joined; gdjax's step count left out)."""
    args: tuple = ()
    keywords: dict[str, Any] = {}
    while isinstance(factory, functools.partial):
        ours = getattr(factory, BOUND_BY_GDJAX, ())
        args = factory.args + args
        keywords = {**{k: v for k, v in factory.keywords.items() if k not in ours}, **keywords}
        factory = factory.func
    return factory, args, keywords


def short(factory: Callable) -> str:
    """The factory's name (a ``functools.partial``'s function's)."""
    factory = unwrap(factory)[0]
    return getattr(factory, "__name__", None) or repr(factory)


def qualified(factory: Callable) -> str:
    """How a user names the factory: ``optax.sgd`` for optax's own, else its name (inside a ``functools.partial``)."""
    factory = unwrap(factory)[0]
    name = short(factory)
    module = getattr(factory, "__module__", "") or ""
    return f"optax.{name}" if module.startswith("optax") and name.isidentifier() else name


def _partial_text(factory: Callable, name: str) -> str:
    """``functools.partial(optax.sgd, momentum=0.9, nesterov=...)``: the factory as given, with ``name`` fixed."""
    _, args, keywords = unwrap(factory)
    bound = [value_text(a) for a in args] + [f"{k}={value_text(v)}" for k, v in keywords.items() if k != name]
    return f"functools.partial({', '.join([qualified(factory), *bound, f'{name}=...'])})"
