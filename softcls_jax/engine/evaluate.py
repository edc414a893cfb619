"""Evaluation of every config of a grid: test and train metrics from one compiled program."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from softcls_jax import metrics
from softcls_jax.engine.step import Data, GridState, Program, constrain, label_row

Array = jax.Array

EVAL_CHUNK = 2048  # examples per forward pass in evaluation: bounds its memory, whatever the data


def chunked_apply(apply: Callable[[Array], Array], x: Array, chunk: int = EVAL_CHUNK) -> Array:
    """``apply(x)`` for ``x (N, ...)``, computed ``chunk`` examples at a time: ``(N, ...)``.

    Why: a forward pass over a whole split holds every activation of every example at once; for a
    CNN's im2col that is ``k²`` copies of each feature map (gigabytes for 60,000 MNIST images). In
    ``lax.map`` over full chunks (sliced in place, no copy of ``x``) and one call for the remainder,
    the working set is one chunk's. ``apply`` must treat examples independently (every model here).

    Example:
      >>> chunked_apply(lambda x: 2 * x, jnp.arange(5.0), chunk=2)
      Array([0., 2., 4., 6., 8.], dtype=float32)
    """
    n = x.shape[0]
    if n <= chunk:
        return apply(x)
    full = n // chunk
    body = lambda i: apply(jax.lax.dynamic_slice_in_dim(x, i * chunk, chunk))
    out = jax.lax.map(body, jnp.arange(full))
    out = out.reshape(full * chunk, *out.shape[2:])
    return out if n == full * chunk else jnp.concatenate([out, apply(x[full * chunk :])])


def evaluate(program: Program, state: GridState, data: Data, loss_ids: Array) -> dict[str, Array]:
    """Test and train metrics of every config, ``(S, K')`` (NaN once diverged).

    ``loss_ids``: ``(K',)`` int32, each config's loss group. Configs are evaluated one at a time by
    ``lax.map`` (a config's metrics never depend on its neighbours'), each split in chunks of
    :data:`EVAL_CHUNK` examples (:func:`chunked_apply`); a config's test loss is its own loss (with
    its k, M) on the true labels, its train metrics on its own (noisy) labels.
    """

    def one(args):
        params, loss_id, hp = args
        logits = lambda x: chunked_apply(lambda xb: program.model.apply(params, xb), x)
        test_logits = logits(data.x_test)
        train_logits = logits(data.x_train)
        branches = [
            lambda o, y, hp, fn=fn, extra=extra: fn(o, y, **{kw: hp[a] for a, kw in extra})
            for fn, extra in zip(program.losses, program.loss_hparams, strict=True)
        ]
        own_loss = (branches[0](test_logits, data.y_test, hp) if len(branches) == 1
                    else jax.lax.switch(loss_id, branches, test_logits, data.y_test, hp))  # fmt: skip
        y_train = data.y_train[0]
        if data.y_train.shape[0] > 1:
            y_train = data.y_train[label_row(hp["label_noise"], data.noise_levels)]
        nan = jnp.full((), jnp.nan, jnp.float32)
        val_logits = None if data.x_val is None else logits(data.x_val)
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

    s, k = state.diverged_at.shape
    flat = lambda x: x.reshape(s * k, *x.shape[2:])
    args = (jax.tree.map(flat, state.params), jnp.tile(loss_ids, s),
            jax.tree.map(flat, state.hparams))  # fmt: skip
    out = {name: v.reshape(s, k) for name, v in jax.lax.map(one, args).items()}
    alive = state.diverged_at < 0
    return constrain(program, {n: jnp.where(alive, v, jnp.nan) for n, v in out.items()}, True)
