r"""Reproduces the MNIST-1D paper's baselines (Greydanus & Kobak) and its spatially shuffled control.

  python -m experiments.mnist1d_baselines
  python -m experiments.mnist1d_baselines --steps=2000 --seeds=2 --inputs=original --workdir=runs/mnist1d

The paper's recipe (its repository's notebooks/train.py and models.py): Adam, learning rate 1e-2,
batch 100, 6000 steps, test accuracy at the last step; logistic regression; an MLP 40-100-100-10 with
ReLU and a residual second layer; a CNN of three 1-D convolutions (25 channels, kernels 5/3/3, stride 2,
padding 1) and a linear layer; a bidirectional GRU (6 units per direction) whose outputs at all 40 steps
feed a linear layer. The shuffled control applies one fixed permutation of the 40 positions to every
example (the notebook's ``np.random.seed(42); np.random.permutation(40)``): a model that exploits
neighbouring positions (CNN, GRU) loses most, one that treats features as a set (linear, MLP) nothing.
No hyperparameter is chosen here: the recipe is fixed, so nothing looks at test data but the report.
Each model × inputs trains every loss × seed as one batched program.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from absl import app, flags

from softcls_jax import data, engine, models, plots, runner
from softcls_jax.results import atomic_write_json

from .cli import FlagError, fail, make_workdir, number, parse_flags
from .formatting import within

FLAGS = flags.FLAGS
flags.DEFINE_string("steps", "6000", "Adam steps (the paper's recipe: 6000).")
flags.DEFINE_string("seeds", "3", "Number of seeds.")
flags.DEFINE_string("lr", "0.01", "Adam learning rate (the paper's: 1e-2).")
flags.DEFINE_string("batch_size", "100", "Minibatch size (the paper's: 100).")
flags.DEFINE_list("models", ["linear", "mlp", "cnn1d", "gru"], "Models: linear, mlp, cnn1d, gru.")
flags.DEFINE_list("losses", ["ce", "mse", "square"], "Losses; the paper trains with ce.")
flags.DEFINE_list(
    "inputs",
    ["original", "shuffled"],
    "original: MNIST-1D as is; shuffled: the paper's control, the 40 positions of every example "
    "permuted by one fixed permutation.",
)
flags.DEFINE_string("workdir", "runs/mnist1d_baselines", "Output directory.")

# CE test accuracy (%): the paper's figure, and its notebook's last step (one seed).
PAPER = {
    "original": {"linear": 32.0, "mlp": 68.0, "cnn1d": 94.0, "gru": 91.0},
    "shuffled": {"linear": 32.0, "mlp": 68.0, "cnn1d": 56.0, "gru": 57.0},
}
NOTEBOOK = {
    "original": {"linear": 31.5, "mlp": 65.1, "cnn1d": 92.3, "gru": 89.1},
    "shuffled": {"linear": 31.5, "mlp": 66.0, "cnn1d": 58.7, "gru": 53.3},
}
MODEL_KWARGS = {
    "linear": {},
    "mlp": {"hidden": (100, 100), "residual": True},
    "cnn1d": {},
    "gru": {},
}
SHUFFLE_SEED = 42  # the notebook's np.random.seed(42)


def shuffled_order(length: int) -> np.ndarray:
    """The notebook's fixed permutation of the positions: ``np.random.seed(42); permutation(L)``."""
    return np.random.RandomState(SHUFFLE_SEED).permutation(length)


