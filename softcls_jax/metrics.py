"""Classification metrics: predictions, accuracy, NLL, Brier score and calibration (C14, C16).

Every metric takes logits ``(N, C)`` and labels as integers ``(N,)`` or probability vectors
``(N, C)`` (their argmax is the class), and returns a scalar averaged over the ``N`` examples.
All are jit-safe: bins are accumulated with segment sums, never with Python loops over data.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from softcls_jax.labels import label_kind
from softcls_jax.losses import cross_entropy, mse

Array = jax.Array

ECE_BINS = 15  # Guo et al. (2017)


def predict(logits: Array) -> Array:
    """The hard class is the argmax of the soft class probabilities (C16).

    ``argmax softmax(o) = argmax o`` because softmax keeps the order (C3), so no softmax is needed.

    Args:
      logits: ``(..., C)``.

    Returns:
      ``(...,)`` int32 class ids.

    Example:
      >>> predict(jnp.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.2]]))
      Array([0, 1], dtype=int32)
    """
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def _class_ids(logits: Array, labels: Array) -> Array:
    if label_kind(logits, labels) == "int":
        return labels
    return jnp.argmax(labels, axis=-1)


def accuracy(logits: Array, labels: Array) -> Array:
    """Share of examples whose :func:`predict` equals the label: ``(1/N) Σ_i [argmax o_i = y_i]``.

    Example:
      >>> accuracy(jnp.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.2]]), jnp.array([0, 2]))
      Array(0.5, dtype=float32)
    """
    return jnp.mean(predict(logits) == _class_ids(logits, labels))


def nll(logits: Array, labels: Array) -> Array:
    """Negative log-likelihood of the labels, ``-(1/N) Σ_i log ŷ_{i, y_i}`` = mean cross-entropy (C6).

    Example:
      >>> print(f"{nll(jnp.log(jnp.array([[0.5, 0.5], [0.8, 0.2]])), jnp.array([0, 0])):.4f}")
      0.4581
    """
    return jnp.mean(cross_entropy(logits, labels))


def brier(logits: Array, labels: Array) -> Array:
    """Multi-class Brier score ``(1/N) Σ_i Σ_c (ŷ_ic - y_ic)²`` (the seeds' MSE, averaged).

    Example:
      >>> print(f"{brier(jnp.log(jnp.array([[0.5, 0.5], [0.8, 0.2]])), jnp.array([0, 0])):.4f}")
      0.2900
    """
    return jnp.mean(mse(logits, labels))


class ReliabilityBins(NamedTuple):
    """Per-bin statistics of a reliability diagram; bin ``b`` holds confidences in ``(lo_b, hi_b]``.

    Attributes:
      edges: ``(B + 1,)`` bin edges ``0 = e_0 < … < e_B = 1``.
      counts: ``(B,)`` number of examples per bin.
      confidence: ``(B,)`` mean max-probability per bin (0 for an empty bin).
      accuracy: ``(B,)`` accuracy per bin (0 for an empty bin).
    """

    edges: Array
    counts: Array
    confidence: Array
    accuracy: Array


def reliability_bins(logits: Array, labels: Array, num_bins: int = ECE_BINS) -> ReliabilityBins:
    """Bins examples by confidence ``max_c ŷ_c`` into ``num_bins`` equal-width bins ``(lo, hi]`` (C14).

    A calibrated model has ``accuracy ≈ confidence`` in every bin: among samples predicted with
    confidence 0.5, half are right.

    Args:
      logits: ``(N, C)``.
      labels: ``(N,)`` integer ids or ``(N, C)`` probability vectors.
      num_bins: ``B >= 1``.

    Returns:
      :class:`ReliabilityBins`.

    Example:
      >>> logits = jnp.log(jnp.array([[0.6, 0.4], [0.4, 0.6]]))  # both at confidence 0.6
      >>> bins = reliability_bins(logits, jnp.array([0, 0]), num_bins=5)
      >>> bins.counts  # 0.6 falls in (0.4, 0.6], bin 2, not (0.6, 0.8]
      Array([0., 0., 2., 0., 0.], dtype=float32)
      >>> print(f"confidence {bins.confidence[2]:.2f}, accuracy {bins.accuracy[2]:.2f}")
      confidence 0.60, accuracy 0.50
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    correct = (predict(logits) == _class_ids(logits, labels)).astype(jnp.float32)
    confidence = jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1).astype(jnp.float32)
    edges = jnp.linspace(0.0, 1.0, num_bins + 1, dtype=jnp.float32)
    # Counting the inner edges strictly below c puts c in (e_b, e_{b+1}] into bin b. (A comparison
    # against the few edges, not searchsorted's loop: the same bins, a quarter less compile time.)
    bin_ids = jnp.sum(confidence[..., None] > edges[1:-1], axis=-1)
    counts = jax.ops.segment_sum(jnp.ones_like(confidence), bin_ids, num_segments=num_bins)
    conf_sum = jax.ops.segment_sum(confidence, bin_ids, num_segments=num_bins)
    correct_sum = jax.ops.segment_sum(correct, bin_ids, num_segments=num_bins)
    safe = jnp.maximum(counts, 1.0)
    return ReliabilityBins(edges, counts, conf_sum / safe, correct_sum / safe)


