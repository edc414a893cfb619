r"""Reproduces the MNIST-1D paper's baselines (Greydanus & Kobak) and trains them with MSE and square loss.

  python -m experiments.mnist1d_baselines
  python -m experiments.mnist1d_baselines --steps=2000 --seeds=2 --workdir=runs/mnist1d

The paper's recipe (its repository's train.py and models.py): Adam, learning rate 1e-2, batch 100,
6000 steps; logistic regression; an MLP 40-100-100-10 with ReLU and a residual second layer; a CNN of
three 1-D convolutions (25 channels, kernels 5/3/3, stride 2, padding 1) and a linear layer. Each model
trains every loss × seed as one batched program. The paper reports 32 % / 68 % / 94 % test accuracy.
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

FLAGS = flags.FLAGS
flags.DEFINE_string("steps", "6000", "Adam steps (the paper's recipe: 6000).")
flags.DEFINE_string("seeds", "3", "Number of seeds.")
flags.DEFINE_string("lr", "0.01", "Adam learning rate (the paper's: 1e-2).")
flags.DEFINE_string("batch_size", "100", "Minibatch size (the paper's: 100).")
flags.DEFINE_list("models", ["linear", "mlp", "cnn1d"], "Models: linear, mlp, cnn1d.")
flags.DEFINE_list("losses", ["ce", "mse", "square"], "Losses; the paper trains with ce.")
flags.DEFINE_string("workdir", "runs/mnist1d_baselines", "Output directory.")

PAPER = {"linear": 32.0, "mlp": 68.0, "cnn1d": 94.0}  # test accuracy (%), CE
MODEL_KWARGS = {"linear": {}, "mlp": {"hidden": (100, 100), "residual": True}, "cnn1d": {}}


def run(model_names, losses, seeds, steps, lr, batch_size, progress=None) -> list[dict]:
    dataset = data.load("mnist1d")
    rows = []
    for name in model_names:
        model = models.make_model(
            name, dataset.num_features, dataset.num_classes, **MODEL_KWARGS[name]
        )
        layout = engine.Layout(tuple(losses), (lr,), tuple(range(seeds)))
        settings = engine.TrainSettings("adam", steps, batch_size, max(steps // 4, 1))
        records = runner.run(model, dataset, layout, settings).document["configs"]
        for loss in losses:
            acc = np.array([100 * c["final"]["test_accuracy"] for c in records
                            if c["loss"] == loss and not c["diverged"]])  # fmt: skip
            rows.append({"model": name, "loss": loss, "params": model.num_params, "runs": int(acc.size),
                         "test_accuracy_mean": float(acc.mean()) if acc.size else None,
                         "test_accuracy_std": float(acc.std()) if acc.size else None,
                         "paper": PAPER[name] if loss == "ce" else None})  # fmt: skip
        if progress:
            progress(name)
    return rows


def figure(rows: list[dict], path: pathlib.Path) -> None:
    names = list(dict.fromkeys(r["model"] for r in rows))
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(losses)
    for i, loss in enumerate(losses):
        mine = [next(r for r in rows if r["model"] == n and r["loss"] == loss) for n in names]
        ax.bar(np.arange(len(names)) + i * width, [r["test_accuracy_mean"] or 0 for r in mine], width,
               yerr=[r["test_accuracy_std"] or 0 for r in mine], capsize=3, label=loss)  # fmt: skip
    ax.scatter(np.arange(len(names)), [PAPER[n] for n in names], marker="_", s=600, color="k", zorder=3,
               label="paper (CE)")  # fmt: skip
    ax.set_xticks(np.arange(len(names)) + width * (len(losses) - 1) / 2, names)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("MNIST-1D baselines, mean ± std over seeds")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
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
            if name not in PAPER:
                raise FlagError("models", f"unknown model {name!r}; expected some of {list(PAPER)}")
        workdir = make_workdir(FLAGS.workdir)
        try:
            rows = run(FLAGS.models, FLAGS.losses, seeds, steps, lr, batch_size,
                       progress=lambda m: print(f"done: {m}", flush=True))  # fmt: skip
        except ValueError as e:
            raise FlagError("losses" if "loss" in str(e) else "steps", str(e)) from None
    except FlagError as e:
        fail(str(e))
    print(f"{'model':<8} {'loss':<8} {'test accuracy (%)':>18} {'paper (CE)':>10}  within 3 points")
    for r in rows:
        mean = (
            "diverged"
            if r["test_accuracy_mean"] is None
            else f"{r['test_accuracy_mean']:.1f} ± {r['test_accuracy_std']:.1f}"
        )
        paper = "" if r["paper"] is None else f"{r['paper']:.0f}"
        verdict = "" if r["paper"] is None or r["test_accuracy_mean"] is None else (
            "yes" if abs(r["test_accuracy_mean"] - r["paper"]) <= 3 else "NO")  # fmt: skip
        print(f"{r['model']:<8} {r['loss']:<8} {mean:>18} {paper:>10}  {verdict}")
    atomic_write_json(workdir / "mnist1d_baselines.json",
                      {"settings": {"steps": steps, "seeds": seeds, "lr": lr, "batch_size": batch_size}, "rows": rows})  # fmt: skip
    figure(rows, workdir / "mnist1d_baselines.png")
    print(f"wrote {workdir}/mnist1d_baselines.png and mnist1d_baselines.json")


def command() -> None:
    """The console command (pyproject.toml's ``[project.scripts]``)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    command()
