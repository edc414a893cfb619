import subprocess
import sys

import jax

from experiments import verify
from softcls_jax import gradients


def test_small_grid_passes():
    rows = verify.summarise(verify.run_checks([3], [4], ["float32", "float64"]))
    assert len(rows) == 2 * len(verify.CLAIMS)
    assert all(r["passed"] for r in rows)
    assert max(r["max_abs"] for r in rows if r["dtype"] == "float64") < 1e-12


def test_a_wrong_closed_form_is_caught(monkeypatch):
    # The verifier must be able to fail: a closed form that forgets to subtract y is flagged.
    monkeypatch.setattr(gradients, "ce_grad", lambda o, y: jax.nn.softmax(o))
    jax.clear_caches()  # or jit would reuse the trace of the correct ce_grad from another test
    rows = verify.summarise(verify.run_checks([3], [4], ["float64"]))
    failed = {r["check"] for r in rows if not r["passed"]}
    assert "ce_grad = softmax(o) - y" in failed


def test_cli_rejects_bad_flags():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.verify",
            "--dtypes=float16",
            "--batch_sizes=1",
            "--num_classes=2",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "unknown dtype 'float16'" in proc.stderr
    assert "Traceback" not in proc.stderr