def run(
    model_names, losses, seeds, steps, lr, batch_size, inputs=("original",), progress=None
) -> list[dict]:
    original = data.load("mnist1d")
    variants = {
        "original": original,
        "shuffled": data.permuted_features(original, shuffled_order(original.num_features)),
    }
    rows = []
    for variant in inputs:
        dataset = variants[variant]
        for name in model_names:
            model = models.make_model(
                name, dataset.num_features, dataset.num_classes, **MODEL_KWARGS[name]
            )
            layout = engine.Layout(tuple(losses), (lr,), tuple(range(seeds)))
            settings = engine.TrainSettings("adam", steps, batch_size, max(steps // 4, 1))
            records = runner.run(model, dataset, layout, settings).document["configs"]
            for loss in losses:
                acc = np.array(
                    [
                        100 * c["final"]["test_accuracy"]
                        for c in records
                        if c["loss"] == loss and not c["diverged"]
                    ]
                )
                ce = loss == "ce"
                rows.append(
                    {
                        "inputs": variant,
                        "model": name,
                        "loss": loss,
                        "params": model.num_params,
                        "runs": int(acc.size),
                        "test_accuracy_mean": float(acc.mean()) if acc.size else None,
                        "test_accuracy_std": float(acc.std()) if acc.size else None,
                        "paper": PAPER[variant][name] if ce else None,
                        "notebook": NOTEBOOK[variant][name] if ce else None,
                    }
                )
            if progress:
                progress(f"{name} ({variant})")
    return rows


def figure(rows: list[dict], path: pathlib.Path) -> None:
    variants = list(dict.fromkeys(r["inputs"] for r in rows))
    names = list(dict.fromkeys(r["model"] for r in rows))
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    fig, axes = plt.subplots(
        1, len(variants), figsize=(6.5 * len(variants), 4), squeeze=False, sharey=True
    )
    width = 0.8 / len(losses)
    for ax, variant in zip(axes[0], variants, strict=True):
        for i, loss in enumerate(losses):
            mine = [
                next(
                    r
                    for r in rows
                    if r["inputs"] == variant and r["model"] == n and r["loss"] == loss
                )
                for n in names
            ]
            ax.bar(
                np.arange(len(names)) + i * width,
                [r["test_accuracy_mean"] or 0 for r in mine],
                width,
                yerr=[r["test_accuracy_std"] or 0 for r in mine],
                capsize=3,
                label=loss,
            )
        ax.scatter(
            np.arange(len(names)),
            [PAPER[variant][n] for n in names],
            marker="_",
            s=600,
            color="k",
            zorder=3,
            label="paper (CE)",
        )
        ax.set_xticks(np.arange(len(names)) + width * (len(losses) - 1) / 2, names)
        ax.set_title(f"MNIST-1D, {variant} positions: mean ± std over seeds", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].set_ylabel("test accuracy (%)")
    axes[0, 0].legend()
    fig.tight_layout()
    plots.save(fig, path)


def main(argv: Sequence[str]) -> None:
    del argv
    try:
        steps = number("steps", FLAGS.steps, int)
        seeds = number("seeds", FLAGS.seeds, int)
        lr = number("lr", FLAGS.lr)
        batch_size = number("batch_size", FLAGS.batch_size, int)
        for name in FLAGS.models:
            if name not in MODEL_KWARGS:
                raise FlagError(
                    "models", f"unknown model {name!r}; expected some of {list(MODEL_KWARGS)}"
                )
        for variant in FLAGS.inputs:
            if variant not in PAPER:
                raise FlagError(
                    "inputs", f"unknown inputs {variant!r}; expected some of {list(PAPER)}"
                )
        workdir = make_workdir(FLAGS.workdir)
        try:
            rows = run(
                FLAGS.models,
                FLAGS.losses,
                seeds,
                steps,
                lr,
                batch_size,
                FLAGS.inputs,
                progress=lambda m: print(f"done: {m}", flush=True),
            )
        except ValueError as e:
            raise FlagError("losses" if "loss" in str(e) else "steps", str(e)) from None
    except FlagError as e:
        fail(str(e))
    print(
        f"{'inputs':<9} {'model':<7} {'loss':<7} {'test accuracy (%)':>18} {'paper (CE)':>10} "
        f"{'notebook':>9}  within 3 points of the paper"
    )
    for r in rows:
        mean = (
            "diverged"
            if r["test_accuracy_mean"] is None
            else f"{r['test_accuracy_mean']:.1f} ± {r['test_accuracy_std']:.1f}"
        )
        paper = "" if r["paper"] is None else f"{r['paper']:.0f}"
        notebook = "" if r["notebook"] is None else f"{r['notebook']:.1f}"
        print(
            f"{r['inputs']:<9} {r['model']:<7} {r['loss']:<7} {mean:>18} {paper:>10} {notebook:>9}  "
            f"{within(r)}"
        )
    settings = {
        "steps": steps,
        "seeds": seeds,
        "lr": lr,
        "batch_size": batch_size,
        "shuffle_seed": SHUFFLE_SEED,
    }
    atomic_write_json(workdir / "mnist1d_baselines.json", {"settings": settings, "rows": rows})
    figure(rows, workdir / "mnist1d_baselines.png")
    print(f"wrote {workdir}/mnist1d_baselines.png and mnist1d_baselines.json")


def command() -> None:
    """The console command (pyproject.toml's ``[project.scripts]``)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    command()
