"""What every config of a grid shares besides model, data and its axis values."""

from __future__ import annotations

import dataclasses

import numpy as np

from softcls_jax import augment
from softcls_jax.engine.layout import ARCH_AXES, Layout
from softcls_jax.optim import SCHEDULES, OptimizerLike, make_optimizer

DECAY_MASKS = ("model", "all", "kernels")


def is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What every config of a grid shares besides model, data and its axis values."""

    optimizer: OptimizerLike = "sgd"  # a name of optim.OPTIMIZERS, or an optax-style factory
    steps: int = 2000
    batch_size: int = 128
    eval_every: int = 200
    schedule: str = "constant"  # or "cosine" (to 0 at the last step); see optim.schedule_factor
    data_seed: int = 0  # seeds the label noise
    checked: bool = False  # checkify the label range inside the compiled chunk
    augment: str = "none"  # none, flip, crop or crop_flip (softcls_jax.augment); image data only
    # what weight decay touches: "model" (the model's default: kernels only for resnet, else all
    # parameters), "all", or "kernels" (weights named kernel; not biases or BatchNorm scales)
    weight_decay_mask: str = "model"

    def __post_init__(self) -> None:
        make_optimizer(self.optimizer)  # ValueError naming the valid ones
        augment.check(self.augment)
        if self.weight_decay_mask not in DECAY_MASKS:
            raise ValueError(
                f"unknown weight_decay_mask {self.weight_decay_mask!r}; expected one of "
                f"{list(DECAY_MASKS)}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; expected one of {list(SCHEDULES)}"
            )
        for name in ("steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not is_int(self.data_seed) or not 0 <= self.data_seed < 2**32:
            raise ValueError(f"data_seed must be an integer in [0, 2**32), got {self.data_seed!r}")


def check_compatible(layout: Layout, settings: TrainSettings) -> None:
    """``ValueError`` if the layout's axes do not fit the settings: every axis is the project's or
    a hyperparameter of the optimizer, the warm-up within the steps."""
    arch = [name for name, _ in layout.axes if name in ARCH_AXES]
    if arch:
        raise ValueError(
            f"{arch} change the model's shapes: one program each, trained through runner.run or "
            "run_grid with a model factory (softcls_jax.plan), not by one Trainer"
        )
    make_optimizer(settings.optimizer, {name for name, _ in layout.axes})
    warmup = max(dict(layout.axes).get("warmup_steps", [0]))
    if warmup >= settings.steps:
        raise ValueError(f"warmup_steps must be < steps ({settings.steps}), got {warmup:g}")
