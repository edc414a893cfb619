"""A residual network with BatchNorm for small images (He et al. 2016, the CIFAR family).

``depth = 6n + 2`` (8, 14, 20, …): a 3×3 conv of ``width`` channels, then three stages of ``n``
basic blocks with ``width``, ``2·width`` and ``4·width`` channels (the first block of stages 2 and 3
halves the spatial size with stride 2), global average pooling and a linear read-out. A basic block
is ``relu(bn(conv3×3(relu(bn(conv3×3(x))))) + shortcut(x))``; where the shape changes the shortcut
is a strided 1×1 conv with BatchNorm (option B), else the identity. Convolutions have no bias
(BatchNorm follows each) and pad ``k // 2`` on every side, as the CIFAR ResNets of PyTorch do (for a
strided conv on even sizes Flax's ``SAME`` would pad only the high side). Any image shape and
channel count: the input rows ``(N, H·W·C)`` are reshaped to ``(N, H, W, C)``.

:func:`softcls_jax.models.make_model` wraps it as the ``resnet`` model (stateful: the BatchNorm
statistics are per config); this module holds only the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

DEPTHS = (8, 14, 20, 32, 44, 56)  # 6n + 2


def blocks_per_stage(depth: int) -> int:
    """``n`` of ``depth = 6n + 2``; ValueError for another depth."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet depth must be 6n + 2 (8, 14, 20, 32, …), got {depth!r}")
    return (depth - 2) // 6


class BasicBlock(nnx.Module):
    """Two 3×3 convs with BatchNorm and a shortcut; ``stride`` 2 halves the spatial size."""

    def __init__(self, in_channels: int, channels: int, stride: int, *, rngs: nnx.Rngs):
        def conv(i: int, o: int, k: int, s: int) -> nnx.Conv:
            return nnx.Conv(i, o, (k, k), strides=(s, s), padding=k // 2, use_bias=False, rngs=rngs)

        self.conv1 = conv(in_channels, channels, 3, stride)
        self.bn1 = nnx.BatchNorm(channels, rngs=rngs)
        self.conv2 = conv(channels, channels, 3, 1)
        self.bn2 = nnx.BatchNorm(channels, rngs=rngs)
        self.project = stride != 1 or in_channels != channels
        if self.project:
            self.shortcut = conv(in_channels, channels, 1, stride)
            self.bn_shortcut = nnx.BatchNorm(channels, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        skip = self.bn_shortcut(self.shortcut(x)) if self.project else x
        return jax.nn.relu(h + skip)


class ResNet(nnx.Module):
    """The CIFAR-style ResNet of ``depth`` layers and first-stage ``width`` for images of
    ``image_shape = (H, W, C)``; ``x (N, H·W·C) -> logits (N, num_classes)``.

    Example:
      >>> net = ResNet((8, 8, 3), 10, depth=8, width=4, rngs=nnx.Rngs(0))
      >>> net(jnp.ones((2, 8 * 8 * 3))).shape
      (2, 10)
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        num_classes: int,
        depth: int = 20,
        width: int = 16,
        *,
        rngs: nnx.Rngs,
    ):
        n = blocks_per_stage(depth)
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"resnet width must be a positive int, got {width!r}")
        self.image_shape = tuple(int(v) for v in image_shape)
        channels = self.image_shape[-1]
        self.stem = nnx.Conv(channels, width, (3, 3), padding=1, use_bias=False, rngs=rngs)
        self.stem_bn = nnx.BatchNorm(width, rngs=rngs)
        blocks, in_channels = [], width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_channels, out_channels, stride, rngs=rngs))
                in_channels = out_channels
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(in_channels, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], *self.image_shape)
        h = jax.nn.relu(self.stem_bn(self.stem(h)))
        for block in self.blocks:
            h = block(h)
        return self.head(jnp.mean(h, axis=(1, 2)))
