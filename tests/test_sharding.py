"""Scale-out on CPU: forced host devices stand in for accelerators."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np


def _run_with_devices(n: int, module: str, *args: str, returncode: int = 0) -> dict:
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    assert proc.returncode == returncode, proc.stderr[-3000:]
    return json.loads(proc.stdout) if returncode == 0 else {}


def test_one_and_four_devices_agree_and_padding_is_dropped():
    out = _run_with_devices(4, "tests.sharding_worker")
    assert out["device_count"] == 4
    assert out["padded_shape"] == {"one": [2, 6], "all": [2, 8]}  # 3 rates padded to 4 per loss
    assert "configs" in out["sharding_all"]
    assert out["shapes"] == [[2, 6], [2, 6]]  # padding dropped from results
    assert out["max_metric_diff"] < 1e-5, out
    assert out["max_param_diff"] < 1e-5, out
    assert out["diverged_equal"]


def test_batchnorm_dropout_killed_on_four_devices_resumes_on_one(tmp_path):
    """kill -9 after the first checkpoint on 4 devices, resume on 1: equals an uninterrupted run
    on 1 device (float32 rounding: the grid's shape differs, 3 rates padded to 4 on 4 devices)."""
    import numpy as np

    path = str(tmp_path / "checkpoint")
    worker = "tests.stateful_sharding_worker"
    _run_with_devices(4, worker, "killed", path, returncode=-9)
    resumed = _run_with_devices(1, worker, "resume", path)
    whole = _run_with_devices(1, worker, "whole", path)
    assert resumed["devices"] == whole["devices"] == 1
    assert resumed["resumed_at"] in ([20], [40])  # not from scratch
    for a, b in zip(resumed["finals"], whole["finals"], strict=True):
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5, err_msg=name)
    for a, b in zip(resumed["state"], whole["state"], strict=True):  # BatchNorm stats, streams
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# long enough to be stopped mid-run; rates where float32 rounding differences between grids of
# other shapes (4 devices vs 1) stay at rounding size over the run
LONG = ["--loss=ce,mse", "--lrs=0.01,0.03,0.1", "--seeds=2", "--steps=400", "--eval_every=20"]
LONG += ["--hidden=16", "--batch_size=64"]


def _processes(workdir, port, *extra):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-u",
                "-m",
                "experiments.sweep",
                *LONG,
                *extra,
                f"--workdir={workdir}",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def _single(workdir):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    cmd = [sys.executable, "-m", "experiments.sweep", *LONG, f"--workdir={workdir}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _assert_same_curves(a_dir, b_dir):
    load = lambda w: json.loads((w / "results.json").read_text())["configs"]
    for a, b in zip(load(a_dir), load(b_dir), strict=True):
        assert (a["loss"], a["learning_rate"], a["seed"]) == (
            b["loss"],
            b["learning_rate"],
            b["seed"],
        )
        for metric, values in a["curves"].items():
            np.testing.assert_allclose(
                np.array(values, float), np.array(b["curves"][metric], float), rtol=1e-5, atol=1e-6
            )


def test_two_processes_stopped_by_sigterm_resume_on_two_and_on_one(tmp_path):
    """Two processes train one sweep like a single process. SIGTERM to one of them: both agree on
    the step, each writes its own shards of one checkpoint, and it resumes on two processes (4
    devices) and on one (1 device) to the uninterrupted single-process run."""
    from softcls_jax import checkpoint
    from softcls_jax.preemption import EXIT_PREEMPTED

    stopped = tmp_path / "stopped"
    procs = _processes(stopped, _free_port())
    lines = 0
    for line in procs[0].stdout:  # process 0 reports progress
        lines += line.startswith("[")
        if lines == 3:
            procs[1].send_signal(signal.SIGTERM)
            break
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [EXIT_PREEMPTED] * 2, [o[1][-2000:] for o in outputs]
    last = outputs[0][0].strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM at step"), outputs[0][0]
    step = int(last.split("at step ")[1].split(";")[0].split()[0])
    assert 0 < step < 400
    step_dir = stopped / checkpoint.DIRECTORY / str(step)
    assert {p.name for p in (step_dir / "state").glob("ocdbt.process_*")} == {
        "ocdbt.process_0",
        "ocdbt.process_1",
    }
    shutil.copytree(stopped, tmp_path / "on_one")

    procs = _processes(stopped, _free_port())
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    assert f"resuming from the checkpoint at step {step}" in outputs[0][0]
    assert "[400/400]" in outputs[0][0] and "/400]" not in outputs[1][0]  # process 0 alone reports
    environment = json.loads((stopped / "results.json").read_text())["environment"]
    assert environment["process_count"] == 2 and len(environment["devices"]) == 4
    assert f"resuming from the checkpoint at step {step}" in _single(tmp_path / "on_one")
    _single(tmp_path / "reference")
    _assert_same_curves(stopped, tmp_path / "reference")
    _assert_same_curves(tmp_path / "on_one", tmp_path / "reference")
