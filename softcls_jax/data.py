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
import zlib

import jax
import numpy as np

from softcls_jax import images
from softcls_jax.files import atomic_write, writable_dir
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
      x_val, y_val: a validation split held out of the training data (:func:`with_validation`),
        or None. Selection (learning rates, any hyperparameter) looks at it, never at the test set.
      image_shape: ``(H, W, C)`` when each row of ``x`` is an image flattened row-major (HWC), as
        :func:`from_images` sets it; None otherwise.
      image_fill: per channel, the value of a black (zero-intensity) pixel in ``x``, ``−μ_c / σ_c``
        after :func:`from_images`' standardisation: what crop augmentation pads with, as
        torchvision pads the raw image before normalising; None: 0.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    image_shape: tuple[int, int, int] | None = None
    image_fill: tuple[float, ...] | None = None

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]


MAX_CLASSES = 100_000  # a class count beyond this is a bad label or file, not a softmax to train
FLOAT32_MAX = float(np.finfo(np.float32).max)


def validate(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int | None = None,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
) -> Dataset:
    """Checks every array and returns a float32/int32 :class:`Dataset` (with a validation split
    when ``x_val`` and ``y_val`` are given; it is checked like the others).

    The classes are ``0 … C−1``: ``C = num_classes`` if given (every label must be below it), else
    the labels must cover ``0 … max`` without a gap (a gap means a stray label or a missing class;
    give ``num_classes`` when some classes have no examples).

    Raises:
      ValueError: on object, complex or non-numeric arrays, wrong ranks, mismatched lengths or
        feature counts, no features, empty splits, NaN/inf features or features beyond float32's
        range, non-integer or out-of-range labels, a gap in the labels, more than
        :data:`MAX_CLASSES` classes, or fewer than 2 classes present in the training labels.
    """
    if (x_val is None) != (y_val is None):
        raise ValueError(f"{name}: give both x_val and y_val, or neither")
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    splits = ("train", "test")
    if x_val is not None:
        arrays.update(x_val=x_val, y_val=y_val)
        splits += ("val",)
    for key, a in arrays.items():
        a = np.asarray(a)
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise ValueError(f"{name}: {key} must be a numeric array, got dtype {a.dtype}")
        if np.issubdtype(a.dtype, np.complexfloating):
            raise ValueError(f"{name}: {key} is complex ({a.dtype}); features must be real")
        arrays[key] = a
    for split in splits:
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
        if x.shape[1] == 0:
            raise ValueError(f"{name}: x_{split} has no features (shape {x.shape}); need D >= 1")
        if not np.all(np.isfinite(x)):
            bad = int(np.sum(~np.isfinite(x)))
            raise ValueError(
                f"{name}: x_{split} has {bad} NaN or inf values; features must be finite"
            )
        with np.errstate(over="ignore"):  # a long double beyond float64 reads as inf: refused
            largest = float(np.max(np.abs(x.astype(np.float64, copy=False))))
        if largest > FLOAT32_MAX:
            raise ValueError(
                f"{name}: x_{split} holds {largest:g}, beyond float32's range (±{FLOAT32_MAX:.4g}); "
                "rescale the features"
            )
        if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
            raise ValueError(
                f"{name}: y_{split} must hold integer class labels, got dtype {y.dtype}"
            )
        if y.min() < 0:
            raise ValueError(
                f"{name}: y_{split} has negative labels (min {y.min()}); expected >= 0"
            )
    for split in splits[1:]:
        if arrays["x_train"].shape[1] != arrays[f"x_{split}"].shape[1]:
            raise ValueError(
                f"{name}: x_train has {arrays['x_train'].shape[1]} features, x_{split} "
                f"{arrays[f'x_{split}'].shape[1]}"
            )
    num_classes = _classes(name, arrays["y_train"], arrays["y_test"], num_classes)
    if "y_val" in arrays and int(arrays["y_val"].max()) >= num_classes:
        raise ValueError(
            f"{name}: y_val has label {int(arrays['y_val'].max())}, out of range "
            f"for {num_classes} classes"
        )
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
        None if x_val is None else arrays["x_val"].astype(np.float32),
        None if y_val is None else arrays["y_val"].astype(np.int32),
    )


