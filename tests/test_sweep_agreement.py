"""What a sweep member shares with ``fit`` and with other members: the exact bits, or a float tolerance.

A sweep vmaps the training step over its members, so the shapes XLA compiles change with the member axis:
the gradient's contraction over a batch's examples runs as a matrix-matrix product with the members folded
in (a matrix-vector product in ``fit``), and reductions over the batch (a bias's gradient) get a member axis
whose length picks the reduction's code. Each can sum in another order and round the last bit differently
(about 1e-7 relative in float32), so:

* a member's bits depend on its own values (hyperparameters, seed) and on the program's row count (members,
  or ``chunk_size``) only: not on its position, on the other members' values, on a neighbour diverging, or on
  which chunk runs it (a chunk is bit for bit a sweep of its rows, padding included);
* the same sweep run again gives the same bits;
* ``fit``, and sweeps of another row count, agree to float tolerance (rtol 1e-5 here) while training is
  stable. Rounding differences are carried by the dynamics: they stay at a few ulps for learning rates well
  below the stability limit and grow where the run is unstable (a member that diverges, or a nonlinear model
  whose sharpness reaches 2/lr and catapults), where two runs one ulp apart in the learning rate differ as
  much. Those are not compared bit for bit or to a tolerance here.
"""

import _shared
import jax
import numpy as np
import optax
import pytest

import gdjax as gd

PROB = _shared.linear_problem(64, 3)  # the shared small problem (conftest's small_problem)
MLP = gd.models.mlp((8,))
P_MLP = MLP.init(jax.random.key(1), 3)
IT = gd.minibatch(PROB.data, 24)  # 64 % 24 = 16: a ragged last batch
KW = {"epochs": 16, "key": jax.random.key(3)}
TARGET = (0.05, 0.9)  # (learning rate, momentum) of the member followed across sweeps
# Nine rows (an odd count: no vector width divides it); every sweep of nine rows below shares one program.
# Row 1 of A and row 7 of B run TARGET among other values; in B a neighbour diverges.
A = [(0.01, 0.0), TARGET, (0.2, 0.5), (0.3, 0.0), (0.02, 0.9), (0.1, 0.8), (0.005, 0.5), (0.07, 0.0), (0.15, 0.3)]
B = [(0.3, 0.9), (1e6, 0.9), (0.001, 0.0), (0.04, 0.1), (0.5, 0.0), (0.12, 0.6), (0.06, 0.9), TARGET, (0.02, 0.2)]


def _sweep(pairs, **kw):
    """The MLP swept over (learning rate, momentum) pairs, zipped."""
    lrs, momenta = np.array(pairs, dtype=np.float64).T
    return gd.sweep(MLP.loss, P_MLP, optax.sgd, IT, learning_rates=lrs, hyperparams={"momentum": momenta}, **KW, **kw)


def _record(sw, k):
    """Everything the result says about member ``k``: parameters, optimizer state, histories, verdicts."""
    state = jax.tree.map(lambda x: np.asarray(x)[k], sw.state)
    fields = ("losses", "epoch_losses", "initial_loss", "final_loss", "num_steps", "diverged", "diverged_at")
    return {"state": state, **{f: np.asarray(getattr(sw, f))[k] for f in fields}}


def _assert_bits_equal(a, b):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path), strict=True)


@pytest.fixture(scope="module")
def sweep_a():
    return _sweep(A)


def test_member_bits_do_not_depend_on_position_or_other_members(sweep_a):
    b = _sweep(B)
    assert b.diverged[1] and not b.diverged[7] and not sweep_a.diverged.any()
    _assert_bits_equal(_record(sweep_a, 1), _record(b, 7))


def test_identical_members_are_identical_in_every_row():
    sw = _sweep([TARGET] * len(A))
    for k in range(1, len(A)):
        _assert_bits_equal(_record(sw, 0), _record(sw, k))


def test_a_chunk_is_bit_for_bit_a_sweep_of_its_rows(sweep_a):
    """Eleven members in chunks of nine: A, then two members padded with seven copies of the last."""
    extra = [(0.08, 0.5), (0.25, 0.0)]
    chunked = _sweep(A + extra, chunk_size=len(A))
    alone = _sweep(extra + B[2:])  # the rows after the two do not matter
    assert chunked.num_members == 11
    for k in range(len(A)):
        _assert_bits_equal(_record(chunked, k), _record(sweep_a, k))
    for k in range(2):
        _assert_bits_equal(_record(chunked, len(A) + k), _record(alone, k))


def test_repeated_sweep_is_bit_identical(sweep_a):
    again = _sweep(A)
    for k in range(len(A)):
        _assert_bits_equal(_record(sweep_a, k), _record(again, k))


def test_member_bits_with_seeds_do_not_depend_on_position():
    """With seeds each member has its own data order (a vmapped gather); rows move, the bits do not."""
    a = _sweep([TARGET, (0.2, 0.5), (0.01, 0.0)], seeds=[4, 9, 2])  # rows 0-2: TARGET with seeds 4, 9, 2
    b = _sweep([(0.3, 0.0), (0.02, 0.8), TARGET], seeds=[4, 9, 2])  # rows 6-8
    assert not np.array_equal(a.losses[0], a.losses[1])  # the seeds do change the order
    for row in range(3):
        _assert_bits_equal(_record(a, row), _record(b, 6 + row))


def test_stable_members_equal_fit_to_float_tolerance(sweep_a):
    """Nine stable MLP members (mini-batches, momentum) over 16 epochs: every step within rtol 1e-5 of fit."""
    assert not sweep_a.diverged.any() and (sweep_a.final_loss < 0.4 * sweep_a.initial_loss).all()  # all train
    for k, (lr, momentum) in enumerate(A):
        res = gd.fit(MLP.loss, P_MLP, optax.sgd, IT, learning_rate=lr, hyperparams={"momentum": momentum}, **KW)
        np.testing.assert_allclose(sweep_a.losses[k], res.losses, rtol=1e-5)
        np.testing.assert_allclose(sweep_a.epoch_losses[k], res.epoch_losses, rtol=1e-5)
        for x, y in zip(jax.tree.leaves(sweep_a.member_params(k)), jax.tree.leaves(res.params), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_least_squares_members_equal_fit_to_float_tolerance():
    """Full-batch least squares at 0.1, 0.5 and 0.9 of the stability limit 2/L, 200 epochs, within rtol 1e-5."""
    model, params, it = _shared.LINEAR, _shared.LINEAR.init(None, 3), gd.full_batch(PROB.data)
    lrs = np.array([0.1, 0.5, 0.9]) * 2 / PROB.lipschitz
    kw = {"epochs": 200, "key": jax.random.key(0)}
    sw = gd.sweep(model.loss, params, optax.sgd, it, learning_rates=lrs, **kw)
    assert not sw.diverged.any() and (sw.final_loss < 1.001 * PROB.min_loss).all()  # settled: a stable run
    for k, lr in enumerate(lrs):
        res = gd.fit(model.loss, params, optax.sgd, it, learning_rate=float(lr), **kw)
        np.testing.assert_allclose(sw.epoch_losses[k], res.epoch_losses, rtol=1e-5)
        for x, y in zip(jax.tree.leaves(sw.member_params(k)), jax.tree.leaves(res.params), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5)
