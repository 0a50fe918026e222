"""The diagnostics of :func:`gdjax.study`: the sharpness and the noise scale, at the start and at the target.

Measured after the sweeps, on the data the study checked (not checked again), each call timed; one that fails while
measuring (a ValueError: a loss not finite there, a Hessian-vector product that is not) is recorded, and the sweeps'
results stand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gdjax._study_fit import Reading
from gdjax._types import PyTree
from gdjax.data import DataIterator
from gdjax.noise_scale import noise_scale
from gdjax.results import SweepResult
from gdjax.sharpness import sharpness

__all__ = ["measure", "whole"]


def whole(it: DataIterator) -> DataIterator:
    """The checked data as :func:`gdjax.full_batch` gives it (on the device), without checking it again.

    The sharpness and the noise scale compile one program per iterator shape: this one is shared with the
    user's own ``gd.sharpness(loss_fn, params, data)`` calls. Streamed data keeps its iterator.
    """
    if not it.on_device:
        return it
    return DataIterator(it.data, it.num_examples, it.num_examples, False, False)


def measure(
    loss_fn: Callable,
    params: PyTree,
    data: DataIterator,
    sweeps: list[SweepResult],
    readings: list[Reading],
    options: dict[str, Any],
) -> dict[str, Any]:
    """The sharpness and noise scale at the initial parameters, and the noise scale where the target was reached.

    ``data`` is an iterator over the checked data: the measurements use every example of it, and do not check
    the data again.
    """
    times: dict[str, float] = {}
    errors: dict[str, str] = {}

    def timed(name: str, fn: Callable[..., float], at: PyTree) -> float | None:
        t0 = time.perf_counter()
        try:
            return float(fn(loss_fn, at, data, **options))
        except ValueError as exc:  # found while measuring (a loss not finite there, ...): keep the sweeps' results
            errors[name] = str(exc)
            return None
        finally:
            times[name] = time.perf_counter() - t0

    out: dict[str, Any] = {
        "sharpness": timed("sharpness", sharpness, params),
        "noise_scale": timed("noise_scale", noise_scale, params),
    }
    reached = [i for i, r in enumerate(readings) if r.steps_to_target is not None]
    if reached:
        i = reached[-1]
        member = readings[i].member
        assert member is not None
        out["noise_scale_at_target"] = timed("noise_scale_at_target", noise_scale, sweeps[i].member_params(member))
        out["noise_scale_batch_size"] = sweeps[i].batch_size
    return {**out, "measure_times": times, "measure_errors": errors}
