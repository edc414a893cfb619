"""Crash-safe sweep checkpoints: the whole training state and metrics so far, in one file.

A checkpoint holds the grid state (parameters, optimizer states with their learning rates, divergence
steps, step count) and the metric history. Random streams need no saving: the engine derives every key
from ``(seed, step)``, so a restored state continues exactly where it stopped.

The file is flax's msgpack serialization, written to a temporary file, flushed to disk and renamed
over the old checkpoint: a ``kill -9`` at any moment leaves the previous checkpoint or the new one.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import numpy as np
from flax import serialization

from softcls_jax.engine import METRICS, GridState
from softcls_jax.files import atomic_write

FILENAME = "checkpoint.msgpack"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, or not of this sweep's model and grid."""


def save(path: str | os.PathLike, state: GridState, history: list[dict]) -> None:
    """Writes ``state`` and ``history`` atomically to ``path``."""
    path = pathlib.Path(path)
    leaves = jax.device_get(jax.tree.leaves(state))
    payload = {
        "leaves": {str(i): np.asarray(leaf) for i, leaf in enumerate(leaves)},
        "history": {
            "step": np.asarray([h["step"] for h in history], np.int64),
            **{m: np.stack([np.asarray(h[m]) for h in history]) for m in METRICS},
        },
    }
    atomic_write(path, serialization.msgpack_serialize(payload))


def restore(path: str | os.PathLike, template: Any) -> tuple[GridState, list[dict]]:
    """Reads a checkpoint written by :func:`save`; the state comes back as host (numpy) arrays.

    Args:
      path: the checkpoint file.
      template: a ``GridState`` (or its ``jax.eval_shape``) of the same grid, giving the tree structure.

    Raises:
      CheckpointError: if the file is unreadable or does not fit the template.
    """
    try:
        payload = serialization.msgpack_restore(pathlib.Path(path).read_bytes())
        leaves = [payload["leaves"][str(i)] for i in range(len(payload["leaves"]))]
        history_arrays = payload["history"]
    except Exception as e:  # any corruption reads as "cannot use this checkpoint"
        raise CheckpointError(f"checkpoint {path} is unreadable: {e}") from None
    expected = jax.tree.leaves(template)
    shapes_ok = len(leaves) == len(expected) and all(
        np.shape(a) == tuple(b.shape) and np.asarray(a).dtype == b.dtype
        for a, b in zip(leaves, expected, strict=True)
    )
    if not shapes_ok:
        raise CheckpointError(f"checkpoint {path} does not match this sweep's model and grid")
    state = jax.tree.unflatten(jax.tree.structure(template), [np.asarray(x) for x in leaves])
    steps = history_arrays["step"]
    history = [
        {"step": int(step), **{m: np.asarray(history_arrays[m][i]) for m in METRICS}}
        for i, step in enumerate(steps)
    ]
    return state, history
