"""Optax optimizers whose hyperparameters are data, so one compiled update serves a whole grid.

An :class:`Optimizer` builds its optax transformation *inside* the traced update from each config's
own hyperparameters (traced scalars under ``vmap``), so every value of every axis shares one
compilation, and the state has the same structure whatever the values: it stacks along the config
axes like the parameters.

Any optax optimizer factory (``optax.adamw``, ``optax.lion``, …, by name: :data:`OPTIMIZERS`), or
your own function ``fn(learning_rate, **hyperparameters) -> optax.GradientTransformation`` (a chain
with ``clip_by_global_norm``, masks, …), is called with the config's learning rate and its values
of every axis that is one of the function's numeric keywords (``b1``, ``b2``, ``eps``, ``decay``,
``momentum`` also where its default is None, …); the others keep the factory's defaults.

* ``sgd``, ``momentum`` (μ = 0.9), ``adam``: the project's own chains, ``u = −lr · (d + λ w)`` with
  ``d`` plain, ``trace(μ)`` or ``scale_by_adam(b1 = μ)``, unchanged from before any optax
  optimizer could be named (their results are pinned by tests); with other axes than momentum and
  weight decay they become ``optax.sgd`` / ``optax.adam``.
* ``nesterov``: ``optax.sgd(momentum=0.9, nesterov=True)``.
* every other name: the optax factory of that name.

Two project axes map onto the optimizer: ``momentum`` means ``b1`` for a factory that has ``b1`` and
no ``momentum`` (Adam, AdamW, Lion, …); ``weight_decay`` means the factory's own ``weight_decay``
where it has one (AdamW, Lion, LAMB, …) and elsewhere decoupled decay, ``u ← u − lr·λ·w``.

The learning-rate schedule multiplies the base rate: ``schedule_factor``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from softcls_jax.models import kernel_mask

SCHEDULES = ("constant", "cosine")
MOMENTUM = 0.9
LEGACY = ("sgd", "momentum", "adam")  # the project's own chains (results pinned by tests)
# optax factories that cannot train here, and why
REFUSED = {
    "lbfgs": "it needs the loss value, its gradient and the loss function at every update "
    "(optax's extra update arguments), which a per-config vmapped step does not pass",
    "polyak_sgd": "it needs the loss value at every update (optax's extra update arguments), "
    "which a per-config vmapped step does not pass",
}
FACTORIES: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": optax.sgd,
    "momentum": functools.partial(optax.sgd, momentum=MOMENTUM),
    "nesterov": functools.partial(optax.sgd, momentum=MOMENTUM, nesterov=True),
    **{
        name: getattr(optax, name)
        for name in sorted(dir(optax))
        if name not in ("sgd", *REFUSED)
        and inspect.isfunction(getattr(optax, name))
        and getattr(optax, name).__module__ == "optax._src.alias"
    },
}
OPTIMIZERS = tuple(FACTORIES)
# axes the engine reads itself; every other axis is an optimizer hyperparameter
PROJECT_AXES = ("learning_rate", "label_smoothing", "init_scale", "k", "M", "warmup_steps")
PROJECT_AXES += ("label_noise", "width", "depth")

OptimizerLike = str | Callable[..., optax.GradientTransformation]


def numeric_keywords(factory: Callable[..., Any]) -> dict[str, Any] | None:
    """The keywords of ``factory`` that could be grid axes, with their defaults: those whose
    default is a number (not a bool) or None. None if it takes ``**kwargs`` (any name)."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    out = {}
    for name, p in params.items():
        default = p.default
        if name == "learning_rate" or p.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        static = "mask" in name or "dtype" in name or name in ("key", "seed")  # never numbers
        if static:
            continue
        if default is None or numeric or default is inspect.Parameter.empty:
            out[name] = None if default is inspect.Parameter.empty else default
    return out


