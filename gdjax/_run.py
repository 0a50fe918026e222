"""What a compiled run is made of: its static configuration, its state and its inputs (types, no tracing).

:class:`Config` is the static part of a run (equal configs share compiled
programs), :class:`RunState` what a run carries from one epoch to the next,
:class:`Inputs` the traced inputs and :class:`Layout` how one program lays
out its runs. :func:`capacity`, :func:`windows` and :func:`unroll_for` size
the program's buffers and its scan. The program itself is in
:mod:`gdjax._program`; the host code that drives it in :mod:`gdjax._runner`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from gdjax import _blocks
from gdjax._caches import callable_key
from gdjax._evaluation import Evaluation, Watch
from gdjax._trainable import Static, combine
from gdjax._types import HostOrDevice, PyTree, ceil_div
from gdjax.data import Batch, DataIterator
from gdjax.step import TrainState, batch_loss

#: The name of the mesh axis a sweep's members are split along.
AXIS = "members"
#: The most step positions a run may have: the step counter and positions are int32.
MAX_STEPS = 2**31 - 1
#: The most bytes of loss history one compiled program keeps (all its members together). A run whose whole
#: history would need more keeps ``epoch_capacity`` epochs of it in the program and moves it to the host
#: whenever that segment is full.
HISTORY_BYTES = 32 << 20
#: Steps whose parameter count times batch size is at most this are unrolled ``SMALL_STEP_UNROLL`` times in
#: the scan. Unrolling 4 times once saved 35% (linear regression, D=64, batch 32, 2-core CPU) when every step
#: carried a fallback copy of the state; with the windowed steps of :mod:`gdjax._program` it measures no
#: faster (sweep / expert 0.78x unrolled 4 times, 0.78x not unrolled; single-sample 1.63x against 1.46x) and
#: each unrolled copy of the step is compiled again, so steps are not unrolled.
SMALL_STEP_WORK = 2**16
SMALL_STEP_UNROLL = 1
#: The loss's keys (``with_key``) come from ``fold_in(order key, LOSS_STREAM)``, then the step, then the example;
#: the data order folds in the epoch number (below 2**31), so the two streams never meet.
LOSS_STREAM = 2**32 - 1


@dataclasses.dataclass(frozen=True)
class Config:
    """The static part of a run: equal configs share compiled programs.

    The loss and optimizer compare by :func:`gdjax._caches.callable_key`, so
    an equal ``functools.partial`` made anew at every call shares them too.
    """

    loss_fn: Callable[..., Any] = dataclasses.field(compare=False)
    optimizer: Any = dataclasses.field(compare=False)  # a GradientTransformation, or a factory when ``factory``
    loss_key: Hashable
    optimizer_key: Hashable
    factory: bool
    has_aux: bool
    batched: bool
    log_every: int
    epoch_capacity: int
    loss_dtype: Any
    unroll: int = 1
    evaluation: Evaluation = dataclasses.field(default_factory=Evaluation)
    loss_hparams: tuple[str, ...] = ()
    with_key: bool = False
    stateful: bool = False
    static: Static | None = None  # the leaves of the model that are not trained (None: every leaf is)
    #: a data-parallel run: the sharding that splits a batch's rows over the devices (None: one device)
    data_sharding: Any = None
    #: values one block of a full-data pass reads (:mod:`gdjax._blocks`); read when the config is made
    block_elements: int = dataclasses.field(default_factory=lambda: _blocks.BLOCK_ELEMENTS)

    @classmethod
    def make(cls, loss_fn: Callable[..., Any], optimizer: Any, **values: Any) -> Config:
        return cls(loss_fn, optimizer, callable_key(loss_fn), callable_key(optimizer), **values)

    def build(self, hparams: dict[str, jax.Array]) -> optax.GradientTransformation:
        """The optimizer for these (possibly traced) hyperparameters."""
        return self.optimizer(**hparams) if self.factory else self.optimizer

    def model(self, params: PyTree) -> PyTree:
        """The whole model: the trained ``params`` with the static leaves put back."""
        return params if self.static is None else combine(params, self.static.tree)

    def bind(self, loss_hparams: dict[str, jax.Array]) -> Callable[..., Any]:
        """The loss of the trained params, with its (possibly traced) keyword values bound."""
        fn = self.loss_fn
        if self.static is not None:
            fn = functools.partial(with_static, self.loss_fn, self.static.tree)
        return functools.partial(fn, **loss_hparams) if loss_hparams else fn

    def objective(self, loss_hparams: dict[str, jax.Array]) -> Callable[..., tuple[jax.Array, Any]]:
        """``f(params, batch, key, model_state) -> (mean loss, (aux, new model state))`` for these loss values."""
        return batch_loss(
            self.bind(loss_hparams),
            has_aux=self.has_aux,
            batched=self.batched,
            with_key=self.with_key,
            stateful=self.stateful,
        )

    def inference(self, loss_hparams: dict[str, jax.Array], model_state: PyTree) -> Callable[..., Any]:
        """``f(params, batch) -> (mean loss, aux)``: the loss as evaluated (``key=None``, the model state unchanged)."""
        objective = self.objective(loss_hparams)

        def f(params: PyTree, batch: Batch) -> tuple[jax.Array, Any]:
            loss, (aux, _) = objective(params, batch, None, model_state)
            return loss, aux

        return f

    @property
    def aux_size(self) -> int:
        return sum(int(np.prod(shape)) for _, shape in self.evaluation.aux)


def with_static(loss_fn: Callable[..., Any], static: PyTree, params: PyTree, x: PyTree, **keywords: Any) -> Any:
    """``loss_fn`` called with the whole model: the trained ``params`` and the ``static`` leaves."""
    return loss_fn(combine(params, static), x, **keywords)


class RunState(NamedTuple):
    """Everything a run carries from one epoch to the next.

    Attributes:
      train: the :class:`gdjax.TrainState` (the trained leaves of the params).
      epoch: epochs completed (counted from the run this one continues, if any).
      base: the first epoch the history buffers hold.
      first: the epoch this run started at (0, or the epoch of the state it continues).
      loss_sums: per window of ``log_every`` step positions from epoch
        ``base`` on, the sum of the step losses (NaN after a divergence).
      aux_sums: ``(aux elements, windows)``, the same for each aux element.
      evals: ``(columns, epoch_capacity)``: the evaluation row after each
        epoch from ``base`` on (column 0 the full-data loss); NaN where not
        evaluated.
      initial_loss: full-data loss before the first step.
      last: the evaluation row of ``train.params`` (current after every
        evaluation and at the end).
      converged: the full-data loss reached ``tol``.
      diverged: a step produced a non-finite loss or parameters.
      diverged_at: the step position rejected, or -1.
      watch: the monitor's state (best value, epoch and params; patience).
    """

    train: TrainState
    epoch: HostOrDevice
    base: HostOrDevice
    first: HostOrDevice
    loss_sums: HostOrDevice
    aux_sums: HostOrDevice
    evals: HostOrDevice
    initial_loss: HostOrDevice
    last: HostOrDevice
    converged: HostOrDevice
    diverged: HostOrDevice
    diverged_at: HostOrDevice
    watch: Watch


#: The fields of :class:`RunState` indexed by logged window (last axis), and by epoch.
WINDOW_FIELDS = ("loss_sums", "aux_sums")
EPOCH_FIELDS = ("evals",)


class Layout(NamedTuple):
    """How one program lays out its runs (static: part of the compiled program's identity).

    Attributes:
      cfg: the run's :class:`Config`.
      members: a leading member axis (a sweep) or one run (a fit).
      params_batched: each member starts from its own parameters.
      keys_batched: each member has its own order key.
      mesh: the devices the members are split over (a sweep), or each batch's rows
        (a fit, data parallel); None for one device.
    """

    cfg: Config
    members: bool = False
    params_batched: bool = False
    keys_batched: bool = False
    mesh: Mesh | None = None


class Inputs(NamedTuple):
    """The traced inputs of a run: changing them compiles nothing new.

    Attributes:
      it: the training data.
      init: the :class:`gdjax.TrainState` to start from: the trained
        params, and the optimizer state and step count of a run it
        continues (None: a new run), and the model state (or None).
      hparams: the optimizer factory's values.
      key: the order key (the loss's keys are derived from it).
      tol: the convergence threshold (-inf: none).
      loss_hparams: the loss's keyword values.
      eval_data: the evaluation data set (a pytree of arrays), or None.
      epochs: the epoch to train to (the run evaluates once more when it finishes).
      first: the epoch the run starts at (0, or that of the state it continues).
    """

    it: DataIterator
    init: TrainState
    hparams: dict[str, jax.Array]
    key: jax.Array
    tol: jax.Array
    loss_hparams: dict[str, jax.Array]
    eval_data: PyTree
    epochs: jax.Array
    first: jax.Array


class _Member(NamedTuple):
    """The inputs that differ between a sweep's members."""

    hparams: dict[str, jax.Array]
    loss_hparams: dict[str, jax.Array]


def unroll_for(params: PyTree, batch_size: int) -> int:
    """How many steps the epoch's scan unrolls for these params and batch size."""
    size = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    return SMALL_STEP_UNROLL if size * batch_size <= SMALL_STEP_WORK else 1


def capacity(
    epochs: int,
    steps_per_epoch: int = 1,
    log_every: int = 1,
    members: int = 1,
    itemsize: int = 8,
    *,
    columns: int = 1,
    aux: int = 0,
) -> int:
    """Epochs of history a program holds: the next power of two of ``epochs``, halved to fit :data:`HISTORY_BYTES`.

    ``columns`` values are kept per epoch (the evaluation row) and ``1 + aux`` per logged window.
    """
    cap = 1 << max(0, epochs - 1).bit_length()
    per = lambda c: columns * c + (1 + aux) * windows(c, steps_per_epoch, log_every)  # noqa: E731
    while cap > 1 and members * itemsize * per(cap) > HISTORY_BYTES:
        cap //= 2
    return cap


def windows(epoch_capacity: int, steps_per_epoch: int, log_every: int) -> int:
    """Entries of the in-program step-loss history (a segment that starts mid-window touches one more)."""
    return ceil_div(epoch_capacity * steps_per_epoch, log_every) + (log_every > 1)
