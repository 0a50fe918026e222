"""What a command-line sweep may ask of the machine: the step bound and a memory estimate, checked up front."""

from __future__ import annotations

import argparse
import os

import jax

from gdjax import _blocks, _sources
from gdjax._types import plural
from gdjax.cli._common import UsageError, check, gib

MAX_STEPS = 2**31  # steps are counted in int32 on the device
MEMORY_FRACTION = 0.5  # of physical memory: the most a sweep may plan to use
FALLBACK_MEMORY = 16 * 2**30  # when the machine's memory cannot be read
OPTIMIZER_COPIES = {"sgd": 0, "momentum": 1, "adam": 2}  # optimizer state, in copies of the parameters
ROW_BYTES = 2048  # a member's row of the results table, as Python objects


def memory_limit() -> tuple[int, str]:
    """The memory a sweep may plan to use, and a phrase saying where the limit comes from."""
    limit, where = None, ""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        physical = 0
    if physical > 0:
        limit, where = int(physical * MEMORY_FRACTION), f"half of this machine's {gib(physical)}"
    device = jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    available = (stats or {}).get("bytes_limit")
    if available and (limit is None or available < limit):
        limit, where = int(available), f"the memory of the {device.platform} device"
    if limit is None:
        limit, where = FALLBACK_MEMORY, "a fixed limit, as this machine's memory is unknown"
    return limit, where


def check_size(
    args: argparse.Namespace, n: int, d: int, batch: int, steps_per_epoch: int, num_outputs: int = 1
) -> None:
    """Refuse a sweep that cannot run: too many steps for int32, or more memory than the limit.

    ``num_outputs`` is the linear model's outputs per row: 1, or the number
    of classes of softmax regression.
    """
    steps = args.epochs * steps_per_epoch
    check(
        steps < MAX_STEPS,
        f"--epochs {args.epochs} makes {steps:,} steps ({plural(steps_per_epoch, 'step')} per epoch); gdjax counts "
        f"steps in 32-bit integers, so there must be fewer than 2**31: use --epochs "
        f"{(MAX_STEPS - 1) // steps_per_epoch:,} or fewer (or a larger --batch-size).",
    )
    mlp = args.model == "mlp"
    params = (d + 2) * args.hidden + 1 if mlp else (d + 1) * num_outputs
    # per member: parameters, gradient, update and last good parameters, plus the optimizer's copies; the
    # activations of the full-data loss (one block of rows) or of a step (forward, derivative, backward)
    width = args.hidden if mlp else num_outputs
    rows = min(n, max(batch, _blocks.BLOCK_ELEMENTS // (d + 1)))
    model = 4 * ((4 + OPTIMIZER_COPIES[args.optimizer]) * params + max(2 * rows, 3 * batch) * width)
    # the loss of every step (the history's capacity is a power of two of epochs): on the device, back on the
    # host, and in float64 for the results and the figures
    capacity = 1 << max(0, args.epochs - 1).bit_length()
    history = 16 * capacity * (steps_per_epoch + 1)
    member = model + history + ROW_BYTES
    data = 4 * n * (d + 1)  # float32, placed on the device when it fits (else streamed: gd.minibatch's on_device=None)
    need = args.num_lrs * member + (data if data <= _sources.DEVICE_SHARE * _sources.free_bytes() else 0)
    limit, where = memory_limit()
    if need <= limit:
        return
    fixes = ["--hidden"] if mlp and model >= history else []
    fixes += ["--epochs"] if history > model else []
    if member > limit:
        raise UsageError(
            f"even one learning rate would need about {gib(member)} of memory ({params:,} parameters, "
            f"{steps:,} steps of loss history), more than the limit of {gib(limit)} ({where}); "
            f"lower {' or '.join(fixes or ['--hidden', '--epochs'])}."
        )
    raise UsageError(
        f"this sweep would need about {gib(need)} of memory ({args.num_lrs:,} learning rates, each "
        f"{params:,} parameters and {steps:,} steps of loss history), more than the limit of {gib(limit)} "
        f"({where}); lower {' or '.join(['--num-lrs', *fixes])} (at most {max(1, limit // member):,} learning "
        f"rates fit), or run the members in chunks from Python with gdjax.sweep(..., chunk_size=N)."
    )
