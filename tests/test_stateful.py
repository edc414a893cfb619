"""Stateful NNX modules (BatchNorm, Dropout, other variables) train in the grid as in a plain loop.

The reference is an independent per-config Flax NNX + optax loop on the engine's minibatches and
keys: ``nnx.Optimizer`` over ``nnx.Param``, the module in ``train()`` mode, optax's own losses.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from softcls_jax import checkpoint, data, engine, models, runner

STEPS = 200


class BNDropNet(nnx.Module):
    """BatchNorm and a Dropout that owns its stream (``rngs=`` at construction)."""

    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(16, 32, use_bias=False, rngs=rngs)  # BN follows
        self.norm = nnx.BatchNorm(32, rngs=rngs)
        self.drop = nnx.Dropout(0.25, rngs=rngs)
        self.out = nnx.Linear(32, 5, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(jax.nn.relu(self.norm(self.hidden(x)))))


class CallRngsNet(nnx.Module):
    """Flax's examples' style: Dropout takes ``rngs`` as a call argument."""

    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(16, 32, use_bias=False, rngs=rngs)  # BN follows
        self.norm = nnx.BatchNorm(32, rngs=rngs)
        self.drop = nnx.Dropout(0.25)
        self.out = nnx.Linear(32, 5, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs | None = None):
        return self.out(self.drop(jax.nn.relu(self.norm(self.hidden(x))), rngs=rngs))


class Counter(nnx.Variable):
    """A user variable the engine carries unchanged."""


class WithCounter(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.out = nnx.Linear(16, 5, rngs=rngs)
        self.tag = Counter(jnp.arange(3.0))

    def __call__(self, x):
        return self.out(x)


@pytest.fixture(scope="module")
def blobs():
    """Gaussian blobs (16 features, 5 classes). Not the digits: their standardised pixels are often
    constant within a minibatch, and BatchNorm then leaves those kernel rows a gradient that is
    pure float rounding, which Adam normalises into steps of size lr: any two implementations part
    there, at the first such step."""
    d = data.standardized(data.load("blobs"))
    return data.from_arrays(d.x_train[:600], d.y_train[:600], d.x_test[:400], d.y_test[:400])


OPTIMIZERS = {  # name: (learning rates, axes, the reference for (lr, one config's axis values))
    "sgd": ((0.05, 0.2), {}, lambda lr, h: optax.sgd(lr)),
    "momentum": ((0.01, 0.05), {}, lambda lr, h: optax.sgd(lr, momentum=0.9)),
    "adam": ((1e-3, 1e-2), {}, lambda lr, h: optax.adam(lr)),
    "adamw": ((3e-3,), {"b1": (0.8, 0.9)}, lambda lr, h: optax.adamw(lr, b1=h["b1"])),
}
REFERENCE_LOSS = {
    "ce": lambda o, y: optax.softmax_cross_entropy_with_integer_labels(o, y),
    "mse": lambda o, y: jnp.sum((jax.nn.softmax(o) - jax.nn.one_hot(y, o.shape[-1])) ** 2, axis=-1),
}


def reference_logits(build, dataset, indices, loss, seed, tx, steps=STEPS):
    """A plain NNX loop of one config with the optax transformation ``tx``; returns its eval-mode
    test logits."""
    module = build(nnx.Rngs(jax.random.fold_in(jax.random.key(seed), 0)))
    module.train()
    opt = nnx.Optimizer(module, tx, wrt=nnx.Param)
    rng_root = jax.random.fold_in(jax.random.key(seed), 2)
    takes_rngs = "rngs" in module.__call__.__code__.co_varnames

    @nnx.jit
    def train_step(module, opt, x, y, key):
        def objective(module):
            logits = module(x, rngs=nnx.Rngs(key)) if takes_rngs else module(x)
            return jnp.mean(REFERENCE_LOSS[loss](logits, y))

        grads = nnx.grad(objective)(module)
        opt.update(module, grads)

    x, y = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    for t in range(steps):
        idx = indices[t]
        train_step(module, opt, x[idx], y[idx], jax.random.fold_in(rng_root, t))
    module.eval()
    x_test = jnp.asarray(dataset.x_test)
    return np.asarray(module(x_test, rngs=nnx.Rngs(0)) if takes_rngs else module(x_test))


def engine_logits(run, model, s, k, x):
    """Eval-mode logits on ``x`` of config ``(s, k)`` of a finished run."""
    one = lambda tree: jax.tree.map(lambda a: a[s, k], tree)
    return np.asarray(model.apply_eval(one(run.params), one(run.model_state), jnp.asarray(x)))


@pytest.mark.parametrize(
    ("build", "optimizer"),
    [
        (BNDropNet, "momentum"),
        (CallRngsNet, "adam"),
        (BNDropNet, "adamw"),
        pytest.param(CallRngsNet, "adamw", marks=pytest.mark.slow),
        pytest.param(BNDropNet, "sgd", marks=pytest.mark.slow),
        pytest.param(CallRngsNet, "sgd", marks=pytest.mark.slow),
    ],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_grid_equals_plain_nnx_loop(blobs, build, optimizer):
    """Every config of a BatchNorm + Dropout grid (2 losses × rates × axes × 2 seeds) equals its
    own plain NNX loop on the same batches and dropout keys, statistics included (eval logits)."""
    model = models.from_nnx(build, name="bn_drop")
    assert model.stateful
    lrs, axes, reference = OPTIMIZERS[optimizer]
    layout = engine.Layout(("ce", "mse"), lrs, (0, 3), axes)
    settings = engine.TrainSettings(optimizer, STEPS, 32, STEPS)
    trainer = engine.Trainer(model, blobs, layout, settings)
    indices = np.asarray(trainer.batch_indices(0, STEPS))  # (steps, S, B)
    run = runner.run(model, blobs, layout, settings)
    per_seed = layout.shape[1]
    for s, seed in enumerate(layout.seeds):
        for k, config in enumerate(layout.configs()[s * per_seed : (s + 1) * per_seed]):
            tx = reference(config.learning_rate, {name: config.value(name) for name in axes})
            want = reference_logits(build, blobs, indices[:, s], config.loss, seed, tx)
            got = engine_logits(run, model, s, k, blobs.x_test)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            final = run.document["configs"][s * per_seed + k]["final"]
            acc = np.mean(np.argmax(want, -1) == blobs.y_test)
            assert abs(final["test_accuracy"] - acc) <= 1 / len(blobs.y_test) + 1e-6


def test_batch_statistics_are_per_config_and_trained(blobs):
    model = models.from_nnx(BNDropNet, name="bn_drop")
    layout = engine.Layout(("ce",), (1e-3, 0.5), (0,))
    run = runner.run(model, blobs, layout, engine.TrainSettings("sgd", 50, 32, 50))
    mean, var = run.model_state["norm"]["mean"], run.model_state["norm"]["var"]
    assert mean.shape == (1, 2, 32) and not np.allclose(mean[0, 0], mean[0, 1])
    assert not np.allclose(mean, 0) and not np.allclose(var, 1)  # updated from their init
    stream = run.model_state["drop"]["rngs"]
    np.testing.assert_array_equal(stream["count"], 50)  # the stream advanced once per step
    assert stream["key"].dtype == np.uint32 and stream["key"].shape == (1, 2, 2)  # key data


def test_evaluation_is_deterministic_and_in_eval_mode(blobs):
    model = models.from_nnx(BNDropNet, name="bn_drop")
    layout = engine.Layout(("ce",), (0.1,), (0,))
    settings = engine.TrainSettings("sgd", 40, 32, 20)
    trainer = engine.Trainer(model, blobs, layout, settings)
    state, history = trainer.train()
    again = trainer.evaluate(state)
    for name in ("test_accuracy", "test_nll", "train_nll"):
        np.testing.assert_array_equal(again[name], history[-1][name])
    params, model_state = trainer.real_variables(state)
    one = lambda t: jax.tree.map(lambda a: a[0, 0], t)
    x = jnp.asarray(blobs.x_test)
    a = model.apply_eval(one(params), one(model_state), x)
    b = model.apply_eval(one(params), one(model_state), x)
    np.testing.assert_array_equal(a, b)
    nll = optax.softmax_cross_entropy_with_integer_labels(a, jnp.asarray(blobs.y_test)).mean()
    np.testing.assert_allclose(history[-1]["test_nll"][0, 0], nll, rtol=1e-5)


def test_diverging_config_leaves_neighbours_bitwise_unchanged(blobs):
    model = models.from_nnx(BNDropNet, name="bn_drop")
    settings = engine.TrainSettings("sgd", 60, 32, 30)
    sane = runner.run(model, blobs, engine.Layout(("ce",), (0.05, 0.1, 0.2), (0,)), settings)
    wild = runner.run(model, blobs, engine.Layout(("ce",), (0.05, 1e30, 0.2), (0,)), settings)
    assert wild.document["configs"][1]["diverged"]
    for k in (0, 2):
        np.testing.assert_equal(sane.document["configs"][k], wild.document["configs"][k])
        for a, b in zip(*map(jax.tree.leaves, (sane.model_state, wild.model_state)), strict=True):
            np.testing.assert_array_equal(a[:, k], b[:, k])


def test_checkpoint_resume_equals_uninterrupted(blobs, tmp_path):
    model = models.from_nnx(CallRngsNet, name="call_rngs")
    layout = engine.Layout(("ce", "mse"), (0.05, 0.2), (0, 1))
    settings = engine.TrainSettings("momentum", 60, 32, 20)
    whole = runner.run(model, blobs, layout, settings)
    path = tmp_path / checkpoint.DIRECTORY

    class Stop(Exception):
        pass

    def stop_after_first(step, *_):
        if step == 20:
            raise Stop

    with pytest.raises(Stop):
        runner.run(
            model, blobs, layout, settings, checkpoint_path=path, on_progress=stop_after_first
        )
    resumed_at = []
    resumed = runner.run(
        model,
        blobs,
        layout,
        settings,
        checkpoint_path=path,
        resume=True,
        on_resume=resumed_at.append,
    )
    assert resumed_at == [20]  # the run that stopped waited for its checkpoint to commit
    np.testing.assert_equal(resumed.document["configs"], whole.document["configs"])
    for a, b in zip(*map(jax.tree.leaves, (whole.model_state, resumed.model_state)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_other_variables_are_carried_unchanged(blobs):
    model = models.from_nnx(WithCounter, name="counter")
    run = runner.run(
        model, blobs, engine.Layout(("ce",), (0.1,), (0,)), engine.TrainSettings("sgd", 20, 32, 20)
    )
    tag = run.model_state["tag"]
    np.testing.assert_array_equal(tag, np.broadcast_to(np.arange(3.0), (1, 1, 3)))


def test_init_scale_scales_kernels_only_not_statistics(blobs):
    model = models.from_nnx(BNDropNet, name="bn_drop")
    layout = engine.Layout(("ce",), (0.1,), (0,), axes={"init_scale": (1.0, 3.0)})
    trainer = engine.Trainer(model, blobs, layout, engine.TrainSettings("sgd", 10, 32, 10))
    state = trainer.init_state()
    k = np.asarray(state.params["hidden"]["kernel"][...])
    np.testing.assert_allclose(k[0, 1], 3 * k[0, 0], rtol=1e-6)
    bn_scale = np.asarray(state.params["norm"]["scale"][...])
    np.testing.assert_array_equal(bn_scale[0, 0], bn_scale[0, 1])
    var = np.asarray(state.model_state["norm"]["var"])
    np.testing.assert_array_equal(var[0, 0], var[0, 1])


class NeedsTrainFlag(nnx.Module):
    def __init__(self, rngs):
        self.out = nnx.Linear(16, 5, rngs=rngs)

    def __call__(self, x, train):
        return self.out(x)


class OptionalTrainFlag(nnx.Module):
    """A Linen-style mode flag with a default: training would keep its default mode."""

    def __init__(self, rngs):
        self.out = nnx.Linear(16, 5, rngs=rngs)

    def __call__(self, x, train=False):
        return self.out(x)


class Sows(nnx.Module):
    def __init__(self, rngs):
        self.norm = nnx.BatchNorm(16, rngs=rngs)
        self.out = nnx.Linear(16, 5, rngs=rngs)

    def __call__(self, x):
        self.sow(nnx.Intermediate, "h", x)
        return self.out(self.norm(x))


@pytest.mark.filterwarnings("ignore:Using 'Module.sow:DeprecationWarning")
def test_modules_the_engine_cannot_handle_get_a_clear_error(blobs):
    with pytest.raises(ValueError, match=r"__call__\(x\) or __call__\(x, rngs=...\)"):
        models.from_nnx(NeedsTrainFlag, name="flagged")
    with pytest.raises(ValueError, match=r"takes \['x', 'train'\]"):
        models.from_nnx(OptionalTrainFlag, name="optional_flag")
    sows = models.from_nnx(Sows, name="sows")
    layout = engine.Layout(("ce",), (0.1,), (0,))
    with pytest.raises(ValueError, match="changed the module's state structure"):
        runner.run(sows, blobs, layout, engine.TrainSettings("sgd", 4, 32, 4))
    with pytest.raises(ValueError, match="apply_eval"):
        models.from_nnx(BNDropNet).apply(None, None)
