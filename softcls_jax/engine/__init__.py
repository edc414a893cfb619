"""The sweep engine: a whole grid of losses × hyperparameter axes × seeds as ONE compiled program.

Three layers, data flowing one way:

* :mod:`~softcls_jax.engine.layout`: :class:`Layout`, the configs and their ``(S, K)`` arrangement,
  padding for devices and cache blocks, index ↔ config; :data:`AXES`, the hyperparameters that can
  be grid axes. Pure values: results, plots and experiments ask it where a config lives.
* :mod:`~softcls_jax.engine.step` (with :mod:`~.batches` and :mod:`~.evaluate`): the pure traced
  functions ``init``, ``seed_step``, ``chunk``, ``batch_indices`` and ``evaluate``, taking the
  model, losses, optimizer and layout shape as an explicit :class:`~softcls_jax.engine.step.Program`.
* :mod:`~softcls_jax.engine.driver`: :class:`Trainer`, placement on a mesh, compile-once programs
  and their timing, the chunk loop with its checkpoint hook.
"""

from softcls_jax.engine.driver import CPU_BLOCK, Trainer
from softcls_jax.engine.layout import AXES, LOSS_AXES, Axis, Config, Layout, axis_rule, loss_name
from softcls_jax.engine.settings import TrainSettings, check_compatible
from softcls_jax.engine.step import METRICS, Data, GridState, Program

__all__ = [
    "AXES",
    "CPU_BLOCK",
    "LOSS_AXES",
    "METRICS",
    "Axis",
    "Config",
    "Data",
    "GridState",
    "Layout",
    "Program",
    "TrainSettings",
    "Trainer",
    "axis_rule",
    "check_compatible",
    "loss_name",
]
