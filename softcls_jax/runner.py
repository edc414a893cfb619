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

from softcls_jax import checkpoint, results, trained
from softcls_jax import plan as plan_lib
from softcls_jax.data import Dataset, with_validation
from softcls_jax.engine import Layout, Trainer, TrainSettings
from softcls_jax.engine.layout import LossLike
from softcls_jax.files import writable_dir
from softcls_jax.models import Model
from softcls_jax.optim import OptimizerLike, optimizer_name

Progress = Callable[[int, int, dict, float], None]  # (step, total steps, record, seconds so far)
PLOTS = ("accuracy_vs_lr.png", "learning_curves.png", "train_loss_curves.png")
TENSORBOARD = "tensorboard"  # the event files' directory inside a workdir


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained grid: the results document, and the final parameters (and a stateful model's
    variables) of its real configs (host arrays, leaves ``(S, K, ...)`` in the layout's order)."""

    document: dict[str, Any]
    params: Any
    layout: Layout
    model_state: Any = ()
    selected: dict[str, list[trained.Trained]] | None = None
    parts: tuple[Run, ...] = ()  # per architecture of a plan of several (params None above)


def run(
    model: Model | plan_lib.ModelFor,
    dataset: Dataset,
    layout: Layout,
    settings: TrainSettings,
    *,
    described: Mapping[str, Any] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    on_progress: Progress | None = None,
    on_resume: Callable[[int], None] | None = None,
    tensorboard_dir: str | os.PathLike | None = None,
    select_on: str = "val",
) -> Run:
    """Trains every config of ``layout``; checkpoints after every chunk if ``checkpoint_path``.

    A layout with architecture axes (``width``, ``depth``: :mod:`softcls_jax.plan`) trains one
    program per architecture, one after the other, each with its own checkpoint
    (``NAME.archI.EXT``), into one document; ``model`` is then a factory
    ``model(width=…, depth=…) -> Model`` taking those axes.

    Args:
      model, dataset, layout, settings: what to train.
      described: the ``settings`` section of the document (default: built from the arguments).
      checkpoint_path: where to save the state of the real configs after every chunk (atomically,
        checksummed, independent of the number of devices).
      resume: continue from the checkpoint at ``checkpoint_path`` once it passed its checks.
      on_progress: called after every chunk.
      on_resume: called with the step a resumed run continues from.
      tensorboard_dir: if given, every chunk's metrics are appended to TensorBoard event files
        there, one run per config with its HParams (:mod:`softcls_jax.tensorboard`).
      select_on: the split whose metrics choose the best setting per loss (``"val"``; ``"test"``
        only when the data set has no validation split, and flagged as optimistic).

    Raises:
      ValueError: bad settings; :class:`~softcls_jax.checkpoint.CheckpointError` for a checkpoint
        that is corrupted or not of this grid.
      OSError: a checkpoint could not be written (out of space, …); the last good one stays.
    """
    plan = plan_lib.Plan.of(layout)
    is_model = isinstance(model, Model)
    if is_model == plan.architectures:
        raise ValueError(
            "width and depth axes need a model factory, model(width=..., depth=...) -> Model"
            if is_model
            else f"a model factory ({model!r}) needs width or depth axes; otherwise pass a Model"
        )
    kwargs = dict(
        checkpoint_path=checkpoint_path,
        resume=resume,
        on_progress=on_progress,
        on_resume=on_resume,
        tensorboard_dir=tensorboard_dir,
        select_on=select_on,
    )
    if is_model:
        return _run_one(model, dataset, layout, settings, described=described, **kwargs)
    return _run_plan(plan, model, dataset, settings, described=described, **kwargs)


def _run_plan(
    plan: plan_lib.Plan,
    model_for: plan_lib.ModelFor,
    dataset: Dataset,
    settings: TrainSettings,
    *,
    described: Mapping[str, Any] | None,
    checkpoint_path: str | os.PathLike | None,
    resume: bool,
    on_progress: Progress | None,
    select_on: str,
    **rest: Any,
) -> Run:
    """:func:`run` of a plan of several architectures, one program each, one document; ``rest``:
    :func:`_run_one`'s other arguments, the same for every part."""
    done, models = [], []
    total = len(plan.parts) * settings.steps
    for part in plan.parts:
        model = plan_lib.model_of(model_for, part)
        if described is None:
            described = describe(model, dataset, plan.layout, settings)
        path = plan.checkpoint(checkpoint_path, part)
        offset = part.index * settings.steps
        progress = None
        if on_progress is not None:
            progress = lambda step, _, record, s, offset=offset: on_progress(
                offset + step, total, record, s
            )
        done.append(
            _run_one(
                model,
                dataset,
                part.layout,
                settings,
                described=described,
                checkpoint_path=path,
                resume=resume and path is not None and path.exists(),
                on_progress=progress,
                select_on=select_on,
                extra_axes=part.architecture,
                **rest,
            )
        )
        models.append(model)
    document = plan_lib.merge_documents(plan, [r.document for r in done], select_on)
    parts = [(r.document, r.params, r.model_state, m) for r, m in zip(done, models, strict=True)]
    chosen = plan_lib.selected(plan, document, parts)
    return Run(document, None, plan.layout, None, chosen, tuple(done))


def _run_one(
    model: Model,
    dataset: Dataset,
    layout: Layout,
    settings: TrainSettings,
    *,
    described: Mapping[str, Any] | None,
    checkpoint_path: str | os.PathLike | None,
    resume: bool,
    on_progress: Progress | None,
    on_resume: Callable[[int], None] | None,
    tensorboard_dir: str | os.PathLike | None,
    select_on: str,
    extra_axes: tuple[tuple[str, float], ...] = (),
) -> Run:
    """:func:`run` of one program (a layout without architecture axes)."""
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

    log = None
    if tensorboard_dir is not None and jax.process_index() == 0:
        from softcls_jax.tensorboard import GridLog

        log = GridLog(tensorboard_dir, layout, extra_axes)
    logged = len(history or [])  # a resumed run logs only its new records

    def on_chunk(state: Any, history: list[dict]) -> None:
        nonlocal logged
        if log is not None:
            for record in history[logged:]:
                log.write(record)
            logged = len(history)
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
    if log is not None:
        log.close()
    wall = time.perf_counter() - start
    timing = {
        "wall_s": wall,
        "trace_s": trainer.trace_seconds,
        "compile_s": trainer.compile_seconds,
        "eval_s": trainer.eval_seconds,
        "compiled_chunks": trainer.compiled_chunks,
        "config_examples_per_s": layout.size * settings.steps * settings.batch_size / wall,
    }
    described = (
        dict(described) if described is not None else describe(model, dataset, layout, settings)
    )
    document = results.build(
        described, trainer.layout, history, trainer.diverged_steps(state), timing, select_on
    )
    params, model_state = trainer.real_variables(state)
    chosen = trained.selected(document, params, model_state, model)
    return Run(document, params, trainer.layout, model_state, chosen)


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
        "optimizer": optimizer_name(settings.optimizer),
    }


