"""``sharpness``: the largest eigenvalue of the Hessian of the full-data loss, by power iteration.

For full-batch gradient descent on a quadratic with Hessian ``H``, a constant
step size ``lr`` is stable only below ``2 / lambda_max(H)``; near a minimum
every smooth loss is such a quadratic, so ``2 / gd.sharpness(...)`` is the
learning rate past which batch gradient descent diverges (and the scale at
which a learning-rate sweep should end).

The Hessian is never formed: each power iteration is one Hessian-vector
product, ``jax.jvp`` of ``jax.grad`` of the full-data mean loss, computed in
blocks of rows (:mod:`gdjax._blocks`: the product for the whole data is the
row-weighted mean of the blocks' products), so memory does not grow with the
data. The whole iteration is one compiled program (a ``lax.while_loop``).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple, overload

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from gdjax import _blocks, _measure, _validate
from gdjax._run import Layout
from gdjax._types import PyTree
from gdjax.data import DataIterator

__all__ = ["SharpnessInfo", "sharpness"]


class SharpnessInfo(NamedTuple):
    """What :func:`sharpness` found, with ``return_info=True``.

    Attributes:
      value: the largest (algebraic) eigenvalue of the Hessian.
      iterations: Hessian-vector products computed (both power iterations).
      converged: whether the estimated relative error reached ``tol`` (in both).
      change: the relative change of the estimate over the last product.
      error: the estimated relative error of the last power iteration's
        estimate (see :func:`sharpness`).
      dominant: the eigenvalue of largest magnitude (the first power
        iteration's result); equal to ``value`` unless it is negative.
    """

    value: float
    iterations: int
    converged: bool
    change: float
    error: float
    dominant: float


@overload
def sharpness(
    loss_fn: Callable[..., Any],
    params: PyTree,
    data: PyTree | DataIterator,
    *,
    tol: float = ...,
    max_iters: int = ...,
    key: jax.Array | None = ...,
    batched: bool = ...,
    has_aux: bool = ...,
    with_key: bool = ...,
    loss_hyperparams: Mapping[str, float] | None = ...,
    model_state: PyTree = ...,
    return_info: Literal[False] = ...,
) -> float: ...


@overload
def sharpness(
    loss_fn: Callable[..., Any],
    params: PyTree,
    data: PyTree | DataIterator,
    *,
    tol: float = ...,
    max_iters: int = ...,
    key: jax.Array | None = ...,
    batched: bool = ...,
    has_aux: bool = ...,
    with_key: bool = ...,
    loss_hyperparams: Mapping[str, float] | None = ...,
    model_state: PyTree = ...,
    return_info: Literal[True],
) -> SharpnessInfo: ...


def sharpness(
    loss_fn: Callable[..., Any],
    params: PyTree,
    data: PyTree | DataIterator,
    *,
    tol: float = 1e-5,
    max_iters: int = 1000,
    key: jax.Array | None = None,
    batched: bool = False,
    has_aux: bool = False,
    with_key: bool = False,
    loss_hyperparams: Mapping[str, float] | None = None,
    model_state: PyTree = None,
    return_info: bool = False,
) -> float | SharpnessInfo:
    """The largest eigenvalue of the Hessian of the full-data mean loss at ``params``.

    Power iteration on Hessian-vector products from a random start vector
    (drawn from ``key``); the estimate is the Rayleigh quotient
    ``lambda = v . H v``. It stops once the estimated relative error of
    ``lambda`` is at most ``tol`` for two products in a row, or after
    ``max_iters`` products, with a warning (the relative residual must also
    be at most ``sqrt(tol)``, so a start vector still mixed between
    eigenvectors is not taken for converged). The error estimate is the smaller
    of the relative residual ``|H v - lambda v| / |lambda|`` (an eigenvalue
    of ``H`` lies within it) and Aitken's extrapolation of the geometric
    convergence, ``change * q / (1 - q)`` with ``q`` the ratio of the last
    two changes of ``lambda``. When the top two eigenvalues are close the
    residual shrinks slowly, but ``lambda`` is soon close to both, which the
    second estimate sees.

    Power iteration finds the eigenvalue of largest magnitude. When that one
    is negative (a non-convex loss near a saddle or a maximum), a second
    power iteration on ``H - lambda_neg I`` (whose eigenvalues are all >= 0,
    the largest being ``lambda_max - lambda_neg``) gives the largest
    algebraic eigenvalue, which is what is returned; its error is relative
    to ``|lambda_neg|``. (If ``H``'s extreme eigenvalues are ``+a`` and
    ``-a`` exactly, power iteration does not converge: the warning says so.)

    The loss is evaluated as ``fit`` evaluates its full-data loss: with
    ``key=None`` for a loss that takes a key, the model state unchanged.

    Args:
      loss_fn: ``loss_fn(params, example) -> scalar`` (or as ``batched``,
        ``has_aux``, ``with_key`` and ``model_state`` say, as in
        :func:`gdjax.fit`); twice differentiable in the params.
      params: any pytree (an Equinox module, a ``res.state``): its float
        arrays are the variables (float32 or float64; every other leaf is
        held static).
      data: a pytree of arrays with a leading axis of examples (checked and
        placed as :func:`gdjax.full_batch` does), or a
        :class:`gdjax.DataIterator`: its every example counts (order, batch
        size and ``drop_remainder`` do not matter). Streamed data
        (``on_device=False``) is read from where it lives, block by block, at
        every iteration: nothing of the data's size is placed on the device,
        but each iteration costs a pass over the host data.
      tol: the estimated relative error to stop at, in (0, 1). Float32
        products carry rounding errors around 1e-6 of the largest
        eigenvalue, so much smaller values may not be reached there.
      max_iters: the most Hessian-vector products of each power iteration.
      key: PRNG key of the start vector (default ``jax.random.key(0)``: the
        same result every call).
      batched: ``loss_fn(params, batch)`` takes a :class:`gdjax.Batch`.
      has_aux: ``loss_fn`` returns ``(loss, aux)`` (aux is ignored).
      with_key: ``loss_fn`` takes ``key=`` (given None here).
      loss_hyperparams: name -> number passed to the loss as keywords.
      model_state: the loss's model state (it takes ``model_state=`` and
        returns ``(loss, new_model_state)``); held fixed.
      return_info: return a :class:`SharpnessInfo` instead of the float.

    Returns:
      The largest eigenvalue as a Python float (a :class:`SharpnessInfo`
      with ``return_info``). ``2 / value`` is the stability limit of
      full-batch gradient descent's step size near ``params``.

    Raises:
      TypeError, ValueError: bad arguments, before anything is compiled (a
        loss that is not callable, empty data, params without float arrays,
        ``tol`` outside (0, 1), ``max_iters`` below 1); after compiling, a
        ValueError when the loss at ``params`` is not finite, or the
        Hessian-vector product is not (a loss that is not twice
        differentiable there, such as ``jnp.sqrt`` at 0).

    Warns:
      UserWarning: ``max_iters`` was reached before ``tol``; the warning
        gives the relative residual reached.

    Example:
      >>> import jax, gdjax as gd
      >>> prob = gd.problems.linear_regression(n=256, d=4, key=jax.random.key(0))
      >>> m = gd.models.linear()
      >>> lam = gd.sharpness(m.loss, m.init(None, 4), prob.data)
      >>> abs(lam - prob.lipschitz) < 1e-3 * prob.lipschitz
      True
    """
    tol = _check_tol(tol)
    max_iters = _validate.check_positive_int(max_iters, "max_iters", low=1, high=2**31 - 1)
    key = jax.random.key(0) if key is None else _validate.check_key(key)
    return_info = _validate.check_flag(return_info, "return_info")
    m = _measure.prepare(
        loss_fn,
        params,
        data,
        batched=batched,
        has_aux=has_aux,
        with_key=with_key,
        loss_hyperparams=loss_hyperparams,
        model_state=model_state,
    )
    dtype = _measure.vector_dtype(m.params)
    out = _measure.call(_power, m, key, jnp.asarray(tol, dtype), jnp.asarray(max_iters, jnp.int32))
    if not math.isfinite(float(out.loss)):
        raise ValueError(
            f"the loss at params is not finite (the full-data mean loss is {float(out.loss)}), so it has no "
            f"Hessian: pass params where the loss is finite."
        )
    if not bool(out.finite):
        raise ValueError(
            "the Hessian-vector product of the loss is not finite at these params: the loss is not twice "
            "differentiable there (jnp.sqrt or a power below 2 at 0, a log of 0, ...), or it overflows. "
            "Measure at other params, or smooth the loss (jnp.sqrt(x + eps))."
        )
    second = bool(out.dominant < 0)
    value = float(out.lam + out.shift) if second else float(out.dominant)
    info = SharpnessInfo(
        value=value,
        iterations=int(out.iterations),
        converged=bool(out.converged),
        change=float(out.change),
        error=float(out.error),
        dominant=float(out.dominant),
    )
    if not info.converged:
        which = "the second power iteration (on H - lambda_neg I)" if second else "power iteration"
        warnings.warn(
            f"gd.sharpness: {which} reached max_iters={max_iters} before tol={tol:g}: the estimate changed by "
            f"{info.change:.3g} (relative) in the last iteration (estimated error {info.error:.3g}), and the "
            f"vector is not yet an eigenvector (its residual is above sqrt(tol)), so the value {value:.6g} may be "
            f"off. Pass a larger max_iters (or a larger tol); two top eigenvalues of equal size and opposite "
            f"signs never converge.",
            UserWarning,
            stacklevel=2,
        )
    if value <= 0:
        warnings.warn(
            f"gd.sharpness: the Hessian has no positive eigenvalue at these params (the largest is {value:.3g}): "
            f"the loss is flat or concave here, or not twice differentiable (a ReLU kink, jnp.abs at 0, whose "
            f"second derivative JAX takes as 0), so 2/sharpness gives no step size. Measure at other params.",
            UserWarning,
            stacklevel=2,
        )
    return info if return_info else value


def _check_tol(tol: Any) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol must be a number in (0, 1), such as 1e-5; got {type(tol).__name__} {tol!r}.")
    value = float(tol)
    if not 0 < value < 1:
        raise ValueError(
            f"tol must be in (0, 1): the relative error to stop at, such as 1e-5; got {tol}. "
            f"Pass a small positive number below 1."
        )
    return value


class _Out(NamedTuple):
    lam: jax.Array  # the current power iteration's Rayleigh quotient (of H - shift I)
    shift: jax.Array  # 0, or the negative dominant eigenvalue in the second power iteration
    dominant: jax.Array  # the first power iteration's result
    iterations: jax.Array
    converged: jax.Array
    change: jax.Array
    error: jax.Array
    loss: jax.Array
    finite: jax.Array


class _State(NamedTuple):
    products: jax.Array  # of this power iteration
    total: jax.Array  # of both
    v: jax.Array
    lam: jax.Array
    shift: jax.Array
    phase: jax.Array  # 0: on H; 1: on H - shift I
    dominant: jax.Array
    first_converged: jax.Array
    change: jax.Array  # relative change of lam over the last product (inf after the first)
    error: jax.Array  # estimated relative error of lam
    streak: jax.Array  # consecutive products whose error estimate was within tol
    loss: jax.Array
    finite: jax.Array
    done: jax.Array


#: Consecutive products whose estimated error must be within ``tol``: one can be small by chance, where a fast
#: mode of the start vector has just died out and a slow one not yet shown (the ratio of changes is then small).
STREAK = 2


def _error(lam: jax.Array, s: _State, residual: jax.Array, scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(change, error)``: the relative change of ``lam`` and its estimated relative error.

    The error is the smaller of two estimates. The residual ``|H v - lam v|``
    bounds the distance from ``lam`` to an eigenvalue of ``H``. And the
    Rayleigh quotient converges geometrically, so with ``q`` the ratio of the
    last two changes, the error left is about ``change * q / (1 - q)``
    (Aitken's estimate): far below the residual when the top eigenvalues are
    close (``q`` near 1 makes the residual shrink slowly, but ``lam`` is
    already near both of them).
    """
    inf = jnp.array(jnp.inf, lam.dtype)
    change = jnp.where(s.products == 0, inf, jnp.abs(lam - s.lam) / scale)
    q = jnp.where(s.change > 0, change / jnp.where(s.change > 0, s.change, 1), jnp.where(change == 0, 0, inf))
    aitken = jnp.where(q < 1, change * q / (1 - jnp.where(q < 1, q, 0)), inf)
    return change, jnp.minimum(residual, jnp.where(jnp.isfinite(s.change), aitken, inf))


