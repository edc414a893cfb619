"""Crash safety, resume, workdir ownership, checked mode and numerics under stress (issue 6)."""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softcls_jax import checkpoint, data, engine, models, sweep
from tests import checkpoint_files

SWEEP = [sys.executable, "-u", "-m", "experiments.sweep"]
RESUME_ARGS = ["--loss=ce,mse", "--num_lrs=4", "--seeds=2", "--steps=800", "--eval_every=100"]


def _results_without_timing(workdir):
    document = json.loads((workdir / "results.json").read_text())
    document.pop("timing")
    return document


def test_kill_9_mid_sweep_then_resume_equals_uninterrupted_run(tmp_path):
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    proc = subprocess.Popen(
        [*SWEEP, *RESUME_ARGS, f"--workdir={interrupted}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    progress_lines = 0
    for line in proc.stdout:
        if line.startswith("["):
            progress_lines += 1
            if progress_lines == 3:  # three chunks checkpointed: kill it mid-sweep, no cleanup
                os.kill(proc.pid, signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (interrupted / "results.json").exists()
    assert checkpoint.committed(interrupted / checkpoint.DIRECTORY)

    resumed = subprocess.run(
        [*SWEEP, *RESUME_ARGS, f"--workdir={interrupted}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    line = next(x for x in resumed.stdout.splitlines() if x.startswith("resuming"))
    step = int(line.rsplit(" ", 1)[1])
    # resumed mid-sweep, not from scratch: when the third chunk's line is printed its checkpoint
    # may still be in flight (saving is asynchronous), the second's is committed
    assert 200 <= step < 800, line

    uninterrupted = subprocess.run(
        [*SWEEP, *RESUME_ARGS, f"--workdir={reference}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    assert _results_without_timing(interrupted) == _results_without_timing(reference)


TINY = sweep.SweepSpec(
    losses=("ce",),
    learning_rates=(0.1,),
    seeds=(0,),
    hidden=(8,),
    steps=20,
    eval_every=10,
    batch_size=32,
)


def test_workdir_with_other_settings_is_refused_unless_overwrite(tmp_path):
    sweep.run_sweep(TINY, tmp_path)
    other = sweep.SweepSpec(**{**TINY.__dict__, "steps": 30})
    with pytest.raises(
        sweep.SettingError, match=r"holds a sweep with other settings \(steps: 20 -> 30\)"
    ) as e:
        sweep.run_sweep(other, tmp_path)
    assert e.value.setting == "workdir"
    document = sweep.run_sweep(other, tmp_path, overwrite=True)
    assert document["settings"]["steps"] == 30
    assert json.loads((tmp_path / "spec.json").read_text())["steps"] == 30


def test_rerunning_a_finished_sweep_reproduces_it(tmp_path):
    first = sweep.run_sweep(TINY, tmp_path)
    resumed_at = []
    second = sweep.run_sweep(TINY, tmp_path, on_resume=resumed_at.append)
    assert resumed_at == [20]  # nothing left to train
    first.pop("timing"), second.pop("timing")
    assert json.dumps(first, default=str) == json.dumps(second, default=str)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    sweep.run_sweep(TINY, tmp_path)
    for path in checkpoint_files.array_files(tmp_path / checkpoint.DIRECTORY):
        path.write_bytes(b"\x00garbage")
    with pytest.raises(
        sweep.SettingError, match=r"is unreadable: .*; remove it or use --overwrite"
    ):
        sweep.run_sweep(TINY, tmp_path)


def test_checkpoint_round_trip(tmp_path):
    d = data.load("digits")
    m = models.make_model("mlp", d.num_features, d.num_classes, hidden=(8,))
    trainer = engine.Trainer(
        m,
        d,
        engine.Layout(("ce", "mse"), (0.1, 0.2), (0, 1)),
        engine.TrainSettings("adam", 20, 32, 10),
    )
    state, history = trainer.train()
    with checkpoint.Checkpointer(tmp_path / "c", trainer) as ckpt:
        ckpt.save(state, history)
    with checkpoint.Checkpointer(tmp_path / "c", trainer) as ckpt:
        restored, restored_history = ckpt.restore()[:2]
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [h["step"] for h in restored_history] == [0, 10, 20]
    np.testing.assert_array_equal(restored_history[-1]["test_nll"], history[-1]["test_nll"])


def _bad_label_dataset():
    d = data.load("digits")
    y = d.y_train.copy()
    y[5] = 12  # a Dataset built by hand, bypassing data.validate
    return data.Dataset("hand-made", d.x_train, y, d.x_test, d.y_test, 10)


def test_trainer_refuses_out_of_range_labels():
    d = _bad_label_dataset()
    m = models.make_model("linear", d.num_features, 10)
    with pytest.raises(ValueError, match=r"hand-made: y_train: labels out of range: \[12\]"):
        engine.Trainer(m, d, engine.Layout(("mse",), (0.1,), (0,)), engine.TrainSettings())


def test_checked_mode_reports_bad_labels_inside_compiled_code():
    d = data.load("digits")
    m = models.make_model("linear", d.num_features, 10)
    settings = engine.TrainSettings(steps=10, eval_every=10, checked=True)
    trainer = engine.Trainer(m, d, engine.Layout(("mse",), (0.1,), (0,)), settings)
    state, _ = trainer.train()  # clean labels pass the compiled check
    assert int(state.step) == 10
    # Labels corrupted on the device after the host check: only the compiled check can see them.
    trainer.data = trainer.data._replace(y_train=trainer.data.y_train.at[0, 3].set(11))
    with pytest.raises(
        ValueError, match=r"checked mode: labels out of range \[0, 10\): min 0, max 11"
    ):
        trainer.run_chunk(trainer.init_state(), 10)


def test_stress_sweep_finishes_flags_divergence_and_writes_valid_results(tmp_path):
    spec = sweep.SweepSpec(
        losses=("ce", "mse", "square"),
        learning_rates=(0.1, 10.0, 1e3),
        seeds=(0,),
        hidden=(32,),
        steps=60,
        eval_every=20,
        axes={"init_scale": (100.0,)},
    )
    sweep.run_sweep(spec, tmp_path)
    text = (tmp_path / "results.json").read_text()
    document = json.loads(text)  # strict JSON: NaN was written as null
    assert "NaN" not in text and "Infinity" not in text
    diverged = {(c["loss"], c["learning_rate"]) for c in document["configs"] if c["diverged"]}
    assert ("square", 1e3) in diverged and ("ce", 1e3) in diverged
    for c in document["configs"]:
        if c["diverged"]:
            assert c["final"]["test_accuracy"] is None and c["diverged_step"] >= 0
        else:
            assert 0.0 <= c["final"]["test_accuracy"] <= 1.0
    summary = (tmp_path / "summary.md").read_text()
    assert f"## Diverged: {len(diverged)} of 9 configs" in summary
    assert "non-finite at step" in summary


def test_checked_labels_graph_check_is_jit_compatible():
    from jax.experimental import checkify

    from softcls_jax.labels import check_labels_in_graph

    f = checkify.checkify(jax.jit(lambda y: (check_labels_in_graph(y, 4), y.sum())[1]))
    assert f(jnp.array([0, 3]))[0].get() is None
    assert "min -1" in f(jnp.array([-1, 3]))[0].get()
