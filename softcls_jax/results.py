"""Sweep results: one JSON schema, atomic writes, CSV and a Markdown summary.

``results.json`` holds ``settings`` (what was asked), ``axes`` (the grid's hyperparameter axes),
``environment`` (versions, devices), ``configs`` (per config: its loss, every axis value, seed, final
metrics, diverged flag and step, curves) and ``timing``. Everything
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

from softcls_jax.engine import METRICS, Layout
from softcls_jax.files import atomic_write

SCHEMA = "softcls-jax/sweep/v2"


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


def config_records(layout: Layout, history: Sequence[dict], diverged_at: np.ndarray) -> list[dict]:
    """Per config: loss, axis values, seed, final metrics, divergence and curves, in ``(S, K)``
    order."""
    steps = [int(h["step"]) for h in history]
    records = []
    for (s, k), config in zip(np.ndindex(*layout.shape), layout.configs(), strict=True):
        curves = {"step": steps}
        for name in METRICS:
            curves[name] = [float(h[name][s, k]) for h in history]
        step = int(diverged_at[s, k])
        records.append(
            {
                **config.as_dict(),
                "diverged": step >= 0,
                "diverged_step": step if step >= 0 else None,
                "final": {name: curves[name][-1] for name in METRICS},
                "curves": curves,
            }
        )
    return records


def build(
    settings: dict[str, Any],
    layout: Layout,
    history: Sequence[dict],
    diverged_at: np.ndarray,
    timing: dict[str, float],
    select_on: str = "val",
) -> dict[str, Any]:
    """The ``results.json`` document; its ``selection`` is made on split ``select_on``."""
    records = config_records(layout, history, diverged_at)
    return {
        "schema": SCHEMA,
        "settings": settings,
        "axes": list(layout.axis_names),
        "environment": environment(),
        "configs": records,
        "selection": selection(records, select_on),
        "timing": timing,
    }


def axis_names(records: Sequence[dict]) -> list[str]:
    """The grid axes of these records (learning rate first): their keys between loss and seed."""
    if not records:
        return []
    keys = list(records[0])
    return keys[keys.index("loss") + 1 : keys.index("seed")]


def to_csv(records: Sequence[dict]) -> str:
    """One row per config: loss, a column per axis, seed, divergence, final metrics."""
    axes = axis_names(records)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["loss", *axes, "seed", "diverged", "diverged_step", *METRICS])
    for r in records:
        final = [_fmt(r["final"][m]) for m in METRICS]
        step = "" if r["diverged_step"] is None else r["diverged_step"]
        values = [repr(r[a]) for a in axes]
        writer.writerow([r["loss"], *values, r["seed"], r["diverged"], step, *final])
    return out.getvalue()


def _fmt(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"


def by_setting(records: Sequence[dict]) -> dict[tuple, list[dict]]:
    """Config records grouped by setting (loss and every axis value), one record per seed."""
    axes = axis_names(records)
    out: dict[tuple, list[dict]] = {}
    for r in records:
        out.setdefault((r["loss"], *(r[a] for a in axes)), []).append(r)
    return out


def mean_metric(runs: Sequence[dict], metric: str = "test_accuracy") -> float | None:
    """The mean of ``metric`` over seeds, or None if any seed diverged or lacks it."""
    values = [r["final"][metric] for r in runs]
    if not runs or any(r["diverged"] for r in runs) or any(v is None for v in values):
        return None
    return float(np.mean(values))


SPLITS = ("val", "test")


def selection_rule(on: str = "val") -> str:
    """The rule, in words, by which a setting is chosen on split ``on``."""
    split = "validation" if on == "val" else "TEST"
    return (
        f"the highest mean {split} accuracy over seeds (ties: the lower mean {split} NLL, then "
        "the smaller learning rate); settings with a diverged seed are not candidates"
    )


def _score(runs: Sequence[dict], on: str) -> tuple | None:
    """The ranking key of a setting on split ``on`` (higher is better), or None."""
    if on not in SPLITS:
        raise ValueError(f"selection split must be one of {SPLITS}, got {on!r}")
    accuracy, nll = mean_metric(runs, f"{on}_accuracy"), mean_metric(runs, f"{on}_nll")
    if accuracy is None or nll is None:
        return None
    return accuracy, -nll, -runs[0]["learning_rate"]


def _best(settings: list[list[dict]], on: str) -> list[dict]:
    """The runs of the best setting on split ``on`` (:func:`selection_rule`); the first setting if
    none is a candidate."""
    scored = [(score, i) for i, runs in enumerate(settings) if (score := _score(runs, on))]
    return settings[max(scored, key=lambda t: (t[0], -t[1]))[1]] if scored else settings[0]


def by_loss_and(
    records: Sequence[dict], axis: str, on: str = "val"
) -> dict[str, dict[float, list[dict]]]:
    """``{loss: {value of axis: [one record per seed]}}``, losses in order. With other axes, each
    (loss, value) holds the runs of its best setting of the other axes on split ``on``."""
    grouped: dict[str, dict[float, list[list[dict]]]] = {}
    for key, runs in by_setting(records).items():
        grouped.setdefault(key[0], {}).setdefault(runs[0][axis], []).append(runs)
    return {loss: {v: _best(s, on) for v, s in by_v.items()} for loss, by_v in grouped.items()}


def by_loss_and_lr(records: Sequence[dict], on: str = "val") -> dict[str, dict[float, list[dict]]]:
    """``{loss: {learning_rate: [one record per seed]}}``: :func:`by_loss_and` the learning rate."""
    return by_loss_and(records, "learning_rate", on)


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


def accuracy_table(records: Sequence[dict], on: str = "val") -> str:
    """Markdown table: learning rate × loss of final test accuracy (%, mean ± std over seeds)."""
    return axis_table(records, "learning_rate", on, label="learning rate")


def best_per_loss(records: Sequence[dict], on: str = "val") -> list[dict]:
    """For each loss, the setting (every axis value) chosen on split ``on`` by
    :func:`selection_rule`, with its mean validation and test metrics over seeds. A loss with no
    candidate (every setting diverged, or no such split) is left out.

    The test metrics are only reported: with ``on="val"`` nothing here looks at the test set.
    """
    axes, best = axis_names(records), []
    grouped: dict[str, list[list[dict]]] = {}
    for key, runs in by_setting(records).items():
        grouped.setdefault(key[0], []).append(runs)
    for loss, settings in grouped.items():
        runs = _best(settings, on)
        if _score(runs, on) is None:
            continue
        metrics = ("val_accuracy", "val_nll", "test_accuracy", "test_nll", "test_ece")
        best.append(
            {
                "loss": loss,
                **{a: runs[0][a] for a in axes},
                **{m: mean_metric(runs, m) for m in metrics},
                "seeds": len(runs),
            }
        )
    return best


def selection(records: Sequence[dict], on: str = "val") -> dict[str, Any]:
    """results.json's ``selection`` section: the rule, the split, and per loss its choice."""
    return {"on": on, "rule": selection_rule(on), "per_loss": best_per_loss(records, on)}


