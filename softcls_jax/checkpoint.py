"""Sharded, asynchronous, self-checking sweep checkpoints, written by orbax-checkpoint.

A checkpoint is a directory (``WORKDIR/checkpoint``; ``checkpoint.blockJ`` per memory block,
``checkpoint.archI`` per architecture) managed by orbax's ``CheckpointManager``: one subdirectory
per saved step, the last one kept. Each step holds three items:

* ``state``: the grid state as it lies on the devices (parameters, optimizer states, every config's
  hyperparameters, divergence steps, a stateful model's variables, the step), padded for this
  run's devices. Every process writes only the shards it holds and reads only the ones it needs.
* ``history``: the metric records so far, the positions of the real configs among the padded ones,
  and, for a checkpoint written on a signal in the middle of a chunk
  (:mod:`softcls_jax.preemption`), that chunk's running sums (numpy, written by process 0).
* ``meta``: the format, the step, the steps per compiled segment, and per state leaf its path,
  shape, dtype and :mod:`digest <softcls_jax.digest>`, with the sha256 of the history and its own.

Saving is asynchronous: :meth:`Checkpointer.save` returns once orbax has copied the state off the
devices, so the next chunk can take (donate) their buffers while the files are written in the
background; the next save, a stop and the end of a run wait for it. orbax writes a step into a
temporary directory and renames it when every process has finished (the commit), so a ``kill -9`` at
any moment leaves the previous checkpoint or the new one; a temporary a crash left is removed when
the directory is next opened. Random streams need no saving: the engine derives every key from
``(seed, step)``, so a restored state continues exactly where it stopped.

Checks on restore (a :class:`CheckpointError` naming what is wrong, never a resumed wrong state):
unreadable or truncated files; the format; the sha256 of the metadata and of the history; every
state leaf's path, shape and dtype against this grid; every leaf's digest (orbax checks shard indices, not array data: a flipped
byte reads back as wrong numbers otherwise); the step against the history, the history against
``eval_every`` (and the segment steps against both), and every config's hyperparameters against the
spec's. A state that does not fit the devices is a
:class:`~softcls_jax.memory.MemoryBudgetError`, a failing file system an ``OSError``: neither is
called a corrupted checkpoint.

A checkpoint does not depend on the number of devices: written on 4 devices, it resumes on 1 (its
arrays are then read whole, cut to the real configs and padded again for this run's devices).
Several hosts must all see the checkpoint directory (a shared file system or a bucket path that
orbax's ``epath`` reads): each writes its own shards there. The earlier format, one msgpack file
``checkpoint.msgpack``, is not read: :func:`legacy_files` finds it, and the sweep says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pathlib
import re
import shutil
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from softcls_jax import digest, memory
from softcls_jax.engine import METRICS, GridState, Layout, TrainSettings

if TYPE_CHECKING:
    from softcls_jax.engine import Trainer

DIRECTORY = "checkpoint"  # in a workdir
FORMAT = "softcls-jax checkpoint 3"
LEGACY = "checkpoint*.msgpack"  # the earlier format: one msgpack file per checkpoint
PENDING = ("train_loss", "grad_norm")  # the running sums of an unfinished chunk


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, corrupted, or not of this sweep."""


class Restored(NamedTuple):
    """A checked checkpoint: the state (on this run's devices, padded for them), the history, and
    for one written mid-chunk the chunk's running sums (``{"from_step", "train_loss",
    "grad_norm"}``) and its segment steps."""

    state: GridState
    history: list[dict]
    pending: dict | None = None
    segment_steps: int | None = None


def sibling(path: str | os.PathLike, tag: str) -> pathlib.Path:
    """The checkpoint beside ``path`` for a part of its run: ``NAME.TAG`` (``checkpoint.block2``)."""
    path = pathlib.Path(path)
    return path.with_name(f"{path.name}.{tag}")


