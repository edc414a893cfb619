"""JAX's persistent compilation cache, on by default for the command line.

A sweep compiles four XLA programs (init, minibatch indices, chunk, evaluation). With the cache, a
rerun of the same sweep, or a sweep of the same shapes with other hyperparameter values (they are
data, not constants), loads them from disk instead: only tracing and lowering remain. Results are
bitwise the same (a test checks). Clear it by deleting the directory (``default_dir()``).
"""

from __future__ import annotations

import os
import pathlib

import jax

from softcls_jax.data import cache_dir
from softcls_jax.files import writable_dir


def default_dir() -> pathlib.Path:
    """``<softcls cache>/jax``: ``$SOFTCLS_CACHE/jax``, else ``~/.cache/softcls_jax/jax``."""
    return cache_dir() / "jax"


def enable(directory: str | os.PathLike | None = None) -> pathlib.Path | None:
    """Caches every compiled program in ``directory`` (default :func:`default_dir`).

    Returns the directory, or None if it cannot be written (the cache is an optimisation: without
    it everything still runs, only compiled afresh).
    """
    path = pathlib.Path(directory) if directory is not None else default_dir()
    try:
        writable_dir(path)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # ours are all small
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
