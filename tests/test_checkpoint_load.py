"""gdjax.checkpoint.load: a run read back from its checkpoint folder without the code that trained it."""

import collections
import json
import shutil
import zipfile

import _shared
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gdjax as gd
from gdjax import _key_paths, _load, checkpoint

LINEAR = _shared.LINEAR


def _same_tree(a, b):
    """Equal structure, and every leaf equal bit for bit (dtype included)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(x, y)


def _binary(n, seed):
    data = gd.problems.classification(n, 2, 2, key=jax.random.key(seed)).data
    return {"x": data["x"], "y": data["y"]}


def _edit_meta(path, edit):
    """Write ``path`` again with its JSON description edited (its arrays unchanged)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays.pop("__meta__")).decode())
    edit(meta)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _sweep(folder, **kw):
    prob = _shared.linear_problem(64, 3)
    return gd.sweep(
        LINEAR.loss,
        LINEAR.init(None, 3),
        optax.sgd,
        gd.minibatch(prob.data, 16),
        learning_rates=[0.01, 0.02, 0.05],
        hyperparams={"momentum": 0.9},
        epochs=4,
        key=jax.random.key(2),
        chunk_size=2,  # two chunks of two rows: the second holds one member and a padding copy of it
        checkpoint=folder,
        **kw,
    )


def _linear_fit(folder, learning_rate=0.05):
    prob = _shared.linear_problem(64, 3)
    return gd.fit(
        LINEAR.loss,
        LINEAR.init(None, 3),
        optax.adam,
        gd.minibatch(prob.data, 16),
        epochs=4,
        key=jax.random.key(1),
        learning_rate=learning_rate,
        checkpoint=folder,
        checkpoint_every=1,  # the newest two are kept: epochs 3 and 4
    )


def _killed_after(monkeypatch, prefix, epoch):
    """Make the run die (KeyboardInterrupt) right after checkpoint ``prefix`` of ``epoch`` is written."""
    save = checkpoint.Checkpointer.save

    def killed(self, tree, at, extra=None):
        out = save(self, tree, at, extra)
        if self.prefix == prefix and at == epoch:
            raise KeyboardInterrupt  # the process dies here
        return out

    monkeypatch.setattr(checkpoint.Checkpointer, "save", killed)


@pytest.fixture(scope="module")
def linear_fit(tmp_path_factory):
    """``(folder, result)`` of a finished fit of the linear model (read-only: copy the folder to change it)."""
    folder = tmp_path_factory.mktemp("linear")
    return folder, _linear_fit(folder)


@pytest.fixture
def linear_copy(linear_fit, tmp_path):
    """A copy of ``linear_fit``'s folder to damage, and its result."""
    folder, res = linear_fit
    shutil.copytree(folder, tmp_path / "copy")
    return tmp_path / "copy", res


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """``(folder, result)`` of a finished sweep of 3 members in two chunks of two rows."""
    folder = tmp_path_factory.mktemp("sweep")
    return folder, _sweep(folder)


@pytest.fixture(scope="module")
def eqx_fit(tmp_path_factory):
    """``(folder, model, result)``: an ``eqx.nn.MLP`` trained with momentum, evaluation data and a metric."""
    model = eqx.nn.MLP(2, 1, 4, 1, key=jax.random.key(0))

    def loss(m, example):
        return optax.sigmoid_binary_cross_entropy(m(example["x"])[0], example["y"].astype(jnp.float32))

    def acc(m, example):
        return ((m(example["x"])[0] > 0) == (example["y"] == 1)).astype(jnp.float32)

    folder = tmp_path_factory.mktemp("eqx")
    res = gd.fit(
        loss,
        model,
        optax.sgd,
        gd.minibatch(_binary(96, 0), 32),
        epochs=3,
        key=jax.random.key(1),
        learning_rate=0.05,
        hyperparams={"momentum": 0.9},
        eval_data=_binary(40, 1),
        metrics={"acc": acc},
        log_every=2,
        checkpoint=folder,
    )
    return folder, model, res