def committed(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a committed checkpoint (a temporary a crash left does not count)."""
    path = pathlib.Path(path)
    return path.is_dir() and bool(ocp.utils.checkpoint_steps(path))


def legacy_files(directory: str | os.PathLike) -> list[pathlib.Path]:
    """Checkpoints of the earlier one-file format in ``directory``."""
    return sorted(pathlib.Path(directory).glob(LEGACY))


def directories(workdir: str | os.PathLike) -> list[pathlib.Path]:
    """The checkpoint directories of a workdir: :data:`DIRECTORY`, and its :func:`sibling` per part
    of a run (``checkpoint.archI``, ``checkpoint.blockJ``, ``checkpoint.archI.blockJ``)."""
    return sorted(
        p
        for p in pathlib.Path(workdir).glob(f"{DIRECTORY}*")
        if p.is_dir() and (p.name == DIRECTORY or p.name.startswith(f"{DIRECTORY}."))
    )


class Peeked(NamedTuple):
    """What a checkpoint's metadata says before its arrays are read: the step it resumes from
    and its steps per compiled segment."""

    step: int
    segment_steps: int | None


class Checkpointer:
    """Saves and restores the checkpoints of one trainer's grid in ``directory``.

    Example (``trainer`` an :class:`~softcls_jax.engine.Trainer`)::

        with Checkpointer(workdir / "checkpoint", trainer) as ckpt:
            restored = ckpt.restore(layout, settings)  # None if there is none
            ...
            ckpt.save(state, history)  # returns before the files are written

    Args:
      directory: the checkpoint's directory (created on the first save).
      trainer: the grid's trainer: its layout, placement and digests.
      asynchronous: write in the background (default); False waits for every save (a benchmark's
        baseline).
      fresh: the run starts from scratch: a checkpoint the directory holds (of an earlier run) is
        removed at the first save, before anything is written. Without it, a directory holding a
        later step than a save's is an error (orbax would skip the save).

    Attributes:
      blocked_seconds: time :meth:`save`, :meth:`restore` and :meth:`close` held the caller: what
        checkpointing cost the training loop.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        trainer: Trainer,
        asynchronous: bool = True,
        fresh: bool = False,
    ):
        self.directory = pathlib.Path(directory)
        self.trainer = trainer
        self.asynchronous = asynchronous
        self.fresh = fresh
        self.blocked_seconds = 0.0
        self._manager: ocp.CheckpointManager | None = None
        self._step: int | None = None  # the step saved or restored last: saving it again is a no-op

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        self.close(error)

    def _open(self) -> ocp.CheckpointManager:
        if self._manager is None:
            if self.fresh:
                self._clear()
            self._manager = _manager(
                self.directory,
                max_to_keep=1,
                cleanup_tmp_directories=True,
                enable_async_checkpointing=self.asynchronous,
            )
        return self._manager

    def _clear(self) -> None:
        """Removes an earlier run's checkpoint (process 0; the others wait for it)."""
        self.fresh = False
        if jax.process_index() == 0 and self.directory.exists():
            shutil.rmtree(self.directory)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"softcls checkpoint clear {self.directory}")

    # ---------------------------------------------------------------- saving

    def save(
        self,
        state: GridState,
        history: list[dict],
        pending: dict | None = None,
        segment_steps: int | None = None,
    ) -> None:
        """Saves ``state`` (padded, on the devices) and ``history``; with ``pending``, the running
        sums of the chunk ``state`` is in the middle of. Every process must call it. Returns once
        the state is off the devices (``state`` may then be donated); a failed write of the
        previous save is raised here or by :meth:`wait`."""
        start = time.perf_counter()
        step = int(np.asarray(state.step))  # waits for the chunk that computes it
        if step == self._step:  # the same state is already saved (or was just restored)
            return
        digests = self.trainer.digests(state)
        args = _items(state, digests, history, self.trainer.layout, pending, segment_steps)
        manager = self._open()
        with self._write_errors():
            saved = manager.save(step, args=args)  # also raises what the previous save's write did
        if not saved:
            raise CheckpointError(
                f"checkpoint {self.directory} holds step {manager.latest_step()}, beyond step "
                f"{step} of this run, which orbax would not overwrite: it is another run's; "
                "remove it (or resume that run)"
            )
        self._step = step
        self.blocked_seconds += time.perf_counter() - start

    def wait(self) -> None:
        """Waits for a save in flight to be committed (raises what its writing raised)."""
        if self._manager is not None:
            start = time.perf_counter()
            try:
                with self._write_errors():
                    self._manager.wait_until_finished()
            finally:
                self.blocked_seconds += time.perf_counter() - start

    @contextlib.contextmanager
    def _write_errors(self) -> Iterator[None]:
        """orbax reports a failing file system (tensorstore's ``os_error_code``, e.g. ENOSPC) as a
        ``ValueError``: raised as the ``OSError`` it is, naming the checkpoint (the last committed
        one is still there). Any other error propagates as it is."""
        try:
            yield
        except OSError:
            raise
        except Exception as e:
            code = re.search(r"os_error_code='(\d+)'", str(e))
            if code is None:
                raise
            number = int(code.group(1))
            raise OSError(
                number, f"{os.strerror(number)} (writing the checkpoint)", str(self.directory)
            ) from None

    def close(self, unwinding: BaseException | None = None) -> None:
        """Waits for a save in flight, then releases orbax's threads. While ``unwinding`` (an
        exception on its way out, e.g. from the training loop), a failed write does not replace
        it: it is attached to it as a note."""
        if self._manager is None:
            return
        try:
            self.wait()
        except Exception as e:
            if unwinding is None:
                self._release()
                raise
            unwinding.add_note(f"and the checkpoint in flight was not written: {_first_line(e)}")
        self._release()

    def _release(self) -> None:
        manager, self._manager = self._manager, None
        with contextlib.suppress(Exception):  # orbax's close waits again: wait() reported it
            manager.close()

    # ---------------------------------------------------------------- restoring

    def restore(
        self, layout: Layout | None = None, settings: TrainSettings | None = None
    ) -> Restored | None:
        """The checked checkpoint (None if the directory holds none).

        Args:
          layout: if given, the grid as specified (not arranged for devices): every config's
            hyperparameters must equal its :meth:`~softcls_jax.engine.Layout.hparams`, and the
            history's metrics must have its ``(S, K)`` shape.
          settings: if given, the step and the history must follow its ``steps`` and
            ``eval_every``.

        Raises:
          CheckpointError: naming what is wrong: unreadable, corrupted, or not of this grid.
        """
        if not committed(self.directory):
            return None
        start = time.perf_counter()
        with self._reader() as reader:
            restored = self._restore(reader, layout, settings)
        self._step = int(np.asarray(restored.state.step))
        self.blocked_seconds += time.perf_counter() - start
        return restored

    def peek(self) -> Peeked | None:
        """The step and segment steps of the checkpoint (None if there is none), from its checked
        metadata alone: what planning a resumed run needs before its state is on the devices."""
        if not committed(self.directory):
            return None
        with self._reader() as reader:
            meta = self._meta(reader, reader.latest_step())
        segment = meta.get("segment_steps")
        return Peeked(int(meta["step"]), None if segment is None else int(segment))

    def _reader(self) -> ocp.CheckpointManager:
        """A manager of its own for reading: orbax binds an item to the handler it first used."""
        return _manager(self.directory, read_only=True, create=False)

    def _read(self, manager: ocp.CheckpointManager, step: int, **items: Any) -> Any:
        """orbax's restore of ``items``: an unreadable file is a :class:`CheckpointError`, the file
        system's own failure an ``OSError``, a state too large for the devices a
        :class:`~softcls_jax.memory.MemoryBudgetError`."""
        try:
            return manager.restore(step, args=ocp.args.Composite(**items))
        except OSError:
            raise
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            raise memory.MemoryBudgetError(
                f"the checkpoint at {self.directory} does not fit the devices ({_first_line(e)}); "
                "resume it on larger ones"
            ) from None
        except Exception as e:  # a truncated or garbled file
            raise CheckpointError(
                f"checkpoint {self.directory} is unreadable: {_first_line(e)}"
            ) from None

    def _meta(self, manager: ocp.CheckpointManager, step: int) -> dict:
        """The metadata item, checked: the format and its own sha256."""
        meta = dict(self._read(manager, step, meta=ocp.args.JsonRestore()).meta)
        if meta.get("format") != FORMAT:
            raise CheckpointError(
                f"checkpoint {self.directory} is unreadable: not a softcls-jax checkpoint of this "
                "version"
            )
        if _meta_sha256(meta) != meta.get("meta_sha256"):
            raise CheckpointError(
                f"checkpoint {self.directory} is corrupted: its metadata does not match its sha256"
            )
        return meta

    def _restore(
        self, manager: ocp.CheckpointManager, layout: Layout | None, settings: TrainSettings | None
    ) -> Restored:
        where = self.directory
        step = manager.latest_step()
        meta = self._meta(manager, step)
        records = dict(self._read(manager, step, history=ocp.args.StandardRestore()).history)
        if _sha256(records) != meta.get("history_sha256"):
            raise CheckpointError(
                f"checkpoint {where} is corrupted: its history does not match its sha256"
            )
        trainer = self.trainer
        saved_real = np.asarray(records.pop("real_k"))
        same = list(meta["padded_shape"]) == list(trainer.layout.padded_shape) and np.array_equal(
            saved_real, trainer.layout.real_k
        )
        template = trainer.abstract_state()
        _check_leaves(where, meta["leaves"], template, len(saved_real), len(trainer.layout.real_k))
        if same:  # each process reads its own shards, placed as this run places them
            target, to_numpy = template, False
        else:  # written on other devices: read whole, cut to the real configs, padded again
            shapes = [leaf["shape"] for leaf in meta["leaves"]]
            target = jax.tree.unflatten(
                jax.tree.structure(template),
                [
                    jax.ShapeDtypeStruct(tuple(s), x.dtype)
                    for s, x in zip(shapes, jax.tree.leaves(template), strict=True)
                ],
            )
            to_numpy = True
        state = self._restore_state(manager, step, target, to_numpy)
        digests = (
            digest.hex_digests(digest.numpy_digests(state)) if to_numpy else trainer.digests(state)
        )
        for leaf, d in zip(meta["leaves"], digests, strict=True):
            if d != leaf["digest"]:
                raise CheckpointError(
                    f"checkpoint {where} is corrupted: state{leaf['path']} does not match its "
                    "digest"
                )
        if to_numpy:
            cut = lambda a: np.asarray(a)[:, saved_real] if np.ndim(a) >= 2 else np.asarray(a)
            state = trainer.device_state(jax.tree.map(cut, state))
        history = _history(where, records)
        pending = None
        if meta.get("pending_from_step") is not None:
            pending = {
                "from_step": int(meta["pending_from_step"]),
                **{m: np.asarray(records[f"pending_{m}"], np.float64) for m in PENDING},
            }
        segment = meta.get("segment_steps")
        segment = None if segment is None else int(segment)
        small = trainer.host_state((state.hparams, state.diverged_at))
        real = trainer.layout.real_k
        summary = GridState(
            None,
            None,
            {n: np.asarray(v)[:, real] for n, v in small[0].items()},
            np.asarray(small[1])[:, real],
            np.asarray(int(np.asarray(state.step))),
        )
        _check(where, summary, history, layout, settings, pending, segment)
        return Restored(state, history, pending, segment)

    def _restore_state(
        self, manager: ocp.CheckpointManager, step: int, target: Any, to_numpy: bool
    ) -> Any:
        if to_numpy:
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        else:  # onto the shardings of ``target``
            restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        args = ocp.args.PyTreeRestore(target, restore_args=restore_args)
        return self._read(manager, step, state=args).state


