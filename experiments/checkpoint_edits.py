"""Rewrites a CLI sweep's checkpoint with an edit and its digests recomputed (no flags: the battery
and the tests import it): a corruption only the checks against the history, the spec and the model
can find."""

from __future__ import annotations

import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import jax

from softcls_jax import checkpoint, sweep
from softcls_jax.engine import Trainer


def edit(workdir: pathlib.Path, change: Callable[[Any, list[dict]], tuple[Any, list]]) -> None:
    """Rewrites the checkpoint of the CLI sweep in ``workdir`` with ``change(state, history) ->
    (state, history)`` applied (``state``: numpy leaves, padded as the sweep pads them), with
    fresh digests and sha256."""
    spec = sweep.read_spec(workdir)
    dataset = sweep.load_dataset(spec)
    model = sweep.model_or_factory(spec, dataset)
    trainer = Trainer(model, dataset, spec.layout(), spec.train_settings())
    directory = workdir / checkpoint.DIRECTORY
    with checkpoint.Checkpointer(directory, trainer) as ckpt:
        restored = ckpt.restore()
    state, history = change(jax.device_get(restored.state), restored.history)
    shutil.rmtree(directory)
    checkpoint.write(
        directory, state, history, trainer.layout, restored.pending, restored.segment_steps
    )
