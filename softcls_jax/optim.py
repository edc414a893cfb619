"""Optax optimizers whose learning rate lives in the optimizer state.

``optax.inject_hyperparams`` moves the learning rate from a Python constant into
``opt_state.hyperparams["learning_rate"]``, so one compiled update serves every learning rate of a
grid: the rate is data, stacked along the config axis like the parameters.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

OPTIMIZERS = ("sgd", "momentum", "adam")
MOMENTUM = 0.9


def check_learning_rate(learning_rate: float) -> None:
    """``ValueError`` unless ``learning_rate`` is a finite number > 0."""
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)):
        raise ValueError(f"learning rate must be a number, got {learning_rate!r}")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning rate must be a finite number > 0, got {learning_rate}")


def make_optimizer(name: str, learning_rate: float = 1e-2) -> optax.GradientTransformation:
    """An optimizer by name, with its learning rate injected into the state.

    Args:
      name: ``sgd`` (plain), ``momentum`` (heavy ball, 0.9) or ``adam`` (optax defaults).
      learning_rate: initial rate; per-config rates are set by :func:`init_state`.

    Returns:
      An ``optax.GradientTransformation`` whose state has ``hyperparams["learning_rate"]``.
    """
    if name == "sgd":
        return optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate)
    if name == "momentum":
        return optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate, momentum=MOMENTUM)
    if name == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {list(OPTIMIZERS)}")


def init_state(tx: optax.GradientTransformation, params, learning_rate) -> optax.OptState:
    """``tx.init(params)`` with the learning rate set to ``learning_rate`` (a scalar, may be traced).

    Under ``jax.vmap`` over ``(params, learning_rate)`` this stacks one state per config.
    """
    state = tx.init(params)
    hyperparams = dict(state.hyperparams)
    slot = hyperparams["learning_rate"]
    hyperparams["learning_rate"] = jnp.asarray(learning_rate, slot.dtype)
    return state._replace(hyperparams=hyperparams)