def write(
    directory: str | os.PathLike,
    state: GridState,
    history: list[dict],
    layout: Layout,
    pending: dict | None = None,
    segment_steps: int | None = None,
) -> None:
    """Writes a checkpoint of ``state`` (any arrays, e.g. numpy; padded as ``layout``, the layout
    as arranged by a trainer) synchronously, from one process: for tests and tools that write
    checkpoints by hand (the battery's corrupted ones). Training saves with :class:`Checkpointer`.

    Raises:
      ValueError: ``directory`` already holds a checkpoint.
    """
    if committed(directory):
        raise ValueError(f"{directory} already holds a checkpoint")
    digests = digest.hex_digests(digest.numpy_digests(state))
    args = _items(state, digests, history, layout, pending, segment_steps)
    with _manager(directory, enable_async_checkpointing=False) as manager:
        manager.save(int(np.asarray(state.step)), args=args)


def _items(
    state: GridState,
    digests: list[str],
    history: list[dict],
    layout: Layout,
    pending: dict | None,
    segment_steps: int | None,
) -> ocp.args.Composite:
    """The three items of a checkpoint (module docstring)."""
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
    leaves = [
        {"path": name, "shape": list(x.shape), "dtype": str(np.dtype(x.dtype)), "digest": d}
        for name, x, d in zip(paths, jax.tree.leaves(state), digests, strict=True)
    ]
    records = _history_arrays(history, layout.real_k, pending)
    meta = {
        "format": FORMAT,
        "step": int(np.asarray(state.step)),
        "padded_shape": list(layout.padded_shape),
        "segment_steps": segment_steps,
        "pending_from_step": None if pending is None else int(pending["from_step"]),
        "leaves": leaves,
        "history_sha256": _sha256(records),
    }
    meta["meta_sha256"] = _meta_sha256(meta)
    return ocp.args.Composite(
        state=ocp.args.PyTreeSave(state),
        history=ocp.args.StandardSave(records),
        meta=ocp.args.JsonSave(meta),
    )


