"""Run in a subprocess: a BatchNorm + Dropout grid on this process's devices.

``python -m tests.stateful_sharding_worker MODE PATH``: ``whole`` trains uninterrupted and prints
its final metrics as JSON; ``killed`` checkpoints to PATH and kills itself (SIGKILL) after the second
chunk (the first chunk's checkpoint is committed by then: saving is asynchronous, and a save waits
for the one before); ``resume`` continues from PATH and prints the final metrics and the step it
resumed from.
"""

import json
import os
import signal
import sys

import jax
import numpy as np
from flax import nnx

from softcls_jax import data, engine, models, runner


class BNDropNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(16, 16, use_bias=False, rngs=rngs)
        self.norm = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(16, 5, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs | None = None):
        return self.out(self.drop(jax.nn.relu(self.norm(self.hidden(x))), rngs=rngs))


def main(mode: str, path: str) -> None:
    d = data.standardized(data.load("blobs"))  # see tests/test_stateful.py: why not the digits
    model = models.from_nnx(BNDropNet, name="bn_drop")
    # 3 rates: not a multiple of 4 devices
    layout = engine.Layout(("ce", "mse"), (0.01, 0.05, 0.2), (0, 1))
    settings = engine.TrainSettings("momentum", 60, 64, 20)

    def kill_after_second_chunk(step, *_):
        if mode == "killed" and step == 40:
            os.kill(os.getpid(), signal.SIGKILL)

    resumed_at = []

    done = runner.run(
        model,
        d,
        layout,
        settings,
        checkpoint_path=None if mode == "whole" else path,
        resume=mode == "resume",
        on_progress=kill_after_second_chunk,
        on_resume=resumed_at.append,
    )
    out = {
        "devices": jax.device_count(),
        "resumed_at": resumed_at,
        "finals": [c["final"] for c in done.document["configs"]],
        "state": [np.asarray(a).tolist() for a in jax.tree.leaves(done.model_state)],
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:])
