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
        ({"name": "vit"}, "unknown model 'vit'"),
        ({"activation": "swish"}, "unknown activation 'swish'"),
        ({"init_scale": 0.0}, "init_scale must be > 0"),
        ({"hidden": (0,)}, "hidden sizes must be positive"),
    ],
)
def test_bad_model_settings(kwargs, message):
    args = {"name": "mlp", "in_features": 4, "num_classes": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        models.make_model(**args)


# ------------------------------------------------------------------ fast convolutions


@pytest.mark.parametrize(
    ("kernel_size", "strides", "padding", "shape"),
    [
        ((5,), (2,), [(1, 1)], (6, 40, 1)),  # cnn1d's first layer
        ((3,), (2,), [(1, 2)], (4, 19, 5)),  # asymmetric padding, odd length
        ((3,), (1,), "VALID", (3, 9, 2)),
        ((5, 5), (1, 1), [(2, 2), (2, 2)], (2, 12, 12, 1)),  # cnn2d's first layer
        ((3, 2), (2, 1), [(1, 0), (2, 1)], (3, 9, 7, 3)),  # strides and padding per axis
        ((2, 2), (2, 2), 1, (2, 6, 5, 4)),
    ],
)
def test_conv_matmul_equals_nnx_conv(kernel_size, strides, padding, shape):
    from flax import nnx

    conv = nnx.Conv(
        shape[-1], 7, kernel_size=kernel_size, strides=strides, padding=padding, rngs=nnx.Rngs(0)
    )
    conv.bias[...] = jax.random.normal(jax.random.key(1), conv.bias[...].shape)
    x = jax.random.normal(jax.random.key(2), shape)
    np.testing.assert_allclose(models.conv_matmul(conv, x), conv(x), rtol=1e-5, atol=1e-5)


def test_conv_matmul_vmapped_over_kernels_equals_each_conv():
    # The engine's case: per-config kernels, one shared input (a wide matmul) or per-config inputs.
    from flax import nnx

    conv = nnx.Conv(
        3, 5, kernel_size=(3, 3), strides=(2, 2), padding=[(1, 1)] * 2, rngs=nnx.Rngs(0)
    )
    graphdef, params = nnx.split(conv)
    stacked = jax.tree.map(
        lambda p: p + jax.random.normal(jax.random.key(3), (4, *p.shape)), params
    )
    x = jax.random.normal(jax.random.key(4), (2, 8, 8, 3))
    xs = jax.random.normal(jax.random.key(5), (4, 2, 8, 8, 3))
    fast = lambda p, x: models.conv_matmul(nnx.merge(graphdef, p), x)
    plain = lambda p, x: nnx.merge(graphdef, p)(x)
    np.testing.assert_allclose(
        jax.vmap(fast, (0, None))(stacked, x),
        jax.vmap(plain, (0, None))(stacked, x),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        jax.vmap(fast)(stacked, xs), jax.vmap(plain)(stacked, xs), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    ("kernel_size", "strides", "padding", "shape"),
    [
        ((5,), (2,), [(1, 1)], (6, 40, 1)),  # cnn1d: few windows, strided slices
        pytest.param((3,), (2,), [(1, 2)], (4, 19, 5), marks=pytest.mark.slow),
        ((5, 5), (1, 1), [(2, 2), (2, 2)], (2, 12, 12, 1)),  # cnn2d: many windows, one gather
        pytest.param((5, 5), (1, 1), "VALID", (3, 9, 8, 6), marks=pytest.mark.slow),
        pytest.param(  # the gather with strides and padding
            (3, 3), (2, 1), [(1, 0), (2, 1)], (3, 9, 7, 3), marks=pytest.mark.slow
        ),
    ],
)
def test_conv_fm_equals_nnx_conv_with_gradients(kernel_size, strides, padding, shape):
    # The feature-major conv (C, *S, N) of the CNNs, against nnx.Conv on channels-last input:
    # values and the gradients of kernel, bias and input (the gather's hand-written transpose),
    # for one config and vmapped over per-config kernels with a shared or per-config input.
    from flax import nnx

    conv = nnx.Conv(
        shape[-1], 7, kernel_size=kernel_size, strides=strides, padding=padding, rngs=nnx.Rngs(0)
    )
    graphdef, params = nnx.split(conv)
    stacked = jax.tree.map(
        lambda p: p + jax.random.normal(jax.random.key(3), (3, *p.shape)), params
    )
    x = jax.random.normal(jax.random.key(2), shape)
    to_fm = lambda x: jnp.moveaxis(x, (0, -1), (-1, 0))  # (N, *S, C) <-> (C, *S, N)
    fast = lambda p, x: to_fm(models.conv_fm(nnx.merge(graphdef, p), to_fm(x)))
    plain = lambda p, x: nnx.merge(graphdef, p)(x)
    weights = jax.random.normal(jax.random.key(4), plain(params, x).shape)
    loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)) * weights)
    close = lambda a, b: np.testing.assert_allclose(  # float32 rounding of sums of ~100 terms
        a, b, rtol=1e-4, atol=1e-5 * (1 + float(jnp.max(jnp.abs(b))))
    )
    close(fast(params, x), plain(params, x))
    for a, b in zip(
        jax.tree.leaves(jax.grad(loss(fast), (0, 1))(params, x)),
        jax.tree.leaves(jax.grad(loss(plain), (0, 1))(params, x)),
        strict=True,
    ):
        close(a, b)
    xs = jax.random.normal(jax.random.key(5), (3, *shape))
    for in_axes, xx in (((0, None), x), ((0, 0), xs)):
        grad = lambda f, ax=in_axes, xx=xx: jax.vmap(jax.grad(loss(f), (0, 1)), ax)(stacked, xx)
        close(jax.vmap(fast, in_axes)(stacked, xx), jax.vmap(plain, in_axes)(stacked, xx))
        for a, b in zip(jax.tree.leaves(grad(fast)), jax.tree.leaves(grad(plain)), strict=True):
            close(a, b)