def _manager(directory: str | os.PathLike, **options: Any) -> ocp.CheckpointManager:
    """orbax's manager of a checkpoint directory. The state is written uncompressed: float weights
    barely compress (15 %), and zstd took 2.5× the CPU time of a save, time taken from training on
    a CPU host (docs/performance.md)."""
    return ocp.CheckpointManager(
        pathlib.Path(directory).absolute(),
        item_handlers={
            "state": ocp.PyTreeCheckpointHandler(use_compression=False),
            "history": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        },
        options=ocp.CheckpointManagerOptions(**options),
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:400]


def _history_arrays(history: list[dict], real_k: Any, pending: dict | None) -> dict[str, Any]:
    """The history (and running sums) as the numpy arrays of the ``history`` item."""
    out = {
        "step": np.asarray([h["step"] for h in history], np.int64),
        "real_k": np.asarray(real_k, np.int64),
        **{m: np.stack([np.asarray(h[m]) for h in history]) for m in METRICS},
    }
    if pending is not None:
        out.update({f"pending_{m}": np.asarray(pending[m], np.float64) for m in PENDING})
    return out


def _sha256(records: dict[str, Any]) -> str:
    """sha256 of the history arrays: each name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(records):
        a = np.ascontiguousarray(records[name])
        h.update(f"{name} {a.dtype.str} {a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _meta_sha256(meta: dict) -> str:
    """sha256 of the metadata's canonical JSON, its own sha256 left out."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check_leaves(where: Any, saved: list[dict], template: Any, k_saved: int, k: int) -> None:
    """The saved state's leaves against this grid's, compared as real configs (``K`` on axis 1),
    so the message does not depend on the devices either was padded for."""
    expected = jax.tree_util.tree_leaves_with_path(template)
    if len(saved) != len(expected):
        raise CheckpointError(
            f"checkpoint {where} does not match this sweep's model and grid: {len(saved)} arrays, "
            f"expected {len(expected)}"
        )
    real = lambda shape, kk: [shape[0], kk, *shape[2:]] if len(shape) >= 2 else list(shape)
    for leaf, (path, x) in zip(saved, expected, strict=True):
        name = jax.tree_util.keystr(path)
        have, want = real(leaf["shape"], k_saved), real(list(x.shape), k)
        if leaf["path"] != name or have != want or leaf["dtype"] != str(np.dtype(x.dtype)):
            raise CheckpointError(
                f"checkpoint {where} does not match this sweep's model and grid: "
                f"state{leaf['path']} is {leaf['dtype']}{have}, expected "
                f"state{name} {np.dtype(x.dtype)}{want}"
            )


