"""The minibatch index stream: which examples each step of each seed trains on.

Every seed has its own data key; step ``t`` takes batch ``t mod E`` of epoch ``t // E`` (``E`` full
batches per epoch, the remainder dropped) from a permutation drawn from ``fold_in(key, epoch)``. The
stream depends on the seed alone, so every config of a seed sees the same minibatches (common
random numbers), and a resumed run continues it exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def batch_index(data_key: Array, step: Array, num_train: int, batch_size: int) -> Array:
    """Minibatch ``step`` of one seed: ``(B,)`` indices from a permutation per epoch, remainder
    dropped. The definition; :func:`batch_indices` computes a chunk's worth at once."""
    per_epoch = num_train // batch_size
    perm = jax.random.permutation(jax.random.fold_in(data_key, step // per_epoch), num_train)
    return jax.lax.dynamic_slice_in_dim(perm, (step % per_epoch) * batch_size, batch_size)


def batch_indices(
    data_key: Array, first_step: Array, num_steps: int, num_train: int, batch_size: int
) -> Array:
    """:func:`batch_index` for ``num_steps`` steps: ``(num_steps, B)``, one permutation per epoch
    the chunk touches instead of one per step, so the sort leaves the training step."""
    per_epoch = num_train // batch_size
    first_epoch = first_step // per_epoch
    num_epochs = (num_steps - 1) // per_epoch + 2  # static bound on the epochs a chunk touches
    epochs = first_epoch + jnp.arange(num_epochs, dtype=jnp.int32)
    perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(data_key, e), num_train))(
        epochs
    )
    steps = first_step + jnp.arange(num_steps, dtype=jnp.int32)
    rows, starts = steps // per_epoch - first_epoch, (steps % per_epoch) * batch_size
    return jax.vmap(lambda r, s: jax.lax.dynamic_slice_in_dim(perms[r], s, batch_size))(
        rows, starts
    )
