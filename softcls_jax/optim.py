"""Optax optimizers whose hyperparameters are data, so one compiled update serves a whole grid.

An :class:`Optimizer` builds its optax chain *inside* the traced update from each config's own
hyperparameters (traced scalars under ``vmap``): the learning rate, and where they are grid axes the
momentum (SGD's ``optax.trace`` decay, or Adam's ``b1``) and the decoupled weight decay
(``optax.add_decayed_weights``). The chain's state has the same structure whatever the values, so
the state stacks along the config axes like the parameters.

* ``sgd``:      ``u = −lr · (g + λ w)``; with a momentum axis ``trace(μ)`` first.
* ``momentum``: ``sgd`` with ``μ = 0.9`` unless momentum is an axis.
* ``adam``:     ``scale_by_adam(b1 = μ or 0.9)``, then ``+ λ w``, then ``× −lr`` (AdamW when λ > 0).

The learning-rate schedule multiplies the base rate: ``schedule_factor``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULES = ("constant", "cosine")
MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """A named optimizer whose hyperparameters ``axes`` come per config at update time.

    Attributes:
      name: ``sgd``, ``momentum`` or ``adam``.
      axes: the hyperparameters that are data (any of ``momentum``, ``weight_decay``); the others
        take their defaults as constants, so an unused transform costs nothing.
    """

    name: str
    axes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; expected one of {list(OPTIMIZERS)}")

    def chain(
        self, hparams: Mapping[str, jax.Array], learning_rate: jax.Array | float
    ) -> optax.GradientTransformation:
        """The optax chain of one config (its hyperparameters may be traced scalars)."""
        momentum = hparams.get("momentum", None if self.name == "sgd" else MOMENTUM)
        if self.name == "adam":
            parts = [optax.scale_by_adam(b1=momentum)]
        else:
            parts = [] if momentum is None else [optax.trace(decay=momentum)]
        if "weight_decay" in hparams:
            parts.append(optax.add_decayed_weights(hparams["weight_decay"]))
        return optax.chain(*parts, optax.scale_by_learning_rate(learning_rate))

    def init(self, params: optax.Params) -> optax.OptState:
        """The state of one config (its structure does not depend on the hyperparameters)."""
        placeholders = {name: 0.0 for name in self.axes}
        return self.chain(placeholders, 1.0).init(params)

    def update(
        self,
        grads: optax.Updates,
        state: optax.OptState,
        params: optax.Params,
        hparams: Mapping[str, jax.Array],
        learning_rate: jax.Array,
    ) -> tuple[optax.Updates, optax.OptState]:
        """One config's updates (add them to ``params``) and new state."""
        own = {name: hparams[name] for name in self.axes}
        return self.chain(own, learning_rate).update(grads, state, params)


def make_optimizer(name: str, axes: frozenset[str] | set[str] = frozenset()) -> Optimizer:
    """The optimizer ``name`` with the hyperparameters ``axes`` as data (see :class:`Optimizer`)."""
    return Optimizer(name, frozenset(a for a in axes if a in ("momentum", "weight_decay")))


def schedule_factor(
    schedule: str, step: jax.Array, total_steps: int, warmup_steps: jax.Array | None
) -> jax.Array | float:
    """The learning-rate multiplier at ``step`` (0-based): ``lr_t = lr · factor``.

    .. math::
        f(t) = \\min(1, t / w) \\cdot \\begin{cases} 1 & \\text{constant} \\\\
               \\tfrac12 (1 + \\cos(\\pi \\min(1, (t - w)^+ / (T - w)))) & \\text{cosine} \\end{cases}

    the same as ``optax.warmup_cosine_decay_schedule(0, lr, w, T)`` (and, constant, a linear warm-up
    joined to ``optax.constant_schedule``): 0 at ``t = 0`` with a warm-up, 0 at the last step ``T``
    with cosine decay. ``warmup_steps`` None means no warm-up.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {list(SCHEDULES)}")
    if warmup_steps is None and schedule == "constant":
        return 1.0
    t = jnp.asarray(step, jnp.float32)
    w = jnp.zeros((), jnp.float32) if warmup_steps is None else warmup_steps
    factor = jnp.where(t < w, t / jnp.maximum(w, 1.0), 1.0)
    if schedule == "cosine":
        progress = jnp.clip((t - w) / jnp.maximum(total_steps - w, 1.0), 0.0, 1.0)
        factor = factor * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return factor
