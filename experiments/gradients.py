r"""How big is ∂L/∂z as the true-class probability ŷ_p goes from ~0 to 1? (claim C11)

  python -m experiments.gradients
  python -m experiments.gradients --num_classes=10 --workdir=runs/gradients

The logits put probability ŷ_p on the true class and spread the rest evenly over the other C - 1. For
CE and MSE it plots the full gradient norm ‖∂L/∂z‖ (autodiff, checked against the closed forms) and
the seeds' target-path terms |ŷ_p - 1| and |-2 ŷ_p (1 - ŷ_p)²|, on log axes: CE's push never vanishes
when the model is wrong; MSE's goes to 0 as ŷ_p → 0, so a confidently wrong model gets no update.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from absl import app, flags

from softcls_jax import gradients, losses, plots
from softcls_jax.results import atomic_write_json

from .cli import FlagError, fail, make_workdir, number, parse_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("num_classes", "3", "Number of classes C (>= 2).")
flags.DEFINE_string("points", "400", "Number of ŷ_p values, log-spaced in the logit of ŷ_p.")
flags.DEFINE_string("workdir", "runs/gradients", "Output directory for the PNG and JSON.")

TABLE_AT = (1e-4, 1e-2, 0.1, 0.5, 0.9, 0.99)


def logits_for(p_target: jax.Array, num_classes: int) -> jax.Array:
    """Logits whose softmax is ``[p, (1-p)/(C-1), …]``: ``(N, C)`` for ``N`` probabilities."""
    rest = jnp.log((1 - p_target) / (num_classes - 1))
    return jnp.concatenate(
        [jnp.log(p_target)[:, None], jnp.tile(rest[:, None], (1, num_classes - 1))], 1
    )


def gradient_sizes(p_target: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Full gradient norms (autodiff) and target-path terms; float64 for the tiny probabilities."""
    with jax.enable_x64(True):
        p = jnp.asarray(p_target, jnp.float64)
        logits = logits_for(p, num_classes)
        labels = jnp.zeros(len(p), jnp.int32)
        out = {"p_target": np.asarray(p)}
        for name, closed in (("ce", gradients.ce_grad), ("mse", gradients.mse_grad)):
            fn = losses.get_loss(name)
            auto = jax.grad(lambda o, fn=fn: fn(o, labels).sum())(logits)
            # C8 holds here too
            np.testing.assert_allclose(auto, closed(logits, labels), atol=1e-12)
            out[f"{name}_full"] = np.asarray(jnp.linalg.norm(auto, axis=-1))
        out["ce_target_path"] = np.abs(np.asarray(gradients.ce_target_path_grad(p)))
        out["mse_target_path"] = np.abs(np.asarray(gradients.mse_target_path_grad(p)))
    return out


def figure(sizes: dict[str, np.ndarray], num_classes: int, path: pathlib.Path) -> None:
    p = sizes["p_target"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.loglog(p, sizes["ce_full"], color="C0", label="CE: ‖∂L/∂z‖")
    ax.loglog(p, sizes["ce_target_path"], "--", color="C0", label="CE target path |ŷ_p − 1|")
    ax.loglog(p, sizes["mse_full"], color="C1", label="MSE: ‖∂L/∂z‖")
    ax.loglog(p, sizes["mse_target_path"], "--", color="C1", label="MSE target path 2ŷ_p(1 − ŷ_p)²")
    ax.axvspan(p[0], 0.1, color="red", alpha=0.06)
    ax.text(1.5 * p[0], 2e-5, "confidently wrong", color="red")
    ax.set_xlabel("true-class probability ŷ_p")
    ax.set_ylabel("gradient size")
    ax.set_ylim(1e-8, 5)
    ax.set_title(f"Gradient size against confidence ({num_classes} classes)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots.save(fig, path)


def main(argv: Sequence[str]) -> None:
    del argv
    try:
        num_classes = number("num_classes", FLAGS.num_classes, int, minimum=2)
        points = number("points", FLAGS.points, int, minimum=2)
        workdir = make_workdir(FLAGS.workdir)
    except FlagError as e:
        fail(str(e))
    logit_p = np.linspace(-12, 12, points)  # p from ~6e-6 to 1 - 6e-6
    p = np.sort(np.concatenate([1 / (1 + np.exp(-logit_p)), TABLE_AT]))
    sizes = gradient_sizes(p, num_classes)
    print(f"{'ŷ_p':>8} {'CE full':>10} {'CE path':>10} {'MSE full':>10} {'MSE path':>10}")
    table = []
    for q in TABLE_AT:
        i = int(np.argmin(np.abs(sizes["p_target"] - q)))
        row = {k: float(v[i]) for k, v in sizes.items()}
        table.append(row)
        print(
            f"{q:>8g} {row['ce_full']:>10.3g} {row['ce_target_path']:>10.3g} {row['mse_full']:>10.3g} {row['mse_target_path']:>10.3g}"
        )
    figure(sizes, num_classes, workdir / "gradients.png")
    atomic_write_json(
        workdir / "gradients.json", {"settings": {"num_classes": num_classes}, "table": table}
    )
    print(f"wrote {workdir}/gradients.png and gradients.json")


def command() -> None:
    """The console command (pyproject.toml's ``[project.scripts]``)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    command()
