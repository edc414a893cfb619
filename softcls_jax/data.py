"""Data sets, bundled or generated locally (never downloaded), validated on load.

* ``digits``: scikit-learn's bundled 8×8 digits (1797 images, 10 classes), a fixed stratified 80/20
  split, standardised with the training split's mean and standard deviation.
* ``mnist1d``: MNIST-1D generated with the ``mnist1d`` package's ``make_dataset`` and its default
  arguments (4000 train / 1000 test, length 40, 10 classes), cached under the user cache directory.
* ``blobs``: Gaussian classes drawn from a seed (5 classes, 16 features, 2000 / 1000 examples).
* ``npz:PATH``: the user's arrays ``x_train, y_train, x_test, y_test`` (``allow_pickle=False``).

Features are float32 ``(N, D)``, labels int32 ``(N,)``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import zipfile

import jax
import numpy as np

from softcls_jax.files import atomic_write
from softcls_jax.labels import corrupt_labels

DATASETS = ("digits", "mnist1d", "blobs", "npz:PATH", "mnist5k", "idx:DIR", "cifar10:DIR")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification data set split into train and test.

    Attributes:
      name: where it came from.
      x_train: ``(N, D)`` float32.
      y_train: ``(N,)`` int32 in ``[0, C)``.
      x_test: ``(M, D)`` float32.
      y_test: ``(M,)`` int32 in ``[0, C)``.
      num_classes: ``C``.
      image_shape: ``(H, W, C)`` when each row of ``x`` is an image flattened row-major (HWC), as
        the image loaders of :mod:`softcls_jax.images` set it; None otherwise.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    image_shape: tuple[int, int, int] | None = None

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]


def validate(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int | None = None,
) -> Dataset:
    """Checks every array and returns a float32/int32 :class:`Dataset`.

    Raises:
      ValueError: on object or non-numeric arrays, wrong ranks, mismatched lengths or feature counts,
        empty splits, NaN/inf features, non-integer or out-of-range labels, or fewer than 2 classes
        present in the training labels.
    """
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for key, a in arrays.items():
        a = np.asarray(a)
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise ValueError(f"{name}: {key} must be a numeric array, got dtype {a.dtype}")
        arrays[key] = a
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 2:
            raise ValueError(f"{name}: x_{split} must have shape (N, D), got {x.shape}")
        if y.ndim != 1:
            raise ValueError(f"{name}: y_{split} must have shape (N,), got {y.shape}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{name}: x_{split} has {x.shape[0]} rows but y_{split} has {y.shape[0]} labels"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{name}: the {split} split is empty")
        if not np.all(np.isfinite(x)):
            bad = int(np.sum(~np.isfinite(x)))
            raise ValueError(
                f"{name}: x_{split} has {bad} NaN or inf values; features must be finite"
            )
        if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
            raise ValueError(
                f"{name}: y_{split} must hold integer class labels, got dtype {y.dtype}"
            )
        if y.min() < 0:
            raise ValueError(
                f"{name}: y_{split} has negative labels (min {y.min()}); expected >= 0"
            )
    if arrays["x_train"].shape[1] != arrays["x_test"].shape[1]:
        raise ValueError(
            f"{name}: x_train has {arrays['x_train'].shape[1]} features, x_test "
            f"{arrays['x_test'].shape[1]}"
        )
    largest = int(max(arrays["y_train"].max(), arrays["y_test"].max()))
    if num_classes is None:
        num_classes = largest + 1
    elif largest >= num_classes:
        raise ValueError(f"{name}: label {largest} out of range for {num_classes} classes")
    present = np.unique(arrays["y_train"]).size
    if present < 2:
        raise ValueError(f"{name}: the training labels hold {present} class; need at least 2")
    return Dataset(
        name,
        arrays["x_train"].astype(np.float32),
        arrays["y_train"].astype(np.int32),
        arrays["x_test"].astype(np.float32),
        arrays["y_test"].astype(np.int32),
        int(num_classes),
    )


def from_arrays(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
    num_classes: int | None = None, name: str = "arrays",
) -> Dataset:  # fmt: skip
    """A validated :class:`Dataset` from your own arrays (features ``(N, D)``, integer labels ``(N,)``).

    Example:
      >>> rng = np.random.default_rng(0)
      >>> d = from_arrays(rng.normal(size=(20, 3)), np.arange(20) % 2, rng.normal(size=(6, 3)),
      ...                 np.arange(6) % 2)
      >>> d.num_features, d.num_classes, d.x_train.dtype
      (3, 2, dtype('float32'))

    Raises:
      ValueError: on anything :func:`validate` refuses (shapes, NaN/inf, bad labels, …).
    """
    return validate(name, x_train, y_train, x_test, y_test, num_classes)


def load_digits() -> Dataset:
    """scikit-learn's digits: fixed stratified 80/20 split, standardised on the training split."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=0
    )
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.where(std > 0, std, 1.0)  # constant border pixels stay 0
    return validate("digits", (x_train - mean) / std, y_train, (x_test - mean) / std, y_test, 10)