def optimizer_name(optimizer: OptimizerLike) -> str:
    """The name results record: the registry name, or the function's ``__name__``."""
    if isinstance(optimizer, str):
        return optimizer
    if isinstance(optimizer, functools.partial):
        return optimizer_name(optimizer.func)
    return getattr(optimizer, "__name__", type(optimizer).__name__)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optimizer whose hyperparameters ``axes`` come per config at update time.

    Attributes:
      name: a name of :data:`OPTIMIZERS`, or the name of ``factory``.
      axes: the grid's axes this optimizer reads (momentum, weight decay, and any numeric keyword of
        the factory); the others take their defaults as constants, so an unused transform costs
        nothing.
      factory: ``fn(learning_rate, **keywords) -> GradientTransformation``; None for a registry
        name (looked up in :data:`FACTORIES`).
      kernels_only: weight decay touches only the parameters named ``kernel`` (an optax mask),
        not biases or BatchNorm scales.
    """

    name: str
    axes: frozenset[str] = frozenset()
    factory: Callable[..., optax.GradientTransformation] | None = None
    kernels_only: bool = False

    def __post_init__(self) -> None:
        if self.factory is None and self.name not in FACTORIES:
            why = f" ({self.name} is refused: {REFUSED[self.name]})" if self.name in REFUSED else ""
            raise ValueError(
                f"unknown optimizer {self.name!r}{why}; expected one of {list(OPTIMIZERS)}, an "
                "optax factory or a function of the hyperparameters returning a "
                "GradientTransformation"
            )
        keywords = numeric_keywords(self._factory)
        native_decay = keywords is None or "weight_decay" in keywords
        if self.kernels_only and native_decay and self._mask_keyword() is None:
            raise ValueError(
                f"optimizer {self.name} decays its weights itself and takes no mask, so its decay "
                "cannot be kept to the kernels: use weight_decay_mask='all' "
                "(--weight_decay_mask=all) or an optimizer with a mask (adamw, lion, lamb, ...)"
            )
        for axis in sorted(self.axes):
            if axis in ("weight_decay",) or keywords is None or axis in keywords:
                continue
            if axis == "momentum" and "b1" in keywords:
                if "b1" in self.axes:
                    raise ValueError(
                        f"momentum and b1 are both axes of optimizer {self.name}, whose momentum "
                        "is b1: give one of them"
                    )
                continue
            valid = sorted({"momentum", "weight_decay", *(keywords or {})})
            raise ValueError(
                f"unknown axis {axis!r}: not one of the project's axes {list(PROJECT_AXES[1:])} "
                f"nor a hyperparameter of optimizer {self.name} ({valid})"
            )

    @property
    def _factory(self) -> Callable[..., optax.GradientTransformation]:
        return self.factory if self.factory is not None else FACTORIES[self.name]

    @property
    def legacy(self) -> bool:
        """The project's own chain (``sgd``, ``momentum``, ``adam`` with at most momentum and
        weight decay as axes)."""
        return (
            self.factory is None
            and self.name in LEGACY
            and self.axes <= {"momentum", "weight_decay"}
        )

    def chain(
        self, hparams: Mapping[str, jax.Array], learning_rate: jax.Array | float
    ) -> optax.GradientTransformation:
        """The optax transformation of one config (its hyperparameters may be traced scalars)."""
        if self.legacy:
            return self._legacy_chain(hparams, learning_rate)
        keywords = numeric_keywords(self._factory)
        kwargs = {}
        for axis in self.axes:
            if keywords is None or axis in keywords:
                kwargs[axis] = hparams[axis]
            elif axis == "momentum":  # Adam-like: the project's momentum axis is b1
                kwargs["b1"] = hparams[axis]
        mask = self._mask_keyword()
        if self.kernels_only and mask is not None:  # the factory's own decay, on kernels only
            kwargs[mask] = kernel_mask
        tx = self._factory(learning_rate=learning_rate, **kwargs)
        if "weight_decay" in self.axes and "weight_decay" not in kwargs:  # decoupled, as legacy
            decay = -learning_rate * hparams["weight_decay"]
            tx = optax.chain(tx, optax.add_decayed_weights(decay, mask=self._mask()))
        return tx

    def _mask(self) -> Callable[[Any], Any] | None:
        return kernel_mask if self.kernels_only else None

    def _mask_keyword(self) -> str | None:
        """The factory's keyword for its weight decay's mask (``mask`` of adamw, lion, lamb, …)."""
        params = inspect.signature(self._factory).parameters
        return next((k for k in ("mask", "weight_decay_mask") if k in params), None)

    def _legacy_chain(
        self, hparams: Mapping[str, jax.Array], learning_rate: jax.Array | float
    ) -> optax.GradientTransformation:
        momentum = hparams.get("momentum", None if self.name == "sgd" else MOMENTUM)
        if self.name == "adam":
            parts = [optax.scale_by_adam(b1=momentum)]
        else:
            parts = [] if momentum is None else [optax.trace(decay=momentum)]
        if "weight_decay" in hparams:
            parts.append(optax.add_decayed_weights(hparams["weight_decay"], mask=self._mask()))
        return optax.chain(*parts, optax.scale_by_learning_rate(learning_rate))

    def init(
        self, params: optax.Params, hparams: Mapping[str, jax.Array] | None = None
    ) -> optax.OptState:
        """The state of one config, from its own hyperparameters (e.g. adagrad's initial
        accumulator); its structure does not depend on their values. ``hparams`` may be left out
        when no axis sets an initial value (the project's own chains, or no axes)."""
        if hparams is None:
            if self.axes and not self.legacy:
                raise ValueError(
                    f"{self.name}: init needs the config's values of {sorted(self.axes)}"
                )
            hparams = {"learning_rate": 1.0, **{name: 0.0 for name in self.axes}}
        own = {name: hparams[name] for name in self.axes}
        return self.chain(own, hparams["learning_rate"]).init(params)

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

    def check(self, params: Any) -> None:
        """``ValueError`` unless every axis of this optimizer can be data: its init and update are
        traced with each hyperparameter a traced scalar, on the abstract ``params`` of one config."""
        scalar = jax.ShapeDtypeStruct((), jnp.float32)
        names = ("learning_rate", *sorted(self.axes))

        def trial(params: Any, values: tuple) -> Any:
            hp = dict(zip(names, values, strict=True))
            state = self.init(params, hp)
            grads = jax.tree.map(jnp.zeros_like, params)
            return self.update(grads, state, params, hp, hp["learning_rate"])

        try:
            jax.eval_shape(trial, params, tuple(scalar for _ in names))
        except Exception as e:
            blamed = [n for n in names[1:] if not self._traces_with(params, n)]
            what = (
                f"hyperparameter {blamed[0]!r} cannot be a grid axis: its value must be known "
                "when the program is compiled (it sets a shape, a branch or a static argument)"
                if blamed
                else "its update needs more than the gradients, state and parameters (optax's "
                "extra update arguments)"
            )
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ValueError(
                f"optimizer {self.name}: {what} ({type(e).__name__}: {first})"
            ) from None

    def _traces_with(self, params: Any, name: str) -> bool:
        """Whether init and update trace with ``name`` alone as a traced axis."""
        one = dataclasses.replace(self, axes=frozenset({name}))
        scalar = jax.ShapeDtypeStruct((), jnp.float32)

        def trial(params: Any, lr: Any, v: Any) -> Any:
            hp = {"learning_rate": lr, name: v}
            return one.update(
                jax.tree.map(jnp.zeros_like, params), one.init(params, hp), params, hp, lr
            )

        try:
            jax.eval_shape(trial, params, scalar, scalar)
        except Exception:
            return False
        return True


def make_optimizer(
    optimizer: OptimizerLike,
    axes: frozenset[str] | set[str] = frozenset(),
    kernels_only: bool = False,
) -> Optimizer:
    """The optimizer (a registry name, an optax factory, or a function of the hyperparameters
    returning a ``GradientTransformation``) with the grid's optimizer ``axes`` as data.

    Example:
      >>> make_optimizer("adamw", {"b2", "learning_rate", "init_scale"}).axes
      frozenset({'b2'})
      >>> make_optimizer("adam", {"b3"})
      Traceback (most recent call last):
      ...
      ValueError: unknown axis 'b3': not one of the project's axes ...
    """
    own = frozenset(a for a in axes if a not in PROJECT_AXES)
    if isinstance(optimizer, str):
        return Optimizer(optimizer, own, kernels_only=kernels_only)
    if not callable(optimizer):
        raise ValueError(
            f"an optimizer is a name of {list(OPTIMIZERS)} or a function returning an optax "
            f"GradientTransformation, got {optimizer!r}"
        )
    return Optimizer(optimizer_name(optimizer), own, optimizer, kernels_only)


# value rules of common optimizer hyperparameters (any other: a finite number)
RULES: dict[str, tuple[str, Callable[[float], bool]]] = {
    **{n: ("a number in [0, 1)", lambda v: 0 <= v < 1) for n in ("b1", "b2", "b3", "decay", "rho")},
    **{
        n: ("a finite number >= 0", lambda v: v >= 0)
        for n in ("eps", "eps_root", "initial_accumulator_value", "weight_decay_rate")
    },
}


def hyperparameter_rule(name: str) -> tuple[str, Callable[[float], bool]]:
    """``(rule in words, predicate)`` for an optimizer hyperparameter axis ``name``."""
    return RULES.get(name, ("a finite number", lambda v: math.isfinite(v)))


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
