"""``fit``: a whole training run compiled into one XLA program.

The run is a ``lax.while_loop`` over epochs; each epoch draws its order from
``(key, epoch)``, runs a ``lax.scan`` over its batches (gathered on the device
from data placed there once) and then measures the full-data loss, which
``tol`` is compared with. See :mod:`gdjax._engine` for the program itself.

Compilation: ``fit`` compiles once per static configuration (loss function,
optimizer or optimizer factory, data shapes and batch size, ``log_every``,
``has_aux``/``batched``) and per power-of-two bucket of ``epochs``. The
learning rate and other hyperparameters (in the factory form), the key,
``tol`` and ``epochs`` within its bucket are traced, so changing them reuses
the compiled program.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gdjax import _engine, _optimizer, _setup
from gdjax.checkpoint import digest, holding
from gdjax.data import DataIterator
from gdjax.progress import ProgressBar
from gdjax.step import TrainState

__all__ = ["FitResult", "fit"]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What a :func:`fit` run returns.

    Attributes:
      params: the trained parameters (if it diverged, the last ones that
        passed the divergence checks: finite, with a finite loss).
      state: the final :class:`gdjax.TrainState` (params, optimizer state, step).
      losses: per logged window, the mean mini-batch loss of its steps
        (one entry per step with ``log_every=1``); NaN after a divergence.
      epoch_losses: the full-data loss after each epoch run.
      initial_loss: the full-data loss before training.
      num_steps: parameter updates taken.
      num_epochs: epochs run (fewer than asked if it converged or diverged).
      converged: the full-data loss reached ``tol``.
      diverged: a step's loss was non-finite (the run went back to the last
        parameters whose loss was finite), or at an epoch's end a parameter
        or the full-data loss was (it went back to the epoch's start);
        training stopped at the end of that epoch.
      diverged_at: the rejected step, or None.
      log_every: steps per entry of ``losses``.
      steps_per_epoch: batches per epoch.
      batch_size: examples per batch.
      examples_per_epoch: examples with weight in one epoch.
      hyperparams: the optimizer values used (factory form), as floats.
      wall_time: seconds the compiled run took, compilation excluded.
      compile_time: seconds spent tracing and compiling (about 0 when cached).
      resumed_from: the epoch a checkpoint resumed this run from (0: from the start).
    """

    params: PyTree
    state: TrainState
    losses: np.ndarray
    epoch_losses: np.ndarray
    initial_loss: float
    num_steps: int
    num_epochs: int
    converged: bool
    diverged: bool
    diverged_at: int | None
    log_every: int
    steps_per_epoch: int
    batch_size: int
    examples_per_epoch: int
    hyperparams: dict[str, float]
    wall_time: float
    compile_time: float
    resumed_from: int = 0

    @property
    def final_loss(self) -> float:
        """The full-data loss after the last epoch run."""
        return float(self.epoch_losses[-1]) if len(self.epoch_losses) else self.initial_loss

    @property
    def examples_seen(self) -> int:
        """Examples processed, counting each step's real (unpadded) examples."""
        full, part = divmod(self.num_steps, self.steps_per_epoch)
        return full * self.examples_per_epoch + min(part * self.batch_size, self.examples_per_epoch)


