r"""Where a sweep step's time goes: the compiled chunk of a benchmark workload, per op.

  python -m experiments.profile_step              # the MLP reference: 200 steps, top 25 ops
  python -m experiments.profile_step --steps=500 --top=40
  python -m experiments.profile_step --workload=cnn1d --num_lrs=32   # MNIST-1D CNN, 32 configs
  python -m experiments.profile_step --workload=cnn2d                # LeNet-5-like CNN on mnist5k

Runs a workload of ``experiments.workload`` (default ``mlp``, the reference grid of
``experiments.bench``: 16 configs, MLP 64-128-10 on digits, SGD, batch 128; ``cnn1d`` and ``cnn2d``:
``num_lrs`` Adam learning rates × CE, batch 100) once to warm up, then once under ``jax.profiler``, and adds up the time of every XLA op of the
step (on CPU: every thunk, which XLA:CPU only reports to the profiler with
``--xla_cpu_enable_xprof_traceme``, set here before the backend starts). Ops that run once per step
are listed with µs per step, their output shape from the optimized HLO and the JAX operation they
came from, so a slow op can be found in the source. Ops run concurrently on the CPU's threads, so
the per-op sum can exceed the wall time of a step; both are printed.

Writes ``profile.csv`` and the raw trace (``trace/``, for TensorBoard or Perfetto) into --workdir.
This is how the engine's layout was chosen: see docs/performance.md.
"""

from __future__ import annotations

import collections
import csv
import gzip
import json
import os
import re
import time
from collections.abc import Sequence

import jax
from absl import app, flags

from softcls_jax import data

from .cli import FlagError, fail, make_workdir, parse_flags
from .workload import WORKLOADS, cnn_workload, workload

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 200, "Steps of the profiled chunk (one compiled call).")
flags.DEFINE_integer("top", 25, "How many of the costliest ops to print.")
flags.DEFINE_integer(
    "num_lrs",
    8,
    "Learning rates per loss: the mlp grid has 2 × num_lrs configs (8: the reference "
    "16), a CNN grid num_lrs.",
)
flags.DEFINE_enum("workload", "mlp", WORKLOADS, "Which workload's chunk to profile.")
flags.DEFINE_string(
    "dataset", None, "The CNN workloads' data set (default: mnist1d for cnn1d, mnist5k for cnn2d)."
)
flags.DEFINE_string("workdir", "runs/profile", "Output directory for profile.csv and the trace.")

_TRACEME = "--xla_cpu_enable_xprof_traceme=true"


def hlo_index(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Op name -> (output shape, the JAX operation it came from) from optimized HLO text."""
    index = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s+(?:ROOT )?%?([\w.\-]+) = (\S+) ", line)
        if m:
            origin = re.search(r'op_name="([^"]*)"', line)
            index[m.group(1)] = (m.group(2), origin.group(1) if origin else "")
    return index


def op_totals(trace_events: list[dict]) -> tuple[collections.Counter, collections.Counter]:
    """Total microseconds and call counts per event name (complete events only)."""
    total, calls = collections.Counter(), collections.Counter()
    for event in trace_events:
        if event.get("ph") == "X":
            total[event["name"]] += event.get("dur", 0)
            calls[event["name"]] += 1
    return total, calls


def per_step_rows(total, calls, index, steps: int, blocks: int = 1) -> list[dict]:
    """The ops that ran once per step (the scan body) of each of ``blocks`` config blocks, costliest
    first; µs per step of all blocks."""
    rows = []
    for name in total:
        if calls[name] == steps * blocks and name in index:
            shape, origin = index[name]
            rows.append(
                {
                    "op": name,
                    "us_per_step": total[name] / steps,
                    "shape": shape,
                    "from": origin.split("closed_call/")[-1],
                }
            )
    return sorted(rows, key=lambda r: -r["us_per_step"])


def main(argv: Sequence[str]) -> None:
    del argv
    if min(FLAGS.steps, FLAGS.top, FLAGS.num_lrs) < 1:
        fail("--steps, --top and --num_lrs must be >= 1")
    try:
        workdir = make_workdir(FLAGS.workdir)
    except FlagError as e:
        fail(str(e))
    # Read when the XLA backend starts (the first computation, below): XLA:CPU reports its ops to
    # the profiler only with this flag.
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_TRACEME}".strip()
    steps = FLAGS.steps
    if FLAGS.workload == "mlp":
        trainer = workload(FLAGS.num_lrs, steps, data.load("digits"))
    else:
        default = "mnist1d" if FLAGS.workload == "cnn1d" else "mnist5k"
        try:
            dataset = data.load(FLAGS.dataset or default)
            trainer = cnn_workload(FLAGS.workload, FLAGS.num_lrs, steps, dataset)
        except ValueError as e:
            fail(f"--workload={FLAGS.workload}: {e}")
    state = trainer.init_state()
    indices = trainer.batch_indices(state.step, steps)
    args = (state, trainer.data, indices)
    chunk = trainer.compiled_chunk(*args)
    jax.block_until_ready(chunk(*args))  # warm up (donates state)
    state = jax.block_until_ready(trainer.init_state())
    trace_dir = workdir / "trace"
    jax.profiler.start_trace(str(trace_dir))
    start = time.perf_counter()
    jax.block_until_ready(chunk(state, trainer.data, indices))
    wall = time.perf_counter() - start
    jax.profiler.stop_trace()
    newest = max(trace_dir.glob("**/*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    with gzip.open(newest) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    total, calls = op_totals(events)
    blocks = trainer.layout.num_blocks
    rows = per_step_rows(total, calls, hlo_index(chunk.as_text()), steps, blocks)
    if not rows:
        fail("the trace holds no per-op events (is this backend's runtime traced?)")
    summed = sum(r["us_per_step"] for r in rows)
    print(
        f"{trainer.layout.size} configs ({blocks} cache block{'s' * (blocks > 1)}), {steps} steps "
        f"on {jax.devices()[0].platform}: "
        f"{1e6 * wall / steps:.0f} µs per step (wall, under the profiler); "
        f"{summed:.0f} µs per step summed over {len(rows)} ops\n"
    )
    print(f"{'µs/step':>8} {'share':>6}  {'op':<28} {'output shape':<24} from")
    for r in rows[: FLAGS.top]:
        print(
            f"{r['us_per_step']:>8.1f} {100 * r['us_per_step'] / summed:>5.1f}%  {r['op']:<28} "
            f"{r['shape'].split('{')[0]:<24} {r['from'][:60]}"
        )
    with open(workdir / "profile.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {workdir}/profile.csv and the trace in {trace_dir}")


def command() -> None:
    """The console command (pyproject.toml's ``[project.scripts]``)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    command()
