"""Grids in memory blocks: the cut, equality with one block, one compilation, resume (issue 26)."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from softcls_jax import data, memory, models, runner, sweep
from softcls_jax.engine import Layout, Trainer, TrainSettings

SWEEP = [sys.executable, "-u", "-m", "experiments.sweep"]


def _configs(layout):
    return [c.as_dict() for c in layout.configs()]


@pytest.mark.parametrize("per_block", [1000, 24, 16, 8, 7, 5, 2])
def test_blocks_cover_the_grid_once_with_one_shape(per_block):
    layout = Layout(("ce", "mse"), (0.01, 0.1, 0.3, 1.0), (0, 1, 2), {"weight_decay": (0.0, 1e-3)})
    blocks = layout.blocks(per_block)
    covered = [c for b in blocks for c in _configs(b)]
    assert sorted(map(str, covered)) == sorted(map(str, _configs(layout)))
    assert len(covered) == len(set(map(str, covered)))
    assert all(b.size <= per_block for b in blocks)
    shapes = {(b.padded_shape, b.arranged(1, 64).group_size) for b in blocks}
    assert len(shapes) == 1  # every block runs through the same program
    if per_block < 16:  # one seed's 16 configs do not fit: its combinations are split
        assert all(len(b.seeds) == 1 for b in blocks)


def test_tree_bytes_counts_typed_keys_by_their_key_data():
    keys = jax.random.split(jax.random.key(0), 6)  # dtype key<fry>: numpy cannot interpret it
    tree = {"keys": keys, "w": jax.ShapeDtypeStruct((3, 5), np.float32), "name": "not an array"}
    assert memory.tree_bytes(tree) == jax.random.key_data(keys).nbytes + 3 * 5 * 4


def test_blocks_split_seeds_evenly_and_refuse_too_small_a_block():
    layout = Layout(("ce", "mse", "square"), (0.1, 1.0), (0, 1, 2, 3))
    assert [b.seeds for b in layout.blocks(12)] == [(0, 1), (2, 3)]
    assert [b.seeds for b in layout.blocks(18)] == [(0, 1), (2, 3)]  # 3 seeds would not divide 4
    with pytest.raises(ValueError, match="at least one config of each of the 3 losses"):
        layout.blocks(2)


GRID = Layout(("ce", "mse"), (0.01, 0.03, 0.1), (0,), {"weight_decay": (0.0, 1e-3)})  # 12 configs
SETTINGS = TrainSettings("sgd", steps=200, eval_every=100, batch_size=64)


@pytest.fixture(scope="module")
def digits_mlp():
    dataset = data.with_validation(data.load("digits"), 0.1)
    return models.make_model("mlp", dataset.num_features, dataset.num_classes), dataset


def _final(document):
    keys = ("loss", "learning_rate", "weight_decay", "seed")
    return {tuple(r[k] for k in keys): r["final"] for r in document["configs"]}


def _assert_close(a, b, rtol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        for metric, value in a[key].items():
            np.testing.assert_allclose(
                b[key][metric], value, rtol=rtol, atol=1e-5, err_msg=str((key, metric))
            )


def _settings(document):
    return [
        (c["loss"], c["learning_rate"], c["weight_decay"])
        for c in document["selection"]["per_loss"]
    ]


@pytest.fixture(scope="module")
def one_block(digits_mlp):
    return runner.run(*digits_mlp, GRID, SETTINGS)


def test_three_blocks_by_hand_equal_one_block_and_compile_once(digits_mlp, one_block):
    lines = []
    blocked = runner.run(*digits_mlp, GRID, SETTINGS, max_configs_per_block=4, on_plan=lines.append)
    timing = blocked.document["timing"]
    assert (timing["blocks"], timing["configs_per_block"]) == (3, 4)  # one seed, split
    assert timing["block_reason"] == "max_configs_per_block=4"
    assert timing["compiled_chunks"] == 1 and "probe_s" not in timing  # no probe of the whole grid
    assert "12 configs in 3 blocks of 4" in lines[0]
    _assert_close(_final(one_block.document), _final(blocked.document))
    assert _settings(one_block.document) == _settings(blocked.document)
    assert blocked.document["axes"] == one_block.document["axes"]
    chosen = {k: [t.config for t in v] for k, v in blocked.selected.items()}
    assert chosen == {k: [t.config for t in v] for k, v in one_block.selected.items()}
    again = runner.run(*digits_mlp, GRID, SETTINGS, max_configs_per_block=4)
    same = json.dumps(again.document["configs"]) == json.dumps(blocked.document["configs"])
    assert same  # bitwise at one block size (NaN curves compare equal as text)


def test_a_small_memory_budget_cuts_the_grid_with_a_probe(digits_mlp, one_block):
    need = one_block.document["timing"]["memory_need_bytes"]
    assert need > 0 and one_block.document["timing"]["blocks"] == 1
    blocked = runner.run(*digits_mlp, GRID, SETTINGS, memory_budget=0.6 * need / memory.GB)
    timing = blocked.document["timing"]
    assert timing["blocks"] > 1 and timing["block_reason"].startswith("memory: the grid needs")
    assert timing["probe_s"] > 0 and timing["compiled_chunks"] == 1
    _assert_close(_final(one_block.document), _final(blocked.document))


def test_a_block_of_blocks_keeps_its_trained_models(digits_mlp, one_block, tmp_path):
    blocked = runner.run(
        *digits_mlp, GRID, SETTINGS, max_configs_per_block=4, checkpoint_path=tmp_path / "c"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "c.block0",
        "c.block1",
        "c.block2",
        "c.blocks.json",
    ]
    for loss, chosen in blocked.selected.items():
        reference = {t.config["seed"]: t for t in one_block.selected[loss]}
        assert [t.config for t in chosen] == [t.config for t in one_block.selected[loss]]
        for t in chosen:  # read back from the block checkpoints
            ref = reference[t.config["seed"]]
            for a, b in zip(jax.tree.leaves(t.params), jax.tree.leaves(ref.params), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_budget_below_one_config_is_a_clear_error(digits_mlp):
    with pytest.raises(memory.MemoryBudgetError, match=r"needs .* per device .* budget is"):
        runner.run(*digits_mlp, GRID, SETTINGS, memory_budget=1e-4)


@pytest.mark.parametrize("model", ["mlp", "cnn2d"])
def test_cli_budget_below_one_config_exits_2_in_one_line(tmp_path, model):
    dataset = "digits" if model == "mlp" else "mnist5k"
    out = subprocess.run(
        [
            *SWEEP,
            f"--model={model}",
            f"--dataset={dataset}",
            "--num_lrs=2",
            "--seeds=1",
            "--steps=10",
            "--memory_budget=0.0001",
            f"--workdir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 2, out.stderr
    errors = [x for x in out.stderr.splitlines() if x.strip() and "Warning" not in x]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    assert (
        errors[0].startswith("error: --memory_budget: one config") and "per device" in errors[0]
    ), errors


BLOCK_ARGS = [
    "--loss=ce,mse",
    "--lrs=0.01,0.03,0.1",
    "--seeds=3",
    "--steps=300",
    "--eval_every=50",
    "--max_configs_per_block=6",
]


def test_kill_9_in_block_2_then_resume_equals_uninterrupted_run(tmp_path):
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    proc = subprocess.Popen(
        [*SWEEP, *BLOCK_ARGS, f"--workdir={interrupted}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    steps = []
    for line in proc.stdout:
        if line.startswith("["):  # "[step/total] ...": 3 blocks of 300 steps
            steps.append(int(line[1:].split("/")[0]))
            if steps[-1] >= 300 + 150:  # half-way through block 2
                os.kill(proc.pid, signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    plan = json.loads((interrupted / "checkpoint.blocks.json").read_text())
    assert plan["blocks"] == 3 and plan["configs_per_block"] == 6  # one seed per block

    resumed = subprocess.run(
        [*SWEEP, *BLOCK_ARGS, f"--workdir={interrupted}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    resumes = [x for x in resumed.stdout.splitlines() if x.startswith("resuming")]
    # block 1 finished (its checkpoint committed before block 2 began); block 2 at its last
    # committed checkpoint: 150 was printed, its save may have been in flight (asynchronous)
    first, second = [int(x.rsplit(" ", 1)[1]) for x in resumes][:2]
    assert first == 300 and second in (100, 150), resumes
    uninterrupted = subprocess.run(
        [*SWEEP, *BLOCK_ARGS, f"--workdir={reference}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    a, b = (json.loads((w / "results.json").read_text()) for w in (interrupted, reference))
    assert a["configs"] == b["configs"] and a["selection"] == b["selection"]
    assert a["timing"]["blocks"] == 3


def test_overwrite_removes_block_checkpoints_and_plan(tmp_path):
    spec = sweep.SweepSpec(
        losses=("ce",), learning_rates=(0.1, 0.3), seeds=(0,), steps=20, eval_every=10
    )
    sweep.run_sweep(spec, tmp_path, max_configs_per_block=1, tensorboard=False)
    assert (tmp_path / "checkpoint.blocks.json").exists()
    other = sweep.SweepSpec(
        losses=("ce",), learning_rates=(0.1,), seeds=(0,), steps=20, eval_every=10
    )
    sweep.run_sweep(other, tmp_path, overwrite=True, tensorboard=False)
    assert not list(tmp_path.glob("checkpoint.block*"))


def test_a_device_oom_the_estimate_missed_is_a_clear_error_and_resumes(
    digits_mlp, one_block, tmp_path, monkeypatch
):
    # A GPU/TPU reports a failed allocation as RESOURCE_EXHAUSTED; CPUs cannot, so it is simulated
    # in the second chunk, after the first chunk's checkpoint.
    calls, train_chunk = [], Trainer.train_chunk

    def failing(self, state, num_steps):
        calls.append(num_steps)
        if len(calls) == 2:
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1GB")
        return train_chunk(self, state, num_steps)

    monkeypatch.setattr(Trainer, "train_chunk", failing)
    path = tmp_path / "ckpt"
    with pytest.raises(memory.MemoryBudgetError, match=r"ran out of memory .* the last checkpoint"):
        runner.run(*digits_mlp, GRID, SETTINGS, checkpoint_path=path)
    monkeypatch.setattr(Trainer, "train_chunk", train_chunk)
    steps = []
    resumed = runner.run(
        *digits_mlp, GRID, SETTINGS, checkpoint_path=path, resume=True, on_resume=steps.append
    )
    assert steps == [100]
    _assert_close(_final(one_block.document), _final(resumed.document))
