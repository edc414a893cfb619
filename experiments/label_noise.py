r"""Test accuracy against label noise for CE, MSE and square loss (claim C15).

  python -m experiments.label_noise
  python -m experiments.label_noise --fractions=0,0.2,0.4 --seeds=5 --workdir=runs/label_noise

Flips a fraction of the training labels to another class (seeded; the test set stays clean) and
trains an MLP on digits with each loss over several seeds: every loss × noise level × seed is one
batched program (the noise level is the ``label_noise`` grid axis).
Reports test accuracy (mean ± std over seeds) and the final training CE on the noisy labels: with
labels that the features do not determine, CE cannot reach 0.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from absl import app, flags

from softcls_jax import plots
from softcls_jax.results import atomic_write_json
from softcls_jax.sweep import SettingError, SweepSpec, run_sweep

from .cli import FlagError, fail, number, numbers, parse_flags

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "fractions", ["0", "0.1", "0.2", "0.4", "0.6"], "Fractions of flipped training labels."
)
flags.DEFINE_list("losses", ["ce", "mse", "square"], "Losses to compare.")
flags.DEFINE_string("lr", "0.1", "SGD learning rate, the same for every loss.")
flags.DEFINE_string("seeds", "3", "Number of seeds.")
flags.DEFINE_string("steps", "2000", "SGD steps (batch 128).")
flags.DEFINE_string("dataset", "digits", "Data set.")
flags.DEFINE_string("workdir", "runs/label_noise", "Output directory.")


def run(fractions, losses, lr, seeds, steps, dataset, workdir: pathlib.Path) -> list[dict]:
    """Every loss × noise level × seed as one grid (the level is the ``label_noise`` axis)."""
    spec = SweepSpec(
        losses=tuple(losses),
        learning_rates=(lr,),
        seeds=tuple(range(seeds)),
        dataset=dataset,
        steps=steps,
        eval_every=max(steps // 4, 1),
        axes={"label_noise": tuple(fractions)},
    )
    document = run_sweep(spec, workdir / "grid", overwrite=True)
    rows = []
    for fraction in fractions:
        for loss in losses:
            runs = [
                c
                for c in document["configs"]
                if c["loss"] == loss and c["label_noise"] == fraction and not c["diverged"]
            ]
            acc = [c["final"]["test_accuracy"] for c in runs]
            train_ce = [c["final"]["train_nll"] for c in runs]
            rows.append(
                {
                    "fraction": fraction,
                    "loss": loss,
                    "runs": len(runs),
                    "test_accuracy_mean": 100 * float(np.mean(acc)) if acc else None,
                    "test_accuracy_std": 100 * float(np.std(acc)) if acc else None,
                    "train_ce_mean": float(np.mean(train_ce)) if train_ce else None,
                    "train_ce_min": float(np.min(train_ce)) if train_ce else None,
                }
            )
    return rows


def figure(rows: list[dict], path: pathlib.Path) -> None:
    fig, (ax_acc, ax_ce) = plt.subplots(1, 2, figsize=(10, 4))
    for loss in dict.fromkeys(r["loss"] for r in rows):
        mine = [r for r in rows if r["loss"] == loss and r["runs"]]
        x = [r["fraction"] for r in mine]
        ax_acc.errorbar(
            x,
            [r["test_accuracy_mean"] for r in mine],
            yerr=[r["test_accuracy_std"] for r in mine],
            marker="o",
            capsize=3,
            label=loss,
        )
        ax_ce.plot(x, [r["train_ce_mean"] for r in mine], marker="o", label=loss)
    ax_acc.set_xlabel("fraction of flipped training labels")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("Test accuracy under label noise")
    ax_ce.set_xlabel("fraction of flipped training labels")
    ax_ce.set_ylabel("final training CE (noisy labels)")
    ax_ce.set_title("Training CE cannot reach 0 under noise")
    for ax in (ax_acc, ax_ce):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    plots.save(fig, path)


def main(argv: Sequence[str]) -> None:
    del argv
    try:
        fractions = numbers("fractions", FLAGS.fractions)
        if any(not 0 <= f < 1 for f in fractions):
            raise FlagError("fractions", f"each must be in [0, 1), got {list(fractions)}")
        lr = number("lr", FLAGS.lr)
        seeds = number("seeds", FLAGS.seeds, int)
        steps = number("steps", FLAGS.steps, int)
        workdir = pathlib.Path(FLAGS.workdir)
        rows = run(fractions, FLAGS.losses, lr, seeds, steps, FLAGS.dataset, workdir)
    except FlagError as e:
        fail(str(e))
    except SettingError as e:
        fail(
            f"--{ {'learning_rates': 'lr', 'label_noise': 'fractions'}.get(e.setting, e.setting) }: {e}"
        )
    print(f"{'noise':>6} {'loss':<8} {'test accuracy (%)':>18} {'train CE':>9}")
    for r in rows:
        if not r["runs"]:
            print(f"{r['fraction']:>6g} {r['loss']:<8} {'diverged':>18}")
            continue
        print(
            f"{r['fraction']:>6g} {r['loss']:<8} {r['test_accuracy_mean']:>11.1f} ± {r['test_accuracy_std']:<4.1f} {r['train_ce_mean']:>9.3f}"
        )
    figure(rows, workdir / "label_noise.png")
    settings = {"dataset": FLAGS.dataset, "lr": lr, "seeds": seeds, "steps": steps}
    atomic_write_json(workdir / "label_noise.json", {"settings": settings, "rows": rows})
    print(f"wrote {workdir}/label_noise.png and label_noise.json")


def command() -> None:
    """The console command (pyproject.toml's ``[project.scripts]``)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    command()
