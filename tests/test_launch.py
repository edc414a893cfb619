"""Launch scripts: syntax, dry runs, and a valid notebook whose Python runs."""

import ast
import pathlib
import re
import subprocess
import sys

import nbformat
import pytest

LAUNCH = pathlib.Path(__file__).resolve().parent.parent / "launch"


@pytest.mark.parametrize("script", ["gpu.sh", "tpu_vm.sh"])
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(LAUNCH / script)], check=True)


def test_tpu_vm_dry_run_prints_the_gcloud_commands():
    proc = subprocess.run(
        [
            "bash",
            str(LAUNCH / "tpu_vm.sh"),
            "--dry-run",
            "--name=t1",
            "--zone=us-west4-a",
            "--project=p",
            "--delete",
            "--",
            "--loss=all",
            "--seeds=4",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    assert lines[0].startswith(
        "+ gcloud compute tpus tpu-vm create t1 --zone=us-west4-a --accelerator-type=v5litepod-8"
    )
    assert "--project=p" in lines[0]
    ssh = next(line for line in lines if " ssh " in line)
    assert (
        "--worker=all" in ssh
        and "experiments.sweep --distributed --workdir=runs/tpu --loss=all --seeds=4" in ssh
    )
    assert "'jax[tpu]'" in ssh
    assert any(
        " scp --recurse t1:~/softcls-jax/runs/tpu runs/tpu-t1" in line and "--worker=0" in line
        for line in lines
    )
    assert lines[-1].startswith("+ gcloud compute tpus tpu-vm delete t1")


def test_tpu_vm_needs_name_and_zone():
    proc = subprocess.run(
        ["bash", str(LAUNCH / "tpu_vm.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "--name and --zone are required" in proc.stderr


def test_gpu_dry_run():
    proc = subprocess.run(
        ["bash", str(LAUNCH / "gpu.sh"), "--dry-run", "--loss=ce"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "jax[cuda12]" in proc.stdout
    assert "-m experiments.sweep --workdir=runs/gpu --loss=ce" in proc.stdout


def test_colab_notebook_is_valid_and_its_python_compiles():
    nb = nbformat.read(LAUNCH / "colab.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert any("experiments.sweep" in c for c in code) and any("summary.md" in c for c in code)
    for source in code:  # shell lines (!cmd) are IPython syntax: compile the Python around them
        ast.parse(re.sub(r"^!.*$", "pass", source, flags=re.MULTILINE))


def test_colab_display_cell_runs_on_a_real_sweep(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            "--loss=ce",
            "--num_lrs=2",
            "--seeds=1",
            "--steps=10",
            "--eval_every=5",
            "--hidden=8",
            f"--workdir={tmp_path}",
        ],
        check=True,
        capture_output=True,
    )
    nb = nbformat.read(LAUNCH / "colab.ipynb", as_version=4)
    cell = next(c.source for c in nb.cells if c.cell_type == "code" and "summary.md" in c.source)
    shown = []
    stubs = {
        "WORKDIR": str(tmp_path),
        "display": shown.append,
        "Markdown": str,
        "Image": lambda filename: pathlib.Path(filename).read_bytes(),
    }
    # IPython not needed
    source = cell.replace("from IPython.display import Image, Markdown, display\n", "")
    exec(source, stubs)
    assert len(shown) == 3 and "| learning rate |" in shown[0] and shown[1][:4] == b"\x89PNG"
