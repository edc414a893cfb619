"""TensorBoard event files of a grid: every config's curves per chunk, and its HParams record.

``WORKDIR/tensorboard/<config>/`` holds one event file per config (a *run* in TensorBoard), named by
its loss, axis values and seed. After every chunk each config's metrics are appended as scalars
(tags as in results.json's curves; a diverged config's NaN values are left out), so
``tensorboard --logdir WORKDIR`` shows training as it goes. Each run also carries the HParams
plugin's records (its loss, every axis value and seed as hparams; the curve tags as metrics), so the
HParams dashboard compares the whole grid. The protocol buffers, the HParams summaries and the
record checksum are tensorboardX's; records are appended synchronously (no writer thread per config,
so a grid of thousands of configs costs thousands of small appends per chunk, not threads).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import struct
import time
from collections.abc import Sequence
from typing import Any

from softcls_jax.engine import METRICS, Config, Layout

EVENT_FILE = "events.out.tfevents.softcls"  # TensorBoard reads any file whose name has "tfevents"


def run_name(config: Config) -> str:
    """``loss=ce,learning_rate=0.1,weight_decay=0,seed=0``: a config's run directory."""
    return ",".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.as_dict().items()
    )


def _append(path: pathlib.Path, events: Sequence[Any]) -> None:
    """Appends TFRecord-framed events (length, masked CRC-32C of it, payload, masked CRC-32C)."""
    from tensorboardX.record_writer import masked_crc32c

    with open(path, "ab") as f:
        for event in events:
            data = event.SerializeToString()
            header = struct.pack("Q", len(data))
            f.write(header + struct.pack("I", masked_crc32c(header)))
            f.write(data + struct.pack("I", masked_crc32c(data)))


class GridLog:
    """Appends a grid's metrics to TensorBoard event files, one run per config.

    Args:
      logdir: the ``tensorboard`` directory (created if needed).
      layout: the grid: which config each ``(s, k)`` of a record is.
      extra: axis values every config of ``layout`` shares (its architecture in a plan of
        several), part of each run's name and HParams.
    """

    def __init__(
        self,
        logdir: str | os.PathLike,
        layout: Layout,
        extra: tuple[tuple[str, float], ...] = (),
    ):
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import hparams

        configs = layout.configs()
        if extra:
            configs = [dataclasses.replace(c, hparams=(*c.hparams, *extra)) for c in configs]
        self._event, self._configs = Event, configs
        self._paths = []
        for config in self._configs:
            run = pathlib.Path(logdir) / run_name(config)
            run.mkdir(parents=True, exist_ok=True)
            path = run / EVENT_FILE
            if not path.exists():  # a resumed sweep appends to the runs it started
                exp, start, _ = hparams(config.as_dict(), {m: 0.0 for m in METRICS})
                _append(
                    path,
                    [
                        Event(wall_time=time.time(), file_version="brain.Event:2"),
                        *(Event(wall_time=time.time(), summary=s) for s in (exp, start)),
                    ],
                )
            self._paths.append(path)

    def write(self, record: dict[str, Any]) -> None:
        """Appends one history record (``{"step": int, metric: (S, K) array}``) to every run."""
        from tensorboardX.summary import scalar

        step, now = int(record["step"]), time.time()
        k_count = record[METRICS[0]].shape[1]
        for i, path in enumerate(self._paths):
            s, k = divmod(i, k_count)
            values = {m: float(record[m][s, k]) for m in METRICS}
            events = [
                self._event(wall_time=now, step=step, summary=scalar(m, v))
                for m, v in values.items()
                if math.isfinite(v)
            ]
            _append(path, events)

    def close(self) -> None:
        """Marks every run's HParams session as finished."""
        from tensorboardX.summary import hparams

        for config, path in zip(self._configs, self._paths, strict=True):
            _, _, end = hparams(config.as_dict(), {m: 0.0 for m in METRICS})
            _append(path, [self._event(wall_time=time.time(), summary=end)])
