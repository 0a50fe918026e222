"""Learning-rate schedules: total_steps given to the factory, traced peaks, and the errors where optax needs Python.

A factory with a ``total_steps`` (or ``num_steps``) parameter is given the run's total number of steps (epochs
times steps per epoch, from step 0) as a Python int; ``hyperparams`` naming it is refused (it would be traced, and
optax needs step counts as Python ints). optax's warmup-cosine (and sgdr) test the peak in Python, so their peak is
swept by scaling a schedule of peak 1; one-cycle takes a traced peak as it is. Where tracing fails, the message names
the hyperparameter, the optax line, and the fix that fits it: the peak-1 recipe for a peak, ``functools.partial``
(not scaling) for a step count or ``decay_rate``.

The fast lane compiles three programs (two fits and a sweep, shared between tests by using the same factory, model
and data); the one-cycle comparison and the num_steps fit are in the slow lane.
"""

from __future__ import annotations

import functools

import _shared
import jax
import numpy as np
import optax
import pytest

import gdjax as gd
from gdjax import _optimizer

MODEL = _shared.LINEAR
PROB = _shared.linear_problem(64, 3)
P0 = MODEL.init(None, 3)
IT = gd.minibatch(PROB.data, 16)  # 4 steps per epoch
EPOCHS = 8
TOTAL = EPOCHS * IT.num_batches
KW = {"key": jax.random.key(0)}


def unit_schedule(total_steps: int) -> optax.Schedule:
    """Warm-up over 3 steps, then cosine decay to a tenth, over ``total_steps`` steps: peak 1."""
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, 3, total_steps, 0.1)


def make(learning_rate, total_steps):
    """The peak-1 recipe: the unit schedule built from total_steps, scaled by the traced peak."""
    unit = unit_schedule(total_steps)
    return optax.sgd(lambda step: learning_rate * unit(step))


def make_num_steps(learning_rate, num_steps):
    unit = unit_schedule(num_steps)
    return optax.sgd(lambda step: learning_rate * unit(step))


def make_onecycle(learning_rate, total_steps):
    return optax.sgd(optax.cosine_onecycle_schedule(total_steps, learning_rate))


def warmup_cosine_direct(learning_rate, total_steps):
    """optax tests the peak in Python: fails with a traced learning rate."""
    return optax.sgd(optax.warmup_cosine_decay_schedule(0.0, learning_rate, 3, total_steps))


def sgdr_direct(learning_rate):
    cycle = {"init_value": 0.0, "peak_value": learning_rate, "warmup_steps": 3, "decay_steps": 16}
    return optax.sgd(optax.sgdr_schedule([cycle, cycle]))


def exponential(learning_rate, decay_rate):
    """optax checks decay_rate == 0 in Python: decay_rate cannot be traced (the peak, init_value, can)."""
    return optax.sgd(optax.exponential_decay(learning_rate, 4, decay_rate))


def _fit(optimizer, epochs=EPOCHS, params=P0, learning_rate=0.1):
    return gd.fit(MODEL.loss, params, optimizer, IT, epochs=epochs, learning_rate=learning_rate, **KW)


