"""A user's dense layers run feature-major (softcls_jax.feature_major): the same values and
gradients as the module's own program, the built-in MLP's layout, the same training results."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from softcls_jax import data, engine, feature_major, models


class Dense(nnx.Module):
    """64 -> 32 -> 32 -> 10 with a chosen activation, optionally residual in the middle layer."""

    def __init__(self, rngs: nnx.Rngs, activation=nnx.relu, residual: bool = False):
        self.a = nnx.Linear(64, 32, rngs=rngs)
        self.b = nnx.Linear(32, 32, rngs=rngs)
        self.out = nnx.Linear(32, 10, rngs=rngs)
        self.activation, self.residual = activation, residual

    def __call__(self, x):
        h = self.activation(self.a(x))
        g = self.activation(self.b(h))
        return self.out(h + g if self.residual else g)


class Normed(nnx.Module):
    """A reduction over features between dense layers (not elementwise: computed as traced)."""

    def __init__(self, rngs: nnx.Rngs):
        self.a = nnx.Linear(64, 32, rngs=rngs)
        self.out = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.a(x))
        h = h / jnp.linalg.norm(h, axis=-1, keepdims=True) + jax.nn.softmax(h)
        return self.out(jnp.tanh(h) * x[:, :32])


BUILDS = {
    "relu": Dense,
    "gelu": lambda rngs: Dense(rngs, nnx.gelu),
    "tanh": lambda rngs: Dense(rngs, jnp.tanh),
    "sigmoid": lambda rngs: Dense(rngs, nnx.sigmoid),
    "silu": lambda rngs: Dense(rngs, nnx.silu),
    "leaky_relu": lambda rngs: Dense(rngs, nnx.leaky_relu),
    "residual": lambda rngs: Dense(rngs, residual=True),
    "normed": Normed,
}


def _grads(apply, params, x):
    loss = lambda p: jnp.sum(jnp.sin(jax.vmap(apply, (0, None))(p, x)))
    return jax.grad(loss)(params)


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_values_and_gradients_equal_the_modules_own(name):
    """In float64, where only the products' summation order differs."""
    fast = models.from_nnx(BUILDS[name], name=name)
    plain = models.from_nnx(BUILDS[name], name=name, feature_major=False)
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(0), 3)
        to64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
        params = to64(jax.vmap(plain.init)(keys))  # 3 configs, as the engine vmaps them
        x = jax.random.normal(jax.random.key(1), (16, 64), jnp.float64)
        logits = jax.vmap(fast.apply, (0, None))(params, x)
        want = jax.vmap(plain.apply, (0, None))(params, x)
        assert logits.dtype == jnp.float64
        np.testing.assert_allclose(logits, want, rtol=1e-12, atol=1e-12)
        for a, b in zip(
            jax.tree.leaves(_grads(fast.apply, params, x)),
            jax.tree.leaves(_grads(plain.apply, params, x)),
            strict=True,
        ):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_relus_own_derivative_is_kept_at_zero():
    """jax.nn.relu's rule gives 0 at 0 where max(x, 0)'s autodiff gives 1/2: exactly 0 inputs make
    every pre-activation exactly the bias, here 0."""
    fast = models.from_nnx(Dense, name="relu")
    plain = models.from_nnx(Dense, name="relu", feature_major=False)
    params = jax.vmap(plain.init)(jax.random.split(jax.random.key(0), 2))
    x = jnp.zeros((8, 64))
    for a, b in zip(
        jax.tree.leaves(_grads(fast.apply, params, x)),
        jax.tree.leaves(_grads(plain.apply, params, x)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_without_the_rules_jaxpr_the_module_runs_as_traced(monkeypatch):
    """Where JAX does not give out a custom_jvp rule's jaxpr, nothing is rewritten."""
    monkeypatch.setattr(feature_major, "_jvp_jaxpr", lambda eqn: None)
    fast = models.from_nnx(Dense, name="relu")
    plain = models.from_nnx(Dense, name="relu", feature_major=False)
    params = jax.vmap(plain.init)(jax.random.split(jax.random.key(0), 2))
    x = jax.random.normal(jax.random.key(1), (8, 64))
    program = lambda m: str(jax.make_jaxpr(lambda p: _grads(m.apply, p, x))(params))
    assert program(fast) == program(plain)


class Quantised(nnx.Module):
    """A straight-through estimator whose step is computed inside the model, and a custom_vjp
    clipping gradients at a bound computed from the data: both rules close over values of the
    trace, which only the first trace can differentiate."""

    def __init__(self, rngs: nnx.Rngs):
        self.a = nnx.Linear(64, 32, rngs=rngs)
        self.out = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        step = jnp.exp2(-3.0) * (1.0 + 0.0 * jnp.mean(x))

        @jax.custom_jvp
        def quantise(z):
            return jnp.round(z / step) * step

        quantise.defjvp(lambda primals, tangents: (quantise(primals[0]), tangents[0]))
        bound = jnp.std(x) + 1.0

        @jax.custom_vjp
        def clip_grad(z):
            return z

        clip_grad.defvjp(lambda z: (z, None), lambda _, g: (jnp.clip(g, -bound, bound),))
        return self.out(clip_grad(nnx.relu(quantise(self.a(x)))))


def test_rules_closing_over_the_trace_leave_the_program_as_traced():
    fast = models.from_nnx(Quantised, name="quantised")
    plain = models.from_nnx(Quantised, name="quantised", feature_major=False)
    params = jax.vmap(plain.init)(jax.random.split(jax.random.key(0), 2))
    x = jax.random.normal(jax.random.key(1), (8, 64))
    for a, b in zip(
        jax.tree.leaves(jax.jit(_grads, static_argnums=0)(fast.apply, params, x)),
        jax.tree.leaves(_grads(plain.apply, params, x)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_a_precision_pair_follows_its_operand():
    """``x @ W`` at (HIGHEST, DEFAULT) computes ``Wᵀ xᵀ`` at (DEFAULT, HIGHEST)."""
    high, default = jax.lax.Precision.HIGHEST, jax.lax.Precision.DEFAULT
    f = lambda w, x: jnp.matmul(x, w, precision=(high, default))
    w, x = jnp.ones((3, 4)), jnp.ones((5, 3))
    dots = [
        e
        for e in jax.make_jaxpr(feature_major.feature_major(f))(w, x).jaxpr.eqns
        if e.primitive.name == "dot_general"
    ]
    assert len(dots) == 1 and tuple(dots[0].params["precision"]) == (default, high)


def _batched_transposes(apply, params, x) -> list[tuple[int, ...]]:
    """The shapes of the transposes of per-config values in the vmapped training objective."""
    jaxpr = jax.make_jaxpr(lambda p: _grads(apply, p, x))(params)
    return [
        tuple(e.outvars[0].aval.shape)
        for e in jaxpr.jaxpr.eqns
        if e.primitive.name == "transpose"
        and e.outvars[0].aval.ndim == 3
        and 1 not in e.outvars[0].aval.shape
    ]


def test_the_user_mlp_has_the_built_in_mlps_layout():
    """The same transposes of activations as the built-in, feature-major MLP: the logits' and
    the gradients' own, none between layers."""

    class UserMLP(nnx.Module):
        def __init__(self, rngs):
            self.a, self.b = nnx.Linear(64, 128, rngs=rngs), nnx.Linear(128, 10, rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.relu(self.a(x)))

    user = models.from_nnx(UserMLP, name="user")
    plain = models.from_nnx(UserMLP, name="user", feature_major=False)
    built_in = models.make_model("mlp", 64, 10, hidden=(128,))
    stack = lambda m: jax.vmap(m.init)(jax.random.split(jax.random.key(0), 4))
    x = jnp.ones((32, 64))
    want = _batched_transposes(built_in.apply, stack(built_in), x)
    assert _batched_transposes(user.apply, stack(user), x) == want
    assert _batched_transposes(plain.apply, stack(plain), x) != want


def test_a_conv_net_is_computed_as_traced():
    """The tutorial CNN's dense head follows a reshape of conv activations (no transposed form
    to start from): the same program's values."""
    from experiments.workload import TutorialCNN

    fast = models.from_nnx(TutorialCNN, name="cnn")
    plain = models.from_nnx(TutorialCNN, name="cnn", feature_major=False)
    params = plain.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 784))
    np.testing.assert_array_equal(fast.apply(params, x), plain.apply(params, x))
    count = lambda m: str(jax.make_jaxpr(m.apply)(params, x)).count("transpose")
    assert count(fast) == count(plain)


def test_a_grid_trains_to_the_same_metrics_as_the_modules_own_program():
    dataset = data.load("digits")

    def final(model):
        trainer = engine.Trainer(
            model,
            dataset,
            engine.Layout(("ce", "mse"), (0.01, 0.03, 0.1), (0, 1)),
            engine.TrainSettings("sgd", 60, 32, 30),
        )
        _, history = trainer.train()
        return history[-1]

    fast = final(models.from_nnx(Dense, name="relu"))
    plain = final(models.from_nnx(Dense, name="relu", feature_major=False))
    for metric in ("train_loss", "test_loss", "test_accuracy", "test_nll"):
        np.testing.assert_allclose(fast[metric], plain[metric], rtol=1e-5)


def test_feature_major_must_be_a_bool():
    with pytest.raises(ValueError, match="feature_major must be True or False, got 'no'"):
        models.from_nnx(Dense, name="relu", feature_major="no")