def test_conv_matmul_refuses_what_it_does_not_compute():
    from flax import nnx

    conv = nnx.Conv(1, 2, kernel_size=(3,), padding="SAME", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="padding pairs"):
        models.conv_matmul(conv, jnp.ones((1, 5, 1)))
    conv = nnx.Conv(2, 2, kernel_size=(3,), feature_group_count=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="plain convolutions only"):
        models.conv_matmul(conv, jnp.ones((1, 5, 2)))


def _nnx_reference(model_name, **kwargs):
    """The same networks written with nnx.Conv's own call and nnx.max_pool / avg_pool."""
    from flax import nnx

    class Ref1D(models.CNN1D):
        def __call__(self, x):
            h = x[..., None]
            for conv in self.convs:
                h = jax.nn.relu(conv(h))
            return self.out(h.reshape(*h.shape[:-2], -1))

    class Ref2D(models.CNN2D):
        def __call__(self, x):
            h = x.reshape(-1, *self.image_shape)
            pool = nnx.max_pool if self.pool == "max" else nnx.avg_pool
            for conv in self.convs:
                h = pool(jax.nn.relu(conv(h)), (2, 2), strides=(2, 2))
            h = h.reshape(h.shape[0], -1)
            for layer in self.dense:
                h = jax.nn.relu(layer(h))
            return self.out(h)

    cls = Ref1D if model_name == "cnn1d" else Ref2D
    return models.from_nnx(lambda rngs: cls(**kwargs, rngs=rngs))


@pytest.mark.parametrize(
    ("name", "make_kwargs", "ref_kwargs", "shape"),
    [
        ("cnn1d", {"in_features": 40}, {"length": 40, "num_classes": 10}, (5, 40)),
        pytest.param(  # the general case below (3 channels, mean pooling) stays fast
            "cnn2d",
            {"in_features": 784, "image_shape": (28, 28, 1)},
            {"image_shape": (28, 28, 1), "num_classes": 10},
            (3, 784),
            marks=pytest.mark.slow,
        ),
        (
            "cnn2d",
            {
                "in_features": 36 * 40 * 3,
                "image_shape": (36, 40, 3),
                "channels": (4, 5, 3),
                "hidden": (7,),
                "pool": "mean",
            },
            {
                "image_shape": (36, 40, 3),
                "num_classes": 10,
                "channels": (4, 5, 3),
                "hidden": (7,),
                "pool": "mean",
            },
            (2, 36, 40, 3),
        ),
    ],
)
def test_cnns_equal_their_nnx_conv_reference(name, make_kwargs, ref_kwargs, shape):
    # The fast path (im2col + matmul, reshape pooling) against nnx.Conv / nnx.max_pool on random
    # parameters (biases too): same parameter tree, same logits to float32 rounding, same gradients.
    model = models.make_model(name, num_classes=10, **make_kwargs)
    reference = _nnx_reference(name, **ref_kwargs)
    p = model.init(jax.random.key(0))
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    p = jax.tree.unflatten(
        tree, [w + 0.1 * jax.random.normal(k, w.shape) for w, k in zip(leaves, keys, strict=True)]
    )
    assert jax.tree.structure(p) == jax.tree.structure(reference.init(jax.random.key(0)))
    assert model.num_params == reference.num_params
    x = jax.random.normal(jax.random.key(2), shape)
    np.testing.assert_allclose(model.apply(p, x), reference.apply(p, x), rtol=1e-5, atol=1e-5)
    grad = lambda m: jax.grad(lambda q: jnp.sum(jnp.sin(m.apply(q, x))))(p)
    for a, b in zip(jax.tree.leaves(grad(model)), jax.tree.leaves(grad(reference)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_cnn2d_is_lenet5_by_default():
    model = models.make_model("cnn2d", 784, 10, image_shape=(28, 28, 1))
    p = model.init(jax.random.key(0))
    assert model.num_params == 61706  # LeNet-5's parameter count
    assert p["convs"][0]["kernel"].shape == (5, 5, 1, 6)
    assert p["dense"][0]["kernel"].shape == (400, 120)  # 5 × 5 × 16 after two pools
    x = jax.random.normal(jax.random.key(1), (4, 784))
    np.testing.assert_array_equal(model.apply(p, x), model.apply(p, x.reshape(4, 28, 28, 1)))
    assert model.apply(p, x.reshape(2, 2, 784)).shape == (2, 2, 10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "cnn2d needs the images' shape"),
        ({"image_shape": (28, 28)}, r"image_shape must be \(H, W, C\)"),
        ({"image_shape": (28, 28, 3)}, "holds 2352 values but in_features is 784"),
        ({"image_shape": (28, 28, 1), "channels": 6}, "one positive int per conv stage"),
        ({"image_shape": (28, 28, 1), "channels": (6, 16, 16)}, "too small"),
        ({"image_shape": (28, 28, 1), "pool": "min"}, "unknown pool 'min'"),
    ],
)
def test_bad_cnn2d_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.make_model("cnn2d", 784, 10, **kwargs)