def fit(
    loss_fn: Callable,
    params: PyTree,
    optimizer: optax.GradientTransformation | Callable[..., optax.GradientTransformation],
    data: DataIterator,
    *,
    epochs: int,
    key: jax.Array,
    tol: float | None = None,
    log_every: int = 1,
    learning_rate: float | None = None,
    hyperparams: Mapping[str, float] | None = None,
    has_aux: bool = False,
    batched: bool = False,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
) -> FitResult:
    """Train ``params`` for ``epochs`` epochs in one compiled program.

    Args:
      loss_fn: ``loss_fn(params, example) -> scalar``, the loss of one
        example; averaged over each batch with the batch mask.
      params: initial parameters, any pytree of float arrays.
      optimizer: an optax ``GradientTransformation`` (``optax.adam(1e-3)``),
        or a factory (``optax.adam``) whose values come from
        ``learning_rate`` and ``hyperparams``. The factory form traces those
        values, so calling ``fit`` again with others does not recompile.
      data: a :class:`gdjax.DataIterator`.
      epochs: passes over the data (at most, with ``tol``).
      key: PRNG key for the data order (``jax.random.key(0)``).
      tol: stop once the full-data loss after an epoch is ``<= tol``.
      log_every: average the step losses over windows of this many steps.
      learning_rate: the factory's ``learning_rate``.
      hyperparams: other keyword values for the factory (``{"b1": 0.8}``).
      has_aux: ``loss_fn`` returns ``(loss, aux)``.
      batched: ``loss_fn(params, batch)`` takes a whole :class:`gdjax.Batch`
        and applies its mask; it is also called once per epoch on the whole
        data set (``N`` rows, all unmasked) for the full-data loss, so it must
        accept any leading size.
      progress: show a progress bar over epochs on standard error (see
        :mod:`gdjax.progress`); the results are the same.
      checkpoint: a folder to save the whole run's state in (train state,
        epoch, loss history, settings). Called again with the same
        arguments, ``fit`` resumes from the newest complete checkpoint there
        and gives bit for bit the result of an uninterrupted run (damaged
        files are skipped for the one before); a folder holding another
        configuration (or loss function) is refused, and one run at a time
        holds a folder (a lock, see :class:`gdjax.checkpoint.FolderLock`).
        Needs the factory form of ``optimizer`` (its values are part of the
        configuration).
      checkpoint_every: save every this many epochs (default 1), and at the end.

    Returns:
      A :class:`FitResult`.

    Raises:
      TypeError, ValueError: bad arguments, before anything is compiled.

    Example:
      >>> import jax, optax, gdjax as gd
      >>> prob = gd.problems.linear_regression(n=256, d=4, key=jax.random.key(0))
      >>> model = gd.models.linear()
      >>> res = gd.fit(model.loss, model.init(jax.random.key(1), 4), optax.sgd,
      ...              gd.minibatch(prob.data, 32), epochs=20, key=jax.random.key(2),
      ...              learning_rate=0.1)
      >>> res.num_steps, abs(res.final_loss - prob.min_loss) < 0.01
      (160, True)
    """
    it, epochs, key, tol, log_every = _setup.common(
        loss_fn, params, optimizer, data, epochs, key, tol, log_every, progress
    )
    _setup.check_params(params)
    hp = _setup.hyperparameters(optimizer, learning_rate, hyperparams, allow_arrays=False)
    _optimizer.check_traceable(optimizer, params, hp)
    cfg = _setup.config(
        loss_fn,
        optimizer,
        params,
        it,
        epochs=epochs,
        log_every=log_every,
        has_aux=has_aux,
        batched=batched,
    )
    ckpt = _setup.checkpointer(
        checkpoint,
        checkpoint_every,
        optimizer=optimizer,
        settings=lambda: _setup.run_settings(
            "fit",
            loss_fn,
            optimizer,
            it,
            key,
            hyperparams={k: float(v) for k, v in hp.items()},
            epochs=epochs,
            tol=tol,
            log_every=log_every,
            has_aux=bool(has_aux),
            batched=bool(batched),
            params=digest(params),
        ),
    )
    hp_arrays = {k: _setup.float_array(v) for k, v in hp.items()}
    tol_array = jnp.asarray(-np.inf if tol is None else tol, cfg.loss_dtype)
    with holding([ckpt]):  # the folder is locked (and checked) until fit returns or raises
        run, compile_time, wall_time, resumed = _engine.execute(
            cfg,
            _engine.start,
            (it, params, hp_arrays),
            _engine.train,
            lambda target: (key, jnp.asarray(target, jnp.int32), tol_array),
            epochs,
            ProgressBar(epochs, "fit") if progress else None,
            ckpt,
        )
    return _result(cfg, it, run, hp, wall_time=wall_time, compile_time=compile_time, resumed_from=resumed)


def _result(
    cfg: _engine.Config,
    it: DataIterator,
    run: _engine.RunState,
    hp: dict,
    *,
    wall_time: float,
    compile_time: float,
    resumed_from: int,
) -> FitResult:
    host = jax.device_get(run._replace(train=run.train.step))
    num_epochs = int(host.epoch)
    diverged_at = int(host.diverged_at)
    positions = _engine.stop_position(num_epochs, diverged_at, it.num_batches)
    return FitResult(
        params=run.train.params,
        state=run.train,
        losses=_engine.window_means(host.loss_sums, positions, cfg.log_every),
        epoch_losses=host.epoch_losses[:num_epochs],
        initial_loss=float(host.initial_loss),
        num_steps=int(host.train),
        num_epochs=num_epochs,
        converged=bool(host.converged),
        diverged=bool(host.diverged),
        diverged_at=diverged_at if diverged_at >= 0 else None,
        log_every=cfg.log_every,
        steps_per_epoch=it.num_batches,
        batch_size=it.batch_size,
        examples_per_epoch=it.examples_per_epoch,
        hyperparams={k: float(v) for k, v in hp.items()},
        wall_time=wall_time,
        compile_time=compile_time,
        resumed_from=resumed_from,
    )
