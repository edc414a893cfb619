"""Temperature scaling of a trained grid: per config, fit ``T`` on validation, measure test before/after.

A calibrated model is right half the time among the samples it predicts with confidence 0.5 (C14).
Guo et al. (2017) fit one temperature per model by minimising validation NLL
(:func:`softcls_jax.metrics.fit_temperature`) and report test ECE before and after; dividing logits by
``T`` keeps their argmax, so accuracy cannot change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from softcls_jax import metrics
from softcls_jax.engine import Layout
from softcls_jax.models import Model

MAX_TEMPERATURE = 100.0  # fit_temperature's search interval is [0.01, MAX_TEMPERATURE]
MIN_TEMPERATURE = 0.01


def calibrate(
    model: Model,
    params: Any,
    layout: Layout,
    records: Sequence[dict],
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    keep: Sequence[bool] | None = None,
) -> tuple[list[dict], dict[str, tuple[metrics.ReliabilityBins, metrics.ReliabilityBins]]]:
    """Fits ``T`` per config on ``(x_val, y_val)`` and measures the test split before and after.

    Args:
      model: the trained model.
      params: the grid's final parameters, leaves ``(S, K, ...)`` (:class:`softcls_jax.runner.Run`).
      layout: the grid's layout; ``records``: its results records, in ``layout.configs()`` order.
      x_val, y_val, x_test, y_test: validation (fits T) and test (reports) arrays.
      keep: which configs to calibrate (default: all); the others are skipped.

    Returns:
      ``(rows, bins)``: one row per kept config (loss, seed, learning rate, T, whether T hit the
      search bound, and test accuracy / ECE / NLL before and after; ``diverged`` configs get only
      their ids), and per loss the reliability bins ``(before, after)`` of its first kept seed.
    """
    logits_of = jax.jit(jax.vmap(jax.vmap(model.apply, (0, None)), (0, None)))
    val_logits = logits_of(params, jnp.asarray(x_val))  # (S, K, N, C)
    test_logits = logits_of(params, jnp.asarray(x_test))
    y_val, y_test = jnp.asarray(y_val), jnp.asarray(y_test)
    rows, bins = [], {}
    configs = list(zip(np.ndindex(*layout.shape), layout.configs(), records, strict=True))
    for i, ((s, k), config, record) in enumerate(configs):
        if keep is not None and not keep[i]:
            continue
        ids = {"loss": config.loss, "seed": config.seed, "learning_rate": config.learning_rate}
        if record["diverged"]:
            rows.append({**ids, "diverged": True})
            continue
        before = test_logits[s, k]
        t = float(
            metrics.fit_temperature(val_logits[s, k], y_val, MIN_TEMPERATURE, MAX_TEMPERATURE)
        )
        after = before / t
        rows.append(
            {
                **ids,
                "diverged": False,
                "temperature": t,
                "temperature_at_bound": not MIN_TEMPERATURE * 1.01 < t < MAX_TEMPERATURE / 1.01,
                "accuracy_before": float(metrics.accuracy(before, y_test)),
                "accuracy_after": float(metrics.accuracy(after, y_test)),
                "ece_before": float(metrics.ece(before, y_test)),
                "ece_after": float(metrics.ece(after, y_test)),
                "nll_before": float(metrics.nll(before, y_test)),
                "nll_after": float(metrics.nll(after, y_test)),
            }
        )
        if config.loss not in bins:
            bins[config.loss] = (
                metrics.reliability_bins(before, y_test),
                metrics.reliability_bins(after, y_test),
            )
    return rows, bins


SUMMARY_KEYS = (
    "accuracy_before",
    "accuracy_after",
    "ece_before",
    "ece_after",
    "nll_before",
    "nll_after",
    "temperature",
)


def summarise(rows: Sequence[dict], by: Sequence[str] = ("loss",)) -> list[dict]:
    """Rows grouped by the keys ``by``: the mean (and std of ECE) over the group's seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[b] for b in by), []).append(r)
    out = []
    for key, group in groups.items():
        ok = [r for r in group if not r["diverged"]]
        head = dict(zip(by, key, strict=True))
        if not ok:
            out.append({**head, "diverged": True})
            continue
        mean = {k: float(np.mean([r[k] for r in ok])) for k in SUMMARY_KEYS}
        out.append(
            {
                **head,
                "models": len(ok),
                "diverged_models": len(group) - len(ok),
                **mean,
                "ece_before_std": float(np.std([r["ece_before"] for r in ok])),
                "temperature_at_bound": any(r["temperature_at_bound"] for r in ok),
            }
        )
    return out