def _power(
    layout: Layout,
    it: DataIterator,
    params: PyTree,
    model_state: PyTree,
    lhp: dict[str, jax.Array],
    key: jax.Array,
    tol: jax.Array,
    max_iters: jax.Array,
) -> _Out:
    """Both power iterations, in one while loop (the second starts where the first ends with a negative value)."""
    loss_fn = _measure.loss(layout.cfg, lhp, model_state)
    dtype = tol.dtype
    flat, unravel = ravel_pytree(params)
    data = _measure.rows(layout.cfg, it)

    def product(v: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The full-data mean loss and ``H v``, in blocks."""
        tangent = unravel(v.astype(flat.dtype))

        def block(batch: Any) -> jax.Array:
            grad = jax.value_and_grad(lambda p: loss_fn(p, batch))
            (loss, _), (_, hv) = jax.jvp(grad, (params,), (tangent,))
            return jnp.concatenate([jnp.reshape(loss, (1,)).astype(dtype), _measure.flat(hv, dtype)])

        out = _blocks.mean(block, data)
        return out[0], out[1:]

    start = jax.random.normal(key, flat.shape, dtype)
    start = start / jnp.linalg.norm(start)
    zero, false, inf = jnp.zeros((), dtype), jnp.array(False), jnp.array(jnp.inf, dtype)
    count0 = jnp.zeros((), jnp.int32)

    def body(s: _State) -> _State:
        loss, hv = product(s.v)
        w = hv - s.shift * s.v
        lam = jnp.vdot(s.v, w)
        scale = jnp.maximum(jnp.abs(lam), jnp.abs(s.shift))
        scale = jnp.where(scale > 0, scale, 1)
        residual = jnp.linalg.norm(w - lam * s.v) / scale
        change, error = _error(lam, s, residual, scale)
        # The extrapolation is trusted only once v is near an eigenvector: the eigenvalue's error is about the
        # residual squared over the gap, so a residual above sqrt(tol) means v is still a mixture (two
        # eigenvalues of equal magnitude and opposite signs keep lambda constant, and its change at zero).
        streak = jnp.where((error <= tol) & (residual <= jnp.sqrt(tol)), s.streak + 1, 0)
        products = s.products + 1
        converged = streak >= STREAK
        ended = converged | (products >= max_iters)
        first = s.phase == 0
        second = ended & first & (lam < 0)  # the dominant eigenvalue is negative: look for the largest one
        finite = s.finite & jnp.isfinite(loss) & jnp.all(jnp.isfinite(hv))
        norm = jnp.linalg.norm(w)
        following = jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1), s.v)
        return _State(
            products=jnp.where(second, 0, products),
            total=s.total + 1,
            v=jnp.where(second, start, following),
            lam=lam,
            shift=jnp.where(second, lam, s.shift),
            phase=jnp.where(second, 1, s.phase),
            dominant=jnp.where(first, lam, s.dominant),
            first_converged=jnp.where(first, converged, s.first_converged),
            change=jnp.where(second, inf, change),
            error=error,
            streak=jnp.where(second, 0, streak),
            loss=loss,
            finite=finite,
            done=(ended & ~second) | ~finite,
        )

    init = _State(
        products=count0, total=count0, v=start, lam=zero, shift=zero, phase=count0, dominant=zero,
        first_converged=false, change=inf, error=inf, streak=count0, loss=zero, finite=jnp.array(True), done=false,
    )  # fmt: skip
    s = jax.lax.while_loop(lambda s: ~s.done, body, init)
    converged = s.first_converged & (s.streak >= STREAK)
    return _Out(s.lam, s.shift, s.dominant, s.total, converged, s.change, s.error, s.loss, s.finite)
