"""File writing that never leaves a half-written file (no heavy imports: usable from any worker)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Union

PathLike = Union[str, "os.PathLike[str]"]


def _umask() -> int:
    """The process umask, read without changing it where the OS tells it (Linux ≥ 4.7), else by setting
    and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Any, durable: bool = False) -> None:
    """Call ``write(tmp_path)`` then atomically rename to ``path``; the temporary file is removed on error.

    The file gets the permissions a plain ``open(path, "w")`` would give it (``0o666`` less the umask), or
    keeps those of the file it replaces — not the owner-only mode of the temporary file. ``durable``
    flushes the written file to disk (``fsync``) before the rename, so that after a power loss ``path``
    holds the old file or the whole new one, never an empty one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
