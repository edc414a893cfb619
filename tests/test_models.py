import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softcls_jax import models


@pytest.mark.parametrize(
    ("name", "kwargs", "params"),
    [
        ("linear", {}, 64 * 10 + 10),
        ("mlp", {"hidden": (32, 16)}, 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10),
    ],
)
def test_shapes_and_parameter_count(name, kwargs, params):
    model = models.make_model(name, 64, 10, **kwargs)
    p = model.init(jax.random.key(0))
    assert model.num_params == params == sum(x.size for x in jax.tree.leaves(p))
    assert model.apply(p, jnp.ones((5, 64))).shape == (5, 10)


def test_cnn1d_matches_the_mnist1d_layout():
    model = models.make_model("cnn1d", 40, 10)
    p = model.init(jax.random.key(0))
    assert model.apply(p, jnp.ones((3, 40))).shape == (3, 10)
    # lengths 40 -> 19 -> 10 -> 5 with 25 channels: the paper's linear layer sees 125 features
    assert p["out"]["kernel"].shape == (125, 10)


def test_init_scale_multiplies_weights_not_biases():
    base = models.make_model("mlp", 8, 3, hidden=(4,))
    big = models.make_model("mlp", 8, 3, hidden=(4,), init_scale=4.0)
    p, q = base.init(jax.random.key(1)), big.init(jax.random.key(1))
    np.testing.assert_allclose(q["out"]["kernel"], 4 * p["out"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(q["hidden"][0]["kernel"], 4 * p["hidden"][0]["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(q["out"]["bias"], p["out"]["bias"])


@pytest.mark.parametrize("activation", sorted(models.ACTIVATIONS))
def test_mlp_is_b_plus_w_sigma_of_b_plus_wx(activation):
    # C2: y = b' + W' σ(b + W x), written out by hand.
    model = models.make_model("mlp", 6, 3, hidden=(5,), activation=activation)
    p = jax.tree.map(lambda x: x + 0.1, model.init(jax.random.key(2)))
    x = jax.random.normal(jax.random.key(3), (4, 6))
    sigma = models.ACTIVATIONS[activation]
    h = sigma(x @ p["hidden"][0]["kernel"] + p["hidden"][0]["bias"])
    np.testing.assert_allclose(
        model.apply(p, x), h @ p["out"]["kernel"] + p["out"]["bias"], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_any_leading_shape_is_a_batch_of_rows(name):
    # The dense models compute feature-major inside; their contract stays (..., D) -> (..., C).
    model = models.make_model(name, 6, 3, hidden=(5, 5), residual=True)
    p = model.init(jax.random.key(6))
    x = jax.random.normal(jax.random.key(7), (2, 4, 6))
    rows = model.apply(p, x.reshape(8, 6))
    np.testing.assert_array_equal(model.apply(p, x), rows.reshape(2, 4, 3))
    np.testing.assert_allclose(model.apply(p, x[1, 2]), rows[6], rtol=1e-6, atol=1e-7)


def test_softmax_regression_log_odds_are_affine_in_x():
    # C17 on the Flax model: pairwise logit differences are affine, so decision boundaries are hyperplanes.
    model = models.make_model("linear", 5, 4)
    p = model.init(jax.random.key(4))
    x1, x2 = jax.random.normal(jax.random.key(5), (2, 1, 5))
    diff = lambda x: model.apply(p, x)[:, 1:] - model.apply(p, x)[:, :1]
    for a in (-1.5, 0.3, 2.0):
        np.testing.assert_allclose(
            diff(a * x1 + (1 - a) * x2), a * diff(x1) + (1 - a) * diff(x2), atol=1e-5
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "resnet"}, "unknown model 'resnet'"),
        ({"activation": "swish"}, "unknown activation 'swish'"),
        ({"init_scale": 0.0}, "init_scale must be > 0"),
        ({"hidden": (0,)}, "hidden sizes must be positive"),
    ],
)
def test_bad_model_settings(kwargs, message):
    args = {"name": "mlp", "in_features": 4, "num_classes": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        models.make_model(**args)
