"""Graceful preemption: SIGTERM stops at a step boundary, checkpointed, and resumes exactly (issue 26)."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from softcls_jax import checkpoint, data, models
from softcls_jax.engine import Layout, Trainer, TrainSettings
from softcls_jax.preemption import EXIT_PREEMPTED, Preempted, StopFlag, stop_on_signals
from tests import checkpoint_files

SWEEP = [sys.executable, "-u", "-m", "experiments.sweep"]
# one chunk as long as the run: only segments let a signal stop it early
LONG_CHUNK = ["--loss=ce", "--lrs=0.1,0.3", "--seeds=2", "--steps=20000", "--eval_every=20000"]


def _start(args, workdir):
    return subprocess.Popen(
        [*SWEEP, *args, f"--workdir={workdir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run(args, workdir):
    out = subprocess.run(
        [*SWEEP, *args, f"--workdir={workdir}"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads((workdir / "results.json").read_text()), out.stdout


def _step_of(workdir):
    """The step of the workdir's committed checkpoint, as its metadata records it."""
    step_dir = checkpoint_files.step_dir(workdir / checkpoint.DIRECTORY)
    step = json.loads((step_dir / "meta" / "metadata").read_text())["step"]
    assert str(step) == step_dir.name
    return step


def test_sigterm_inside_a_long_chunk_stops_checkpoints_and_resumes_exactly(tmp_path):
    stopped, reference = tmp_path / "stopped", tmp_path / "reference"
    proc = _start(LONG_CHUNK, stopped)
    time.sleep(0.5)
    deadline = time.time() + 120
    while not (stopped / "tensorboard").exists() and time.time() < deadline:
        time.sleep(0.2)  # the workdir is claimed and training starts
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)
    sent = time.perf_counter()
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_PREEMPTED, output
    assert time.perf_counter() - sent < 10
    last = [x for x in output.splitlines() if x.strip()][-1]
    assert last.startswith("stopped by SIGTERM at step") and "run the same command" in last, output
    step = int(last.split("at step ")[1].split(";")[0].split()[0])
    assert 0 < step < 20000 and _step_of(stopped) == step  # later than the last evaluation (0)
    assert not (stopped / "results.json").exists()

    resumed, out = _run(LONG_CHUNK, stopped)
    assert f"resuming from the checkpoint at step {step}" in out
    uninterrupted, _ = _run(LONG_CHUNK, reference)
    assert resumed["configs"] == uninterrupted["configs"]
    assert resumed["timing"]["segment_steps"] == uninterrupted["timing"]["segment_steps"] > 0


def test_sigterm_before_training_leaves_a_resumable_workdir(tmp_path):
    args = ["--loss=ce", "--lrs=0.1", "--seeds=1", "--steps=200", "--eval_every=100"]
    proc = _start(args, tmp_path)
    for line in proc.stdout:
        if line.startswith("sweep:"):  # the grid is described; compiling follows
            proc.send_signal(signal.SIGTERM)
            break
    proc.communicate(timeout=120)
    assert proc.returncode in (EXIT_PREEMPTED, -signal.SIGTERM)
    resumed, _ = _run(args, tmp_path)
    reference, _ = _run(args, tmp_path / "reference")
    assert resumed["configs"] == reference["configs"]


