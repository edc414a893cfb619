"""The Python API checks a model and its losses on one abstract batch before compiling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from softcls_jax import data, models, run_grid


@pytest.fixture(scope="module")
def three_classes():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)).astype(np.float32), np.arange(60) % 3
    return data.from_arrays(x[:40], y[:40], x[40:], y[40:])


def linear(inputs, outputs):
    return models.from_nnx(lambda rngs: nnx.Linear(inputs, outputs, rngs=rngs), name="user_net")


class TupleNet(nnx.Module):
    def __init__(self, rngs):
        self.out = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(x), x


def scalar_loss(logits, labels):
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1))


def logits_loss(logits, labels):
    return logits


@pytest.mark.parametrize(
    ("model", "losses", "message"),
    [
        (
            linear(4, 5),
            ("ce",),
            r"model user_net returns shape \(2, 5\) for a batch of shape \(2, 4\); expected "
            r"logits \(2, 3\): one per class of arrays's 3 classes",
        ),
        (
            models.from_nnx(TupleNet, name="tuple_net"),
            ("ce",),
            r"model tuple_net returns a tuple for a batch of shape \(2, 4\); expected logits",
        ),
        (
            linear(5, 3),
            ("ce",),
            r"model user_net fails on a batch of arrays's shape \(2, 4\) \(4 features\): TypeError",
        ),
        (
            linear(4, 3),
            ("ce", scalar_loss),
            r"loss scalar_loss returns shape \(\) for logits \(2, 3\) and labels \(2,\); "
            r"expected the per-example loss \(2,\)",
        ),
        (
            linear(4, 3),
            (logits_loss,),
            r"loss logits_loss returns shape \(2, 3\) for logits \(2, 3\)",
        ),
    ],
    ids=["five_outputs", "tuple", "five_features", "scalar_loss", "logits_loss"],
)
def test_bad_models_and_losses_are_named_with_their_shapes(three_classes, model, losses, message):
    with pytest.raises(ValueError, match=message):
        run_grid(model, three_classes, losses=losses, steps=2, batch_size=8, eval_every=2)


def test_a_smoothed_loss_is_checked_on_probability_targets(three_classes):
    def integer_only(logits, labels):
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]

    with pytest.raises(
        ValueError, match=r"loss integer_only fails on logits \(2, 3\) and labels \(2, 3\)"
    ):
        run_grid(
            linear(4, 3),
            three_classes,
            losses=(integer_only,),
            axes={"label_smoothing": (0.1,)},
            steps=2,
            batch_size=8,
            eval_every=2,
        )
