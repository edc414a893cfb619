import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss

from softcls_jax import metrics
from tests import np_reference as ref

RNG = np.random.default_rng(1)


def _predictions(n=500, c=6, scale=2.5):
    logits = RNG.normal(size=(n, c)) * scale
    labels = RNG.integers(0, c, size=n)
    return logits.astype(np.float32), labels


def test_accuracy_nll_brier_match_references():
    logits, labels = _predictions()
    o, y = jnp.asarray(logits), jnp.asarray(labels)
    assert float(metrics.accuracy(o, y)) == pytest.approx(accuracy_score(labels, logits.argmax(1)))
    probs = ref.softmax(logits.astype(np.float64))
    assert float(metrics.nll(o, y)) == pytest.approx(
        log_loss(labels, probs, labels=range(6)), rel=1e-5
    )
    assert float(metrics.brier(o, y)) == pytest.approx(
        ref.mse(logits.astype(np.float64), ref.one_hot(labels, 6)).mean(), rel=1e-5
    )


@pytest.mark.parametrize("scale", [0.5, 2.5, 8.0])
def test_ece_matches_guo_reference(scale):
    logits, labels = _predictions(scale=scale)
    got = float(metrics.ece(jnp.asarray(logits), jnp.asarray(labels)))
    assert got == pytest.approx(ref.ece(logits, labels), abs=1e-5)


def test_bins_are_closed_on_the_right():
    # Confidence exactly 0.6 = 9/15 belongs to bin (8/15, 9/15], index 8, not 9.
    logits = jnp.log(jnp.array([[0.6, 0.4], [0.4, 0.6]]))
    bins = metrics.reliability_bins(logits, jnp.array([0, 0]), num_bins=15)
    np.testing.assert_array_equal(np.nonzero(np.asarray(bins.counts))[0], [8])
    assert float(bins.counts[8]) == 2
    np.testing.assert_allclose(bins.confidence[8], 0.6, rtol=1e-6)
    np.testing.assert_allclose(bins.accuracy[8], 0.5)
    # ECE = |0.5 - 0.6| = 0.1: "among samples predicted with confidence 0.6, 60 % should be right".
    assert float(metrics.ece(logits, jnp.array([0, 0]))) == pytest.approx(0.1, abs=1e-6)


def test_ece_zero_when_calibrated_by_construction():
    # 10 samples at confidence 0.7 with 7 right: accuracy equals confidence in the only bin.
    logits = jnp.log(jnp.tile(jnp.array([[0.7, 0.3]]), (10, 1)))
    labels = jnp.array([0] * 7 + [1] * 3)
    assert float(metrics.ece(logits, labels)) == pytest.approx(0.0, abs=1e-6)


def test_metrics_accept_probability_labels_and_jit():
    logits, labels = _predictions(n=50)
    onehot = jnp.asarray(ref.one_hot(labels, 6), jnp.float32)
    o = jnp.asarray(logits)
    for fn in (metrics.accuracy, metrics.nll, metrics.brier, metrics.ece):
        a = fn(o, jnp.asarray(labels))
        np.testing.assert_allclose(fn(o, onehot), a, rtol=1e-6)
        np.testing.assert_allclose(jax.jit(fn)(o, jnp.asarray(labels)), a, rtol=1e-6)


def test_fit_temperature_minimises_nll_and_keeps_accuracy():
    logits, labels = _predictions(n=400, scale=6.0)  # random labels: over-confident logits
    o, y = jnp.asarray(logits), jnp.asarray(labels)
    t = float(metrics.fit_temperature(o, y))
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 2001))
    nlls = [float(metrics.nll(o / g, y)) for g in grid[::20]]
    best = grid[::20][int(np.argmin(nlls))]
    assert t == pytest.approx(best, rel=0.1)
    assert float(metrics.nll(o / t, y)) <= min(nlls) + 1e-4
    assert float(metrics.accuracy(o / t, y)) == float(metrics.accuracy(o, y))
    assert float(metrics.ece(o / t, y)) < float(metrics.ece(o, y))


def test_bad_inputs():
    with pytest.raises(ValueError, match="num_bins"):
        metrics.ece(jnp.zeros((2, 3)), jnp.array([0, 1]), num_bins=0)
    with pytest.raises(ValueError, match="out of range"):
        metrics.accuracy(jnp.zeros((2, 3)), jnp.array([0, 3]))
