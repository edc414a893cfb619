"""Matplotlib figures of sweep results (Agg backend: no display needed)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from softcls_jax.files import atomic_write
from softcls_jax.results import axis_names, by_loss_and_lr


def save(fig: plt.Figure, path: str | os.PathLike) -> None:
    """Saves ``fig`` as PNG atomically (:func:`softcls_jax.files.atomic_write`) and closes it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format="png")
    plt.close(fig)
    atomic_write(path, buffer.getvalue())


def _values(runs: list[dict], metric: str) -> np.ndarray:
    return np.array(
        [np.nan if r["final"][metric] is None else r["final"][metric] for r in runs], float
    )


def accuracy_vs_lr(records: Sequence[dict], path: str | os.PathLike, on: str = "val") -> None:
    """Final test accuracy against learning rate, one line per loss (mean ± std over seeds)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for loss, by_lr in by_loss_and_lr(records, on).items():
        lrs = sorted(by_lr)
        accs = [_values(by_lr[lr], "test_accuracy") for lr in lrs]
        mean = np.array([np.nanmean(a) if np.isfinite(a).any() else np.nan for a in accs])
        std = np.array([np.nanstd(a) if np.isfinite(a).any() else np.nan for a in accs])
        ax.errorbar(lrs, 100 * mean, yerr=100 * std, marker="o", capsize=3, label=loss)
        diverged = [lr for lr in lrs if any(r["diverged"] for r in by_lr[lr])]
        if diverged:
            ax.plot(diverged, [0] * len(diverged), "x", color="red")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final test accuracy (%)")
    others = [a for a in axis_names(records) if a != "learning_rate"]
    ax.set_title(
        "Final test accuracy by loss (x: diverged)"
        + (f"\n{', '.join(others)} at their best on {on} per point" if others else ""),
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save(fig, path)


def learning_curves(
    records: Sequence[dict],
    path: str | os.PathLike,
    metric: str = "test_accuracy",
    on: str = "val",
) -> None:
    """``metric`` against step, one panel per loss, one line per learning rate (seed 0 of each)."""
    grouped = by_loss_and_lr(records, on)
    fig, axes = plt.subplots(
        1, len(grouped), figsize=(5 * len(grouped), 3.8), squeeze=False, sharey=True
    )
    for ax, (loss, by_lr) in zip(axes[0], grouped.items(), strict=True):
        lrs = sorted(by_lr)
        colors = plt.cm.viridis(np.linspace(0, 0.9, len(lrs)))
        for lr, color in zip(lrs, colors, strict=True):
            run = min(by_lr[lr], key=lambda r: r["seed"])
            ys = np.array([np.nan if v is None else v for v in run["curves"][metric]], float)
            ax.plot(run["curves"]["step"], ys, color=color, label=f"{lr:.3g}")
        ax.set_title(loss)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(metric.replace("_", " "))
    others = [a for a in axis_names(records) if a != "learning_rate"]
    if others:
        fig.suptitle(f"{', '.join(others)} at their best on {on} per learning rate", fontsize=9)
    axes[0, -1].legend(title="learning rate", fontsize=7)
    fig.tight_layout()
    save(fig, path)