def cache_dir() -> pathlib.Path:
    """``$SOFTCLS_CACHE``, else ``$XDG_CACHE_HOME/softcls_jax``, else ``~/.cache/softcls_jax``."""
    if "SOFTCLS_CACHE" in os.environ:
        return pathlib.Path(os.environ["SOFTCLS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "softcls_jax"


def load_mnist1d() -> Dataset:
    """MNIST-1D generated locally with ``mnist1d.data.make_dataset`` (default arguments), cached."""
    path = cache_dir() / "mnist1d_default.npz"
    if not path.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        generated = make_dataset(get_dataset_args())  # generates; get_dataset would download
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, x_train=generated["x"], y_train=generated["y"],
                 x_test=generated["x_test"], y_test=generated["y_test"])  # fmt: skip
        atomic_write(path, buffer.getvalue())  # a crash never leaves a half-written cache
    return load_npz(str(path), name="mnist1d", num_classes=10)


def load_blobs(seed: int = 0) -> Dataset:
    """Five overlapping Gaussian classes in 16 dimensions, drawn from ``seed``."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=3000, n_features=16, centers=5, cluster_std=4.0, random_state=seed)
    return validate("blobs", x[:2000], y[:2000], x[2000:], y[2000:], 5)


def load_npz(path: str, name: str | None = None, num_classes: int | None = None) -> Dataset:
    """Loads ``x_train, y_train, x_test, y_test`` from an ``.npz`` file; pickles are never loaded."""
    name = name or f"npz:{path}"
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        # numpy falls back to unpickling anything that is neither .npy nor .npz: never allowed.
        raise ValueError(f"{name}: not an .npz file ({e})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"{name}: a single .npy array, not an .npz archive of {list(NPZ_KEYS)}")
    with loaded:
        missing = [k for k in NPZ_KEYS if k not in loaded.files]
        if missing:
            raise ValueError(
                f"{name}: missing arrays {missing}; an npz data set needs {list(NPZ_KEYS)}"
            )
        try:
            arrays = {k: loaded[k] for k in NPZ_KEYS}
        except ValueError:
            raise ValueError(
                f"{name}: holds object arrays, which would need unpickling and are never loaded; "
                "save plain numeric arrays with np.savez"
            ) from None
    return validate(name, num_classes=num_classes, **arrays)


def load(name: str, seed: int = 0) -> Dataset:
    """Loads a data set by name: ``digits``, ``mnist1d``, ``blobs`` or ``npz:PATH``."""
    if name == "digits":
        return load_digits()
    if name == "mnist1d":
        return load_mnist1d()
    if name == "blobs":
        return load_blobs(seed)
    if name.startswith("npz:") and len(name) > 4:
        return load_npz(name[4:])
    if name == "mnist5k" or name.startswith(("idx:", "cifar10:")):  # images: softcls_jax.images
        from softcls_jax import images

        return images.load(name)
    raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")


def with_label_noise(dataset: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """Flips ``round(fraction · N)`` training labels to another class, seeded (C15); test untouched."""
    if fraction == 0:
        return dataset
    noisy = corrupt_labels(
        jax.random.key(seed), jax.numpy.asarray(dataset.y_train), dataset.num_classes, fraction
    )
    return dataclasses.replace(dataset, y_train=np.asarray(noisy, np.int32))


def split_validation(
    dataset: Dataset, fraction: float = 0.2, seed: int = 0
) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """Holds out a stratified ``fraction`` of the training split for validation.

    Returns:
      ``(dataset with the rest as its training split, x_val, y_val)``.
    """
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    x_train, x_val, y_train, y_val = train_test_split(
        dataset.x_train,
        dataset.y_train,
        test_size=fraction,
        stratify=dataset.y_train,
        random_state=seed,
    )
    return dataclasses.replace(dataset, x_train=x_train, y_train=y_train), x_val, y_val
