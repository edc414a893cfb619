"""Flax NNX classifiers behind one pure boundary: ``init(key) -> params``, ``apply(params, x) -> logits``.

The engine never touches modules: it stacks ``params`` pytrees along a config axis and maps
``apply`` over them with ``jax.vmap``. ``nnx.split`` runs once (on an abstract model) to get the
graph definition; ``nnx.merge`` rebuilds the module inside the pure function.

Models (claim C2: ``y = b' + W' σ(b + W x)``, one logit per class, no output activation):

* ``linear``: softmax regression ``z = x W + b`` (C17: its decisions are affine in ``x``);
* ``mlp``: hidden layers with σ ∈ {relu, sigmoid, tanh, gelu};
* ``cnn1d``: the small 1-D CNN of the MNIST-1D paper (3 conv layers, stride 2, then a linear layer);
* ``cnn2d``: a LeNet-5-like 2-D CNN for images (conv → pool → conv → pool → dense → dense → logits);
* ``gru``: the MNIST-1D paper's bidirectional GRU (6 units per direction) with a linear read-out.

The convolutions run as im2col + matmul with ``nnx.Conv``'s parameters, on feature-major activations
``(C, *S, N)`` (:func:`conv_fm`; :func:`conv_matmul` is the channels-last form): under the engine's
``vmap`` over configs a ``lax.conv`` becomes a grouped convolution, which XLA:CPU runs far slower
than the batched matmuls im2col gives (docs/performance.md), and with the examples as the minor axis
the patches are copied in long contiguous runs.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from softcls_jax import resnet
from softcls_jax.feature_major import feature_major as rewrite_feature_major

Array = jax.Array
Params = Any  # an nnx.State pytree whose leaves are arrays

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
}
MODELS = ("linear", "mlp", "cnn1d", "cnn2d", "gru", "resnet")


def _activation(name: str) -> Callable[[Array], Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _dense_feature_major(layer: nnx.Linear, h: Array) -> Array:
    """``layer`` applied to feature-major activations: ``(in, N) -> (out, N)``, i.e. ``(h^T W + b)^T``.

    Why feature-major: the engine maps a model over many configs that share one minibatch. With
    ``(N, features)`` activations the output layer becomes a batch of ``(N, H) x (H, C)`` products whose
    narrow ``C`` (10 classes) is the vectorised dimension; with ``(features, N)`` every product has the
    batch ``N`` there instead. Same math, a faster step (docs/performance.md).
    """
    return jnp.einsum("io,in->on", layer.kernel[...], h) + layer.bias[...][:, None]


def _rows(x: Array, features: int) -> tuple[Array, tuple[int, ...]]:
    """``x (..., features)`` as a matrix ``(N, features)``, and the leading shape to restore."""
    return x.reshape(-1, features), x.shape[:-1]


class SoftmaxRegression(nnx.Module):
    """``z = x W + b``: one affine map to the logits (C17)."""

    def __init__(self, in_features: int, num_classes: int, *, rngs: nnx.Rngs):
        self.out = nnx.Linear(in_features, num_classes, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        rows, lead = _rows(x, self.out.in_features)
        return _dense_feature_major(self.out, rows.T).T.reshape(*lead, -1)


class MLP(nnx.Module):
    """``y = b' + W' σ(b + W x)`` with any number of hidden layers (C2).

    With ``residual``, a hidden layer whose input and output widths match adds its input,
    ``h ← h + σ(W h + b)``, as the MNIST-1D paper's MLP does.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        num_classes: int,
        activation: str = "relu",
        residual: bool = False,
        *,
        rngs: nnx.Rngs,
    ):
        sizes = [in_features, *hidden]
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])
        self.out = nnx.Linear(sizes[-1], num_classes, rngs=rngs)
        self.activation = _activation(activation)
        self.residual = residual

    def __call__(self, x: Array) -> Array:
        rows, lead = _rows(x, self.hidden[0].in_features if self.hidden else self.out.in_features)
        h = rows.T  # feature-major (features, N): see _dense_feature_major
        for layer in self.hidden:
            a = self.activation(_dense_feature_major(layer, h))
            h = h + a if self.residual and a.shape == h.shape else a
        return _dense_feature_major(self.out, h).T.reshape(*lead, -1)


def conv_patches(
    x: Array, kernel_size: Sequence[int], strides: Sequence[int], padding: Sequence[tuple[int, int]]
) -> Array:
    """im2col: every kernel window of ``x`` as one row of a matrix.

    ``x (N, *S, C)`` (channels last, ``d = len(kernel_size)`` spatial axes ``S``) is zero-padded by
    ``padding`` and cut into the windows the kernel visits; the result is
    ``(N, *S_out, prod(k)·C)`` with ``S_out[i] = (S[i] + lo_i + hi_i − k_i) // s_i + 1`` and, in
    the last axis, kernel offsets major (row-major over the ``d`` offsets) and channels minor: the
    order of ``kernel.reshape(-1, C_out)`` for a Flax kernel ``(*k, C, C_out)``. So

        conv(x)[n, o, :] = patches[n, o, :] @ kernel.reshape(prod(k)·C, C_out) + bias.

    Each window offset is one strided slice; their gradient is a strided pad, so the backward pass
    is as plain as the forward.
    """
    x, out = _padded(x, kernel_size, strides, padding)
    windows = _strided_windows(x, tuple(kernel_size), tuple(strides), out)
    return jnp.concatenate(windows, axis=-1) if len(windows) > 1 else windows[0]


