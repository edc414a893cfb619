"""Augmentation: random crop after padding and horizontal flip, on the device, never on evaluation."""

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from softcls_jax import augment, data, engine, images, models, runner


def numpy_augment(images, offsets, flips, pad, fill=None):
    """The reference: np.pad with each channel's fill (zeros by default), slice, mirror."""
    h, w, c = images.shape[1:]
    fill = np.zeros(c) if fill is None else fill
    pads = ((0, 0), (pad, pad), (pad, pad))
    padded = np.stack(
        [np.pad(images[..., i], pads, constant_values=fill[i]) for i in range(c)], axis=-1
    )
    out = np.stack([padded[b, dy : dy + h, dx : dx + w] for b, (dy, dx) in enumerate(offsets)])
    return np.where(flips[:, None, None, None], out[:, :, ::-1], out)


@pytest.mark.parametrize("kind", ["flip", "crop", "crop_flip"])
def test_augmentation_equals_numpy_with_the_same_offsets_and_flips(kind):
    images = np.random.default_rng(0).normal(size=(16, 7, 5, 3)).astype(np.float32)
    key = jax.random.key(3)
    offsets, flips = (np.asarray(a) for a in augment.draw(key, 16, kind))
    if "crop" in kind:
        assert (
            offsets.min() >= 0 and offsets.max() <= 2 * augment.PAD and len(np.unique(offsets)) > 1
        )
    else:
        np.testing.assert_array_equal(offsets, augment.PAD)
    assert flips.any() == ("flip" in kind) and not (flips.all() and "flip" in kind)
    want = numpy_augment(images, offsets, flips, augment.PAD)
    rows = jnp.asarray(images.reshape(16, -1))
    got = augment.augment_rows(key, rows, (7, 5, 3), kind)
    np.testing.assert_array_equal(np.asarray(got).reshape(images.shape), want)
    np.testing.assert_array_equal(
        np.asarray(augment.apply(jnp.asarray(images), offsets, flips)), want
    )


def test_crops_pad_with_each_channels_fill_and_keep_the_image_bit_for_bit():
    images = np.random.default_rng(2).normal(size=(8, 6, 5, 3)).astype(np.float32)
    fill = (-0.42, 1.5, -2.0)
    offsets, flips = (np.asarray(a) for a in augment.draw(jax.random.key(4), 8, "crop_flip"))
    got = augment.apply(jnp.asarray(images), offsets, flips, fill=fill)
    want = numpy_augment(images, offsets, flips, augment.PAD, np.float32(fill))
    np.testing.assert_array_equal(np.asarray(got), want)
    centre = np.full((8, 2), augment.PAD)
    same = augment.apply(jnp.asarray(images), centre, np.zeros(8, bool), fill=fill)
    np.testing.assert_array_equal(np.asarray(same), images)
    with pytest.raises(ValueError, match="fill has 2 values for images of 3 channels"):
        augment.apply(jnp.asarray(images), offsets, flips, fill=(0.0, 1.0))


def test_image_data_pads_with_black_until_a_per_feature_scaling():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(20, 4, 4, 2)).astype(np.uint8)
    x[:, 0] = 0  # a black row
    arrays = images.ImageArrays("toy", x[:15], np.arange(15) % 2, x[15:], np.arange(5) % 2, 2)
    d = data.from_images(arrays)
    rows = d.x_train.reshape(15, 4, 4, 2)
    assert d.image_fill == tuple(float(v) for v in rows[0, 0, 0])  # a black pixel, exactly
    assert all(v < 0 for v in d.image_fill)
    assert data.standardized(d).image_fill is None
    assert data.with_validation(d, 0.2).image_fill == d.image_fill


def test_none_is_the_identity_and_unknown_kinds_are_refused():
    x = jnp.arange(12.0).reshape(2, 6)
    assert augment.augment_rows(jax.random.key(0), x, (1, 3, 2), "none") is x
    with pytest.raises(ValueError, match=r"unknown augmentation 'rotate'; expected one of"):
        engine.TrainSettings(augment="rotate")


