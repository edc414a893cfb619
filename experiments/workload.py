"""The workloads that ``bench`` and ``profile_step`` measure (no flags: importable anywhere).

* ``mlp`` (the reference): ``num_lrs`` rates 1e-3 … 1 × {CE, MSE}, MLP 64-128-10 on digits, SGD,
  batch 128; the same grid with the MLP written as a user writes it (:class:`UserMLP`, through
  ``models.from_nnx``).
* ``cnn1d``: ``G`` rates 1e-3 … 0.1, CE, the MNIST-1D CNN on mnist1d, Adam, batch 100 (the issue's
  sweep: ``--dataset=mnist1d --model=cnn1d --optimizer=adam --batch_size=100``).
* ``cnn2d``: ``G`` rates 1e-4 … 1e-2, CE, the LeNet-5-like CNN on MNIST images, Adam, batch 100.
* ``user_cnn``: ``G`` rates 1e-4 … 1e-2, CE, the CNN of Flax's NNX MNIST tutorial as a user writes
  it (:class:`TutorialCNN`, through ``models.from_nnx``) on mnist5k, Adam, batch 32.
* ``resnet``: ``G`` rates 1e-4 … 1e-2, CE, the ``resnet`` model (depth 8, width 8, BatchNorm) on
  mnist5k, Adam, batch 100.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from flax import nnx

from softcls_jax import data, engine, models

HIDDEN = 128
USER_MLP = ("feature_major", "as_traced")  # how workload(user=...) trains UserMLP
BATCH = 128
WORKLOADS = ("mlp", "cnn1d", "cnn2d", "user_cnn", "resnet")
CNN_BATCH = 100
CNN_RATES = {
    "cnn1d": (1e-3, 1e-1),
    "cnn2d": (1e-4, 1e-2),
    "user_cnn": (1e-4, 1e-2),
    "resnet": (1e-4, 1e-2),
}
BATCHES = {"user_cnn": 32}  # the tutorial's batch; CNN_BATCH elsewhere
RESNET = {"depth": 8, "width": 8}


class TutorialCNN(nnx.Module):
    """The CNN of Flax's NNX MNIST tutorial, as a user writes it, on the engine's ``(N, 784)`` rows
    reshaped to ``(N, 28, 28, 1)`` images: two 3×3 convs (32, 64), 2×2 average pooling after each,
    3136 -> 256 -> 10."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.avg_pool = functools.partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(3136, 256, rngs=rngs)
        self.linear2 = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], 28, 28, 1)
        x = self.avg_pool(nnx.relu(self.conv1(x)))
        x = self.avg_pool(nnx.relu(self.conv2(x)))
        x = nnx.relu(self.linear1(x.reshape(x.shape[0], -1)))
        return self.linear2(x)


class UserMLP(nnx.Module):
    """The reference MLP as a user writes it: two ``nnx.Linear`` with a ReLU between (the same
    parameters as the built-in ``mlp``, drawn from the same keys)."""

    def __init__(self, in_features: int, num_classes: int, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(in_features, HIDDEN, rngs=rngs)
        self.out = nnx.Linear(HIDDEN, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.relu(self.hidden(x)))


def workload(
    num_lrs: int, steps: int, dataset: data.Dataset, user: str | None = None
) -> engine.Trainer:
    """The reference grid: num_lrs log-spaced rates 1e-3 … 1 × {CE, MSE}, one seed; ``user``:
    ``"feature_major"`` or ``"as_traced"`` trains :class:`UserMLP` through ``models.from_nnx``
    with its dense layers rewritten feature-major or as the module computes them."""
    if user is not None and user not in USER_MLP:
        raise ValueError(f"user must be one of {list(USER_MLP)} or None, got {user!r}")
    if user is None:
        model = models.make_model(
            "mlp", dataset.num_features, dataset.num_classes, hidden=(HIDDEN,)
        )
    else:
        build = functools.partial(UserMLP, dataset.num_features, dataset.num_classes)
        model = models.from_nnx(build, "user_mlp", feature_major=user == "feature_major")
    lrs = tuple(float(x) for x in np.logspace(-3, 0, num_lrs))
    return engine.Trainer(
        model,
        dataset,
        engine.Layout(("ce", "mse"), lrs, (0,)),
        engine.TrainSettings("sgd", steps, BATCH, steps),
    )


def cnn_model(name: str, dataset: data.Dataset) -> models.Model:
    """The ``cnn1d``, ``cnn2d``, ``user_cnn`` or ``resnet`` workload's model for ``dataset``."""
    if name == "user_cnn":
        return models.from_nnx(TutorialCNN, name="user_cnn")
    sizes = RESNET if name == "resnet" else {}
    return models.make_model(
        name, dataset.num_features, dataset.num_classes, image_shape=dataset.image_shape, **sizes
    )


def cnn_workload(
    name: str,
    num_configs: int,
    steps: int,
    dataset: data.Dataset,
    block_configs: int | None = None,
) -> engine.Trainer:
    """``num_configs`` log-spaced Adam learning rates × CE × seed 0 of the ``name`` CNN, batch 100
    (32 for ``user_cnn``); ``block_configs`` as :class:`~softcls_jax.engine.Trainer` takes it (None:
    the model's default)."""
    if name not in CNN_RATES:
        raise ValueError(f"unknown CNN workload {name!r}; expected one of {list(CNN_RATES)}")
    lo, hi = CNN_RATES[name]
    lrs = tuple(float(x) for x in np.logspace(np.log10(lo), np.log10(hi), num_configs))
    return engine.Trainer(
        cnn_model(name, dataset),
        dataset,
        engine.Layout(("ce",), lrs, (0,)),
        engine.TrainSettings("adam", steps, BATCHES.get(name, CNN_BATCH), steps),
        block_configs=block_configs,
    )


def batch_stream(trainer: engine.Trainer, steps: int) -> np.ndarray:
    """The engine's minibatch indices of seed 0, ``(steps, B)``: every contender trains on these."""
    return np.asarray(trainer.batch_indices(0, steps)[:, 0])


def synthetic_images(
    n_train: int = 4000,
    n_test: int = 1000,
    shape: tuple[int, int, int] = (28, 28, 1),
    seed: int = 0,
) -> data.Dataset:
    """A stand-in image set when no MNIST is installed: 10 random class templates plus noise,
    ``x = t_y + 2 ε`` per pixel, standardised; ``image_shape`` set. Used only where stated."""
    rng = np.random.default_rng(seed)
    templates = rng.normal(size=(10, *shape))
    make = lambda n: (lambda y: (templates[y] + 2 * rng.normal(size=(n, *shape)), y))(
        rng.integers(0, 10, n)
    )
    (x_train, y_train), (x_test, y_test) = make(n_train), make(n_test)
    flat = lambda x: (x / x_train.std()).reshape(x.shape[0], -1)
    dataset = data.validate("synthetic_images", flat(x_train), y_train, flat(x_test), y_test, 10)
    return dataclasses.replace(dataset, image_shape=shape)
