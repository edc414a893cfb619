"""Per-example classification losses and information measures.

Every classification loss has one signature, ``loss(logits, labels) -> (...,)`` per-example values:

* ``logits``: ``(..., C)`` floating, the raw model outputs ``o``;
* ``labels``: integer class ids ``(...,)`` or probability vectors ``(..., C)``.

The data-set loss is the mean over examples (C5): ``ℓ = (1/m) Σ_i L_i``. Integer labels take a
path that never builds the ``(..., C)`` one-hot matrix (C1). Losses are computed from logits with
log-sum-exp, never ``log(softmax)`` (C10), so logits of ±1e4 and masked classes (``-inf``) give finite
values and gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import rel_entr, xlogy

from softcls_jax.labels import check_labels, check_logits, check_probabilities, label_kind

Array = jax.Array
LossFn = Callable[[Array, Array], Array]


def _true_class(values: Array, labels: Array) -> Array:
    """``values[..., labels[...]]``: a gather, no one-hot matrix."""
    return jnp.take_along_axis(values, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _is_true_class(logits: Array, labels: Array) -> Array:
    """Boolean ``(..., C)`` mask of the true class; fused by XLA, never stored as floats."""
    classes = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return classes == labels[..., None]


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Softmax cross-entropy in log-sum-exp form (claims C5, C6, C10).

    .. math::
        L(o, y) = -\\sum_j y_j \\log \\mathrm{softmax}(o)_j
                = \\log \\sum_k e^{o_k} - \\sum_j y_j o_j \\quad (\\textstyle\\sum_j y_j = 1)

    For an integer label ``p`` this is ``logsumexp(o) - o_p = -log ŷ_p``. The mean over a data set is
    the negative mean log-likelihood of the labels, so minimising it is maximum likelihood (C6).

    Args:
      logits: ``(..., C)``.
      labels: ``(...,)`` integer ids or ``(..., C)`` probability vectors.

    Returns:
      ``(...,)`` per-example loss, ``>= 0``.

    Example:
      >>> logits = jnp.array([[2.0, 0.0, 0.0]])
      >>> print(f"{cross_entropy(logits, jnp.array([0]))[0]:.4f}")  # -log(e²/(e²+2))
      0.2395
      >>> print(f"{cross_entropy(logits, jnp.array([[1.0, 0.0, 0.0]]))[0]:.4f}")  # one-hot form
      0.2395
    """
    if label_kind(logits, labels) == "int":
        return jax.nn.logsumexp(logits, axis=-1) - _true_class(logits, labels)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    # 0 · log 0 = 0, so a masked class (-inf logit) with zero target contributes nothing.
    return -jnp.sum(jnp.where(labels == 0, 0.0, labels * log_probs), axis=-1)


def mse(logits: Array, labels: Array) -> Array:
    """The seeds' MSE: squared error between softmax probabilities and the label vector (C5, C12).

    .. math::
        L(o, y) = \\sum_{c=1}^C (\\hat y_c - y_c)^2, \\qquad \\hat y = \\mathrm{softmax}(o)

    **Reduction**: summed over classes, averaged over examples, everywhere in softcls-jax (the seeds'
    definition; it equals the multi-class Brier score). For a one-hot label ``p`` it is
    ``(1 - ŷ_p)² + Σ_{c≠p} ŷ_c²``, so it depends on how the wrong mass is spread (C12).

    Args:
      logits: ``(..., C)``.
      labels: ``(...,)`` integer ids or ``(..., C)`` probability vectors.

    Returns:
      ``(...,)`` per-example loss in ``[0, 2]``.

    Example:
      >>> probs = jnp.array([[0.8, 0.1, 0.1], [0.8, 0.15, 0.05]])
      >>> [round(v, 4) for v in mse(jnp.log(probs), jnp.array([0, 0])).tolist()]  # C12
      [0.06, 0.065]
      >>> [round(v, 4) for v in cross_entropy(jnp.log(probs), jnp.array([0, 0])).tolist()]
      [0.2231, 0.2231]
    """
    probs = jax.nn.softmax(logits, axis=-1)
    if label_kind(logits, labels) == "int":
        error = jnp.where(_is_true_class(logits, labels), probs - 1.0, probs)
    else:
        error = probs - labels
    return jnp.sum(jnp.square(error), axis=-1)


def square_loss(logits: Array, labels: Array, k: float = 1.0, m: float = 1.0) -> Array:
    """Square loss on raw logits, with the rescaling of Hui & Belkin (ICLR 2021).

    .. math::
        L(o, y) = \\frac{1}{C} \\sum_{c=1}^C w_c (o_c - M y_c)^2, \\qquad w_c = 1 + (k - 1) y_c

    For a one-hot label ``p``: ``(1/C) [k (o_p - M)² + Σ_{c≠p} o_c²]``. ``k = M = 1`` is the plain
    square loss; the paper uses ``k > 1, M > 1`` for many classes. No softmax is applied.

    Args:
      logits: ``(..., C)``.
      labels: ``(...,)`` integer ids or ``(..., C)`` probability vectors.
      k: weight of the true class, ``> 0``.
      m: target value of the true class's logit, ``> 0``.

    Returns:
      ``(...,)`` per-example loss.

    Example:
      >>> print(f"{square_loss(jnp.array([[2.0, 0.0, -1.0]]), jnp.array([0]))[0]:.4f}")  # (1+0+1)/3
      0.6667
    """
    num_classes = logits.shape[-1]
    if label_kind(logits, labels) == "int":
        is_true = _is_true_class(logits, labels)
        sq = jnp.square(jnp.where(is_true, logits - m, logits))
        weighted = jnp.where(is_true, k * sq, sq)
    else:
        weights = 1.0 + (k - 1.0) * labels
        weighted = weights * jnp.square(logits - m * labels)
    return jnp.sum(weighted, axis=-1) / num_classes


