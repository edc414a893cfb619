"""Crash-safe file writes: the one place softcls-jax writes a file.

``atomic_write`` puts the bytes in a temporary file beside the target (``.NAME.XXXX``), flushes them
to disk, gives the file the mode the umask asks for, renames it over the target and flushes the
directory, so a crash (even ``kill -9`` or a power cut) leaves the old file or the new one, never a
half-written one. A failed write (out of space, read-only disk) removes its temporary and raises the
``OSError``; a temporary orphaned by ``kill -9`` is removed by :func:`remove_temporaries` on the next
run. :class:`DirLock` is the advisory lock that makes a directory one process's at a time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import tempfile
from collections.abc import Iterable


def _umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike) -> None:
    """Flushes a directory's entries (a rename inside it) to disk; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot fsync a directory; the rename still happened
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Writes ``data`` (bytes, or text as UTF-8) to ``path`` atomically, mode ``0o666 & ~umask``.

    Raises:
      OSError: the write failed (e.g. out of space); ``path`` is unchanged, no temporary is left.
    """
    path = pathlib.Path(path)
    payload = data.encode() if isinstance(data, str) else data
    f = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False)
    try:
        with f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # NamedTemporaryFile creates 0600
        os.replace(f.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(f.name)
        raise
    fsync_dir(path.parent)


def remove_temporaries(directory: str | os.PathLike, names: Iterable[str]) -> list[pathlib.Path]:
    """Removes the temporaries :func:`atomic_write` left for ``names`` in ``directory`` (after a
    crash), and stale write probes of :func:`writable_dir`; returns what was removed.

    Only ``.NAME.*`` files of the given names are touched: a directory's other files are not ours.
    """
    directory = pathlib.Path(directory)
    removed = []
    for name in (*names, "write_test"):
        for p in directory.glob(f".{name}.*"):
            if p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def writable_dir(path: str | os.PathLike) -> pathlib.Path:
    """Creates ``path`` if needed and proves it writable; ``OSError`` otherwise."""
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_test.{os.getpid()}"  # per process: several hosts may share a directory
    probe.write_bytes(b"")
    probe.unlink()
    return path


class LockedError(OSError):
    """The directory is locked by another live process; ``pid`` is its id (None if unknown)."""

    def __init__(self, path: pathlib.Path, pid: int | None):
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(errno.EWOULDBLOCK, f"{path} is in use by {holder}")
        self.path, self.pid = path, pid


class DirLock:
    """An advisory, exclusive ``fcntl.flock`` on ``directory/LOCK_NAME``, holding the owner's pid.

    The OS releases it when the process exits, however it exits (``kill -9`` included), so a lock is
    never stale. Use as a context manager, or :meth:`acquire` / :meth:`release`.

    Raises:
      LockedError: (from :meth:`acquire`) another process holds it.
      OSError: the lock file cannot be created (e.g. the directory is not writable).
    """

    LOCK_NAME = ".lock"

    def __init__(self, directory: str | os.PathLike):
        self.path = pathlib.Path(directory) / self.LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise LockedError(self.path.parent, int(text) if text.isdigit() else None) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Drops the lock (the file stays: removing it would race with a process opening it)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
