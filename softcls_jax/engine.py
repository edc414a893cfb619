"""The sweep engine: a whole loss × learning-rate × seed grid trained as ONE compiled program.

Layout. A grid has ``S`` seeds and ``K = len(losses) · len(learning_rates)`` configs per seed, loss
major. Every leaf of the training state has leading axes ``(S, K)``. One step of the ``K`` configs of
a seed is one forward and one backward pass: the model is vmapped over the configs with the seed's
minibatch *shared*, so the first layer of all ``K`` configs is one wide matmul (``K·H`` rows) instead
of ``K`` small ones; the logits of each loss group go to that loss, fixed at trace time (no config
computes a loss it does not use). Seeds, each with its own minibatch order, are a vmap over that
(dropped when there is one seed). ``lax.scan`` runs a chunk of steps per call, so Python runs once per
chunk (progress, evaluation, checkpoints), never once per step. On one CPU, a grid of more than 64
configs is trained in blocks of configs, one block after the other for the whole chunk, so that a
block's working set stays in cache (``block_configs``).

Isolation. No operation mixes configs (each owns its columns of every wide matmul, and no reduction
crosses the config axes), so a config that diverges cannot disturb the others: with a diverging
config in place of a sane one, every other config's results are bitwise identical. A grid of another
*shape* is another compiled program, and XLA picks kernels by shape, so a config's results in a wider
or narrower grid agree with these to float32 rounding (~1e-7 relative), not to the bit.

Learning rates live in the optimizer state (``optax.inject_hyperparams``) and the losses are fixed
per group at trace time, so one compilation serves every learning rate, seed and loss of a grid (the
evaluation picks each config's loss by id with ``lax.switch``: it runs once per chunk).

Scale-out. The K axis is sharded over a 1-D mesh of all devices (``NamedSharding``, axis
``configs``), learning rates padded per loss to a multiple of the device count; data are replicated,
metrics leave the program replicated, and padded configs are dropped from every result. On several
hosts the same code runs in every process after ``jax.distributed.initialize``.

Common random numbers: configs of one seed start from the same parameters and see the same
minibatches, so their differences come from the loss and the learning rate alone.

Divergence: a config whose loss or gradient norm turns non-finite (a squared norm overflowing
float32 counts) is frozen before that update (its state stops changing) and ``diverged_at`` records
the step; its metrics read NaN from then on. Parameters can turn non-finite only through such a
gradient, or through a float32 overflow of ``p - lr * u`` with a finite update (an absurd learning
rate); that case is caught one step later by the loss, with the overflowed values frozen. (Checking
every parameter for finiteness every step would cost ~10 % of the step.) Configs never interact (no
reduction crosses the config axes), so its neighbours are unaffected.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import checkify
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from softcls_jax import losses as losses_lib
from softcls_jax import metrics
from softcls_jax.data import Dataset
from softcls_jax.labels import check_labels, check_labels_in_graph
from softcls_jax.models import Model
from softcls_jax.optim import check_learning_rate, init_state, make_optimizer

Array = jax.Array
METRICS = (
    "train_loss",  # mean minibatch loss (the config's own loss) over the chunk's steps
    "grad_norm",  # mean global gradient norm over the chunk's steps
    "test_loss",  # the config's own loss on the whole test set
    "test_nll",  # cross-entropy on the test set, comparable across losses
    "test_accuracy",
    "test_ece",  # 15-bin expected calibration error on the test set
    "train_nll",  # cross-entropy on the whole (possibly noisy) training set
    "train_accuracy",
)


@dataclasses.dataclass(frozen=True)
class Config:
    """One training run of a grid."""

    loss: str
    learning_rate: float
    seed: int


@dataclasses.dataclass(frozen=True)
class Grid:
    """The full product ``losses × learning_rates × seeds``.

    Config ``(s, k)`` of the ``(S, K)`` layout has seed ``seeds[s]``, loss ``losses[k // R]`` and
    learning rate ``learning_rates[k % R]`` with ``R = len(learning_rates)``.
    """

    losses: tuple[str, ...]
    learning_rates: tuple[float, ...]
    seeds: tuple[int, ...]

    def __post_init__(self) -> None:
        for name, values in (("losses", self.losses), ("learning rates", self.learning_rates),
                             ("seeds", self.seeds)):  # fmt: skip
            if not values:
                raise ValueError(f"a grid needs at least one of {name}")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} must not repeat, got {list(values)}")
        for loss in self.losses:
            losses_lib.get_loss(loss)
        for lr in self.learning_rates:
            check_learning_rate(lr)
        for seed in self.seeds:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
                raise ValueError(f"seeds must be integers >= 0, got {seed!r}")

    @property
    def shape(self) -> tuple[int, int]:
        """``(S, K)``."""
        return len(self.seeds), len(self.losses) * len(self.learning_rates)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def configs(self) -> list[Config]:
        """All configs in ``(S, K)`` row-major order."""
        return [
            Config(loss, float(lr), int(seed))
            for seed in self.seeds
            for loss, lr in itertools.product(self.losses, self.learning_rates)
        ]


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What every config of a grid shares besides model and data."""

    optimizer: str = "sgd"
    steps: int = 2000
    batch_size: int = 128
    eval_every: int = 200
    checked: bool = False  # checkify the label range inside the compiled chunk

    def __post_init__(self) -> None:
        make_optimizer(self.optimizer)
        for name in ("steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class GridState(NamedTuple):
    """Everything needed to continue training; array leaves have leading axes ``(S, K)``."""

    params: Any
    opt_state: Any
    diverged_at: Array  # (S, K) int32: the step whose update turned non-finite, or -1
    step: Array  # () int32: steps done


_CPU_BLOCK = (
    64  # configs per block on CPU: the best throughput of G = 16 … 1024 on the reference MLP
)


def _select(mask: Array, new: Any, old: Any) -> Any:
    """Per-config ``where``: ``mask`` has the leading config axes of every leaf."""

    def pick(a: Array, b: Array) -> Array:
        m = mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim))
        return jnp.where(m, a, b)

    return jax.tree.map(pick, new, old)


