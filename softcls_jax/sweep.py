"""A sweep from settings to files: data → model → engine → results → plots.

:func:`run_sweep` is what ``python -m experiments.sweep`` calls; experiments call it too. It never
prints: progress goes to a callback. Settings are validated up front and every error names the
setting it concerns (:class:`SettingError`), so a command line can name the flag.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from softcls_jax import checkpoint, data, engine, models, plots, results
from softcls_jax.files import writable_dir
from softcls_jax.losses import LOSSES
from softcls_jax.optim import OPTIMIZERS, check_learning_rate


class SettingError(ValueError):
    """A bad setting; ``setting`` is the :class:`SweepSpec` field it concerns."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """Everything that defines a sweep (and so its results)."""

    losses: tuple[str, ...] = ("ce",)
    learning_rates: tuple[float, ...] = tuple(float(x) for x in np.logspace(-3, 0, 8))
    seeds: tuple[int, ...] = (0, 1, 2)
    dataset: str = "digits"
    model: str = "mlp"
    hidden: tuple[int, ...] = (128,)
    activation: str = "relu"
    optimizer: str = "sgd"
    steps: int = 2000
    batch_size: int = 128
    eval_every: int = 200
    init_scale: float = 1.0
    label_noise: float = 0.0
    data_seed: int = 0
    checked: bool = False

    def validate(self) -> None:
        """Raises :class:`SettingError` for the first bad field."""
        _check("losses", bool(self.losses), "give at least one loss")
        for loss in self.losses:
            _check(
                "losses",
                loss in LOSSES,
                f"unknown loss {loss!r}; expected one of {sorted(LOSSES)} or 'all'",
            )
        _check(
            "losses",
            len(set(self.losses)) == len(self.losses),
            f"losses repeat: {list(self.losses)}",
        )
        _check("learning_rates", bool(self.learning_rates), "give at least one learning rate")
        for lr in self.learning_rates:
            try:
                check_learning_rate(lr)
            except ValueError as e:
                raise SettingError("learning_rates", str(e)) from None
        _check(
            "learning_rates",
            len(set(self.learning_rates)) == len(self.learning_rates),
            "learning rates repeat",
        )
        _check("seeds", bool(self.seeds) and all(_is_int(s) and s >= 0 for s in self.seeds),
               f"seeds must be integers >= 0, got {list(self.seeds)}")  # fmt: skip
        _check(
            "model",
            self.model in models.MODELS,
            f"unknown model {self.model!r}; expected one of {list(models.MODELS)}",
        )
        _check(
            "hidden",
            all(_is_int(h) and h >= 1 for h in self.hidden),
            f"hidden sizes must be integers >= 1, got {list(self.hidden)}",
        )
        _check("activation", self.activation in models.ACTIVATIONS,
               f"unknown activation {self.activation!r}; expected one of {sorted(models.ACTIVATIONS)}")  # fmt: skip
        _check(
            "optimizer",
            self.optimizer in OPTIMIZERS,
            f"unknown optimizer {self.optimizer!r}; expected one of {list(OPTIMIZERS)}",
        )
        for name in ("steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            _check(name, _is_int(value) and value >= 1, f"must be an integer >= 1, got {value!r}")
        _check(
            "init_scale",
            _is_finite(self.init_scale) and self.init_scale > 0,
            f"must be a finite number > 0, got {self.init_scale!r}",
        )
        _check("label_noise", _is_finite(self.label_noise) and 0 <= self.label_noise < 1,
               f"must be a fraction in [0, 1), got {self.label_noise!r}")  # fmt: skip
        _check(
            "data_seed",
            _is_int(self.data_seed) and self.data_seed >= 0,
            f"must be an integer >= 0, got {self.data_seed!r}",
        )

    def as_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _check(setting: str, ok: bool, message: str) -> None:
    if not ok:
        raise SettingError(setting, message)


def load_dataset(spec: SweepSpec) -> data.Dataset:
    """The spec's data set, with its label noise applied to the training labels."""
    try:
        dataset = data.load(spec.dataset, seed=spec.data_seed)
    except ValueError as e:
        raise SettingError("dataset", str(e)) from None
    if spec.batch_size > dataset.x_train.shape[0]:
        raise SettingError(
            "batch_size",
            f"{spec.batch_size} is larger than the training set of {spec.dataset} "
            f"({dataset.x_train.shape[0]} examples)",
        )
    return data.with_label_noise(dataset, spec.label_noise, seed=spec.data_seed)


def build_trainer(spec: SweepSpec, dataset: data.Dataset) -> engine.GridTrainer:
    """Model, grid and engine for ``spec``."""
    model = models.make_model(
        spec.model, dataset.num_features, dataset.num_classes, hidden=spec.hidden,
        activation=spec.activation, init_scale=spec.init_scale,
    )  # fmt: skip
    grid = engine.Grid(spec.losses, spec.learning_rates, spec.seeds)
    settings = engine.TrainSettings(
        spec.optimizer, spec.steps, spec.batch_size, spec.eval_every, checked=spec.checked
    )
    return engine.GridTrainer(model, dataset, grid, settings)


