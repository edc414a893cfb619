"""The engine's traced math: pure functions of explicit arguments, in the style of the Flax examples'
``apply_model`` / ``update_model``. Nothing here holds state; the driver jits them.

``program`` (a :class:`Program`: model, losses, optimizer, the grid's static shape) is the static
argument of every function; everything that varies between grids of the same shape (hyperparameter
values, keys, data) is an array argument, so one compilation serves every value of every axis.

One step of the ``K`` configs of a seed is one forward and one backward pass: the model is vmapped
over the configs with the seed's minibatch *shared*, so the first layer of all configs is one wide
matmul; the logits of each loss group go to that loss, fixed at trace time; the gradient of the *sum*
of the per-config losses is every config's own gradient (no term couples two configs). Seeds are a
vmap over that, dropped for a single seed (a vmap of size 1 is not free: docs/performance.md).

Divergence: a config whose loss or gradient norm turns non-finite is frozen before that update and
``diverged_at`` records the step; its metrics read NaN from then on. Parameters can turn non-finite
only through such a gradient or a float32 overflow of ``p − lr·u`` from a finite update (an absurd
rate), which the next step's loss catches. No operation mixes configs, so with a diverging config in
place of a sane one every other config's results are bitwise identical.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from softcls_jax.augment import augment_rows
from softcls_jax.labels import check_labels_in_graph
from softcls_jax.models import Model, scale_kernels
from softcls_jax.optim import Optimizer, schedule_factor

Array = jax.Array
METRICS = (
    "train_loss",  # mean minibatch loss (the config's own loss) over the chunk's steps
    "grad_norm",  # mean global gradient norm over the chunk's steps
    "val_nll",  # cross-entropy on the validation split (NaN without one): what selection reads
    "val_accuracy",
    "test_loss",  # the config's own loss on the whole test set
    "test_nll",  # cross-entropy on the test set, comparable across losses
    "test_accuracy",
    "test_ece",  # 15-bin expected calibration error on the test set
    "train_nll",  # cross-entropy on the whole (possibly noisy) training set
    "train_accuracy",
)


class GridState(NamedTuple):
    """Everything needed to continue training; array leaves have leading axes ``(S, K')``.

    ``hparams`` holds every axis's value per config (``{name: (S, K') float32}``): data, read by
    the step, never changed by it. ``model_state`` holds a stateful model's non-parameter variables
    per config (BatchNorm statistics, RNG streams as key data; ``()`` for a stateless model).
    """

    params: Any
    opt_state: Any
    hparams: dict[str, Array]
    diverged_at: Array  # (S, K') int32: the step whose update turned non-finite, or -1
    step: Array  # () int32: steps done
    model_state: Any = ()


class Data(NamedTuple):
    """The arrays a grid trains and evaluates on (replicated on every device)."""

    x_train: Array  # (N, D)
    y_train: Array  # (V, N) int32: the training labels at each label-noise level (V = 1: none)
    x_test: Array  # (M, D)
    y_test: Array  # (M,) int32
    noise_levels: Array  # (V,) float32: the label-noise fraction of each row of y_train
    x_val: Array | None = None  # (V', D): the validation split, held out of the training data
    y_val: Array | None = None  # (V',) int32
    rng_keys: Array | None = None  # (S,) keys of a stateful model's per-step randomness
    augment_keys: Array | None = None  # (S,) keys of the minibatches' augmentation


@dataclasses.dataclass(frozen=True)
class Program:
    """What the traced functions need that is fixed for a compiled program.

    Attributes:
      model: the classifier's pure ``init`` / ``apply``.
      losses: one function per loss group, ``loss(logits, labels, **loss_hparams) -> (N,)``.
      loss_hparams: per loss group, ``(axis name, keyword)`` pairs it reads (the square loss's k, M).
      optimizer: its per-config hyperparameters come from the state.
      axis_names: the grid's axes (keys of ``GridState.hparams``).
      num_seeds, group_size, num_blocks: the layout's shape (``Layout``).
      batch_size, total_steps, schedule, num_classes: training settings.
      checked: check label ranges inside the compiled chunk (``checkify``).
      augment: the training minibatches' augmentation (:mod:`softcls_jax.augment`), on images of
        ``image_shape``, crops padded with ``image_fill`` (the data set's); ``none`` for none.
      mesh: the devices' mesh; None on one device.
    """

    model: Model
    losses: tuple[Callable[..., Array], ...]
    loss_hparams: tuple[tuple[tuple[str, str], ...], ...]
    optimizer: Optimizer
    axis_names: tuple[str, ...]
    num_seeds: int
    group_size: int
    num_blocks: int
    batch_size: int
    total_steps: int
    schedule: str
    num_classes: int
    checked: bool = False
    augment: str = "none"
    image_shape: tuple[int, int, int] | None = None
    image_fill: tuple[float, ...] | None = None
    mesh: Mesh | None = None


# ------------------------------------------------------------------ placement


def sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """The placement rule: leaves with config axes ``(S, K', ...)`` are sharded along K', the rest
    (scalars, metrics, data) replicated."""
    return NamedSharding(mesh, P(None, "configs") if ndim >= 2 else P())


def constrain(program: Program, tree: Any, replicated: bool = False) -> Any:
    if program.mesh is None:
        return tree
    rule = lambda x: sharding(program.mesh, 0 if replicated else x.ndim)
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, rule(x)), tree)


# ------------------------------------------------------------------ init


def init(program: Program, init_keys: Array, hparams: dict[str, Array]) -> GridState:
    """Initial state: one parameter draw per seed shared by its configs (common random numbers),
    kernels times each config's ``init_scale``, fresh optimizer states.

    Args:
      init_keys: ``(S,)`` keys.
      hparams: ``{name: (S, K')}`` axis values.
    """
    params = jax.vmap(program.model.init)(init_keys)  # (S, ...)
    s, k = hparams["learning_rate"].shape
    params = jax.tree.map(lambda x: jnp.broadcast_to(x[:, None], (s, k, *x.shape[1:])), params)
    if "init_scale" in hparams:
        params = jax.vmap(jax.vmap(scale_kernels))(params, hparams["init_scale"])
    opt_state = jax.vmap(jax.vmap(program.optimizer.init))(params, hparams)
    diverged_at = jnp.full((s, k), -1, jnp.int32)
    model_state = ()
    if program.model.stateful:  # one draw per seed, like the parameters; then one copy per config
        model_state = jax.vmap(program.model.init_state)(init_keys)
        model_state = jax.tree.map(
            lambda x: jnp.broadcast_to(x[:, None], (s, k, *x.shape[1:])), model_state
        )
    state = GridState(
        params, opt_state, hparams, diverged_at, jnp.zeros((), jnp.int32), model_state
    )
    return constrain(program, state)


# ------------------------------------------------------------------ one step


def label_row(label_noise: Array, noise_levels: Array) -> Array:
    """Each config's row of ``Data.y_train``: the index of its ``label_noise`` in ``noise_levels``
    (``label_noise`` of any shape; the result has that shape)."""
    return jnp.argmax(label_noise[..., None] == noise_levels, axis=-1)


def _targets(program: Program, hparams: dict[str, Array], labels: Array) -> tuple[Array, bool]:
    """Each config's training targets and whether they are shared by all configs.

    ``labels``: ``(V, B)`` at every noise level. Without noise or smoothing axes the configs share
    the ``(B,)`` integer labels; with noise each config takes its level's row, with smoothing its
    own ``(B, C)`` smoothed one-hot targets."""
    if labels.shape[0] == 1:
        targets, shared = labels[0], True
    else:
        targets, shared = labels[hparams["label_row"]], False  # (K, B)
    if "label_smoothing" in hparams:
        alpha = hparams["label_smoothing"][:, None, None]
        one_hot = jax.nn.one_hot(targets, program.num_classes, dtype=jnp.float32)
        targets = (1.0 - alpha) * one_hot + alpha / program.num_classes  # (K, B, C)
        shared = False
    return targets, shared


def _group_losses(
    program: Program, logits: Array, targets: Array, shared: bool, hparams: dict[str, Array]
) -> Array:
    """Per config, the mean loss of its own loss group on ``logits (K, B, C)``: ``(K,)``."""
    r = logits.shape[0] // len(program.losses)  # configs per group (a block's)
    out = []
    for g, (fn, extra) in enumerate(zip(program.losses, program.loss_hparams, strict=True)):
        part = slice(g * r, (g + 1) * r)
        names = tuple(kw for _, kw in extra)
        values = tuple(hparams[axis][part] for axis, _ in extra)
        one = lambda o, y, *v, fn=fn, names=names: fn(o, y, **dict(zip(names, v, strict=True)))
        axes = (0, None if shared else 0, *([0] * len(values)))
        y = targets if shared else targets[part]
        out.append(jnp.mean(jax.vmap(one, axes)(logits[part], y, *values), axis=-1))
    return jnp.concatenate(out)


def update(
    program: Program,
    grads: Any,
    params: Any,
    opt_state: Any,
    hparams: dict[str, Array],
    step: Array,
) -> tuple[Any, Any, Array, Array]:
    """One config's optimizer update with its scheduled learning rate; ``finite``: whether its
    gradient norm is finite."""
    factor = schedule_factor(
        program.schedule, step, program.total_steps, hparams.get("warmup_steps")
    )
    updates, new_opt_state = program.optimizer.update(
        grads, opt_state, params, hparams, hparams["learning_rate"] * factor
    )
    new_params = optax.apply_updates(params, updates)
    grad_norm = optax.tree.norm(grads)
    return new_params, new_opt_state, grad_norm, jnp.isfinite(grad_norm)


def seed_step(
    program: Program,
    params: Any,
    opt_state: Any,
    model_state: Any,
    hparams: dict[str, Array],
    step: Array,
    xb: Array,
    yb: Array,
    rng: Array | None,
) -> tuple[Any, Any, Any, Array, Array, Array]:
    """One optimizer step of the ``K`` configs of one seed on their shared minibatch.

    Args:
      params, opt_state, model_state, hparams: leaves with a leading ``K`` axis.
      step: the step's index (for the schedule).
      xb: ``(B, D)``; yb: ``(V, B)`` labels at each noise level (with several, ``hparams`` holds
        each config's ``label_row``).
      rng: a stateful model's key of this seed and step, shared by the seed's configs (None for a
        stateless model).

    Returns:
      ``(new_params, new_opt_state, new_model_state, grad_norm, finite, loss)``, per config.
    """

    def objective(params):
        if program.model.stateful:
            train = jax.vmap(program.model.apply_train, (0, 0, None, None))
            logits, new_model_state = train(params, model_state, xb, rng)  # (K, B, C)
        else:
            logits = jax.vmap(program.model.apply, (0, None))(params, xb)  # (K, B, C)
            new_model_state = model_state
        targets, shared = _targets(program, hparams, yb)
        per_config = _group_losses(program, logits, targets, shared, hparams)
        return jnp.sum(per_config), (per_config, new_model_state)

    (_, (loss, new_model_state)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    one = lambda g, p, o, h: update(program, g, p, o, h, step)
    new_params, new_opt_state, grad_norm, finite = jax.vmap(one)(grads, params, opt_state, hparams)
    return new_params, new_opt_state, new_model_state, grad_norm, finite, loss


# ------------------------------------------------------------------ a chunk of steps


def _select(mask: Array, new: Any, old: Any) -> Any:
    """Per-config ``where``: ``mask`` has the leading config axes of every leaf."""

    def pick(a: Array, b: Array) -> Array:
        return jax.lax.select(jax.lax.broadcast_in_dim(mask, a.shape, range(mask.ndim)), a, b)

    return jax.tree.map(pick, new, old)


def to_blocks(program: Program, x: Array) -> Array:
    """``(S, K', ...) -> (blocks, S, K'/blocks, ...)``: block ``j`` holds combinations
    ``j·rb … (j+1)·rb − 1`` of every loss (loss major inside, like K'), so one traced step serves
    every block."""
    n_loss, nb = len(program.losses), program.num_blocks
    rb = program.group_size // nb
    s, rest = x.shape[0], x.shape[2:]
    x = jnp.moveaxis(x.reshape(s, n_loss, nb, rb, *rest), 2, 0)
    return x.reshape(nb, s, n_loss * rb, *rest)


def from_blocks(program: Program, y: Array) -> Array:
    """The inverse of :func:`to_blocks`."""
    n_loss, nb = len(program.losses), program.num_blocks
    rb = program.group_size // nb
    s, rest = y.shape[1], y.shape[3:]
    y = jnp.moveaxis(y.reshape(nb, s, n_loss, rb, *rest), 0, 2)
    return y.reshape(s, n_loss * nb * rb, *rest)


def chunk(
    program: Program, state: GridState, data: Data, indices: Array
) -> tuple[GridState, dict[str, Array]]:
    """``indices.shape[0]`` steps of every config; ``indices``: ``(steps, S, B)`` minibatches.

    Returns the new state and the chunk's mean ``train_loss`` and ``grad_norm`` per config
    (``(S, K')``, NaN once diverged). On one device with ``num_blocks > 1`` the blocks train one
    after the other (``lax.map``), each for all the chunk's steps, so a block's working set stays
    in cache.
    """
    if program.checked:
        for labels in (data.y_train, data.y_test):
            check_labels_in_graph(labels, program.num_classes)
    one_seed = program.num_seeds == 1
    step_fn = lambda *a: seed_step(program, *a)
    step_fn = step_fn if one_seed else jax.vmap(step_fn, (0, 0, 0, 0, None, 0, 0, 0))
    rng_keys = data.rng_keys if program.model.stateful else None  # (S,)
    squeeze = (lambda t: jax.tree.map(lambda v: v[0], t)) if one_seed else (lambda t: t)
    unsqueeze = (lambda t: jax.tree.map(lambda v: v[None], t)) if one_seed else (lambda t: t)

    def train(carry_and_hparams):
        carry, hparams = carry_and_hparams
        hparams = squeeze(hparams)
        if data.y_train.shape[0] > 1:  # constant per config: derived once, not in every step
            hparams = {**hparams, "label_row": label_row(hparams["label_noise"], data.noise_levels)}

        def body(carry, step_and_idx):
            params, opt_state, model_state, diverged_at = carry
            step, idx = step_and_idx  # idx: (S, B), or (B,) for one seed
            yb = data.y_train[:, idx]  # (V, S, B) or (V, B)
            yb = yb if one_seed else jnp.moveaxis(yb, 0, 1)
            # the seed's keys at this step: the same on every device and after a resume
            at_step = lambda keys: jax.vmap(jax.random.fold_in, (0, None))(keys, step)
            rng = None
            if rng_keys is not None:
                rng = at_step(rng_keys)[0] if one_seed else at_step(rng_keys)
            xb = data.x_train[idx]  # (S, B, D) or (B, D)
            if program.augment != "none":  # on the seed's shared minibatch, before every config
                shape, kind, fill = program.image_shape, program.augment, program.image_fill
                one = lambda key, x: augment_rows(key, x, shape, kind, fill=fill)
                keys = at_step(data.augment_keys)
                xb = one(keys[0], xb) if one_seed else jax.vmap(one)(keys, xb)
            new_params, new_opt_state, new_model_state, grad_norm, finite, loss = step_fn(
                params, opt_state, model_state, hparams, step, xb, yb, rng
            )
            finite = finite & jnp.isfinite(loss)
            alive = diverged_at < 0
            keep = alive & finite
            params = _select(keep, new_params, params)
            opt_state = _select(keep, new_opt_state, opt_state)
            model_state = _select(keep, new_model_state, model_state)
            diverged_at = jnp.where(alive & ~finite, step, diverged_at)
            return (params, opt_state, model_state, diverged_at), (loss, grad_norm)

        carry, outputs = jax.lax.scan(body, squeeze(carry), (steps, idx_all))
        return unsqueeze(carry), tuple(x[:, None] if one_seed else x for x in outputs)

    num_steps = indices.shape[0]
    steps = state.step + jnp.arange(num_steps, dtype=jnp.int32)
    idx_all = indices[:, 0] if one_seed else indices
    carry = (state.params, state.opt_state, state.model_state, state.diverged_at)
    if program.num_blocks == 1:
        carry, (loss, grad_norm) = train((carry, state.hparams))
    else:
        blocked = jax.tree.map(lambda x: to_blocks(program, x), (carry, state.hparams))
        carry, outputs = jax.lax.map(train, blocked)
        carry = jax.tree.map(lambda x: from_blocks(program, x), carry)
        loss, grad_norm = (
            jnp.moveaxis(from_blocks(program, jnp.moveaxis(x, 1, -1)), -1, 0) for x in outputs
        )
    params, opt_state, model_state, diverged_at = carry
    new_state = GridState(
        params, opt_state, state.hparams, diverged_at, state.step + num_steps, model_state
    )
    alive = diverged_at < 0
    out = {
        "train_loss": jnp.where(alive, jnp.mean(loss, axis=0), jnp.nan),
        "grad_norm": jnp.where(alive, jnp.mean(grad_norm, axis=0), jnp.nan),
    }
    return constrain(program, new_state), constrain(program, out, replicated=True)