def binary_cross_entropy(logits: Array, labels: Array) -> Array:
    """Binary cross-entropy from one logit per example, via log-sigmoid (C4).

    .. math::
        L(z, y) = -y \\log \\sigma(z) - (1 - y) \\log \\sigma(-z) = \\mathrm{softplus}(z) - y z

    With two classes this equals :func:`cross_entropy` on logits ``[z, 0]`` (softmax of two logits is
    the sigmoid of their difference).

    Args:
      logits: ``(...,)`` one logit per example.
      labels: ``(...,)`` integer labels in {0, 1} or probabilities in [0, 1].

    Returns:
      ``(...,)`` per-example loss.

    Example:
      >>> print(f"{binary_cross_entropy(jnp.array([1.5]), jnp.array([1]))[0]:.4f}")
      0.2014
      >>> print(f"{cross_entropy(jnp.array([[1.5, 0.0]]), jnp.array([0]))[0]:.4f}")  # C4
      0.2014
    """
    if logits.shape != labels.shape:
        raise ValueError(
            f"binary_cross_entropy needs labels of the logits' shape {logits.shape}, "
            f"got {labels.shape}"
        )
    check_logits(logits[..., None])
    if jnp.issubdtype(labels.dtype, jnp.integer):
        check_labels(labels, 2)
    else:
        check_probabilities(labels)
    labels = labels.astype(logits.dtype)
    return -(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))


def entropy(probs: Array) -> Array:
    """Shannon entropy ``H(P) = -Σ_c p_c log p_c`` (nats), with ``0 log 0 = 0`` (C7).

    Largest, ``log C``, for the uniform distribution; 0 for a one-hot one.

    Args:
      probs: ``(..., C)`` probability vectors.

    Returns:
      ``(...,)``.

    Example:
      >>> print(f"{entropy(jnp.full(4, 0.25)):.4f}")  # log 4
      1.3863
      >>> float(entropy(jnp.array([0.0, 1.0, 0.0]))) == 0.0  # one-hot: no uncertainty
      True
    """
    check_probabilities(probs, "probs")
    return -jnp.sum(xlogy(probs, probs), axis=-1)


def kl_divergence(p: Array, q: Array) -> Array:
    """``KL(P‖Q) = Σ_c p_c log(p_c / q_c)`` (nats), ``>= 0`` with equality iff ``P = Q`` (C7).

    ``0 log(0/q) = 0``; ``p > 0`` where ``q = 0`` gives ``inf``.

    Args:
      p, q: ``(..., C)`` probability vectors of the same shape.

    Returns:
      ``(...,)``.
    """
    _check_same_shape(p, q)
    return jnp.sum(rel_entr(p, q), axis=-1)


def distribution_cross_entropy(p: Array, q: Array) -> Array:
    """Cross-entropy between distributions ``H(P, Q) = -Σ_c p_c log q_c = H(P) + KL(P‖Q)`` (C7).

    Args:
      p, q: ``(..., C)`` probability vectors of the same shape.

    Returns:
      ``(...,)``, ``>= H(P)``.

    Example:
      >>> p, q = jnp.array([0.5, 0.5]), jnp.array([0.9, 0.1])
      >>> h_pq, h_p, kl = distribution_cross_entropy(p, q), entropy(p), kl_divergence(p, q)
      >>> print(f"{h_pq:.4f} = {h_p:.4f} + {kl:.4f}")  # H(P, Q) = H(P) + KL(P‖Q)
      1.2040 = 0.6931 + 0.5108
    """
    _check_same_shape(p, q)
    return -jnp.sum(xlogy(p, q), axis=-1)


def _check_same_shape(p: Array, q: Array) -> None:
    if p.shape != q.shape:
        raise ValueError(f"distributions must have the same shape, got {p.shape} and {q.shape}")
    check_probabilities(p, "p")
    check_probabilities(q, "q")


LOSSES: dict[str, LossFn] = {
    "ce": cross_entropy,
    "mse": mse,
    "square": square_loss,
}
"""Name → classification loss, as selected by ``--loss``."""


def get_loss(name: str) -> LossFn:
    """The loss registered under ``name``; ``ValueError`` listing the known names otherwise.

    Example:
      >>> get_loss("mse") is mse
      True
      >>> get_loss("hinge")
      Traceback (most recent call last):
      ...
      ValueError: unknown loss 'hinge'; expected one of ['ce', 'mse', 'square']
    """
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}") from None
