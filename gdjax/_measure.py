"""What :func:`gdjax.sharpness` and :func:`gdjax.noise_scale` share: their arguments checked, and their runs.

A measurement takes the arguments ``fit`` takes for its loss (``loss_fn``,
``params``, the data, ``batched``, ``has_aux``, ``with_key``,
``loss_hyperparams``, ``model_state``), checks them on the host before
anything is compiled (:func:`prepare`), and evaluates the loss the way
``fit`` evaluates its full-data loss (:meth:`gdjax._run.Config.inference`:
no key, the model state unchanged), in blocks of rows (:mod:`gdjax._blocks`).
The data may be a pytree of arrays with a leading axis of examples (made into
:func:`gdjax.full_batch`, which checks it and places it on the device when it
fits) or a :class:`gdjax.DataIterator`, streamed ones included: their blocks
are read from the host as the measurement goes (:func:`call`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from gdjax import _blocks, _runner, _stream, _validate, _validate_eval, _validate_model
from gdjax._config import hparam_arrays
from gdjax._run import Config, Layout, with_static
from gdjax._types import PyTree
from gdjax._validate_loss import loss_dtype
from gdjax.data import Batch, DataIterator, full_batch
from gdjax.step import accumulation_dtype


class Measure(NamedTuple):
    """A measurement's checked inputs.

    Attributes:
      cfg: the loss's static configuration (a hashable static argument of the compiled program).
      it: the data, as an iterator (only its ``read`` and ``num_examples`` are used).
      params: the trained leaves of the params (float arrays; the rest is in ``cfg.static``).
      model_state: the loss's model state, or None.
      loss_hparams: the loss's keyword values, as arrays.
    """

    cfg: Config
    it: DataIterator
    params: PyTree
    model_state: PyTree
    loss_hparams: dict[str, jax.Array]


def prepare(
    loss_fn: Any,
    params: Any,
    data: Any,
    *,
    batched: Any,
    has_aux: Any,
    with_key: Any,
    loss_hyperparams: Mapping[str, float] | None,
    model_state: Any,
    min_examples: int = 1,
    why: str = "",
) -> Measure:
    """Check a measurement's arguments (before anything is compiled) and make its :class:`Measure`.

    ``min_examples`` is the fewest examples the measurement can use (``why`` says why, in the error).
    """
    _validate.check_loss_fn(loss_fn)
    batched, has_aux = _validate.check_flag(batched, "batched"), _validate.check_flag(has_aux, "has_aux")
    with_key = _validate.check_flag(with_key, "with_key")
    st = _validate_model.start(params, model_state, 1)
    stateful = st.init.model_state is not None
    values = _validate_eval.loss_values(loss_hyperparams, allow_arrays=False)
    _keywords(loss_fn, [*values, *(n for n, on in (("key", with_key), ("model_state", stateful)) if on)])
    it = data if isinstance(data, DataIterator) else full_batch(data)
    if it.num_examples < min_examples:
        raise ValueError(
            f"data has {it.num_examples} example{'s' if it.num_examples != 1 else ''}; {why} needs at least "
            f"{min_examples}. Pass more examples."
        )
    bound = loss_fn if st.static is None else functools.partial(with_static, loss_fn, st.static.tree)
    dtype, _ = loss_dtype(
        bound,
        st.init.params,
        it,
        has_aux=has_aux,
        batched=batched,
        loss_hparams=tuple(values),
        with_key=with_key,
        model_state=st.init.model_state,
        stateful=stateful,
    )
    cfg = Config.make(
        loss_fn,
        None,
        factory=False,
        has_aux=has_aux,
        batched=batched,
        log_every=1,
        epoch_capacity=1,
        loss_dtype=accumulation_dtype(dtype),
        loss_hparams=tuple(values),
        with_key=with_key,
        stateful=stateful,
        static=st.static,
    )
    return Measure(cfg, it, st.init.params, st.init.model_state, hparam_arrays(values))


def _keywords(loss_fn: Callable[..., Any], names: list[str]) -> None:
    """Fail now if ``loss_fn`` cannot take all the keywords it will be given (checked together: each may be
    required)."""
    refusal = _validate.keyword_refusal(loss_fn, names)
    if refusal is not None:
        given = ", ".join(f"{n}=" for n in names)
        raise TypeError(
            f"loss_fn cannot take the keywords it would be given, {given} ({refusal}): loss_hyperparams names "
            f"keywords, with_key=True passes key= (None here) and model_state= the state. Define it as def "
            f"loss_fn(params, example, *, {', '.join(names)}): ..., or drop the option."
        )


def loss(cfg: Config, lhp: dict[str, jax.Array], model_state: PyTree) -> Callable[[PyTree, Batch], jax.Array]:
    """``f(params, batch)``: the masked mean loss of a batch, as evaluated (traced inside the program)."""
    objective = cfg.inference(lhp, model_state)
    return lambda params, batch: objective(params, batch)[0]


def rows(cfg: Config, it: DataIterator, per_row: int = 0) -> _blocks.Rows:
    """The data in blocks of :func:`gdjax._blocks.block_rows` rows, fewer when each row also makes ``per_row``
    values (per-example gradients): a block holds about ``cfg.block_elements`` values of each kind at most."""
    count = _blocks.block_rows(it.data, 1, cfg.block_elements)
    count = count if not per_row else min(count, max(1, cfg.block_elements // per_row))
    return _blocks.Rows(it.read, it.num_examples, count)


def flat(tree: PyTree, dtype: Any) -> jax.Array:
    """The leaves of ``tree`` as one vector of ``dtype``."""
    return ravel_pytree(tree)[0].astype(dtype)


def vector_dtype(params: PyTree) -> Any:
    """The dtype a measurement's vectors (gradients, Hessian-vector products) are summed in: float32 at least."""
    return accumulation_dtype(jnp.result_type(*(x.dtype for x in jax.tree.leaves(params))))


def call(program: Callable[..., Any], m: Measure, *args: Any) -> Any:
    """``program(Layout(cfg), it, params, model_state, loss_hparams, *args)`` on the host's values.

    Compiled on this thread, once per configuration and shapes (:func:`gdjax._runner.compiled`, whose cache
    :func:`gdjax.clear_caches` empties); streamed data is read from the host as the program asks for it.
    """
    inputs = (m.it, m.params, m.model_state, m.loss_hparams, *args)
    entry, _ = _runner.compiled(program, Layout(m.cfg), *inputs)
    readers = _stream.readers(m.it)
    try:
        out = _stream.wait(lambda: entry.program(*inputs), readers)
    finally:
        for reader in readers:
            reader.close()
    return jax.device_get(out)
