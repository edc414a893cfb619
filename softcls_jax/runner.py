"""The one way a grid is trained: model + data + layout + settings → the results document.

:func:`run` is what the sweep and every experiment call; :func:`run_grid` is the same for notebooks,
with a user's own model (:func:`softcls_jax.models.from_nnx`), data (:func:`softcls_jax.data.from_arrays`)
and losses (any ``loss(logits, labels) -> per-example loss``):

  >>> doc = run_grid(model, dataset, losses=("ce", my_loss), learning_rates=(0.1, 0.3),
  ...                axes={"weight_decay": (0.0, 1e-4)}, steps=500)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from softcls_jax import checkpoint, memory, results, trained
from softcls_jax import plan as plan_lib
from softcls_jax.data import Dataset, with_validation
from softcls_jax.engine import Layout, Trainer, TrainSettings
from softcls_jax.engine.layout import LossLike
from softcls_jax.files import writable_dir
from softcls_jax.models import Model
from softcls_jax.optim import OptimizerLike, optimizer_name
from softcls_jax.preemption import Preempted, StopCheck, stop_on_signals

Progress = Callable[[int, int, dict, float], None]  # (step, total steps, record, seconds so far)
PLOTS = ("accuracy_vs_lr.png", "learning_curves.png", "train_loss_curves.png")
TENSORBOARD = "tensorboard"  # the event files' directory inside a workdir
BLOCK_PLAN = ".blocks.json"  # beside a checkpoint NAME: NAME.blocks.json, the blocks it was cut in


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


@dataclasses.dataclass(frozen=True)
class _Hooks:
    """What every block of a run shares besides the grid: the document's settings section, the
    callbacks, the TensorBoard directory, the selection split and a part's architecture values."""

    described: Mapping[str, Any] | None = None
    on_progress: Progress | None = None
    on_resume: Callable[[int], None] | None = None
    tensorboard_dir: str | os.PathLike | None = None
    select_on: str = "val"
    extra_axes: tuple[tuple[str, float], ...] = ()
    stop: StopCheck | None = None
    on_plan: Callable[[str], None] | None = None


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
    memory_budget: float | None = None,
    max_configs_per_block: int | None = None,
    stop: StopCheck | None = None,
    on_plan: Callable[[str], None] | None = None,
) -> Run:
    """Trains every config of ``layout``; checkpoints after every chunk if ``checkpoint_path``.

    A layout with architecture axes (``width``, ``depth``: :mod:`softcls_jax.plan`) trains one
    program per architecture, one after the other, each with its own checkpoint
    (the directory ``NAME.archI``), into one document; ``model`` is then a factory
    ``model(width=…, depth=…) -> Model`` taking those axes.

    Memory blocks. Before anything is allocated, the grid's programs are compiled and their
    per-device memory read (:mod:`softcls_jax.memory`). A grid that does not fit the budget, or has
    more than ``max_configs_per_block`` configs, trains as blocks of configs one after the other
    (:meth:`~softcls_jax.engine.Layout.blocks`: equal shapes, so one compiled program serves all),
    each with its checkpoint ``NAME.blockJ`` and the cut recorded in ``NAME.blocks.json`` (kept
    on resume), into one document whose ``timing`` says how many blocks ran and why.

    Args:
      model, dataset, layout, settings: what to train.
      described: the ``settings`` section of the document (default: built from the arguments).
      checkpoint_path: the directory of the checkpoint saved after every chunk
        (:mod:`softcls_jax.checkpoint`: sharded, asynchronous, checked on restore, independent of
        the number of devices); without ``resume``, a checkpoint there is replaced.
      resume: continue from the checkpoint at ``checkpoint_path`` once it passed its checks.
      on_progress: called after every chunk.
      on_resume: called with the step a resumed run continues from.
      tensorboard_dir: if given, every chunk's metrics are appended to TensorBoard event files
        there, one run per config with its HParams (:mod:`softcls_jax.tensorboard`).
      select_on: the split whose metrics choose the best setting per loss (``"val"``; ``"test"``
        only when the data set has no validation split, and flagged as optimistic).
      memory_budget: GB a device may use (default: measured, :func:`softcls_jax.memory.device_budget`).
      max_configs_per_block: at most this many configs per block (default: as many as fit).
      stop: asked at every step boundary the loop reaches (:mod:`softcls_jax.preemption`); once it
        gives a reason, the state is checkpointed and :class:`~softcls_jax.preemption.Preempted`
        raised. Long chunks then run as shorter segments of one compiled program.
      on_plan: called with one line each about the block plan and the time it will take.

    Raises:
      ValueError: bad settings; :class:`~softcls_jax.memory.MemoryBudgetError` if one block of the
        smallest size does not fit; :class:`~softcls_jax.checkpoint.CheckpointError` for a
        checkpoint that is corrupted or not of this grid.
      OSError: a checkpoint could not be written (out of space, …); the last good one stays.
      Preempted: ``stop`` asked to stop (after the checkpoint).
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
        memory_budget=memory_budget,
        max_configs_per_block=max_configs_per_block,
        stop=stop,
        on_plan=on_plan,
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
        if on_progress is not None:  # the part's steps (of all its blocks) as its share of total
            progress = lambda step, steps, record, s, offset=offset: on_progress(
                offset + step * settings.steps // steps, total, record, s
            )
        done.append(
            _run_one(
                model,
                dataset,
                part.layout,
                settings,
                described=described,
                checkpoint_path=path,
                resume=resume and path is not None,
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
    memory_budget: float | None = None,
    max_configs_per_block: int | None = None,
    stop: StopCheck | None = None,
    on_plan: Callable[[str], None] | None = None,
) -> Run:
    """:func:`run` of one program (a layout without architecture axes), in memory blocks if it
    does not fit."""
    hooks = _Hooks(
        described, on_progress, on_resume, tensorboard_dir, select_on, extra_axes, stop, on_plan
    )
    start = time.perf_counter()
    path = None if checkpoint_path is None else pathlib.Path(checkpoint_path)
    recorded = _read_block_plan(path) if resume else None
    trainer = Trainer(model, dataset, layout, settings)
    with contextlib.ExitStack() as closing:  # a save in flight is committed however this ends
        ckpt = None
        if path is not None:
            ckpt = closing.enter_context(checkpoint.Checkpointer(path, trainer, fresh=not resume))
        budget, source = memory.device_budget(trainer.devices[0], memory_budget)
        cap = max_configs_per_block
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
            raise ValueError(f"max_configs_per_block must be an integer >= 1, got {cap!r}")
        plan_info: dict[str, Any] = {"budget_bytes": budget, "budget": source}
        if recorded is not None:  # a blocked run resumes with its own cut
            per_block, reason = recorded["configs_per_block"], recorded["reason"]
        elif cap is not None and layout.size > cap:  # cut by hand: the whole grid is never compiled
            per_block, reason = cap, f"max_configs_per_block={cap}"
        else:
            # the checkpoint's step and segments plan the run; its state is read once it fits
            peeked = ckpt.peek() if ckpt is not None and resume else None
            trainer.segment_steps = (
                peeked.segment_steps
                if peeked is not None
                else (trainer.choose_segment() if stop is not None else None)
            )
            need = trainer.compile_ahead(0 if peeked is None else peeked.step)
            est = _estimate(trainer, need)
            plan_info["need_bytes"] = None if est is None else est.measured_bytes
            if est is None or est.measured_bytes <= budget or peeked is not None:
                if est is not None and est.measured_bytes > budget:  # a one-block checkpoint
                    raise memory.MemoryBudgetError(
                        f"the checkpoint at {path} holds the whole grid as one block, which needs "
                        f"{memory.describe_bytes(est.measured_bytes)} per device, more than the "
                        f"budget of {memory.describe_bytes(budget)} ({source}); resume it on a "
                        "larger device, or remove it to train in blocks"
                    )
                restored = None if peeked is None else ckpt.restore(layout, settings)
                fits = "fits" if est is not None else "memory unknown on this backend"
                plan_info.update(blocks=1, configs_per_block=layout.size, reason=fits)
                return _train_block(trainer, ckpt, restored, start, hooks, plan_info, (0, 1))
            per_block = _configs_per_block(trainer, est, budget, source)
            reason = (
                f"memory: the grid needs {memory.describe_bytes(est.measured_bytes)} per device, "
                f"the budget is {memory.describe_bytes(budget)} ({source})"
            )
            plan_info["probe_s"] = trainer.trace_seconds + trainer.compile_seconds
        plan_info.update(configs_per_block=per_block, reason=reason)
        return _run_blocks(
            model, dataset, layout, settings, hooks, start, path, plan_info, recorded, budget
        )


def _estimate(trainer: Trainer, need: int | None) -> memory.Estimate | None:
    """The linear memory model of ``trainer``'s compiled programs (None if the backend does not
    report memory)."""
    if need is None:
        return None
    s, kp = trainer.layout.padded_shape
    per_device = s * kp // len(trainer.devices)
    state = memory.tree_bytes(trainer.state_template()) / (s * kp)
    extra = memory.host_bytes_per_config(trainer.devices[0], state)
    return memory.estimate(need, trainer.fixed_bytes(), per_device, extra)


def _configs_per_block(trainer: Trainer, est: memory.Estimate, budget: int, source: str) -> int:
    """Configs per block that fit ``budget`` by ``est``; MemoryBudgetError if a block of one
    config of each loss (per device) does not."""
    per_device = memory.configs_that_fit(est, budget)
    n_loss, devices = len(trainer.layout.losses), len(trainer.devices)
    if per_device < n_loss:
        one = memory.describe_bytes(est.need(n_loss))
        which = "one config" if n_loss == 1 else f"one config of each of the {n_loss} losses"
        raise memory.MemoryBudgetError(
            f"{which} needs {one} per device "
            f"({memory.describe_bytes(est.fixed)} data, {memory.describe_bytes(est.per_config)} "
            f"per config), the budget is {memory.describe_bytes(budget)} ({source}); reduce the "
            "batch size or the model's width, or give more memory (--memory_budget)"
        )
    return per_device * devices


def _run_blocks(
    model: Model,
    dataset: Dataset,
    layout: Layout,
    settings: TrainSettings,
    hooks: _Hooks,
    start: float,
    path: pathlib.Path | None,
    plan_info: dict[str, Any],
    recorded: dict | None,
    budget: int,
) -> Run:
    """The grid as blocks of at most ``plan_info["configs_per_block"]`` configs, one after the
    other, through one compiled program (``recorded``: the cut of the run resumed); one document."""
    per_block, reason, source = (plan_info[k] for k in ("configs_per_block", "reason", "budget"))
    stop, on_plan, on_progress = hooks.stop, hooks.on_plan, hooks.on_progress
    cache: dict[Any, Any] = {}
    segment = None if recorded is None else recorded.get("segment_steps")
    for _ in range(4):  # the estimate is checked on the block program itself, and shrunk if needed
        blocks = layout.blocks(per_block)
        first = Trainer(model, dataset, blocks[0], settings, compile_cache=cache)
        if recorded is None:
            segment = first.choose_segment() if stop is not None else None
        first.segment_steps = segment
        need = first.compile_ahead()
        if recorded is not None or need is None or need <= budget:
            break
        est = _estimate(first, need)
        fits = _configs_per_block(first, est, budget, source)
        per_block = min(fits, max(len(layout.losses), per_block * budget // need))
        cache.clear()
    plan_info.update(blocks=len(blocks), configs_per_block=blocks[0].size, reason=reason)
    if path is not None and jax.process_index() == 0:
        _write_block_plan(path, {**plan_info, "segment_steps": segment}, per_block)
    if on_plan is not None:
        on_plan(
            f"training {layout.size} configs in {len(blocks)} blocks of {blocks[0].size} "
            f"({reason}), one compiled program"
        )
    runs = []
    total = len(blocks) * settings.steps
    for j, block in enumerate(blocks):
        trainer = first if j == 0 else Trainer(model, dataset, block, settings, compile_cache=cache)
        trainer.segment_steps = segment
        block_path = None if path is None else checkpoint.sibling(path, f"block{j}")
        progress = None
        if on_progress is not None:
            progress = lambda step, _, record, s, j=j: on_progress(
                j * settings.steps + step, total, record, time.perf_counter() - start
            )
        own = dataclasses.replace(hooks, on_progress=progress, on_plan=None if j else on_plan)
        try:
            with contextlib.ExitStack() as closing:
                ckpt, restored = None, None
                if block_path is not None:
                    fresh = recorded is None  # a new cut: an earlier run's block is not resumed
                    ckpt = closing.enter_context(
                        checkpoint.Checkpointer(block_path, trainer, fresh=fresh)
                    )
                    restored = None if fresh else ckpt.restore(block, settings)
                run = _train_block(trainer, ckpt, restored, start, own, plan_info, (j, len(blocks)))
        except Preempted as e:
            raise Preempted(e.reason, e.step, f" of block {j + 1}/{len(blocks)}") from None
        if block_path is not None:  # on disk: read back at the end for the selected configs only
            run = dataclasses.replace(run, params=None, model_state=None, selected=None)
        runs.append(run)
    plan = plan_lib.Plan(layout, tuple(plan_lib.Part(j, (), b) for j, b in enumerate(blocks)))
    document = plan_lib.merge_documents(plan, [r.document for r in runs], hooks.select_on)
    document["timing"].pop("architectures")
    wall = time.perf_counter() - start
    document["timing"].update(
        _block_timing(plan_info),
        wall_s=wall,
        config_examples_per_s=layout.size * settings.steps * settings.batch_size / wall,
    )
    document["settings"] = runs[0].document["settings"]
    document["timing"]["segment_steps"] = segment
    chosen = _selected_of_blocks(plan, document, runs, model, dataset, path, settings)
    return Run(document, None, layout, None, chosen, tuple(runs))


def _block_timing(plan_info: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("blocks", "configs_per_block", "reason", "budget_bytes", "need_bytes", "probe_s")
    out = {k: plan_info[k] for k in keys if k in plan_info}
    out["block_reason"] = out.pop("reason")
    out["memory_budget_bytes"] = out.pop("budget_bytes")
    if "need_bytes" in out:
        out["memory_need_bytes"] = out.pop("need_bytes")
    return out


def _selected_of_blocks(
    plan: plan_lib.Plan,
    document: Mapping[str, Any],
    runs: list[Run],
    model: Model,
    dataset: Dataset,
    path: pathlib.Path | None,
    settings: TrainSettings,
) -> dict[str, list[trained.Trained]]:
    """The selected configs' trained variables, from the blocks that hold them (read back from
    their checkpoints when they were not kept)."""
    choices = document["selection"]["per_loss"]
    names = plan.layout.axis_names
    parts, entries = [], []
    for part, run in zip(plan.parts, runs, strict=True):
        holds = any(
            r["loss"] == c["loss"] and all(r[n] == c[n] for n in names)
            for r in run.document["configs"]
            for c in choices
        )
        if not holds:
            continue
        params, state = run.params, run.model_state
        if params is None:  # one block's state at a time
            reader = Trainer(model, dataset, part.layout, settings)
            block_path = checkpoint.sibling(path, f"block{part.index}")
            with checkpoint.Checkpointer(block_path, reader) as ckpt:
                restored = ckpt.restore(part.layout, settings)
            params, state = reader.real_variables(restored.state)
        parts.append(part)
        entries.append((run.document, params, state, model))
    return plan_lib.selected(plan_lib.Plan(plan.layout, tuple(parts)), document, entries)


def _read_block_plan(path: pathlib.Path | None) -> dict | None:
    """The block cut recorded beside the checkpoint ``path`` (None if it trained as one block)."""
    if path is None:
        return None
    plan_path = path.with_name(path.name + BLOCK_PLAN)
    if not plan_path.exists():
        return None
    try:
        recorded = json.loads(plan_path.read_text())
        int(recorded["configs_per_block"]), str(recorded["reason"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise checkpoint.CheckpointError(f"block plan {plan_path} is unreadable: {e}") from None
    return recorded


def _write_block_plan(path: pathlib.Path, plan_info: Mapping[str, Any], per_block: int) -> None:
    record = {
        "configs_per_block": per_block,
        **{k: v for k, v in plan_info.items() if k != "block"},
    }
    results.atomic_write_json(path.with_name(path.name + BLOCK_PLAN), record)


def _timed(
    stop: StopCheck | None,
    trainer: Trainer,
    num_blocks: int,
    on_plan: Callable[[str], None] | None,
) -> StopCheck | None:
    """``stop``, which also tells ``on_plan`` once how long training the whole grid will take, as
    measured on the first segment (the time between its first two calls: a segment's means are
    read back before the next call)."""
    d = trainer.segment_steps
    if stop is None or on_plan is None or d is None:
        return stop
    calls: list[float] = []

    def check() -> str | None:
        calls.append(time.perf_counter())
        if len(calls) == 2:
            per_step = (calls[1] - calls[0]) / d
            left = per_step * (trainer.settings.steps * num_blocks - d)
            on_plan(
                f"training: {1e3 * per_step:.3g} ms per step of {trainer.layout.size} configs "
                f"(the first {d} steps), about {_duration(left)} more for the whole grid, "
                "evaluations aside"
            )
        return stop()

    return check


def _duration(seconds: float) -> str:
    """``"42 s"``, ``"12 min"``, ``"3.5 h"``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _train_block(
    trainer: Trainer,
    ckpt: checkpoint.Checkpointer | None,
    restored: checkpoint.Restored | None,
    start: float,
    hooks: _Hooks,
    plan_info: Mapping[str, Any],
    block: tuple[int, int],
) -> Run:
    """Trains block ``block = (j, of)`` (or the whole grid, ``(0, 1)``) with ``trainer``, from
    ``restored`` if given, checkpointing with ``ckpt`` after every chunk (asynchronously) and on
    a stop (committed before :class:`Preempted` is raised)."""
    layout, settings, model = trainer.layout.real(), trainer.settings, trainer.model
    on_progress, on_resume, tensorboard_dir = (
        hooks.on_progress,
        hooks.on_resume,
        hooks.tensorboard_dir,
    )
    state, history, pending = None, None, None
    if restored is not None:  # checked against this grid, on this run's devices
        state, history, pending = restored.state, restored.history, restored.pending
        if on_resume is not None:
            on_resume(int(state.step))

    log = None
    if tensorboard_dir is not None and jax.process_index() == 0:
        from softcls_jax.tensorboard import GridLog

        log = GridLog(tensorboard_dir, layout, hooks.extra_axes)
    logged = len(history or [])  # a resumed run logs only its new records

    def save(state: Any, history: list[dict], partial: dict | None = None) -> None:
        if ckpt is not None:  # every process writes its own shards
            ckpt.save(state, history, partial, trainer.segment_steps)

    def on_chunk(state: Any, history: list[dict]) -> None:
        nonlocal logged
        if log is not None:
            for record in history[logged:]:
                log.write(record)
            logged = len(history)
        save(state, history)
        if on_progress is not None:
            on_progress(
                history[-1]["step"], settings.steps, history[-1], time.perf_counter() - start
            )

    def on_stop(state: Any, history: list[dict], partial: dict | None) -> None:
        save(state, history, partial)
        if ckpt is not None:
            ckpt.wait()  # committed before the run says it stopped

    try:
        state, history = trainer.train(
            state=state,
            history=history,
            on_chunk=on_chunk,
            stop=_timed(hooks.stop, trainer, block[1], hooks.on_plan),
            on_stop=on_stop,
            pending=pending,
        )
        jax.block_until_ready(state)
        if ckpt is not None:
            ckpt.wait()  # the last checkpoint committed: part of the run's wall time
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        raise memory.MemoryBudgetError(
            f"the device ran out of memory training {layout.size} configs "
            f"({plan_info.get('budget')}: {memory.describe_bytes(plan_info['budget_bytes'])}); "
            "the last checkpoint stays; rerun with a smaller --memory_budget or "
            "--max_configs_per_block, or reduce the batch size or the model's width"
        ) from None
    finally:
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
        "segment_steps": trainer.segment_steps,
        "checkpoint_s": 0.0 if ckpt is None else ckpt.blocked_seconds,
    }
    if block[1] == 1:
        timing.update(_block_timing(plan_info))
    described = (
        dict(hooks.described)
        if hooks.described is not None
        else describe(model, trainer.dataset, layout, settings)
    )
    document = results.build(
        described, trainer.layout, history, trainer.diverged_steps(state), timing, hooks.select_on
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
    memory_budget: float | None = None,
    max_configs_per_block: int | None = None,
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
      memory_budget, max_configs_per_block: GB a device may use (default: measured) and a cap on
        the configs trained at once; a grid over either trains in memory blocks (:func:`run`).

    SIGTERM or SIGINT stops training at the next step boundary and raises
    :class:`~softcls_jax.preemption.Preempted` (a ``KeyboardInterrupt``); to resume after one,
    train through :func:`softcls_jax.sweep.run_sweep`, which checkpoints into its workdir.

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
    with stop_on_signals() as stop:
        done = run(
            model,
            dataset,
            layout,
            settings,
            on_progress=on_progress,
            tensorboard_dir=board,
            select_on=select_on,
            memory_budget=memory_budget,
            max_configs_per_block=max_configs_per_block,
            stop=stop,
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
