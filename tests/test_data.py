import numpy as np
import pytest

from softcls_jax import data


def test_digits_split_is_fixed_stratified_and_standardised():
    d = data.load("digits")
    assert d.x_train.shape == (1437, 64) and d.x_test.shape == (360, 64)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    np.testing.assert_allclose(d.x_train.mean(0), 0, atol=1e-5)
    assert np.all(np.bincount(d.y_test) >= 35)  # stratified: every class 35-37 times
    np.testing.assert_array_equal(d.y_train, data.load("digits").y_train)


def test_mnist1d_is_generated_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTCLS_CACHE", str(tmp_path))
    d = data.load("mnist1d")
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40) and d.num_classes == 10
    assert (tmp_path / "mnist1d_default.npz").exists()
    again = data.load("mnist1d")
    np.testing.assert_array_equal(again.x_test, d.x_test)


def test_blobs_are_seeded():
    a, b, c = data.load("blobs", 0), data.load("blobs", 0), data.load("blobs", 1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)


def _save(path, **arrays):
    base = {
        "x_train": np.ones((4, 3)),
        "y_train": np.array([0, 1, 0, 1]),
        "x_test": np.ones((2, 3)),
        "y_test": np.array([1, 0]),
    }
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return f"npz:{path}"


def test_npz_round_trip(tmp_path):
    d = data.load(_save(tmp_path / "ok.npz"))
    assert d.num_classes == 2 and d.x_train.dtype == np.float32


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y_test": None}, r"missing arrays \['y_test'\]"),
        ({"x_train": np.array([[1.0, np.nan, 0]] * 4)}, "has 4 NaN or inf values"),
        ({"x_train": np.array([[1.0, np.inf, 0]] * 4)}, "NaN or inf"),
        ({"y_train": np.array([0, 1, 0])}, "x_train has 4 rows but y_train has 3 labels"),
        ({"y_train": np.array([0.0, 1.0, 0.0, 1.0])}, "integer class labels"),
        ({"y_train": np.array([0, -1, 0, 1])}, "negative labels"),
        ({"y_train": np.array([1, 1, 1, 1])}, "hold 1 class; need at least 2"),
        ({"x_test": np.ones((2, 5))}, "x_train has 3 features, x_test 5"),
        ({"x_train": np.ones((0, 3)), "y_train": np.array([], int)}, "empty"),
        ({"x_train": np.ones(4)}, r"shape \(N, D\)"),
    ],
)
def test_bad_npz_contents(tmp_path, arrays, message):
    with pytest.raises(ValueError, match=message):
        data.load(_save(tmp_path / "bad.npz", **arrays))


def test_npz_object_arrays_are_refused_never_unpickled(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(
        path,
        x_train=np.array([{"a": 1}] * 4, dtype=object),
        y_train=np.array([0, 1, 0, 1]),
        x_test=np.ones((2, 3)),
        y_test=np.array([1, 0]),
    )
    with pytest.raises(ValueError, match="object arrays"):
        data.load(f"npz:{path}")


def test_not_an_npz(tmp_path):
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(ValueError, match=r"not an \.npz file"):
        data.load(f"npz:{tmp_path / 'x.npz'}")
    np.save(tmp_path / "a.npy", np.ones(3))
    with pytest.raises(ValueError, match=r"single \.npy array"):
        data.load(f"npz:{tmp_path / 'a.npy'}")
    with pytest.raises(ValueError, match="no such file"):
        data.load(f"npz:{tmp_path / 'missing.npz'}")


def test_unknown_dataset():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'; expected one of \['digits'"):
        data.load("cifar")


def test_label_noise_flips_training_labels_only():
    d = data.load("digits")
    noisy = data.with_label_noise(d, 0.3, seed=0)
    assert np.sum(noisy.y_train != d.y_train) == round(0.3 * 1437)
    np.testing.assert_array_equal(noisy.y_test, d.y_test)


@pytest.mark.parametrize(
    ("val", "message"),
    [
        ({"x_val": np.full((3, 2), np.nan), "y_val": np.array([0, 1, 0])}, "x_val has 6 NaN"),
        (
            {"x_val": np.ones((3, 5)), "y_val": np.array([0, 1, 0])},
            "x_train has 2 features, x_val 5",
        ),
        (
            {"x_val": np.ones((3, 2)), "y_val": np.array([0, 1, 7])},
            "y_val has label 7, out of range",
        ),
        ({"x_val": np.ones((3, 2))}, "give both x_val and y_val"),
    ],
)
def test_from_arrays_checks_a_validation_split(val, message):
    x, y = np.ones((4, 2)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=message):
        data.from_arrays(x, y, x, y, **val)
    ok = data.from_arrays(x, y, x, y, x_val=np.zeros((2, 2)), y_val=np.array([1, 0]))
    assert ok.x_val.dtype == np.float32 and ok.y_val.tolist() == [1, 0]
