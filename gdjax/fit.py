"""``fit``: a whole training run compiled into one XLA program.

The run is a ``lax.while_loop`` over epochs; each epoch draws its order from
``(key, epoch)``, runs a ``lax.scan`` over its batches (gathered on the device
from data placed there once) and then measures the full-data loss, which
``tol`` is compared with. See :mod:`gdjax._program` for the
program itself and :mod:`gdjax._runner` for the host code that drives it.

Compilation: ``fit`` compiles once per static configuration (loss function,
optimizer or optimizer factory, data shapes and batch size, ``log_every``,
``has_aux``/``batched``) and per power-of-two bucket of ``epochs``. The
learning rate and other hyperparameters (in the factory form), the key,
``tol`` and ``epochs`` within its bucket are traced, so changing them reuses
the compiled program.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import optax

from gdjax import (
    _config,
    _data_parallel,
    _distributed,
    _hooks,
    _optimizer,
    _plan,
    _runner,
    _settings,
    _validate,
    _validate_eval,
    _validate_model,
)
from gdjax._run import Layout
from gdjax._types import PyTree
from gdjax.checkpoint import holding
from gdjax.data import DataIterator
from gdjax.progress import ProgressBar
from gdjax.results import FitResult

__all__ = ["FitResult", "fit"]


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
    eval_data: PyTree | DataIterator | None = None,
    metrics: Mapping[str, Callable[..., Any]] | None = None,
    eval_every: int = 1,
    monitor: str | None = None,
    mode: str = "auto",
    patience: int | None = None,
    min_delta: float = 0.0,
    keep_best: bool = False,
    loss_hyperparams: Mapping[str, float] | None = None,
    with_key: bool = False,
    model_state: PyTree = None,
    devices: Sequence[jax.Device] | None = None,
) -> FitResult:
    """Train ``params`` for ``epochs`` epochs in one compiled program.

    Args:
      loss_fn: ``loss_fn(params, example) -> scalar``, the loss of one
        example; averaged over each batch with the batch mask.
      params: initial parameters: any pytree, an Equinox module included.
        Its float arrays are trained and every other leaf (functions,
        integers, integer arrays) is held static; the loss, the metrics and
        the results see the whole model. Or a finished run's ``res.state``
        (a :class:`gdjax.TrainState`): the run continues it, with its
        optimizer state, step count and model state, numbering epochs on
        from its step count, so ``fit(5 epochs)`` then ``fit(res.state, 5
        more)`` gives the bits of ``fit(10 epochs)`` (``epochs`` counts the
        epochs to add; the monitor of early stopping starts afresh; an
        optimizer factory that takes ``total_steps`` is given the total of
        the whole run, so the first part must bind its own by hand with
        ``functools.partial`` to follow the same schedule).
      optimizer: an optax ``GradientTransformation`` (``optax.adam(1e-3)``),
        or a factory (``optax.adam``) whose values come from
        ``learning_rate`` and ``hyperparams``. The factory form traces those
        values, so calling ``fit`` again with others does not recompile. A
        factory with a ``total_steps`` (or ``num_steps``) parameter is given
        the run's total number of steps (epochs times steps per epoch, from
        step 0), for schedules.
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
        Only ``epochs`` may differ: a larger value extends the run (unless
        the factory takes ``total_steps``: its schedule would change). With a
        built optimizer the checkpoint records its state's structure,
        shapes and dtypes, not its values.
        :func:`gdjax.checkpoint.load` reads a folder without training code.
      checkpoint_every: save every this many epochs (default 1), and at the end.
      eval_data: held-out data (a pytree of arrays shaped like the training
        data, or a :class:`gdjax.DataIterator`) evaluated with the training
        data: ``"eval_loss"`` and ``"eval_<metric>"`` in ``history``.
      metrics: name -> ``fn(params, example) -> scalar`` (with ``batched``:
        ``fn(params, batch)``, weighting by ``batch.mask`` itself); each is
        the masked mean over a data set, at every evaluation, on the
        training data (``history[name]``) and on ``eval_data``.
      eval_every: evaluate after every this many epochs (0: only at the
        end). An evaluation is a full pass over the training data (the
        full-data loss, which ``tol`` and ``epoch_losses`` need) and over
        ``eval_data``; epochs between evaluations skip it, so a large
        ``eval_every`` saves that cost. Evaluation never changes training.
      monitor: the evaluated value early stopping and ``best_*`` watch
        (default ``"eval_loss"`` with ``eval_data``, else ``"loss"``).
      mode: ``"min"`` or ``"max"``; ``"auto"`` maximises names containing
        acc, auc, f1, precision or recall and minimises the rest.
      patience: stop after this many evaluations without improvement
        (None: never stop early). Needs ``eval_every >= 1``.
      min_delta: the least change of the monitored value that counts as an
        improvement.
      keep_best: keep the parameters of the best monitored evaluation in
        ``best_params`` (one more copy of the parameters in memory).
      loss_hyperparams: name -> number passed to the loss as keywords,
        ``loss_fn(params, example, **loss_hyperparams)``; traced, so other
        values reuse the compiled program.
      with_key: pass the loss ``key=``, a PRNG key per step (per example for
        a per-example loss) for dropout and other noise:
        ``fold_in(fold_in(fold_in(key, 2**32 - 1), step), position in the
        batch)``, so a run is reproducible and resumes exactly. At
        evaluation (the full-data loss, ``eval_data``) the key is None.
      model_state: the loss's initial model state (batch-norm statistics):
        the loss takes ``model_state=`` and returns ``(loss,
        new_model_state)`` (with ``has_aux``: ``(loss, (new_model_state,
        aux))``). The state is carried from step to step, not trained;
        evaluations and metrics (``fn(params, x, model_state=...)``) get
        it unchanged. ``res.state.model_state`` holds the final one.
      devices: run data parallel over these devices (``jax.devices()``:
        all of them, of every process after ``jax.distributed.initialize``):
        each batch is split along its rows over the devices, params,
        optimizer and model state are replicated, and the partial gradients
        are summed across devices before each update. The batch size must
        divide by the number of devices. Same data order and results as on
        one device to float tolerance (the sums run in another order), the
        same bits from run to run. Default None: JAX's default device. Over
        several processes every process makes the same call (checked) and
        gets the whole result; the first writes the checkpoints and draws
        the progress bar.

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
    args = _validate.run_arguments(loss_fn, data, epochs, key, tol, log_every, progress)
    st = _validate_model.start(params, model_state, args.it.num_batches)
    total = _validate.check_steps(st.first + args.epochs, args.it.num_batches)
    with_key = _validate.check_flag(with_key, "with_key")
    stateful = st.init.model_state is not None
    lhp = _validate_eval.loss_values(loss_hyperparams, allow_arrays=False)
    _validate_model.loss_keywords(loss_fn, with_key=with_key, stateful=stateful, also=lhp)
    optimizer = _optimizer.with_total_steps(optimizer, total, hyperparams if isinstance(hyperparams, Mapping) else ())
    hp = _optimizer.hyperparameters(optimizer, learning_rate, hyperparams, allow_arrays=False)
    _optimizer.check_traceable(optimizer, st.init.params, hp)
    _validate_model.check_opt_state(lambda: _optimizer.build(optimizer, hp), st)
    _validate_eval.loss_keywords(loss_fn, lhp, _validate_model.model_keywords(with_key=with_key, stateful=stateful))
    evaluation, eval_arrays = _validate_eval.evaluation(
        args.it,
        eval_data=eval_data,
        metrics=metrics,
        eval_every=eval_every,
        monitor=monitor,
        mode=mode,
        patience=patience,
        min_delta=min_delta,
        keep_best=keep_best,
        tol=args.tol,
    )
    cfg = _config.config(
        loss_fn,
        optimizer,
        st.init.params,
        args.it,
        epochs=args.epochs,
        log_every=args.log_every,
        has_aux=has_aux,
        batched=batched,
        evaluation=evaluation,
        loss_hparams=tuple(lhp),
        with_key=with_key,
        model_state=st.init.model_state,
        static=st.static,
    )

    devs = None if devices is None else _plan.check_devices(devices)
    mesh = None if devs is None else _data_parallel.mesh(devs, args.it)
    if mesh is not None:
        cfg = dataclasses.replace(cfg, data_sharding=_data_parallel.sharding(mesh))
    # the settings are only made with a checkpoint (or across processes): they hash the data and params
    count = 1 if devs is None else len(devs)  # a data-parallel run resumes on as many devices
    settings = functools.cache(
        functools.partial(_settings.fit_settings, cfg, args, st, hp, lhp, eval_arrays, devices=count)
    )
    if devs is not None and _distributed.spans(devs):
        asked = {"epochs": args.epochs, "checkpoint": checkpoint, "every": checkpoint_every, "progress": progress}
        _distributed.agree("gd.fit", settings(), **asked)
    ckpt = _settings.checkpointer(checkpoint, checkpoint_every, settings=settings)
    writer = devs is None or _distributed.is_writer(devs)
    if ckpt is not None:
        ckpt.writer = writer
    inputs = _config.inputs(cfg, args, st.init, hp, lhp, eval_arrays, first=st.first)
    if mesh is not None:
        inputs = _data_parallel.place(inputs, mesh)
    elif devs is not None:
        inputs = jax.device_put(inputs, devs[0])
    bar = ProgressBar(args.epochs, "fit", quiet=not writer) if progress else None
    hooks = _hooks.hooks(bar, ckpt, cfg.evaluation.columns())
    with holding([ckpt]):  # the folder is locked (and checked) until fit returns or raises
        out = _runner.run(Layout(cfg, mesh=mesh), inputs, st.first + args.epochs, first=st.first, hooks=hooks)
    return FitResult.build(
        cfg,
        args.it,
        out.run,
        hp,
        lhp,
        wall_time=out.run_time,
        compile_time=out.compile_time,
        resumed_from=out.resumed_from,
    )