def test_a_fit_is_read_back_without_its_loss_optimizer_or_model(eqx_fit):
    folder, _, res = eqx_fit
    run = checkpoint.load(folder)
    assert run.kind == "fit" and run.epoch == 3 and run.first_epoch == 0 and run.members is None
    # without like: attribute names and dict keys as keys, positions as lists
    assert sorted(run.params) == ["layers"] and [sorted(layer) for layer in run.params["layers"]] == [
        ["bias", "weight"],
        ["bias", "weight"],
    ]
    trained = {"layers": [{"bias": layer.bias, "weight": layer.weight} for layer in res.params.layers]}
    _same_tree(run.params, trained)
    _same_tree(run.state.params, trained)
    _same_tree(run.state.opt_state[0]["trace"], _trace(res))
    assert int(run.state.step) == res.num_steps == int(run.epochs) * 3
    assert run.state.model_state is None
    np.testing.assert_array_equal(run.history_epochs, [1, 2, 3])
    assert list(run.history) == ["loss", "acc", "eval_loss", "eval_acc"]
    np.testing.assert_array_equal(run.history["loss"], res.epoch_losses)
    for name in res.history:  # evaluated every epoch: the per-epoch history is the result's
        np.testing.assert_array_equal(run.history[name], res.history[name])
    np.testing.assert_array_equal(run.losses, res.losses)
    assert run.settings["kind"] == "fit" and run.environment["jax"] == jax.__version__
    assert [p.name for p in run.files] == ["epoch-00000003.npz"]


def _trace(res):
    """The momentum of an Equinox model's run as nested dicts and lists."""
    layers = res.state.opt_state[0].trace.layers
    return {"layers": [{"bias": layer.bias, "weight": layer.weight} for layer in layers]}


def test_like_an_equinox_model_gives_back_the_model(eqx_fit):
    folder, model, res = eqx_fit
    run = checkpoint.load(folder, like=model)
    assert isinstance(run.params, eqx.nn.MLP) and run.params.activation is model.activation
    assert bool(eqx.tree_equal(run.params, res.params))
    _same_tree(run.params, res.params)
    with pytest.raises(ValueError, match=r"like= has 2 trained leaves .* the checkpoint holds 4"):
        checkpoint.load(folder, like=model.layers[0])
    wider = eqx.tree_at(lambda m: m.layers[0].weight, model, jnp.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"\.layers\[0\]\.weight is \[5, 2\]; the checkpoint holds \[4, 2\]"):
        checkpoint.load(folder, like=wider)


def test_like_the_params_a_fit_started_from(linear_fit):
    folder, res = linear_fit
    run = checkpoint.load(folder, like=LINEAR.init(None, 3))
    _same_tree(run.params, res.params)
    _same_tree(run.state.opt_state[0]["mu"], res.state.opt_state[0].mu)
    with pytest.raises(ValueError, match=r"\['w'\] is \[4\]; the checkpoint holds \[3\]"):
        checkpoint.load(folder, like=LINEAR.init(None, 4))


def test_a_sweep_is_read_back_with_a_member_axis_padding_dropped(swept):
    folder, sw = swept
    assert sorted(p.name for p in folder.glob("chunk-*-epoch-00000004.npz")) == [
        "chunk-00000-epoch-00000004.npz",
        "chunk-00001-epoch-00000004.npz",
    ]
    run = checkpoint.load(folder)
    assert run.kind == "sweep" and run.epoch == 4
    np.testing.assert_array_equal(run.members, [0, 1, 2])
    np.testing.assert_array_equal(run.epochs, [4, 4, 4])
    _same_tree(run.params, sw.params)  # (3, ...) per leaf: the padding row is gone
    np.testing.assert_array_equal(run.state.step, sw.num_steps)
    _same_tree(run.state.opt_state[0]["trace"], sw.state.opt_state[0].trace)  # momentum's, per member
    np.testing.assert_array_equal(run.history["loss"], sw.epoch_losses)
    np.testing.assert_array_equal(run.losses, sw.losses)
    np.testing.assert_array_equal(run.history_epochs, [1, 2, 3, 4])
    _same_tree(checkpoint.load(folder, like=LINEAR.init(None, 3)).params, sw.params)


