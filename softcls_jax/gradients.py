"""Closed-form gradients of the softmax losses, to check autodiff against (claims C8, C9, C11).

Notation: ``o`` (or ``z``) logits ``(..., C)``, ``p = softmax(o)``, ``y`` the label vector (one-hot for
integer labels). Each function accepts integer labels ``(...,)`` or probability vectors ``(..., C)``,
like the losses in :mod:`softcls_jax.losses`, and returns the gradient of the *per-example* loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from softcls_jax.labels import as_probabilities, check_logits

Array = jax.Array
Params = dict[str, Array]


def softmax_jacobian(logits: Array) -> Array:
    """The softmax Jacobian ``J[i, k] = ∂p_i/∂z_k = p_i (δ_ik - p_k)`` (C8).

    On the diagonal ``p_k (1 - p_k)``, off it ``-p_i p_k``; ``J = diag(p) - p pᵀ`` is symmetric.

    Args:
      logits: ``(..., C)``.

    Returns:
      ``(..., C, C)``.

    Example:
      >>> softmax_jacobian(jnp.array([0.0, 0.0]))  # p = (1/2, 1/2)
      Array([[ 0.25, -0.25],
             [-0.25,  0.25]], dtype=float32)
    """
    check_logits(logits)
    p = jax.nn.softmax(logits, axis=-1)
    return (
        jnp.eye(logits.shape[-1], dtype=p.dtype) * p[..., None, :]
        - p[..., :, None] * p[..., None, :]
    )


def ce_grad(logits: Array, labels: Array) -> Array:
    """``∂CE/∂z = softmax(z) - y`` (C8): the Jacobian's ``p_k`` cancels the ``1/ŷ`` of the log.

    Args:
      logits: ``(..., C)``.
      labels: ``(...,)`` integer ids or ``(..., C)`` probability vectors summing to 1.

    Returns:
      ``(..., C)``.

    Example:
      >>> ce_grad(jnp.array([[-10.0, 10.0, -1000.0]]), jnp.array([0]))  # confidently wrong
      Array([[-1.,  1.,  0.]], dtype=float32)
    """
    return jax.nn.softmax(logits, axis=-1) - as_probabilities(logits, labels)


def mse_grad(logits: Array, labels: Array) -> Array:
    """``∂MSE/∂z = Jᵀ · 2(p - y) = 2 (p ⊙ d - p (pᵀd))`` with ``d = p - y`` (chain rule through C8).

    Args:
      logits: ``(..., C)``.
      labels: ``(...,)`` integer ids or ``(..., C)`` probability vectors.

    Returns:
      ``(..., C)``.

    Example:
      >>> g = mse_grad(jnp.array([[-10.0, 10.0, -1000.0]]), jnp.array([0]))  # confidently wrong
      >>> bool(jnp.abs(g).max() < 1e-7)  # no update, unlike ce_grad's -1 (C11)
      True
    """
    p = jax.nn.softmax(logits, axis=-1)
    d = p - as_probabilities(logits, labels)
    return 2.0 * p * (d - jnp.sum(p * d, axis=-1, keepdims=True))


def square_loss_grad(logits: Array, labels: Array, k: float = 1.0, m: float = 1.0) -> Array:
    """``∂L/∂o_c = (2/C) w_c (o_c - M y_c)`` for the Hui & Belkin square loss, ``w = 1 + (k-1) y``.

    Args:
      logits: ``(..., C)``.
      labels: ``(...,)`` integer ids or ``(..., C)`` probability vectors.

    Returns:
      ``(..., C)``.

    Example:
      >>> g = square_loss_grad(jnp.array([[2.0, 0.0, -1.0]]), jnp.array([0]))  # (2/3) (o - y)
      >>> [round(v, 4) for v in g[0].tolist()]
      [0.6667, 0.0, -0.6667]
    """
    y = as_probabilities(logits, labels)
    return 2.0 / logits.shape[-1] * (1.0 + (k - 1.0) * y) * (logits - m * y)


def softmax_target_derivative(p_target: Array) -> Array:
    """``∂ŷ_p/∂z_p = ŷ_p (1 - ŷ_p)``: the target probability's derivative on its own logit (C11).

    Example:
      >>> softmax_target_derivative(jnp.array([0.5, 1.0]))
      Array([0.25, 0.  ], dtype=float32)
    """
    return p_target * (1.0 - p_target)


def ce_target_path_grad(p_target: Array) -> Array:
    """The seeds' CE term ``∂L/∂z_p = ŷ_p - 1`` (C11): ``-1`` when confidently wrong, never vanishing.

    Example:
      >>> [round(v, 4) for v in ce_target_path_grad(jnp.array([1e-4, 0.5])).tolist()]
      [-0.9999, -0.5]
    """
    return p_target - 1.0


def mse_target_path_grad(p_target: Array) -> Array:
    """The seeds' MSE term ``∂L/∂z_p = -2 ŷ_p (1 - ŷ_p)²`` (C11): vanishes as ``ŷ_p → 0``.

    This is the target-path product ``∂L/∂ŷ_p · ∂ŷ_p/∂z_p`` of the seeds (it leaves out the paths
    through the other probabilities; :func:`mse_grad` has the full gradient).

    Example:
      >>> [round(v, 4) for v in mse_target_path_grad(jnp.array([1e-4, 0.5])).tolist()]
      [-0.0002, -0.25]
    """
    return -2.0 * p_target * jnp.square(1.0 - p_target)


def linear_logits(params: Params, x: Array) -> Array:
    """Softmax regression logits ``z = x W + b`` with ``params = {"kernel": (D, C), "bias": (C,)}``.

    The kernel is the transpose of the seeds' ``Θ`` (``z = Θ x``), as in Flax's ``Linear``.

    Example:
      >>> params = {"kernel": jnp.array([[1.0, -1.0]]), "bias": jnp.array([0.5, 0.0])}
      >>> linear_logits(params, jnp.array([[2.0]]))
      Array([[ 2.5, -2. ]], dtype=float32)
    """
    return x @ params["kernel"] + params["bias"]


def linear_model_grads(params: Params, x: Array, labels: Array) -> Params:
    """Gradients of the mean CE of softmax regression (C9).

    Per example, ``∇_{θ_k} CE = (p_k - y_k) x``, i.e. ``∇_Θ = (p - y) xᵀ``. Averaged over a batch and
    written for ``kernel = Θᵀ``:

    .. math::
        \\nabla_W = \\tfrac{1}{N} X^\\top (P - Y), \\qquad \\nabla_b = \\tfrac{1}{N} \\sum_i (p_i - y_i)

    Args:
      params: ``{"kernel": (D, C), "bias": (C,)}``.
      x: ``(N, D)`` features.
      labels: ``(N,)`` integer ids or ``(N, C)`` probability vectors.

    Returns:
      A pytree shaped like ``params``.

    Example:
      >>> params = {"kernel": jnp.zeros((1, 2)), "bias": jnp.zeros(2)}  # p = (1/2, 1/2)
      >>> grads = linear_model_grads(params, jnp.array([[2.0]]), jnp.array([0]))
      >>> grads["kernel"], grads["bias"]  # (p - y) x and p - y
      (Array([[-1.,  1.]], dtype=float32), Array([-0.5,  0.5], dtype=float32))
    """
    residual = ce_grad(linear_logits(params, x), labels) / x.shape[0]  # (N, C)
    return {"kernel": x.T @ residual, "bias": jnp.sum(residual, axis=0)}


def gd_step(params: Params, x: Array, labels: Array, learning_rate: float) -> Params:
    """One hand-written gradient-descent step ``θ_k ← θ_k - η (p_k - y_k) x`` (C9), batch-averaged.

    Example:
      >>> params = {"kernel": jnp.zeros((1, 2)), "bias": jnp.zeros(2)}
      >>> new = gd_step(params, jnp.array([[2.0]]), jnp.array([0]), learning_rate=0.5)
      >>> new["kernel"], new["bias"]  # θ - 0.5 · (p - y) x
      (Array([[ 0.5, -0.5]], dtype=float32), Array([ 0.25, -0.25], dtype=float32))
    """
    grads = linear_model_grads(params, x, labels)
    return jax.tree.map(lambda w, g: w - learning_rate * g, params, grads)
