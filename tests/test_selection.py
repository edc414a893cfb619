"""Honest model selection: chosen on a validation split, never on test; standardised inputs."""

import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from softcls_jax import data, results, sweep


def _record(lr, seed, val, test, val_nll=0.5):
    final = {
        "val_accuracy": val,
        "val_nll": val_nll,
        "test_accuracy": test,
        "test_nll": 0.3,
        "test_ece": 0.01,
    }
    return {"loss": "ce", "learning_rate": lr, "seed": seed, "diverged": False, "final": final}


def test_selection_reads_validation_never_test():
    # lr 0.1 is best on validation, lr 1.0 on test: validation decides.
    records = [_record(0.1, s, val=0.9, test=0.80) for s in (0, 1)]
    records += [_record(1.0, s, val=0.8, test=0.99) for s in (0, 1)]
    chosen = results.selection(records)
    assert chosen["on"] == "val" and "validation" in chosen["rule"]
    assert [b["learning_rate"] for b in chosen["per_loss"]] == [0.1]
    assert chosen["per_loss"][0]["test_accuracy"] == pytest.approx(0.80)  # reported, not used
    assert results.best_per_loss(records, on="test")[0]["learning_rate"] == 1.0


def test_selection_ties_go_to_lower_nll_then_smaller_rate():
    records = [
        _record(0.3, 0, 0.9, 0.5, val_nll=0.4),
        _record(0.1, 0, 0.9, 0.5, val_nll=0.4),
        _record(1.0, 0, 0.9, 0.5, val_nll=0.2),
    ]
    assert results.best_per_loss(records)[0]["learning_rate"] == 1.0
    records[2]["final"]["val_nll"] = 0.4
    assert results.best_per_loss(records)[0]["learning_rate"] == 0.1


def test_default_sweep_selects_on_validation(tmp_path):
    spec = sweep.SweepSpec(
        losses=("ce", "mse"),
        learning_rates=(0.03, 0.3),
        seeds=(0, 1),
        hidden=(8,),
        steps=40,
        eval_every=20,
        batch_size=32,
    )
    document = sweep.run_sweep(spec, tmp_path, tensorboard=False)
    chosen = document["selection"]
    assert chosen["on"] == "val" and len(chosen["per_loss"]) == 2
    for b in chosen["per_loss"]:
        runs = [c for c in document["configs"] if c["loss"] == b["loss"]]
        by_lr = {
            lr: np.mean([c["final"]["val_accuracy"] for c in runs if c["learning_rate"] == lr])
            for lr in (0.03, 0.3)
        }
        assert b["learning_rate"] == max(by_lr, key=by_lr.get)
    curves = document["configs"][0]["curves"]
    assert len(curves["val_accuracy"]) == len(curves["step"]) and None not in curves["val_nll"]
    summary = (tmp_path / "summary.md").read_text()
    assert "Chosen on validation" in summary and "Selected on the TEST split" not in summary


def _cli(*args):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            "--num_lrs=2",
            "--seeds=1",
            "--steps=20",
            "--eval_every=10",
            "--hidden=8",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_selecting_on_test_needs_saying_so_and_is_flagged(tmp_path):
    refused = _cli("--val_fraction=0", f"--workdir={tmp_path / 'a'}")
    assert (
        refused.returncode == 2
        and "--val_fraction: val_fraction=0 leaves nothing" in refused.stderr
    )
    assert not (tmp_path / "a").exists()
    flagged = _cli("--val_fraction=0", "--select_on=test", f"--workdir={tmp_path / 'b'}")
    assert flagged.returncode == 0, flagged.stderr
    assert "**Selected on the TEST split**" in (tmp_path / "b" / "summary.md").read_text()
    assert json.loads((tmp_path / "b" / "results.json").read_text())["selection"]["on"] == "test"
    assert "TEST (optimistic)" in flagged.stdout


def test_large_raw_features_train_like_standardised_logistic_regression(tmp_path):
    x, y = make_classification(
        n_samples=900, n_features=12, n_informative=6, n_classes=3, random_state=0
    )
    x = 300.0 * x + 1000.0  # features in the hundreds to thousands, as raw tabular data often is
    path = tmp_path / "tabular.npz"
    np.savez(path, x_train=x[:700], y_train=y[:700], x_test=x[700:], y_test=y[700:])
    scaler = StandardScaler().fit(x[:700])
    reference = LogisticRegression(max_iter=5000).fit(scaler.transform(x[:700]), y[:700])
    reference_acc = reference.score(scaler.transform(x[700:]), y[700:])
    spec = sweep.SweepSpec(
        dataset=f"npz:{path}", losses=("ce",), seeds=(0,), steps=600, eval_every=300, batch_size=64
    )
    document = sweep.run_sweep(spec, tmp_path / "w", tensorboard=False)
    chosen = document["selection"]["per_loss"][0]
    assert chosen["test_accuracy"] >= reference_acc - 0.03, (chosen, reference_acc)
    stalled = sum(c["final"]["test_accuracy"] < 0.5 for c in document["configs"])
    assert stalled <= 2  # not the majority class at most rates, as unscaled inputs gave


def test_standardized_uses_the_training_split_only():
    d = data.with_validation(data.load("blobs"), 0.2)
    s = data.standardized(d)
    np.testing.assert_allclose(s.x_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(s.x_train.std(0), 1, atol=1e-4)
    mean, std = d.x_train.mean(0), d.x_train.std(0)
    np.testing.assert_allclose(s.x_test, (d.x_test - mean) / std, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(s.x_val, (d.x_val - mean) / std, rtol=1e-4, atol=1e-4)
