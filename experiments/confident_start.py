r"""CE vs squared error from a confidently wrong start, on the digits essay's protocol (claim C13).

  python -m experiments.confident_start                     # the full protocol
  python -m experiments.confident_start --epochs=5 --seeds=3 --lrs=0.1,1,10 --workdir=runs/cs

The protocol of the reference (a digits essay's companion code), followed step by step:
scikit-learn's digits scaled to [0, 1] (x / 16, no standardisation); a stratified split with seed 0
into 1,077 train / 270 validation / 450 test; softmax regression, and a hidden layer of 32 tanh
units; losses CE and ½ Σ_c (p_c − y_c)² on the softmax probabilities; plain SGD, batch 32, 30
epochs; output weights drawn with std 0.01 (gentle) or 4.0 (confident), biases 0; learning rates
from 0.01 to 1000 in half-decade steps. Per (model, start, loss) the learning rate is chosen by the
mean final validation accuracy over seeds 0–2 (ties to the smaller rate); its test accuracy is then
reported over seeds 0–4. Every learning rate × loss × start × seed of a model trains as ONE grid
(the start is the ``init_scale`` axis). Also measures the reference's diagnostics of the confident
start: the training digits whose true class gets p < 1e-8, the logit-gradient norms of CE and
squared error on them, the test loss and the mean top probability.

Differences from the reference, by design of this engine: float32 (the reference uses float64);
the last partial minibatch of an epoch is dropped (33 steps per epoch); the hidden layer's weights
are Flax's default (LeCun normal), which the reference does not state.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from absl import app, flags
from flax import nnx

from softcls_jax import data, losses, models, plots, runner
from softcls_jax.results import atomic_write_json

from .cli import FlagError, fail, number, numbers, parse_flags
from .formatting import confident_start_row

FLAGS = flags.FLAGS
HALF_DECADES = [f"{10 ** (e / 2):.4g}" for e in range(-4, 7)]  # 0.01 … 1000
flags.DEFINE_list(
    "lrs", HALF_DECADES, "Learning rates (the protocol: 0.01 to 1000 in half decades)."
)
flags.DEFINE_string("seeds", "5", "Seeds 0 … N-1; the rate is chosen on seeds 0–2, tested on all.")
flags.DEFINE_string("epochs", "30", "Epochs of plain SGD, batch 32 (the protocol: 30).")
flags.DEFINE_list(
    "models", ["linear", "mlp"], "Models: linear (softmax regression), mlp (32 tanh)."
)
flags.DEFINE_string("workdir", "runs/confident_start", "Output directory.")

STDS = {"gentle": 0.01, "confident": 4.0}  # std of the initial output weights
BATCH, HIDDEN, SELECT_SEEDS = 32, 32, (0, 1, 2)
LOSS_NAMES = {"ce": "ce", "half_squared_error": "mse"}  # our name -> the reference's row
REFERENCE = {  # test accuracy (%) at epoch 30, and the chosen learning rate
    ("linear", "gentle"): {"ce": (96.9, 1), "mse": (96.6, 3)},
    ("linear", "confident"): {"ce": (95.1, 100), "mse": (58.1, 30)},
    ("mlp", "gentle"): {"ce": (97.7, None), "mse": (97.7, None)},
    ("mlp", "confident"): {"ce": (96.6, 0.03), "mse": (66.7, 0.03)},
}
DIAGNOSTICS_REFERENCE = {
    "tiny_p": 864,
    "se_grad_norm": 0.019,
    "ce_grad_norm": 1.394,
    "test_loss": 32.87,
    "mean_top_p": 0.964,
}


def half_squared_error(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The reference's squared error on probabilities: ``½ Σ_c (softmax(o)_c − y_c)²``."""
    return 0.5 * losses.mse(logits, labels)


UNIT_NORMAL = nnx.initializers.normal(1.0)  # plain N(0, 1): ``init_scale`` makes it N(0, std²)


class TanhMLP(nnx.Module):
    """64 → 32 tanh → 10. The hidden weights are not named ``kernel``, so the ``init_scale`` axis
    scales the output weights only, as the protocol draws them."""

    def __init__(self, rngs: nnx.Rngs):
        self.hidden_w = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (64, HIDDEN)))
        self.hidden_b = nnx.Param(jnp.zeros(HIDDEN))
        self.out = nnx.Linear(HIDDEN, 10, kernel_init=UNIT_NORMAL, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(x @ self.hidden_w[...] + self.hidden_b[...]))


