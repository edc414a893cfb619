"""What every experiment's command line shares: bad flags exit 2 with one line, never a traceback."""

from __future__ import annotations

import math
import pathlib
import sys

from absl import flags

from softcls_jax.files import writable_dir


class FlagError(ValueError):
    """A bad flag value; the message names the flag."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"--{flag}: {message}")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag exits with status 2 and one line instead of a usage dump."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e))
        raise  # unreachable


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
