"""Grid axes (issue: any hyperparameter as a grid axis): every config of a multi-axis grid equals a
standalone optax loop of that one config, one compilation serves the whole product, bad axes are
clear errors."""

import functools
import itertools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from softcls_jax import data, losses, models, optim, run_grid
from softcls_jax.engine import Layout, Trainer, TrainSettings, check_compatible

STEPS, BATCH, HIDDEN = 30, 64, (16,)


@functools.cache
def digits():
    return data.load("digits")


@functools.cache
def _reference_step(loss_name):
    """One plain optax SGD step of one config; hyperparameters are arguments (compiled once)."""
    d = digits()
    model = models.make_model("mlp", d.num_features, d.num_classes, hidden=HIDDEN)
    loss_fn = losses.get_loss(loss_name)

    def tx(momentum, weight_decay, lr):
        return optax.chain(
            optax.trace(decay=momentum), optax.add_decayed_weights(weight_decay), optax.scale(-lr)
        )

    @jax.jit
    def step(params, opt_state, xb, yb, lr, momentum, weight_decay, alpha, k, m):
        targets = optax.smooth_labels(jax.nn.one_hot(yb, d.num_classes), alpha)
        extra = {"k": k, "m": m} if loss_name == "square" else {}
        objective = lambda p: jnp.mean(loss_fn(model.apply(p, xb), targets, **extra))
        grads = jax.grad(objective)(params)
        updates, opt_state = tx(momentum, weight_decay, lr).update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step, tx


def _plain_loop(config, seed, schedule):
    """One config trained the ordinary way: its own init, labels, schedule and a Python loop."""
    d = digits()
    h = config.as_dict()
    model = models.make_model(
        "mlp", d.num_features, d.num_classes, hidden=HIDDEN, init_scale=h["init_scale"]
    )
    params = model.init(jax.random.fold_in(jax.random.key(seed), 0))
    y_train = data.with_label_noise(d, h["label_noise"], seed=0).y_train
    step, tx = _reference_step(config.loss)
    opt_state = tx(0.0, 0.0, 0.0).init(params)
    warmup, lr = int(h["warmup_steps"]), h["learning_rate"]
    if schedule == "cosine":
        lr_at = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, STEPS)
    else:
        lr_at = lambda t: lr * min(1.0, t / warmup) if warmup else lr
    data_key, n = jax.random.fold_in(jax.random.key(seed), 1), d.x_train.shape[0]
    per_epoch = n // BATCH
    for t in range(STEPS):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, t // per_epoch), n))
        idx = perm[(t % per_epoch) * BATCH : (t % per_epoch + 1) * BATCH]
        params, opt_state = step(
            params,
            opt_state,
            d.x_train[idx],
            y_train[idx],
            float(lr_at(t)),
            h["momentum"],
            h["weight_decay"],
            h["label_smoothing"],
            h["k"],
            h["M"],
        )
    return params


@pytest.mark.parametrize("schedule", [pytest.param("cosine", marks=pytest.mark.slow), "constant"])
def test_every_config_of_a_multi_axis_grid_equals_a_plain_optax_loop(schedule):
    axes = {
        "weight_decay": (0.0, 1e-2),
        "momentum": (0.0, 0.9),
        "label_smoothing": (0.0, 0.1),
        "init_scale": (1.0, 2.0),
        "warmup_steps": (0, 8),
        "label_noise": (0.0, 0.25),
        "k": (2.0,),
        "M": (3.0,),
    }
    layout = Layout(("ce", "square"), (0.05, 0.2), (3,), axes)
    trainer = Trainer(
        models.make_model("mlp", 64, 10, hidden=HIDDEN),
        digits(),
        layout,
        TrainSettings("sgd", STEPS, BATCH, STEPS, schedule=schedule),
    )
    state, _ = trainer.train()
    assert trainer.num_traces == 1 and layout.size == 256
    in_grid = trainer.real_params(state)
    for (s, k), config in zip(np.ndindex(*layout.shape), layout.configs(), strict=True):
        alone = _plain_loop(config, 3, schedule)
        for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(in_grid), strict=True):
            np.testing.assert_allclose(b[s, k], a, rtol=2e-5, atol=2e-5, err_msg=str(config))