class GridResult(dict):
    """What :func:`run_grid` returns: the results document (a ``dict``, as ``results.json``), and
    the trained models.

    Attributes:
      selected: per loss, the configs of the setting chosen on validation (one per seed), each a
        :class:`~softcls_jax.trained.Trained`: ``.module()`` is the ``nnx.Module`` in eval mode,
        ``.apply(x)`` its logits.
      params, model_state: every config's variables (leaves ``(S, K, ...)`` in the document's
        config order) when ``keep_all=True``; None otherwise.
    """

    selected: dict[str, list[trained.Trained]]
    params: Any = None
    model_state: Any = None


def run_grid(
    model: Model | plan_lib.ModelFor,
    dataset: Dataset,
    *,
    losses: Sequence[LossLike] = ("ce",),
    learning_rates: Sequence[float] = (0.1,),
    seeds: Sequence[int] = (0,),
    axes: Mapping[str, Sequence[float]] | None = None,
    optimizer: OptimizerLike = "sgd",
    schedule: str = "constant",
    augment: str = "none",
    weight_decay_mask: str = "model",
    steps: int = 2000,
    batch_size: int = 128,
    eval_every: int = 200,
    data_seed: int = 0,
    val_fraction: float = 0.1,
    select_on: str = "val",
    workdir: str | os.PathLike | None = None,
    on_progress: Progress | None = None,
    keep_all: bool = False,
) -> GridResult:
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
      optimizer: a name of :data:`softcls_jax.optim.OPTIMIZERS` (``adamw``, ``lion``, …), an optax
        factory (``optax.adamw``), or your function ``fn(learning_rate, **hyperparameters) ->
        GradientTransformation``; its numeric keywords can be ``axes`` (``{"b1": (0.8, 0.9)}``).
      schedule, steps, batch_size, eval_every, data_seed: as :class:`TrainSettings`.
      augment: ``none``, ``flip``, ``crop`` or ``crop_flip`` (:mod:`softcls_jax.augment`): the
        training minibatches of an image data set, never validation or test.
      weight_decay_mask: what weight decay touches: ``model`` (the model's default: kernels only
        for ``resnet``, all parameters elsewhere), ``all``, or ``kernels`` (an optax mask).
      val_fraction: a data set without a validation split gets a stratified one of this fraction
        of its training data (seeded by ``data_seed``); 0 only with ``select_on="test"``.
      select_on: the split the ``selection`` section chooses on: ``"val"``, or ``"test"``
        (optimistic, and said so in the summary).
      workdir: if given, writes results.json, results.csv, summary.md, plots and TensorBoard
        events (``workdir/tensorboard``) there, and the selected configs' variables
        (``workdir/trained``, read back by :func:`softcls_jax.trained.load`).
      on_progress: called after every chunk with ``(step, steps, record, seconds)``.
      keep_all: also give back every config's variables (``.params``, ``.model_state``).

    Returns:
      A :class:`GridResult`: the results.json document (``settings``, ``axes``, ``environment``,
      ``configs`` — per config its loss, axis values, seed, final metrics, divergence and curves —,
      ``selection`` and ``timing``) with the selected configs' trained models in ``.selected``.
    """
    check_selection(val_fraction, select_on)
    if dataset.x_val is None and val_fraction > 0:
        dataset = with_validation(dataset, val_fraction, seed=data_seed)
    layout = Layout(tuple(losses), tuple(learning_rates), tuple(seeds), axes or {})
    settings = TrainSettings(
        optimizer,
        steps,
        batch_size,
        eval_every,
        schedule,
        data_seed,
        augment=augment,
        weight_decay_mask=weight_decay_mask,
    )
    if workdir is not None:
        workdir = writable_dir(workdir)
    board = None if workdir is None else pathlib.Path(workdir) / TENSORBOARD
    done = run(
        model,
        dataset,
        layout,
        settings,
        on_progress=on_progress,
        tensorboard_dir=board,
        select_on=select_on,
    )
    result = GridResult(done.document)
    result.selected = done.selected
    if keep_all:  # with architecture axes: one tree per architecture, in the plan's order
        result.params, result.model_state = done.params, done.model_state
        if done.parts:
            result.params = [p.params for p in done.parts]
            result.model_state = [p.model_state for p in done.parts]
    if workdir is not None and jax.process_index() == 0:
        write_outputs(result, pathlib.Path(workdir))
        trained.save(workdir, result.selected)
    return result


def check_selection(val_fraction: float, select_on: str) -> None:
    """``ValueError`` unless the validation fraction and the selection split fit together."""
    if select_on not in results.SPLITS:
        raise ValueError(f"select_on must be one of {list(results.SPLITS)}, got {select_on!r}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if val_fraction == 0 and select_on != "test":
        raise ValueError(
            "val_fraction=0 leaves nothing to select on; hold out a validation split, "
            "or choose on test explicitly with select_on='test' (optimistic)"
        )


def write_outputs(document: dict, workdir: pathlib.Path) -> None:
    """Writes the result files and plots of a finished grid, each atomically."""
    from softcls_jax import plots  # imported here: it selects matplotlib's Agg backend

    records, on = document["configs"], document["selection"]["on"]
    plots.accuracy_vs_lr(records, workdir / PLOTS[0], on)
    plots.learning_curves(records, workdir / PLOTS[1], "test_accuracy", on)
    plots.learning_curves(records, workdir / PLOTS[2], "train_loss", on)
    results.atomic_write_text(workdir / "results.csv", results.to_csv(records))
    results.atomic_write_text(workdir / "summary.md", results.summary_markdown(document, PLOTS))
    results.atomic_write_json(workdir / "results.json", document)
