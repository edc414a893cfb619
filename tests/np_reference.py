"""Plain numpy implementations of every loss and metric: the independent reference for the tests."""

from __future__ import annotations

import itertools

import numpy as np


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes)[labels]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return -(targets * np.log(softmax(logits))).sum(axis=-1)


def mse(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return ((softmax(logits) - targets) ** 2).sum(axis=-1)


def square_loss(logits: np.ndarray, targets: np.ndarray, k: float, m: float) -> np.ndarray:
    out = np.zeros(logits.shape[:-1])
    for c in range(logits.shape[-1]):
        y = targets[..., c]
        out += (1 + (k - 1) * y) * (logits[..., c] - m * y) ** 2
    return out / logits.shape[-1]


def binary_cross_entropy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = 1 / (1 + np.exp(-logits))
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)


def kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log(p / q), 0.0).sum(axis=-1)


def ece(logits: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> float:
    """Guo et al. (2017)'s loop: bins (lo, hi], weighted |accuracy - confidence|."""
    probs = softmax(logits)
    conf, pred = probs.max(axis=-1), probs.argmax(axis=-1)
    correct = pred == labels
    edges = np.linspace(0, 1, num_bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return total
