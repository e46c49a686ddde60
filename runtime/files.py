"""Atomic file and directory writes: the one implementation for every package (runtime is the lowest layer).

A file is written to a temporary sibling (same directory, so the rename is atomic; same suffix, so writers that pick
the format from it — PIL, imageio, NumPy — still do), flushed to disk and renamed onto its path: a reader, or a run
killed at any moment, sees the previous complete file or the new complete one, never a half-written one. On an error
the temporary file is removed. Temporary names start with :data:`TMP_PREFIX`, so a later run can clean leftovers of a
killed one (:func:`export.artifacts.remove_stale`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

TMP_PREFIX = ".tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)

PathLike = str | os.PathLike[str]


@contextlib.contextmanager
def atomic_path(path: PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (created empty, with the usual permissions) for the caller to write;
    when the block ends without error it is synced (``fsync``) and renamed onto ``path``, otherwise removed. The
    parent directory is created if needed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=f".{target.name}", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; these are ordinary files
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: PathLike, write: Callable[[Path], object], *, fsync: bool = True) -> Path:
    """Call ``write(tmp)`` for a temporary path next to ``path``, then rename it onto ``path`` (:func:`atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: PathLike, obj: Any, *, default: Callable[[Any], Any] | None = None) -> Path:
    """``obj`` as indented JSON (2 spaces, a final newline)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=default) + "\n")


@contextlib.contextmanager
def staging_dir(parent: PathLike) -> Iterator[Path]:
    """A temporary directory inside ``parent`` (same filesystem: renames out of it are atomic), removed on exit."""
    stage = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to fill; on leaving the block it replaces ``path`` (renamed into place),
    on an error it is removed: ``path`` is always absent, the previous complete directory or the new complete one."""
    root = Path(path).resolve()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        yield tmp
        old = None
        if root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, old / root.name)
        os.replace(tmp, root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
