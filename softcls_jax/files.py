"""Crash-safe file writes: the one place softcls-jax writes a file.

``atomic_write`` puts the bytes in a temporary file beside the target, flushes them to disk and
renames the file over the target, so a crash (even ``kill -9``) leaves the old file or the new one,
never a half-written one.
"""

from __future__ import annotations

import os
import pathlib
import tempfile


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Writes ``data`` (bytes, or text as UTF-8) to ``path`` atomically."""
    path = pathlib.Path(path)
    payload = data.encode() if isinstance(data, str) else data
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


def writable_dir(path: str | os.PathLike) -> pathlib.Path:
    """Creates ``path`` if needed and proves it writable; ``OSError`` otherwise."""
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_test.{os.getpid()}"  # per process: several hosts may share a directory
    probe.write_bytes(b"")
    probe.unlink()
    return path