def _classes(name: str, y_train: np.ndarray, y_test: np.ndarray, num_classes: object) -> int:
    """The class count: ``num_classes`` checked against the labels, or ``max + 1`` of gap-free
    labels. Never allocates per class: a label of 2**32 is an error, not a 2**32-class model."""
    largest = max(int(y_train.max()), int(y_test.max()))
    if num_classes is not None:
        if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool):
            raise ValueError(f"{name}: num_classes must be an integer, got {num_classes!r}")
        if not 2 <= num_classes <= MAX_CLASSES:
            raise ValueError(
                f"{name}: num_classes must be in [2, {MAX_CLASSES}], got {int(num_classes)}"
            )
        if largest >= num_classes:
            which = "y_train" if int(y_train.max()) == largest else "y_test"
            raise ValueError(
                f"{name}: {which} has label {largest}, out of range for {int(num_classes)} classes "
                f"(labels are 0 … {int(num_classes) - 1})"
            )
        return int(num_classes)
    present = np.unique(np.concatenate([np.unique(y_train), np.unique(y_test)]))
    if present.size != largest + 1:
        gaps, missing = [], largest + 1 - present.size
        previous = -1
        for v in present.tolist():
            if v > previous + 1 and len(gaps) < 5:
                gaps.append(str(previous + 1) if v == previous + 2 else f"{previous + 1}…{v - 1}")
            previous = v
        raise ValueError(
            f"{name}: the labels skip {missing} class(es) between 0 and the largest label "
            f"{largest}: {', '.join(gaps)}; labels must cover 0 … C−1, or give the class count "
            "(for an npz, a scalar num_classes array)"
        )
    if largest + 1 > MAX_CLASSES:
        raise ValueError(f"{name}: {largest + 1} classes, more than {MAX_CLASSES}")
    return largest + 1


def from_arrays(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int | None = None,
    name: str = "arrays",
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
) -> Dataset:
    """A validated :class:`Dataset` from your own arrays (features ``(N, D)``, integer labels ``(N,)``),
    with your own validation split if given (else ``run_grid`` holds one out of the training data).

    Example:
      >>> rng = np.random.default_rng(0)
      >>> d = from_arrays(rng.normal(size=(20, 3)), np.arange(20) % 2, rng.normal(size=(6, 3)),
      ...                 np.arange(6) % 2)
      >>> d.num_features, d.num_classes, d.x_train.dtype
      (3, 2, dtype('float32'))

    Raises:
      ValueError: on anything :func:`validate` refuses (shapes, NaN/inf, bad labels, …).
    """
    return validate(name, x_train, y_train, x_test, y_test, num_classes, x_val, y_val)


def load_digits() -> Dataset:
    """scikit-learn's digits: fixed stratified 80/20 split, standardised on the training split."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=0
    )
    return standardized(validate("digits", x_train, y_train, x_test, y_test, 10))


def cache_dir() -> pathlib.Path:
    """``$SOFTCLS_CACHE``, else ``$XDG_CACHE_HOME/softcls_jax``, else ``~/.cache/softcls_jax``."""
    if "SOFTCLS_CACHE" in os.environ:
        return pathlib.Path(os.environ["SOFTCLS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "softcls_jax"


def load_mnist1d() -> Dataset:
    """MNIST-1D generated locally with ``mnist1d.data.make_dataset`` (default arguments), cached.

    Raises:
      ValueError: the cache directory cannot be written (set ``SOFTCLS_CACHE``), or the cache is
        corrupted.
    """
    path = cache_dir() / "mnist1d_default.npz"
    if not path.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        try:
            writable_dir(path.parent)  # before generating: fail fast
        except OSError as e:
            raise ValueError(
                f"mnist1d: cannot write its cache in {path.parent}: {e.strerror or e}; set "
                "SOFTCLS_CACHE to a writable directory"
            ) from None
        generated = make_dataset(get_dataset_args())  # generates; get_dataset would download
        buffer = io.BytesIO()
        np.savez(
            buffer,
            x_train=generated["x"],
            y_train=generated["y"],
            x_test=generated["x_test"],
            y_test=generated["y_test"],
        )
        try:
            atomic_write(path, buffer.getvalue())  # a crash never leaves a half-written cache
        except OSError as e:
            raise ValueError(
                f"mnist1d: cannot write its cache {path}: {e.strerror or e}; set SOFTCLS_CACHE to "
                "a writable directory"
            ) from None
    return load_npz(str(path), name="mnist1d", num_classes=10)


def load_blobs(seed: int = 0) -> Dataset:
    """Five overlapping Gaussian classes in 16 dimensions, drawn from ``seed``."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=3000, n_features=16, centers=5, cluster_std=4.0, random_state=seed)
    return validate("blobs", x[:2000], y[:2000], x[2000:], y[2000:], 5)


