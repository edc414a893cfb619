"""The engine's host side: placement on a mesh, compile-once programs and their timing, the chunk loop.

:class:`Trainer` turns a model, a data set, a :class:`~softcls_jax.engine.layout.Layout` and
:class:`TrainSettings` into the static :class:`~softcls_jax.engine.step.Program` and the arrays the
pure functions of :mod:`softcls_jax.engine.step` take, compiles each of them once, and runs the
chunks. Scale-out: the configs are sharded over a 1-D mesh of all devices (axis ``configs``), data
replicated; on several hosts the same code runs in every process after ``jax.distributed.initialize``.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.sharding import Mesh

from softcls_jax import digest, memory
from softcls_jax import losses as losses_lib
from softcls_jax.data import Dataset, with_label_noise
from softcls_jax.engine import batches, evaluate, step
from softcls_jax.engine.layout import LOSS_AXES, Layout
from softcls_jax.engine.settings import TrainSettings, check_compatible, is_int
from softcls_jax.engine.step import Data, GridState
from softcls_jax.labels import check_labels
from softcls_jax.models import Model
from softcls_jax.optim import make_optimizer
from softcls_jax.preemption import Preempted, StopCheck

# Configs per cache block on CPU, chosen by measurement (docs/performance.md): a block's parameters
# and activations should stay in cache for the whole chunk. A model whose per-config activations
# are larger says how many fit (Model.cpu_block).
CPU_BLOCK = 64
# A chunk longer than this (estimated from its FLOPs at a conservative rate, below) runs as shorter
# segments when the run can be stopped (SIGTERM), so a stop is reached within a few seconds.
SEGMENT_SECONDS = 2.0
ASSUMED_FLOPS_PER_S = 2e10  # below what this engine reaches on one CPU core; GPUs are far faster
# A state of at most this many elements is digested by numpy on the host (Trainer.digests): a few
# ms slower per checkpoint than the compiled program, which costs more than that to build.
HOST_DIGEST_ELEMENTS = 1 << 22


PARTIAL_METRICS = ("train_loss", "grad_norm")  # the chunk's metrics summed over its segments


def _loss_fn(loss: Any) -> Callable[..., jax.Array]:
    return losses_lib.get_loss(loss) if isinstance(loss, str) else loss


def check_shapes(model: Model, losses: Sequence[Any], dataset: Dataset, smoothed: bool) -> Any:
    """``ValueError`` naming the model or loss, and the shapes it got and expected, unless the
    model maps a batch ``(B, D)`` of the data to logits ``(B, C)`` and every loss given as a
    function maps logits and labels (``(B,)`` ids, or ``(B, C)`` targets when ``smoothed``) to a
    per-example ``(B,)``. Traced on one abstract batch (``jax.eval_shape``): nothing runs.

    Returns the abstract parameters of one config (what the optimizer's check traces with)."""
    b, d, c = 2, dataset.num_features, dataset.num_classes
    x = jax.ShapeDtypeStruct((b, d), jnp.float32)
    key = jax.random.key(0)

    def forward(params: Any, x: jax.Array) -> Any:
        if model.stateful:
            return model.apply_eval(params, model.init_state(key), x)
        return model.apply(params, x)

    try:
        params = jax.eval_shape(model.init, key)
        logits = jax.eval_shape(forward, params, x)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"model {model.name} fails on a batch of {dataset.name}'s shape {(b, d)} "
            f"({d} features): {type(e).__name__}: {first}"
        ) from None
    if not isinstance(logits, jax.ShapeDtypeStruct) or logits.shape != (b, c):
        got = (
            f"shape {tuple(logits.shape)}"
            if isinstance(logits, jax.ShapeDtypeStruct)
            else f"a {type(logits).__name__}"
        )
        raise ValueError(
            f"model {model.name} returns {got} for a batch of shape {(b, d)}; expected logits "
            f"{(b, c)}: one per class of {dataset.name}'s {c} classes"
        )
    labels = (
        jax.ShapeDtypeStruct((b, c), jnp.float32)
        if smoothed
        else jax.ShapeDtypeStruct((b,), jnp.int32)
    )
    for loss in losses:
        if isinstance(loss, str):
            continue  # the registry's losses have this signature
        name = getattr(loss, "__name__", repr(loss))
        try:
            out = jax.eval_shape(loss, logits, labels)
        except Exception as e:
            raise ValueError(
                f"loss {name} fails on logits {(b, c)} and labels {tuple(labels.shape)}: "
                f"{type(e).__name__}: {e}"
            ) from None
        if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != (b,):
            got = (
                f"shape {tuple(out.shape)}" if isinstance(out, jax.ShapeDtypeStruct) else type(out)
            )
            raise ValueError(
                f"loss {name} returns {got} for logits {(b, c)} and labels "
                f"{tuple(labels.shape)}; expected the per-example loss {(b,)}"
            )
    return params


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while a program is traced, lowered and compiled.

    Tracing allocates many short-lived objects; the collector, triggered by allocation counts, then
    walks the whole heap (JAX's own objects: tens of thousands) several times per program, about a
    quarter of a warm-cache launch's tracing (docs/performance.md). Paused, the garbage of tracing is
    freed by reference counting as before and the rest by the next collection after it.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Trainer:
    """Trains every config of a layout together.

    Example:
      >>> from softcls_jax import data, models
      >>> d = data.load("digits")
      >>> model = models.make_model("linear", d.num_features, d.num_classes)
      >>> layout = Layout(("ce", "mse"), (0.1, 1.0), (0,), {"weight_decay": (0.0, 1e-3)})
      >>> trainer = Trainer(model, d, layout, TrainSettings(steps=100, eval_every=50))
      >>> state, history = trainer.train()
      >>> [h["step"] for h in history], history[-1]["test_accuracy"].shape, trainer.num_traces
      ([0, 50, 100], (1, 8), 1)

    Args:
      model, dataset, layout, settings: what to train.
      devices: the devices whose mesh shards the configs; all of ``jax.devices()`` by default.
      block_configs: on one device, a chunk trains its configs in cache blocks, one after another:
        ``max(1, block_configs // L)`` combinations of the axes for each of the ``L`` losses, with
        every seed (so about ``block_configs`` configs per seed; 0: all at once). Default on CPU:
        the model's ``cpu_block`` (8 for ``cnn1d``, 1 for a ``from_nnx`` module with
        convolutions), else 64; all at once elsewhere.
      compile_cache: compiled programs shared with other trainers of the same shapes (the memory
        blocks of one grid): each program compiles once for all of them.

    Attributes:
      layout: the layout as arranged here (padding for devices and blocks): ask it which config is
        where.
      program: the static description the traced functions take.
      data: the arrays on the devices.
      num_traces: how many times the chunk program was traced: one per distinct chunk length,
        whatever the number of losses, seeds and axis values.
      trace_seconds: time spent tracing and lowering the init, index, chunk and evaluation programs.
      compile_seconds: time XLA spent compiling them (what the persistent compilation cache saves).
      eval_seconds: time spent running the evaluation program (compiling it is counted above):
        every record evaluates all configs on the test, train and validation splits.
      segment_steps: None: every chunk runs as one compiled call; else as calls of this many steps
        (a stoppable run with long chunks, :meth:`choose_segment`).
    """

    def __init__(
        self,
        model: Model,
        dataset: Dataset,
        layout: Layout,
        settings: TrainSettings,
        devices: Sequence[jax.Device] | None = None,
        block_configs: int | None = None,
        compile_cache: dict[Any, Any] | None = None,
    ):
        n_train = dataset.x_train.shape[0]
        if settings.batch_size > n_train:
            raise ValueError(
                f"batch_size {settings.batch_size} is larger than the training set ({n_train})"
            )
        labels = ("y_train", "y_test") + (("y_val",) if dataset.y_val is not None else ())
        for name in labels:  # host-side: a bad label would otherwise be silent
            try:
                check_labels(getattr(dataset, name), dataset.num_classes)
            except ValueError as e:
                raise ValueError(f"{dataset.name}: {name}: {e}") from None
        check_compatible(layout, settings)
        if settings.augment != "none" and dataset.image_shape is None:
            raise ValueError(
                f"augment={settings.augment!r} needs image data (mnist5k, idx:DIR, cifar10:DIR, or "
                f"a Dataset with image_shape); {dataset.name} holds flat features"
            )
        axes = dict(layout.axes)
        self.model, self.dataset, self.settings = model, dataset, settings
        self.devices = list(jax.devices() if devices is None else devices)
        if block_configs is None:
            cpu_block = CPU_BLOCK if model.cpu_block is None else model.cpu_block
            block_configs = cpu_block if self.devices[0].platform == "cpu" else 0
        if not is_int(block_configs) or block_configs < 0:
            raise ValueError(f"block_configs must be an integer >= 0, got {block_configs!r}")
        self.layout = layout.arranged(len(self.devices), block_configs)
        self.mesh = Mesh(np.array(self.devices), ("configs",)) if len(self.devices) > 1 else None
        abstract_params = check_shapes(model, layout.losses, dataset, "label_smoothing" in axes)
        mask = settings.weight_decay_mask
        kernels_only = mask == "kernels" or (mask == "model" and model.decay_kernels_only)
        optimizer = make_optimizer(settings.optimizer, set(axes), kernels_only)
        if not optimizer.legacy:  # every optimizer axis must trace as data (one compile for all)
            optimizer.check(abstract_params)
        loss_hparams = tuple(
            tuple((a, a.lower()) for a in LOSS_AXES if a in axes) if name == "square" else ()
            for name in self.layout.loss_names
        )
        self.program = step.Program(
            model=model,
            losses=tuple(_loss_fn(loss) for loss in layout.losses),
            loss_hparams=loss_hparams,
            optimizer=optimizer,
            axis_names=self.layout.axis_names,
            num_seeds=len(layout.seeds),
            group_size=self.layout.group_size,
            num_blocks=self.layout.num_blocks,
            batch_size=settings.batch_size,
            total_steps=settings.steps,
            schedule=settings.schedule,
            num_classes=dataset.num_classes,
            checked=settings.checked,
            augment=settings.augment,
            image_shape=dataset.image_shape,
            image_fill=dataset.image_fill,
            mesh=self.mesh,
        )
        levels = tuple(axes.get("label_noise", (0.0,)))
        noisy = [with_label_noise(dataset, lvl, seed=settings.data_seed).y_train for lvl in levels]
        arrays = (
            dataset.x_train,
            np.stack(noisy),
            dataset.x_test,
            dataset.y_test,
            np.asarray(levels, np.float32),
            dataset.x_val,
            dataset.y_val,
        )
        seeds = jnp.asarray(layout.seeds, jnp.uint32)
        key = lambda i: self._replicate(
            jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), i))(seeds)
        )
        self.init_keys, self.data_keys = key(0), key(1)
        # a stateful model's randomness (dropout): fold_in(key of the seed, step) inside the step
        rng_keys = key(2) if model.stateful else None
        augment_keys = key(3) if settings.augment != "none" else None
        self.data = Data(
            *(None if a is None else self._replicate(a) for a in arrays),
            rng_keys=rng_keys,
            augment_keys=augment_keys,
        )
        self.hparams = {n: self._replicate(v) for n, v in self.layout.hparams().items()}
        self.loss_ids = self._replicate(self.layout.loss_of_k())
        self.num_traces = 0
        self.trace_seconds = self.compile_seconds = self.eval_seconds = 0.0
        # "init", "eval", ("chunk"/"indices", steps) -> executable
        self._compiled: dict[Any, Any] = {} if compile_cache is None else compile_cache
        self._chunk_compiles = 0  # chunk programs this trainer compiled (not found in the cache)
        self._lowered: tuple[int, Any] | None = None  # a chunk lowered by choose_segment
        self.segment_steps: int | None = None
        self._init_fn = jax.jit(functools.partial(step.init, self.program))
        self._eval_fn = jax.jit(functools.partial(evaluate.evaluate, self.program))
        indices = lambda key, first, n: batches.batch_indices(
            key, first, n, n_train, settings.batch_size
        )
        self._indices_fn = jax.jit(jax.vmap(indices, (0, None, None), 1), static_argnums=2)
        self._chunk_fn = jax.jit(self._traced_chunk, donate_argnums=0)
        self._digest_fn = jax.jit(
            lambda tree: step.constrain(self.program, digest.tree_digests(tree), replicated=True)
        )

    def _traced_chunk(self, state: GridState, data: Data, indices: jax.Array) -> Any:
        self.num_traces += 1  # runs only while tracing
        fn = functools.partial(step.chunk, self.program)
        return (
            checkify.checkify(fn)(state, data, indices)
            if self.settings.checked
            else fn(state, data, indices)
        )

    # ---------------------------------------------------------------- placement

    def _put(self, a: Any, ndim_rule: int) -> jax.Array:
        """A global array from host data every process holds (works across processes too)."""
        a = np.asarray(a)
        sharding = step.sharding(self.mesh, ndim_rule)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    def _replicate(self, a: Any) -> jax.Array:
        """``a`` on every device (data, keys, per-config constants); plain ``jnp`` on one device."""
        if self.mesh is None:
            return jnp.asarray(a)
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):  # keys travel as their raw data
            raw = self._replicate(jax.random.key_data(a))
            return jax.random.wrap_key_data(raw, impl=jax.random.key_impl(a))
        return self._put(a, 0)

    def host_state(self, state: GridState) -> GridState:
        """The whole (padded) state as host numpy arrays, gathered from every process."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return multihost_utils.process_allgather(state, tiled=True)
        return jax.device_get(state)

    def padded_k(self) -> np.ndarray:
        """``(K',)``: the real config each padded position copies (itself for a real one; padding
        repeats the last combination of its loss group, as :meth:`Layout.hparams` does)."""
        r, rp = self.layout.num_combos, self.layout.group_size
        return np.array(
            [g * r + min(i, r - 1) for g in range(len(self.layout.losses)) for i in range(rp)]
        )

    def device_state(self, host: GridState) -> GridState:
        """Puts a host state on the devices, sharded like ``init_state``.

        ``host`` is either the padded state (:meth:`host_state`) or the real configs' state
        (leaves ``(S, K, ...)``, e.g. a checkpoint written on another number of devices), which
        is padded here for this trainer's layout.
        """
        kp, k = self.layout.padded_shape[1], len(self.layout.real_k)
        pad = self.padded_k()
        repad = lambda a: np.take(a, pad, axis=1) if np.ndim(a) >= 2 and a.shape[1] == k else a
        host = jax.tree.map(lambda a: repad(np.asarray(a)) if kp != k else np.asarray(a), host)
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, host)
        return jax.tree.map(lambda a: self._put(a, np.ndim(a)), host)

    # ---------------------------------------------------------------- compiled programs

    def _compiled_once(
        self, key: Any, fn: Any, *args: Any, llvm_level: int | None = None, lowered: Any = None
    ) -> Any:
        """``fn`` compiled ahead of time for these arguments, once per ``key``; both times counted.

        ``llvm_level``: a program that runs once per sweep or chunk and does little work (the init,
        the minibatch indices) is compiled by XLA:CPU at this LLVM level, not -O2, since its compile
        is most of its cost: the init at -O1 (-O0 changes float rounding), the integer-only indices
        at -O0. The results are bitwise the same (tested). ``lowered``: ``fn`` already lowered for
        ``args`` (its tracing counted by the caller).
        """
        if key not in self._compiled:
            jax.block_until_ready(args)  # or the timer would also count a chunk still running
            cheap = llvm_level is not None and self.devices[0].platform == "cpu"
            options = {"xla_backend_optimization_level": llvm_level} if cheap else None
            lowered = self._lower(fn, *args) if lowered is None else lowered
            with collector_paused():
                start = time.perf_counter()
                self._compiled[key] = lowered.compile(compiler_options=options)
            self.compile_seconds += time.perf_counter() - start
            self._chunk_compiles += isinstance(key, tuple) and key[0] == "chunk"
        return self._compiled[key]

    def _lower(self, fn: Any, *args: Any) -> Any:
        """``fn`` traced and lowered for ``args``, its time counted in :attr:`trace_seconds`."""
        with collector_paused():
            start = time.perf_counter()
            lowered = fn.lower(*args)
        self.trace_seconds += time.perf_counter() - start
        return lowered

    def state_template(self) -> GridState:
        """Shapes and dtypes of :meth:`init_state`, computed without running it."""
        return jax.eval_shape(self._init_fn, self.init_keys, self.hparams)

    def init_state(self) -> GridState:
        """Initial parameters (one draw per seed) and optimizer states; each config's axis values."""
        args = (self.init_keys, self.hparams)
        return self._compiled_once("init", self._init_fn, *args, llvm_level=1)(*args)

    def batch_indices(self, first_step: Any, num_steps: int) -> jax.Array:
        """The minibatch indices of steps ``first_step …`` of every seed, ``(num_steps, S, B)``: the
        engine's own index stream, from one program compiled once per chunk length."""
        args = (self.data_keys, first_step, num_steps)
        fn = self._compiled_once(("indices", num_steps), self._indices_fn, *args, llvm_level=0)
        return fn(*args[:2])

    def compiled_chunk(self, state: GridState, data: Data, indices: jax.Array) -> Any:
        """The compiled chunk program for these arguments (compiled once per chunk length)."""
        args = (state, data, indices)
        return self._compiled_once(("chunk", indices.shape[0]), self._chunk_fn, *args)

    @property
    def compiled_chunks(self) -> int:
        """How many chunk programs this trainer compiled (one per distinct chunk length; none
        for a memory block whose program an earlier block compiled)."""
        return self._chunk_compiles

    def abstract_state(self) -> Any:
        """The state's shapes, dtypes and placement (``jax.ShapeDtypeStruct`` leaves with their
        shardings), from the compiled init: nothing runs."""
        args = (self.init_keys, self.hparams)
        return self._compiled_once("init", self._init_fn, *args, llvm_level=1).out_info

    def digests(self, state: GridState) -> list[str]:
        """:func:`softcls_jax.digest.tree_digests` of ``state`` (padded, on the devices) as hex,
        one per leaf: the same for any sharding.

        In one process, a state of at most :data:`HOST_DIGEST_ELEMENTS` elements is digested on
        the host (:func:`~softcls_jax.digest.numpy_digests`, the same values): no program to
        trace, lower and load at every launch (docs/performance.md). A larger state, or one spread
        over processes, is digested by a compiled program on the devices, at the default level,
        not -O0 like the small index program: it reads the whole state."""
        if jax.process_count() == 1:
            elements = sum(x.size for x in jax.tree.leaves(state))
            if elements <= HOST_DIGEST_ELEMENTS:
                return digest.hex_digests(digest.numpy_digests(state))
        fn = self._compiled_once("digest", self._digest_fn, state)
        return digest.hex_digests(fn(state))

    def _abstract_indices(self, template: GridState, num_steps: int) -> Any:
        args = (self.data_keys, template.step, num_steps)
        fn = self._compiled_once(("indices", num_steps), self._indices_fn, *args, llvm_level=0)
        return fn.out_info

    def choose_segment(self, first_step: int = 0) -> int | None:
        """The steps per compiled call of a stoppable run: None (whole chunks) unless a chunk is
        estimated to take more than ``2 · SEGMENT_SECONDS``, then the largest divisor of
        ``gcd(eval_every, steps)`` estimated to take at most ``SEGMENT_SECONDS`` (at least 1).

        The estimate is the chunk program's FLOPs per step (XLA's cost analysis of the lowered
        program, before compiling) at :data:`ASSUMED_FLOPS_PER_S`: deterministic, so reruns
        segment alike; the parameters after a segmented chunk are bitwise those of the whole
        chunk (tested). The lowered chunk is kept for :meth:`compile_ahead`.
        """
        template = self.abstract_state()
        n = next(self.chunk_sizes(first_step), 0)
        if n == 0:
            return None
        indices = self._abstract_indices(template, n)
        self._lowered = (n, self._lower(self._chunk_fn, template, self.data, indices))
        try:
            cost = self._lowered[1].cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            per_step = float(cost["flops"]) * self.layout.num_blocks  # loop bodies count once
        except Exception:  # a backend without a cost model: whole chunks
            return None
        seconds = per_step / ASSUMED_FLOPS_PER_S
        if n * seconds <= 2 * SEGMENT_SECONDS:
            return None
        g = math.gcd(self.settings.eval_every, self.settings.steps)
        fits = [d for d in range(1, g + 1) if g % d == 0 and d * seconds <= SEGMENT_SECONDS]
        return max(fits, default=1)

    def compile_ahead(self, first_step: int = 0) -> int | None:
        """Compiles the init, the first chunk (of :attr:`segment_steps` if set) and the
        evaluation on the state's abstract shapes, before any state exists; returns the bytes per
        device the larger of the chunk and the evaluation needs (None where the backend does not
        say). Nothing is allocated, so a grid too large for the device is found before it fails."""
        template = self.abstract_state()
        n = self.segment_steps or next(self.chunk_sizes(first_step), self.settings.eval_every)
        indices = self._abstract_indices(template, n)
        lowered = self._lowered[1] if self._lowered is not None and self._lowered[0] == n else None
        self._lowered = None
        chunk = self._compiled_once(
            ("chunk", n), self._chunk_fn, template, self.data, indices, lowered=lowered
        )
        evaluate_fn = self._compiled_once("eval", self._eval_fn, template, self.data, self.loss_ids)
        needs = [memory.program_bytes(c) for c in (chunk, evaluate_fn)]
        return None if None in needs else max(needs)

    def fixed_bytes(self) -> int:
        """Per-device bytes that do not grow with the configs: the data and a chunk's indices."""
        s, b = len(self.layout.seeds), self.settings.batch_size
        indices = (self.segment_steps or self.settings.eval_every) * s * b * 4
        return memory.tree_bytes(self.data) + indices

    # ---------------------------------------------------------------- results

    def real(self, metrics: dict[str, Any]) -> dict[str, np.ndarray]:
        """Drops the padded configs: ``(S, K')`` arrays to the layout's real ``(S, K)``."""
        return {name: np.asarray(v)[:, self.layout.real_k] for name, v in metrics.items()}

    def real_params(self, state: GridState) -> Any:
        """The parameters of the real configs as host arrays, leaves ``(S, K, ...)``."""
        return self.real_variables(state)[0]

    def real_variables(self, state: GridState) -> tuple[Any, Any]:
        """``(params, model_state)`` of the real configs as host arrays, leaves ``(S, K, ...)``
        (``model_state`` is ``()`` for a stateless model)."""
        host = self.host_state(state)
        real = lambda x: np.asarray(x)[:, self.layout.real_k]
        return jax.tree.map(real, host.params), jax.tree.map(real, host.model_state)

    def diverged_steps(self, state: GridState) -> np.ndarray:
        """``(S, K)`` int array: the step at which each config diverged, -1 if it did not."""
        return np.asarray(self.host_state(state).diverged_at)[:, self.layout.real_k]

    def evaluate(self, state: GridState) -> dict[str, np.ndarray]:
        """Test and train metrics of every config, ``(S, K)`` arrays (NaN once diverged)."""
        out = self._test_metrics(state)
        out["train_loss"] = np.full(self.layout.shape, np.nan, np.float32)
        out["grad_norm"] = np.full(self.layout.shape, np.nan, np.float32)
        return out

    def _test_metrics(self, state: GridState) -> dict[str, np.ndarray]:
        args = (state, self.data, self.loss_ids)
        evaluate_fn = self._compiled_once("eval", self._eval_fn, *args)
        jax.block_until_ready(state)  # or the timer would also count a chunk still running
        start = time.perf_counter()
        out = jax.device_get(evaluate_fn(*args))
        self.eval_seconds += time.perf_counter() - start
        return self.real(out)

    # ---------------------------------------------------------------- the loop

    def run_chunk(
        self, state: GridState, num_steps: int
    ) -> tuple[GridState, dict[str, np.ndarray]]:
        """``num_steps`` steps of every config in one compiled call, then evaluation.

        ``state`` is donated: do not use it after the call.
        """
        state, out = self.train_chunk(state, num_steps)
        return state, {**self._test_metrics(state), **self.real(jax.device_get(out))}

    def train_chunk(self, state: GridState, num_steps: int) -> tuple[GridState, dict[str, Any]]:
        """The compiled chunk alone (no evaluation): the new state and the chunk's ``train_loss``
        and ``grad_norm``, ``(S, K')`` arrays still on the devices. ``state`` is donated."""
        args = (state, self.data, self.batch_indices(state.step, num_steps))
        result = self.compiled_chunk(*args)(*args)
        if self.settings.checked:
            error, result = result
            if error.get() is not None:
                raise ValueError(f"checked mode: {error.get()}")
        return result

    def chunk_sizes(self, start: int = 0) -> Iterator[int]:
        """Steps of each remaining chunk: up to the next multiple of ``eval_every`` (or the last
        step) each, so ``eval_every`` each from a multiple, the last one possibly shorter."""
        step_, every = start, self.settings.eval_every
        while step_ < self.settings.steps:
            size = min((step_ // every + 1) * every, self.settings.steps) - step_
            yield size
            step_ += size

    def train(
        self,
        state: GridState | None = None,
        history: list[dict] | None = None,
        on_chunk: Callable[[GridState, list[dict]], None] | None = None,
        stop: StopCheck | None = None,
        on_stop: Callable[[GridState, list[dict], dict | None], None] | None = None,
        pending: dict | None = None,
    ) -> tuple[GridState, list[dict]]:
        """Trains to ``settings.steps``; returns the final state and one metrics record per chunk.

        Args:
          state: a state to continue from (e.g. a checkpoint); fresh if None.
          history: the records so far, continued in place; a fresh run starts with the step-0 record.
          on_chunk: called after every chunk with the new state and the history so far (its last
            record is the new one); it must not keep ``state``, which the next chunk donates.
          stop: asked before every compiled call (a chunk, or a segment of :attr:`segment_steps`);
            once it returns a reason, ``on_stop`` gets the state, the history and the unfinished
            chunk's running sums (:meth:`partial_sums`; None at a chunk boundary), and
            :class:`~softcls_jax.preemption.Preempted` is raised.
          pending: the running sums of the chunk ``state`` stopped in (from a checkpoint).

        Returns:
          ``(state, history)``; each record is ``{"step": int, metric: (S, K) array, ...}``.
        """
        if state is None:
            state = self.init_state()
            history = [{"step": 0, **self.evaluate(state)}]
        history = [] if history is None else history

        def check(partial: dict | None) -> None:
            reason = stop() if stop is not None else None
            if reason is not None:
                if on_stop is not None:
                    on_stop(state, history, partial)
                raise Preempted(reason, int(state.step))

        d = self.segment_steps
        for size in self.chunk_sizes(int(state.step)):
            if d is None or (d >= size and pending is None):
                check(None)
                state, out = self.run_chunk(state, size)
            else:  # segments of d steps; their means summed on the host
                sums = pending or self.partial_sums(state)
                pending = None
                for _ in range(size // d):
                    check(sums if int(state.step) > sums["from_step"] else None)
                    state, segment = self.train_chunk(state, d)
                    sums = self.partial_sums(state, segment, d, sums)
                out = {**self._test_metrics(state), **self.partial_means(sums, int(state.step))}
            history.append({"step": int(state.step), **out})
            if on_chunk is not None:
                on_chunk(state, history)
        return state, history

    def partial_sums(
        self,
        state: GridState,
        segment: dict | None = None,
        steps: int = 0,
        sums: dict | None = None,
    ) -> dict:
        """The running sums of an unfinished chunk, ``{"from_step": its first step, "train_loss",
        "grad_norm": (S, K) float64 sums over its steps so far}``, with a segment of ``steps``
        steps (its means, ``(S, K')`` on the devices) added."""
        if sums is None:
            zeros = np.zeros(self.layout.shape, np.float64)
            sums = {"from_step": int(state.step), "train_loss": zeros, "grad_norm": zeros}
        if segment is None:
            return sums
        means = self.real(jax.device_get(segment))
        added = {m: sums[m] + means[m].astype(np.float64) * steps for m in PARTIAL_METRICS}
        return {"from_step": sums["from_step"], **added}

    @staticmethod
    def partial_means(sums: dict, step: int) -> dict[str, np.ndarray]:
        """A finished chunk's ``train_loss`` and ``grad_norm`` means from its running sums."""
        n = step - sums["from_step"]
        return {m: (sums[m] / n).astype(np.float32) for m in PARTIAL_METRICS}