def ece(logits: Array, labels: Array, num_bins: int = ECE_BINS) -> Array:
    """Expected calibration error (Guo et al. 2017), equal-width bins closed on the right (C14).

    .. math::
        \\mathrm{ECE} = \\sum_{b=1}^{B} \\frac{n_b}{N} \\left| \\mathrm{acc}_b - \\mathrm{conf}_b \\right|

    Args:
      logits: ``(N, C)``.
      labels: ``(N,)`` integer ids or ``(N, C)`` probability vectors.
      num_bins: ``B``, 15 by default.

    Returns:
      Scalar in ``[0, 1]``.

    Example:
      >>> logits = jnp.log(jnp.array([[0.6, 0.4], [0.4, 0.6]]))  # confidence 0.6, half right
      >>> print(f"{ece(logits, jnp.array([0, 0])):.4f}")  # |0.5 - 0.6|
      0.1000
    """
    bins = reliability_bins(logits, labels, num_bins)
    weights = bins.counts / jnp.sum(bins.counts)
    return jnp.sum(weights * jnp.abs(bins.accuracy - bins.confidence))


def fit_temperature(
    logits: Array, labels: Array, min_t: float = 0.05, max_t: float = 20.0, iters: int = 64
) -> Array:
    """Temperature scaling: the ``T > 0`` minimising ``NLL(logits / T)`` on held-out data.

    ``NLL(β o)`` is convex in ``β = 1/T`` (log-sum-exp of a linear function minus a linear one), hence
    unimodal in ``log T``, so a golden-section search on ``log T ∈ [log min_t, log max_t]`` finds the
    minimum. Dividing logits by ``T`` never changes the argmax, so accuracy is unchanged.

    Args:
      logits: ``(N, C)`` validation logits.
      labels: ``(N,)`` integer ids or ``(N, C)`` probability vectors.
      min_t, max_t: search interval for ``T``.
      iters: golden-section iterations (the interval shrinks by 0.618 each).

    Returns:
      Scalar temperature.

    Example:
      >>> logits, labels = jnp.array([[2.0, 0.0]] * 4), jnp.array([0, 0, 0, 1])  # 75 % right
      >>> t = fit_temperature(logits, labels)  # softmax(2/T) = 0.75: T = 2 / log 3
      >>> print(f"T = {t:.2f}, confidence {jax.nn.softmax(logits / t)[0, 0]:.2f}")
      T = 1.82, confidence 0.75
    """
    if not 0.0 < min_t < max_t:
        raise ValueError(f"need 0 < min_t < max_t, got {min_t}, {max_t}")
    label_kind(logits, labels)
    objective = lambda log_t: nll(logits / jnp.exp(log_t), labels)
    ratio = (jnp.sqrt(5.0) - 1.0) / 2.0

    def body(_, interval):
        lo, hi = interval
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        keep_left = objective(a) < objective(b)
        return jnp.where(keep_left, lo, a), jnp.where(keep_left, b, hi)

    start = (jnp.log(jnp.float32(min_t)), jnp.log(jnp.float32(max_t)))
    lo, hi = jax.lax.fori_loop(0, iters, body, start)
    return jnp.exp((lo + hi) / 2.0)