def test_an_interrupted_sweep_reads_each_chunk_where_it_stopped(swept, tmp_path, monkeypatch):
    _, ref = swept
    _killed_after(monkeypatch, "chunk-00001-", 2)
    with pytest.raises(KeyboardInterrupt):
        _sweep(tmp_path)
    run = checkpoint.load(tmp_path)
    assert run.epoch == 4  # chunk 0 finished
    np.testing.assert_array_equal(run.epochs, [4, 4, 2])
    np.testing.assert_array_equal(run.history["loss"][:2], ref.epoch_losses[:2])
    np.testing.assert_array_equal(run.history["loss"][2, :2], ref.epoch_losses[2, :2])
    assert np.isnan(run.history["loss"][2, 2:]).all()  # not run yet
    _same_tree(jax.tree.map(lambda x: x[:2], run.params), jax.tree.map(lambda x: x[:2], ref.params))
    assert not np.array_equal(run.params["w"][2], ref.params["w"][2])  # member 2 at epoch 2, not 4


def test_an_interrupted_fit_reads_its_latest_epoch(linear_fit, tmp_path, monkeypatch):
    _, ref = linear_fit
    _killed_after(monkeypatch, "", 2)
    with pytest.raises(KeyboardInterrupt):
        _linear_fit(tmp_path)
    run = checkpoint.load(tmp_path)
    assert run.epoch == 2 and int(run.state.step) == 2 * 4
    np.testing.assert_array_equal(run.history_epochs, [1, 2])
    np.testing.assert_array_equal(run.history["loss"], ref.epoch_losses[:2])
    np.testing.assert_array_equal(run.losses, ref.losses[:8])
    monkeypatch.undo()
    resumed = _linear_fit(tmp_path)  # the state read is the one the run goes on from
    assert resumed.resumed_from == 2
    _same_tree(resumed.params, ref.params)


def test_a_diverged_run_reads_its_losses_up_to_the_rejected_step(tmp_path):
    res = _linear_fit(tmp_path, learning_rate=1e25)  # the same program as linear_fit's: one more run, no compile
    assert res.diverged and res.num_epochs < 4
    run = checkpoint.load(tmp_path)
    assert run.epoch == res.num_epochs
    np.testing.assert_array_equal(run.losses, res.losses)  # NaN after the rejected step, as the result's
    np.testing.assert_array_equal(run.history["loss"], res.epoch_losses)
    _same_tree(run.params, res.params)


def test_chunks_of_different_structures_are_refused(swept, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(swept[0], folder)

    def renamed(meta):  # chunk 1 holds params {"b", "v"}, chunk 0 {"b", "w"}
        meta["paths"] = [[["dict", "v"] if step == ["dict", "w"] else step for step in p] for p in meta["paths"]]

    _edit_meta(folder / "chunk-00001-epoch-00000004.npz", renamed)
    with pytest.raises(ValueError, match="not of one run"):
        checkpoint.load(folder)


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before_and_stays(linear_copy):
    folder, ref = linear_copy
    assert sorted(p.name for p in folder.glob("*.npz")) == ["epoch-00000003.npz", "epoch-00000004.npz"]
    newest = folder / "epoch-00000004.npz"
    newest.write_bytes(newest.read_bytes()[:-1])
    with pytest.warns(RuntimeWarning, match="epoch-00000004.npz is damaged and was skipped"):
        run = checkpoint.load(folder)
    assert run.epoch == 3 and [p.name for p in run.files] == ["epoch-00000003.npz"]
    np.testing.assert_array_equal(run.history["loss"], ref.epoch_losses[:3])
    assert newest.exists()  # loading changes nothing in the folder
    (folder / "epoch-00000003.npz").write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning, match="damaged"), pytest.raises(checkpoint.CheckpointError, match="damaged"):
        checkpoint.load(folder)


ODD_PATHS = {
    "not_a_list": lambda m: m.update(paths="leaf"),
    "one_short": lambda m: m.update(paths=m["paths"][:-1]),
    "unknown_kind": lambda m: m["paths"][0].append(["key", "w"]),
    "negative_index": lambda m: m["paths"][0].append(["index", -1]),
    "attribute_not_a_name": lambda m: m["paths"][0].append(["attr", 3]),
    "dict_key_a_float": lambda m: m["paths"][0].append(["dict", 1.5]),
}
ODD_RUN_LAYOUT = {
    "no_run_layout_values": lambda m: m["metadata"]["run"].update(steps_per_epoch="4"),
    "column_names_of_another_width": lambda m: m["metadata"]["run"].update(columns=["loss", "extra"]),
    "another_chunk": lambda m: m["metadata"]["run"].update(chunk=1),
    "history_of_another_base": lambda m: m["metadata"]["history"].update(base=1),
}


