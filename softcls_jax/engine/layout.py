"""The grid's layout: which configs exist and where each one lives. Pure values, no state arrays.

A grid is the product ``losses × axis values × seeds``. The axes are per-config scalars that leave
array shapes unchanged (:data:`AXES`): the learning rate always, and any of weight decay, momentum,
label smoothing, the initial weight scale, the square loss's ``k`` and ``M``, warm-up steps and label
noise. Their values are data in the compiled program, so one compilation serves the whole product.

Arrangement. Every state leaf has leading axes ``(S, K)``: ``S`` seeds, and ``K = L · R'`` configs
per seed, loss major: loss group ``g`` owns ``k ∈ [g·R', (g+1)·R')``, and inside a group the ``R``
combinations of axis values run in row-major order of :attr:`Layout.axis_names` (learning rate
first). ``R`` is padded to ``R'``, a multiple of ``num_devices × num_blocks``, by repeating the last
combination, so that the configs split evenly over the devices of a mesh or into cache blocks;
padded configs train like the others and are dropped from every result (:attr:`Layout.real_k`).

A memory block (:meth:`Layout.blocks`) is a layout of a subset of the seeds and a contiguous range
of the combinations (``combo_range``), padded to a common ``pad_combos``, so that every block of a
grid has the same shapes and trains through the same compiled program.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from softcls_jax.optim import hyperparameter_rule

F32_TINY, F32_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)

LossLike = str | Callable[..., Any]  # a registry name, or loss(logits, labels) -> (N,)


@dataclasses.dataclass(frozen=True)
class Axis:
    """A per-config hyperparameter that can be a grid axis.

    Attributes:
      name: its name on the command line (``--axis NAME=…``, ``--NAME=V``) and in results.
      default: its value when it is not an axis (None: it depends on the optimizer).
      rule: the allowed values, in words (``"a finite number > 0"``).
      ok: the rule as a predicate on a finite float.
      help: what it does.
    """

    name: str
    default: float | None
    rule: str
    ok: Callable[[float], bool]
    help: str

    def problem(self, value: Any) -> str | None:
        """None if ``value`` is allowed, else ``"must be <rule>, got <value>"``."""
        number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, bool
        )
        if not number or not math.isfinite(float(value)) or not self.ok(float(value)):
            return f"must be {self.rule}, got {value!r}"
        # float32 holds every value the program sees: none may become 0 or inf
        v = abs(float(value))
        if v != 0 and not F32_TINY <= v <= F32_MAX:
            return f"{value!r} is outside float32's range"
        return None

    def check(self, value: Any) -> float:
        """``value`` as a float, or ``ValueError`` naming the axis and its rule."""
        problem = self.problem(value)
        if problem is not None:
            raise ValueError(f"{self.name} {problem}")
        return float(value)


AXES: dict[str, Axis] = {
    a.name: a
    for a in (
        Axis("learning_rate", None, "a finite number > 0", lambda v: v > 0, "base learning rate"),
        Axis(
            "weight_decay",
            0.0,
            "a finite number >= 0",
            lambda v: v >= 0,
            "weight decay λ: the optimizer's own where it has one (adamw, lion, lamb, …, which "
            "keep optax's default when it is not an axis), else decoupled, u ← u − lr·λ·w (as "
            "optax.add_decayed_weights; AdamW with adam)",
        ),
        Axis(
            "momentum",
            None,
            "a number in [0, 1)",
            lambda v: 0 <= v < 1,
            "SGD momentum (optax.trace decay), or b1 for optimizers without a momentum (adam, "
            "adamw, lion, …); default 0 for sgd, 0.9 for momentum, nesterov and adam",
        ),
        Axis(
            "label_smoothing",
            0.0,
            "a fraction in [0, 1]",
            lambda v: 0 <= v <= 1,
            "α: training targets (1 − α)·one_hot(y) + α/C",
        ),
        Axis(
            "init_scale",
            1.0,
            "a finite number > 0",
            lambda v: v > 0,
            "multiplies every initial kernel (biases stay 0); large values start confidently wrong",
        ),
        Axis(
            "k",
            1.0,
            "a finite number > 0",
            lambda v: v > 0,
            "square loss: weight of the true class (Hui & Belkin)",
        ),
        Axis(
            "M",
            1.0,
            "a finite number > 0",
            lambda v: v > 0,
            "square loss: target of the true class's logit (Hui & Belkin)",
        ),
        Axis(
            "warmup_steps",
            0.0,
            "an integer >= 0",
            lambda v: v >= 0 and v == int(v),
            "linear warm-up of the learning rate from 0 over this many steps",
        ),
        Axis(
            "label_noise",
            0.0,
            "a fraction in [0, 1)",
            lambda v: 0 <= v < 1,
            "fraction of training labels flipped to another class (seeded by the data seed)",
        ),
    )
}
LOSS_AXES = ("k", "M")  # axes only the square loss reads
# axes that change the model's shapes: each value is its own compiled program (softcls_jax.plan)
ARCH_AXES: dict[str, Axis] = {
    a.name: a
    for a in (
        Axis("width", None, "an integer >= 1", lambda v: v >= 1 and v == int(v), "model width"),
        Axis("depth", None, "an integer >= 1", lambda v: v >= 1 and v == int(v), "model depth"),
    )
}


def axis_rule(name: str) -> Axis:
    """The :class:`Axis` of ``name``: one of :data:`AXES`, else an optimizer hyperparameter (``b1``,
    ``b2``, ``eps``, …: :func:`softcls_jax.optim.hyperparameter_rule`). Whether the optimizer has
    such a hyperparameter is checked with the settings (:func:`check_compatible`)."""
    if name in AXES:
        return AXES[name]
    if name in ARCH_AXES:
        return ARCH_AXES[name]
    rule, ok = hyperparameter_rule(name)
    return Axis(name, None, rule, ok, f"hyperparameter {name} of the optimizer")


def loss_name(loss: LossLike) -> str:
    """A loss's name in results: the registry name, or the function's ``__name__``."""
    return loss if isinstance(loss, str) else getattr(loss, "__name__", repr(loss))


@dataclasses.dataclass(frozen=True)
class Config:
    """One training run of a grid: its loss, seed and the value of every axis."""

    loss: str
    seed: int
    hparams: tuple[tuple[str, float], ...]

    @property
    def learning_rate(self) -> float:
        return self.value("learning_rate")

    def value(self, name: str) -> float:
        return dict(self.hparams)[name]

    def as_dict(self) -> dict[str, Any]:
        """``{"loss", <every axis>, "seed"}``."""
        return {"loss": self.loss, **dict(self.hparams), "seed": self.seed}


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@functools.lru_cache(maxsize=64)
def _check_distinct(what: str, values: tuple) -> None:
    """``ValueError`` unless ``values`` is non-empty without repeats. Cached on the tuple: the
    layouts derived from a grid (its memory blocks, its arrangement) share its tuples, and a grid
    may have 10⁵ learning rates."""
    if not values:
        raise ValueError(f"a grid needs at least one of {what}")
    if len(set(values)) != len(values):
        raise ValueError(f"{what} must not repeat, got {list(values)}")


def _check_axis_values(name: str, values: tuple) -> None:
    """``ValueError`` naming the axis unless every value follows its rule. Cached like
    :func:`_check_distinct`, with the values' types in the key: ``(True,) == (1,)``, and a bool
    is not a learning rate."""
    _check_typed_values(name, values, frozenset(map(type, values)))


@functools.lru_cache(maxsize=64)
def _check_typed_values(name: str, values: tuple, types: frozenset) -> None:
    rule = AXES["learning_rate"] if name == "learning_rate" else axis_rule(name)
    for v in values:
        if name == "learning_rate" and (
            not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool)
        ):
            raise ValueError(f"learning rate must be a number, got {v!r}")
        problem = rule.problem(v)
        if problem is not None:
            what = "learning rate" if name == "learning_rate" else name
            raise ValueError(f"{what} {problem}")


@dataclasses.dataclass(frozen=True)
class Layout:
    """The configs of a grid and their arrangement on ``(S, K)`` axes.

    Example:
      >>> layout = Layout(("ce", "mse"), (0.1, 1.0), (0, 1), axes={"weight_decay": (0.0, 1e-4)})
      >>> layout.shape, layout.axis_names
      ((2, 8), ('learning_rate', 'weight_decay'))
      >>> layout.configs()[1].as_dict()
      {'loss': 'ce', 'learning_rate': 0.1, 'weight_decay': 0.0001, 'seed': 0}

    Args:
      losses: registry names or functions ``loss(logits, labels) -> per-example loss``.
      learning_rates: the learning-rate axis.
      seeds: each seed has its own initialisation and minibatch order.
      axes: other axes, ``{name: values}`` with names from :data:`AXES`.
      num_devices, num_blocks: the configs of each loss are padded to a multiple of their product
        (see :meth:`arranged`).
      combo_range: ``(start, stop)``: only these combinations of the row-major product (a memory
        block of the full grid, :meth:`blocks`); None: all of them.
      pad_combos: pad each loss group to at least this many combinations (a block's common size).
    """

    losses: tuple[LossLike, ...]
    learning_rates: tuple[float, ...]
    seeds: tuple[int, ...]
    axes: Any = ()  # Mapping[str, Sequence[float]] in, tuple of (name, values) pairs stored
    num_devices: int = 1
    num_blocks: int = 1
    combo_range: tuple[int, int] | None = None
    pad_combos: int = 0

    def __post_init__(self) -> None:
        axes = self.axes.items() if isinstance(self.axes, Mapping) else self.axes
        axes = tuple((name, tuple(values)) for name, values in axes)
        set_ = lambda name, value: object.__setattr__(self, name, value)
        set_("axes", axes)
        set_("losses", tuple(self.losses))
        set_("learning_rates", tuple(self.learning_rates))
        set_("seeds", tuple(self.seeds))
        names = [loss_name(loss) for loss in self.losses]
        from softcls_jax.losses import get_loss

        for loss in self.losses:
            if isinstance(loss, str):
                get_loss(loss)
            elif not callable(loss):
                raise ValueError(f"a loss is a registry name or a function, got {loss!r}")
        checked = [
            ("losses", tuple(names)),
            ("learning rates", self.learning_rates),
            ("seeds", self.seeds),
        ] + [(f"{n} values", v) for n, v in axes]
        for what, values in checked:
            try:
                hash(values)  # the checks below are cached on the tuple
            except TypeError:
                raise ValueError(f"{what} must be numbers, got {list(values)}") from None
            _check_distinct(what, values)
        _check_axis_values("learning_rate", self.learning_rates)
        for seed in self.seeds:
            if not _is_int(seed) or not 0 <= seed < 2**32:
                raise ValueError(f"seeds must be integers >= 0 (and < 2**32), got {seed!r}")
        seen = set()
        for name, values in axes:
            if name == "learning_rate" or not isinstance(name, str) or not name.isidentifier():
                valid = [n for n in AXES if n != "learning_rate"]
                raise ValueError(
                    f"unknown axis {name!r}; valid axes: {valid} or a hyperparameter of the "
                    "optimizer (learning rates have their own argument)"
                )
            if name in seen:
                raise ValueError(f"axis {name!r} is given twice")
            seen.add(name)
            _check_axis_values(name, values)
            if name in LOSS_AXES and "square" not in names:
                raise ValueError(f"axis {name!r} is read by the square loss only; add 'square'")
        for name in ("num_devices", "num_blocks"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.combo_range is not None:
            start, stop = self.combo_range
            if not 0 <= start < stop <= math.prod(len(v) for v in self.axis_values):
                raise ValueError(f"combo_range {self.combo_range} is outside the grid")
            set_("combo_range", (int(start), int(stop)))

    # ---------------------------------------------------------------- the configs

    @property
    def loss_names(self) -> tuple[str, ...]:
        return tuple(loss_name(loss) for loss in self.losses)

    @property
    def axis_names(self) -> tuple[str, ...]:
        """``("learning_rate", *other axes)``: the order of axis values inside a loss group."""
        return ("learning_rate", *(name for name, _ in self.axes))

    @functools.cached_property
    def axis_values(self) -> tuple[tuple[float, ...], ...]:
        return (
            tuple(map(float, self.learning_rates)),
            *(tuple(map(float, v)) for _, v in self.axes),
        )

    def combos(self) -> list[tuple[float, ...]]:
        """The ``R`` combinations of axis values, row-major in :attr:`axis_names` (those of
        ``combo_range`` only, for a memory block)."""
        product = itertools.product(*self.axis_values)
        if self.combo_range is None:
            return list(product)
        return list(itertools.islice(product, *self.combo_range))

    @property
    def num_combos(self) -> int:
        """``R``, without building the combinations."""
        if self.combo_range is not None:
            return self.combo_range[1] - self.combo_range[0]
        return math.prod(len(v) for v in self.axis_values)

    @property
    def group_size(self) -> int:
        """``R'``: combinations per loss group, padded to ``pad_combos`` and then to a multiple of
        devices × blocks."""
        parts = self.num_devices * self.num_blocks
        return -(-max(self.num_combos, self.pad_combos) // parts) * parts

    @property
    def shape(self) -> tuple[int, int]:
        """``(S, K)`` of the real configs."""
        return len(self.seeds), len(self.losses) * self.num_combos

    @property
    def padded_shape(self) -> tuple[int, int]:
        """``(S, K')`` of the arrays in the program."""
        return len(self.seeds), len(self.losses) * self.group_size

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def configs(self) -> list[Config]:
        """Every real config, in ``(S, K)`` row-major order."""
        return [
            Config(loss, int(seed), tuple(zip(self.axis_names, combo, strict=True)))
            for seed in self.seeds
            for loss in self.loss_names
            for combo in self.combos()
        ]

    @property
    def real_k(self) -> np.ndarray:
        """``(K,)``: the padded index of each real config's K position."""
        r, rp = self.num_combos, self.group_size
        return np.array([g * rp + i for g in range(len(self.losses)) for i in range(r)])

    def index(self, loss: str, seed: int, **values: float) -> tuple[int, int]:
        """``(s, k)`` of a config in the real ``(S, K)`` layout; every axis value must be given."""
        key = dict(loss=loss, seed=seed, **values)
        for s_k, config in zip(np.ndindex(*self.shape), self.configs(), strict=True):
            if config.as_dict() == key:
                return s_k
        raise ValueError(f"no config {key} in this grid")

    def hparams(self) -> dict[str, np.ndarray]:
        """Every axis's value per padded config: ``{name: (S, K') float32}``."""
        combos = self.combos()
        padded = combos + [combos[-1]] * (self.group_size - len(combos))
        per_k = np.array(padded * len(self.losses), np.float64).reshape(-1, len(self.axis_names))
        s = len(self.seeds)
        return {
            name: np.broadcast_to(per_k[:, j].astype(np.float32), (s, per_k.shape[0])).copy()
            for j, name in enumerate(self.axis_names)
        }

    def loss_of_k(self) -> np.ndarray:
        """``(K',)`` int32: the loss group of each padded config."""
        return np.repeat(np.arange(len(self.losses), dtype=np.int32), self.group_size)

    # ---------------------------------------------------------------- arrangement

    def arranged(self, num_devices: int, block_configs: int) -> Layout:
        """This grid arranged for ``num_devices`` devices, or on one device in cache blocks of at
        most ``block_configs`` configs (0: one block). Each part holds the same number of axis
        combinations of every loss."""
        blocks, per_loss = 1, max(self.num_combos, self.pad_combos)
        if num_devices == 1 and 0 < block_configs < len(self.losses) * per_loss:
            blocks = -(-per_loss // max(1, block_configs // len(self.losses)))
        return dataclasses.replace(self, num_devices=num_devices, num_blocks=blocks)

    def real(self) -> Layout:
        """The real configs only: no padding for devices, cache blocks or a block's size."""
        return dataclasses.replace(self, num_devices=1, num_blocks=1, pad_combos=0)

    def blocks(self, configs_per_block: int) -> list[Layout]:
        """This grid as memory blocks of at most ``configs_per_block`` configs, all of one shape.

        Whole seeds when a seed's ``L · R`` configs fit (as many seeds per block as fit and divide
        the seeds evenly); else one seed per block and its combinations in ``ceil(R / r)`` ranges
        of ``r`` each (every loss of a combination in the same block, since the losses are fixed
        at trace time), the last range padded to ``r``. Blocks run seed-major. ``[self]`` if the
        grid fits.

        Raises:
          ValueError: ``configs_per_block`` smaller than one combination of every loss.
        """
        n_loss, r, s = len(self.losses), self.num_combos, len(self.seeds)
        if configs_per_block >= s * n_loss * r:
            return [self]
        if configs_per_block < n_loss:
            raise ValueError(
                f"a block holds at least one config of each of the {n_loss} losses; "
                f"{configs_per_block} configs per block is too few"
            )
        if configs_per_block >= n_loss * r:  # whole seeds
            per = max(
                d for d in range(1, s + 1) if s % d == 0 and d * n_loss * r <= configs_per_block
            )
            return [
                dataclasses.replace(self, seeds=self.seeds[i : i + per]) for i in range(0, s, per)
            ]
        ranges = -(-r // (configs_per_block // n_loss))
        per = -(-r // ranges)
        first = 0 if self.combo_range is None else self.combo_range[0]
        return [
            dataclasses.replace(
                self,
                seeds=(seed,),
                combo_range=(first + i, first + min(i + per, r)),
                pad_combos=per,
            )
            for seed in self.seeds
            for i in range(0, r, per)
        ]

    def describe(self) -> str:
        """``"2 losses × 2 learning rates × 2 weight_decay × 3 seeds = 24 configs"``."""
        parts = [f"{len(self.losses)} losses", f"{len(self.learning_rates)} learning rates"]
        parts += [f"{len(v)} {name}" for name, v in self.axes]
        parts.append(f"{len(self.seeds)} seeds")
        return " × ".join(parts) + f" = {self.size} configs"
