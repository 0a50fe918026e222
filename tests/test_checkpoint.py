"""Checkpoints: atomic writes, exact resume (also after SIGKILL), refusal of another run's folder."""

import functools
import io
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import _resume_child as resume_child
import _shared
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gdjax as gd
from gdjax import checkpoint

MODEL = _shared.LINEAR
CHILD = Path(__file__).with_name("_resume_child.py")


def test_save_restore_round_trip_of_a_nested_state(tmp_path):
    state = gd.init({"w": jnp.arange(3.0), "layers": [jnp.ones((2, 2)), jnp.zeros(1, jnp.int32)]}, optax.adam(0.1))
    checkpoint.save(tmp_path / "a.npz", state, {"epoch": 3})
    back, meta = checkpoint.restore(tmp_path / "a.npz", state)
    assert meta == {"epoch": 3}
    assert jax.tree.structure(back) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:  # plain arrays only: nothing to unpickle
        assert all(z[k].dtype != object for k in z.files)


def test_restore_refuses_another_structure(tmp_path):
    checkpoint.save(tmp_path / "a.npz", {"w": jnp.zeros(3)})
    with pytest.raises(checkpoint.CheckpointError, match="different structure"):
        checkpoint.restore(tmp_path / "a.npz", {"v": jnp.zeros(3)})
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"leaf 0 is float32\[3\], expected float32\[4\]"):
        checkpoint.restore(tmp_path / "a.npz", {"w": jnp.zeros(4)})


