r"""CE vs MSE vs square loss from a confidently wrong start (claim C13; Golik et al. 2013).

  python -m experiments.confident_start
  python -m experiments.confident_start --steps=500 --seeds=2 --workdir=runs/confident_start

Softmax regression and an MLP on digits, each from a gentle start (default initialisation) and from a
confidently wrong one (large initial weights: linear weights of standard deviation --weight_std, the
MLP's weights multiplied by --mlp_init_scale). Every loss × learning rate × start × seed of one model
trains as one batched program (the start is the ``init_scale`` grid axis). Reports the best learning rate's final test accuracy per loss (chosen
on test accuracy: an illustration, not a tuned benchmark) beside a third-party demo's numbers.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from absl import app, flags

from softcls_jax import plots, results
from softcls_jax.sweep import SettingError, SweepSpec, run_sweep

from .cli import FlagError, fail, number, numbers, parse_flags
from .formatting import confident_start_row

FLAGS = flags.FLAGS
flags.DEFINE_list("lrs", ["0.01", "0.03", "0.1", "0.3", "1.0"], "Learning rates (SGD).")
flags.DEFINE_string("seeds", "3", "Number of seeds.")
flags.DEFINE_string("steps", "2000", "SGD steps per config (batch 128).")
flags.DEFINE_string(
    "weight_std",
    "4.0",
    "Standard deviation of the linear model's initial weights in the confident start.",
)
flags.DEFINE_string(
    "mlp_init_scale", "4.0", "Multiplier of the MLP's initial weights in the confident start."
)
flags.DEFINE_list("models", ["linear", "mlp"], "Models to run: linear and/or mlp.")
flags.DEFINE_string("workdir", "runs/confident_start", "Output directory.")

LOSSES = ("ce", "mse", "square")
STARTS = ("gentle", "confident")
# A third-party demo: softmax regression on digits, weights of std 4.0 vs a gentle start.
REFERENCE = {
    ("linear", "confident"): {"ce": 95.1, "mse": 58.1},
    ("linear", "gentle"): {"ce": 96.9, "mse": 96.6},
}
DIGITS_FEATURES = 64


def init_scale(model: str, start: str, weight_std: float, mlp_scale: float) -> float:
    """Flax's default (LeCun normal) weights have std 1/sqrt(fan_in); scale them to the asked size."""
    if start == "gentle":
        return 1.0
    return weight_std * math.sqrt(DIGITS_FEATURES) if model == "linear" else mlp_scale


def run(models: Sequence[str], lrs: tuple[float, ...], seeds: int, steps: int, weight_std: float,
        mlp_scale: float, workdir: pathlib.Path, progress=None) -> list[dict]:  # fmt: skip
    """One grid per model (losses × learning rates × both starts as an ``init_scale`` axis × seeds);
    returns a row per (model, start, loss) with its best learning rate."""
    rows = []
    for model in models:
        scales = {start: init_scale(model, start, weight_std, mlp_scale) for start in STARTS}
        spec = SweepSpec(
            losses=LOSSES, learning_rates=lrs, seeds=tuple(range(seeds)), model=model,
            hidden=(128,) if model == "mlp" else (), steps=steps, eval_every=max(steps // 10, 1),
            axes={"init_scale": tuple(dict.fromkeys(scales.values()))},
        )  # fmt: skip
        document = run_sweep(spec, workdir / model, overwrite=True)
        for start in STARTS:
            records = [c for c in document["configs"] if c["init_scale"] == scales[start]]
            rows += start_rows(model, start, scales[start], records)
        if progress:
            progress(model)
    return rows


def start_rows(model: str, start: str, scale: float, records: list[dict]) -> list[dict]:
    """A row per loss: its best learning rate's final test accuracy and mean curve over seeds."""
    rows = []
    best = {b["loss"]: b for b in results.best_per_loss(records)}
    for loss in LOSSES:
        row = {"model": model, "start": start, "loss": loss, "init_scale": scale,
               "learning_rate": None, "test_accuracy_mean": None, "test_accuracy_std": None,
               "reference": REFERENCE.get((model, start), {}).get(loss),
               "curve_step": [], "curve_accuracy": []}  # fmt: skip
        if loss in best:  # else it diverged at every learning rate
            lr = best[loss]["learning_rate"]
            runs = [c for c in records if c["loss"] == loss and c["learning_rate"] == lr]
            accs = [c["final"]["test_accuracy"] for c in runs]
            curve = np.mean([c["curves"]["test_accuracy"] for c in runs], axis=0)
            row.update(learning_rate=lr, test_accuracy_mean=100 * float(np.mean(accs)),
                       test_accuracy_std=100 * float(np.std(accs)),
                       curve_step=runs[0]["curves"]["step"], curve_accuracy=curve.tolist())  # fmt: skip
        rows.append(row)
    return rows


def figure(rows: list[dict], path: pathlib.Path) -> None:
    keys = sorted({(r["model"], r["start"]) for r in rows}, key=lambda k: (k[0], k[1] != "gentle"))
    fig, axes = plt.subplots(
        1, len(keys), figsize=(4.2 * len(keys), 3.6), sharey=True, squeeze=False
    )
    for ax, (model, start) in zip(axes[0], keys, strict=True):
        for r in rows:
            if (r["model"], r["start"]) == (model, start) and r["curve_step"]:
                ax.plot(r["curve_step"], 100 * np.asarray(r["curve_accuracy"]),
                        label=f"{r['loss']} (lr {r['learning_rate']:.3g})")  # fmt: skip
        ax.set_title(f"{model}, {start} start")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("test accuracy (%), mean over seeds")
    fig.tight_layout()
    plots.save(fig, path)


def table(rows: list[dict]) -> str:
    lines = [
        "| model | start | loss | best lr | test accuracy (%) | reference (%) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(confident_start_row(r))
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    del argv
    try:
        lrs = numbers("lrs", FLAGS.lrs)
        seeds = number("seeds", FLAGS.seeds, int)
        steps = number("steps", FLAGS.steps, int)
        weight_std = number("weight_std", FLAGS.weight_std)
        mlp_scale = number("mlp_init_scale", FLAGS.mlp_init_scale)
        for model in FLAGS.models:
            if model not in ("linear", "mlp"):
                raise FlagError("models", f"unknown model {model!r}; expected linear and/or mlp")
        if weight_std <= 0 or mlp_scale <= 0:
            raise FlagError("weight_std", "initial scales must be > 0")
        workdir = pathlib.Path(FLAGS.workdir)
        rows = run(FLAGS.models, lrs, seeds, steps, weight_std, mlp_scale, workdir,
                   progress=lambda m: print(f"done: {m}", flush=True))  # fmt: skip
    except FlagError as e:
        fail(str(e))
    except SettingError as e:
        fail(f"--{ {'learning_rates': 'lrs'}.get(e.setting, e.setting) }: {e}")
    print(table(rows))
    figure(rows, workdir / "confident_start.png")
    results.atomic_write_json(workdir / "confident_start.json", {"rows": rows})
    print(f"wrote {workdir}/confident_start.png and confident_start.json")


def command() -> None:
    """The console command (pyproject.toml's ``[project.scripts]``)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    command()
