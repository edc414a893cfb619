"""What every experiment's command line shares: bad flags exit 2 with one line, never a traceback,
and quiet logs (warnings and errors only) unless absl's --verbosity asks for more."""

from __future__ import annotations

import logging
import math
import os
import pathlib
import sys

import numpy as np
from absl import flags
from absl import logging as absl_logging

from softcls_jax import compilation_cache
from softcls_jax.files import writable_dir

flags.DEFINE_bool(
    "compilation_cache",
    True,
    "Keep compiled XLA programs in JAX's persistent cache, so a rerun (or the same shapes with other "
    "values) skips compilation; --nocompilation_cache turns it off.",
)
flags.DEFINE_string(
    "compilation_cache_dir",
    None,
    f"Directory of the compilation cache (default {compilation_cache.default_dir()}); delete it to "
    "clear the cache.",
)


class FlagError(ValueError):
    """A bad flag value; the message names the flag."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"--{flag}: {message}")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag exits with status 2 and one line instead of a usage dump.

    Also sets the log levels (see :func:`quiet_logs`) and turns on the persistent compilation
    cache: ``app.run`` calls this before ``main``, so before the first JAX computation.
    """
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e))
        raise  # unreachable
    quiet_logs()
    if flags.FLAGS.compilation_cache:
        compilation_cache.enable(flags.FLAGS.compilation_cache_dir)
    return rest


def quiet_logs() -> None:
    """Warnings and errors only, unless ``--verbosity`` (``-v``) was given on the command line.

    absl's default verbosity, 0, is INFO, and JAX logs INFO lines while it picks a backend (e.g.
    "Unable to initialize backend 'tpu' ... libtpu.so" on every machine without a TPU), which would
    end up on every run's stderr. An explicit ``--verbosity`` keeps absl's levels untouched.
    """
    if flags.FLAGS["verbosity"].present:
        logging.getLogger("jax").setLevel(logging.NOTSET)  # inherit absl's level again
        return
    absl_logging.set_verbosity(absl_logging.WARNING)  # the root logger, under app.run's handler
    logging.getLogger("jax").setLevel(logging.WARNING)  # also where absl's handler is not installed
    logging.getLogger("absl").addFilter(_not_orbax)


def _not_orbax(record: logging.LogRecord) -> bool:
    """orbax-checkpoint logs through absl, errors with their tracebacks from its writer threads
    too, and raises the same errors to the caller: the sweep reports a failed checkpoint in one
    line of its own. What orbax only logs (e.g. an old step it could not delete) is shown with
    ``--verbosity``, which installs no filter."""
    return f"{os.sep}orbax{os.sep}" not in record.pathname


def number(flag: str, text: str, kind: type = float, minimum: float | None = None) -> float | int:
    """``text`` as a finite float or an int, at least ``minimum`` if given, else FlagError naming
    ``flag``."""
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise FlagError(
            flag, f"{text!r} is not {'an integer' if kind is int else 'a number'}"
        ) from None
    if kind is float and not math.isfinite(value):
        raise FlagError(flag, f"must be finite, got {text!r}")
    if minimum is not None and value < minimum:
        raise FlagError(flag, f"must be >= {minimum}, got {value}")
    return value


def numbers(flag: str, texts: list[str], kind: type = float) -> tuple:
    return tuple(number(flag, t, kind) for t in texts)


def make_workdir(path: str, flag: str = "workdir") -> pathlib.Path:
    """Creates the output directory; FlagError naming ``--flag`` if it cannot be written."""
    try:
        return writable_dir(path)
    except OSError as e:
        raise FlagError(flag, f"cannot write to {path}: {e.strerror or e}") from None


class Progress:
    """Per chunk: a tqdm bar when stdout is a terminal, else one plain line (CI, files)."""

    def __init__(self) -> None:
        self.bar = None
        self.terminal = sys.stdout.isatty()

    def __call__(self, step: int, total: int, record: dict, seconds: float) -> None:
        acc = record["test_accuracy"]
        finite = np.isfinite(acc)
        best = f"best test acc {100 * np.nanmax(acc):.1f} %" if finite.any() else "all diverged"
        status = f"{best}  diverged {int((~finite).sum())}/{acc.size}"
        if not self.terminal:
            left = (
                f"  about {seconds * (total - step) / step:.0f} s left" if 0 < step < total else ""
            )
            print(
                f"[{step:>{len(str(total))}}/{total}] {seconds:7.1f} s{left}  {status}", flush=True
            )
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix_str(status)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