def test_a_write_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "state.npz"
    checkpoint.save(path, {"w": jnp.zeros(3)}, {"n": 1})

    def torn(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(np, "savez", torn)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, {"w": jnp.ones(3)}, {"n": 2})
    monkeypatch.undo()
    tree, meta = checkpoint.restore(path, {"w": jnp.zeros(3)})
    assert meta == {"n": 1} and np.all(np.asarray(tree["w"]) == 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.npz"]  # no temporary left behind


def _fit(folder, epochs=6, lr=0.05, every=2, data=None, loss=MODEL.loss, **kw):
    prob = data or _shared.linear_problem(300, 4)
    return gd.fit(
        loss,
        MODEL.init(None, 4),
        optax.sgd,
        gd.minibatch(prob.data, 32),
        epochs=epochs,
        key=jax.random.key(1),
        learning_rate=lr,
        checkpoint=folder,
        checkpoint_every=every,
        **kw,
    )


def _member(path, name):
    """Where member ``name``'s bytes start in the file, and the length of its ``.npy`` header."""
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        info = z.getinfo(name)
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        with z.open(info) as m:
            np.lib.format.read_magic(m)
            np.lib.format.read_array_header_1_0(m)
            header = m.tell()
    return info.header_offset + 30 + name_len + extra_len, header


def _flip(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x10
    path.write_bytes(bytes(raw))


def _npy(array, shape=None):
    """``array`` as ``.npy`` bytes, its header declaring ``shape`` (default: its own)."""
    f = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False}
    np.lib.format.write_array_header_1_0(f, {**header, "shape": tuple(array.shape if shape is None else shape)})
    f.write(np.ascontiguousarray(array).tobytes())
    return f.getvalue()


def _rewrite(path, edit_meta=lambda meta: None, shapes=None):
    """Write ``path`` again as a well-formed zip, with its metadata edited and leaf headers declaring ``shapes``."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays.pop("__meta__")).decode())
    edit_meta(meta)
    with zipfile.ZipFile(path, "w") as z:
        for k, a in arrays.items():
            z.writestr(f"{k}.npy", _npy(a, (shapes or {}).get(k)))
        z.writestr("__meta__.npy", _npy(np.frombuffer(json.dumps(meta).encode(), np.uint8)))


def _replace_with(make):
    def damage(path):
        path.unlink()
        make(path)

    return damage


HUGE = (1 << 28,)  # 2 GiB of float64, declared in a file of a few kilobytes

DAMAGE = {
    "text": lambda p: p.write_bytes(b"not a checkpoint"),
    "zero_bytes": lambda p: p.write_bytes(b""),
    "truncated_in_the_middle": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "truncated_by_one_byte": lambda p: p.write_bytes(p.read_bytes()[:-1]),
    "bit_flip_in_data": lambda p: _flip(p, sum(_member(p, "leaf_00000.npy")) + 2),
    "bit_flip_in_npy_header": lambda p: _flip(p, _member(p, "leaf_00000.npy")[0] + 40),
    "bit_flip_in_zip_directory": lambda p: _flip(p, p.read_bytes().rindex(b"__meta__.npy") + 3),
    "metadata_without_treedef": lambda p: _rewrite(p, lambda m: m.pop("treedef")),
    "metadata_leaves_of_wrong_type": lambda p: _rewrite(p, lambda m: m.update(leaves="float32")),
    "metadata_without_settings": lambda p: _rewrite(p, lambda m: m["metadata"].pop("settings")),
    "metadata_epoch_of_wrong_type": lambda p: _rewrite(p, lambda m: m["metadata"].update(epoch="6")),
    "absurd_declared_shape": lambda p: _rewrite(p, shapes={"leaf_00000": HUGE}),
    "fifo": _replace_with(os.mkfifo),
    "directory": _replace_with(os.mkdir),
}


@pytest.fixture
def unblock(tmp_path):
    """Fail a test whose reader blocks on a FIFO (instead of hanging the suite): after 30 s, open their write ends."""
    blocked = []

    def rescue():
        for fifo in (p for p in tmp_path.rglob("*") if p.is_fifo()):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # succeeds only if a reader waits
                blocked.append(fifo.name)
            except OSError:
                pass

    timer = threading.Timer(30, rescue)
    timer.start()
    yield
    timer.cancel()
    assert not blocked, f"the reader blocked on the FIFO {blocked}"


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, kind, unblock):
    full = _fit(tmp_path)
    files = sorted(tmp_path.glob("epoch-*.npz"))
    assert [f.name for f in files] == ["epoch-00000004.npz", "epoch-00000006.npz"]
    DAMAGE[kind](files[-1])
    in_the_way = kind in ("fifo", "directory")  # the run cannot save its last epoch under that name: it says so
    tracemalloc.start()
    try:
        # a damaged file is set aside (renamed, kept) with a warning; a non-file is skipped, and is in the way
        with pytest.warns(RuntimeWarning, match="not written" if in_the_way else "is damaged and was skipped"):
            again = _fit(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert again.resumed_from == 4
    np.testing.assert_array_equal(again.losses, full.losses)
    assert peak < 2**27  # nothing near the 2 GiB an absurd header declares was allocated
    if not in_the_way:
        assert (tmp_path / "epoch-00000006.npz.damaged").exists()  # nothing lost: kept beside the new one
        assert _fit(tmp_path).resumed_from == 6  # and the new last checkpoint is the one resumed


def test_when_every_checkpoint_is_damaged_the_run_restarts_says_so_and_keeps_its_new_ones(tmp_path):
    _fit(tmp_path)
    for f in tmp_path.glob("epoch-*.npz"):
        with f.open("r+b") as fh:
            fh.truncate(100)
    with pytest.warns(RuntimeWarning, match="damaged") as record:
        restarted = _fit(tmp_path)
    assert restarted.resumed_from == 0 and len(record) == 2
    # the damaged files no longer count as the newest, so the clean-up keeps the new checkpoints
    assert sorted(p.name for p in tmp_path.glob("epoch-*.npz")) == ["epoch-00000004.npz", "epoch-00000006.npz"]
    assert _fit(tmp_path).resumed_from == 6


def test_a_checkpoint_renamed_to_another_epoch_is_skipped_as_damaged(tmp_path):
    _fit(tmp_path)
    os.rename(tmp_path / "epoch-00000006.npz", tmp_path / "epoch-00000099.npz")
    with pytest.warns(RuntimeWarning, match="epoch-00000099.npz is damaged"):
        again = _fit(tmp_path)
    assert again.resumed_from == 4


def test_a_fit_and_a_sweep_do_not_share_a_folder(tmp_path, linear, small_run):
    (_, it), m, key = small_run, linear, jax.random.key(0)
    gd.sweep(m.loss, m.init(None, 3), optax.sgd, it, learning_rates=[0.1], epochs=2, key=key, checkpoint=tmp_path)
    with pytest.raises(ValueError, match=r"other settings \(kind: 'sweep' there, 'fit' now"):
        gd.fit(m.loss, m.init(None, 3), optax.sgd, it, epochs=2, key=key, learning_rate=0.1, checkpoint=tmp_path)
    other = tmp_path / "fit"
    gd.fit(m.loss, m.init(None, 3), optax.sgd, it, epochs=2, key=key, learning_rate=0.1, checkpoint=other)
    with pytest.raises(ValueError, match=r"other settings \(kind: 'fit' there, 'sweep' now"):
        gd.sweep(m.loss, m.init(None, 3), optax.sgd, it, learning_rates=[0.1], epochs=2, key=key, checkpoint=other)


def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / ".gdjax-lock").symlink_to(precious)
    with pytest.raises(ValueError, match="is a symbolic link"):
        _fit(folder)
    assert precious.read_text() == "keep me"


def test_an_empty_checkpoint_path_is_refused():
    with pytest.raises(ValueError, match="checkpoint is empty"):
        _fit("")


def test_params_of_another_dtype_are_named_as_such_on_resume(tmp_path, linear, small_run):
    (_, it), m, key = small_run, linear, jax.random.key(0)
    p = m.init(None, 3)
    gd.fit(m.loss, p, optax.sgd, it, epochs=2, key=key, learning_rate=0.1, checkpoint=tmp_path)
    wide = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    with pytest.raises(ValueError, match=r"params\.shapes: .*float32.* there, .*float64.* now"):
        gd.fit(m.loss, wide, optax.sgd, it, epochs=2, key=key, learning_rate=0.1, checkpoint=tmp_path)


SMALL = {"w": np.arange(5.0, dtype=np.float32), "n": np.arange(3, dtype=np.int32)}


def _restores_intact_or_is_damaged(path):
    """Restore ``path`` (a damaged copy of SMALL's checkpoint): True if refused as damaged, else check it is intact."""
    try:
        tree, meta = checkpoint.restore(path, SMALL)
    except checkpoint.CheckpointError:
        with pytest.raises(checkpoint.CheckpointError):
            checkpoint.restore(path, SMALL)  # the same answer twice (nothing cached or half-read)
        return True
    assert meta == {"epoch": 1}
    for k, a in SMALL.items():
        np.testing.assert_array_equal(tree[k], a)
        assert tree[k].dtype == a.dtype
    return False


def test_every_single_bit_flip_is_detected_or_harmless(tmp_path):
    checkpoint.save(tmp_path / "good.npz", SMALL, {"epoch": 1})
    raw = (tmp_path / "good.npz").read_bytes()
    bad = tmp_path / "bad.npz"
    detected = 0
    for i in range(len(raw)):
        flipped = bytearray(raw)
        flipped[i] ^= 1 << (i % 8)
        bad.write_bytes(bytes(flipped))
        detected += _restores_intact_or_is_damaged(bad)
    # CRCs cover the data, headers and metadata; what goes unnoticed are fields no reader uses (dates, versions)
    assert detected > 0.6 * len(raw)


def test_a_file_truncated_anywhere_is_damaged(tmp_path):
    checkpoint.save(tmp_path / "good.npz", SMALL, {"epoch": 1})
    raw = (tmp_path / "good.npz").read_bytes()
    bad = tmp_path / "bad.npz"
    for n in range(len(raw)):
        bad.write_bytes(raw[:n])
        assert _restores_intact_or_is_damaged(bad), n
        with pytest.raises(checkpoint.CheckpointError):
            checkpoint.read_metadata(bad)


META_EDITS = {
    "not_json": lambda m: b"\xff{",
    "not_an_object": lambda m: [m],
    "format_of_wrong_type": lambda m: {**m, "format": "1"},
    "without_treedef": lambda m: {k: v for k, v in m.items() if k != "treedef"},
    "treedef_of_wrong_type": lambda m: {**m, "treedef": 7},
    "without_leaves": lambda m: {k: v for k, v in m.items() if k != "leaves"},
    "leaves_of_wrong_type": lambda m: {**m, "leaves": "float32"},
    "a_leaf_of_wrong_type": lambda m: {**m, "leaves": [m["leaves"][0], "float32"]},
    "a_shape_of_wrong_type": lambda m: {**m, "leaves": [[["5"], "float32"], m["leaves"][1]]},
    "a_negative_size": lambda m: {**m, "leaves": [[[-5], "float32"], m["leaves"][1]]},
    "an_unknown_dtype": lambda m: {**m, "leaves": [[[5], "float99"], m["leaves"][1]]},
    "a_leaf_missing": lambda m: {**m, "leaves": m["leaves"][:1]},
    "a_shape_the_array_lacks": lambda m: {**m, "leaves": [[[6], "float32"], m["leaves"][1]]},
    "a_dtype_the_array_lacks": lambda m: {**m, "leaves": [[[5], "int32"], m["leaves"][1]]},
    "metadata_of_wrong_type": lambda m: {**m, "metadata": [1]},
}


@pytest.mark.parametrize("edit", META_EDITS.values(), ids=META_EDITS.keys())
def test_metadata_with_a_missing_or_wrong_field_is_damaged(tmp_path, edit):
    path = tmp_path / "a.npz"
    checkpoint.save(path, SMALL, {"epoch": 1})
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = edit(json.loads(bytes(arrays["__meta__"]).decode()))
    raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    np.savez(path, **{**arrays, "__meta__": np.frombuffer(raw, np.uint8)})
    with pytest.raises(checkpoint.CheckpointError, match="cannot be read"):
        checkpoint.restore(path, SMALL)


def test_an_absurd_declared_shape_is_refused_without_allocating_it(tmp_path):
    path = tmp_path / "huge.npz"
    meta = {"format": 1, "treedef": str(jax.tree.structure({"w": 0})), "leaves": [[list(HUGE), "float64"]]}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("leaf_00000.npy", _npy(np.zeros(3), HUGE))
        z.writestr("__meta__.npy", _npy(np.frombuffer(json.dumps({**meta, "metadata": {}}).encode(), np.uint8)))
    tracemalloc.start()
    try:
        with pytest.raises(checkpoint.CheckpointError, match="cannot be read"):
            checkpoint.restore(path, {"w": np.zeros(3)})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**24, f"{peak} bytes allocated to read a {path.stat().st_size}-byte file"


def test_entries_that_are_not_regular_files_are_skipped(tmp_path, unblock):
    os.mkfifo(tmp_path / "epoch-00000009.npz")  # the newest name: reading it would block forever
    (tmp_path / "epoch-00000003.npz").mkdir()  # among the old ones the clean-up deletes
    (tmp_path / ".epoch-00000001.npz.x7.tmp").mkdir()  # named like a stale temporary file
    first = _fit(tmp_path)
    assert first.resumed_from == 0
    files = sorted(p.name for p in tmp_path.iterdir() if p.is_file() and p.suffix == ".npz")
    assert files == ["epoch-00000004.npz", "epoch-00000006.npz"]
    assert (tmp_path / "epoch-00000003.npz").is_dir() and (tmp_path / ".epoch-00000001.npz.x7.tmp").is_dir()
    assert _fit(tmp_path).resumed_from == 6


def _problem(n):
    """A problem of its own size, so that a run on it would compile new programs."""
    return _shared.linear_problem(n, 4)


def test_a_folder_that_cannot_be_created_or_written_is_refused_before_compiling(tmp_path, compiles):
    (tmp_path / "file.txt").write_text("x")
    prob = _problem(131)
    with compiles() as c:
        with pytest.raises(ValueError, match=r"checkpoint='.*file.txt/ckpt' cannot be created \(.*Not a directory"):
            _fit(tmp_path / "file.txt" / "ckpt", data=prob)
        if sys.platform == "linux":  # /proc takes no new files, not even from root
            with pytest.raises(ValueError, match=r"checkpoint='/proc/gdjax-test/ckpt' cannot be created"):
                _fit("/proc/gdjax-test/ckpt", data=prob)
            with pytest.raises(ValueError, match=r"checkpoint='/proc' cannot be written \(.*\); give a folder"):
                _fit("/proc", data=prob)
    assert c.count == 0
    assert not (tmp_path / "file.txt").is_dir()


def test_a_folder_that_refuses_files_is_refused_before_compiling(tmp_path, compiles, monkeypatch):
    """Where no real failure can be produced (root writes anywhere): creating the probe file fails."""

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", denied)
    prob = _problem(133)
    with compiles() as c, pytest.raises(ValueError, match=r"cannot be written \(\[Errno 13\] Permission denied\)"):
        _fit(tmp_path / "ro", data=prob)
    assert c.count == 0


def test_a_folder_in_use_by_another_run_is_refused_before_compiling(tmp_path, compiles):
    prob = _problem(137)
    stale_looking = tmp_path / ".epoch-00000002.npz.a1b2.tmp"
    with checkpoint.FolderLock(tmp_path):  # another run: another open file description, as another process has
        stale_looking.write_bytes(b"being written by the other run")
        in_use = rf"folder '.*' is in use by another run \(another call in this process, {os.getpid()},.*another folder"
        with compiles() as c:
            with pytest.raises(checkpoint.CheckpointInUseError, match=in_use):
                _fit(tmp_path, data=prob)
            with pytest.raises(ValueError, match="is in use by another run"):
                gd.sweep(
                    MODEL.loss,
                    MODEL.init(None, 4),
                    optax.sgd,
                    gd.minibatch(prob.data, 32),
                    learning_rates=[0.1, 0.2],
                    epochs=2,
                    key=jax.random.key(0),
                    checkpoint=tmp_path,
                )
        assert c.count == 0
        assert stale_looking.exists()  # the refused run touched nothing
    with compiles() as c:
        res = _fit(tmp_path, data=prob)  # the other run is over
    assert c.count > 0 and res.resumed_from == 0
    assert not stale_looking.exists()  # now it is stale, and removed under the lock
    with checkpoint.FolderLock(tmp_path):  # fit let go of the folder
        pass


def test_the_lock_is_released_when_a_run_raises(tmp_path, monkeypatch):
    def disk_full(self, tree, epoch, extra=None):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(checkpoint.Checkpointer, "save", disk_full)
        with pytest.raises(OSError, match="No space left"):
            _fit(tmp_path)
    with checkpoint.FolderLock(tmp_path):
        pass
    _fit(tmp_path)
    with pytest.raises(ValueError, match="other settings"):  # refused under the lock...
        _fit(tmp_path, lr=0.07)
    with checkpoint.FolderLock(tmp_path):  # ...which it gave back
        pass


def test_a_sweep_of_several_chunks_holds_one_lock_and_reports_where_it_resumed(tmp_path):
    prob = _problem(64)
    kw = dict(learning_rates=[0.01, 0.02, 0.03], epochs=4, key=jax.random.key(0), chunk_size=2, checkpoint_every=2)
    run = lambda: gd.sweep(  # noqa: E731
        MODEL.loss, MODEL.init(None, 4), optax.sgd, gd.minibatch(prob.data, 16), checkpoint=tmp_path, **kw
    )
    first = run()  # two chunks, two file series, one lock (a lock per chunk would lock out the second)
    assert first.resumed_from.tolist() == [0, 0, 0]
    (tmp_path / "chunk-00001-epoch-00000004.npz").unlink()  # the second chunk, as if killed before its last save
    again = run()
    assert again.resumed_from.tolist() == [4, 4, 2]
    np.testing.assert_array_equal(again.epoch_losses, first.epoch_losses)
    np.testing.assert_array_equal(again.losses, first.losses)
    with checkpoint.FolderLock(tmp_path):
        pass
    unsaved = gd.sweep(
        MODEL.loss, MODEL.init(None, 4), optax.sgd, gd.minibatch(prob.data, 16), **kw | {"checkpoint_every": None}
    )
    assert unsaved.resumed_from.tolist() == [0, 0, 0]


@pytest.mark.slow
def test_a_second_process_on_the_same_folder_is_refused_until_the_first_dies(tmp_path):
    hold = (
        "import sys; from gdjax.checkpoint import FolderLock; "
        "FolderLock(sys.argv[1]).acquire(); print('held', flush=True); input()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as other:
        try:
            assert other.stdout.readline().strip() == "held"
            with pytest.raises(checkpoint.CheckpointInUseError, match=rf"in use by another run \(process {other.pid},"):
                _fit(tmp_path)
        finally:
            other.kill()  # SIGKILL: the system drops the lock with the process
    assert _fit(tmp_path).resumed_from == 0


def make_loss(scale):
    def loss(params, example):
        return scale * MODEL.loss(params, example)

    return loss


@pytest.mark.slow
def test_a_loss_of_the_same_name_over_other_values_is_refused_before_compiling(tmp_path, compiles):
    _fit(tmp_path, loss=make_loss(1.0))
    with (
        compiles() as c,
        pytest.raises(
            ValueError,
            match=r"other settings \(loss_fn: '.*make_loss.<locals>.loss' has the name of the loss there but other "
            r"code, defaults or captured values\)",
        ),
    ):
        _fit(tmp_path, loss=make_loss(2.0))
    assert c.count == 0
    assert _fit(tmp_path, loss=make_loss(1.0)).resumed_from == 6  # an equal closure, made again, resumes


def _with_default(s):
    def loss(p, e, s=s):
        return s * p

    return loss


def _global(value, source="def f(p, e):\n    return SCALE * p\n"):
    namespace = {"__name__": "losses", "SCALE": value}
    exec(source, namespace)
    return namespace["f"]


def _base(p, e, scale=1.0):
    return scale * p


class _Holder:
    def __init__(self, scale):
        self.scale = scale


DIGESTED = {  # name: (a function, the same again, one that computes something else)
    "closure over a number": (make_loss(1.0), make_loss(1.0), make_loss(2.0)),
    "closure over an array": (make_loss(np.ones(3)), make_loss(np.ones(3)), make_loss(np.full(3, 2.0))),
    "closure over a jax array": (make_loss(jnp.ones(2)), make_loss(jnp.ones(2)), make_loss(jnp.ones(2, jnp.int32))),
    "closure over a tuple": (make_loss((1, 2)), make_loss((1, 2)), make_loss((1, 3))),
    "default": (_with_default(1.0), _with_default(1.0), _with_default(-1.0)),
    "partial keyword": (
        functools.partial(_base, scale=1.0),
        functools.partial(_base, scale=1.0),
        functools.partial(_base, scale=3.0),
    ),
    "partial argument": (functools.partial(_base, 1.0), functools.partial(_base, 1.0), functools.partial(_base, 2.0)),
    "code": (lambda p, e: p + e, lambda p, e: p + e, lambda p, e: p - e),
    "constant": (lambda p, e: p * 0.5, lambda p, e: p * 0.5, lambda p, e: p * 0.25),
    "module global": (_global(1.0), _global(1.0), _global(2.0)),
    "frozenset constant": (
        _global(0, "def f(p, e):\n    return e in {'a', 'b', 'c'}\n"),
        _global(0, "def f(p, e):\n    return e in {'a', 'b', 'c'}\n"),
        _global(0, "def f(p, e):\n    return e in {'a', 'b', 'd'}\n"),
    ),
    "captured function": (make_loss(make_loss(1.0)), make_loss(make_loss(1.0)), make_loss(make_loss(2.0))),
    "jitted": (jax.jit(make_loss(1.0)), jax.jit(make_loss(1.0)), jax.jit(make_loss(2.0))),
}


@pytest.mark.parametrize("case", DIGESTED)
def test_the_loss_digest_sees_code_defaults_closures_partials_and_globals(case):
    fn, same, other = DIGESTED[case]
    assert same is not fn
    assert checkpoint.function_digest(same) == checkpoint.function_digest(fn)
    assert checkpoint.function_digest(other) != checkpoint.function_digest(fn)


def test_the_loss_digest_sees_only_the_type_of_other_objects():
    """The documented limit: a captured object that is not a number, string, array or container of them."""
    assert checkpoint.function_digest(make_loss(_Holder(1.0))) == checkpoint.function_digest(make_loss(_Holder(2.0)))
    assert checkpoint.function_digest(make_loss(_Holder(1.0))) != checkpoint.function_digest(make_loss(object()))


@pytest.mark.slow
def test_the_loss_digest_is_the_same_in_other_processes():
    source = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_checkpoint as t; from gdjax import checkpoint; "
        "print(*(checkpoint.function_digest(fns[0]) for fns in t.DIGESTED.values()))"
    )
    here = [checkpoint.function_digest(fns[0]) for fns in DIGESTED.values()]
    for seed in ("1", "2"):  # string hashes, so set orders, differ between these processes
        env = {**os.environ, "PYTHONHASHSEED": seed, "JAX_PLATFORMS": "cpu"}
        out = subprocess.run(
            [sys.executable, "-c", source, str(Path(__file__).parent)], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == here


def test_another_configuration_in_the_folder_is_refused_before_compiling(tmp_path, compiles):
    _fit(tmp_path)
    with (
        compiles() as c,
        pytest.raises(ValueError, match=r"other settings \(hyperparams.learning_rate: 0.05 there, 0.07 now"),
    ):
        _fit(tmp_path, lr=0.07)
    assert c.count == 0
    with pytest.raises(ValueError, match=r"at epoch 6, past the 4 asked for: pass epochs=6 or more"):
        _fit(tmp_path, epochs=4)  # only epochs may differ, and only upwards
    assert _fit(tmp_path).resumed_from == 6  # the same arguments still resume


def test_checkpoint_arguments_are_checked(tmp_path):
    prob = _shared.linear_problem(50, 4)
    args = (MODEL.loss, MODEL.init(None, 4))
    it = gd.minibatch(prob.data, 8)
    with pytest.raises(ValueError, match="checkpoint_every is set but checkpoint is not"):
        gd.fit(*args, optax.sgd, it, epochs=1, key=jax.random.key(0), learning_rate=0.1, checkpoint_every=2)
    with pytest.raises(ValueError, match="checkpoint_every must be at least 1"):
        gd.fit(
            *args,
            optax.sgd,
            it,
            epochs=1,
            key=jax.random.key(0),
            learning_rate=0.1,
            checkpoint=tmp_path,
            checkpoint_every=0,
        )
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; give a folder"):
        gd.fit(*args, optax.sgd, it, epochs=1, key=jax.random.key(0), learning_rate=0.1, checkpoint=tmp_path / "file")


def test_checkpoints_record_versions_and_backend(tmp_path):
    _fit(tmp_path)
    meta = checkpoint.read_metadata(next(tmp_path.glob("epoch-*.npz")))
    assert meta["environment"]["jax"] == jax.__version__
    assert meta["environment"]["backend"] == jax.default_backend()
    assert meta["settings"]["kind"] == "fit" and meta["epoch"] in (4, 6)


def _check_resume_from_the_checkpoint_before_the_last(folder, n, b, epochs, every, seed):
    prob = gd.problems.linear_regression(n=n, d=4, key=jax.random.key(seed))
    it = gd.minibatch(prob.data, b)
    kw = dict(epochs=epochs, key=jax.random.key(seed), learning_rate=0.01, checkpoint_every=every)
    ref = gd.fit(MODEL.loss, MODEL.init(None, 4), optax.adam, it, **{**kw, "checkpoint_every": None})
    gd.fit(MODEL.loss, MODEL.init(None, 4), optax.adam, it, checkpoint=folder, **kw)
    (folder / f"epoch-{epochs:08d}.npz").unlink()  # as if killed just before the last checkpoint was written
    resumed = gd.fit(MODEL.loss, MODEL.init(None, 4), optax.adam, it, checkpoint=folder, **kw)
    assert resumed.resumed_from == (epochs - 1) // every * every  # the checkpoint before the last
    np.testing.assert_array_equal(resumed.losses, ref.losses)
    np.testing.assert_array_equal(resumed.epoch_losses, ref.epoch_losses)
    for x, y in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(ref.state), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_resume_from_any_epoch_equals_an_uninterrupted_run(tmp_path_factory, data, seed):
    """Any checkpoint interval and seed, 3 to 8 epochs (resumed from epoch 2 to 7), on one data shape (37
    examples, batches of 8, the last ragged): its programs compile once for 4 and once for 8 epochs of history.
    The slow lane draws the shape as well, and 2 epochs."""
    epochs = data.draw(st.integers(3, 8), label="epochs")
    every = data.draw(st.integers(1, epochs - 1), label="checkpoint_every")
    _check_resume_from_the_checkpoint_before_the_last(tmp_path_factory.mktemp("ckpt"), 37, 8, epochs, every, seed)


@pytest.mark.slow
@settings(max_examples=10, deadline=None)
@given(n=st.integers(20, 120), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_resume_from_any_epoch_of_any_data_shape(tmp_path_factory, n, data, seed):
    b = data.draw(st.integers(1, n), label="batch_size")
    epochs = data.draw(st.integers(2, 8), label="epochs")
    every = data.draw(st.integers(1, epochs - 1), label="checkpoint_every")
    _check_resume_from_the_checkpoint_before_the_last(tmp_path_factory.mktemp("ckpt"), n, b, epochs, every, seed)


def _child(kind, folder, out, env):
    return subprocess.Popen([sys.executable, str(CHILD), kind, str(folder), str(out)], env=env)


_REFERENCE = {}


def _reference(kind, tmp_path_factory, env):
    """The uninterrupted run's result (one child process per kind, shared by the tests)."""
    if kind not in _REFERENCE:
        out = tmp_path_factory.mktemp("reference") / "ref.json"
        assert _child(kind, "-", out, env).wait(timeout=300) == 0
        _REFERENCE[kind] = json.loads(out.read_text())
    return dict(_REFERENCE[kind])


def _newest_epoch(folder, prefix):
    names = os.listdir(folder) if folder.is_dir() else []
    pattern = re.compile(re.escape(prefix) + r"epoch-(\d{8})\.npz")
    return max((int(m.group(1)) for n in names if (m := pattern.fullmatch(n))), default=0)


@pytest.fixture(scope="module")
def child_env(tmp_path_factory):
    """The children's environment: one JAX compilation cache for all of them, so only the first child of a
    kind compiles its program and the others load it (the same executable; what these tests check is the
    checkpoints, the kill and the resume, which the cache does not touch). Fresh processes that compile
    alike are test_loop's test_same_key_bit_identical_in_two_fresh_processes."""
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax-cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "seed"), [("fit", 0), ("sweep", 0), ("sweep", 1)])
def test_killed_with_sigkill_and_run_again_is_bit_identical(tmp_path, tmp_path_factory, child_env, kind, seed):
    """Killed at a random moment once a random epoch is saved, a run resumes from a saved epoch and ends
    bit-identical to an uninterrupted run in another fresh process. A sweep is killed in chunk ``seed % 2``.
    The seed fixes the moment; GDJAX_KILL_SEED=n replays another one."""
    seed = int(os.environ.get("GDJAX_KILL_SEED", seed))
    rng = random.Random(seed)
    env = child_env
    epochs = resume_child.FIT_EPOCHS if kind == "fit" else resume_child.SWEEP_EPOCHS
    chunk = seed % 2 if kind == "sweep" else None
    prefix = "" if chunk is None else f"chunk-{chunk:05d}-"
    k = rng.randint(2, epochs // 2)  # the kill comes once epoch k is saved...
    delay = rng.uniform(0.0, 2 * resume_child.SAVE_DELAY)  # ...and this much later: mid-epoch, mid-save or mid-write
    where = f"(seed {seed}: {kind} {'' if chunk is None else f'chunk {chunk} '}killed {delay:.3f} s after epoch {k})"
    folder, out = tmp_path / "ckpt", tmp_path / "out.json"
    proc = _child(kind, folder, out, env)
    deadline = time.monotonic() + 300
    while _newest_epoch(folder, prefix) < k and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not out.exists(), f"the run ended before it was killed {where}"
    assert _child(kind, folder, out, env).wait(timeout=300) == 0
    got, ref = json.loads(out.read_text()), _reference(kind, tmp_path_factory, env)
    resumed, ref_resumed = got.pop("resumed_from"), ref.pop("resumed_from")
    if kind == "fit":
        assert ref_resumed == 0 and k <= resumed < epochs, where  # resumed from a saved epoch, not from scratch
    else:
        assert ref_resumed == [0] * 6, where
        mine, other = resumed[3 * chunk : 3 * chunk + 3], resumed[3 - 3 * chunk : 6 - 3 * chunk]
        assert all(k <= r < epochs for r in mine), (resumed, where)
        assert other == ([0] * 3 if chunk == 0 else [epochs] * 3), (resumed, where)  # not started / finished
    assert got == ref, where


def test_bfloat16_state_round_trips(tmp_path):
    checkpoint.save(tmp_path / "b.npz", {"w": jnp.arange(3, dtype=jnp.bfloat16)})
    tree, _ = checkpoint.restore(tmp_path / "b.npz", {"w": jnp.zeros(3, jnp.bfloat16)})
    assert tree["w"].dtype == jnp.bfloat16 and tree["w"].tolist() == [0, 1, 2]


@pytest.mark.slow  # compiles a bfloat16 Adam run of its own
def test_a_bfloat16_run_resumes(tmp_path):
    prob = _shared.linear_problem(64, 4)
    data = {k: jnp.asarray(v, jnp.bfloat16) for k, v in prob.data.items()}
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), MODEL.init(None, 4))
    kw = dict(epochs=4, key=jax.random.key(0), learning_rate=0.01, checkpoint=tmp_path / "run")
    ref = gd.fit(MODEL.loss, params, optax.adam, gd.minibatch(data, 16), **kw)
    (tmp_path / "run" / "epoch-00000004.npz").unlink()
    again = gd.fit(MODEL.loss, params, optax.adam, gd.minibatch(data, 16), **kw)
    assert again.resumed_from == 3
    np.testing.assert_array_equal(again.losses, ref.losses)


@pytest.mark.slow
def test_a_checkpoint_of_other_shapes_is_refused_not_silently_restarted(tmp_path):
    init = lambda width: lambda k: gd.models.mlp((width,)).init(k, 4)  # noqa: E731 - same name, other shapes
    prob = _shared.linear_problem(64, 4)
    kw = dict(learning_rates=[0.01], seeds=1, epochs=2, key=jax.random.key(0), checkpoint=tmp_path)
    gd.sweep(gd.models.mlp((3,)).loss, None, optax.sgd, gd.minibatch(prob.data, 16), init=init(3), **kw)
    # the settings record what init made (its shapes), so the other widths are named before anything compiles
    shapes = r"other settings \(.*params.shapes: .*float32\[4, 3\].* there, .*float32\[4, 5\].* now"
    with pytest.raises(ValueError, match=shapes):
        gd.sweep(gd.models.mlp((5,)).loss, None, optax.sgd, gd.minibatch(prob.data, 16), init=init(5), **kw)
