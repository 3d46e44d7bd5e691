"""Durable file operations shared by the daemon and the trainer.

Atomic replacement (readers see the old file or the new one, never a torn one)
and fsync of directories (a created or renamed entry is data too).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_dir(folder: Path | str) -> None:
    """Make a create or rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(
    path: Path, write: Callable[[BinaryIO], None], *, sync_dir: bool = True
) -> None:
    """Create or replace `path` with what `write` writes: temp file, fsync, rename.

    The temporary name is unique to this process, so a crashed writer's leftover never
    collides with a live one. With `sync_dir` the folder is fsynced after the rename;
    a caller renaming several files into one folder can pass False and call
    :func:`fsync_dir` once at the end.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def write_bytes_atomically(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """:func:`write_atomically` for bytes already in memory."""

    def write(f: BinaryIO) -> None:
        f.write(data)

    write_atomically(path, write, sync_dir=sync_dir)


def tree_bytes(folder: Path | str) -> int:
    """Bytes of the regular files below `folder` (0 if it is not there); symlinks are
    not followed."""
    total = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += tree_bytes(entry.path)
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total
