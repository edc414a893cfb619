"""Evaluation of every config of a grid: test and train metrics from one compiled program."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from softcls_jax import metrics
from softcls_jax.engine.step import Data, GridState, Program, constrain, label_row

Array = jax.Array

EVAL_CHUNK = 2048  # examples per forward pass in evaluation: bounds its memory, whatever the data
ALIGN = 64  # chunk sizes are multiples of this: the examples are the minor axis of CNN activations
EVAL_LOGITS_BYTES = 2**28  # the logits one block of configs holds at once (all its splits)


def grid_logits(
    apply: Callable[[Any, Array], Array], params: Any, x: Array, chunk: int = EVAL_CHUNK
) -> Array:
    """``apply(params[k], x)`` for every config ``k``: ``(K, N, ...)`` for params with leaves
    ``(K, ...)`` and ``x (N, ...)``, computed in equal chunks of at most ``chunk`` examples,
    rounded up to a multiple of :data:`ALIGN`.

    Why chunks: a forward pass over a whole split holds every activation of every example at once;
    for a CNN's im2col that is ``k²`` copies of each feature map (gigabytes for 60,000 MNIST
    images). Why equal ones (``x`` zero-padded to a multiple, the padding's outputs dropped): the
    program holds one copy of the forward pass, whatever ``N``, so it compiles once; aligned ones:
    the examples are the minor axis of the CNNs' activations, where unaligned rows run slower.
    Why the examples loop outside the configs loop: inside it, whatever of the forward pass
    depends on the examples alone (the first conv's patches of the shared input) is computed once
    per chunk for all configs, not once per config. ``apply`` must treat examples independently
    (every model here).

    Example:
      >>> grid_logits(lambda w, x: w * x, jnp.array([1.0, 2.0]), jnp.arange(3.0), chunk=2)
      Array([[0., 1., 2.],
             [0., 2., 4.]], dtype=float32)
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 example, got {chunk}")
    every_config = lambda xb: jax.lax.map(lambda p: apply(p, xb), params)  # (K, n, ...)
    n = x.shape[0]
    if n <= chunk:
        return every_config(x)
    num_chunks = -(-n // chunk)
    size = -(-n // (num_chunks * ALIGN)) * ALIGN
    x = jnp.pad(x, [(0, num_chunks * size - n)] + [(0, 0)] * (x.ndim - 1))
    out = jax.lax.map(every_config, x.reshape(num_chunks, size, *x.shape[1:]))
    out = jnp.moveaxis(out, 0, 1)  # (K, chunks, size, ...)
    return out.reshape(out.shape[0], num_chunks * size, *out.shape[3:])[:, :n]


def config_block(num_configs: int, bytes_per_config: int, budget: int) -> int:
    """Configs evaluated together: the largest divisor of ``num_configs`` whose logits fit
    ``budget`` bytes (at least 1).

    Example:
      >>> config_block(12, 100, budget=500), config_block(7, 100, budget=500)
      (4, 1)
    """
    if num_configs < 1:
        raise ValueError(f"num_configs must be at least 1, got {num_configs}")
    most = max(1, budget // max(1, bytes_per_config))
    return max(d for d in range(1, min(num_configs, most) + 1) if num_configs % d == 0)


def evaluate(program: Program, state: GridState, data: Data, loss_ids: Array) -> dict[str, Array]:
    """Test and train metrics of every config, ``(S, K')`` (NaN once diverged).

    ``loss_ids``: ``(K',)`` int32, each config's loss group. The configs go in blocks whose logits
    fit :data:`EVAL_LOGITS_BYTES` (:func:`config_block`); a block's logits come from
    :func:`grid_logits` (chunks of :data:`EVAL_CHUNK` examples, every config of the block per
    chunk), then its metrics one config at a time (``lax.map``: a config's metrics never depend on
    its neighbours'). A config's test loss is its own loss (with its k, M) on the true labels, its
    train metrics on its own (noisy) labels.
    """

    def one(args):
        test_logits, train_logits, val_logits, loss_id, hp = args
        branches = [
            lambda o, y, hp, fn=fn, extra=extra: fn(o, y, **{kw: hp[a] for a, kw in extra})
            for fn, extra in zip(program.losses, program.loss_hparams, strict=True)
        ]
        own_loss = (
            branches[0](test_logits, data.y_test, hp)
            if len(branches) == 1
            else jax.lax.switch(loss_id, branches, test_logits, data.y_test, hp)
        )
        y_train = data.y_train[0]
        if data.y_train.shape[0] > 1:
            y_train = data.y_train[label_row(hp["label_noise"], data.noise_levels)]
        nan = jnp.full((), jnp.nan, jnp.float32)
        return {
            "val_nll": nan if val_logits is None else metrics.nll(val_logits, data.y_val),
            "val_accuracy": nan if val_logits is None else metrics.accuracy(val_logits, data.y_val),
            "test_loss": jnp.mean(own_loss),
            "test_nll": metrics.nll(test_logits, data.y_test),
            "test_accuracy": metrics.accuracy(test_logits, data.y_test),
            "test_ece": metrics.ece(test_logits, data.y_test),
            "train_nll": metrics.nll(train_logits, y_train),
            "train_accuracy": metrics.accuracy(train_logits, y_train),
        }

    # all splits in one forward pass: one copy of the model in the program (compile time)
    splits = [x for x in (data.x_test, data.x_train, data.x_val) if x is not None]
    ends = np.cumsum([x.shape[0] for x in splits]).tolist()
    x_all = jnp.concatenate(splits)

    model = program.model
    # eval mode (a stateful model: on its own running statistics); apply_eval where there is one
    if model.stateful:
        apply = lambda v, x: model.apply_eval(*v, x)
    elif model.apply_eval is not None:
        apply = lambda p, x: model.apply_eval(p, (), x)
    else:
        apply = model.apply

    def block(args):
        params, loss_id, hp = args
        logits = grid_logits(apply, params, x_all)
        test, train, *val = jnp.split(logits, ends[:-1], axis=1)
        return jax.lax.map(one, (test, train, val[0] if val else None, loss_id, hp))

    s, k = state.diverged_at.shape
    # the budget is read here, not bound as a default, so that it can be changed (tests do)
    size = config_block(s * k, ends[-1] * program.num_classes * 4, EVAL_LOGITS_BYTES)
    blocks = lambda x: x.reshape(s * k // size, size, *x.shape[2:])
    variables = (state.params, state.model_state) if model.stateful else state.params
    args = (
        jax.tree.map(blocks, variables),
        blocks(jnp.tile(loss_ids, s)),
        jax.tree.map(blocks, state.hparams),
    )
    out = {name: v.reshape(s, k) for name, v in jax.lax.map(block, args).items()}
    alive = state.diverged_at < 0
    return constrain(program, {n: jnp.where(alive, v, jnp.nan) for n, v in out.items()}, True)
