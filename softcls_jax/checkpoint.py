"""Crash-safe, self-checking sweep checkpoints: the whole training state and metrics so far, one file.

A checkpoint holds the grid state (parameters, optimizer states, every config's hyperparameters,
divergence steps, step count) and the metric history; one written on a signal in the middle of a
chunk (:mod:`softcls_jax.preemption`) also holds that chunk's running sums (``pending``) and the
steps per compiled segment, which a resumed run keeps. Random streams need no saving: the engine
derives every key from ``(seed, step)``, so a restored state continues exactly where it stopped.

Format: a header line ``softcls-jax checkpoint 2``, the sha256 of the payload in hex and a newline,
then the payload (flax's msgpack serialization). It is written with
:func:`softcls_jax.files.atomic_write`: a ``kill -9`` at any moment leaves the previous checkpoint or
the new one. The runner saves the state of the *real* configs only (padding dropped,
:meth:`softcls_jax.engine.Trainer.portable_state`), so a checkpoint does not depend on the number of
devices it was written on.

On load the checkpoint is trusted only after checks: the checksum (flipped bytes), shapes and dtypes
against a template, and, given the layout and settings, the step against its history, the history's
steps against ``eval_every`` chunking, and every config's hyperparameters against the spec's.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import serialization

from softcls_jax.engine import METRICS, GridState, Layout, TrainSettings
from softcls_jax.files import atomic_write

FILENAME = "checkpoint.msgpack"
MAGIC = b"softcls-jax checkpoint 2\n"


PENDING = ("train_loss", "grad_norm")  # the running sums of an unfinished chunk


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, corrupted, or not of this sweep."""


class Restored(NamedTuple):
    """A checked checkpoint: the state (numpy), the history, and for one written mid-chunk the
    chunk's running sums (``{"from_step", "train_loss", "grad_norm"}``) and its segment steps."""

    state: GridState
    history: list[dict]
    pending: dict | None = None
    segment_steps: int | None = None


def save(
    path: str | os.PathLike,
    state: GridState,
    history: list[dict],
    pending: dict | None = None,
    segment_steps: int | None = None,
) -> None:
    """Writes ``state`` and ``history`` atomically to ``path``, with the payload's sha256; with
    ``pending``, the running sums of the chunk ``state`` is in the middle of."""
    leaves = jax.device_get(jax.tree.leaves(state))
    content = {
        "leaves": {str(i): np.asarray(leaf) for i, leaf in enumerate(leaves)},
        "history": {
            "step": np.asarray([h["step"] for h in history], np.int64),
            **{m: np.stack([np.asarray(h[m]) for h in history]) for m in METRICS},
        },
    }
    if segment_steps is not None:
        content["segment_steps"] = np.int64(segment_steps)
    if pending is not None:
        content["pending"] = {
            "from_step": np.int64(pending["from_step"]),
            **{m: np.asarray(pending[m], np.float64) for m in PENDING},
        }
    write_payload(path, serialization.msgpack_serialize(content))


def write_payload(path: str | os.PathLike, payload: bytes) -> None:
    """Writes an already serialized payload with its header and checksum (tests and tools)."""
    digest = hashlib.sha256(payload).hexdigest().encode()
    atomic_write(path, MAGIC + digest + b"\n" + payload)


def read_payload(path: str | os.PathLike) -> dict:
    """The checked, deserialized payload of a checkpoint.

    Raises:
      CheckpointError: unreadable, not a checkpoint of this format, or its checksum does not match.
    """
    try:
        raw = pathlib.Path(path).read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} is unreadable: {e.strerror or e}") from None
    if not raw.startswith(MAGIC) or raw[len(MAGIC) + 64 : len(MAGIC) + 65] != b"\n":
        raise CheckpointError(
            f"checkpoint {path} is unreadable: not a softcls-jax checkpoint of this version"
        )
    digest, payload = raw[len(MAGIC) : len(MAGIC) + 64], raw[len(MAGIC) + 65 :]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(
            f"checkpoint {path} is corrupted: its sha256 does not match its contents"
        )
    try:
        out = serialization.msgpack_restore(payload)
        if not isinstance(out, dict) or not {"leaves", "history"} <= set(out):
            raise ValueError("no leaves or history")
        return out
    except Exception as e:  # any corruption reads as "cannot use this checkpoint"
        raise CheckpointError(f"checkpoint {path} is unreadable: {e}") from None


def restore(
    path: str | os.PathLike,
    template: Any,
    layout: Layout | None = None,
    settings: TrainSettings | None = None,
) -> tuple[GridState, list[dict]]:
    """Reads and checks a checkpoint written by :func:`save`; the state comes back as numpy arrays.

    Args:
      path: the checkpoint file.
      template: a ``GridState`` (or its ``jax.eval_shape``) of the same grid, giving the tree
        structure, shapes and dtypes.
      layout: if given, the grid as specified (not arranged for devices): the state's per-config
        hyperparameters must equal its :meth:`~softcls_jax.engine.Layout.hparams` for the real
        configs, and the history's metrics must have its ``(S, K)`` shape.
      settings: if given, the step and the history must follow its ``steps`` and ``eval_every``.

    Raises:
      CheckpointError: naming what is wrong: unreadable or corrupted, or not of this grid.
    """
    restored = restore_run(path, template, layout, settings)
    return restored.state, restored.history


