"""Checksums of arrays that do not depend on how they are sharded: what checkpoints are checked with.

orbax-checkpoint checks a checkpoint's structure and shard indices, not its array data, and a sha256
of an array needs all of its bytes in one process. :func:`tree_digests` instead computes, per leaf,
two sums modulo 2³² of a mixed word of every element and its global position:

.. math::  h_j(x) = \\sum_i f\\big(f(i \\oplus s_j) \\oplus w_i\\big) \\bmod 2^{32},\\quad j = 1, 2

where :math:`w_i` is element :math:`i`'s bits as a uint32 word (two words for 8-byte dtypes),
:math:`f` is MurmurHash3's 32-bit finaliser (every input bit flips about half of the output bits)
and :math:`s_1, s_2` are two constants. Integer addition is associative and commutative, so the sums
are exact whatever the reduction order: the same on 1 or 64 devices, on one host or several, in a
jitted program over sharded arrays or in numpy. A flipped bit in any element changes each sum except
with probability about 2⁻³², both with about 2⁻⁶⁴; a swap of two elements changes them too (the
position is mixed in).

  >>> import jax.numpy as jnp
  >>> a = jnp.arange(6.0).reshape(2, 3)
  >>> hex_digests(tree_digests([a])) == hex_digests(tree_digests([a.T.T]))
  True
  >>> hex_digests(tree_digests([a])) == hex_digests(tree_digests([a.at[1, 2].set(5.000001)]))
  False
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

SEEDS = (0x9E3779B9, 0x7F4A7C15)


def _fmix(h: jax.Array) -> jax.Array:
    """MurmurHash3's finaliser of uint32 words (an avalanche: each bit affects every bit)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def words(x: Any) -> jax.Array:
    """``x``'s bits as uint32 words: one per element, two (a trailing axis) for 8-byte dtypes."""
    x = jnp.asarray(x)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = x.dtype.itemsize
    if size == 4 or size == 8:
        return lax.bitcast_convert_type(x, jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
    return lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def leaf_digest(x: Any) -> jax.Array:
    """``(2,)`` uint32: the two position-mixed sums of one array (see the module docstring)."""
    w = words(x)
    index = jnp.zeros(w.shape, jnp.uint32)  # the global flat position, from per-axis iotas
    stride = 1
    for axis in reversed(range(w.ndim)):
        index = index + lax.broadcasted_iota(jnp.uint32, w.shape, axis) * jnp.uint32(stride)
        stride = (stride * w.shape[axis]) % 2**32
    sums = [jnp.sum(_fmix(_fmix(index ^ jnp.uint32(s)) ^ w), dtype=jnp.uint32) for s in SEEDS]
    return jnp.stack(sums)


def tree_digests(tree: Any) -> jax.Array:
    """``(leaves, 2)`` uint32: :func:`leaf_digest` of every leaf of ``tree``, in
    ``jax.tree.leaves`` order. Pure and jit-able; the result does not depend on the sharding."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((0, 2), jnp.uint32)
    return jnp.stack([leaf_digest(x) for x in leaves])


def _fmix_np(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def numpy_digests(tree: Any) -> np.ndarray:
    """:func:`tree_digests` in numpy, on the host: for arrays read whole (a checkpoint restored on
    another number of devices), which then need no device memory. The same values."""
    out = []
    for x in jax.tree.leaves(tree):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        x = np.asarray(x)
        if x.dtype == np.bool_:
            w = x.astype(np.uint32)
        elif x.dtype.itemsize in (4, 8):
            w = np.ascontiguousarray(x).view(np.uint32)  # 8-byte: two words, low one first
            w = w.reshape(*x.shape, 2) if x.dtype.itemsize == 8 else w.reshape(x.shape)
        else:
            unsigned = {1: np.uint8, 2: np.uint16}[x.dtype.itemsize]
            w = np.ascontiguousarray(x).view(unsigned).astype(np.uint32)
        index = np.arange(w.size, dtype=np.uint64).astype(np.uint32)  # modulo 2**32
        with np.errstate(over="ignore"):
            sums = [
                np.sum(_fmix_np(_fmix_np(index ^ np.uint32(s)) ^ w.reshape(-1)), dtype=np.uint32)
                for s in SEEDS
            ]
        out.append(sums)
    return np.asarray(out, np.uint32).reshape(-1, 2)


def hex_digests(digests: Any) -> list[str]:
    """Each row of a :func:`tree_digests` result as 16 hex digits."""
    return [f"{int(a):08x}{int(b):08x}" for a, b in np.asarray(digests, np.uint32)]
