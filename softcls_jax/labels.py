"""Class labels: validated one-hot encoding, target resolution, smoothing and label noise.

Two label forms are used throughout softcls-jax (claim C1):

* **integer labels** ``(...,)`` with an integer dtype, values in ``[0, C)``. Losses take a path that
  never builds the ``(..., C)`` one-hot matrix, which matters when ``C`` is large.
* **probability vectors** ``(..., C)`` with a floating dtype (one-hot, smoothed or soft labels).

Validation happens on the host whenever the labels are concrete arrays. Inside ``jax.jit`` label
*values* are not known at trace time, so only shapes and dtypes are checked there; use
:func:`check_labels_in_graph` with ``jax.experimental.checkify`` for a compiled check.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

Array = jax.Array
LabelKind = Literal["int", "probs"]

_MAX_LISTED = 8  # how many bad values an error message names


def is_concrete(x: object) -> bool:
    """True when ``x`` holds values on the host side, i.e. it is not a tracer inside jit/vmap/grad."""
    return not isinstance(x, jax.core.Tracer)


def _listed(values: np.ndarray) -> str:
    values = np.unique(values.ravel())
    shown = ", ".join(repr(v.item()) for v in values[:_MAX_LISTED])
    return f"[{shown}{', ...' if values.size > _MAX_LISTED else ''}]"


def check_labels(labels: Array | np.ndarray, num_classes: int) -> None:
    """Raises ``ValueError`` unless ``labels`` are integer class ids in ``[0, num_classes)``.

    Dtype is always checked; values are checked when ``labels`` is concrete (outside jit).

    Args:
      labels: ``(...,)`` integer array.
      num_classes: ``C >= 1``.

    Raises:
      ValueError: naming the offending values and the allowed range.

    Example:
      >>> check_labels(jnp.array([0, 3]), 3)  # jax.nn.one_hot would give a silent zero row
      Traceback (most recent call last):
      ...
      ValueError: labels out of range: [3]; expected integers in [0, 3)
    """
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool):
        raise ValueError(f"num_classes must be a Python int, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    dtype = np.dtype(labels.dtype)
    if dtype == np.bool_ or not np.issubdtype(dtype, np.integer):
        message = f"integer class labels must have an integer dtype, got {dtype}"
        if is_concrete(labels) and np.issubdtype(dtype, np.floating):
            values = np.asarray(labels)
            bad = values[~np.isfinite(values) | (values != np.round(values))]
            if bad.size:
                message += f"; non-integer values {_listed(bad)}"
            else:
                message += " (the values are whole numbers: cast with .astype(jnp.int32))"
        raise ValueError(message)
    if is_concrete(labels):
        values = np.asarray(labels)
        bad = values[(values < 0) | (values >= num_classes)]
        if bad.size:
            raise ValueError(
                f"labels out of range: {_listed(bad)}; expected integers in [0, {num_classes})"
            )


def check_probabilities(targets: Array | np.ndarray, name: str = "labels") -> None:
    """Raises ``ValueError`` unless ``targets`` is a floating array of finite values in [0, 1].

    Values are checked only when concrete. Rows need not sum to one exactly (soft targets), but each
    entry must be a probability.
    """
    dtype = np.dtype(targets.dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"{name} given as probability vectors must be floating, got {dtype}")
    if is_concrete(targets):
        values = np.asarray(targets)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{name} contain NaN or inf; expected probabilities in [0, 1]")
        bad = values[(values < 0) | (values > 1)]
        if bad.size:
            raise ValueError(f"{name} outside [0, 1]: {_listed(bad)}; expected probabilities")


def check_logits(logits: Array | np.ndarray) -> None:
    """Raises ``ValueError`` unless ``logits`` is a floating array with a class axis of size >= 1."""
    if not np.issubdtype(np.dtype(logits.dtype), np.floating):
        raise ValueError(f"logits must be floating, got {np.dtype(logits.dtype)}")
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have shape (..., C) with C >= 1, got {logits.shape}")


def label_kind(logits: Array, labels: Array) -> LabelKind:
    """Validates ``labels`` against ``logits`` and says which form they take.

    Args:
      logits: ``(..., C)`` floating.
      labels: integer ``(...,)`` or probability vectors ``(..., C)``.

    Returns:
      ``"int"`` or ``"probs"``.

    Raises:
      ValueError: on a shape that fits neither form, a wrong dtype, or bad values (when concrete).

    Example:
      >>> logits = jnp.zeros((2, 3))
      >>> label_kind(logits, jnp.array([0, 2])), label_kind(logits, jnp.full((2, 3), 1 / 3))
      ('int', 'probs')
    """
    check_logits(logits)
    batch, num_classes = logits.shape[:-1], logits.shape[-1]
    if labels.shape == batch:
        check_labels(labels, num_classes)
        return "int"
    if labels.shape == logits.shape:
        check_probabilities(labels)
        return "probs"
    raise ValueError(
        f"labels of shape {labels.shape} do not match logits of shape {logits.shape}: expected "
        f"integer labels of shape {batch} or probability vectors of shape {logits.shape}"
    )


def one_hot(labels: Array, num_classes: int, dtype: jnp.dtype = jnp.float32) -> Array:
    """Validated one-hot encoding: ``y[..., c] = 1 if labels[...] == c else 0`` (claim C1).

    Unlike ``jax.nn.one_hot``, which silently returns an all-zero row for an out-of-range label,
    this raises. One-hot removes the order and distance that the numbering 0, 1, 2 … would impose.

    Args:
      labels: ``(...,)`` integer class ids in ``[0, num_classes)``.
      num_classes: ``C``.
      dtype: floating dtype of the result.

    Returns:
      ``(..., C)`` array.

    Example:
      >>> one_hot(jnp.array([2, 0]), 3)
      Array([[0., 0., 1.],
             [1., 0., 0.]], dtype=float32)
    """
    check_labels(labels, num_classes)
    return jax.nn.one_hot(labels, num_classes, dtype=dtype)


def as_probabilities(logits: Array, labels: Array) -> Array:
    """Labels in probability-vector form ``(..., C)``, one-hot encoding integer labels if needed."""
    if label_kind(logits, labels) == "int":
        return jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return labels.astype(logits.dtype)


def smooth_labels(targets: Array, alpha: float) -> Array:
    """Label smoothing: ``y' = (1 - alpha) y + alpha / C``.

    Args:
      targets: ``(..., C)`` probability vectors (e.g. from :func:`one_hot`).
      alpha: smoothing in ``[0, 1]``.

    Returns:
      ``(..., C)`` smoothed probability vectors (each row still sums to 1).

    Example:
      >>> [round(v, 4) for v in smooth_labels(one_hot(jnp.array([1]), 3), 0.3)[0].tolist()]
      [0.1, 0.8, 0.1]
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"label smoothing alpha must be in [0, 1], got {alpha}")
    check_probabilities(targets, "targets")
    num_classes = targets.shape[-1]
    return (1.0 - alpha) * targets + alpha / num_classes