@pytest.fixture(scope="module")
def tiny_images():
    """60 random 8×8×1 'images' of 3 classes whose class is the brightness of a corner."""
    rng = np.random.default_rng(1)
    y = np.arange(90) % 3
    x = rng.normal(size=(90, 8, 8, 1)).astype(np.float32)
    x[:, :3, :3] += 2.0 * y[:, None, None, None]
    d = data.from_arrays(x[:60].reshape(60, -1), y[:60], x[60:].reshape(30, -1), y[60:])
    return dataclasses.replace(d, image_shape=(8, 8, 1), image_fill=(-1.5,))  # crops pad with it


def test_engine_augments_each_seeds_minibatch_with_keys_of_the_seed_and_step(tiny_images):
    """Every config equals a plain loop that augments the engine's minibatch with
    ``fold_in(fold_in(key(seed), 3), step)``: shared by the seed's configs, independent of them."""
    model = models.make_model("linear", 64, 3)
    layout = engine.Layout(("ce",), (0.05, 0.2), (0, 5))
    settings = engine.TrainSettings("sgd", 12, 10, 6, augment="crop_flip")
    trainer = engine.Trainer(model, tiny_images, layout, settings)
    indices = np.asarray(trainer.batch_indices(0, 12))
    run = runner.run(model, tiny_images, layout, settings)
    x, y = jnp.asarray(tiny_images.x_train), jnp.asarray(tiny_images.y_train)

    def sgd_step(params, lr, key, idx):
        xb = augment.augment_rows(key, x[idx], (8, 8, 1), "crop_flip", fill=(-1.5,))
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
            model.apply(p, xb), y[idx]
        ).mean()
        return jax.tree.map(lambda p, g: p - lr * g, params, jax.grad(loss)(params))

    for s, seed in enumerate(layout.seeds):
        root = jax.random.fold_in(jax.random.key(seed), 3)
        for k, lr in enumerate(layout.learning_rates):
            params = model.init(jax.random.fold_in(jax.random.key(seed), 0))
            for t in range(12):
                params = sgd_step(params, lr, jax.random.fold_in(root, t), indices[t, s])
            got = jax.tree.map(lambda a, s=s, k=k: a[s, k], run.params)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_augmentation_never_touches_evaluation(tiny_images):
    model = models.make_model("linear", 64, 3)
    layout = engine.Layout(("ce",), (0.1,), (0,))
    plain = engine.Trainer(model, tiny_images, layout, engine.TrainSettings("sgd", 10, 10, 10))
    augmented = engine.Trainer(
        model, tiny_images, layout, engine.TrainSettings("sgd", 10, 10, 10, augment="crop_flip")
    )
    state = plain.init_state()
    before = plain.evaluate(state)
    np.testing.assert_equal(augmented.evaluate(augmented.init_state()), before)
    trained, history = augmented.train()
    params = jax.tree.map(lambda a: a[0, 0], augmented.real_params(trained))
    logits = model.apply(params, jnp.asarray(tiny_images.x_test))
    acc = np.mean(np.argmax(logits, -1) == tiny_images.y_test)
    np.testing.assert_allclose(history[-1]["test_accuracy"][0, 0], acc, rtol=1e-6)
    _, plain_history = plain.train()
    assert not np.array_equal(history[-1]["train_nll"], plain_history[-1]["train_nll"])


def test_augmentation_needs_image_data(tiny_images):
    flat = dataclasses.replace(tiny_images, image_shape=None)
    with pytest.raises(ValueError, match=r"augment='flip' needs image data .* flat features"):
        engine.Trainer(
            models.make_model("linear", 64, 3),
            flat,
            engine.Layout(("ce",), (0.1,), (0,)),
            engine.TrainSettings("sgd", 10, 10, 10, augment="flip"),
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--augment=crop"], "--augment: crop needs image data (mnist5k, idx:DIR, cifar10:DIR)"),
        (["--augment=rotate"], "--augment: unknown augmentation 'rotate'"),
    ],
)
def test_cli_bad_augment_exits_2_with_one_line(tmp_path, args, message):
    done = subprocess.run(
        [sys.executable, "-m", "experiments.sweep", f"--workdir={tmp_path}", "--num_lrs=1", *args],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
