"""Graceful preemption: SIGTERM and SIGINT stop a sweep at a step boundary, checkpointed.

Spot and preemptible TPU VMs, SLURM and Colab end a job with SIGTERM (then, after a grace period,
SIGKILL). :func:`stop_on_signals` turns the first SIGTERM or SIGINT into a request the training
loop reads before every compiled call (:class:`StopFlag`); the loop then writes a checkpoint and
raises :class:`Preempted` (a ``KeyboardInterrupt``), which ``python -m experiments.sweep`` reports
in one line and exits with :data:`EXIT_PREEMPTED`. A second signal exits at once (the default
action: the last checkpoint on disk is intact, since every write is atomic).

On several hosts every process must stop at the same step, or their shards of the checkpoint would
disagree: :meth:`StopFlag.__call__` then agrees through a collective (any process stopped → all
stop), asked at the same step boundaries in every process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

import jax
import numpy as np

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on a signal after writing a checkpoint; rerun to resume
SIGNALS = (signal.SIGTERM, signal.SIGINT)
StopCheck = Callable[[], str | None]  # None: go on; else the reason to stop ("SIGTERM")


class Preempted(KeyboardInterrupt):
    """Training stopped on a signal at ``step`` (after the checkpoint, where there is one)."""

    def __init__(self, reason: str, step: int, where: str = ""):
        super().__init__(f"stopped by {reason} at step {step}{where}")
        self.reason, self.step, self.where = reason, step, where


class StopFlag:
    """A stop request: set by a signal handler (or :meth:`request`), read by the training loop."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        self.reason = reason

    def __call__(self) -> str | None:
        """The reason to stop, or None; on several processes, any process's (a collective: every
        process must call it at the same points)."""
        if jax.process_count() == 1:
            return self.reason
        from jax.experimental import multihost_utils

        mine = np.int32(0 if self.reason is None else SIGNALS.index(_signal_of(self.reason)) + 1)
        agreed = int(np.max(multihost_utils.process_allgather(mine)))
        return None if agreed == 0 else signal.Signals(SIGNALS[agreed - 1]).name


def _signal_of(reason: str) -> signal.Signals:
    return signal.Signals[reason] if reason in signal.Signals.__members__ else signal.SIGTERM


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag | None = None) -> Iterator[StopFlag]:
    """Within the block, the first SIGTERM or SIGINT sets ``flag`` (yielded); a second one takes
    the signal's default action at once. The previous handlers come back after the block. Outside
    the main thread (where Python delivers no signals) nothing is installed."""
    flag = StopFlag() if flag is None else flag
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: object) -> None:
        if flag.reason is not None:  # the second signal: as if there were no handler
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        flag.request(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