@pytest.mark.parametrize("edit", [*ODD_PATHS, *ODD_RUN_LAYOUT])
def test_odd_paths_or_run_layout_are_damage(linear_copy, edit):
    folder, _ = linear_copy
    _edit_meta(folder / "epoch-00000004.npz", {**ODD_PATHS, **ODD_RUN_LAYOUT}[edit])
    with pytest.warns(RuntimeWarning, match="epoch-00000004.npz is damaged"):
        assert checkpoint.load(folder).epoch == 3
    if edit in ODD_PATHS:  # the file format itself refuses them, whoever reads
        with pytest.raises(checkpoint.CheckpointError, match="paths"):
            checkpoint.read_metadata(folder / "epoch-00000004.npz")


def test_missing_and_empty_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'.*nowhere' does not exist"):
        checkpoint.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"'.*empty' holds no checkpoints"):
        checkpoint.load(tmp_path / "empty")
    with pytest.raises(ValueError, match="is a file"):
        checkpoint.load(tmp_path / "empty" / "notes.txt")


def test_paths_are_recorded_per_leaf_and_files_without_them_still_restore(tmp_path):
    Pair = collections.namedtuple("Pair", "a b")
    tree = {"x": [jnp.zeros(2), Pair(jnp.ones(()), jnp.arange(3))], "y": {7: jnp.ones(1)}}
    checkpoint.save(tmp_path / "a.npz", tree)
    with zipfile.ZipFile(tmp_path / "a.npz") as z:
        meta = json.loads(np.lib.format.read_array(z.open("__meta__.npy")).tobytes().decode())
    assert meta["paths"] == [
        [["dict", "x"], ["index", 0]],
        [["dict", "x"], ["index", 1], ["attr", "a"]],
        [["dict", "x"], ["index", 1], ["attr", "b"]],
        [["dict", "y"], ["dict", 7]],
    ]
    _edit_meta(tmp_path / "a.npz", lambda m: m.pop("paths"))  # as written before paths were recorded
    back, _ = checkpoint.restore(tmp_path / "a.npz", tree)
    _same_tree(back, tree)


def test_a_checkpoint_without_column_names_or_paths(linear_copy):
    folder, ref = linear_copy
    _edit_meta(folder / "epoch-00000004.npz", lambda m: m["metadata"]["run"].update(columns=None))
    run = checkpoint.load(folder)
    assert list(run.history) == ["col0"]
    np.testing.assert_array_equal(run.history["col0"], ref.epoch_losses)
    for name in ("epoch-00000003.npz", "epoch-00000004.npz"):
        _edit_meta(folder / name, lambda m: m.pop("paths"))
    with pytest.raises(ValueError, match="earlier gdjax"):
        checkpoint.load(folder)


def test_paths_become_nested_dicts_and_lists_and_repeated_names_one_array():
    a, b, c = np.zeros(1), np.ones(2), np.full(3, 2.0)
    leaves = [((("index", 0), ("attr", "w")), a), ((("index", 2),), b), ((("index", 3), ("dict", 5)), c)]
    built = _key_paths.build(leaves)  # position 1 held no arrays (a None, or an empty node)
    assert built == [{"w": a}, None, b, {5: c}]
    assert _key_paths.build([((), a)]) is a and _key_paths.build([]) is None
    rows = np.arange(12.0).reshape(2, 6)  # (epochs, columns): an aux output of three values is one name
    split = _load._split(["loss", "aux/x", "aux/x", "aux/x", "eval_loss", "eval_loss2"], rows)
    assert list(split) == ["loss", "aux/x", "eval_loss", "eval_loss2"]
    np.testing.assert_array_equal(split["aux/x"], [[1, 2, 3], [7, 8, 9]])
    np.testing.assert_array_equal(split["eval_loss"], [4, 10])
