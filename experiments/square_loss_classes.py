r"""Square loss as the number of classes grows: CE vs plain vs rescaled square loss (Hui & Belkin).

  python -m experiments.square_loss_classes                       # C = 10, 100, 1000
  python -m experiments.square_loss_classes --classes=10,100 --steps=500 --workdir=runs/sq

Plain square loss falls behind CE as the number of classes C grows (Demirkaya et al. 2020); Hui &
Belkin (ICLR 2021) rescale it, weighting the true class by k and pushing its logit to M (they use
k = 1, M = 15 around 40 classes and k = 15, M = 30 for 1,000). A synthetic task per C: Gaussian
classes around random centres in 64 dimensions, 20 training, 5 validation and 10 test examples per
class. An MLP (64-256-C, ReLU), SGD with momentum 0.9, batch 128, trains per C one grid of CE and one
of square loss with k and M as grid axes, each crossed with the learning rates and seeds. Every
choice — the learning rate, and k and M of the rescaled square loss — is made on the validation
split; test accuracy is only reported.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from absl import app, flags

from softcls_jax import data, models, plots, results, runner
from softcls_jax.results import atomic_write_json

from .cli import FlagError, fail, number, numbers, parse_flags
from .formatting import square_loss_table

FLAGS = flags.FLAGS
flags.DEFINE_list("classes", ["10", "100", "1000"], "Numbers of classes C, one task each.")
flags.DEFINE_list("lrs", ["0.01", "0.03", "0.1", "0.3"], "Learning rates (SGD, momentum 0.9).")
flags.DEFINE_list("k", ["1", "15"], "Values of k, the square loss's weight of the true class.")
flags.DEFINE_list(
    "M", ["1", "15", "30"], "Values of M, the square loss's target of the true logit."
)
flags.DEFINE_string("seeds", "2", "Number of seeds.")
flags.DEFINE_string("steps", "1500", "SGD steps per config.")
flags.DEFINE_string("workdir", "runs/square_loss_classes", "Output directory.")

DIM, HIDDEN, PER_CLASS, BATCH, NOISE = 64, 256, (20, 5, 10), 128, 2.5


def task(num_classes: int, seed: int = 0) -> data.Dataset:
    """Gaussian classes: centres ~ N(0, I) in 64-d, examples centre + N(0, 2.5² I); train / val /
    test of 20 / 5 / 10 examples per class, standardised on the training split."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, DIM))
    splits = []
    for n in PER_CLASS:
        y = np.repeat(np.arange(num_classes), n)
        splits.append((centres[y] + NOISE * rng.normal(size=(y.size, DIM)), y))
    (xt, yt), (xv, yv), (xs, ys) = splits
    return data.standardized(
        data.from_arrays(
            xt, yt, xs, ys, num_classes=num_classes, name=f"gauss{num_classes}", x_val=xv, y_val=yv
        )
    )


def run(classes, lrs, ks, ms, seeds, steps, workdir: pathlib.Path, progress=None) -> list[dict]:
    rows = []
    for c in classes:
        dataset = task(c)
        model = models.make_model("mlp", DIM, c, hidden=(HIDDEN,))
        common = {
            "learning_rates": lrs,
            "seeds": tuple(range(seeds)),
            "optimizer": "momentum",
            "steps": steps,
            "batch_size": BATCH,
            "eval_every": max(steps // 5, 1),
        }
        ce = runner.run_grid(model, dataset, losses=("ce",), workdir=workdir / f"C{c}_ce", **common)
        sq = runner.run_grid(
            model,
            dataset,
            losses=("square",),
            axes={"k": ks, "M": ms},
            workdir=workdir / f"C{c}_square",
            **common,
        )
        plain = [r for r in sq["configs"] if r["k"] == 1 and r["M"] == 1]
        for name, records in (
            ("ce", ce["configs"]),
            ("square, k = M = 1", plain),
            ("square, k and M chosen on val", sq["configs"]),
        ):
            chosen = results.best_per_loss(records, on="val")
            best = chosen[0] if chosen else None
            rows.append(
                {
                    "classes": c,
                    "loss": name,
                    "diverged_everywhere": best is None,
                    **(
                        {}
                        if best is None
                        else {
                            "learning_rate": best["learning_rate"],
                            "k": best.get("k"),
                            "M": best.get("M"),
                            "val_accuracy": 100 * best["val_accuracy"],
                            "test_accuracy": 100 * best["test_accuracy"],
                        }
                    ),
                }
            )
        if progress:
            progress(c)
    return rows


def figure(rows: list[dict], path: pathlib.Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for loss in dict.fromkeys(r["loss"] for r in rows):
        mine = [r for r in rows if r["loss"] == loss and not r["diverged_everywhere"]]
        ax.plot([r["classes"] for r in mine], [r["test_accuracy"] for r in mine], "o-", label=loss)
    ax.set_xscale("log")
    ax.set_xlabel("number of classes C")
    ax.set_ylabel("test accuracy (%), chosen on validation")
    ax.set_title("Square loss as C grows (Hui & Belkin's k, M)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots.save(fig, path)


def main(argv: Sequence[str]) -> None:
    del argv
    try:
        classes = numbers("classes", FLAGS.classes, int)
        if any(c < 2 for c in classes):
            raise FlagError("classes", f"each must be >= 2, got {list(classes)}")
        lrs, ks, ms = numbers("lrs", FLAGS.lrs), numbers("k", FLAGS.k), numbers("M", FLAGS.M)
        if 1.0 not in ks or 1.0 not in ms:
            raise FlagError("k", "--k and --M must include 1 (the plain square loss)")
        seeds = number("seeds", FLAGS.seeds, int, minimum=1)
        steps = number("steps", FLAGS.steps, int, minimum=1)
        workdir = pathlib.Path(FLAGS.workdir)
        rows = run(
            classes,
            lrs,
            ks,
            ms,
            seeds,
            steps,
            workdir,
            progress=lambda c: print(f"done: C = {c}", flush=True),
        )
    except FlagError as e:
        fail(str(e))
    except ValueError as e:
        fail(f"--lrs/--k/--M: {e}")
    print(square_loss_table(rows))
    figure(rows, workdir / "square_loss_classes.png")
    atomic_write_json(workdir / "square_loss_classes.json", {"rows": rows})
    print(f"wrote {workdir}/square_loss_classes.png and square_loss_classes.json")


def command() -> None:
    """The console command (pyproject.toml's ``[project.scripts]``)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    command()
