"""Any optax optimizer, its numeric hyperparameters as grid axes, one compilation for all values.

References: a plain per-config loop of the optax factory itself (``optax.adamw(lr, b1=…)``, …) on
the engine's minibatches, and golden final metrics of the project's own sgd / momentum / adam,
saved from the code before any optax optimizer could be named (tests/golden/).
"""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from softcls_jax import data, engine, models, optim, runner, sweep

GOLDEN = pathlib.Path(__file__).parent / "golden" / "legacy_optimizers.json"
STEPS = 60


@pytest.fixture(scope="module")
def blobs():
    d = data.standardized(data.load("blobs"))
    return data.from_arrays(d.x_train[:500], d.y_train[:500], d.x_test[:300], d.y_test[:300])


def _model(dataset):
    # tanh: no dead units, whose gradients of pure rounding Adam-like updates would amplify
    return models.make_model(
        "mlp", dataset.num_features, dataset.num_classes, hidden=(16,), activation="tanh"
    )


def reference_params(model, dataset, indices, seed, tx):
    """A plain loop of one config with the optax transformation ``tx``: final parameters."""
    params = model.init(jax.random.fold_in(jax.random.key(seed), 0))
    state = tx.init(params)
    x, y = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)

    @jax.jit
    def step(params, state, idx):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
            model.apply(p, x[idx]), y[idx]
        ).mean()
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    for t in range(indices.shape[0]):
        params, state = step(params, state, indices[t])
    return params


def assert_trees_close(got, want):
    """Leaf by leaf within rtol 1e-5 (vmap width changes float rounding on XLA CPU)."""
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


