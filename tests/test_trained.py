"""Trained models back: the selected configs as modules in eval mode, from run_grid and a workdir."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from softcls_jax import data, models, run_grid, sweep, trained


class BNDropNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, 32, use_bias=False, rngs=rngs)
        self.norm = nnx.BatchNorm(32, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(jax.nn.relu(self.norm(self.hidden(x)))))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("grid")
    digits = data.standardized(data.load("digits"))
    model = models.from_nnx(BNDropNet, name="bn_drop")
    result = run_grid(
        model,
        digits,
        losses=("ce", "mse"),
        learning_rates=(0.01, 0.1),
        seeds=(0, 1),
        optimizer="momentum",
        steps=60,
        batch_size=64,
        eval_every=30,
        workdir=workdir,
        keep_all=True,
    )
    return result, model, digits, workdir


def _record(result, config):
    return next(r for r in result["configs"] if all(r[k] == v for k, v in config.items()))


def test_selected_modules_reproduce_the_grids_test_metrics(grid):
    result, _, digits, _ = grid
    x = jnp.asarray(digits.x_test)
    for choice in result["selection"]["per_loss"]:
        chosen = result.selected[choice["loss"]]
        assert [t.config["seed"] for t in chosen] == [0, 1]
        for t in chosen:
            assert t.config["learning_rate"] == choice["learning_rate"]
            module = t.module()
            assert module.drop.deterministic and module.norm.use_running_average  # eval mode
            logits = np.asarray(module(x))
            np.testing.assert_allclose(logits, np.asarray(t.apply(x)), rtol=1e-5, atol=1e-6)
            acc = np.mean(np.argmax(logits, -1) == digits.y_test)
            want = _record(result, t.config)["final"]["test_accuracy"]
            assert abs(acc - want) <= 1 / len(digits.y_test) + 1e-6
    leaves = jax.tree.leaves(result.params)
    assert leaves[0].shape[:2] == (2, 4) and result.model_state["norm"]["mean"].shape == (2, 4, 32)
    assert json.loads(json.dumps(result))["configs"]  # still a plain JSON document


def test_a_selected_config_restores_from_the_workdir(grid):
    result, model, digits, workdir = grid
    x = jnp.asarray(digits.x_test)
    for loss in ("ce", "mse"):
        restored = trained.load(workdir, model, loss=loss, seed=1)
        original = result.selected[loss][1]
        assert restored.config == original.config
        np.testing.assert_array_equal(restored.module()(x), original.module()(x))
    with pytest.raises(ValueError, match="no trained config of loss=square"):
        trained.load(workdir, model, loss="square")
    other = models.from_nnx(lambda rngs: nnx.Linear(64, 10, rngs=rngs), name="other")
    with pytest.raises(ValueError, match="does not fit model other"):
        trained.load(workdir, other, loss="ce")


def test_builtin_models_come_back_too():
    digits = data.load("digits")
    model = models.make_model("mlp", 64, 10, hidden=(16,))
    result = run_grid(model, digits, learning_rates=(0.1,), steps=40, eval_every=40)
    (best,) = result.selected["ce"]
    x = jnp.asarray(digits.x_test)
    np.testing.assert_allclose(best.module()(x), best.apply(x), rtol=1e-6)
    assert result.params is None


def test_a_cli_sweeps_selected_config_restores_with_one_call(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            f"--workdir={tmp_path}",
            "--loss=ce,mse",
            "--lrs=0.1,0.5",
            "--seeds=1",
            "--steps=40",
            "--eval_every=20",
            "--hidden=16",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "results.json").read_text())
    best = sweep.load_trained(tmp_path, loss="mse")
    spec = sweep.SweepSpec(
        losses=("ce", "mse"), learning_rates=(0.1, 0.5), seeds=(0,), steps=40, eval_every=20
    )
    dataset = sweep.load_dataset(spec)
    logits = np.asarray(best.module()(jnp.asarray(dataset.x_test)))
    acc = np.mean(np.argmax(logits, -1) == dataset.y_test)
    record = _record(doc, best.config)
    assert abs(acc - record["final"]["test_accuracy"]) <= 1 / len(dataset.y_test) + 1e-6
    chosen = next(c for c in doc["selection"]["per_loss"] if c["loss"] == "mse")
    assert best.config["learning_rate"] == chosen["learning_rate"]


def test_a_saved_config_of_another_architecture_is_refused(tmp_path):
    digits = data.load("digits")
    small = models.make_model("mlp", 64, 10, hidden=(8,))
    run_grid(small, digits, learning_rates=(0.1,), steps=4, eval_every=4, workdir=tmp_path)
    deeper = models.make_model("mlp", 64, 10, hidden=(8, 8))
    with pytest.raises(ValueError, match="the saved variables do not fit model mlp"):
        trained.load(tmp_path, deeper)
