"""How many bytes a grid needs on a device, how many the device offers, and how many configs fit.

A grid trains as one compiled program whose per-device memory XLA reports before anything runs
(``Compiled.memory_analysis()``: arguments + outputs − donated aliases + temporaries). Of that, the
data set and the minibatch indices are a fixed part; the rest grows with the configs a device
holds (their parameters, optimizer states, hyperparameters and activations). So a program measured
at ``n`` configs per device gives the linear model

    need(m) = fixed + m · (need(n) − fixed) / n,

from which :func:`configs_that_fit` sizes memory blocks. It is an estimate: the runner checks the
block program's own report again once it is compiled.

The budget (:func:`device_budget`): a given number of bytes, else what the device's allocator
reports free (GPU, TPU), else, on CPU, where devices report no memory statistics, a fraction of the
host's available RAM, shared by the local devices (``--xla_force_host_platform_device_count``
splits one RAM). On CPU the host also holds a checkpoint's copy of the state, so there each config
counts twice its state bytes more (:func:`host_bytes_per_config`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax

GB = 1e9
CPU_RAM_FRACTION = 0.5  # of the available host RAM: the kernel's OOM killer cannot be caught
DEVICE_FRACTION = 0.9  # of an accelerator's free memory: the allocator fragments


class MemoryBudgetError(ValueError):
    """A single block of the smallest size does not fit the memory budget."""


def program_bytes(compiled: Any) -> int | None:
    """Per-device bytes a compiled program holds while it runs (None where the backend does not
    say): its arguments and outputs (donated buffers counted once) and its temporaries."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # a backend without memory statistics
        return None
    if stats is None:
        return None
    get = lambda name: int(getattr(stats, name, 0) or 0)
    total = (
        get("argument_size_in_bytes")
        + get("output_size_in_bytes")
        - get("alias_size_in_bytes")
        + get("temp_size_in_bytes")
        + get("generated_code_size_in_bytes")
    )
    return max(total, 0)


def tree_bytes(tree: Any) -> int:
    """Bytes of every array leaf of ``tree`` (arrays or ``ShapeDtypeStruct``)."""
    return sum(
        math.prod(x.shape) * x.dtype.itemsize  # a key dtype's itemsize is its key data's
        for x in jax.tree.leaves(tree)
        if hasattr(x, "shape") and hasattr(x, "dtype")
    )


def host_available_bytes() -> int:
    """The host's available RAM (``MemAvailable`` on Linux, else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def device_budget(device: jax.Device, memory_budget: float | None = None) -> tuple[int, str]:
    """Bytes one device may use for a block, and where the figure comes from.

    Args:
      device: a device of the mesh (all are alike).
      memory_budget: GB per device given by the user (``--memory_budget``); None: measured.
    """
    if memory_budget is not None:
        if not (isinstance(memory_budget, (int, float)) and memory_budget > 0):
            raise ValueError(f"memory_budget must be a number of GB > 0, got {memory_budget!r}")
        return int(memory_budget * GB), f"memory_budget={memory_budget:g} GB per device"
    try:
        stats = device.memory_stats()
    except Exception:
        stats = None
    if stats and "bytes_limit" in stats:
        free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return int(
            DEVICE_FRACTION * free
        ), f"{DEVICE_FRACTION:.0%} of {device.platform}'s free memory"
    shared = max(1, jax.local_device_count())
    budget = int(CPU_RAM_FRACTION * host_available_bytes() / shared)
    where = f"{CPU_RAM_FRACTION:.0%} of the host's available RAM"
    return budget, where + (f" over {shared} devices" if shared > 1 else "")


def host_bytes_per_config(device: jax.Device, state_bytes_per_config: float) -> float:
    """Host bytes a config adds beside the device's (CPU only, where host and device share RAM):
    the checkpoint's host copy of its state and that copy serialized."""
    return 2 * state_bytes_per_config if device.platform == "cpu" else 0.0


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The linear model of a grid's per-device memory, measured on one program.

    Attributes:
      fixed: bytes that do not grow with the configs (the data, the minibatch indices).
      per_config: bytes each config adds on a device (and on CPU its host copies).
      measured_configs: configs per device of the program it was measured on.
      measured_bytes: what that program needs per device.
    """

    fixed: int
    per_config: float
    measured_configs: int
    measured_bytes: int

    def need(self, configs_per_device: int) -> int:
        return int(self.fixed + self.per_config * configs_per_device)


def estimate(program_need: int, fixed: int, configs_per_device: int, host_extra: float) -> Estimate:
    """The :class:`Estimate` of a program needing ``program_need`` bytes per device at
    ``configs_per_device`` configs per device, ``fixed`` of them independent of the configs."""
    variable = max(program_need - fixed, 0)
    per_config = variable / max(configs_per_device, 1) + host_extra
    need = int(program_need + host_extra * configs_per_device)
    return Estimate(fixed, per_config, configs_per_device, need)


def configs_that_fit(est: Estimate, budget: int) -> int:
    """Configs per device that fit ``budget`` by the estimate (0 if not even one)."""
    if est.per_config <= 0:
        return est.measured_configs
    return max(int((budget - est.fixed) // est.per_config), 0)


def describe_bytes(n: float) -> str:
    """``"1.23 GB"``, ``"456 MB"``, ``"789 kB"``."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"