@pytest.mark.parametrize("signals", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_sigterm_while_a_checkpoint_is_written_leaves_a_resumable_workdir(tmp_path, signals):
    """A signal right after a chunk's line lands while its checkpoint (19 MB) is being written in
    the background: one signal waits for it and exits 75; a second one, 50 ms later, kills the
    process while it waits for its last save, leaving an uncommitted temporary the next run
    removes. Both resume to the uninterrupted run."""
    args = ["--loss=ce,mse", "--num_lrs=4", "--seeds=2", "--hidden=1024", "--steps=200"]
    args += ["--eval_every=20", "--notensorboard"]
    proc = _start(args, tmp_path / "stopped")
    chunks = 0
    for line in proc.stdout:
        chunks += line.startswith("[")
        if chunks == 2:
            proc.send_signal(signal.SIGTERM)
            if signals == 2:  # once the first is handled (the OS merges two pending ones)
                time.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
            break
    output, _ = proc.communicate(timeout=120)
    # the second signal lands in the final save (-SIGTERM) unless the run already exited (75)
    assert proc.returncode in ((EXIT_PREEMPTED,) if signals == 1 else (EXIT_PREEMPTED, -15)), output
    if signals == 1:
        assert _step_of(tmp_path / "stopped") >= 40  # the chunk's save was waited for
    resumed, out = _run(args, tmp_path / "stopped")
    assert "resuming from the checkpoint at step" in out
    reference, _ = _run(args, tmp_path / "reference")
    assert resumed["configs"] == reference["configs"]


def test_second_signal_exits_at_once():
    code = (
        "import os, signal, time\n"
        "from softcls_jax.preemption import stop_on_signals\n"
        "with stop_on_signals() as flag:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    assert flag() == 'SIGTERM'\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "print('not reached')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGTERM and "not reached" not in out.stdout


def test_handlers_are_restored_after_the_block():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.fixture(scope="module")
def trainer_parts():
    dataset = data.with_validation(data.load("digits"), 0.1)
    model = models.make_model("mlp", dataset.num_features, dataset.num_classes)
    layout = Layout(("ce", "mse"), (0.03, 0.3), (0, 1))
    return model, dataset, layout, TrainSettings("sgd", steps=60, eval_every=30, batch_size=32)


def test_a_stop_between_segments_resumes_to_the_same_history(trainer_parts):
    trainer = Trainer(*trainer_parts)
    trainer.segment_steps = 10
    _, history = trainer.train(stop=lambda: None)

    flag, saved = StopFlag(), {}
    stopper = Trainer(*trainer_parts)
    stopper.segment_steps = 10
    calls = iter(range(100))

    def stop():
        if next(calls) == 4:  # before the segment from step 40: inside the second chunk
            flag.request("SIGTERM")
        return flag()

    def on_stop(state, history, partial):
        saved.update(state=stopper.host_state(state), history=list(history), partial=partial)

    with pytest.raises(Preempted, match="SIGTERM at step 40"):
        stopper.train(stop=stop, on_stop=on_stop)
    assert saved["partial"]["from_step"] == 30
    resumer = Trainer(*trainer_parts)
    resumer.segment_steps = 10
    _, resumed = resumer.train(
        state=resumer.device_state(saved["state"]),
        history=saved["history"],
        pending=saved["partial"],
    )
    assert [h["step"] for h in resumed] == [h["step"] for h in history] == [0, 30, 60]
    for a, b in zip(history, resumed, strict=True):
        for m in a:
            np.testing.assert_array_equal(a[m], b[m], err_msg=m)


def test_segmented_chunks_give_the_whole_chunks_parameters(trainer_parts):
    whole = Trainer(*trainer_parts)
    state, history = whole.train()
    seg = Trainer(*trainer_parts)
    seg.segment_steps = 5
    seg_state, seg_history = seg.train(stop=lambda: None)
    for a, b in zip(
        *(np.asarray(x) for x in (whole.real_params(state), seg.real_params(seg_state))),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)  # the same steps, bitwise
    np.testing.assert_allclose(
        history[-1]["train_loss"], seg_history[-1]["train_loss"], rtol=1e-6
    )  # the chunk's mean loss, summed over segments in float64


def test_mid_chunk_checkpoint_round_trip_and_its_checks(trainer_parts, tmp_path):
    trainer = Trainer(*trainer_parts)
    trainer.segment_steps = 10
    saved = {}
    saves = {  # directory: (running sums?, segment steps)
        "good": (True, 10),
        "off_boundary": (True, 7),
        "no_sums": (False, 10),  # a mid-chunk state without its running sums: inconsistent
    }

    def on_stop(state, history, partial):
        saved["partial"] = partial
        for name, (sums, segment) in saves.items():
            with checkpoint.Checkpointer(tmp_path / name, trainer) as ckpt:
                ckpt.save(state, history, partial if sums else None, segment)

    calls = iter(range(100))
    with pytest.raises(Preempted):
        trainer.train(stop=lambda: "SIGTERM" if next(calls) == 5 else None, on_stop=on_stop)
    layout, settings = trainer_parts[2], trainer_parts[3]
    restore = lambda name: checkpoint.Checkpointer(tmp_path / name, trainer).restore(
        layout, settings
    )
    restored = restore("good")
    assert restored.segment_steps == 10 and restored.pending["from_step"] == 30
    np.testing.assert_array_equal(restored.pending["train_loss"], saved["partial"]["train_loss"])
    with pytest.raises(checkpoint.CheckpointError, match="not a segment boundary"):
        restore("off_boundary")
    with pytest.raises(checkpoint.CheckpointError, match="inconsistent"):
        restore("no_sums")


def test_huge_grid_prints_its_plan_trains_and_stops_cleanly(tmp_path):
    args = ["--num_lrs=200000", "--loss=all", "--memory_budget=1", "--tensorboard=false"]
    proc = _start(args, tmp_path)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "ms per step" in line:  # the first segment trained: an estimate from it
            proc.send_signal(signal.SIGTERM)
            break
    output, _ = proc.communicate(timeout=120)
    lines += output.splitlines()
    assert proc.returncode == EXIT_PREEMPTED, "".join(lines)
    text = "\n".join(lines)
    assert "training 1800000 configs in" in text and "one compiled program" in text
    assert "more for the whole grid" in text and "Traceback" not in text
    assert "stopped by SIGTERM at step" in lines[-1] and "of block 1/" in lines[-1]
