"""Architecture axes: one compiled program per width/depth, one results document."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from softcls_jax import checkpoint, data, engine, models, plan, results, runner
from tests.test_reliability import _results_without_timing

SWEEP = [sys.executable, "-m", "experiments.sweep"]
ARGS = ["--loss=ce,mse", "--lrs=0.1,0.5", "--seeds=2", "--steps=120", "--eval_every=20"]
ARGS += ["--axis=width=8,16", "--axis=depth=1,2"]


@pytest.fixture(scope="module")
def digits():
    return data.standardized(data.with_validation(data.load("digits"), 0.2))


def mlp(width: int, depth: int = 1):
    return models.make_model("mlp", 64, 10, hidden=(width,) * depth)


def test_a_width_axis_equals_separate_grids_of_each_width(digits):
    settings = engine.TrainSettings("momentum", 40, 64, 20)
    axes = {"width": (8, 16), "weight_decay": (0.0, 1e-3)}
    layout = engine.Layout(("ce", "mse"), (0.05, 0.2), (0, 1), axes)
    whole = runner.run(mlp, digits, layout, settings)
    doc = whole.document
    assert doc["axes"] == ["learning_rate", "width", "weight_decay"]
    assert doc["timing"]["compiled_chunks"] == 2 and doc["timing"]["architectures"] == 2
    assert [c["width"] for c in doc["configs"][:8]] == [8, 8, 16, 16] * 2
    for width in (8, 16):
        alone = runner.run(
            mlp(width),
            digits,
            engine.Layout(("ce", "mse"), (0.05, 0.2), (0, 1), {"weight_decay": (0.0, 1e-3)}),
            settings,
        ).document["configs"]
        mine = [c for c in doc["configs"] if c["width"] == width]
        assert len(mine) == len(alone)
        for a, b in zip(mine, alone, strict=True):
            assert {k: a[k] for k in b if k != "final" and k != "curves"} == {
                k: b[k] for k in b if k != "final" and k != "curves"
            }
            for name in a["final"]:
                np.testing.assert_allclose(a["final"][name], b["final"][name], rtol=1e-5)
    # selection runs across every axis, the architecture included
    np.testing.assert_equal(doc["selection"], results.selection(doc["configs"], "val"))
    best = {c["loss"]: c for c in doc["selection"]["per_loss"]}
    for loss, chosen in whole.selected.items():
        assert all(t.config["width"] == best[loss]["width"] for t in chosen)
        assert [t.config["seed"] for t in chosen] == [0, 1]


def test_architecture_axes_need_a_factory_and_a_factory_needs_them(digits):
    settings = engine.TrainSettings("sgd", 4, 32, 4)
    with pytest.raises(ValueError, match="width and depth axes need a model factory"):
        runner.run(mlp(8), digits, engine.Layout(("ce",), (0.1,), (0,), {"width": (8,)}), settings)
    with pytest.raises(ValueError, match="needs width or depth axes"):
        runner.run(mlp, digits, engine.Layout(("ce",), (0.1,), (0,)), settings)
    with pytest.raises(ValueError, match=r"does not take the architecture axes \['depth'\]"):
        runner.run(
            lambda width: mlp(width),
            digits,
            engine.Layout(("ce",), (0.1,), (0,), {"depth": (1, 2)}),
            settings,
        )
    with pytest.raises(ValueError, match=r"width must be an integer >= 1, got 2.5"):
        engine.Layout(("ce",), (0.1,), (0,), {"width": (2.5,)})
    with pytest.raises(
        ValueError, match=r"\['width'\] change the model's shapes: one program each"
    ):
        engine.Trainer(
            mlp(8), digits, engine.Layout(("ce",), (0.1,), (0,), {"width": (8,)}), settings
        )


def test_plan_checkpoints_one_file_per_architecture(tmp_path):
    layout = engine.Layout(("ce",), (0.1,), (0,), {"width": (8, 16)})
    p = plan.Plan.of(layout)
    assert [part.architecture for part in p.parts] == [(("width", 8.0),), (("width", 16.0),)]
    assert p.checkpoint(tmp_path / "checkpoint", p.parts[1]).name == "checkpoint.arch1"
    single = plan.Plan.of(engine.Layout(("ce",), (0.1,), (0,)))
    assert not single.architectures and single.checkpoint("c", single.parts[0]).name == "c"


def test_kill_9_in_the_second_architecture_then_resume_equals_uninterrupted(tmp_path):
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    proc = subprocess.Popen(
        [*SWEEP, *ARGS, f"--workdir={interrupted}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("[") and int(line[1:].split("/")[0]) >= 160:  # inside architecture 2
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert checkpoint.committed(interrupted / "checkpoint.arch1")
    assert not (interrupted / "results.json").exists()
    for workdir in (interrupted, reference):
        done = subprocess.run(
            [*SWEEP, *ARGS, f"--workdir={workdir}"], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
    assert _results_without_timing(interrupted) == _results_without_timing(reference)
    assert json.loads((reference / "results.json").read_text())["timing"]["compiled_chunks"] == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model=linear", "--axis=width=8,16"], "--axis: width is an axis of the models"),
        (["--axis=width=0"], "width must be an integer >= 1, got 0.0"),
        (["--model=resnet", "--dataset=digits", "--axis=depth=8"], "--model: resnet on digits"),
        (
            ["--width=64"],
            "--width: --width sets resnet's width; the mlp's hidden layers are --hidden",
        ),
        (
            ["--hidden=32,16", "--axis=depth=1,2"],
            "a depth axis of the mlp repeats one hidden width",
        ),
    ],
)
def test_cli_bad_architecture_axes_exit_2(tmp_path, args, message):
    done = subprocess.run(
        [*SWEEP, f"--workdir={tmp_path}", "--num_lrs=1", *args], capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
