"""A default run's stderr holds no INFO logs from JAX or absl; absl's --verbosity brings them back."""

import os
import re
import subprocess
import sys

import pytest

TINY = [
    "--loss=ce",
    "--steps=10",
    "--num_lrs=1",
    "--seeds=1",
    "--hidden=8",
    "--batch_size=32",
    "--eval_every=10",
]
ABSL_INFO = re.compile(r"^I\d{4}", re.MULTILINE)  # absl's prefix: I (INFO or DEBUG), then MMDD


def _sweep(tmp_path, *args: str) -> str:
    # Without JAX_PLATFORMS, JAX probes every backend and logs the ones it cannot start (libtpu).
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            *TINY,
            *args,
            f"--workdir={tmp_path}",
            "--overwrite",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def test_default_run_logs_no_info(tmp_path):
    stderr = _sweep(tmp_path)
    assert "libtpu" not in stderr
    assert "INFO" not in stderr
    assert not ABSL_INFO.search(stderr), stderr


@pytest.mark.parametrize("flag", [["--verbosity=1"], ["-v", "1"]])
def test_verbosity_flag_brings_jax_logs_back(flag, tmp_path):
    stderr = _sweep(tmp_path, *flag)
    assert re.search(r"^I\d{4} .*xla_bridge\.py", stderr, re.MULTILINE), stderr
