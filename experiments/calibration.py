r"""Calibration of models trained with each loss, before and after temperature scaling (C14).

  python -m experiments.calibration
  python -m experiments.calibration --dataset=digits --steps=3000 --workdir=runs/calibration_digits

A calibrated model is right half the time among the samples it predicts with confidence 0.5. Trains
the MNIST-1D paper's MLP (40-100-100-10, ReLU, residual second layer) with its recipe (Adam 1e-2,
batch 100, 6000 steps), so that CE reaches the paper's accuracy first, with CE, MSE and square loss
(all losses × seeds in one batched program); holds out 20 % of the training split as validation, fits a temperature T per model on it by minimising NLL (Guo et al.
2017), and reports test ECE (15 bins) and accuracy before and after: accuracy cannot change, since
logits / T keep their argmax. Draws reliability diagrams of seed 0 for each loss.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from absl import app, flags

from softcls_jax import calibration, data, engine, models, plots, runner
from softcls_jax.results import atomic_write_json

from .cli import FlagError, fail, make_workdir, number, parse_flags

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "dataset",
    "mnist1d",
    "Data set (digits, mnist1d, blobs or npz:PATH); an MLP overfits MNIST-1D, the regime where CE turns over-confident.",
)
flags.DEFINE_list("losses", ["ce", "mse", "square"], "Losses to compare.")
flags.DEFINE_string("lr", "0.01", "Adam learning rate, the same for every loss (MNIST-1D's: 1e-2).")
flags.DEFINE_string("seeds", "3", "Number of seeds.")
flags.DEFINE_string("steps", "6000", "Adam steps, batch 100 (MNIST-1D's recipe: 6000).")
flags.DEFINE_string("workdir", "runs/calibration", "Output directory.")


def train_and_calibrate(
    dataset: data.Dataset, losses: tuple[str, ...], lr: float, seeds: int, steps: int
) -> tuple[list[dict], dict]:
    """Trains the grid, fits T on validation, returns per-model rows and seed-0 reliability bins."""
    train, x_val, y_val = data.split_validation(dataset, 0.2, seed=0)
    # the MNIST-1D paper's MLP
    model = models.make_model(
        "mlp", train.num_features, train.num_classes, hidden=(100, 100), residual=True
    )
    layout = engine.Layout(losses, (lr,), tuple(range(seeds)))
    trained = runner.run(model, train, layout, engine.TrainSettings("adam", steps, 100, steps))
    return calibration.calibrate(
        model,
        trained.params,
        layout,
        trained.document["configs"],
        x_val,
        y_val,
        train.x_test,
        train.y_test,
    )


def figure(bins: dict, path: pathlib.Path) -> None:
    fig, axes = plt.subplots(2, len(bins), figsize=(4 * len(bins), 7.5), squeeze=False)
    for col, (loss, pair) in enumerate(bins.items()):
        for row, (label, b) in enumerate(
            zip(("before", "after temperature scaling"), pair, strict=True)
        ):
            ax = axes[row, col]
            edges = np.asarray(b.edges)
            width = edges[1] - edges[0]
            filled = np.asarray(b.counts) > 0
            ax.bar(
                edges[:-1][filled],
                np.asarray(b.accuracy)[filled],
                width=width,
                align="edge",
                edgecolor="k",
                label="accuracy",
            )
            acc, conf = np.asarray(b.accuracy)[filled], np.asarray(b.confidence)[filled]
            ax.bar(
                edges[:-1][filled],
                np.abs(conf - acc),
                width=width,
                bottom=np.minimum(acc, conf),
                align="edge",
                fill=False,
                edgecolor="red",
                hatch="//",
                label="gap to confidence",
            )
            ax.plot([0, 1], [0, 1], "k--", lw=1)
            ax.set_title(f"{loss}: {label}", fontsize=10)
            ax.set_xlabel("confidence")
            ax.set_ylabel("accuracy")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
    axes[0, 0].legend(loc="upper left")
    fig.tight_layout()
    plots.save(fig, path)


def main(argv: Sequence[str]) -> None:
    del argv
    try:
        lr = number("lr", FLAGS.lr)
        seeds = number("seeds", FLAGS.seeds, int)
        steps = number("steps", FLAGS.steps, int)
        try:
            dataset = data.load(FLAGS.dataset)
        except ValueError as e:
            raise FlagError("dataset", str(e)) from None
        workdir = make_workdir(FLAGS.workdir)
        try:
            rows, bins = train_and_calibrate(dataset, tuple(FLAGS.losses), lr, seeds, steps)
        except ValueError as e:
            raise FlagError("losses" if "loss" in str(e) else "lr", str(e)) from None
    except FlagError as e:
        fail(str(e))
    summary = calibration.summarise(rows)
    print(
        f"{'loss':<8} {'T':>6} {'acc before':>10} {'acc after':>10} {'ECE before':>10} {'ECE after':>10} {'NLL before':>10} {'NLL after':>10}"
    )
    for r in summary:
        if r.get("diverged"):
            print(f"{r['loss']:<8} diverged")
            continue
        print(
            f"{r['loss']:<8} {r['temperature']:>6.3f} {100 * r['accuracy_before']:>9.2f}% {100 * r['accuracy_after']:>9.2f}% "
            f"{r['ece_before']:>10.4f} {r['ece_after']:>10.4f} {r['nll_before']:>10.4f} {r['nll_after']:>10.4f}"
            f"{'  (a T at the search bound)' if r['temperature_at_bound'] else ''}"
        )
    figure(bins, workdir / "reliability.png")
    atomic_write_json(workdir / "calibration.json", {"summary": summary, "models": rows})
    print(f"wrote {workdir}/reliability.png and calibration.json")


def command() -> None:
    """The console command (pyproject.toml's ``[project.scripts]``)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    command()