class GridTrainer:
    """Trains every config of a :class:`Grid` together.

    Example:
      >>> trainer = GridTrainer(model, dataset, Grid(("ce", "mse"), (0.1, 1.0), (0,)), TrainSettings())
      >>> state, history = trainer.train()

    Args:
      model, dataset, grid, settings: what to train.
      devices: the devices whose mesh shards the configs; all of ``jax.devices()`` by default.
      block_configs: on one device, a chunk trains at most this many configs at a time, block
        after block, each for all the chunk's steps (0: all at once). Default: 64 on CPU (on the
        reference MLP, throughput per config falls ~40 % from 64 configs to 1024 in one block as the
        working set leaves the cache), all at once elsewhere.

    Attributes:
      num_traces: how many times the chunk program was traced (= compiled): one per distinct chunk
        length, independent of the number of learning rates, seeds and losses.
      compile_seconds: time spent compiling the init, minibatch-index, chunk and evaluation programs.
      padded_shape: the internal ``(S, K_padded)`` config layout; ``real_configs`` indexes its K axis.
    """

    def __init__(
        self,
        model: Model,
        dataset: Dataset,
        grid: Grid,
        settings: TrainSettings,
        devices: Sequence[jax.Device] | None = None,
        block_configs: int | None = None,
    ):
        n_train = dataset.x_train.shape[0]
        if settings.batch_size > n_train:
            raise ValueError(
                f"batch_size {settings.batch_size} is larger than the training set ({n_train})"
            )
        for name in ("y_train", "y_test"):  # host-side: a bad label would otherwise be silent
            try:
                check_labels(getattr(dataset, name), dataset.num_classes)
            except ValueError as e:
                raise ValueError(f"{dataset.name}: {name}: {e}") from None
        self.model, self.dataset, self.grid, self.settings = model, dataset, grid, settings
        self.tx = make_optimizer(settings.optimizer)
        self._loss_fns = tuple(losses_lib.get_loss(name) for name in grid.losses)
        # The config axis K is split evenly, over a 1-D mesh of several devices (scale-out), or on
        # one device into blocks of at most ``block_configs`` trained one after the other, so a
        # block's parameters and activations stay in cache for all its steps. Each part holds the
        # same number of learning rates of every loss: rates are padded (repeating the last) to a
        # multiple of the parts; padded configs train like the others and are dropped from every
        # result (``real_configs``).
        self.devices = list(jax.devices() if devices is None else devices)
        n_dev, r, n_loss = len(self.devices), len(grid.learning_rates), len(grid.losses)
        if block_configs is None:
            block_configs = _CPU_BLOCK if self.devices[0].platform == "cpu" else 0
        if (isinstance(block_configs, bool) or not isinstance(block_configs, (int, np.integer))
                or block_configs < 0):  # fmt: skip
            raise ValueError(f"block_configs must be an integer >= 0, got {block_configs!r}")
        self._blocks = 1
        if n_dev == 1 and 0 < block_configs < n_loss * r:
            self._blocks = -(-r // max(1, block_configs // n_loss))
        parts = n_dev * self._blocks  # one of the two is 1
        self._r = -(-r // parts) * parts  # padded learning rates per loss
        self.padded_shape = (grid.shape[0], len(grid.losses) * self._r)
        lrs = list(grid.learning_rates) + [grid.learning_rates[-1]] * (self._r - r)
        self.real_configs = np.array(
            [g * self._r + i for g in range(len(grid.losses)) for i in range(r)]
        )
        self.mesh = Mesh(np.array(self.devices), ("configs",)) if n_dev > 1 else None
        k_pad = self.padded_shape[1]
        seeds = jnp.asarray(grid.seeds, jnp.uint32)
        self._loss_ids = self._replicate(np.array([k // self._r for k in range(k_pad)], np.int32))
        self._lrs = self._replicate(np.array([lrs[k % self._r] for k in range(k_pad)], np.float32))
        self._init_keys = self._replicate(
            jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 0))(seeds)
        )
        self._data_keys = self._replicate(
            jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 1))(seeds)
        )
        self._data = tuple(
            self._replicate(a)
            for a in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test)
        )
        self.num_traces = 0
        self.compile_seconds = 0.0
        self._compiled: dict[Any, Any] = {}  # "init", "eval", ("chunk"/"indices", steps) -> exe
        self._init_fn = jax.jit(self._init)
        self._eval_fn = jax.jit(self._evaluate)
        self._indices_fn = jax.jit(
            jax.vmap(self._chunk_batch_indices, (0, None, None), 1), static_argnums=2
        )
        self._chunk_fn = jax.jit(self._chunk_entry, donate_argnums=0)

    # ---------------------------------------------------------------- placement

    def _sharding(self, ndim: int) -> NamedSharding:
        """The placement rule: leaves with config axes ``(S, K, ...)`` are sharded along K, the rest
        (scalars, metrics, data) replicated."""
        return NamedSharding(self.mesh, P(None, "configs") if ndim >= 2 else P())

    def _put(self, a: Any, sharding: NamedSharding) -> Array:
        """A global array from host data that every process holds (works across processes too)."""
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    def _replicate(self, a: Any) -> Array:
        """``a`` on every device (data, keys, per-config constants); plain ``jnp`` on one device."""
        if self.mesh is None:
            return jnp.asarray(a)
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):  # keys travel as their raw data
            raw = self._replicate(jax.random.key_data(a))
            return jax.random.wrap_key_data(raw, impl=jax.random.key_impl(a))
        return self._put(a, self._sharding(0))

    def _shard_configs(self, tree: Any) -> Any:
        """Constrains every leaf of a state to :meth:`_sharding` inside a compiled program."""
        if self.mesh is None:
            return tree
        return jax.tree.map(
            lambda x: jax.lax.with_sharding_constraint(x, self._sharding(x.ndim)), tree
        )

    def _replicated_out(self, tree: Any) -> Any:
        """Metrics leave the program replicated, so every process can read them."""
        if self.mesh is None:
            return tree
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, self._sharding(0)), tree)

    # ---------------------------------------------------------------- pure pieces (traced)

    def _loss(self, loss_id: Array, logits: Array, labels: Array) -> Array:
        if len(self._loss_fns) == 1:
            return self._loss_fns[0](logits, labels)
        return jax.lax.switch(loss_id, self._loss_fns, logits, labels)

    def _seed_step(self, params, opt_state, xb, yb):
        """One optimizer step of the ``K`` configs of one seed on their shared minibatch ``(xb, yb)``.

        One forward and backward serve every config: the model is vmapped over the configs with the
        minibatch shared (the first layer is one wide matmul over all ``K·H`` hidden units), the
        logits of each loss group go to their own loss, and the gradient of the *sum* of the
        per-config losses is every config's own gradient (no term couples two configs; the sum's
        cotangent is exactly 1 for each). ``params`` and ``opt_state`` leaves have a leading ``K``
        axis. Returns ``(new_params, new_opt_state, grad_norm, finite, loss)``, per config.
        """
        r = jax.tree.leaves(params)[0].shape[0] // len(self._loss_fns)  # rates per loss (a block's)

        def objective(params):
            logits = jax.vmap(self.model.apply, (0, None))(params, xb)  # (K, B, C)
            per_config = jnp.concatenate([
                jnp.mean(jax.vmap(fn, (0, None))(logits[g * r : (g + 1) * r], yb), axis=-1)
                for g, fn in enumerate(self._loss_fns)
            ])  # fmt: skip
            return jnp.sum(per_config), per_config

        (_, loss), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return (*jax.vmap(self._update)(grads, params, opt_state), loss)

    def _update(self, grads, params, opt_state):
        """One config's optimizer update; ``finite``: its gradient norm is finite."""
        updates, new_opt_state = self.tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(grad_norm)  # see the module docstring on divergence
        return new_params, new_opt_state, grad_norm, finite

    def _batch_indices(self, data_key: Array, step: Array) -> Array:
        """Epoch-shuffled minibatch ``step`` of one seed: ``(B,)`` indices, remainder dropped."""
        n, b = self._data[0].shape[0], self.settings.batch_size
        per_epoch = n // b
        perm = jax.random.permutation(jax.random.fold_in(data_key, step // per_epoch), n)
        return jax.lax.dynamic_slice_in_dim(perm, (step % per_epoch) * b, b)

    def _chunk_batch_indices(self, data_key: Array, first_step: Array, num_steps: int) -> Array:
        """``_batch_indices`` for ``num_steps`` steps at once: ``(num_steps, B)``.

        One permutation per epoch the chunk touches instead of one per step (the sort was ~14 % of a
        step on the reference workload); the indices are identical to ``_batch_indices``.
        """
        n, b = self._data[0].shape[0], self.settings.batch_size
        per_epoch = n // b
        first_epoch = first_step // per_epoch
        num_epochs = (num_steps - 1) // per_epoch + 2  # static bound on the epochs a chunk touches
        epochs = first_epoch + jnp.arange(num_epochs, dtype=jnp.int32)
        perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(data_key, e), n))(
            epochs
        )
        steps = first_step + jnp.arange(num_steps, dtype=jnp.int32)
        rows, starts = steps // per_epoch - first_epoch, (steps % per_epoch) * b
        return jax.vmap(lambda r, s: jax.lax.dynamic_slice_in_dim(perms[r], s, b))(rows, starts)

    def _init(self, init_keys: Array, lrs: Array) -> GridState:
        s, k = self.padded_shape
        params = jax.vmap(self.model.init)(init_keys)  # (S, ...): shared by the K configs of a seed
        params = jax.tree.map(lambda x: jnp.broadcast_to(x[:, None], (s, k, *x.shape[1:])), params)
        opt_state = jax.vmap(jax.vmap(lambda p, lr: init_state(self.tx, p, lr)), (0, None))(
            params, lrs
        )
        diverged_at = jnp.full((s, k), -1, jnp.int32)
        return self._shard_configs(
            GridState(params, opt_state, diverged_at, jnp.zeros((), jnp.int32))
        )

    def _evaluate(
        self, state: GridState, data: tuple[Array, ...], loss_ids: Array
    ) -> dict[str, Array]:
        x_train, y_train, x_test, y_test = data

        def one(params, loss_id):
            test_logits = self.model.apply(params, x_test)
            train_logits = self.model.apply(params, x_train)
            return {
                "test_loss": jnp.mean(self._loss(loss_id, test_logits, y_test)),
                "test_nll": metrics.nll(test_logits, y_test),
                "test_accuracy": metrics.accuracy(test_logits, y_test),
                "test_ece": metrics.ece(test_logits, y_test),
                "train_nll": metrics.nll(train_logits, y_train),
                "train_accuracy": metrics.accuracy(train_logits, y_train),
            }

        # lax.map, not vmap: one config at a time, each by the same program, so a config's metrics
        # never depend on its neighbours' values. Evaluation runs once per chunk: this costs little.
        s, k = self.padded_shape
        flat_params = jax.tree.map(lambda x: x.reshape(s * k, *x.shape[2:]), state.params)
        flat_ids = jnp.tile(loss_ids, s)
        out = jax.lax.map(lambda args: one(*args), (flat_params, flat_ids))
        out = {name: v.reshape(s, k) for name, v in out.items()}
        alive = state.diverged_at < 0
        return self._replicated_out({name: jnp.where(alive, v, jnp.nan) for name, v in out.items()})

    def _chunk(self, state: GridState, data, indices: Array):
        """``indices.shape[0]`` steps of every config; ``indices``: ``(steps, S, B)`` minibatches."""
        self.num_traces += 1  # runs only while tracing
        x_train, y_train = data[0], data[1]
        # Over seeds, each with its own minibatch, by vmap; a single seed needs no seed axis at all
        # (its vmap of size 1 still costs ~15 % of a step), so it is dropped for the chunk.
        one_seed = self.padded_shape[0] == 1
        step_fn = self._seed_step if one_seed else jax.vmap(self._seed_step)
        squeeze = (lambda t: jax.tree.map(lambda v: v[0], t)) if one_seed else (lambda t: t)
        unsqueeze = (lambda t: jax.tree.map(lambda v: v[None], t)) if one_seed else (lambda t: t)

        def body(carry, step_and_idx):
            params, opt_state, diverged_at = carry
            step, idx = step_and_idx  # idx: (S, B), or (B,) for one seed
            new_params, new_opt_state, grad_norm, finite, loss = step_fn(
                params, opt_state, x_train[idx], y_train[idx]
            )
            finite = finite & jnp.isfinite(loss)
            alive = diverged_at < 0
            keep = alive & finite
            params = _select(keep, new_params, params)
            opt_state = _select(keep, new_opt_state, opt_state)
            diverged_at = jnp.where(alive & ~finite, step, diverged_at)
            return (params, opt_state, diverged_at), (loss, grad_norm)

        num_steps = indices.shape[0]
        steps = state.step + jnp.arange(num_steps, dtype=jnp.int32)
        indices = indices[:, 0] if one_seed else indices

        def train(carry):  # leaves (S, K', ...) -> after num_steps; per-step (steps, S, K') outputs
            carry, outputs = jax.lax.scan(body, squeeze(carry), (steps, indices))
            return unsqueeze(carry), tuple(x[:, None] if one_seed else x for x in outputs)

        carry = (state.params, state.opt_state, state.diverged_at)
        if self._blocks == 1:
            carry, (loss, grad_norm) = train(carry)
        else:  # blocks one after the other (lax.map), each for all the chunk's steps
            to_blocks, from_blocks = self._block_layout()
            carry, outputs = jax.lax.map(train, jax.tree.map(to_blocks, carry))
            carry = jax.tree.map(from_blocks, carry)
            loss, grad_norm = (jnp.moveaxis(from_blocks(jnp.moveaxis(x, 1, -1)), -1, 0)
                               for x in outputs)  # fmt: skip
        params, opt_state, diverged_at = carry
        new_state = self._shard_configs(
            GridState(params, opt_state, diverged_at, state.step + num_steps)
        )
        alive = diverged_at < 0
        out = {"train_loss": jnp.where(alive, jnp.mean(loss, axis=0), jnp.nan)}
        out["grad_norm"] = jnp.where(alive, jnp.mean(grad_norm, axis=0), jnp.nan)
        return new_state, self._replicated_out(out)

    def _block_layout(self) -> tuple[Callable[[Array], Array], Callable[[Array], Array]]:
        """``(S, K, ...) <-> (blocks, S, K / blocks, ...)``: block ``j`` holds learning rates
        ``j·rb … (j+1)·rb - 1`` of every loss (loss-major inside, like K), so every block has the
        same losses in the same places and one traced step serves them all."""
        n_loss, nb = len(self._loss_fns), self._blocks
        rb = self._r // nb

        def to_blocks(x: Array) -> Array:
            s, rest = x.shape[0], x.shape[2:]
            x = jnp.moveaxis(x.reshape(s, n_loss, nb, rb, *rest), 2, 0)
            return x.reshape(nb, s, n_loss * rb, *rest)

        def from_blocks(y: Array) -> Array:
            s, rest = y.shape[1], y.shape[3:]
            y = jnp.moveaxis(y.reshape(nb, s, n_loss, rb, *rest), 0, 2)
            return y.reshape(s, n_loss * nb * rb, *rest)

        return to_blocks, from_blocks

    def _chunk_entry(self, state, data, indices):
        if not self.settings.checked:
            return self._chunk(state, data, indices)

        def checked(state, data, indices):
            for labels in (data[1], data[3]):
                check_labels_in_graph(labels, self.dataset.num_classes)
            return self._chunk(state, data, indices)

        return checkify.checkify(checked)(state, data, indices)

    # ---------------------------------------------------------------- host-side driver

    def state_template(self) -> GridState:
        """Shapes and dtypes of :meth:`init_state`, computed without running it."""
        return jax.eval_shape(self._init, self._init_keys, self._lrs)

    def init_state(self) -> GridState:
        """Initial parameters (one draw per seed) and optimizer states with each config's rate."""
        args = (self._init_keys, self._lrs)
        return self._compiled_once("init", self._init_fn, *args, run_once=True)(*args)

    def _compiled_once(self, key: Any, fn: Any, *args: Any, run_once: bool = False) -> Any:
        """``fn`` compiled ahead of time for these arguments, once per ``key``; compile time is counted.

        ``run_once``: a program that runs once per sweep or chunk and does little work (the init, the
        minibatch indices) is compiled by XLA:CPU with LLVM at -O1, not -O2: a third of the compile
        time, the same results (integer code; the init's normals are bitwise equal, a test checks).
        """
        if key not in self._compiled:
            jax.block_until_ready(args)  # or the timer would also count a chunk still running
            cheap = run_once and self.devices[0].platform == "cpu"
            options = {"xla_backend_optimization_level": 1} if cheap else None
            start = time.perf_counter()
            self._compiled[key] = fn.lower(*args).compile(compiler_options=options)
            self.compile_seconds += time.perf_counter() - start
        return self._compiled[key]

    def _test_metrics(self, state: GridState) -> dict[str, np.ndarray]:
        args = (state, self._data, self._loss_ids)
        return self._real(jax.device_get(self._compiled_once("eval", self._eval_fn, *args)(*args)))

    def evaluate(self, state: GridState) -> dict[str, np.ndarray]:
        """Test and train metrics of every config, ``(S, K)`` arrays (NaN once diverged)."""
        out = self._test_metrics(state)
        out["train_loss"] = np.full(self.grid.shape, np.nan, np.float32)
        out["grad_norm"] = np.full(self.grid.shape, np.nan, np.float32)
        return out

    def _real(self, metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Drops the padded configs: ``(S, K_padded)`` host arrays to ``(S, K)``."""
        return {name: np.asarray(v)[:, self.real_configs] for name, v in metrics.items()}

    def host_state(self, state: GridState) -> GridState:
        """The whole (padded) state as host numpy arrays, gathered from every process."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return multihost_utils.process_allgather(state, tiled=True)
        return jax.device_get(state)

    def device_state(self, host: GridState) -> GridState:
        """Puts a host state (a restored checkpoint) on the devices, sharded like ``init_state``."""
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, host)
        return jax.tree.map(lambda a: self._put(a, self._sharding(np.ndim(a))), host)

    def diverged_steps(self, state: GridState) -> np.ndarray:
        """``(S, K)`` int array: the step at which each config diverged, -1 if it did not."""
        return np.asarray(self.host_state(state).diverged_at)[:, self.real_configs]

    def batch_indices(self, first_step: Any, num_steps: int) -> Array:
        """The minibatch indices of steps ``first_step …`` of every seed, ``(num_steps, S, B)``: the
        engine's own index stream, from one program compiled once per chunk length."""
        args = (self._data_keys, first_step, num_steps)
        fn = self._compiled_once(("indices", num_steps), self._indices_fn, *args, run_once=True)
        return fn(*args[:2])

    def compiled_chunk(self, state: GridState, data: tuple[Array, ...], indices: Array) -> Any:
        """The compiled chunk program for these arguments (compiled once per chunk length)."""
        args = (state, data, indices)
        return self._compiled_once(("chunk", indices.shape[0]), self._chunk_fn, *args)

    def run_chunk(
        self, state: GridState, num_steps: int
    ) -> tuple[GridState, dict[str, np.ndarray]]:
        """``num_steps`` steps of every config in one compiled call, then evaluation.

        ``state`` is donated: do not use it after the call.
        """
        args = (state, self._data, self.batch_indices(state.step, num_steps))
        result = self.compiled_chunk(*args)(*args)
        if self.settings.checked:
            error, result = result
            if error.get() is not None:
                raise ValueError(f"checked mode: {error.get()}")
        state, out = result
        # The evaluation is its own program, compiled once and shared with ``evaluate``.
        return state, {**self._test_metrics(state), **self._real(jax.device_get(out))}

    def chunk_sizes(self, start: int = 0) -> Iterator[int]:
        """Steps of each remaining chunk: ``eval_every`` each, the last one possibly shorter."""
        step = start
        while step < self.settings.steps:
            size = min(self.settings.eval_every, self.settings.steps - step)
            yield size
            step += size

    def train(
        self,
        state: GridState | None = None,
        history: list[dict] | None = None,
        on_chunk: Callable[[GridState, list[dict]], None] | None = None,
    ) -> tuple[GridState, list[dict]]:
        """Trains to ``settings.steps``; returns the final state and one metrics record per chunk.

        Args:
          state: a state to continue from (e.g. a checkpoint); fresh if None.
          history: the records so far, continued in place; a fresh run starts with the step-0 record.
          on_chunk: called after every chunk with the new state and the history so far (its last
            record is the new one: progress, checkpoints); it must not keep ``state``, which the
            next chunk donates.

        Returns:
          ``(state, history)``; each record is ``{"step": int, metric: (S, K) array, ...}``.
        """
        if state is None:
            state = self.init_state()
            history = [{"step": 0, **self.evaluate(state)}]
        history = [] if history is None else history
        for size in self.chunk_sizes(int(state.step)):
            state, out = self.run_chunk(state, size)
            record = {"step": int(state.step), **out}
            history.append(record)
            if on_chunk is not None:
                on_chunk(state, history)
        return state, history
