"""Data augmentation of image minibatches on the device, inside the compiled step.

Random crop after padding with black and horizontal flip, the CIFAR recipe (He et al. 2016):

* ``crop``: pad each image by ``p`` pixels on every side with black (the data set's
  ``image_fill``, the standardised value of a zero-intensity pixel, as torchvision pads the raw
  image before normalising; 0, the standardised mean, where a data set has none), then cut an
  ``H × W`` window at offsets ``(dy, dx)`` drawn uniformly from ``{0, …, 2p}²``;
* ``flip``: mirror the image left ↔ right with probability 1/2.

Both are drawn per example from a key of the seed and the step, so the configs of a seed see the
same augmented minibatch (a paired comparison, like the minibatch itself), a resumed run draws the
same ones, and evaluation never sees them. :func:`draw` exposes the offsets and flip bits, so a
test can replay them with numpy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
AUGMENTATIONS = ("none", "flip", "crop", "crop_flip")
PAD = 4


def check(kind: str) -> None:
    """``ValueError`` unless ``kind`` is one of :data:`AUGMENTATIONS`."""
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; expected one of {list(AUGMENTATIONS)}")


def draw(key: Array, batch: int, kind: str, pad: int = PAD) -> tuple[Array, Array]:
    """The random choices of one minibatch: crop offsets ``(B, 2)`` int32 in ``[0, 2·pad]`` (all
    ``pad``, the centre, without ``crop``) and flip bits ``(B,)`` bool (all False without ``flip``).

    Example:
      >>> offsets, flips = draw(jax.random.key(0), 3, "flip")
      >>> offsets.tolist(), flips.dtype
      ([[4, 4], [4, 4], [4, 4]], dtype('bool'))
    """
    check(kind)
    crop_key, flip_key = jax.random.split(key)
    if "crop" in kind:
        offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1, jnp.int32)
    else:
        offsets = jnp.full((batch, 2), pad, jnp.int32)
    flips = (
        jax.random.bernoulli(flip_key, 0.5, (batch,))
        if "flip" in kind
        else jnp.zeros((batch,), bool)
    )
    return offsets, flips


def apply(
    images: Array,
    offsets: Array,
    flips: Array,
    pad: int = PAD,
    fill: tuple[float, ...] | None = None,
) -> Array:
    """Crops and flips ``images (B, H, W, C)``: each image padded by ``pad`` pixels of ``fill``
    (per channel, ``C`` values; None: 0), its ``H × W`` window at ``offsets[b]`` cut out, then
    mirrored left ↔ right where ``flips[b]``.

    Example:
      >>> x = jnp.arange(4.0).reshape(1, 2, 2, 1)
      >>> apply(x, jnp.array([[1, 2]]), jnp.array([True]), pad=1)[0, ..., 0].tolist()
      [[0.0, 1.0], [0.0, 3.0]]
      >>> apply(x, jnp.array([[1, 2]]), jnp.array([True]), pad=1, fill=(-1.0,))[0, ..., 0].tolist()
      [[-1.0, 1.0], [-1.0, 3.0]]
    """
    _, h, w, c = images.shape
    cropped = images
    if pad:  # pad 0: nothing to cut (flip only)
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        if fill is not None:  # a mask, not a shift: the image's own pixels stay bit for bit
            if len(fill) != c:
                raise ValueError(f"fill has {len(fill)} values for images of {c} channels")
            inside = np.zeros((h + 2 * pad, w + 2 * pad, 1), bool)
            inside[pad : pad + h, pad : pad + w] = True
            padded = jnp.where(inside, padded, jnp.asarray(fill, images.dtype))
        cut = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c))
        cropped = jax.vmap(cut)(padded, offsets)
    return jnp.where(flips[:, None, None, None], cropped[:, :, ::-1], cropped)


def augment_rows(
    key: Array,
    x: Array,
    image_shape: tuple[int, int, int],
    kind: str,
    pad: int = PAD,
    fill: tuple[float, ...] | None = None,
) -> Array:
    """:func:`apply` with the choices of :func:`draw`, on rows ``x (B, H·W·C)`` (images flattened
    in ``(H, W, C)`` order, as the image data sets store them); ``none`` returns ``x``."""
    if kind == "none":
        return x
    offsets, flips = draw(key, x.shape[0], kind, pad)
    images = x.reshape(x.shape[0], *image_shape)
    return apply(images, offsets, flips, pad if "crop" in kind else 0, fill).reshape(x.shape)
