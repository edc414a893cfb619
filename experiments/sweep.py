r"""Trains a whole loss × hyperparameter × seed grid as one compiled program and reports it.

  python -m experiments.sweep --loss=ce
  python -m experiments.sweep --loss=ce,mse --lrs=0.01,0.1,1 --seeds=5 --workdir=runs/ce_vs_mse
  python -m experiments.sweep --loss=ce,mse --lrs=0.03,0.3 --axis weight_decay=0,1e-3 \
      --axis label_smoothing=0,0.1 --axis init_scale=1,4 --seeds=2 --steps=400

Any hyperparameter of softcls_jax.engine.AXES, and any numeric hyperparameter of the optimizer
(``--optimizer=adamw --axis b2=0.99,0.999``), is a grid axis (``--axis NAME=V1,V2,...``, repeatable);
those of AXES also take a single value (``--NAME=V``). The whole product trains as one program,
compiled once.
Checkpoints after every chunk: the same command on the same --workdir resumes an interrupted sweep.
A grid larger than the device's memory trains in blocks of configs through the same compiled program
(--memory_budget, --max_configs_per_block). SIGTERM or SIGINT (a preempted VM, SLURM, Colab) stops
at the next step boundary, writes a checkpoint, prints how to resume and exits with status 75
(EX_TEMPFAIL); a second signal exits at once.
Writes into --workdir: results.json (settings, versions, devices, per config its axis values, final
metrics, divergence and curves), results.csv, summary.md (tables), and PNG plots. Prints progress per
chunk and, at the end, a learning-rate × loss table of final test accuracy. Bad flags exit with
status 2 and a one-line message.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from softcls_jax import results
from softcls_jax.engine import AXES
from softcls_jax.losses import LOSSES
from softcls_jax.preemption import EXIT_PREEMPTED, Preempted
from softcls_jax.sweep import SettingError, SweepSpec, run_sweep

from .cli import FlagError, Progress, fail, number, parse_flags

FLAGS = flags.FLAGS
DEFAULTS = SweepSpec()  # every default below comes from the settings object
flags.DEFINE_string(
    "loss",
    ",".join(DEFAULTS.losses),
    f"Loss(es) to train with: one of {sorted(LOSSES)}, a comma list, or 'all'.",
)
flags.DEFINE_list(
    "hidden", [str(h) for h in DEFAULTS.hidden], "Hidden layer widths of the mlp, comma separated."
)
flags.DEFINE_list(
    "lrs", [], "Explicit learning rates, comma separated; overrides --lr_min/--lr_max/--num_lrs."
)
flags.DEFINE_string(
    "lr_min", f"{min(DEFAULTS.learning_rates):g}", "Smallest learning rate of the log-spaced range."
)
flags.DEFINE_string(
    "lr_max", f"{max(DEFAULTS.learning_rates):g}", "Largest learning rate of the log-spaced range."
)
flags.DEFINE_string(
    "num_lrs",
    str(len(DEFAULTS.learning_rates)),
    "Number of log-spaced learning rates from --lr_min to --lr_max.",
)
flags.DEFINE_string(
    "seeds",
    str(len(DEFAULTS.seeds)),
    "Number of seeds (0, 1, ..., counted from --first_seed); each seed has its own init and batch order.",
)
flags.DEFINE_string("first_seed", str(DEFAULTS.seeds[0]), "First seed.")
for _field in dataclasses.fields(SweepSpec):  # settings with a help text are flags of the same name
    if "help" in _field.metadata:
        default = getattr(DEFAULTS, _field.name)
        define = flags.DEFINE_bool if isinstance(default, bool) else flags.DEFINE_string
        define(
            _field.name,
            default if isinstance(default, bool) else str(default),
            _field.metadata["help"],
        )
for _axis in AXES.values():  # every axis also takes a single value
    if _axis.name != "learning_rate":
        default = "" if _axis.default is None else f" (default {_axis.default:g})"
        flags.DEFINE_string(
            _axis.name,
            None,
            f"{_axis.help}; {_axis.rule}{default}. One value; "
            f"several: --axis {_axis.name}=V1,V2,...",
        )
flags.DEFINE_multi_string(
    "axis",
    [],
    "A grid axis NAME=V1,V2,... (repeatable), crossed with losses, learning rates and "
    f"seeds. NAME is one of {[n for n in AXES if n != 'learning_rate']}, or any numeric "
    "hyperparameter of --optimizer (b1, b2, eps, decay, ...).",
)
flags.DEFINE_string(
    "workdir", "runs/sweep", "Output directory for results.json, results.csv, summary.md and plots."
)
flags.DEFINE_bool(
    "overwrite",
    False,
    "Replace a sweep with other settings found in --workdir (otherwise refused).",
)
flags.DEFINE_bool(
    "tensorboard",
    True,
    "Also write TensorBoard event files (per config its curves, and HParams) to --workdir/tensorboard.",
)
flags.DEFINE_bool(
    "checked",
    False,
    "Also check label ranges inside the compiled program (jax.experimental.checkify).",
)

flags.DEFINE_string(
    "memory_budget",
    None,
    "GB of memory one device may use (default: what the device reports free; on CPU half the "
    "available RAM); a grid that needs more trains in blocks of configs, one after the other.",
)
flags.DEFINE_string(
    "max_configs_per_block",
    None,
    "Train at most this many configs at once (blocks of equal size through one compiled program).",
)
flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-host: call jax.distributed.initialize; with no other flags JAX detects the cluster (TPU VMs, SLURM).",
)
flags.DEFINE_string(
    "coordinator_address",
    os.environ.get("JAX_COORDINATOR_ADDRESS"),
    "Multi-host: host:port of process 0 (default $JAX_COORDINATOR_ADDRESS); implies --distributed.",
)
flags.DEFINE_string(
    "num_processes",
    os.environ.get("JAX_NUM_PROCESSES"),
    "Multi-host: number of processes (default $JAX_NUM_PROCESSES).",
)
flags.DEFINE_string(
    "process_id",
    os.environ.get("JAX_PROCESS_ID"),
    "Multi-host: this process's id, 0 … num_processes-1 (default $JAX_PROCESS_ID).",
)

FLAG_OF = {"losses": "loss", "learning_rates": "lrs", "seeds": "seeds"}  # spec field -> flag


def learning_rates() -> tuple[float, ...]:
    if FLAGS.lrs:
        return tuple(number("lrs", t) for t in FLAGS.lrs)
    lo, hi = number("lr_min", FLAGS.lr_min), number("lr_max", FLAGS.lr_max)
    count = number("num_lrs", FLAGS.num_lrs, int, minimum=1)
    if not 0 < lo <= hi:
        raise FlagError("lr_min", f"need 0 < --lr_min <= --lr_max, got {lo} and {hi}")
    return (
        tuple(float(x) for x in np.logspace(np.log10(lo), np.log10(hi), count))
        if count > 1
        else (lo,)
    )


def axes_from_flags() -> dict[str, tuple[float, ...]]:
    """``--axis NAME=V1,...`` and ``--NAME=V`` as ``{name: values}``; FlagError names the flag."""
    valid = [n for n in AXES if n != "learning_rate"]
    axes: dict[str, tuple[float, ...]] = {}
    for text in FLAGS.axis:
        name, sep, values = text.partition("=")
        name = name.strip()
        if name == "learning_rate":
            raise FlagError(
                "axis", "the learning-rate axis is --lrs (or --lr_min/--lr_max/--num_lrs)"
            )
        if not sep or not name.isidentifier():
            raise FlagError(
                "axis",
                f"expected NAME=V1,V2,... with NAME one of {valid} or a hyperparameter of the "
                f"optimizer (b1, b2, eps, ...), got {text!r}",
            )
        if name in axes:
            raise FlagError("axis", f"axis {name!r} is given twice")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not items:
            raise FlagError("axis", f"axis {name!r} has no values")
        axes[name] = tuple(number("axis", v) for v in items)
    for name in valid:
        if FLAGS[name].value is not None:
            if name in axes:
                raise FlagError(name, f"given both as --{name} and as --axis {name}=...")
            axes[name] = (number(name, FLAGS[name].value),)
    return axes


def spec_from_flags() -> SweepSpec:
    """Parses and validates every flag; raises FlagError naming the flag."""
    names = [n.strip() for n in FLAGS.loss.split(",") if n.strip()]
    losses = tuple(LOSSES) if names == ["all"] else tuple(names)
    seeds_count = number("seeds", FLAGS.seeds, int, minimum=1)
    first = number("first_seed", FLAGS.first_seed, int)
    if not 0 <= first < 2**32:
        raise FlagError("first_seed", f"must be an integer in [0, 2**32), got {first}")
    if not FLAGS.workdir.strip():
        raise FlagError("workdir", "must not be empty (it would write into the current directory)")
    if FLAGS.model == "mlp" and not FLAGS.hidden:
        raise FlagError(
            "hidden", "give at least one hidden width for --model=mlp (e.g. --hidden=128)"
        )
    spec = SweepSpec(
        losses=losses,
        learning_rates=learning_rates(),
        seeds=tuple(range(first, first + seeds_count)),
        axes=axes_from_flags(),
        dataset=FLAGS.dataset,
        model=FLAGS.model,
        hidden=tuple(number("hidden", h, int) for h in FLAGS.hidden)
        if FLAGS.model == "mlp"
        else (),
        activation=FLAGS.activation,
        optimizer=FLAGS.optimizer,
        schedule=FLAGS.schedule,
        steps=number("steps", FLAGS.steps, int),
        batch_size=number("batch_size", FLAGS.batch_size, int),
        eval_every=number("eval_every", FLAGS.eval_every, int),
        data_seed=number("data_seed", FLAGS.data_seed, int),
        val_fraction=number("val_fraction", FLAGS.val_fraction),
        select_on=FLAGS.select_on,
        standardize=FLAGS.standardize,
        checked=FLAGS.checked,
        augment=FLAGS.augment,
        weight_decay_mask=FLAGS.weight_decay_mask,
        depth=number("depth", FLAGS.depth, int),
        width=number("width", FLAGS.width, int),
    )
    try:
        spec.validate()
    except SettingError as e:
        flag = flag_of(e.setting)
        named = flag == "axis" and e.setting != "axis" and not str(e).startswith(e.setting)
        raise FlagError(flag, f"{e.setting} {e}" if named else str(e)) from None
    return spec


def flag_of(setting: str) -> str:
    """The flag of a setting: an axis given with --axis is named by that flag."""
    if setting in [t.partition("=")[0].strip() for t in FLAGS.axis]:
        return "axis"
    return FLAG_OF.get(setting, setting)


def initialize_distributed() -> None:
    """Joins a multi-host run when asked; every process then sees all devices of all hosts.

    Raises:
      FlagError: multi-host flags without ``--distributed``/``--coordinator_address``, a
        coordinator without ``--num_processes``, or ``jax.distributed.initialize`` failing (e.g.
        ``--distributed`` off a cluster), with its message.
    """
    if not (FLAGS.distributed or FLAGS.coordinator_address):
        for name in ("num_processes", "process_id"):
            if FLAGS[name].present:
                raise FlagError(name, "needs --distributed or --coordinator_address")
        return
    count = (
        None if FLAGS.num_processes is None else number("num_processes", FLAGS.num_processes, int)
    )
    index = None if FLAGS.process_id is None else number("process_id", FLAGS.process_id, int)
    if FLAGS.coordinator_address and count is None:
        raise FlagError("coordinator_address", "needs --num_processes (and --process_id)")
    if count is not None and count < 1:
        raise FlagError("num_processes", f"must be >= 1, got {count}")
    if count is not None and (index is None or not 0 <= index < count):
        raise FlagError(
            "process_id", f"need 0 <= --process_id < --num_processes={count}, got {index}"
        )
    import jax

    try:
        jax.distributed.initialize(FLAGS.coordinator_address, count, index)
    except Exception as e:  # off a cluster, an unreachable coordinator: JAX's own message
        message = " ".join(str(e).split()) or type(e).__name__
        raise FlagError(
            "distributed", f"jax.distributed.initialize failed: {message[:300]}"
        ) from None
    if jax.process_index() > 0:  # one voice: process 0 prints, as it alone writes
        sys.stdout = open(os.devnull, "w")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; all settings are --flags (see --help)")
    try:
        initialize_distributed()
        spec = spec_from_flags()
        print(
            f"sweep: {spec.layout().describe()}, {spec.model} on {spec.dataset}, {spec.steps} "
            "steps",
            flush=True,
        )
        progress = Progress()
        budget = FLAGS.memory_budget
        cap = FLAGS.max_configs_per_block
        document = run_sweep(
            spec,
            FLAGS.workdir,
            on_progress=progress,
            overwrite=FLAGS.overwrite,
            on_resume=lambda step: print(
                f"resuming from the checkpoint at step {step}", flush=True
            ),
            tensorboard=FLAGS.tensorboard,
            memory_budget=None if budget is None else number("memory_budget", budget),
            max_configs_per_block=None
            if cap is None
            else number("max_configs_per_block", cap, int, minimum=1),
            on_plan=lambda line: print(line, flush=True),
        )
    except Preempted as e:
        progress.close()
        print(
            f"{e}; the checkpoint is in {FLAGS.workdir}: run the same command again to resume",
            flush=True,
        )
        sys.exit(EXIT_PREEMPTED)
    except FlagError as e:
        fail(str(e))
    except SettingError as e:
        fail(f"--{flag_of(e.setting)}: {e}")
    progress.close()
    records, chosen = document["configs"], document["selection"]
    split = "validation" if chosen["on"] == "val" else "TEST (optimistic)"
    print("\nFinal test accuracy (%), mean ± std over seeds:\n")
    print(results.accuracy_table(records, chosen["on"]))
    axes = results.axis_names(records)
    if len(axes) > 1:
        print(f"(each cell: {', '.join(axes[1:])} at their best on {split})")
    print(f"\nBest per loss, chosen on {split}:")
    for b in chosen["per_loss"]:
        values = ", ".join(f"{a} {b[a]:.3g}" for a in axes).replace("learning_rate", "lr")
        val = "" if b["val_accuracy"] is None else f"val accuracy {100 * b['val_accuracy']:.2f} %, "
        print(f"best {b['loss']}: {values}: {val}test accuracy {100 * b['test_accuracy']:.2f} %")
    t = document["timing"]
    print(
        f"\nwall {t['wall_s']:.1f} s (tracing {t['trace_s']:.1f} s, compile {t['compile_s']:.1f} s, "
        f"{t['compiled_chunks']} chunk program(s)), "
        f"{t['config_examples_per_s']:.3g} config·examples/s; results in {FLAGS.workdir}/"
    )


def command() -> None:
    """The console command (pyproject.toml's ``[project.scripts]``)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    command()