# ------------------------------------------------------------------ the MNIST-1D GRU


def _numpy_gru(p, x: np.ndarray) -> np.ndarray:
    """PyTorch's bidirectional GRU (gates r, z, n; h_0 = 0) and the linear read-out, step by step."""
    sig = lambda v: 1 / (1 + np.exp(-v))
    n, length = x.shape
    hidden = p["recurrent"][0]["kernel"].shape[0]
    outputs = np.zeros((n, length, 2, hidden))
    for d, times in enumerate((range(length), reversed(range(length)))):
        w_i, b_i = (
            np.asarray(p["inputs"][d]["kernel"][...]),
            np.asarray(p["inputs"][d]["bias"][...]),
        )
        w_h = np.asarray(p["recurrent"][d]["kernel"][...])
        b_h = np.asarray(p["recurrent"][d]["bias"][...])
        h = np.zeros((n, hidden))
        for t in times:
            gi, gh = x[:, t : t + 1] @ w_i + b_i, h @ w_h + b_h
            r = sig(gi[:, :hidden] + gh[:, :hidden])
            z = sig(gi[:, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])
            cand = np.tanh(gi[:, 2 * hidden :] + r * gh[:, 2 * hidden :])
            h = (1 - z) * cand + z * h
            outputs[:, t, d] = h
    flat = outputs.reshape(n, -1)
    return flat @ np.asarray(p["out"]["kernel"][...]) + np.asarray(p["out"]["bias"][...])


def test_gru_equals_a_step_by_step_reference_and_has_the_papers_parameter_count():
    model = models.make_model("gru", 40, 10)
    assert model.num_params == 5134  # the MNIST-1D notebook's GRUBase
    p = model.init(jax.random.key(8))
    bound = 1 / np.sqrt(6)
    gate_weights = [
        p[g][d][w][...] for g in ("inputs", "recurrent") for d in (0, 1) for w in ("kernel", "bias")
    ]
    assert all(float(jnp.abs(w).max()) <= bound for w in gate_weights)  # PyTorch's ±1/√H
    x = np.asarray(jax.random.normal(jax.random.key(9), (7, 40)))
    np.testing.assert_allclose(
        model.apply(p, x), _numpy_gru(p, x.astype(np.float64)), rtol=1e-4, atol=1e-5
    )
    # the backward direction really reads the sequence reversed: reversing x changes the logits
    assert not np.allclose(model.apply(p, x[:, ::-1]), model.apply(p, x), atol=1e-3)


def test_gru_equals_torch_nn_gru():
    torch = pytest.importorskip("torch")
    model = models.make_model("gru", 40, 10)
    p = model.init(jax.random.key(10))
    gru = torch.nn.GRU(1, 6, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for d, suffix in enumerate(("", "_reverse")):
            for ours, theirs in (("inputs", "ih"), ("recurrent", "hh")):
                getattr(gru, f"weight_{theirs}_l0{suffix}").copy_(
                    torch.from_numpy(np.asarray(p[ours][d]["kernel"][...]).T.copy())
                )
                getattr(gru, f"bias_{theirs}_l0{suffix}").copy_(
                    torch.from_numpy(np.array(p[ours][d]["bias"][...]))
                )
    x = np.asarray(jax.random.normal(jax.random.key(11), (5, 40)))
    with torch.no_grad():
        out, _ = gru(torch.from_numpy(x.copy())[..., None])
        logits = out.reshape(5, -1).numpy() @ np.asarray(p["out"]["kernel"][...]) + np.asarray(
            p["out"]["bias"][...]
        )
    np.testing.assert_allclose(model.apply(p, x), logits, rtol=1e-4, atol=1e-5)


def test_gru_takes_one_hidden_size():
    with pytest.raises(ValueError, match="gru takes one hidden size"):
        models.make_model("gru", 40, 10, hidden=(6, 6))
