"""The ResNet family, and weight decay on kernels only (its default, an option for every model)."""

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from softcls_jax import data, engine, models, optim, resnet, runner


def reference_forward(params, x, image_shape, depth, eps=1e-5):
    """The ResNet written with lax.conv, eval-mode BatchNorm at its initial statistics (mean 0,
    variance 1): an independent implementation of the same math."""
    conv = lambda h, p, s: jax.lax.conv_general_dilated(
        h,
        p["kernel"],
        (s, s),
        [(p["kernel"].shape[0] // 2,) * 2] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    bn = lambda h, p: h / np.sqrt(1 + eps) * p["scale"] + p["bias"]
    h = x.reshape(x.shape[0], *image_shape)
    h = jax.nn.relu(bn(conv(h, params["stem"], 1), params["stem_bn"]))
    n = (depth - 2) // 6
    for i, block in sorted(params["blocks"].items()):
        stride = 2 if i in (n, 2 * n) else 1
        out = jax.nn.relu(bn(conv(h, block["conv1"], stride), block["bn1"]))
        out = bn(conv(out, block["conv2"], 1), block["bn2"])
        skip = (
            bn(conv(h, block["shortcut"], stride), block["bn_shortcut"])
            if "shortcut" in block
            else h
        )
        h = jax.nn.relu(out + skip)
    pooled = h.mean(axis=(1, 2))
    return pooled @ params["head"]["kernel"] + params["head"]["bias"]


@pytest.mark.parametrize(
    ("shape", "depth", "width"),
    [((8, 8, 3), 8, 4), pytest.param((12, 10, 1), 14, 3, marks=pytest.mark.slow)],
)
def test_resnet_equals_a_plain_lax_conv_implementation(shape, depth, width):
    model = models.make_model(
        "resnet", int(np.prod(shape)), 5, image_shape=shape, depth=depth, width=width
    )
    assert model.stateful and model.decay_kernels_only
    params = model.init(jax.random.key(0))
    state = model.init_state(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (6, int(np.prod(shape))))
    pure = jax.tree.map(np.asarray, nnx.to_pure_dict(params))
    np.testing.assert_allclose(
        model.apply_eval(params, state, x),
        reference_forward(pure, x, shape, depth),
        rtol=1e-5,
        atol=1e-5,
    )


def test_resnet20_has_the_papers_size():
    model = models.make_model(
        "resnet", 32 * 32 * 3, 10, image_shape=(32, 32, 3), depth=20, width=16
    )
    assert model.num_params == 272_474  # He et al. 2016: 0.27M for CIFAR-10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_shape": None}, r"resnet needs the images' shape \(H, W, C\)"),
        ({"image_shape": (8, 8, 3), "depth": 9}, r"resnet depth must be 6n \+ 2"),
        ({"image_shape": (8, 8, 3), "width": 0}, "resnet width must be a positive int"),
    ],
)
def test_bad_resnets_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.make_model("resnet", 192, 10, **kwargs)


def _decay_updates(optimizer, kernels_only, hparams):
    params = {"layer": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    opt = optim.make_optimizer(optimizer, set(hparams) - {"learning_rate"}, kernels_only)
    state = opt.init(params, hparams)
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(grads, state, params, hparams, hparams["learning_rate"])
    return updates["layer"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "lion", "rmsprop"])
def test_weight_decay_on_kernels_only_spares_biases(optimizer):
    hp = {"learning_rate": jnp.float32(0.1), "weight_decay": jnp.float32(0.5)}
    masked = _decay_updates(optimizer, True, hp)
    full = _decay_updates(optimizer, False, hp)
    np.testing.assert_array_equal(masked["bias"], 0.0)
    assert np.all(np.asarray(full["bias"]) < 0) and np.all(np.asarray(masked["kernel"]) < 0)
    np.testing.assert_allclose(masked["kernel"], full["kernel"], rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_images():
    rng = np.random.default_rng(0)
    y = np.arange(48) % 3
    x = rng.normal(size=(48, 8, 8, 3)).astype(np.float32) + y[:, None, None, None]
    d = data.from_arrays(x[:32].reshape(32, -1), y[:32], x[32:].reshape(16, -1), y[32:])
    return dataclasses.replace(d, image_shape=(8, 8, 3))


def test_a_resnet_grid_trains_with_augmentation_and_per_config_statistics(tiny_images):
    model = models.make_model("resnet", 192, 3, image_shape=(8, 8, 3), depth=8, width=4)
    layout = engine.Layout(("ce", "square"), (1e-3, 1e-2), (0,), {"b2": (0.99, 0.999)})
    settings = engine.TrainSettings("adamw", 6, 8, 3, augment="crop_flip")
    run = runner.run(model, tiny_images, layout, settings)
    assert run.document["timing"]["compiled_chunks"] == 1
    mean = run.model_state["stem_bn"]["mean"]
    assert mean.shape == (1, 8, 4) and not np.allclose(mean, 0)  # trained, one copy per config
    assert not np.array_equal(mean[0, 0], mean[0, 3])  # lr 1e-3 vs 1e-2: their own statistics
    assert all(np.isfinite(c["final"]["test_nll"]) for c in run.document["configs"])


def test_cli_resnet_needs_images(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            f"--workdir={tmp_path}",
            "--model=resnet",
            "--num_lrs=1",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "--model: resnet on digits: resnet needs the images' shape" in lines[0]
    )


def test_blocks_per_stage():
    assert [resnet.blocks_per_stage(d) for d in (8, 14, 20, 32)] == [1, 2, 3, 5]
