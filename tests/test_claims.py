"""One test per claim of docs/claims.md that the functional core implements."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from softcls_jax import gradients as G
from softcls_jax import losses, metrics

finite = st.floats(-30, 30, allow_nan=False, width=64)
# Distinct logits on a grid of quarter steps: argmax and order are only defined without ties.
grid_logits = st.integers(-60, 60).map(lambda k: k / 4)  # gaps < 30: p < 1 in float64


def logit_vectors(min_classes=2, max_classes=8):
    return st.integers(min_classes, max_classes).flatmap(
        lambda c: arrays(np.float64, (c,), elements=grid_logits, unique=True)
    )


def probability_vectors(c):
    return arrays(np.float64, (c,), elements=st.floats(0.01, 1.0)).map(lambda v: v / v.sum())


@given(logit_vectors())
def test_c3_softmax_is_a_distribution_keeping_order_and_amplifying_gaps(o):
    with jax.enable_x64(True):
        p = np.asarray(jax.nn.softmax(jnp.asarray(o)))
    assert np.all((p > 0) & (p < 1))
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.argmax(p) == np.argmax(o)
    order = np.argsort(o, kind="stable")
    assert np.all(np.diff(p[order]) >= 0)  # order kept
    i, j = np.argmax(o), np.argmin(o)
    # ratio of probabilities is exp of the logit gap: the gap is amplified exponentially
    assert np.log(p[i] / p[j]) == pytest.approx(o[i] - o[j], rel=1e-9, abs=1e-9)


@given(finite, finite, st.integers(0, 1))
def test_c4_two_class_softmax_is_sigmoid(z1, z2, y):
    with jax.enable_x64(True):
        two = jnp.array([z1, z2])
        assert float(jax.nn.softmax(two)[0]) == pytest.approx(
            float(jax.nn.sigmoid(z1 - z2)), rel=1e-12, abs=1e-300
        )
        # The binary loss on the logit difference is the 2-class loss (class 0 = "positive").
        bce = losses.binary_cross_entropy(jnp.array(z1 - z2), jnp.array(1 - y))
        ce = losses.cross_entropy(two, jnp.array(y))
        assert float(bce) == pytest.approx(float(ce), rel=1e-9, abs=1e-12)


@given(logit_vectors(3, 3), st.integers(0, 2))
def test_c5_ce_reduces_to_minus_log_target_and_mse_is_sum_of_squares(o, p_idx):
    with jax.enable_x64(True):
        probs = np.asarray(jax.nn.softmax(jnp.asarray(o)))
        y = np.eye(3)[p_idx]
        ce = float(losses.cross_entropy(jnp.asarray(o), jnp.asarray(p_idx)))
        assert ce == pytest.approx(-np.log(probs[p_idx]), rel=1e-9)
        assert ce == pytest.approx(-(y * np.log(probs)).sum(), rel=1e-9)
        assert float(losses.mse(jnp.asarray(o), jnp.asarray(p_idx))) == pytest.approx(
            ((y - probs) ** 2).sum(), rel=1e-9, abs=1e-15
        )


def test_c5_dataset_loss_is_the_mean():
    logits = jnp.array([[1.0, 2.0], [3.0, -1.0], [0.0, 0.0]])
    labels = jnp.array([0, 0, 1])
    per_example = losses.cross_entropy(logits, labels)
    assert float(metrics.nll(logits, labels)) == pytest.approx(float(per_example.sum() / 3))


def test_c6_minimising_ce_is_maximum_likelihood():
    labels = jnp.array([0, 0, 0, 1, 2, 2])
    with jax.enable_x64(True):
        freq = jnp.array([3.0, 1.0, 2.0]) / 6
        # Mean CE of a constant model equals the negative mean log-likelihood of the labels ...
        theta = jnp.log(jnp.array([0.2, 0.5, 0.3]))
        mean_ce = jnp.mean(losses.cross_entropy(jnp.tile(theta, (6, 1)), labels))
        loglik = jnp.sum(jnp.log(jnp.array([0.2, 0.5, 0.3]))[labels]) / 6
        assert float(mean_ce) == pytest.approx(-float(loglik), rel=1e-12)
        # ... and its minimiser is the maximum-likelihood estimate, the empirical frequencies.
        grad_at_mle = jax.grad(
            lambda t: jnp.mean(losses.cross_entropy(jnp.tile(t, (6, 1)), labels))
        )(jnp.log(freq))
        np.testing.assert_allclose(grad_at_mle, 0.0, atol=1e-15)


@given(
    st.integers(2, 8).flatmap(lambda c: st.tuples(probability_vectors(c), probability_vectors(c)))
)
def test_c7_cross_entropy_is_entropy_plus_kl(pq):
    p, q = pq
    with jax.enable_x64(True):
        h = float(losses.entropy(jnp.asarray(p)))
        kl = float(losses.kl_divergence(jnp.asarray(p), jnp.asarray(q)))
        hpq = float(losses.distribution_cross_entropy(jnp.asarray(p), jnp.asarray(q)))
        assert hpq == pytest.approx(h + kl, rel=1e-10, abs=1e-12)
        assert kl >= -1e-12 and hpq >= h - 1e-12
        assert float(losses.kl_divergence(jnp.asarray(p), jnp.asarray(p))) == pytest.approx(
            0, abs=1e-12
        )
        assert h <= np.log(len(p)) + 1e-12


def test_c7_entropy_extremes():
    with jax.enable_x64(True):
        assert float(losses.entropy(jnp.full(5, 0.2))) == pytest.approx(np.log(5), rel=1e-12)
        assert float(losses.entropy(jnp.array([0.0, 1.0, 0.0]))) == 0.0


@given(logit_vectors(), st.data())
def test_c8_ce_gradient_is_softmax_minus_label(o, data):
    label = data.draw(st.integers(0, len(o) - 1))
    with jax.enable_x64(True):
        g = jax.grad(lambda z: losses.cross_entropy(z, jnp.asarray(label)))(jnp.asarray(o))
        want = jax.nn.softmax(jnp.asarray(o)) - jnp.eye(len(o))[label]
    np.testing.assert_allclose(g, want, atol=1e-12)


def test_c10_log_sum_exp_form_is_stable():
    o = jnp.array([1e4, -1e4, 0.0, 5e3])
    y = jnp.array(2)
    lse_form = float(losses.cross_entropy(o, y))
    assert lse_form == pytest.approx(1e4, rel=1e-7)  # log Σ exp(o) - o_2 = 1e4 - 0
    naive = float(-jnp.log(jax.nn.softmax(o)[2]))  # log(softmax) underflows to -inf
    assert np.isinf(naive)
    assert np.all(np.isfinite(jax.grad(lambda z: losses.cross_entropy(z, y))(o)))


@given(st.floats(1e-6, 1 - 1e-6))
def test_c11_ce_never_vanishes_when_wrong_while_mse_does(p_t):
    with jax.enable_x64(True):
        ce_term = float(G.ce_target_path_grad(jnp.float64(p_t)))
        mse_term = float(G.mse_target_path_grad(jnp.float64(p_t)))
    assert ce_term == pytest.approx(p_t - 1)
    assert abs(mse_term) <= 2 * p_t  # |−2 p (1−p)²| ≤ 2p → 0 as p → 0
    if p_t < 0.1:  # confidently wrong: CE pushes at least 0.9, MSE at most 0.2
        assert abs(ce_term) > 0.9 and abs(mse_term) < 0.2


def test_c11_full_mse_gradient_vanishes_at_confidently_wrong_start():
    logits = jnp.array([[-10.0, 10.0, -1000.0]])  # target 0, model sure it is class 1
    ce_norm = float(
        jnp.linalg.norm(jax.grad(lambda o: losses.cross_entropy(o, jnp.array([0])).sum())(logits))
    )
    mse_norm = float(
        jnp.linalg.norm(jax.grad(lambda o: losses.mse(o, jnp.array([0])).sum())(logits))
    )
    assert ce_norm == pytest.approx(np.sqrt(2), rel=1e-6)
    assert mse_norm < 1e-7


def test_c12_mse_cares_how_wrong_mass_is_spread_ce_does_not():
    even, skewed = jnp.log(jnp.array([0.8, 0.1, 0.1])), jnp.log(jnp.array([0.8, 0.15, 0.05]))
    y = jnp.array(0)
    assert float(losses.mse(even, y)) < float(losses.mse(skewed, y))  # 0.06 < 0.065
    assert float(losses.mse(even, y)) == pytest.approx(0.06, rel=1e-5)
    assert float(losses.mse(skewed, y)) == pytest.approx(0.065, rel=1e-5)
    assert float(losses.cross_entropy(even, y)) == pytest.approx(
        float(losses.cross_entropy(skewed, y))
    )


@given(st.lists(logit_vectors(4, 4), min_size=1, max_size=6).map(np.stack))
def test_c16_hard_class_is_argmax_of_soft_probabilities(o):
    with jax.enable_x64(True):
        np.testing.assert_array_equal(
            metrics.predict(jnp.asarray(o)),
            np.argmax(np.asarray(jax.nn.softmax(jnp.asarray(o))), -1),
        )


@given(
    arrays(np.float64, (3, 4), elements=st.floats(-3, 3)),
    arrays(np.float64, (2, 3), elements=st.floats(-5, 5)),
    st.floats(-2, 3),
)
def test_c17_softmax_regression_is_linear(w, xs, alpha):
    params = {"kernel": jnp.asarray(w), "bias": jnp.array([0.5, -1.0, 0.0, 2.0])}
    with jax.enable_x64(True):
        x1, x2 = jnp.asarray(xs[0]), jnp.asarray(xs[1])

        def log_odds(x):  # log p_i - log p_0: the quantity compared by every decision
            logp = jax.nn.log_softmax(G.linear_logits(params, x))
            return logp[1:] - logp[0]

        mix = log_odds(alpha * x1 + (1 - alpha) * x2)
        np.testing.assert_allclose(
            mix, alpha * log_odds(x1) + (1 - alpha) * log_odds(x2), atol=1e-9
        )
