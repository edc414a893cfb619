"""softcls-jax: the theory of softmax classification, executable and fast.

Pure functions (labels, losses, closed-form gradients, metrics) that compose with ``jax.grad``,
``jax.jit`` and ``jax.vmap``. ``softmax`` and ``log_softmax`` are JAX's own (``jax.nn``), re-exported
here so that the whole vocabulary of the claims (``docs/claims.md``, C1–C17) is in one namespace.
:func:`run_grid` trains a grid of losses × hyperparameter axes × seeds (your own models and losses
too) as one compiled program.

Example (C11): a confidently wrong model gets a strong push from cross-entropy and none from MSE.

  >>> import jax, jax.numpy as jnp
  >>> import softcls_jax as sc
  >>> logits = jnp.array([[-10.0, 10.0, -1000.0]])  # the label is class 0
  >>> labels = jnp.array([0])
  >>> jax.grad(lambda o: sc.cross_entropy(o, labels).sum())(logits)
  Array([[-1.,  1.,  0.]], dtype=float32)
  >>> g = jax.grad(lambda o: sc.mse(o, labels).sum())(logits)
  >>> bool(jnp.abs(g).max() < 1e-7)
  True
"""

from jax.nn import log_softmax, softmax

from softcls_jax.gradients import (
    ce_grad,
    ce_target_path_grad,
    gd_step,
    linear_logits,
    linear_model_grads,
    mse_grad,
    mse_target_path_grad,
    softmax_jacobian,
    softmax_target_derivative,
    square_loss_grad,
)
from softcls_jax.labels import (
    check_labels,
    check_labels_in_graph,
    corrupt_labels,
    label_kind,
    one_hot,
    smooth_labels,
)
from softcls_jax.losses import (
    LOSSES,
    binary_cross_entropy,
    cross_entropy,
    distribution_cross_entropy,
    entropy,
    get_loss,
    kl_divergence,
    mse,
    square_loss,
)
from softcls_jax.metrics import (
    ReliabilityBins,
    accuracy,
    brier,
    ece,
    fit_temperature,
    nll,
    predict,
    reliability_bins,
)
from softcls_jax.runner import run_grid

__version__ = "0.1.0"

__all__ = [
    "LOSSES",
    "ReliabilityBins",
    "accuracy",
    "binary_cross_entropy",
    "brier",
    "ce_grad",
    "ce_target_path_grad",
    "check_labels",
    "check_labels_in_graph",
    "corrupt_labels",
    "cross_entropy",
    "distribution_cross_entropy",
    "ece",
    "entropy",
    "fit_temperature",
    "gd_step",
    "get_loss",
    "kl_divergence",
    "label_kind",
    "linear_logits",
    "linear_model_grads",
    "log_softmax",
    "mse",
    "mse_grad",
    "mse_target_path_grad",
    "nll",
    "one_hot",
    "predict",
    "reliability_bins",
    "run_grid",
    "smooth_labels",
    "softmax",
    "softmax_jacobian",
    "softmax_target_derivative",
    "square_loss",
    "square_loss_grad",
]
