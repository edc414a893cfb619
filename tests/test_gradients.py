"""Autodiff equals the closed forms (C8, C9, C11), in float64 to 1e-10 and float32 to 1e-5."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from softcls_jax import gradients as G
from softcls_jax import losses
from softcls_jax.labels import one_hot

# float32 tolerance: logits of scale ~5 give gradients of order 1; float32 rounding in softmax and
# the subtraction p - y leave absolute errors of a few 1e-7, so 1e-5 is a safe, still-failing bound.
TOLERANCE = {jnp.float64: 1e-10, jnp.float32: 1e-5}

CLOSED_FORMS = {
    "ce": (losses.cross_entropy, G.ce_grad),
    "mse": (losses.mse, G.mse_grad),
    "square": (losses.square_loss, G.square_loss_grad),
}


def _inputs(seed, shape, num_classes, dtype, label_form):
    key_o, key_y = jax.random.split(jax.random.key(seed))
    logits = 5.0 * jax.random.normal(key_o, (*shape, num_classes), dtype)
    labels = jax.random.randint(key_y, shape, 0, num_classes)
    if label_form == "probs":
        labels = jax.nn.softmax(jax.random.normal(key_y, (*shape, num_classes), dtype))
    return logits, labels


def _autodiff(loss_fn, logits, labels):
    return jax.grad(lambda o: jnp.sum(loss_fn(o, labels)))(logits)


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("label_form", ["int", "probs"])
@pytest.mark.parametrize(("shape", "num_classes"), [((), 2), ((16,), 10), ((3, 5), 7)])
def test_autodiff_equals_closed_form(name, dtype, label_form, shape, num_classes):
    loss_fn, closed = CLOSED_FORMS[name]
    with jax.enable_x64(dtype == jnp.float64):
        logits, labels = _inputs(0, shape, num_classes, dtype, label_form)
        want = closed(logits, labels)
        chex.assert_trees_all_close(
            _autodiff(loss_fn, logits, labels), want, atol=TOLERANCE[dtype], rtol=0
        )
        jitted = jax.jit(functools.partial(_autodiff, loss_fn))(logits, labels)
        chex.assert_trees_all_close(jitted, want, atol=TOLERANCE[dtype], rtol=0)
        if shape:  # per-example gradients, one vmap per batch axis
            per_example = jax.grad(loss_fn)
            for _ in shape:
                per_example = jax.vmap(per_example)
            per_example = per_example(logits, labels)
            chex.assert_trees_all_close(per_example, want, atol=TOLERANCE[dtype], rtol=0)


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_finite_differences(name):
    loss_fn, _ = CLOSED_FORMS[name]
    with jax.enable_x64(True):
        logits, labels = _inputs(1, (4,), 5, jnp.float64, "int")
        check_grads(lambda o: loss_fn(o, labels).sum(), (logits,), order=2, modes=["fwd", "rev"])


def test_softmax_jacobian_equals_jacfwd():
    with jax.enable_x64(True):
        logits, _ = _inputs(2, (6,), 4, jnp.float64, "int")
        want = jax.vmap(jax.jacfwd(jax.nn.softmax))(logits)
        got = G.softmax_jacobian(logits)
        chex.assert_trees_all_close(got, want, atol=1e-12)
        p = jax.nn.softmax(logits)
        # C8 entry by entry: p_k (1 - p_k) on the diagonal, -p_i p_k off it.
        np.testing.assert_allclose(np.diagonal(got, axis1=-2, axis2=-1), p * (1 - p), atol=1e-15)
        np.testing.assert_allclose(got[0, 0, 1], -p[0, 0] * p[0, 1], atol=1e-15)


def test_mse_grad_is_jacobian_times_residual():
    with jax.enable_x64(True):
        logits, labels = _inputs(3, (5,), 6, jnp.float64, "int")
        y = one_hot(labels, 6, jnp.float64)
        p = jax.nn.softmax(logits)
        via_jacobian = jnp.einsum("nik,ni->nk", G.softmax_jacobian(logits), 2 * (p - y))
        chex.assert_trees_all_close(G.mse_grad(logits, labels), via_jacobian, atol=1e-14)


def test_target_path_terms():
    # C11: on the target logit's own path, ∂ŷ_p/∂z_p = ŷ_p(1 - ŷ_p); chaining with ∂L/∂ŷ_p gives
    # ŷ_p - 1 for CE and -2 ŷ_p (1 - ŷ_p)² for MSE.
    with jax.enable_x64(True):
        logits = jnp.array([[-6.0, 4.0, 1.0], [0.3, 0.1, -0.2], [9.0, 0.0, 0.0]])
        labels = jnp.array([0, 0, 0])
        p_t = jax.nn.softmax(logits)[:, 0]
        d_pt_dz = jax.vmap(jax.grad(lambda o: jax.nn.softmax(o)[0]))(logits)[:, 0]
        np.testing.assert_allclose(G.softmax_target_derivative(p_t), d_pt_dz, rtol=1e-12)
        # CE's full gradient on z_p is exactly the seeds' term.
        np.testing.assert_allclose(G.ce_grad(logits, labels)[:, 0], G.ce_target_path_grad(p_t))
        # MSE: ∂L/∂ŷ_p = 2(ŷ_p - 1) times ∂ŷ_p/∂z_p.
        dL_dpt = jax.vmap(jax.grad(lambda q: jnp.sum((q - jnp.array([1.0, 0, 0])) ** 2)))(
            jax.nn.softmax(logits)
        )[:, 0]
        np.testing.assert_allclose(G.mse_target_path_grad(p_t), dL_dpt * d_pt_dz, rtol=1e-12)
    # Confidently wrong (ŷ_p → 0): CE still pushes with -1, MSE's term vanishes.
    assert float(G.ce_target_path_grad(jnp.float32(1e-6))) == pytest.approx(-1.0, abs=1e-5)
    assert abs(float(G.mse_target_path_grad(jnp.float32(1e-6)))) < 3e-6


def _softmax_regression(seed=0, n=32, d=8, c=5):
    kx, kw, ky = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (n, d))
    params = {"kernel": jax.random.normal(kw, (d, c)) * 0.5, "bias": jnp.zeros(c)}
    return params, x, jax.random.randint(ky, (n,), 0, c)


def test_linear_model_grads_equal_autodiff():
    params, x, labels = _softmax_regression()
    loss = lambda p: jnp.mean(losses.cross_entropy(G.linear_logits(p, x), labels))
    chex.assert_trees_all_close(
        G.linear_model_grads(params, x, labels), jax.grad(loss)(params), atol=1e-6
    )
    # Per example, row k of ∇Θ (= column k of ∇kernel) is (p_k - y_k) x (C9).
    one = G.linear_model_grads(params, x[:1], labels[:1])
    p = jax.nn.softmax(G.linear_logits(params, x[:1]))[0]
    y = one_hot(labels[:1], 5)[0]
    chex.assert_trees_all_close(one["kernel"][:, 2], (p[2] - y[2]) * x[0], atol=1e-6)


def test_gd_step_equals_optax_sgd():
    params, x, labels = _softmax_regression(seed=4)
    lr = 0.3
    loss = lambda p: jnp.mean(losses.cross_entropy(G.linear_logits(p, x), labels))
    tx = optax.sgd(lr)
    updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params)
    chex.assert_trees_all_close(
        G.gd_step(params, x, labels, lr), optax.apply_updates(params, updates), atol=1e-6
    )