Progress = Callable[[int, int, dict, float], None]  # (step, total steps, record, seconds so far)
SPEC_FILE = "spec.json"
OWNED_FILES = ("results.json", "results.csv", "summary.md", checkpoint.FILENAME, SPEC_FILE)


def prepare_workdir(spec: SweepSpec, workdir: pathlib.Path, overwrite: bool) -> bool:
    """Creates ``workdir`` and claims it for ``spec``; returns True if a checkpoint can be resumed.

    A workdir already holding a sweep with other settings is refused (never silently mixed) unless
    ``overwrite``, which removes that sweep's files first.
    """
    try:
        writable_dir(workdir)
    except OSError as e:
        raise SettingError("workdir", f"cannot write to {workdir}: {e.strerror or e}") from None
    spec_path = workdir / SPEC_FILE
    if overwrite:
        for name in (*OWNED_FILES, *PLOTS):
            (workdir / name).unlink(missing_ok=True)
    elif spec_path.exists():
        try:
            previous = json.loads(spec_path.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != spec.as_dict():
            changed = _differences(previous, spec.as_dict())
            raise SettingError(
                "workdir",
                f"{workdir} holds a sweep with other settings ({changed}); use another --workdir, "
                "or --overwrite to replace it",
            )
        return (workdir / checkpoint.FILENAME).exists()
    if jax.process_index() == 0:  # on several hosts, only process 0 writes
        results.atomic_write_json(spec_path, spec.as_dict())
    return False


def _differences(previous: Any, current: dict) -> str:
    if not isinstance(previous, dict):
        return "its spec.json is unreadable"
    keys = [k for k in current if previous.get(k) != current[k]]
    keys += [k for k in previous if k not in current]
    return ", ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in keys) or "unknown"


def run_sweep(
    spec: SweepSpec,
    workdir: str | pathlib.Path,
    on_progress: Progress | None = None,
    overwrite: bool = False,
    on_resume: Callable[[int], None] | None = None,
) -> dict:
    """Trains the sweep and writes ``results.json``, ``results.csv``, ``summary.md`` and plots.

    The state is checkpointed after every chunk; running the same spec on the same workdir again
    resumes from the last checkpoint and gives the same results as an uninterrupted run.

    Args:
      spec: the sweep.
      workdir: output directory (created if needed).
      on_progress: called after every chunk.
      overwrite: replace a sweep with other settings found in ``workdir``.
      on_resume: called with the step a resumed sweep continues from.

    Returns:
      The ``results.json`` document.
    """
    spec.validate()
    workdir = pathlib.Path(workdir)
    resumable = prepare_workdir(spec, workdir, overwrite)
    start = time.perf_counter()
    dataset = load_dataset(spec)
    trainer = build_trainer(spec, dataset)
    state, history = None, None
    if resumable:
        try:
            host, history = checkpoint.restore(
                workdir / checkpoint.FILENAME, trainer.state_template()
            )
        except ValueError as e:
            raise SettingError("workdir", f"{e}; remove it or use --overwrite") from None
        state = trainer.device_state(host)
        if on_resume is not None:
            on_resume(int(state.step))

    def on_chunk(state: engine.GridState, history: list[dict]) -> None:
        host = trainer.host_state(state)  # a collective on several hosts: every process joins
        if jax.process_index() == 0:  # only process 0 writes
            checkpoint.save(workdir / checkpoint.FILENAME, host, history)
        if on_progress is not None:
            step = history[-1]["step"]
            on_progress(step, spec.steps, history[-1], time.perf_counter() - start)

    state, history = trainer.train(state=state, history=history, on_chunk=on_chunk)
    jax.block_until_ready(state)
    wall = time.perf_counter() - start
    timing = {
        "wall_s": wall,
        "compile_s": trainer.compile_seconds,
        "config_examples_per_s": trainer.grid.size * spec.steps * spec.batch_size / wall,
    }
    document = results.build(
        spec.as_dict(), trainer.grid, history, trainer.diverged_steps(state), timing
    )
    if jax.process_index() == 0:  # on several hosts, only process 0 writes results
        write_outputs(document, workdir)
    return document


PLOTS = ("accuracy_vs_lr.png", "learning_curves.png", "train_loss_curves.png")


def write_outputs(document: dict, workdir: pathlib.Path) -> None:
    """Writes the result files and plots of a finished sweep, each atomically."""
    records = document["configs"]
    plots.accuracy_vs_lr(records, workdir / PLOTS[0])
    plots.learning_curves(records, workdir / PLOTS[1], "test_accuracy")
    plots.learning_curves(records, workdir / PLOTS[2], "train_loss")
    results.atomic_write_text(workdir / "results.csv", results.to_csv(records))
    results.atomic_write_text(workdir / "summary.md", results.summary_markdown(document, PLOTS))
    results.atomic_write_json(workdir / "results.json", document)
