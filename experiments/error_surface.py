r"""The 3-class error surface of CE and MSE (claim C13), as in the lecture.

  python -m experiments.error_surface
  python -m experiments.error_surface --z3=-1000 --points=201 --workdir=runs/error_surface

Target class 1 of 3 (index 0); logits z1, z2 over [-range, range]; z3 fixed very low. Plots the CE and
MSE surfaces side by side on the same axes, and maps of the gradient norm ‖∂L/∂z‖. Prints the gradient
norm of each loss in the wrong-but-confident corner (z1 = -range, z2 = +range) and at the optimum
(z1 = +range, z2 = -range): MSE is flat exactly where the model is most wrong, CE is steep there.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from absl import app, flags

from softcls_jax import losses, plots
from softcls_jax.results import atomic_write_json

from .cli import FlagError, fail, make_workdir, number, parse_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("z3", "-1000", "The fixed logit of class 3 (the lecture uses -1000).")
flags.DEFINE_string("range", "10", "z1 and z2 run over [-range, range].")
flags.DEFINE_string("points", "201", "Grid points per axis.")
flags.DEFINE_string("workdir", "runs/error_surface", "Output directory for the PNG and JSON.")

LOSS_NAMES = ("ce", "mse")


def surfaces(z3: float, extent: float, points: int) -> dict[str, np.ndarray]:
    """Loss and gradient-norm maps over the (z1, z2) grid, target class index 0.

    Returns:
      ``{"z": (P,), "ce": (P, P), "mse": ..., "ce_grad_norm": ..., "mse_grad_norm": ...}`` with
      ``[i, j]`` at ``z2 = z[i], z1 = z[j]``.
    """
    z = jnp.linspace(-extent, extent, points)
    z1, z2 = jnp.meshgrid(z, z)
    logits = jnp.stack([z1, z2, jnp.full_like(z1, z3)], axis=-1)  # (P, P, 3)
    target = jnp.zeros(z1.shape, jnp.int32)
    out = {"z": np.asarray(z)}
    for name in LOSS_NAMES:
        fn = losses.get_loss(name)
        per_point = lambda o, y, fn=fn: fn(o[None], y[None])[0]
        value_and_grad = jax.vmap(jax.vmap(jax.value_and_grad(per_point)))
        value, grad = value_and_grad(logits, target)
        out[name] = np.asarray(value)
        out[f"{name}_grad_norm"] = np.asarray(jnp.linalg.norm(grad, axis=-1))
    return out


def corner_values(maps: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Loss and gradient norm at the wrong-but-confident corner and at the optimum."""
    last = len(maps["z"]) - 1
    corners = {"wrong_confident (z1=-r, z2=+r)": (last, 0), "optimum (z1=+r, z2=-r)": (0, last)}
    return {
        where: {
            key: float(maps[key][i, j]) for key in ("ce", "mse", "ce_grad_norm", "mse_grad_norm")
        }
        for where, (i, j) in corners.items()
    }


def figure(maps: dict[str, np.ndarray], path: pathlib.Path) -> None:
    z = maps["z"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 8.5))
    for col, name in enumerate(LOSS_NAMES):
        ax = axes[0, col]
        im = ax.contourf(z, z, maps[name], levels=30, cmap="viridis")
        fig.colorbar(im, ax=ax)
        ax.set_title(f"{name.upper()} loss, target class 1")
        ax = axes[1, col]
        norm = np.log10(np.maximum(maps[f"{name}_grad_norm"], 1e-12))
        im = ax.contourf(z, z, norm, levels=np.linspace(-12, 1, 27), cmap="magma", extend="min")
        fig.colorbar(im, ax=ax, label="log10 ‖∂L/∂z‖")
        ax.set_title(f"{name.upper()} gradient norm")
    for ax in axes.ravel():
        ax.set_xlabel("z1 (target logit)")
        ax.set_ylabel("z2")
        ax.plot([-z[-1]], [z[-1]], "rx", ms=10)
        ax.annotate(
            "wrong & confident",
            (-z[-1], z[-1]),
            color="red",
            xytext=(5, -15),
            textcoords="offset points",
            fontsize=8,
        )
    fig.suptitle(
        "3-class error surface: CE is steep where the model is confidently wrong, MSE is flat"
    )
    fig.tight_layout()
    plots.save(fig, path)


def main(argv: Sequence[str]) -> None:
    del argv
    try:
        z3 = number("z3", FLAGS.z3)
        extent = number("range", FLAGS["range"].value)
        points = number("points", FLAGS.points, int, minimum=3)
        if extent <= 0:
            raise FlagError("range", f"must be > 0, got {extent}")
        workdir = make_workdir(FLAGS.workdir)
    except FlagError as e:
        fail(str(e))
    maps = surfaces(z3, extent, points)
    corners = corner_values(maps)
    print(f"{'where':<32} {'CE':>10} {'MSE':>10} {'|grad CE|':>12} {'|grad MSE|':>12}")
    for where, v in corners.items():
        print(
            f"{where:<32} {v['ce']:>10.4g} {v['mse']:>10.4g} {v['ce_grad_norm']:>12.4g} {v['mse_grad_norm']:>12.4g}"
        )
    figure(maps, workdir / "error_surface.png")
    atomic_write_json(
        workdir / "error_surface.json",
        {"settings": {"z3": z3, "range": extent, "points": points}, "corners": corners},
    )
    print(f"wrote {workdir}/error_surface.png and error_surface.json")


def command() -> None:
    """The console command (pyproject.toml's ``[project.scripts]``)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    command()
