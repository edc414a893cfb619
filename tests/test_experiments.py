"""Smoke tests: every experiment runs end to end on a tiny setting and writes its PNG and JSON."""

import json
import subprocess
import sys

import pytest


def _run(module, *args):
    return subprocess.run(
        [sys.executable, "-m", f"experiments.{module}", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


SMOKE = {
    "error_surface": (["--points=21"], ["error_surface.png", "error_surface.json"]),
    "gradients": (["--points=30", "--num_classes=10"], ["gradients.png", "gradients.json"]),
    "confident_start": (
        ["--epochs=1", "--seeds=1", "--lrs=0.1,1.0", "--models=linear"],
        ["confident_start.png", "confident_start.json"],
    ),
    "calibration": (
        ["--steps=50", "--seeds=1", "--dataset=digits"],
        ["reliability.png", "calibration.json"],
    ),
    "label_noise": (
        ["--steps=20", "--seeds=1", "--fractions=0,0.5"],
        ["label_noise.png", "label_noise.json"],
    ),
    "square_loss_classes": (
        ["--classes=10", "--steps=20", "--seeds=1", "--lrs=0.1"],
        ["square_loss_classes.png", "square_loss_classes.json"],
    ),
}


@pytest.mark.parametrize("module", sorted(SMOKE))
def test_experiment_smoke(module, tmp_path):
    args, outputs = SMOKE[module]
    proc = _run(module, *args, f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in outputs:
        assert (tmp_path / name).stat().st_size > 0, name
        if name.endswith(".json"):
            json.loads((tmp_path / name).read_text())


def test_error_surface_numbers(tmp_path):
    _run("error_surface", "--points=21", f"--workdir={tmp_path}")
    corners = json.loads((tmp_path / "error_surface.json").read_text())["corners"]
    wrong = corners["wrong_confident (z1=-r, z2=+r)"]
    assert wrong["ce_grad_norm"] == pytest.approx(2**0.5, rel=1e-4)  # C13: CE is steep there
    assert wrong["mse_grad_norm"] < 1e-6  # MSE is flat


def test_calibration_keeps_accuracy_and_reports_temperature(tmp_path):
    _run("calibration", "--steps=200", "--seeds=1", "--dataset=digits", f"--workdir={tmp_path}")
    summary = json.loads((tmp_path / "calibration.json").read_text())["summary"]
    for row in summary:
        assert row["accuracy_before"] == row["accuracy_after"]
        assert row["temperature"] > 0
    square = next(r for r in summary if r["loss"] == "square")
    # softmax of square-loss logits is under-confident
    assert square["ece_after"] < square["ece_before"]


def test_report_fast_subset(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.report",
            "--fast",
            "--only=error_surface,gradients",
            f"--workdir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (tmp_path / "report.md").read_text()
    assert "![error surface](error_surface/error_surface.png)" in report
    assert "## 2. Gradient against confidence (C11)" in report
    assert (
        "Settings: --fast (smaller runs, rougher numbers) for error_surface, gradients." in report
    )


def test_report_publish_copies_only_the_report_and_its_figures(tmp_path):
    run, docs = tmp_path / "run", tmp_path / "docs"
    proc = _run(
        "report",
        "--fast",
        "--only=error_surface,gradients",
        f"--workdir={run}",
        f"--publish={docs}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    published = sorted(str(p.relative_to(docs)) for p in docs.rglob("*") if p.is_file())
    figures = ["error_surface/error_surface.png", "gradients/gradients.png"]
    assert published == sorted(["report.md", *figures])  # no JSON, stdout log or checkpoint
    report = (docs / "report.md").read_text()
    assert report == (run / "report.md").read_text()
    for figure in figures:  # the links resolve in the published copy
        assert f"]({figure})" in report
        assert (docs / figure).read_bytes() == (run / figure).read_bytes()
    assert (run / "gradients" / "stdout.txt").exists()  # run output stays in the workdir


@pytest.mark.parametrize(
    ("module", "args", "message"),
    [
        ("error_surface", ["--points=1"], "--points: must be >= 3"),
        ("gradients", ["--num_classes=1"], "--num_classes: must be >= 2"),
        ("confident_start", ["--models=resnet"], "--models: unknown model 'resnet'"),
        ("confident_start", ["--epochs=0"], "--epochs: must be >= 1"),
        ("square_loss_classes", ["--classes=1"], "--classes: each must be >= 2"),
        ("square_loss_classes", ["--k=2"], "--k: --k and --M must include 1"),
        ("label_noise", ["--fractions=0,1.2"], "--fractions: each must be in [0, 1)"),
        ("mnist1d_baselines", ["--models=rnn"], "--models: unknown model 'rnn'"),
        ("mnist1d_baselines", ["--inputs=flipped"], "--inputs: unknown inputs 'flipped'"),
        ("mnist_cnn", ["--widths=0"], "--widths: each must be > 0"),
        ("mnist_cnn", ["--depths=0"], "--depths: each must be >= 1"),
        ("mnist_cnn", ["--study_seeds=0"], "--study_seeds: must be >= 1"),
        ("mnist_cnn", ["--resnet_depth=10"], "--resnet_depth: resnet depth must be 6n + 2"),
        ("mnist_cnn", ["--resnet_lrs=0"], "--resnet_lrs: "),
        ("report", ["--only=nope"], "--only: unknown experiments ['nope']"),
        ("report", ["--publish=/proc/nope"], "--publish: cannot write to /proc/nope"),
    ],
)
def test_experiment_bad_flags(module, args, message, tmp_path):
    proc = _run(module, *args, f"--workdir={tmp_path}")
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_profile_step_attributes_the_step_time_to_ops(tmp_path):
    proc = _run("profile_step", "--steps=5", "--top=5", f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    rows = (tmp_path / "profile.csv").read_text().splitlines()
    assert rows[0] == "op,us_per_step,shape,from" and len(rows) > 10
    assert any("dot" in row or "ynn" in row for row in rows[1:6])  # the matmuls lead
    assert "µs per step" in proc.stdout


def test_report_renders_the_square_loss_section(tmp_path):
    # The report imports only flag-free formatting: a section that imported its experiment's module
    # would define that module's flags a second time.
    args = [
        sys.executable,
        "-m",
        "experiments.report",
        "--fast",
        "--only=square_loss_classes",
        f"--workdir={tmp_path}",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (tmp_path / "report.md").read_text()
    assert "Square loss as the number of classes grows" in report and "| 100 | ce |" in report


def test_report_renders_the_mnist_sections(tmp_path):
    # Both experiments at tiny settings, then the report rebuilt from their results (--render_only).
    for module, args in (
        ("mnist1d_baselines", ["--steps=20", "--seeds=1", "--models=linear,gru", "--losses=ce"]),
        (
            "mnist_cnn",
            [
                "--steps=10",
                "--seeds=2",
                "--lrs=0.001",
                "--losses=ce,square",
                "--widths=1",
                "--depths=2",
                "--study_seeds=1",
                "--resnet_steps=4",
                "--resnet_lrs=0.001",
                "--resnet_seeds=1",
                "--resnet_width=2",
            ],
        ),
    ):
        proc = _run(module, *args, f"--workdir={tmp_path / module}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        for suffix in (".png", ".json"):
            assert (tmp_path / module / f"{module}{suffix}").stat().st_size > 0
    mc = json.loads((tmp_path / "mnist_cnn" / "mnist_cnn.json").read_text())
    assert mc["selection"]["on"] == "val" and {b["loss"] for b in mc["losses"]} == {"ce", "square"}
    for row in mc["calibration"]:
        assert row["accuracy_before"] == row["accuracy_after"]  # T keeps the argmax
    (base,) = mc["architectures"]  # LeNet-5 with CE: reused from the loss grid, its seed 0 only
    assert (base["width"], base["depth"], base["models"]) == (1.0, 2, 1)
    ce = next(r for r in mc["calibration_models"] if r["loss"] == "ce" and r["seed"] == 0)
    assert base["ece_before"] == ce["ece_before"]
    proc = _run("report", "--render_only", f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (tmp_path / "report.md").read_text()
    assert "| original | gru | ce |" in report and "| shuffled | linear | ce |" in report
    assert "8. MNIST with the 2-D CNN" in report and "Square loss − CE" in report
    resnet = mc["resnet"]
    assert resnet["settings"]["augment"] == "crop" and resnet["selection"]["on"] == "val"
    assert {b["loss"] for b in resnet["losses"]} == {"ce", "square"}
    assert "| ResNet: loss |" in report and "ResNet-8 with BatchNorm" in report
    assert "![mnist cnn](mnist_cnn/mnist_cnn.png)" in report
