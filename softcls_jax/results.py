"""Sweep results: one JSON schema, atomic writes, CSV and a Markdown summary.

``results.json`` holds ``settings`` (what was asked), ``environment`` (versions, devices), ``configs``
(per config: its settings, final metrics, diverged flag and step, curves) and ``timing``. Everything
but ``timing`` is a deterministic function of the settings, so two runs of the same command give
identical files apart from that section. NaN (a diverged config's metrics) is written as ``null``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
from collections.abc import Sequence
from typing import Any

import numpy as np

from softcls_jax.engine import METRICS, Grid
from softcls_jax.files import atomic_write

SCHEMA = "softcls-jax/sweep/v1"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (:func:`softcls_jax.files.atomic_write`)."""
    atomic_write(path, text)


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(_clean(data), indent=1, allow_nan=False) + "\n")


def environment() -> dict[str, Any]:
    """Versions and devices: what a reader needs to reproduce the numbers."""
    import flax
    import jax
    import jaxlib
    import optax

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d.device_kind) for d in jax.devices()],
        "process_count": jax.process_count(),
    }


def config_records(grid: Grid, history: Sequence[dict], diverged_at: np.ndarray) -> list[dict]:
    """Per config: settings, final metrics, divergence and curves, in ``(S, K)`` order."""
    s_count, k_count = grid.shape
    steps = [int(h["step"]) for h in history]
    records = []
    for (s, k), config in zip(np.ndindex(s_count, k_count), grid.configs(), strict=True):
        curves = {"step": steps}
        for name in METRICS:
            curves[name] = [float(h[name][s, k]) for h in history]
        step = int(diverged_at[s, k])
        records.append(
            {
                "loss": config.loss,
                "learning_rate": config.learning_rate,
                "seed": config.seed,
                "diverged": step >= 0,
                "diverged_step": step if step >= 0 else None,
                "final": {name: curves[name][-1] for name in METRICS},
                "curves": curves,
            }
        )
    return records


def build(
    settings: dict[str, Any], grid: Grid, history: Sequence[dict], diverged_at: np.ndarray,
    timing: dict[str, float],
) -> dict[str, Any]:  # fmt: skip
    """The ``results.json`` document."""
    return {
        "schema": SCHEMA,
        "settings": settings,
        "environment": environment(),
        "configs": config_records(grid, history, diverged_at),
        "timing": timing,
    }


def to_csv(records: Sequence[dict]) -> str:
    """One row per config: settings, divergence, final metrics."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["loss", "learning_rate", "seed", "diverged", "diverged_step", *METRICS])
    for r in records:
        final = [_fmt(r["final"][m]) for m in METRICS]
        step = "" if r["diverged_step"] is None else r["diverged_step"]
        writer.writerow(
            [r["loss"], repr(r["learning_rate"]), r["seed"], r["diverged"], step, *final]
        )
    return out.getvalue()


def _fmt(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"


def by_loss_and_lr(records: Sequence[dict]) -> dict[str, dict[float, list[dict]]]:
    """Config records grouped as ``{loss: {learning_rate: [one record per seed]}}``, losses in order."""
    out: dict[str, dict[float, list[dict]]] = {}
    for r in records:
        out.setdefault(r["loss"], {}).setdefault(r["learning_rate"], []).append(r)
    return out


def _cell(runs: list[dict], metric: str = "test_accuracy") -> str:
    values = [
        r["final"][metric] for r in runs if not r["diverged"] and r["final"][metric] is not None
    ]
    diverged = sum(r["diverged"] for r in runs)
    if not values:
        return "diverged"
    text = f"{100 * np.mean(values):.1f}"
    if len(values) > 1:
        text += f" ± {100 * np.std(values):.1f}"
    if diverged:
        text += f" ({diverged} div.)"
    return text


def accuracy_table(records: Sequence[dict]) -> str:
    """Markdown table: learning rate × loss of final test accuracy (%, mean ± std over seeds)."""
    grouped = by_loss_and_lr(records)
    losses, lrs = list(grouped), sorted({r["learning_rate"] for r in records})
    lines = ["| learning rate | " + " | ".join(losses) + " |", "|---:|" + "---:|" * len(losses)]
    for lr in lrs:
        row = [_cell(grouped[loss].get(lr, [])) for loss in losses]
        lines.append(f"| {lr:.3g} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def best_per_loss(records: Sequence[dict]) -> list[dict]:
    """For each loss, the learning rate with the best mean final test accuracy over seeds."""
    best = []
    for loss, by_lr in by_loss_and_lr(records).items():
        scored = []
        for lr in sorted(by_lr):
            runs = [r for r in by_lr[lr] if not r["diverged"]]
            accs = [r["final"]["test_accuracy"] for r in runs]
            if accs and all(a is not None for a in accs):
                scored.append((float(np.mean(accs)), lr, runs))
        if scored:
            acc, lr, runs = max(scored, key=lambda t: t[0])
            nll = float(np.mean([r["final"]["test_nll"] for r in runs]))
            ece = float(np.mean([r["final"]["test_ece"] for r in runs]))
            best.append({"loss": loss, "learning_rate": lr, "test_accuracy": acc,
                         "test_nll": nll, "test_ece": ece, "seeds": len(runs)})  # fmt: skip
    return best


def summary_markdown(document: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """``summary.md``: settings, the accuracy table, the best config per loss, divergences, plots."""
    settings, records = document["settings"], document["configs"]
    lines = ["# Sweep summary", ""]
    lines.append(", ".join(f"`{k}={v}`" for k, v in settings.items()))
    lines += [
        "",
        "## Final test accuracy (%), mean ± std over seeds",
        "",
        accuracy_table(records),
        "",
    ]
    lines += ["## Best learning rate per loss", "", "| loss | learning rate | test accuracy | test NLL | test ECE |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    for b in best_per_loss(records):
        lines.append(
            f"| {b['loss']} | {b['learning_rate']:.3g} | {100 * b['test_accuracy']:.2f} % | "
            f"{b['test_nll']:.4f} | {b['test_ece']:.4f} |"
        )
    diverged = [r for r in records if r["diverged"]]
    lines += ["", f"## Diverged: {len(diverged)} of {len(records)} configs", ""]
    for r in diverged:
        lines.append(
            f"- {r['loss']}, lr={r['learning_rate']:.3g}, seed={r['seed']}: non-finite at step "
            f"{r['diverged_step']}"
        )
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    timing = document.get("timing", {})
    if timing:
        lines += ["", "## Timing", "", ", ".join(f"{k}: {v:.3g}" for k, v in timing.items())]
    return "\n".join(lines) + "\n"
