"""The one way a grid is trained: model + data + layout + settings → the results document.

:func:`run` is what the sweep and every experiment call; :func:`run_grid` is the same for notebooks,
with a user's own model (:func:`softcls_jax.models.from_nnx`), data (:func:`softcls_jax.data.from_arrays`)
and losses (any ``loss(logits, labels) -> per-example loss``):

  >>> doc = run_grid(model, dataset, losses=("ce", my_loss), learning_rates=(0.1, 0.3),
  ...                axes={"weight_decay": (0.0, 1e-4)}, steps=500)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from softcls_jax import checkpoint, results
from softcls_jax.data import Dataset
from softcls_jax.engine import Layout, Trainer, TrainSettings
from softcls_jax.engine.layout import LossLike
from softcls_jax.files import writable_dir
from softcls_jax.models import Model

Progress = Callable[[int, int, dict, float], None]  # (step, total steps, record, seconds so far)
PLOTS = ("accuracy_vs_lr.png", "learning_curves.png", "train_loss_curves.png")


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained grid: the results document, and the final parameters of its real configs (host
    arrays, leaves ``(S, K, ...)`` in the layout's order)."""

    document: dict[str, Any]
    params: Any
    layout: Layout


def run(
    model: Model,
    dataset: Dataset,
    layout: Layout,
    settings: TrainSettings,
    *,
    described: Mapping[str, Any] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    on_progress: Progress | None = None,
    on_resume: Callable[[int], None] | None = None,
) -> Run:
    """Trains every config of ``layout``; checkpoints after every chunk if ``checkpoint_path``.

    Args:
      model, dataset, layout, settings: what to train.
      described: the ``settings`` section of the document (default: built from the arguments).
      checkpoint_path: where to save the state of the real configs after every chunk (atomically,
        checksummed, independent of the number of devices).
      resume: continue from the checkpoint at ``checkpoint_path`` once it passed its checks.
      on_progress: called after every chunk.
      on_resume: called with the step a resumed run continues from.

    Raises:
      ValueError: bad settings; :class:`~softcls_jax.checkpoint.CheckpointError` for a checkpoint
        that is corrupted or not of this grid.
      OSError: a checkpoint could not be written (out of space, …); the last good one stays.
    """
    start = time.perf_counter()
    trainer = Trainer(model, dataset, layout, settings)
    state, history = None, None
    if resume:  # checked against this grid and settings; saved device-independent, padded here
        host, history = checkpoint.restore(
            checkpoint_path, trainer.portable_template(), layout, settings
        )
        state = trainer.device_state(host)
        if on_resume is not None:
            on_resume(int(state.step))

    def on_chunk(state: Any, history: list[dict]) -> None:
        if checkpoint_path is not None:
            host = trainer.portable_state(state)  # a collective on several hosts: all join
            if jax.process_index() == 0:
                checkpoint.save(checkpoint_path, host, history)
        if on_progress is not None:
            on_progress(
                history[-1]["step"], settings.steps, history[-1], time.perf_counter() - start
            )

    state, history = trainer.train(state=state, history=history, on_chunk=on_chunk)
    jax.block_until_ready(state)
    wall = time.perf_counter() - start
    timing = {
        "wall_s": wall,
        "compile_s": trainer.compile_seconds,
        "compiled_chunks": trainer.compiled_chunks,
        "config_examples_per_s": layout.size * settings.steps * settings.batch_size / wall,
    }
    described = (
        dict(described) if described is not None else describe(model, dataset, layout, settings)
    )
    document = results.build(
        described, trainer.layout, history, trainer.diverged_steps(state), timing
    )
    return Run(document, trainer.real_params(state), trainer.layout)


def describe(model: Model, dataset: Dataset, layout: Layout, settings: TrainSettings) -> dict:
    """The ``settings`` section of a document trained through the Python API."""
    return {
        "losses": list(layout.loss_names),
        "learning_rates": list(layout.learning_rates),
        "seeds": list(layout.seeds),
        "axes": {name: list(values) for name, values in layout.axes},
        "dataset": dataset.name,
        "model": model.name,
        **{f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)},
    }


def run_grid(
    model: Model,
    dataset: Dataset,
    *,
    losses: Sequence[LossLike] = ("ce",),
    learning_rates: Sequence[float] = (0.1,),
    seeds: Sequence[int] = (0,),
    axes: Mapping[str, Sequence[float]] | None = None,
    optimizer: str = "sgd",
    schedule: str = "constant",
    steps: int = 2000,
    batch_size: int = 128,
    eval_every: int = 200,
    data_seed: int = 0,
    workdir: str | os.PathLike | None = None,
    on_progress: Progress | None = None,
) -> dict[str, Any]:
    """Trains the grid ``losses × learning_rates × axes × seeds`` as one compiled program.

    Example (a custom Flax NNX module and a custom loss; see the README):
      >>> doc = run_grid(from_nnx(lambda rngs: MyNet(rngs)), from_arrays(x, y, xt, yt),
      ...                losses=("ce", my_loss), learning_rates=(0.05, 0.2))  # doctest: +SKIP

    Args:
      model: a :class:`~softcls_jax.models.Model` (``make_model``, or ``from_nnx`` for your own).
      dataset: a :class:`~softcls_jax.data.Dataset` (``data.load``, or ``from_arrays``).
      losses: registry names (``ce``, ``mse``, ``square``) or functions
        ``loss(logits (N, C), labels) -> (N,)``; with a ``label_smoothing`` axis, ``labels`` are
        ``(N, C)`` probability vectors, else ``(N,)`` integer ids.
      learning_rates, seeds: the learning-rate axis and the seeds.
      axes: other axes, ``{name: values}`` (:data:`softcls_jax.engine.AXES`).
      optimizer, schedule, steps, batch_size, eval_every, data_seed: as :class:`TrainSettings`.
      workdir: if given, writes results.json, results.csv, summary.md and plots there.
      on_progress: called after every chunk with ``(step, steps, record, seconds)``.

    Returns:
      The results.json document: ``settings``, ``axes``, ``environment``, ``configs`` (per config
      its loss, axis values, seed, final metrics, divergence and curves) and ``timing``.
    """
    layout = Layout(tuple(losses), tuple(learning_rates), tuple(seeds), axes or {})
    settings = TrainSettings(optimizer, steps, batch_size, eval_every, schedule, data_seed)
    if workdir is not None:
        workdir = writable_dir(workdir)
    document = run(model, dataset, layout, settings, on_progress=on_progress).document
    if workdir is not None and jax.process_index() == 0:
        write_outputs(document, pathlib.Path(workdir))
    return document


def write_outputs(document: dict, workdir: pathlib.Path) -> None:
    """Writes the result files and plots of a finished grid, each atomically."""
    from softcls_jax import plots  # imported here: it selects matplotlib's Agg backend

    records = document["configs"]
    plots.accuracy_vs_lr(records, workdir / PLOTS[0])
    plots.learning_curves(records, workdir / PLOTS[1], "test_accuracy")
    plots.learning_curves(records, workdir / PLOTS[2], "train_loss")
    results.atomic_write_text(workdir / "results.csv", results.to_csv(records))
    results.atomic_write_text(workdir / "summary.md", results.summary_markdown(document, PLOTS))
    results.atomic_write_json(workdir / "results.json", document)
