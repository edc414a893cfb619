"""A user's nnx.Conv runs as im2col + matmul inside the engine: same values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.workload import TutorialCNN  # the CNN of Flax's NNX MNIST tutorial
from softcls_jax import models


def _compare(build, x, rtol=1e-5):
    """``from_nnx(build)``'s logits and gradients against the module ``build`` returns, whose
    convolutions are ``lax.conv``."""
    model = models.from_nnx(build, name="user")
    module = build(nnx.Rngs(0))
    params = nnx.state(module, nnx.Param)
    graphdef = nnx.graphdef(module)
    np.testing.assert_allclose(model.apply(params, x), module(x), rtol=rtol, atol=1e-5)
    loss = lambda apply, p: jnp.sum(apply(p, x) ** 2)
    got = jax.grad(lambda p: loss(model.apply, p))(params)
    want = jax.grad(lambda p: loss(lambda q, x: nnx.merge(graphdef, q)(x), p))(params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_the_flax_tutorial_cnn_equals_its_lax_conv_self():
    x = jax.random.normal(jax.random.key(0), (4, 784))
    _compare(TutorialCNN, x)


@pytest.mark.parametrize(
    ("kernel", "strides", "padding", "shape"),
    [
        ((3, 3), (1, 1), "SAME", (3, 9, 8, 2)),
        ((2, 2), (1, 1), "SAME", (3, 7, 7, 2)),  # even kernel: SAME pads unevenly
        ((3, 3), (2, 2), "SAME", (3, 9, 8, 2)),
        ((5, 5), (2, 1), "VALID", (2, 11, 9, 3)),
        ((3, 3), (1, 2), ((2, 0), (1, 1)), (2, 8, 8, 1)),
        ((3,), (2,), "SAME", (3, 17, 4)),  # 1-D
        ((3,), (1,), "CIRCULAR", (3, 10, 2)),  # nnx pads itself, then VALID
    ],
)
def test_convolutions_of_any_stride_and_padding(kernel, strides, padding, shape):
    def build(rngs):
        return nnx.Conv(shape[-1], 5, kernel, strides=strides, padding=padding, rngs=rngs)

    _compare(build, jax.random.normal(jax.random.key(1), shape))


class DilatedGrouped(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.dilated = nnx.Conv(4, 4, (3, 3), kernel_dilation=2, rngs=rngs)
        self.grouped = nnx.Conv(4, 4, (3, 3), feature_group_count=2, rngs=rngs)

    def __call__(self, x):
        return self.grouped(self.dilated(x))


def test_dilated_and_grouped_convolutions_keep_lax_conv():
    _compare(DilatedGrouped, jax.random.normal(jax.random.key(2), (2, 9, 9, 4)))


def test_training_runs_matmuls_evaluation_and_the_module_given_back_lax_conv():
    model = models.from_nnx(TutorialCNN, name="user")
    params = model.init(jax.random.key(0))
    x = jnp.ones((2, 784))
    assert "conv_general_dilated" not in str(jax.make_jaxpr(model.apply)(params, x))
    assert "conv_general_dilated" in str(jax.make_jaxpr(model.apply_eval)(params, (), x))
    np.testing.assert_allclose(model.apply(params, x), model.apply_eval(params, (), x), rtol=1e-5)
    trained = model.module(params)
    assert trained.conv1.conv_general_dilated is jax.lax.conv_general_dilated
    assert TutorialCNN(nnx.Rngs(0)).conv1.conv_general_dilated is jax.lax.conv_general_dilated