def _same_bits(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----- total_steps is given ---------------------------------------------------


def test_total_steps_is_epochs_times_steps_per_epoch():
    # gdjax binds total_steps = 8 * 4 = 32; binding it by hand gives the same bits (it is the same program), and a
    # wrong number would give another schedule (test_a_bound_total_steps_is_kept shows it differs)
    auto = _fit(make)
    hand = _fit(functools.partial(make, total_steps=TOTAL))
    assert auto.num_steps == TOTAL
    np.testing.assert_array_equal(auto.losses, hand.losses)
    _same_bits(auto.params, hand.params)


@pytest.mark.parametrize(("factory", "name"), [(make, "total_steps"), (make_num_steps, "num_steps")])
def test_the_step_count_is_bound_as_a_python_int(factory, name):
    bound = _optimizer.with_total_steps(factory, np.int64(40))
    assert isinstance(bound, functools.partial) and bound.func is factory
    assert bound.keywords == {name: 40} and type(bound.keywords[name]) is int


def test_a_factory_without_a_step_count_is_unaffected():
    def plain(learning_rate):
        return optax.sgd(learning_rate)

    def open_ended(learning_rate, **kw):  # **kw is not a step count parameter: nothing is passed into it
        return optax.sgd(learning_rate)

    for factory in (optax.sgd, optax.adamw, plain, open_ended):
        assert _optimizer.with_total_steps(factory, 40) is factory
    built = optax.sgd(0.1)
    assert _optimizer.with_total_steps(built, 40) is built


def test_a_bound_total_steps_is_kept():
    # the fix the refusal suggests: functools.partial(make, total_steps=n) runs with n, not the run's total
    mine = functools.partial(make, total_steps=7)
    assert _optimizer.with_total_steps(mine, 40) is mine


@pytest.mark.slow
def test_a_bound_total_steps_is_kept_in_a_fit():
    auto = _fit(make)
    shorter = _fit(functools.partial(make, total_steps=TOTAL // 2))
    assert not np.array_equal(auto.losses, shorter.losses)
    unit = unit_schedule(TOTAL // 2)  # the schedule of 16 steps ends at step 16: then every step is 0.1 * 0.1
    np.testing.assert_allclose(float(unit(TOTAL // 2)), 0.1, rtol=1e-6)


@pytest.mark.slow
def test_num_steps_is_given_too():
    auto = gd.fit(MODEL.loss, P0, make_num_steps, IT, epochs=EPOCHS, learning_rate=0.1, **KW)
    hand = gd.fit(MODEL.loss, P0, make, IT, epochs=EPOCHS, learning_rate=0.1, **KW)  # the same schedule
    np.testing.assert_array_equal(auto.losses, hand.losses)


@pytest.mark.parametrize("name", ["total_steps", "num_steps"])
@pytest.mark.parametrize("run", ["fit", "sweep"])
def test_a_step_count_in_hyperparams_is_refused(name, run, compiles):
    # refused, not traced: optax needs step counts as Python ints, and gdjax gives it; the message says how to fix
    factory = make if name == "total_steps" else make_num_steps
    with compiles() as c, pytest.raises(TypeError) as info:
        if run == "fit":
            gd.fit(MODEL.loss, P0, factory, IT, epochs=3, learning_rate=0.1, hyperparams={name: 20}, **KW)
        else:
            gd.sweep(
                MODEL.loss, P0, factory, IT, epochs=3, learning_rates=[0.1, 0.2], hyperparams={name: [10, 20]}, **KW
            )
    msg = str(info.value)
    assert f"hyperparams gives {name!r}" in msg and "Python ints" in msg
    assert f"here {3 * IT.num_batches}" in msg  # the run's total: epochs times steps per epoch
    assert f"Drop {name!r} from hyperparams" in msg and f"functools.partial({factory.__name__}, {name}=...)" in msg
    assert c.count == 0


# ----- continuing a run -------------------------------------------------------


def test_continuing_a_run_counts_its_total_from_step_0():
    # The first 5 epochs are run with the whole run's total bound by hand (fit(5) alone would get 5 * 4 = 20 and
    # decay sooner). Continued for 3 more, the factory gets (5 + 3) * 4 = 32, the total of fit(8), so the two
    # halves give fit(8)'s bits; with 3 * 4 = 12 (the epochs added) the cosine would be another.
    whole = _fit(make)
    first = _fit(functools.partial(make, total_steps=TOTAL), epochs=5)
    rest = gd.fit(MODEL.loss, first.state, make, IT, epochs=EPOCHS - 5, learning_rate=0.1, **KW)
    assert rest.first_epoch == 5 and rest.num_steps == TOTAL  # counted from step 0
    np.testing.assert_array_equal(np.concatenate([first.losses, rest.losses]), whole.losses)
    _same_bits(rest.params, whole.params)
    _same_bits(rest.state.opt_state, whole.state.opt_state)


# ----- sweeping a schedule's peak ---------------------------------------------


def test_the_unit_schedule_times_the_peak_is_the_schedule_built_with_the_peak():
    # what the recipe in the error messages promises: the same rates to float rounding (a few float32 ulps)
    steps = np.arange(TOTAL + 2)
    unit = unit_schedule(TOTAL)(steps)
    for peak in (0.1, 2.0):
        direct = optax.warmup_cosine_decay_schedule(0.0, peak, 3, TOTAL, 0.1 * peak)(steps)
        np.testing.assert_allclose(np.float32(peak) * unit, direct, rtol=1e-6, atol=1e-12)


def test_sweeping_the_peak_of_warmup_cosine_equals_fit():
    seen = []

    def recording(learning_rate, total_steps):
        seen.append(total_steps)
        return make(learning_rate, total_steps)

    lrs = [0.03, 0.1, 0.3]
    sw = gd.sweep(MODEL.loss, P0, recording, IT, learning_rates=lrs, epochs=EPOCHS, **KW)
    assert seen and set(seen) == {TOTAL} and all(type(n) is int for n in seen)
    assert sorted(sw.hyperparams) == ["learning_rate"]  # the step count is bound, not swept
    for k, lr in enumerate(lrs):
        res = _fit(make, learning_rate=lr)  # the program of the fits above: lr is traced
        np.testing.assert_allclose(sw.losses[k], res.losses, rtol=1e-5, atol=1e-7)
        for x, y in zip(jax.tree.leaves(sw.member_params(k)), jax.tree.leaves(res.params), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    assert not np.allclose(sw.losses[0], sw.losses[2])


@pytest.mark.slow
def test_one_cycle_takes_a_traced_peak():
    lrs = [0.05, 0.2]
    sw = gd.sweep(MODEL.loss, P0, make_onecycle, IT, learning_rates=lrs, epochs=EPOCHS, **KW)
    for k, lr in enumerate(lrs):
        built = optax.sgd(optax.cosine_onecycle_schedule(TOTAL, lr))  # concrete peak, built once
        res = gd.fit(MODEL.loss, P0, built, IT, epochs=EPOCHS, **KW)
        np.testing.assert_allclose(sw.losses[k], res.losses, rtol=1e-5, atol=1e-7)
    assert not np.allclose(sw.losses[0], sw.losses[1])


# ----- what cannot be traced, explained before compiling ------------------------


def _error(factory, run, compiles, **kw):
    with compiles() as c, pytest.raises(TypeError) as info:
        if run == "fit":
            gd.fit(MODEL.loss, P0, factory, IT, epochs=3, **{"learning_rate": 0.1, **kw}, **KW)
        else:
            gd.sweep(MODEL.loss, P0, factory, IT, epochs=3, **{"learning_rates": [0.1, 0.2], **kw}, **KW)
    assert c.count == 0
    return str(info.value)


@pytest.mark.parametrize("run", ["fit", "sweep"])
@pytest.mark.parametrize("factory", [warmup_cosine_direct, sgdr_direct], ids=["warmup_cosine", "sgdr"])
def test_a_traced_warmup_cosine_peak_gives_the_unit_peak_recipe(factory, run, compiles):
    msg = _error(factory, run, compiles)
    assert msg.startswith(f"optimizer factory {factory.__name__} cannot take hyperparameter 'learning_rate'")
    # where optax tests it, quoted
    assert "optax.warmup_cosine_decay_schedule as peak_value" in msg
    assert "_schedule.py:" in msg and "peak_value == 0.0" in msg
    # the recipe, with total_steps
    assert "unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total_steps)" in msg
    assert "lambda learning_rate, total_steps: optax.sgd(lambda step: learning_rate * unit(step))" in msg
    # the factory is named as written, not as the functools.partial gdjax bound total_steps with
    assert "<function" not in msg and "total_steps=" not in msg


@pytest.mark.parametrize("run", ["fit", "sweep"])
def test_a_traced_decay_rate_is_not_given_the_peak_recipe(run, compiles):
    values = {"decay_rate": 0.5} if run == "fit" else {"decay_rate": [0.5, 0.9]}
    msg = _error(exponential, run, compiles, hyperparams=values)
    assert msg.startswith("optimizer factory exponential cannot take hyperparameter 'decay_rate'")
    assert "optax.exponential_decay as decay_rate" in msg and "'if decay_rate == 0:'" in msg
    assert "Scaling a schedule of peak 1 does not help" in msg
    assert "* unit" not in msg and "warmup_cosine" not in msg
    assert "functools.partial(exponential, decay_rate=...)" in msg and "jax.numpy" in msg


def test_the_fix_names_the_factory_as_written(compiles):
    # gdjax binds total_steps with functools.partial; the message names the factory, not that partial
    def decaying(learning_rate, decay_rate, total_steps):
        return optax.sgd(optax.exponential_decay(learning_rate, total_steps // 4, decay_rate))

    msg = _error(decaying, "fit", compiles, hyperparams={"decay_rate": 0.5})
    assert msg.startswith("optimizer factory decaying cannot take hyperparameter 'decay_rate'")
    assert "functools.partial(decaying, decay_rate=...)" in msg
    assert "<function" not in msg and "total_steps=" not in msg


def test_a_traced_step_count_is_not_given_the_peak_recipe(compiles):
    def warmup_swept(learning_rate, warmup):
        return optax.sgd(optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, 40))

    msg = _error(warmup_swept, "sweep", compiles, hyperparams={"warmup": [2.0, 4.0]})
    assert "hyperparameter 'warmup'" in msg and "as warmup_steps" in msg and "a step count" in msg
    assert "* unit" not in msg and "functools.partial(warmup_swept, warmup=...)" in msg


def test_a_partial_factory_is_named_by_its_function(compiles):
    # a partial the user wrote: named by its function, its own keywords kept in the suggested fix
    factory = functools.partial(optax.sgd, momentum=0.9)
    msg = _error(factory, "fit", compiles, hyperparams={"nesterov": 1.0})
    assert msg.startswith("optimizer factory sgd cannot take hyperparameter 'nesterov' as a traced number")
    assert "functools.partial(optax.sgd, momentum=0.9, nesterov=...)" in msg