def restore_run(
    path: str | os.PathLike,
    template: Any,
    layout: Layout | None = None,
    settings: TrainSettings | None = None,
) -> Restored:
    """:func:`restore`, with a mid-chunk checkpoint's running sums and segment steps."""
    payload = read_payload(path)
    try:
        leaves = [np.asarray(payload["leaves"][str(i)]) for i in range(len(payload["leaves"]))]
        arrays = payload["history"]
        steps = np.asarray(arrays["step"])
        metrics = {m: np.asarray(arrays[m]) for m in METRICS}
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable: {e}") from None
    expected = jax.tree.leaves(template)
    if len(leaves) != len(expected):
        raise CheckpointError(
            f"checkpoint {path} does not match this sweep's model and grid: {len(leaves)} arrays, "
            f"expected {len(expected)}"
        )
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(template)]
    for name, a, b in zip(paths, leaves, expected, strict=True):
        if a.shape != tuple(b.shape) or a.dtype != b.dtype:
            raise CheckpointError(
                f"checkpoint {path} does not match this sweep's model and grid: state{name} is "
                f"{a.dtype}{list(a.shape)}, expected {np.dtype(b.dtype)}{list(b.shape)}"
            )
    state = jax.tree.unflatten(jax.tree.structure(template), leaves)
    history = _history(path, steps, metrics)
    try:
        segment = payload.get("segment_steps")
        segment = None if segment is None else int(segment)
        pending = payload.get("pending")
        if pending is not None:
            pending = {
                "from_step": int(pending["from_step"]),
                **{m: np.asarray(pending[m], np.float64) for m in PENDING},
            }
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable: {e}") from None
    _check(path, state, history, layout, settings, pending, segment)
    return Restored(state, history, pending, segment)


def _history(path: Any, steps: np.ndarray, metrics: dict[str, np.ndarray]) -> list[dict]:
    n = len(steps)
    if steps.ndim != 1 or n == 0 or not np.issubdtype(steps.dtype, np.integer):
        raise CheckpointError(f"checkpoint {path} has no valid history of steps")
    for m, a in metrics.items():
        if a.ndim != 3 or a.shape[0] != n:
            raise CheckpointError(
                f"checkpoint {path}: history of {m} has shape {list(a.shape)}, expected "
                f"({n}, S, K) for its {n} records"
            )
    return [
        {"step": int(step), **{m: metrics[m][i] for m in METRICS}} for i, step in enumerate(steps)
    ]


def _check(
    path: Any,
    state: GridState,
    history: list[dict],
    layout: Layout | None,
    settings: TrainSettings | None,
    pending: dict | None = None,
    segment: int | None = None,
) -> None:
    """The checkpoint against its own history and, if given, the spec's grid and settings."""
    bad = lambda what: CheckpointError(f"checkpoint {path} {what}")
    step = int(np.asarray(state.step))
    recorded = [h["step"] for h in history]
    if segment is not None and segment < 1:
        raise bad(f"records {segment} steps per segment")
    if pending is None and step != recorded[-1]:
        raise bad(
            f"is inconsistent: its state is at step {step}, its history ends at step {recorded[-1]}"
        )
    if pending is not None:
        if segment is None or pending["from_step"] != recorded[-1] or step <= recorded[-1]:
            raise bad(
                f"is inconsistent: its state is at step {step} inside a chunk from step "
                f"{pending['from_step']}, its history ends at step {recorded[-1]}"
            )
        if (step - recorded[-1]) % segment or (
            settings is not None and step >= min(recorded[-1] + settings.eval_every, settings.steps)
        ):
            raise bad(f"stopped at step {step}, not a segment boundary inside its chunk")
        for m in PENDING:
            if pending[m].shape != history[0][m].shape:
                raise bad(f"has running sums of {m} of shape {list(pending[m].shape)}")
    if settings is not None:
        every, total = settings.eval_every, settings.steps
        expected = [min(i * every, total) for i in range(len(recorded))]
        if recorded != expected or not 0 <= step <= total:
            raise bad(
                f"has a history of steps {_short(recorded)}, expected {_short(expected)} "
                f"(every {every} of {total} steps)"
            )
    diverged = np.asarray(state.diverged_at)
    if diverged.size and (diverged.min() < -1 or diverged.max() > step):
        raise bad(f"records divergence steps outside [-1, {step}] at step {step}")
    if layout is None:
        return
    layout = layout.real()  # the real configs only
    shape = layout.shape
    for m in METRICS:
        if history[0][m].shape != shape:
            raise bad(f"has {m} of shape {list(history[0][m].shape)}, expected {list(shape)}")
    spec = layout.hparams()
    if set(state.hparams) != set(spec):
        raise bad(f"holds hyperparameters {sorted(state.hparams)}, the spec {sorted(spec)}")
    for name, want in spec.items():
        have = np.asarray(state.hparams[name])
        if have.shape != want.shape or not np.array_equal(have, want):
            where = np.argwhere(have != want)[0] if have.shape == want.shape else None
            detail = (
                f"config {tuple(int(i) for i in where)} has {float(have[tuple(where)]):g}, the "
                f"spec {float(want[tuple(where)]):g}"
                if where is not None
                else f"shape {list(have.shape)}, expected {list(want.shape)}"
            )
            raise bad(f"holds other {name} values than the spec: {detail}")


def _short(steps: list[int]) -> str:
    return str(steps) if len(steps) <= 6 else f"[{steps[0]}, {steps[1]}, …, {steps[-1]}]"