def corrupt_labels(key: Array, labels: Array, num_classes: int, fraction: float) -> Array:
    """Label noise (claim C15): exactly ``round(fraction · N)`` labels are replaced by a different class.

    The flipped examples are chosen uniformly without replacement; each gets a class drawn uniformly
    from the ``C - 1`` wrong ones, so a flip always changes the label.

    Args:
      key: ``jax.random`` key.
      labels: ``(N,)`` integer labels.
      num_classes: ``C >= 2``.
      fraction: share of labels to flip, in ``[0, 1]``.

    Returns:
      ``(N,)`` labels, same dtype.

    Example:
      >>> labels = jnp.arange(10) % 3
      >>> noisy = corrupt_labels(jax.random.key(0), labels, 3, 0.3)
      >>> int((noisy != labels).sum())  # exactly round(0.3 · 10) flips
      3
    """
    check_labels(labels, num_classes)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label-noise fraction must be in [0, 1], got {fraction}")
    if num_classes < 2 and fraction > 0:
        raise ValueError("label noise needs at least 2 classes")
    n = labels.shape[0]
    num_flipped = round(fraction * n)
    pick_key, class_key = jax.random.split(key)
    flipped = jax.random.permutation(pick_key, n)[:num_flipped]
    offsets = jax.random.randint(class_key, (num_flipped,), 1, max(num_classes, 2))
    new_values = (labels[flipped] + offsets) % num_classes
    return labels.at[flipped].set(new_values.astype(labels.dtype))


def check_labels_in_graph(labels: Array, num_classes: int) -> None:
    """A compiled-code label check, for use under ``jax.experimental.checkify``.

    Example:
      >>> def f(labels):
      ...     check_labels_in_graph(labels, 3)
      ...     return labels.sum()
      >>> err, _ = checkify.checkify(jax.jit(f))(jnp.array([0, 5]))
      >>> err.get()  # doctest: +ELLIPSIS
      'labels out of range [0, 3)...'
    """
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"integer class labels must have an integer dtype, got {labels.dtype}")
    in_range = jnp.all((labels >= 0) & (labels < num_classes))
    checkify.check(
        in_range,
        f"labels out of range [0, {num_classes}): min {{lo}}, max {{hi}}",
        lo=jnp.min(labels),
        hi=jnp.max(labels),
    )