def load_npz(path: str, name: str | None = None, num_classes: int | None = None) -> Dataset:
    """Loads ``x_train, y_train, x_test, y_test`` from an ``.npz`` file; pickles are never loaded.

    An optional scalar integer array ``num_classes`` in the file gives the class count (for data
    where some classes have no examples); an explicit ``num_classes`` argument must agree with it.

    Raises:
      ValueError: a missing, unreadable or corrupted file (bad CRC, truncated member), object
        arrays, or anything :func:`validate` refuses.
    """
    name = name or f"npz:{path}"
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{name}: is a directory, not an .npz file") from None
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
        keys = (*NPZ_KEYS, "num_classes") if "num_classes" in loaded.files else NPZ_KEYS
        arrays = {k: _member(loaded, k, name) for k in keys}
    if "num_classes" in arrays:
        count = arrays.pop("num_classes")
        if count.shape != () or not np.issubdtype(count.dtype, np.integer):
            raise ValueError(
                f"{name}: num_classes must be a scalar integer array, got {count.dtype}"
                f"{list(count.shape)}"
            )
        if num_classes is not None and int(count) != num_classes:
            raise ValueError(f"{name}: num_classes is {int(count)}, expected {num_classes}")
        num_classes = int(count)
    return validate(name, num_classes=num_classes, **arrays)


def _member(loaded: np.lib.npyio.NpzFile, key: str, name: str) -> np.ndarray:
    """One array of an npz, its corruption (bad CRC, truncation) a ``ValueError`` naming it."""
    try:
        return loaded[key]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ValueError(
                f"{name}: holds object arrays ({key}), which would need unpickling and are never "
                "loaded; save plain numeric arrays with np.savez"
            ) from None
        raise ValueError(f"{name}: array {key} is corrupted or truncated ({e})") from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{name}: array {key} is corrupted ({e})") from None


def load(name: str, seed: int = 0) -> Dataset:
    """Loads a data set by name: ``digits``, ``mnist1d``, ``blobs``, ``npz:PATH``, or the images of
    :mod:`softcls_jax.images` (``mnist5k``, ``idx:DIR``, ``cifar10:DIR``)."""
    if name == "digits":
        return load_digits()
    if name == "mnist1d":
        return load_mnist1d()
    if name == "blobs":
        return load_blobs(seed)
    if name.startswith("npz:") and len(name) > 4:
        return load_npz(name[4:])
    if name == "mnist5k" or name.startswith(("idx:", "cifar10:")):
        return from_images(images.read(name))
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
    held = with_validation(dataset, fraction, seed)
    return dataclasses.replace(held, x_val=None, y_val=None), held.x_val, held.y_val