def _padded(
    x: Array, kernel_size: Sequence[int], strides: Sequence[int], padding: Sequence[tuple[int, int]]
) -> tuple[Array, tuple[int, ...]]:
    """``x (A, *S, B)`` zero-padded on its spatial axes ``S``, and the output size ``S_out``."""
    x = jnp.pad(x, [(0, 0), *padding, (0, 0)])
    size = x.shape[1 : 1 + len(kernel_size)]
    return x, tuple((n - k) // s + 1 for n, k, s in zip(size, kernel_size, strides, strict=True))


def _strided_windows(
    x: Array, kernel_size: tuple[int, ...], strides: tuple[int, ...], out: tuple[int, ...]
) -> list[Array]:
    """The windows of a padded ``x (A, *S, B)``, one strided slice ``(A, *S_out, B)`` per kernel
    offset, offsets in row-major order (either layout: channels last or feature-major)."""
    return [
        x[
            (
                slice(None),
                *(
                    slice(o, o + s * (m - 1) + 1, s)
                    for o, s, m in zip(offsets, strides, out, strict=True)
                ),
                slice(None),
            )
        ]
        for offsets in itertools.product(*(range(k) for k in kernel_size))
    ]


def _tuple(value: int | Sequence[int] | None, d: int) -> tuple[int, ...]:
    if value is None:
        return (1,) * d
    return (value,) * d if isinstance(value, int) else tuple(value)


def _pairs(padding: Any, d: int) -> list[tuple[int, int]]:
    """``nnx.Conv``'s padding as ``d`` explicit ``(lo, hi)`` pairs (``'VALID'``, an int, pairs)."""
    if padding == "VALID":
        return [(0, 0)] * d
    if isinstance(padding, int):
        return [(padding, padding)] * d
    if isinstance(padding, Sequence) and len(padding) == d and not isinstance(padding, str):
        return [(p, p) if isinstance(p, int) else (int(p[0]), int(p[1])) for p in padding]
    raise ValueError(
        f"conv_matmul needs 'VALID', an int or {d} (lo, hi) padding pairs, got {padding!r}"
    )


def conv_matmul(layer: nnx.Conv, x: Array) -> Array:
    """``layer(x)`` for ``x (N, *S, C_in)`` computed as im2col + one matmul (same parameters).

    Why: the engine vmaps ``apply`` over configs. A vmapped ``lax.conv`` over per-config kernels is
    a grouped convolution, a slow path of XLA:CPU; a vmapped matmul is a batched matmul, and when
    ``x`` is shared by all configs (the first layer: the minibatch) the patches are cut once and
    one wide matmul ``(N·S_out, k·C_in) × (k·C_in, K·C_out)`` serves every config. Only explicit
    padding (``'VALID'``, an int or ``(lo, hi)`` pairs), no dilation, one feature group, no mask.
    """
    _check_plain(layer)
    kernel = layer.kernel[...]
    k = kernel.shape[:-2]
    patches = conv_patches(x, k, _tuple(layer.strides, len(k)), _pairs(layer.padding, len(k)))
    y = jnp.einsum("...p,po->...o", patches, kernel.reshape(-1, kernel.shape[-1]))
    return y + layer.bias[...] if layer.bias is not None else y


def im2col_conv_general_dilated(
    lhs: Array,
    rhs: Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    **kwargs: Any,
) -> Array:
    """``lax.conv_general_dilated`` as ``nnx.Conv`` calls it, computed as im2col + one matmul.

    What :func:`from_nnx` puts into every ``nnx.Conv`` of a user's module (its
    ``conv_general_dilated`` attribute): under the engine's ``vmap`` over configs a ``lax.conv`` is
    a grouped convolution, XLA:CPU's slow path, while this is a batched matmul whose patches of the
    shared minibatch are cut once for every config (see :func:`conv_matmul`). Channels-last
    operands (``nnx.Conv``'s ``(N, *S, C)`` and ``(*k, C, C_out)``); anything else — dilation,
    feature groups, other dimension numbers — goes to ``lax.conv_general_dilated`` unchanged.
    """
    d = lhs.ndim - 2
    channels_last = jax.lax.conv_dimension_numbers(
        lhs.shape, rhs.shape, ("N" + "HWD"[:d] + "C", "HWD"[:d] + "IO", "N" + "HWD"[:d] + "C")
    )
    plain = (
        all(v is None for v in kwargs.values())  # out_sharding, preferred_element_type
        and feature_group_count == 1
        and all(v == 1 for v in (lhs_dilation or ()))
        and all(v == 1 for v in (rhs_dilation or ()))
        and (
            dimension_numbers is None
            or jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            == channels_last
        )
    )
    if not plain or d > 3:
        return jax.lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            precision=precision,
            **kwargs,
        )
    kernel_size = rhs.shape[:-2]
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:-1], kernel_size, window_strides, padding)
    patches = conv_patches(lhs, kernel_size, window_strides, [tuple(p) for p in padding])
    return jnp.einsum("...p,po->...o", patches, rhs.reshape(-1, rhs.shape[-1]), precision=precision)


def _check_plain(layer: nnx.Conv) -> None:
    if (
        layer.feature_group_count != 1
        or layer.mask is not None
        or any(d != 1 for d in _tuple(layer.kernel_dilation, layer.kernel[...].ndim - 2))
        or any(d != 1 for d in _tuple(layer.input_dilation, layer.kernel[...].ndim - 2))
    ):
        raise ValueError(
            "conv_matmul supports plain convolutions only (no feature groups, dilation or mask)"
        )