def test_adam_momentum_axis_is_b1():
    d = digits()
    layout = Layout(("ce",), (0.01,), (0,), {"momentum": (0.5, 0.9)})
    model = models.make_model("mlp", d.num_features, d.num_classes, hidden=HIDDEN)
    trainer = Trainer(model, d, layout, TrainSettings("adam", 10, BATCH, 10))
    state, _ = trainer.train()
    indices = np.asarray(trainer.batch_indices(0, 10))[:, 0]
    for k, b1 in enumerate((0.5, 0.9)):
        params = model.init(jax.random.fold_in(jax.random.key(0), 0))
        tx = optax.adam(0.01, b1=b1)
        opt_state = tx.init(params)
        for idx in indices:
            grads = jax.grad(
                lambda p, idx=idx: jnp.mean(
                    losses.cross_entropy(model.apply(p, d.x_train[idx]), d.y_train[idx])
                )
            )(params)
            updates, opt_state = tx.update(grads, opt_state)
            params = optax.apply_updates(params, updates)
        grid = jax.tree.map(lambda x, k=k: x[0, k], trainer.real_params(state))
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(grid), strict=True):
            np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6)


def test_one_compilation_serves_any_number_of_values():
    d = digits()
    model = models.make_model("linear", d.num_features, d.num_classes)
    settings = TrainSettings("momentum", 20, BATCH, 10)
    small = Trainer(model, d, Layout(("ce",), (0.1,), (0,), {"weight_decay": (0.0,)}), settings)
    big = Trainer(
        model,
        d,
        Layout(
            ("ce", "mse", "square"),
            (0.01, 0.1, 1.0),
            (0, 1),
            {
                "weight_decay": (0.0, 1e-4, 1e-3),
                "momentum": (0.0, 0.5, 0.9),
                "label_smoothing": (0.0, 0.1),
                "init_scale": (1.0, 4.0),
                "k": (1.0, 5.0),
                "M": (1.0, 15.0),
                "label_noise": (0.0, 0.2),
            },
        ),
        settings,
    )
    for trainer in (small, big):
        trainer.train()
        assert trainer.num_traces == 1 and trainer.compiled_chunks == 1
    assert big.layout.size == 3 * 3 * 3 * 3 * 2 * 2 * 2 * 2 * 2 * 2


def test_run_grid_records_axes_and_compiled_chunks(tmp_path):
    d = digits()
    doc = run_grid(
        models.make_model("linear", d.num_features, d.num_classes),
        d,
        losses=("ce", "square"),
        learning_rates=(0.05, 0.5),
        seeds=(0, 1),
        axes={"k": (1.0, 3.0), "label_smoothing": (0.0, 0.2)},
        steps=20,
        batch_size=BATCH,
        eval_every=10,
        workdir=tmp_path,
    )
    assert doc["timing"]["compiled_chunks"] == 1
    assert doc["axes"] == ["learning_rate", "k", "label_smoothing"]
    assert len(doc["configs"]) == 2 * 2 * 2 * 2 * 2
    keys = [
        (c["loss"], c["learning_rate"], c["k"], c["label_smoothing"], c["seed"])
        for c in doc["configs"]
    ]
    expected = [
        (loss, lr, k, a, s)
        for s in (0, 1)
        for loss in ("ce", "square")
        for lr, k, a in itertools.product((0.05, 0.5), (1.0, 3.0), (0.0, 0.2))
    ]
    assert keys == expected
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["loss", "learning_rate", "k", "label_smoothing", "seed"]
    assert json.loads((tmp_path / "results.json").read_text())["axes"] == doc["axes"]
    summary = (tmp_path / "summary.md").read_text()
    assert "by k (the other axes at their best on validation)" in summary
    assert "k, label_smoothing at their best on validation per cell" in summary