CASES = {  # name: (optimizer, axes, lr, the reference for (lr, one config's axis values))
    "adamw_b1_b2": (
        "adamw",
        {"b1": (0.8, 0.9), "b2": (0.99, 0.999)},
        3e-3,
        lambda lr, h: optax.adamw(lr, b1=h["b1"], b2=h["b2"]),
    ),
    "adamw_weight_decay": (
        "adamw",
        {"weight_decay": (0.0, 0.5)},
        3e-3,
        lambda lr, h: optax.adamw(lr, weight_decay=h["weight_decay"]),
    ),
    "adam_momentum_is_b1": (
        "adam",
        {"momentum": (0.5,), "eps": (1e-8, 1e-3)},
        3e-3,
        lambda lr, h: optax.adam(lr, b1=h["momentum"], eps=h["eps"]),
    ),
    "lion_b2": ("lion", {"b2": (0.9, 0.99)}, 3e-4, lambda lr, h: optax.lion(lr, b2=h["b2"])),
    "rmsprop_momentum_none_default": (
        "rmsprop",
        {"momentum": (0.0, 0.9), "decay": (0.9,)},
        1e-3,
        lambda lr, h: optax.rmsprop(lr, decay=h["decay"], momentum=h["momentum"]),
    ),
    "nesterov": (
        "nesterov",
        {"momentum": (0.5, 0.9)},
        0.05,
        lambda lr, h: optax.sgd(lr, momentum=h["momentum"], nesterov=True),
    ),
    "adagrad_initial_accumulator": (
        "adagrad",
        {"initial_accumulator_value": (0.1, 1.0)},
        0.05,
        lambda lr, h: optax.adagrad(lr, initial_accumulator_value=h["initial_accumulator_value"]),
    ),
    "lamb_weight_decay": (
        "lamb",
        {"weight_decay": (0.0, 0.1)},
        1e-2,
        lambda lr, h: optax.lamb(lr, weight_decay=h["weight_decay"]),
    ),
    "adafactor": (
        "adafactor",
        {"decay_rate": (0.8, 0.9)},
        1e-2,
        lambda lr, h: optax.adafactor(lr, decay_rate=h["decay_rate"]),
    ),
    "rmsprop_decoupled_weight_decay": (
        "rmsprop",
        {"weight_decay": (0.0, 0.1)},
        1e-3,
        lambda lr, h: optax.chain(
            optax.rmsprop(lr), optax.add_decayed_weights(-lr * h["weight_decay"])
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_config_equals_the_optax_factory_loop(blobs, case):
    optimizer, axes, lr, reference = CASES[case]
    model = _model(blobs)
    layout = engine.Layout(("ce",), (lr,), (0,), axes)
    settings = engine.TrainSettings(optimizer, STEPS, 32, STEPS)
    trainer = engine.Trainer(model, blobs, layout, settings)
    indices = np.asarray(trainer.batch_indices(0, STEPS))[:, 0]
    run = runner.run(model, blobs, layout, settings)
    assert run.document["timing"]["compiled_chunks"] == 1
    assert run.document["settings"]["optimizer"] == optimizer
    for k, config in enumerate(layout.configs()):
        hp = {name: config.value(name) for name in axes}
        want = reference_params(model, blobs, indices, 0, reference(lr, hp))
        got = jax.tree.map(lambda a, k=k: a[0, k], run.params)
        assert_trees_close(got, want)


def test_factories_and_functions_of_the_hyperparameters(blobs):
    """``optax.adamw`` itself, and a user's chain with clipping, train with b1 as an axis."""
    model = _model(blobs)
    user = lambda learning_rate, b1: optax.chain(
        optax.clip_by_global_norm(0.5), optax.adam(learning_rate, b1=b1)
    )
    for optimizer, reference in (
        (optax.adamw, lambda lr, b1: optax.adamw(lr, b1=b1)),
        (user, lambda lr, b1: user(lr, b1)),
    ):
        layout = engine.Layout(("ce",), (3e-3,), (0,), {"b1": (0.7, 0.9)})
        settings = engine.TrainSettings(optimizer, 30, 32, 30)
        indices = np.asarray(engine.Trainer(model, blobs, layout, settings).batch_indices(0, 30))
        run = runner.run(model, blobs, layout, settings)
        for k, b1 in enumerate((0.7, 0.9)):
            want = reference_params(model, blobs, indices[:, 0], 0, reference(3e-3, b1))
            got = jax.tree.map(lambda a, k=k: a[0, k], run.params)
            assert_trees_close(got, want)


def test_schedules_compose_with_any_optimizer(blobs):
    model = _model(blobs)
    layout = engine.Layout(("ce",), (3e-3,), (0,), {"warmup_steps": (10.0,), "b2": (0.99,)})
    settings = engine.TrainSettings("adamw", 40, 32, 40, schedule="cosine")
    indices = np.asarray(engine.Trainer(model, blobs, layout, settings).batch_indices(0, 40))
    run = runner.run(model, blobs, layout, settings)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 10, 40)
    want = reference_params(model, blobs, indices[:, 0], 0, optax.adamw(schedule, b2=0.99))
    got = jax.tree.map(lambda a: a[0, 0], run.params)
    assert_trees_close(got, want)


@pytest.mark.parametrize(
    ("optimizer", "axes", "message"),
    [
        ("nope", {}, r"unknown optimizer 'nope'; expected one of \['sgd', 'momentum', 'nesterov'"),
        ("lbfgs", {}, "lbfgs is refused: it needs the loss value"),
        ("polyak_sgd", {}, "polyak_sgd is refused"),
        ("adam", {"b3": (0.5,)}, r"unknown axis 'b3'.*hyperparameter of optimizer adam \(\['b1'"),
        ("sgd", {"dropout": (0.1,)}, "unknown axis 'dropout'"),
        (
            "adafactor",
            {"min_dim_size_to_factor": (64.0,)},
            "'min_dim_size_to_factor' cannot be a grid axis: its value must be known",
        ),
        (42, {}, "an optimizer is a name of"),
        ("adamw", {"momentum": (0.9,), "b1": (0.8,)}, "momentum and b1 are both axes"),
    ],
)
def test_bad_optimizers_and_hyperparameters_raise(blobs, optimizer, axes, message):
    with pytest.raises(ValueError, match=message):
        layout = engine.Layout(("ce",), (0.1,), (0,), axes)
        engine.Trainer(_model(blobs), blobs, layout, engine.TrainSettings(optimizer, 10, 32, 10))


def test_hyperparameter_values_are_checked():
    with pytest.raises(ValueError, match=r"b2 must be a number in \[0, 1\), got 1.5"):
        engine.Layout(("ce",), (0.1,), (0,), {"b2": (1.5,)})
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        engine.Layout(("ce",), (0.1,), (0,), {"eps": (-1.0,)})


def _final_metrics(document):
    return [c["final"] for c in document["configs"]]


def _golden_run(optimizer, axes):
    dataset = sweep.load_dataset(sweep.SweepSpec())
    model = models.make_model("mlp", dataset.num_features, dataset.num_classes, hidden=(128,))
    lrs = tuple(float(x) for x in np.logspace(-3, 0, 8))
    layout = engine.Layout(("ce", "mse"), lrs, (0,), axes)
    return runner.run(model, dataset, layout, engine.TrainSettings(optimizer, 2000, 128, 2000))


GOLDEN_CASES = {  # the reference workload (2000 steps) per legacy optimizer
    "sgd": ("sgd", {}),
    "momentum": ("momentum", {}),
    "adam": ("adam", {}),
    "adam_axes": ("adam", {"momentum": (0.5, 0.9), "weight_decay": (0.0, 1e-2)}),
    "sgd_axes": ("sgd", {"momentum": (0.0, 0.9), "weight_decay": (0.0, 1e-2)}),
}


@pytest.mark.parametrize(
    "case",
    ["sgd", pytest.param("momentum", marks=pytest.mark.slow)]
    + [pytest.param(c, marks=pytest.mark.slow) for c in ("adam", "adam_axes", "sgd_axes")],
)
def test_legacy_optimizers_keep_their_results(case):
    golden = json.loads(GOLDEN.read_text())[case]
    got = _golden_run(*GOLDEN_CASES[case]).document["configs"]
    assert len(got) == len(golden)
    for g, want in zip(got, golden, strict=True):
        assert {k: g[k] for k in want if k != "final"} == {k: want[k] for k in want if k != "final"}
        for name, value in want["final"].items():
            if value is None or not np.isfinite(value):
                assert g["final"][name] is None or not np.isfinite(g["final"][name])
            else:
                np.testing.assert_allclose(g["final"][name], value, rtol=1e-6, err_msg=name)


def test_cli_lists_optimizers_and_rejects_bad_ones(tmp_path):
    run = lambda *args: subprocess.run(
        [sys.executable, "-m", "experiments.sweep", f"--workdir={tmp_path}", *args],
        capture_output=True,
        text=True,
    )
    helped = run("--helpfull")
    for name in ("adamw", "lion", "rmsprop", "adagrad", "lamb", "adafactor", "nesterov"):
        assert name in helped.stdout
    for args, message in (
        (["--optimizer=nope"], "--optimizer: unknown optimizer 'nope'"),
        (["--optimizer=adam", "--axis=b3=0.1"], "--axis: unknown axis 'b3'"),
        (["--optimizer=adamw", "--axis=b2=1.5"], "b2 must be a number in [0, 1)"),
    ):
        done = run(*args)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], done.stderr


def test_cli_sweeps_an_optax_hyperparameter(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            f"--workdir={tmp_path}",
            "--optimizer=adamw",
            "--axis=b2=0.99,0.999",
            "--lrs=0.003",
            "--seeds=1",
            "--steps=40",
            "--eval_every=20",
            "--hidden=16",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["axes"] == ["learning_rate", "b2"]
    assert [c["b2"] for c in doc["configs"]] == [0.99, 0.999]
    assert doc["timing"]["compiled_chunks"] == 1
    assert "b2" in (tmp_path / "results.csv").read_text().splitlines()[0]


def test_optimizer_names_cover_the_issue_list():
    for name in ("sgd", "nesterov", "adam", "adamw", "lion", "rmsprop", "adagrad", "lamb"):
        assert name in optim.OPTIMIZERS
    assert "adafactor" in optim.OPTIMIZERS and "lbfgs" not in optim.OPTIMIZERS


def test_kernels_only_decay_needs_a_mask_where_the_optimizer_decays_itself(blobs):
    with pytest.raises(ValueError, match="novograd decays its weights itself and takes no mask"):
        engine.Trainer(
            _model(blobs),
            blobs,
            engine.Layout(("ce",), (0.1,), (0,)),
            engine.TrainSettings("novograd", 10, 32, 10, weight_decay_mask="kernels"),
        )