def _window_slices(
    x: Array, kernel_size: tuple[int, ...], strides: tuple[int, ...], out: tuple[int, ...]
) -> Array:
    """The windows of ``x (C, *S, N)`` as strided slices: ``(C, prod(k)·prod(S_out), N)``."""
    windows = _strided_windows(x, kernel_size, strides, out)
    return jnp.stack(windows, axis=1).reshape(x.shape[0], -1, x.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _windows(
    x: Array, kernel_size: tuple[int, ...], strides: tuple[int, ...], out: tuple[int, ...]
) -> Array:
    """:func:`_window_slices` as one gather with constant indices. XLA:CPU runs it as one copy
    loop; the 25 slices and the stack of the 5×5 windows would be 26 passes over the data."""
    size = x.shape[1:-1]
    grids = np.meshgrid(
        *(np.arange(m) * s for m, s in zip(out, strides, strict=True)), indexing="ij"
    )
    index = np.concatenate(
        [
            np.ravel_multi_index([g + o for g, o in zip(grids, offsets, strict=True)], size).ravel()
            for offsets in itertools.product(*(range(k) for k in kernel_size))
        ]
    )
    return jnp.take(x.reshape(x.shape[0], -1, x.shape[-1]), index, axis=1)


def _windows_fwd(x, kernel_size, strides, out):
    return _windows(x, kernel_size, strides, out), jax.ShapeDtypeStruct(x.shape, x.dtype)


def _windows_bwd(kernel_size, strides, out, x_aval, g):
    # The gather's own transpose is a scatter-add, slow on XLA:CPU; the slices' transpose (pads
    # and adds) is one fused loop.
    slices = functools.partial(_window_slices, kernel_size=kernel_size, strides=strides, out=out)
    return jax.linear_transpose(slices, x_aval)(g)


_windows.defvjp(_windows_fwd, _windows_bwd)


def conv_patches_fm(
    x: Array, kernel_size: Sequence[int], strides: Sequence[int], padding: Sequence[tuple[int, int]]
) -> tuple[Array, list[int]]:
    """im2col in the feature-major layout: ``x (C, *S, N)`` -> ``(C·prod(k), prod(S_out)·N)`` and
    ``S_out``; rows channel major, kernel offsets minor (row-major over the ``d`` offsets).

    The examples ``N`` are the minor axis, so every window is copied in runs of ``N`` or more
    contiguous floats and its gradient added back in such runs; with channels last
    (:func:`conv_patches`) the runs are ``C`` floats, 6 for cnn2d's second conv, and the copies
    ran at a fraction of the memory bandwidth.
    """
    x, out = _padded(x, kernel_size, strides, padding)
    # (C, prod(k)·prod(out), N). Many windows (cnn2d's 5×5): one gather, one pass instead of one
    # per window; few (cnn1d's 3 or 5): slices, which XLA fuses better (docs/performance.md).
    gather = _windows if math.prod(kernel_size) >= 9 else _window_slices
    patches = gather(x, tuple(kernel_size), tuple(strides), out)
    return patches.reshape(x.shape[0] * math.prod(kernel_size), -1), list(out)


def conv_fm(layer: nnx.Conv, x: Array) -> Array:
    """``layer`` on feature-major activations: ``x (C_in, *S, N)`` -> ``(C_out, *S_out, N)``, as
    im2col (:func:`conv_patches_fm`) and one matmul ``(C_out, k·C_in) × (k·C_in, S_out·N)``.

    Equal to ``layer(x.T).T`` (channels last) to float32 rounding, with the same parameters. Why
    this layout: the engine maps the model over configs that share one minibatch; as for dense
    layers (:func:`_dense_feature_major`) the examples then are the long, contiguous dimension of
    every product, of the patches' copies and of their gradients, and a config's output is already
    the next layer's input. Under ``vmap`` a shared ``x`` (the first layer) is cut into patches
    once and one matmul serves every config.
    """
    _check_plain(layer)
    kernel = layer.kernel[...]  # (*k, C_in, C_out)
    k = kernel.shape[:-2]
    patches, out = conv_patches_fm(
        x, k, _tuple(layer.strides, len(k)), _pairs(layer.padding, len(k))
    )
    w = jnp.moveaxis(kernel, -2, 0).reshape(-1, kernel.shape[-1])  # rows (c, offsets), as patches
    y = jnp.einsum("po,pm->om", w, patches)
    if layer.bias is not None:
        y = y + layer.bias[...][:, None]
    return y.reshape(kernel.shape[-1], *out, x.shape[-1])


class CNN1D(nnx.Module):
    """The MNIST-1D paper's CNN: conv(5, stride 2) → conv(3, s2) → conv(3, s2), ReLU, then linear.

    Input ``(N, L)`` sequences; padding 1 on each conv as in the paper's PyTorch code. The convs
    hold ``nnx.Conv`` parameters (kernel ``(k, C_in, C_out)``, bias ``(C_out,)``) but run as
    im2col + matmul on feature-major activations (:func:`conv_fm`), equal to ``nnx.Conv`` to float32
    rounding.
    """

    def __init__(self, length: int, num_classes: int, channels: int = 25, *, rngs: nnx.Rngs):
        conv = lambda cin, k: nnx.Conv(
            cin, channels, kernel_size=(k,), strides=(2,), padding=[(1, 1)], rngs=rngs
        )
        self.convs = nnx.List([conv(1, 5), conv(channels, 3), conv(channels, 3)])
        out_length = length
        for k in (5, 3, 3):
            out_length = (out_length + 2 - k) // 2 + 1
        self.out = nnx.Linear(out_length * channels, num_classes, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        rows, lead = _rows(x, x.shape[-1])
        h = rows.T[None]  # (1, L, N): feature-major, see conv_fm
        for conv in self.convs:
            h = jax.nn.relu(conv_fm(conv, h))
        h = jnp.swapaxes(h, 0, 1).reshape(-1, h.shape[-1])  # (L'·C, N): nnx's flattening order
        return _dense_feature_major(self.out, h).T.reshape(*lead, -1)


@jax.custom_vjp
def _max_pool2x2(h: Array) -> Array:
    """2×2 max pooling of ``h (C, 2H, 2W, N)``; its gradient is one fused elementwise pass."""
    c, height, width, n = h.shape
    return h.reshape(c, height // 2, 2, width // 2, 2, n).max(axis=(2, 4))


def _max_pool2x2_fwd(h: Array) -> tuple[Array, tuple[Array, Array]]:
    m = _max_pool2x2(h)
    return m, (h, m)


def _max_pool2x2_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array]:
    # As jnp.max's gradient: shared equally by the maxima of a window (ties are common: MNIST's
    # constant background gives equal conv outputs). Written by hand because XLA:CPU ran the
    # generic one (compare, count, divide over 6-d shapes) as several slow passes.
    h, m = res
    c, height, width, n = h.shape
    hit = h.reshape(c, height // 2, 2, width // 2, 2, n) == m[:, :, None, :, None]
    hit = hit.astype(h.dtype)
    share = g / (hit[:, :, 0, :, 0] + hit[:, :, 0, :, 1] + hit[:, :, 1, :, 0] + hit[:, :, 1, :, 1])
    return ((hit * share[:, :, None, :, None]).reshape(h.shape),)


_max_pool2x2.defvjp(_max_pool2x2_fwd, _max_pool2x2_bwd)


def _pool2x2(h: Array, how: str) -> Array:
    """2×2 pooling, stride 2, of feature-major ``h (C, H, W, N)``: ``(C, ⌊H/2⌋, ⌊W/2⌋, N)``; an odd
    last row or column is dropped (``VALID``)."""
    c, height, width, n = h.shape
    h = h[:, : 2 * (height // 2), : 2 * (width // 2)]
    if how == "max":
        return _max_pool2x2(h)
    return h.reshape(c, height // 2, 2, width // 2, 2, n).mean(axis=(2, 4))


POOLS = ("max", "mean")


def cnn2d_sizes(
    image_shape: Sequence[int], channels: Sequence[int], kernel_size: int = 5
) -> list[tuple[int, int]]:
    """Spatial size ``(H, W)`` after each conv stage of :class:`CNN2D` (conv, then 2×2 pool): the
    first conv is padded to keep the size (``k // 2`` each side, LeNet-5 on 28×28), the others are
    unpadded, ``H ← ⌊(H + 2p − k + 1) / 2⌋``."""
    h, w = image_shape[0], image_shape[1]
    sizes = []
    for i in range(len(channels)):
        pad = kernel_size // 2 if i == 0 else 0
        h, w = (h + 2 * pad - kernel_size + 1) // 2, (w + 2 * pad - kernel_size + 1) // 2
        sizes.append((h, w))
    return sizes


class CNN2D(nnx.Module):
    """LeNet-5-like: [conv k×k → ReLU → 2×2 pool] per entry of ``channels``, then dense layers of
    ``hidden`` widths with ReLU, then the logits.

    Defaults (LeNet-5 on 28×28×1): conv 5×5 (padding 2) 6 channels → pool → 14×14 → conv 5×5 16
    channels → 10×10 → pool → 5×5×16 = 400 → 120 → 84 → ``C``. Input: images ``(N, H, W, C)`` or
    rows ``(..., H·W·C)`` flattened row-major (HWC). The convs hold ``nnx.Conv`` parameters and run
    as im2col + matmul on feature-major activations (:func:`conv_fm`); pooling is a reshape and a
    max (before the ReLU: they commute) or a mean.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (6, 16),
        hidden: Sequence[int] = (120, 84),
        kernel_size: int = 5,
        pool: str = "max",
        *,
        rngs: nnx.Rngs,
    ):
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; expected one of {list(POOLS)}")
        self.image_shape = tuple(int(v) for v in image_shape)
        self.pool = pool
        k, cin = kernel_size, self.image_shape[2]
        convs = []
        for i, cout in enumerate(channels):
            pad = k // 2 if i == 0 else 0
            convs.append(
                nnx.Conv(cin, cout, kernel_size=(k, k), padding=[(pad, pad)] * 2, rngs=rngs)
            )
            cin = cout
        self.convs = nnx.List(convs)
        h, w = cnn2d_sizes(self.image_shape, channels, k)[-1]
        sizes = [h * w * cin, *hidden]
        self.dense = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])
        self.out = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        flat = x.shape[-1] == math.prod(self.image_shape) and x.shape[-3:] != self.image_shape
        lead = x.shape[:-1] if flat else x.shape[:-3]
        h = jnp.moveaxis(x.reshape(-1, *self.image_shape), 0, -1)  # (H, W, C, N)
        h = jnp.moveaxis(h, 2, 0)  # (C, H, W, N): feature-major, see conv_fm
        for conv in self.convs:
            h = conv_fm(conv, h)
            # max commutes with ReLU: pool first, then ReLU on a quarter of the values
            h = (
                jax.nn.relu(_pool2x2(h, "max"))
                if self.pool == "max"
                else (_pool2x2(jax.nn.relu(h), self.pool))
            )
        h = jnp.moveaxis(h, 0, 2).reshape(-1, h.shape[-1])  # (H'·W'·C, N): nnx's flattening order
        for layer in self.dense:
            h = jax.nn.relu(_dense_feature_major(layer, h))
        return _dense_feature_major(self.out, h).T.reshape(*lead, -1)


def _symmetric_uniform(bound: float) -> Callable[..., Array]:
    """An initializer drawing uniformly from ``[−bound, bound]`` (PyTorch's recurrent-layer init)."""

    def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class GRU(nnx.Module):
    """The MNIST-1D paper's GRU: a bidirectional GRU reads the sequence one value per step, and a
    linear layer maps every step's outputs of both directions, ``(N, L·2H)``, to the logits.

    Each direction uses PyTorch's gates (r, z, n; biases on the input and the hidden path), ``h_0 = 0``:

        r = σ(W_ir x_t + b_ir + W_hr h + b_hr),   z = σ(W_iz x_t + b_iz + W_hz h + b_hz),
        n = tanh(W_in x_t + b_in + r ⊙ (W_hn h + b_hn)),   h ← (1 − z) ⊙ n + z ⊙ h.

    The gate weights start uniform in ``±1/√H`` as PyTorch's ``nn.GRU`` does (the paper's init);
    the read-out is a Flax ``Linear``. With ``H = 6`` and ``L = 40``: 5,134 parameters, the paper's
    count. Input ``(..., L)`` sequences; the two directions run in one ``lax.scan`` of ``L`` steps.
    """

    def __init__(self, length: int, num_classes: int, hidden: int = 6, *, rngs: nnx.Rngs):
        init = _symmetric_uniform(1 / math.sqrt(hidden))
        gates = lambda fan_in: nnx.Linear(
            fan_in, 3 * hidden, kernel_init=init, bias_init=init, rngs=rngs
        )
        self.inputs = nnx.List([gates(1), gates(1)])  # forward, backward direction
        self.recurrent = nnx.List([gates(hidden), gates(hidden)])
        self.out = nnx.Linear(length * 2 * hidden, num_classes, rngs=rngs)
        self.hidden = hidden

    def __call__(self, x: Array) -> Array:
        rows, lead = _rows(x, x.shape[-1])
        n, length, h = rows.shape[0], rows.shape[1], self.hidden
        stack = lambda layers, name: jnp.stack([getattr(layer, name)[...] for layer in layers])
        w_in, b_in = stack(self.inputs, "kernel")[:, 0], stack(self.inputs, "bias")  # (2, 3H)
        w_rec, b_rec = stack(self.recurrent, "kernel"), stack(self.recurrent, "bias")  # (2, H, 3H)
        # Both directions at once: at scan step t, forward reads x_t and backward x_{L-1-t}.
        seq = jnp.stack([rows.T, rows.T[::-1]], axis=1)  # (L, 2, N)
        gate_inputs = seq[..., None] * w_in[:, None] + b_in[:, None]  # (L, 2, N, 3H)

        def step(state: Array, gi: Array) -> tuple[Array, Array]:
            gh = jnp.einsum("dnh,dhk->dnk", state, w_rec) + b_rec[:, None]
            r = jax.nn.sigmoid(gi[..., :h] + gh[..., :h])
            z = jax.nn.sigmoid(gi[..., h : 2 * h] + gh[..., h : 2 * h])
            cand = jnp.tanh(gi[..., 2 * h :] + r * gh[..., 2 * h :])
            state = (1 - z) * cand + z * state
            return state, state

        _, states = jax.lax.scan(step, jnp.zeros((2, n, h), rows.dtype), gate_inputs)
        outputs = jnp.concatenate([states[:, 0], states[::-1, 1]], axis=-1)  # (L, N, 2H), in time
        flat = outputs.transpose(1, 0, 2).reshape(n, length * 2 * h)  # PyTorch's (time, direction)
        return self.out(flat).reshape(*lead, -1)


@dataclasses.dataclass(frozen=True)
class Model:
    """A classifier as pure functions (the engine's only view of a model).

    A *stateless* model is ``init`` and ``apply``. A *stateful* one (a :func:`from_nnx` module with
    BatchNorm statistics, Dropout streams or other non-parameter variables) also has ``init_state``,
    ``apply_train`` and ``apply_eval``; its state is a pytree of plain arrays (PRNG keys as their
    ``jax.random.key_data``), so it stacks, checkpoints and selects like the parameters.

    Attributes:
      name: registry name.
      init: ``key -> params``; kernels are multiplied by ``init_scale``.
      apply: ``(params, x (N, D)) -> logits (N, C)`` (stateless models).
      num_params: parameter count.
      init_state: ``key -> state``, the non-parameter variables; None for a stateless model.
      apply_train: ``(params, state, x, rng) -> (logits, new_state)`` in training mode (batch
        statistics used and updated, dropout drawn; ``rng`` a key of the seed and the step).
      apply_eval: ``(params, state, x) -> logits`` in evaluation mode (running statistics, no
        dropout); a stateless model may have one too (``state`` is ``()``) when evaluation computes
        otherwise than training (a :func:`from_nnx` module's convolutions).
      module: ``(params, state) -> nnx.Module`` in evaluation mode, holding one config's trained
        variables (``state`` is ``()`` for a stateless model); None if the model has no module.
      decay_kernels_only: whether weight decay touches only the kernels (not biases or BatchNorm
        scales) unless the settings say otherwise (``TrainSettings.weight_decay_mask``).
      cpu_block: on one CPU device, the configs a chunk trains at a time, block after block
        (:class:`~softcls_jax.engine.Trainer`'s ``block_configs``, which counts the configs of
        one seed: every seed of a block's combinations trains with it), chosen by measurement for
        the model (docs/performance.md); 0: all at once; None: the engine's default.
    """

    name: str
    init: Callable[[Array], Params]
    apply: Callable[[Params, Array], Array]
    num_params: int
    init_state: Callable[[Array], Any] | None = None
    apply_train: Callable[[Params, Any, Array, Array], tuple[Array, Any]] | None = None
    apply_eval: Callable[[Params, Any, Array], Array] | None = None
    module: Callable[[Params, Any], nnx.Module] | None = None
    decay_kernels_only: bool = False
    cpu_block: int | None = None

    def __post_init__(self) -> None:
        block = self.cpu_block
        if block is not None and (
            isinstance(block, bool) or not isinstance(block, int | np.integer) or block < 0
        ):
            raise ValueError(f"cpu_block must be an integer >= 0 or None, got {self.cpu_block!r}")

    @property
    def stateful(self) -> bool:
        """Whether the model holds variables besides its parameters."""
        return self.init_state is not None


def make_model(
    name: str,
    in_features: int,
    num_classes: int,
    hidden: Sequence[int] | None = None,
    activation: str = "relu",
    init_scale: float = 1.0,
    channels: int | Sequence[int] | None = None,
    residual: bool = False,
    image_shape: Sequence[int] | None = None,
    pool: str = "max",
    depth: int = 20,
    width: int = 16,
) -> Model:
    """Builds a :class:`Model` by name (``linear``, ``mlp``, ``cnn1d``, ``cnn2d``, ``gru`` or
    ``resnet``).

    Args:
      name: model name.
      in_features: ``D`` (for ``cnn1d`` and ``gru``, the sequence length; for ``cnn2d``, ``H·W·C``).
      num_classes: ``C``.
      hidden: hidden widths of ``mlp`` (default ``(128,)``), the dense widths of ``cnn2d``
        (default ``(120, 84)``), or ``(H,)``, the units per direction of ``gru`` (default ``(6,)``).
      activation: σ of ``mlp``.
      init_scale: multiplies every initial weight matrix (biases start at 0); a large value starts
        the model confidently wrong (C13).
      channels: conv channels: an int for ``cnn1d`` (default 25), one int per conv stage for
        ``cnn2d`` (default ``(6, 16)``).
      residual: skip connections between equal-width hidden layers of ``mlp``.
      image_shape: ``(H, W, C)`` of ``cnn2d``'s input images (a data set's ``image_shape``).
      pool: ``cnn2d``'s 2×2 pooling, ``max`` or ``mean``.
      depth, width: ``resnet``'s depth (6n + 2: 8, 14, 20, …) and first-stage channels
        (:class:`softcls_jax.resnet.ResNet`; stateful, BatchNorm; weight decay on kernels only by
        default).

    Raises:
      ValueError: unknown name, activation or pool, non-positive sizes or scale, a sequence too
        short for the ``cnn1d`` conv stack, ``cnn2d`` without an ``image_shape`` that matches
        ``in_features`` or with images too small for its convs.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {list(MODELS)}")
    if in_features < 1 or num_classes < 2:
        raise ValueError(
            f"need in_features >= 1 and num_classes >= 2, got {in_features}, {num_classes}"
        )
    if name == "resnet":
        return _resnet(in_features, num_classes, image_shape, depth, width, init_scale)
    if name == "cnn1d" and _cnn1d_out_length(in_features) < 1:
        shortest = next(n for n in range(1, 64) if _cnn1d_out_length(n) >= 1)
        raise ValueError(
            f"cnn1d needs sequences of at least {shortest} features (its conv stack: kernels "
            f"{list(CNN1D_KERNELS)}, stride 2, padding 1), got {in_features}"
        )
    default_hidden = {"cnn2d": (120, 84), "gru": (6,)}.get(name, (128,))
    hidden = tuple(hidden) if hidden is not None else default_hidden
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden sizes must be positive, got {list(hidden)}")
    if name == "gru" and len(hidden) != 1:
        raise ValueError(f"gru takes one hidden size (units per direction), got {list(hidden)}")
    if not init_scale > 0:
        raise ValueError(f"init_scale must be > 0, got {init_scale}")
    _activation(activation)
    if name == "cnn2d":
        channels, image_shape = _check_cnn2d(in_features, channels, image_shape, pool)
    elif channels is None:
        channels = 25
    elif name == "cnn1d" and (not isinstance(channels, int) or channels < 1):
        raise ValueError(f"cnn1d channels must be a positive int, got {channels!r}")

    def construct(key: Array) -> nnx.Module:
        rngs = nnx.Rngs(params=key)
        if name == "linear":
            return SoftmaxRegression(in_features, num_classes, rngs=rngs)
        if name == "mlp":
            return MLP(in_features, hidden, num_classes, activation, residual, rngs=rngs)
        if name == "cnn2d":
            return CNN2D(image_shape, num_classes, channels, hidden, pool=pool, rngs=rngs)
        if name == "gru":
            return GRU(in_features, num_classes, hidden[0], rngs=rngs)
        return CNN1D(in_features, num_classes, channels, rngs=rngs)

    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: construct(jax.random.key(0))))

    def init(key: Array) -> Params:
        return scale_kernels(nnx.state(construct(key), nnx.Param), init_scale)

    def apply(params: Params, x: Array) -> Array:
        return nnx.merge(graphdef, params)(x)

    num_params = sum(leaf.size for leaf in jax.tree.leaves(abstract))
    module = lambda params, state=(): nnx.merge(graphdef, params)
    # cnn1d's activations and patches overflow the caches at 64 configs (docs/performance.md)
    cpu_block = 8 if name == "cnn1d" else None
    return Model(name, init, apply, num_params, module=module, cpu_block=cpu_block)


CNN1D_KERNELS = (5, 3, 3)  # the conv stack of CNN1D: each conv has stride 2 and padding 1


def _cnn1d_out_length(length: int) -> int:
    """The sequence length after :class:`CNN1D`'s conv stack (< 1: too short to classify)."""
    for k in CNN1D_KERNELS:
        length = (length + 2 - k) // 2 + 1
    return length


def _check_cnn2d(
    in_features: int, channels: Any, image_shape: Sequence[int] | None, pool: str
) -> tuple[tuple[int, ...], tuple[int, int, int]]:
    """``cnn2d``'s channels and image shape, checked against ``in_features``."""
    if image_shape is None:
        raise ValueError(
            f"cnn2d needs the images' shape (H, W, C) and got flat features of size {in_features} "
            "without one: use an image data set (mnist5k, idx:DIR, cifar10:DIR) or pass "
            "image_shape=(H, W, C)"
        )
    shape = tuple(int(v) for v in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (H, W, C) with positive sizes, got {image_shape!r}")
    if math.prod(shape) != in_features:
        raise ValueError(
            f"image_shape {shape} holds {math.prod(shape)} values but in_features is {in_features}"
        )
    channels = (6, 16) if channels is None else channels
    if isinstance(channels, int) or not channels or any(int(c) < 1 for c in channels):
        raise ValueError(
            f"cnn2d channels must be one positive int per conv stage, e.g. (6, 16), got {channels!r}"
        )
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; expected one of {list(POOLS)}")
    channels = tuple(int(c) for c in channels)
    sizes = cnn2d_sizes(shape, channels)
    if min(min(s) for s in sizes) < 1:
        raise ValueError(
            f"images of {shape[0]}×{shape[1]} are too small for {len(channels)} conv stages of 5×5 "
            f"and 2×2 pooling (sizes {sizes}); use fewer channels entries or larger images"
        )
    return channels, shape


def _resnet(
    in_features: int,
    num_classes: int,
    image_shape: Sequence[int] | None,
    depth: int,
    width: int,
    init_scale: float,
) -> Model:
    """``resnet``: :class:`softcls_jax.resnet.ResNet` as a stateful :func:`from_nnx` model."""
    if image_shape is None or math.prod(image_shape) != in_features or len(image_shape) != 3:
        raise ValueError(
            f"resnet needs the images' shape (H, W, C) matching in_features {in_features}, got "
            f"{image_shape!r}: use an image data set (mnist5k, idx:DIR, cifar10:DIR)"
        )
    resnet.blocks_per_stage(depth)  # ValueError for another depth
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"resnet width must be a positive int, got {width!r}")
    if not init_scale > 0:
        raise ValueError(f"init_scale must be > 0, got {init_scale}")
    shape = tuple(int(v) for v in image_shape)
    build = lambda rngs: resnet.ResNet(shape, num_classes, depth, width, rngs=rngs)
    model = from_nnx(build, name="resnet")
    init = model.init
    if init_scale != 1:
        init = lambda key: scale_kernels(model.init(key), init_scale)
    return dataclasses.replace(model, init=init, decay_kernels_only=True)


def is_kernel(path: tuple) -> bool:
    """Whether a parameter's pytree path names a ``kernel`` (weight matrices and conv filters)."""
    return any(getattr(k, "key", None) == "kernel" for k in path)


def kernel_mask(params: Params) -> Any:
    """``params``' tree of bools: True at every kernel (what kernels-only weight decay touches)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: is_kernel(path), params)


def scale_kernels(params: Params, scale: Array | float) -> Params:
    """``params`` with every leaf named ``kernel`` (weight matrices and conv filters, also of a
    user's :func:`from_nnx` model) multiplied by ``scale``; biases unchanged. ``scale`` may be traced."""
    return jax.tree_util.tree_map_with_path(
        lambda path, w: w * scale if is_kernel(path) else w, params
    )


def from_nnx(
    build: Callable[[nnx.Rngs], nnx.Module], name: str = "custom", feature_major: bool = True
) -> Model:
    """A :class:`Model` from your own Flax NNX network, for ``run_grid`` and the engine.

    Example:
      >>> class TwoLayer(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.a, self.b = nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)
      ...     def __call__(self, x):
      ...         return self.b(jax.nn.tanh(self.a(x)))
      >>> model = from_nnx(TwoLayer, name="two_layer")
      >>> model.apply(model.init(jax.random.key(0)), jnp.ones((5, 4))).shape
      (5, 3)
      >>> model.num_params
      67

    The module may hold any ``nnx.Variable`` state besides ``nnx.Param`` (``nnx.BatchNorm``'s
    statistics, ``nnx.Dropout``'s stream, your own variables): the model is then stateful. The
    engine trains it in ``module.train()`` mode and evaluates it in ``module.eval()`` mode, as a
    plain NNX loop does; each config has its own copy of the state (BatchNorm statistics are never
    pooled across configs). Accepted signatures of ``__call__``:

    * ``__call__(self, x)``: Dropout layers built with ``rngs=`` draw from their own streams, which
      start from the seed's key (shared by the configs of a seed) and advance every call;
    * ``__call__(self, x, rngs)`` (or ``rngs=None``), as in Flax's own examples: training passes
      ``nnx.Rngs(key)`` with a key derived from the seed and the step (never the same twice),
      evaluation ``nnx.Rngs(0)`` (in eval mode Dropout draws nothing).

    Args:
      build: ``rngs -> nnx.Module``; the module maps ``x (N, D)`` to logits ``(N, C)``. Weights
        named ``kernel`` are what the ``init_scale`` axis scales; weight decay and the optimizer
        touch ``nnx.Param`` only.
      name: the model's name in results.
      feature_major: a stateless module's dense layers train on transposed, feature-major
        activations, as the built-in ``mlp`` does (:func:`softcls_jax.feature_major.feature_major`:
        the same values to float rounding, faster under the engine's vmap over configs); False
        trains the module's program as traced.

    Raises:
      ValueError: if ``feature_major`` is not a bool, ``build`` fails, ``__call__`` takes other
        required arguments, or the module's state is not arrays or changes its structure in a
        training step (``nnx.sow``).
    """
    if not isinstance(feature_major, bool):
        raise ValueError(f"{name}: feature_major must be True or False, got {feature_major!r}")
    try:
        abstract = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
    except Exception as e:
        raise ValueError(f"{name}: building the module failed: {type(e).__name__}: {e}") from e
    takes_rngs = _takes_rngs(name, abstract)
    # evaluation maps over configs one at a time (lax.map), where lax.conv is fast: it keeps the
    # module as built; training vmaps over configs, where convolutions run as matmuls
    abstract.eval()
    eval_def, params, rest = nnx.split(abstract, nnx.Param, ...)
    # a network of convolutions trains fastest one combination at a time on a CPU: its im2col
    # patches and activations stay in cache (docs/performance.md)
    cpu_block = 1 if _convolutions_as_matmuls(abstract) else None
    num_params = sum(leaf.size for leaf in jax.tree.leaves(params))
    if not jax.tree.leaves(rest) and not takes_rngs:
        abstract.train()
        train_def = nnx.graphdef(abstract)
        init = functools.partial(_nnx_params, build)

        def traced(params: Params, x: Array) -> Array:
            return nnx.merge(train_def, params)(x)

        apply = rewrite_feature_major(traced) if feature_major else traced

        def apply_eval(params: Params, state: Any, x: Array) -> Array:
            return nnx.merge(eval_def, params)(x)

        def module(params: Params, state: Any = ()) -> nnx.Module:
            return nnx.merge(eval_def, params)

        return Model(
            name, init, apply, num_params, apply_eval=apply_eval, module=module, cpu_block=cpu_block
        )
    model = _stateful_nnx(build, name, abstract, eval_def, takes_rngs, num_params)
    return dataclasses.replace(model, cpu_block=cpu_block)


def _nnx_params(build: Callable[[nnx.Rngs], nnx.Module], key: Array) -> Params:
    """The parameters of the module ``build`` makes from ``key``."""
    return nnx.state(build(nnx.Rngs(key)), nnx.Param)


def _convolutions_as_matmuls(module: nnx.Module) -> int:
    """Every ``nnx.Conv`` of ``module`` that uses ``lax.conv_general_dilated`` computes with
    :func:`im2col_conv_general_dilated` instead (same parameters and values to float32 rounding):
    the graph the engine merges into keeps it, the module ``build`` returns is untouched. Returns
    how many were changed."""
    changed = 0
    for _, sub in nnx.iter_modules(module):
        if isinstance(sub, nnx.Conv) and sub.conv_general_dilated is jax.lax.conv_general_dilated:
            sub.conv_general_dilated = im2col_conv_general_dilated
            changed += 1
    return changed


MODE_ARGUMENTS = ("train", "training", "deterministic", "use_running_average", "is_training")


def _takes_rngs(name: str, module: nnx.Module) -> bool:
    """Whether ``module.__call__`` takes ``rngs``; ValueError for other required arguments."""
    try:
        signature = inspect.signature(module.__call__)
    except (TypeError, ValueError):
        return False
    params = list(signature.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [
        p.name
        for p in params[1:]
        if p.default is inspect.Parameter.empty
        and p.kind in (*positional, inspect.Parameter.KEYWORD_ONLY)
        and p.name != "rngs"
    ]
    # a mode flag would keep its default (say, eval mode) in training: the mode is the module's
    required += [p.name for p in params[1:] if p.name in MODE_ARGUMENTS]
    if not params or required:
        raise ValueError(
            f"{name}: the module's __call__ takes {[p.name for p in params]}; the engine calls "
            "__call__(x) or __call__(x, rngs=...) (train/eval mode comes from module.train() and "
            "module.eval(), as in Flax NNX)"
        )
    return any(p.name == "rngs" for p in params)


def _stateful_nnx(
    build: Callable[[nnx.Rngs], nnx.Module],
    name: str,
    abstract: nnx.Module,
    eval_def: Any,
    takes_rngs: bool,
    num_params: int,
) -> Model:
    """:func:`from_nnx` for a module holding variables besides its parameters; ``eval_def``: its
    graph in eval mode as built."""
    abstract.train()
    train_def = nnx.graphdef(abstract)
    _, _, rest = nnx.split(abstract, nnx.Param, ...)
    leaves, treedef = jax.tree.flatten(rest)
    bad = [type(v).__name__ for v in leaves if not hasattr(v, "dtype")]
    if bad:
        raise ValueError(
            f"{name}: the module holds non-array state ({sorted(set(bad))}); the engine stacks "
            "every variable over configs, so each must be an array"
        )
    # PRNG keys travel as their raw uint32 data: they stack, select and checkpoint like any array.
    # Their implementations are read from traced keys (an abstract key does not name its own).
    impls: list[Any] = []

    def probe() -> int:
        _, _, traced = nnx.split(build(nnx.Rngs(0)), nnx.Param, ...)
        is_key = lambda v: jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key)
        impls.extend(jax.random.key_impl(v) if is_key(v) else None for v in jax.tree.leaves(traced))
        return 0

    jax.eval_shape(probe)

    # the state as a plain nested dict of arrays ({"norm": {"mean": ...}}), in nnx.State's order
    pure_def = jax.tree.structure(nnx.to_pure_dict(rest))

    def to_arrays(state: Any) -> dict:
        flat = jax.tree.leaves(state)
        flat = [
            v if i is None else jax.random.key_data(v) for v, i in zip(flat, impls, strict=True)
        ]
        return jax.tree.unflatten(pure_def, flat)

    def from_arrays(arrays: dict) -> Any:
        flat = [
            a if i is None else jax.random.wrap_key_data(a, impl=i)
            for a, i in zip(jax.tree.leaves(arrays), impls, strict=True)
        ]
        return jax.tree.unflatten(treedef, flat)

    init = functools.partial(_nnx_params, build)

    def init_state(key: Array) -> dict:
        _, _, rest = nnx.split(build(nnx.Rngs(key)), nnx.Param, ...)
        return to_arrays(rest)

    def call(module: nnx.Module, x: Array, rng: Array) -> Array:
        return module(x, rngs=nnx.Rngs(rng)) if takes_rngs else module(x)

    def apply_train(params: Params, state: dict, x: Array, rng: Array) -> Any:
        module = nnx.merge(train_def, params, from_arrays(state))
        logits = call(module, x, rng)
        _, _, new_rest = nnx.split(module, nnx.Param, ...)
        if jax.tree.structure(new_rest) != treedef:
            raise ValueError(
                f"{name}: a training step changed the module's state structure (new variables, "
                "e.g. nnx.sow intermediates); the engine carries a fixed set of variables"
            )
        return logits, to_arrays(new_rest)

    def apply_eval(params: Params, state: dict, x: Array) -> Array:
        return call(nnx.merge(eval_def, params, from_arrays(state)), x, jax.random.key(0))

    def apply(params: Params, x: Array) -> Array:
        raise ValueError(
            f"{name} is stateful (it holds variables besides its parameters): call "
            "apply_eval(params, state, x) or apply_train(params, state, x, rng)"
        )

    def module(params: Params, state: dict) -> nnx.Module:
        return nnx.merge(eval_def, params, from_arrays(state))

    return Model(name, init, apply, num_params, init_state, apply_train, apply_eval, module)