def essay_digits() -> data.Dataset:
    """Digits / 16, stratified (seed 0) into 1,077 train, 270 validation and 450 test images."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    rest_x, x_test, rest_y, y_test = train_test_split(
        x, y, test_size=450, stratify=y, random_state=0
    )
    x_train, x_val, y_train, y_val = train_test_split(
        rest_x, rest_y, test_size=270, stratify=rest_y, random_state=0
    )
    return data.from_arrays(
        x_train, y_train, x_test, y_test, num_classes=10, name="digits/16", x_val=x_val, y_val=y_val
    )


def make(model: str) -> models.Model:
    """Softmax regression or the tanh MLP, output weights N(0, 1) before ``init_scale``."""
    if model == "linear":
        build = lambda rngs: nnx.Linear(64, 10, kernel_init=UNIT_NORMAL, rngs=rngs)
        return models.from_nnx(build, name="linear")
    return models.from_nnx(TanhMLP, name="mlp")


def choose(records: list[dict], start_scale: float, loss: str, seeds: int) -> dict:
    """The protocol's choice for one (start, loss): best mean validation accuracy over seeds 0–2
    (ties to the smaller rate), then test accuracy over every seed at that rate."""
    mine = [c for c in records if c["init_scale"] == start_scale and c["loss"] == loss]
    by_lr: dict[float, list[dict]] = {}
    for c in mine:
        by_lr.setdefault(c["learning_rate"], []).append(c)
    val = {
        lr: np.mean(
            [
                np.nan if c["final"]["val_accuracy"] is None else c["final"]["val_accuracy"]
                for c in runs
                if c["seed"] in SELECT_SEEDS[:seeds]
            ]
        )
        for lr, runs in by_lr.items()
    }
    finite = {lr: v for lr, v in val.items() if np.isfinite(v)}
    if not finite:
        return {"learning_rate": None}
    lr = min(finite, key=lambda r: (-finite[r], r))
    runs = by_lr[lr]
    accs = [100 * (c["final"]["test_accuracy"] or 0.0) for c in runs]
    curve = np.mean(
        [[np.nan if v is None else v for v in c["curves"]["test_accuracy"]] for c in runs], axis=0
    )
    return {
        "learning_rate": lr,
        "val_accuracy_mean": 100 * finite[lr],
        "test_accuracy_mean": float(np.mean(accs)),
        "test_accuracy_std": float(np.std(accs)),
        "diverged_seeds": sum(c["diverged"] for c in runs),
        "curve_step": runs[0]["curves"]["step"],
        "curve_accuracy": curve.tolist(),
    }


def diagnostics(dataset: data.Dataset, seeds: int) -> dict:
    """The confident start of softmax regression, averaged over seeds: training digits with
    p_true < 1e-8, mean ‖∂L/∂z‖ on those for ½ squared error and CE, test CE, mean top p."""
    model, scale = make("linear"), STDS["confident"]
    x, y = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    out = []
    for seed in range(seeds):  # the engine's init key of each seed
        params = models.scale_kernels(
            model.init(jax.random.fold_in(jax.random.key(seed), 0)), scale
        )
        logits = model.apply(params, x)
        p_true = jnp.take_along_axis(jax.nn.softmax(logits), y[:, None], -1)[:, 0]
        tiny = p_true < 1e-8
        norm = lambda fn, logits=logits: jnp.linalg.norm(
            jax.vmap(jax.grad(lambda o, t: fn(o[None], t[None])[0]))(logits, y), axis=-1
        )
        test_logits = model.apply(params, jnp.asarray(dataset.x_test))
        out.append(
            {
                "tiny_p": int(tiny.sum()),
                "se_grad_norm": float(norm(half_squared_error)[tiny].mean()),
                "ce_grad_norm": float(norm(losses.cross_entropy)[tiny].mean()),
                "test_loss": float(
                    losses.cross_entropy(test_logits, jnp.asarray(dataset.y_test)).mean()
                ),
                "mean_top_p": float(jax.nn.softmax(test_logits).max(-1).mean()),
            }
        )
    return {k: float(np.mean([o[k] for o in out])) for k in out[0]}


def run(
    model_names: Sequence[str],
    lrs: tuple[float, ...],
    seeds: int,
    epochs: int,
    workdir: pathlib.Path,
    progress=None,
) -> list[dict]:
    """One grid per model; a row per (model, start, loss) with the protocol's choice."""
    dataset = essay_digits()
    steps = epochs * (dataset.x_train.shape[0] // BATCH)
    rows = []
    for name in model_names:
        model, scales = make(name), STDS
        document = runner.run_grid(
            model,
            dataset,
            losses=("ce", half_squared_error),
            learning_rates=lrs,
            seeds=tuple(range(seeds)),
            axes={"init_scale": tuple(scales.values())},
            steps=steps,
            batch_size=BATCH,
            eval_every=max(steps // 10, 1),
            workdir=workdir / name,
        )
        for start, scale in scales.items():
            for loss, ref_loss in LOSS_NAMES.items():
                ref, ref_lr = REFERENCE.get((name, start), {}).get(ref_loss, (None, None))
                rows.append(
                    {
                        "model": name,
                        "start": start,
                        "loss": ref_loss,
                        "init_scale": scale,
                        "reference": ref,
                        "reference_lr": ref_lr,
                        **choose(document["configs"], scale, loss, seeds),
                    }
                )
        if progress:
            progress(name)
    return rows


def figure(rows: list[dict], path: pathlib.Path) -> None:
    keys = sorted({(r["model"], r["start"]) for r in rows}, key=lambda k: (k[0], k[1] != "gentle"))
    fig, axes = plt.subplots(
        1, len(keys), figsize=(4.2 * len(keys), 3.6), sharey=True, squeeze=False
    )
    for ax, (model, start) in zip(axes[0], keys, strict=True):
        for r in rows:
            if (r["model"], r["start"]) == (model, start) and r.get("curve_step"):
                ax.plot(
                    r["curve_step"],
                    100 * np.asarray(r["curve_accuracy"]),
                    label=f"{r['loss']} (lr {r['learning_rate']:.3g})",
                )
        ax.set_title(f"{model}, {start} start (std {STDS[start]})")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("test accuracy (%), mean over seeds")
    fig.tight_layout()
    plots.save(fig, path)


def table(rows: list[dict]) -> str:
    lines = [
        "| model | start | loss | lr (val) | test accuracy (%) | reference (%) |",
        "|---|---|---|---:|---:|---:|",
    ]
    return "\n".join(lines + [confident_start_row(r) for r in rows])


def main(argv: Sequence[str]) -> None:
    del argv
    try:
        lrs = numbers("lrs", FLAGS.lrs)
        seeds = number("seeds", FLAGS.seeds, int, minimum=1)
        epochs = number("epochs", FLAGS.epochs, int, minimum=1)
        for model in FLAGS.models:
            if model not in ("linear", "mlp"):
                raise FlagError("models", f"unknown model {model!r}; expected linear and/or mlp")
        workdir = pathlib.Path(FLAGS.workdir)
        rows = run(
            FLAGS.models,
            lrs,
            seeds,
            epochs,
            workdir,
            progress=lambda m: print(f"done: {m}", flush=True),
        )
        diag = diagnostics(essay_digits(), seeds)
    except FlagError as e:
        fail(str(e))
    except ValueError as e:
        fail(f"--lrs: {e}")
    print(table(rows))
    print("\nconfident start of softmax regression (mean over seeds; reference in brackets):")
    for k, v in diag.items():
        print(f"  {k}: {v:.4g}  [{DIAGNOSTICS_REFERENCE[k]}]")
    figure(rows, workdir / "confident_start.png")
    atomic_write_json(
        workdir / "confident_start.json",
        {
            "rows": rows,
            "diagnostics": diag,
            "diagnostics_reference": DIAGNOSTICS_REFERENCE,
            "epochs": epochs,
            "seeds": seeds,
            "learning_rates": list(lrs),
        },
    )
    print(f"wrote {workdir}/confident_start.png and confident_start.json")


def command() -> None:
    """The console command (pyproject.toml's ``[project.scripts]``)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    command()
