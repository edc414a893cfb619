import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from softcls_jax import labels as L


def test_one_hot_values():
    np.testing.assert_array_equal(
        L.one_hot(jnp.array([2, 0, 1]), 3), np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    )


def test_one_hot_batched_shape_and_dtype():
    out = L.one_hot(jnp.zeros((2, 5), jnp.int32), 4, dtype=jnp.bfloat16)
    chex.assert_shape(out, (2, 5, 4))
    assert out.dtype == jnp.bfloat16


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        (jnp.array([0, 3, 7]), "labels out of range: [3, 7]; expected integers in [0, 3)"),
        (jnp.array([-1, 0]), "labels out of range: [-1]"),
        (jnp.array([0.0, 1.5]), "non-integer values [1.5]"),
        (jnp.array([0.0, jnp.nan]), "non-integer values [nan]"),
        (jnp.array([0.0, 1.0]), "cast with .astype"),
        (jnp.array([True, False]), "integer dtype, got bool"),
    ],
)
def test_one_hot_refuses_bad_labels(labels, fragment):
    # jax.nn.one_hot would silently return a zero row for these.
    with pytest.raises(ValueError, match=r"labels|integer") as info:
        L.one_hot(labels, 3)
    assert fragment in str(info.value)


def test_one_hot_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        L.one_hot(jnp.array([0]), 0)


def test_one_hot_under_jit_checks_dtype_but_not_values():
    out = jax.jit(lambda y: L.one_hot(y, 3))(jnp.array([1]))
    np.testing.assert_array_equal(out, [[0, 1, 0]])
    with pytest.raises(ValueError, match="integer dtype"):
        jax.jit(lambda y: L.one_hot(y, 3))(jnp.array([1.0]))


def test_label_kind_and_shape_mismatch():
    logits = jnp.zeros((4, 3))
    assert L.label_kind(logits, jnp.zeros(4, jnp.int32)) == "int"
    assert L.label_kind(logits, jnp.full((4, 3), 1 / 3)) == "probs"
    with pytest.raises(ValueError, match=r"labels of shape \(5,\) do not match logits of shape"):
        L.label_kind(logits, jnp.zeros(5, jnp.int32))
    with pytest.raises(ValueError, match="logits must be floating"):
        L.label_kind(jnp.zeros((4, 3), jnp.int32), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="NaN or inf"):
        L.label_kind(logits, jnp.full((4, 3), jnp.nan))
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        L.label_kind(logits, jnp.full((4, 3), 2.0))


def test_smooth_labels():
    y = L.smooth_labels(L.one_hot(jnp.array([1]), 4), 0.2)
    np.testing.assert_allclose(y, [[0.05, 0.85, 0.05, 0.05]], rtol=1e-6)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        L.smooth_labels(y, 1.5)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_corrupt_labels_flips_exactly_the_fraction(fraction):
    labels = jnp.arange(200) % 10
    noisy = L.corrupt_labels(jax.random.key(0), labels, 10, fraction)
    assert int(jnp.sum(noisy != labels)) == round(fraction * 200)
    assert int(noisy.min()) >= 0 and int(noisy.max()) < 10
    again = L.corrupt_labels(jax.random.key(0), labels, 10, fraction)
    np.testing.assert_array_equal(noisy, again)  # seeded: deterministic


def test_corrupt_labels_bad_fraction():
    with pytest.raises(ValueError, match="fraction"):
        L.corrupt_labels(jax.random.key(0), jnp.arange(4), 4, -0.1)


def test_check_labels_in_graph_with_checkify():
    def f(y):
        L.check_labels_in_graph(y, 3)
        return y.sum()

    checked = checkify.checkify(jax.jit(f))
    err, out = checked(jnp.array([0, 1, 2]))
    assert err.get() is None and int(out) == 3
    err, _ = checked(jnp.array([0, 5]))
    assert "labels out of range [0, 3): min 0, max 5" in err.get()
    with pytest.raises(Exception, match="out of range"):
        err.throw()
