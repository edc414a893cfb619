"""The checkpoint store itself: digests, fresh runs over old checkpoints, metadata integrity, and
errors while unwinding (the sweep-level cases are in test_integrity and test_reliability)."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from softcls_jax import checkpoint, data, digest, engine, models, runner
from tests import checkpoint_files

SETTINGS = engine.TrainSettings("adam", 40, 32, 20)


@pytest.fixture(scope="module")
def digits_mlp():
    d = data.with_validation(data.load("digits"), 0.1)
    return models.make_model("mlp", d.num_features, d.num_classes, hidden=(8,)), d


def test_numpy_digests_equal_the_jitted_ones_on_every_dtype():
    rng = np.random.default_rng(0)
    tree = [
        rng.normal(size=(2, 8, 5)).astype(np.float32),
        rng.integers(-9, 9, (3, 4)).astype(np.int32),
        np.arange(7, dtype=np.uint32),
        np.ones((2,), np.float16),
        np.array([True, False]),
        np.int32(5),
        np.zeros((0, 3), np.float32),
        rng.integers(0, 255, (4,)).astype(np.uint8),
        jax.random.split(jax.random.key(3), 2),  # typed keys: their raw words
    ]
    jitted = digest.hex_digests(jax.jit(digest.tree_digests)(tree))
    assert jitted == digest.hex_digests(digest.numpy_digests(tree))
    flipped = [a.copy() for a in tree]
    flipped[0].view(np.uint32)[1, 2, 3] ^= 1 << 20
    assert digest.hex_digests(digest.numpy_digests(flipped))[0] != jitted[0]


def test_a_small_state_is_digested_on_the_host_as_the_program_digests_it(digits_mlp, monkeypatch):
    # Adam's state holds float and int leaves; the host path skips the compiled digest program.
    model, d = digits_mlp
    trainer = engine.Trainer(model, d, engine.Layout(("ce", "mse"), (0.1, 0.3), (0, 1)), SETTINGS)
    state, _ = trainer.train()
    on_host = trainer.digests(state)
    assert "digest" not in trainer._compiled
    monkeypatch.setattr(engine.driver, "HOST_DIGEST_ELEMENTS", 0)
    assert trainer.digests(state) == on_host
    assert "digest" in trainer._compiled
    assert trainer.digests(state._replace(step=state.step + 1)) != on_host


def test_a_fresh_run_replaces_an_earlier_runs_checkpoint(digits_mlp, tmp_path):
    """orbax skips a save at a step below the directory's latest: a run that does not resume
    clears the old checkpoint first, and resuming then continues the new run."""
    model, d = digits_mlp
    path = tmp_path / "c"
    runner.run(model, d, engine.Layout(("ce",), (0.1,), (0,)), SETTINGS, checkpoint_path=path)
    later = engine.TrainSettings("adam", 60, 32, 20)
    runner.run(model, d, engine.Layout(("mse",), (0.3,), (0,)), later, checkpoint_path=path)
    other = engine.Layout(("ce",), (0.01, 0.1), (0,))
    runner.run(model, d, other, SETTINGS, checkpoint_path=path)  # steps 20, 40 < 60
    resumed = []
    runner.run(
        model, d, other, SETTINGS, checkpoint_path=path, resume=True, on_resume=resumed.append
    )
    assert resumed == [40]


def test_a_save_below_a_later_step_is_an_error_not_a_silent_skip(digits_mlp, tmp_path):
    model, d = digits_mlp
    trainer = engine.Trainer(model, d, engine.Layout(("ce",), (0.1,), (0,)), SETTINGS)
    state, history = trainer.train()
    with checkpoint.Checkpointer(tmp_path, trainer) as ckpt:
        ckpt.save(state, history)  # step 40
    early = state._replace(step=state.step - 20)
    with pytest.raises(checkpoint.CheckpointError, match="holds step 40, beyond step 20"):
        with checkpoint.Checkpointer(tmp_path, trainer) as ckpt:
            ckpt.save(early, history[:2])
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        checkpoint.write(tmp_path, jax.device_get(state), history, trainer.layout)


def test_a_changed_byte_of_the_metadata_is_refused(digits_mlp, tmp_path):
    model, d = digits_mlp
    layout = engine.Layout(("ce",), (0.1,), (0,))
    runner.run(model, d, layout, SETTINGS, checkpoint_path=tmp_path / "c")
    meta = checkpoint_files.step_dir(tmp_path / "c") / "meta" / "metadata"
    document = json.loads(meta.read_text())
    document["segment_steps"] = 7  # a plausible value, as a flipped digit makes one
    meta.write_text(json.dumps(document))
    trainer = engine.Trainer(model, d, layout, SETTINGS)
    with pytest.raises(checkpoint.CheckpointError, match="metadata does not match its sha256"):
        checkpoint.Checkpointer(tmp_path / "c", trainer).restore(layout, SETTINGS)


def test_segment_steps_must_divide_the_chunks(digits_mlp, tmp_path):
    model, d = digits_mlp
    layout = engine.Layout(("ce",), (0.1,), (0,))
    trainer = engine.Trainer(model, d, layout, SETTINGS)
    state, history = trainer.train()
    checkpoint.write(tmp_path, jax.device_get(state), history, trainer.layout, segment_steps=3)
    with pytest.raises(checkpoint.CheckpointError, match="3 steps per segment, which do not"):
        checkpoint.Checkpointer(tmp_path, trainer).restore(layout, SETTINGS)


def test_a_failed_write_while_unwinding_does_not_hide_the_error(digits_mlp, tmp_path, monkeypatch):
    model, d = digits_mlp
    trainer = engine.Trainer(model, d, engine.Layout(("ce",), (0.1,), (0,)), SETTINGS)
    state, history = trainer.train()

    real_wait = ocp.CheckpointManager.wait_until_finished

    def fails(self):  # the write finishes, then reports what orbax reports for a full disk
        real_wait(self)
        raise ValueError("RESOURCE_EXHAUSTED: ... No space left [os_error_code='28']")

    with pytest.raises(RuntimeError, match="the training loop failed") as e:
        with checkpoint.Checkpointer(tmp_path, trainer) as ckpt:
            ckpt.save(state, history)
            monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", fails)
            raise RuntimeError("the training loop failed")
    assert any("checkpoint in flight was not written" in n for n in e.value.__notes__)
    monkeypatch.undo()
    with pytest.raises(OSError, match="No space left on device"):  # alone, it is the error
        with checkpoint.Checkpointer(tmp_path / "b", trainer) as ckpt:
            ckpt.save(state, history)
            monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", fails)