def _history(path: Any, records: dict[str, Any]) -> list[dict]:
    steps = np.asarray(records.get("step"))
    n = len(steps) if steps.ndim == 1 else 0
    if n == 0 or not np.issubdtype(steps.dtype, np.integer):
        raise CheckpointError(f"checkpoint {path} has no valid history of steps")
    metrics = {m: np.asarray(records[m]) for m in METRICS}
    for m, a in metrics.items():
        if a.ndim != 3 or a.shape[0] != n:
            raise CheckpointError(
                f"checkpoint {path}: history of {m} has shape {list(a.shape)}, expected "
                f"({n}, S, K) for its {n} records"
            )
    return [
        {"step": int(step), **{m: metrics[m][i] for m in METRICS}} for i, step in enumerate(steps)
    ]


def _check(
    path: Any,
    state: GridState,
    history: list[dict],
    layout: Layout | None,
    settings: TrainSettings | None,
    pending: dict | None = None,
    segment: int | None = None,
) -> None:
    """The checkpoint against its own history and, if given, the spec's grid and settings
    (``state``: the real configs' ``hparams`` and ``diverged_at`` and the step, on the host)."""
    bad = lambda what: CheckpointError(f"checkpoint {path} {what}")
    step = int(np.asarray(state.step))
    recorded = [h["step"] for h in history]
    if segment is not None and segment < 1:
        raise bad(f"records {segment} steps per segment")
    if pending is None and step != recorded[-1]:
        raise bad(
            f"is inconsistent: its state is at step {step}, its history ends at step {recorded[-1]}"
        )
    if pending is not None:
        if segment is None or pending["from_step"] != recorded[-1] or step <= recorded[-1]:
            raise bad(
                f"is inconsistent: its state is at step {step} inside a chunk from step "
                f"{pending['from_step']}, its history ends at step {recorded[-1]}"
            )
        if (step - recorded[-1]) % segment or (
            settings is not None and step >= min(recorded[-1] + settings.eval_every, settings.steps)
        ):
            raise bad(f"stopped at step {step}, not a segment boundary inside its chunk")
        for m in PENDING:
            if pending[m].shape != history[0][m].shape:
                raise bad(f"has running sums of {m} of shape {list(pending[m].shape)}")
    if settings is not None:
        every, total = settings.eval_every, settings.steps
        if segment is not None and math.gcd(every, total) % segment:
            raise bad(
                f"records {segment} steps per segment, which do not divide its chunks "
                f"(eval_every {every}, steps {total})"
            )
        expected = [min(i * every, total) for i in range(len(recorded))]
        if recorded != expected or not 0 <= step <= total:
            raise bad(
                f"has a history of steps {_short(recorded)}, expected {_short(expected)} "
                f"(every {every} of {total} steps)"
            )
    diverged = np.asarray(state.diverged_at)
    if diverged.size and (diverged.min() < -1 or diverged.max() > step):
        raise bad(f"records divergence steps outside [-1, {step}] at step {step}")
    if layout is None:
        return
    layout = layout.real()  # the real configs only
    shape = layout.shape
    for m in METRICS:
        if history[0][m].shape != shape:
            raise bad(f"has {m} of shape {list(history[0][m].shape)}, expected {list(shape)}")
    spec = layout.hparams()
    if set(state.hparams) != set(spec):
        raise bad(f"holds hyperparameters {sorted(state.hparams)}, the spec {sorted(spec)}")
    for name, want in spec.items():
        have = np.asarray(state.hparams[name])
        if have.shape != want.shape or not np.array_equal(have, want):
            where = np.argwhere(have != want)[0] if have.shape == want.shape else None
            detail = (
                f"config {tuple(int(i) for i in where)} has {float(have[tuple(where)]):g}, the "
                f"spec {float(want[tuple(where)]):g}"
                if where is not None
                else f"shape {list(have.shape)}, expected {list(want.shape)}"
            )
            raise bad(f"holds other {name} values than the spec: {detail}")


def _short(steps: list[int]) -> str:
    return str(steps) if len(steps) <= 6 else f"[{steps[0]}, {steps[1]}, …, {steps[-1]}]"
