import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from softcls_jax import runner, sweep

TINY = [
    "--steps=20",
    "--eval_every=10",
    "--hidden=8",
    "--num_lrs=2",
    "--seeds=2",
    "--batch_size=32",
]


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "experiments.sweep", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=300,
    )


def test_cli_writes_every_output(tmp_path):
    proc = _cli("--loss=ce,mse", f"--workdir={tmp_path}", *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "| learning rate | ce | mse |" in proc.stdout  # the final table
    assert "[20/20]" in proc.stdout  # progress
    for name in ("results.json", "results.csv", "summary.md", *runner.PLOTS):
        assert (tmp_path / name).stat().st_size > 0, name
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["settings"]["losses"] == ["ce", "mse"]
    assert len(document["configs"]) == 2 * 2 * 2
    assert {"jax", "flax", "optax", "devices"} <= set(document["environment"])
    config = document["configs"][0]
    assert config["curves"]["step"] == [0, 10, 20]
    assert config["final"]["test_accuracy"] == config["curves"]["test_accuracy"][-1]
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 8 and rows[0]["loss"] == "ce"
    summary = (tmp_path / "summary.md").read_text()
    assert "## Best learning rate per loss" in summary and "![accuracy_vs_lr.png]" in summary


BAD_FLAGS = [
    (
        ["--loss=hinge"],
        "--loss: unknown loss 'hinge'; expected one of ['ce', 'mse', 'square'] or 'all'",
    ),
    (["--dataset=cifar"], "--dataset: unknown dataset 'cifar'"),
    (["--model=vit"], "--model: unknown model 'vit'"),
    (["--optimizer=lbfgs"], "--optimizer: unknown optimizer 'lbfgs'"),
    (["--activation=swish"], "--activation: unknown activation 'swish'"),
    (["--lrs=0.1,-1"], "--lrs: learning rate must be a finite number > 0, got -1.0"),
    (["--lrs=0"], "--lrs: learning rate must be a finite number > 0, got 0.0"),
    (["--lrs=fast"], "--lrs: 'fast' is not a number"),
    (["--lrs=nan"], "--lrs: must be finite"),
    (["--steps=0"], "--steps: must be an integer >= 1, got 0"),
    (["--steps=1.5"], "--steps: '1.5' is not an integer"),
    (["--eval_every=-1"], "--eval_every: must be an integer >= 1"),
    (["--batch_size=0"], "--batch_size: must be an integer >= 1"),
    (
        ["--batch_size=5000"],
        "--batch_size: 5000 is larger than the training set of digits (1437 examples)",
    ),
    (["--seeds=0"], "--seeds: must be >= 1"),
    (["--label_noise=1.5"], "--label_noise: must be a fraction in [0, 1)"),
    (["--init_scale=-2"], "--init_scale: must be a finite number > 0"),
    (["--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_FLAGS)
def test_cli_bad_flags_exit_2_with_one_line(tmp_path, args, message):
    proc = _cli("--num_lrs=1", *args, f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "libtpu" not in line]
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_malformed_npz(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.ones((4, 2)), y_train=np.array([0, 1, 0, 1]))
    proc = _cli(f"--dataset=npz:{bad}", f"--workdir={tmp_path / 'w'}", "--batch_size=2")
    assert proc.returncode == 2
    assert "missing arrays ['x_test', 'y_test']" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = _cli(f"--workdir={blocker / 'sub'}", *TINY)
    assert proc.returncode == 2
    assert "--workdir: cannot write to" in proc.stderr and "Traceback" not in proc.stderr


def test_help_explains_every_flag():
    proc = _cli("--helpshort")
    for flag in (
        "loss",
        "dataset",
        "model",
        "hidden",
        "activation",
        "optimizer",
        "lrs",
        "lr_min",
        "lr_max",
        "num_lrs",
        "seeds",
        "steps",
        "batch_size",
        "eval_every",
        "init_scale",
        "label_noise",
        "workdir",
    ):
        assert f"--{flag}" in proc.stdout, flag


def test_same_command_twice_gives_identical_results(tmp_path):
    spec = sweep.SweepSpec(
        losses=("ce", "square"),
        learning_rates=(0.05, 0.5),
        seeds=(0, 1),
        hidden=(8,),
        steps=20,
        eval_every=10,
        batch_size=32,
    )
    sweep.run_sweep(spec, tmp_path / "a")
    sweep.run_sweep(spec, tmp_path / "b")
    first, second = (json.loads((tmp_path / d / "results.json").read_text()) for d in "ab")
    assert first.pop("timing") != second.pop("timing")  # timing lives in its own section
    assert first == second
