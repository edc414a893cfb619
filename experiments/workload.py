"""The reference workload that ``bench`` and ``profile_step`` measure (no flags: importable anywhere)."""

from __future__ import annotations

import numpy as np

from softcls_jax import data, engine, models

HIDDEN = 128
BATCH = 128


def workload(num_lrs: int, steps: int, dataset: data.Dataset) -> engine.Trainer:
    """The reference grid: num_lrs log-spaced rates 1e-3 … 1 × {CE, MSE}, one seed."""
    model = models.make_model("mlp", dataset.num_features, dataset.num_classes, hidden=(HIDDEN,))
    lrs = tuple(float(x) for x in np.logspace(-3, 0, num_lrs))
    return engine.Trainer(model, dataset, engine.Layout(("ce", "mse"), lrs, (0,)),
                          engine.TrainSettings("sgd", steps, BATCH, steps))  # fmt: skip


def batch_stream(trainer: engine.Trainer, steps: int) -> np.ndarray:
    """The engine's minibatch indices of seed 0, ``(steps, B)``: every contender trains on these."""
    return np.asarray(trainer.batch_indices(0, steps)[:, 0])