def test_layout_index_and_padding():
    layout = Layout(("ce", "mse"), (0.1, 0.2, 0.3), (5, 6), {"weight_decay": (0.0, 1e-3)})
    arranged = layout.arranged(num_devices=4, block_configs=0)
    assert layout.shape == arranged.shape == (2, 12)
    assert arranged.padded_shape == (2, 16)  # 6 combinations per loss padded to 8
    for (s, k), config in zip(np.ndindex(*layout.shape), layout.configs(), strict=True):
        assert arranged.index(**config.as_dict()) == (s, k)
    hp = arranged.hparams()
    real = arranged.real_k
    lrs = [c.learning_rate for c in layout.configs()[:12]]
    np.testing.assert_allclose(hp["learning_rate"][0, real], lrs)
    np.testing.assert_allclose(hp["learning_rate"][0, 6:8], [0.3, 0.3])  # padding repeats


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("warmup", [0, 7])
def test_schedule_factor_equals_optax(schedule, warmup):
    total = 40
    if schedule == "cosine":
        ref = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total)
    else:
        ref = (
            optax.join_schedules(
                [optax.linear_schedule(0.0, 1.0, warmup), optax.constant_schedule(1.0)], [warmup]
            )
            if warmup
            else (lambda t: 1.0)
        )
    for t in range(total + 1):
        w = jnp.float32(warmup) if warmup else None
        np.testing.assert_allclose(
            optim.schedule_factor(schedule, jnp.int32(t), total, w), ref(t), atol=1e-6
        )


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        ({"drop out": (0.1,)}, "unknown axis 'drop out'; valid axes: \\['weight_decay'"),
        ({"weight_decay": (-1.0,)}, "weight_decay must be a finite number >= 0, got -1.0"),
        ({"momentum": (1.0,)}, "momentum must be a number in \\[0, 1\\), got 1.0"),
        ({"label_noise": (1.0,)}, "label_noise must be a fraction in \\[0, 1\\)"),
        ({"warmup_steps": (2.5,)}, "warmup_steps must be an integer >= 0"),
        ({"init_scale": (1e300,)}, "outside float32's range"),
        ({"init_scale": (1e-50,)}, "outside float32's range"),
        ({"k": (2.0,)}, "axis 'k' is read by the square loss only"),
        ({"weight_decay": (0.0, 0.0)}, "weight_decay values must not repeat"),
        ({"weight_decay": ()}, "at least one of weight_decay values"),
    ],
)
def test_bad_axes_raise(axes, message):
    with pytest.raises(ValueError, match=message):
        Layout(("ce",), (0.1,), (0,), axes)


def test_an_axis_neither_the_projects_nor_the_optimizers_is_refused():
    layout = Layout(("ce",), (0.1,), (0,), {"dropout": (0.1,)})  # might be an optimizer's
    with pytest.raises(
        ValueError, match=r"unknown axis 'dropout': .* optimizer sgd \(\['momentum'"
    ):
        check_compatible(layout, TrainSettings())


def test_warmup_must_fit_in_the_steps():
    d = digits()
    with pytest.raises(ValueError, match=r"warmup_steps must be < steps \(20\), got 20"):
        Trainer(
            models.make_model("linear", 64, 10),
            d,
            Layout(("ce",), (0.1,), (0,), {"warmup_steps": (0, 20)}),
            TrainSettings(steps=20),
        )


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.sweep", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--axis", "drop out=0.1"],
            "--axis: expected NAME=V1,V2,... with NAME one of ['weight_decay', 'momentum', 'label_smoothing', 'init_scale', 'k', 'M', 'warmup_steps', 'label_noise'] or a hyperparameter of the optimizer",
        ),
        (
            ["--axis", "dropout=0.1"],
            "--axis: unknown axis 'dropout': not one of the project's axes ['label_smoothing', 'init_scale'",
        ),
        (["--axis", "weight_decay=0,x"], "--axis: 'x' is not a number"),
        (["--axis", "weight_decay=-1"], "--axis: weight_decay must be a finite number >= 0"),
        (["--axis", "k=1,2"], "--axis: axis 'k' is read by the square loss only"),
        (["--axis", "learning_rate=0.1"], "--axis: the learning-rate axis is --lrs"),
        (["--weight_decay=1e-3", "--axis", "weight_decay=0"], "--weight_decay: given both"),
        (["--warmup_steps=50", "--steps=50"], "--warmup_steps: warmup_steps must be < steps (50)"),
        (["--schedule=linear"], "--schedule: unknown schedule 'linear'"),
        (["--momentum=2"], "--momentum: must be a number in [0, 1), got 2.0"),
    ],
)
def test_cli_bad_axes_exit_2_with_one_line(tmp_path, args, message):
    proc = _cli("--num_lrs=1", *args, f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "w").exists()  # nothing written for a bad command


def test_cli_multi_axis_sweep_writes_every_axis(tmp_path):
    proc = _cli(
        "--loss=ce,square",
        "--lrs=0.05,0.5",
        "--axis",
        "k=1,2",
        "--axis",
        "momentum=0,0.9",
        "--label_smoothing=0.1",
        "--seeds=1",
        "--steps=20",
        "--eval_every=10",
        "--hidden=8",
        "--batch_size=32",
        f"--workdir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["settings"]["axes"] == {
        "k": [1.0, 2.0],
        "momentum": [0.0, 0.9],
        "label_smoothing": [0.1],
    }
    assert doc["timing"]["compiled_chunks"] == 1 and len(doc["configs"]) == 16
    assert (
        "2 losses × 2 learning rates × 2 k × 2 momentum × 1 label_smoothing × 1 seeds"
        in proc.stdout
    )
