"""Benchmarks of the scale-out machinery: memory blocks and checkpoints (no flags: ``bench`` runs them).

``python -m experiments.bench --workload=blocks``: one grid (the reference MLP, 2 losses × 8 rates ×
4 seeds = 64 configs, SGD, batch 128) trained through :func:`softcls_jax.runner.run` as one block
and cut into blocks of 32, 16 and 8 configs (``max_configs_per_block``: the same compiled program,
one block after the other), interleaved, the median of the rounds. Blocking should cost per-config
throughput only its fixed per-block work (index programs, dispatch, evaluation calls).

``python -m experiments.bench --workload=checkpoint``: a grid with a state worth saving (MLP 64-1024-10,
64 configs, Adam: ~58 MB) checkpointed after every chunk of 20 steps, with no checkpoint, orbax
saving synchronously (the loop waits for every write) and asynchronously (the default: the loop
waits only for the copy off the devices and the digests): the time checkpointing held the training
loop, per save and in all.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np

from softcls_jax import checkpoint, data, engine, memory, models, runner

BLOCK_SIZES = (None, 32, 16, 8)  # None: the whole grid as one block


def _grid(hidden: int, steps: int, eval_every: int, optimizer: str, rates: int = 8):
    dataset = data.with_validation(data.load("digits"), 0.1)
    model = models.make_model("mlp", dataset.num_features, dataset.num_classes, hidden=(hidden,))
    layout = engine.Layout(("ce", "mse"), tuple(np.logspace(-3, 0, rates)), (0, 1, 2, 3))
    settings = engine.TrainSettings(optimizer, steps, 128, eval_every)
    return model, dataset, layout, settings


def blocks(steps: int, rounds: int, report: Callable[[str], None] = print) -> list[dict]:
    """Per-config throughput of one grid in one block and in blocks of 32, 16, 8 configs."""
    model, dataset, layout, settings = _grid(128, steps, steps, "sgd")
    runs: dict[int | None, list[dict]] = {size: [] for size in BLOCK_SIZES}
    for _ in range(rounds):  # interleaved: the machine's drift touches every variant alike
        for size in BLOCK_SIZES:
            timing = runner.run(
                model, dataset, layout, settings, max_configs_per_block=size
            ).document["timing"]
            train = timing["wall_s"] - timing["trace_s"] - timing["compile_s"] - timing["eval_s"]
            runs[size].append({**timing, "train_s": train})
    work = layout.size * steps * settings.batch_size
    rows = []
    for size in BLOCK_SIZES:
        median = lambda k, size=size: statistics.median(r[k] for r in runs[size])
        rows.append(
            {
                "configs_per_block": size or layout.size,
                "blocks": runs[size][0].get("blocks", 1),
                "wall_s": median("wall_s"),
                "compile_s": median("compile_s"),
                "eval_s": median("eval_s"),
                "train_s": median("train_s"),
                "train_cfg_ex_per_s": work / median("train_s"),
                "wall_cfg_ex_per_s": work / median("wall_s"),
            }
        )
    one = rows[0]
    report(
        f"\n{layout.size} configs (MLP 64-128-10 on digits, SGD, batch 128, {steps} steps), "
        f"median of {rounds} interleaved rounds:"
    )
    report(
        f"{'configs/block':>13} {'blocks':>6} {'wall s':>7} {'compile s':>9} {'eval s':>6} "
        f"{'train s':>7} {'train cfg·ex/s':>14} {'÷ one block':>11} {'wall ÷ one':>10}"
    )
    for r in rows:
        r["train_vs_one"] = r["train_cfg_ex_per_s"] / one["train_cfg_ex_per_s"]
        r["wall_vs_one"] = r["wall_cfg_ex_per_s"] / one["wall_cfg_ex_per_s"]
        report(
            f"{r['configs_per_block']:>13} {r['blocks']:>6} {r['wall_s']:>7.2f} "
            f"{r['compile_s']:>9.2f} {r['eval_s']:>6.2f} {r['train_s']:>7.2f} "
            f"{r['train_cfg_ex_per_s']:>14.3g} {r['train_vs_one']:>11.2f} {r['wall_vs_one']:>10.2f}"
        )
    return rows


def checkpoints(steps: int, rounds: int, report: Callable[[str], None] = print) -> list[dict]:
    """The time checkpointing after every chunk holds the training loop: none, sync, async."""
    model, dataset, layout, settings = _grid(1024, steps, 20, "adam")
    trainer = engine.Trainer(model, dataset, layout, settings)
    trainer.train()  # compiles every program once, outside the timings
    state_mb = memory.tree_bytes(trainer.state_template()) / 1e6
    modes = ("none", "sync", "async")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    saves = settings.steps // settings.eval_every
    for _ in range(rounds):
        for mode in modes:
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = (
                    None
                    if mode == "none"
                    else checkpoint.Checkpointer(tmp, trainer, asynchronous=mode == "async")
                )
                on_chunk = None if ckpt is None else lambda s, h, c=ckpt: c.save(s, h)
                eval_before = trainer.eval_seconds
                start = time.perf_counter()
                trainer.train(on_chunk=on_chunk)
                if ckpt is not None:
                    ckpt.close()
                wall = time.perf_counter() - start - (trainer.eval_seconds - eval_before)
                held = 0.0 if ckpt is None else ckpt.blocked_seconds
                runs[mode].append({"train_s": wall, "held_s": held})
    rows = []
    base = statistics.median(r["train_s"] for r in runs["none"])
    report(
        f"\n{layout.size} configs (MLP 64-1024-10, Adam; state {state_mb:.0f} MB), {steps} steps, "
        f"a checkpoint every {settings.eval_every} steps ({saves} saves), median of {rounds} "
        "interleaved rounds; evaluation time excluded:"
    )
    report(f"{'checkpoint':>10} {'train s':>8} {'held s':>7} {'held/save ms':>12} {'vs none':>8}")
    for mode in modes:
        train = statistics.median(r["train_s"] for r in runs[mode])
        held = statistics.median(r["held_s"] for r in runs[mode])
        row = {
            "checkpoint": mode,
            "train_s": train,
            "held_s": held,
            "held_per_save_ms": 1e3 * held / saves,
            "overhead_vs_none": train / base - 1,
            "state_mb": state_mb,
        }
        rows.append(row)
        report(
            f"{mode:>10} {train:>8.2f} {held:>7.2f} {row['held_per_save_ms']:>12.1f} "
            f"{row['overhead_vs_none']:>+8.1%}"
        )
    return rows