def with_validation(dataset: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """The data set with a stratified ``fraction`` of its training split held out as ``x_val``,
    ``y_val`` (scikit-learn's ``train_test_split``, ``random_state=seed``).

    Example:
      >>> d = with_validation(load_digits(), 0.1)
      >>> d.x_train.shape[0], d.x_val.shape[0], d.x_test.shape[0]
      (1293, 144, 360)

    Raises:
      ValueError: if ``fraction`` is not in (0, 1), or too small or too large to hold at least one
        example of every class on each side.
    """
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    try:
        x_train, x_val, y_train, y_val = train_test_split(
            dataset.x_train,
            dataset.y_train,
            test_size=fraction,
            stratify=dataset.y_train,
            random_state=seed,
        )
    except ValueError as e:  # e.g. fewer validation examples than classes
        raise ValueError(
            f"{dataset.name}: cannot hold out a validation fraction of {fraction:g} "
            f"of {dataset.x_train.shape[0]} training examples: {e}"
        ) from None
    return dataclasses.replace(dataset, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)


def permuted_features(dataset: Dataset, order: np.ndarray) -> Dataset:
    """Every split's features reordered by one fixed permutation, ``x[:, order]``, the same for every
    example (the MNIST-1D paper's spatially shuffled control: it keeps each feature's values and
    destroys only their neighbourhoods).

    Raises:
      ValueError: if ``order`` is not a permutation of ``range(D)``.
    """
    order = np.asarray(order)
    d = dataset.num_features
    if order.shape != (d,) or not np.array_equal(np.sort(order), np.arange(d)):
        raise ValueError(
            f"{dataset.name}: a feature order must be a permutation of range({d}), "
            f"got shape {order.shape}"
        )
    fix = lambda a: None if a is None else a[:, order]
    return dataclasses.replace(
        dataset, x_train=fix(dataset.x_train), x_val=fix(dataset.x_val), x_test=fix(dataset.x_test)
    )


def from_images(arrays: images.ImageArrays) -> Dataset:
    """A validated :class:`Dataset` from uint8 images ``(N, H, W, C)`` read by
    :mod:`softcls_jax.images`.

    ``x ← (x / 255 − μ_c) / σ_c`` with the per-channel mean ``μ_c`` and standard deviation ``σ_c``
    of the training images (``σ_c = 0`` → 1; one ``μ_c, σ_c`` per colour channel, so the images keep
    their spatial structure); rows flattened row-major in ``(H, W, C)`` order, which
    :attr:`Dataset.image_shape` records; a black pixel's values :attr:`Dataset.image_fill`.
    """
    scale = lambda x: x.astype(np.float32) / 255.0
    train, test = scale(arrays.x_train), scale(arrays.x_test)
    mean = train.mean(axis=(0, 1, 2), dtype=np.float64)
    std = train.std(axis=(0, 1, 2), dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    norm = lambda x: ((x - mean) / std).astype(np.float32).reshape(x.shape[0], -1)
    dataset = validate(
        arrays.name, norm(train), arrays.y_train, norm(test), arrays.y_test, arrays.num_classes
    )
    black = norm(np.zeros((1, 1, 1, train.shape[-1]), np.float32))[0]  # exactly as in x
    return dataclasses.replace(
        dataset, image_shape=arrays.image_shape, image_fill=tuple(float(v) for v in black)
    )


def standardized(dataset: Dataset) -> Dataset:
    """Every split scaled with the *training* split's per-feature mean and standard deviation,
    ``(x − μ_train) / σ_train``; constant training features (``σ = 0``) become 0. A black pixel then
    has a value per position, no longer one per channel: ``image_fill`` becomes None (crops pad
    with 0, each pixel's mean, which is black where a border pixel is black in every image).

    Example:
      >>> d = standardized(from_arrays(np.array([[1.0, 5], [3, 5]]), np.array([0, 1]),
      ...                              np.array([[2.0, 7]]), np.array([1])))
      >>> d.x_train.tolist(), d.x_test.tolist()
      ([[-1.0, 0.0], [1.0, 0.0]], [[0.0, 2.0]])
    """
    x = dataset.x_train.astype(np.float64)
    mean, std = x.mean(0), x.std(0)
    scale = np.where(std > 0, std, 1.0)
    fix = lambda a: None if a is None else ((a - mean) / scale).astype(np.float32)
    return dataclasses.replace(
        dataset,
        x_train=fix(dataset.x_train),
        x_val=fix(dataset.x_val),
        x_test=fix(dataset.x_test),
        image_fill=None,
    )