def axis_table(
    records: Sequence[dict], axis: str, on: str = "val", label: str | None = None
) -> str:
    """Markdown table: ``axis`` value × loss of final test accuracy, the other axes at their best."""
    by_value = by_loss_and(records, axis, on)
    losses = list(by_value)
    values = sorted({r[axis] for r in records})
    lines = [f"| {label or axis} | " + " | ".join(losses) + " |", "|---:|" + "---:|" * len(losses)]
    for v in values:
        row = [_cell(by_value[loss][v]) if v in by_value[loss] else "" for loss in losses]
        lines.append(f"| {v:.3g} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def summary_markdown(document: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """``summary.md``: settings, the accuracy table, the best config per loss, divergences, plots."""
    settings, records = document["settings"], document["configs"]
    on = document["selection"]["on"]
    lines = ["# Sweep summary", ""]
    lines.append(", ".join(f"`{k}={v}`" for k, v in settings.items()))
    axes = axis_names(records)
    others = [a for a in axes if a != "learning_rate"]
    split = "validation" if on == "val" else "TEST"
    at_best = f" ({', '.join(others)} at their best on {split} per cell)" if others else ""
    if on == "test":
        lines += [
            "",
            '> **Selected on the TEST split** (`select_on=test`): every "best" below is '
            "optimistic; hold out a validation split for an honest choice.",
        ]
    lines += [
        "",
        f"## Final test accuracy (%), mean ± std over seeds{at_best}",
        "",
        accuracy_table(records, on),
        "",
    ]
    for axis in others:
        lines += [
            f"## Final test accuracy (%) by {axis} (the other axes at their best on {split})",
            "",
            axis_table(records, axis, on),
            "",
        ]
    names = ["learning rate" if a == "learning_rate" else a for a in axes]
    title = "Best learning rate per loss" if not others else "Best setting per loss"
    lines += [
        f"## {title}",
        "",
        f"Chosen on {split}: {selection_rule(on)}. Test metrics are "
        "reported, never used to choose.",
        "",
        "| loss | " + " | ".join(names) + " | val accuracy | test accuracy | test NLL | test ECE |",
        "|---|" + "---:|" * (len(axes) + 4),
    ]
    for b in document["selection"]["per_loss"]:
        values = " | ".join(f"{b[a]:.3g}" for a in axes)
        val = "–" if b["val_accuracy"] is None else f"{100 * b['val_accuracy']:.2f} %"
        lines.append(
            f"| {b['loss']} | {values} | {val} | {100 * b['test_accuracy']:.2f} % | "
            f"{b['test_nll']:.4f} | {b['test_ece']:.4f} |"
        )
    diverged = [r for r in records if r["diverged"]]
    lines += ["", f"## Diverged: {len(diverged)} of {len(records)} configs", ""]
    for r in diverged:
        values = ", ".join(f"{a}={r[a]:.3g}" for a in axes).replace("learning_rate=", "lr=")
        lines.append(
            f"- {r['loss']}, {values}, seed={r['seed']}: non-finite at step {r['diverged_step']}"
        )
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    timing = document.get("timing", {})
    if timing:
        shown = (
            f"{k}: {v:.3g}" if isinstance(v, (int, float)) else f"{k}: {v}"
            for k, v in timing.items()
            if v is not None
        )
    lines += ["", "## Timing", "", ", ".join(shown)]
    return "\n".join(lines) + "\n"
