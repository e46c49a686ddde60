"""Engine-directory mechanics: content hashes, atomic writes, the build lock, the manifest.

A build writes every artifact to a temporary file in the engine directory and renames it into place; the manifest
is written last, the same way. Artifact file names carry their content key, so a build killed at any moment
leaves either the previous manifest (still describing complete, untouched files) or none — never a manifest that
names a half-written file. Leftover temporary files are removed by the next build.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from runtime.errors import ContextDiffError
from runtime.files import TMP_PREFIX
from runtime.manifest import FORMAT_VERSION, MANIFEST, sha256_file  # noqa: F401 — the one definition, re-exported for export/
from runtime.options import Precision
from runtime.specs import Component

LOCK = ".build.lock"


class BuildError(ContextDiffError):
    """The engine directory cannot be built as asked (locked, not writable, backend unavailable, ...)."""


def hash_parts(*parts: str | bytes) -> str:
    """sha256 of the parts, each length-prefixed so that ("ab", "c") and ("a", "bc") differ."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


class BuildLock:
    """Exclusive lock on an engine directory for one build. The kernel drops it when the process dies, so a
    killed build never leaves a stale lock."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK
        self._fd: int | None = None

    def __enter__(self) -> BuildLock:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            self._fd = None
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise BuildError(f"another build is writing {self.path.parent} (lock {self.path} is held); wait for it to finish") from None
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a previous build, or None when there is none usable (absent, unreadable, other format)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        return None
    return manifest


# Names this package writes: <component>.<precision>.<16 hex>.onnx[.data] | .plan, <component>.int8.<16 hex>.xml | .bin
# (export/openvino_int8.py), and temporary files.
_ARTIFACT_NAME = re.compile(
    rf"^({'|'.join(re.escape(c.value) for c in Component)})\.(({'|'.join(p.value for p in Precision)})\.[0-9a-f]{{16}}\.(onnx|onnx\.data|plan)"
    rf"|int8\.[0-9a-f]{{16}}\.(xml|bin))$"
)


def remove_stale(directory: Path, keep: set[str]) -> None:
    """Delete leftover temporary files and artifacts of ours that the new manifest no longer names. Files this
    package did not write are never touched, whatever directory ``--out`` points at."""
    for path in directory.iterdir():
        if path.name in keep:
            continue
        if path.name.startswith(TMP_PREFIX):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        elif path.is_file() and _ARTIFACT_NAME.match(path.name):
            path.unlink(missing_ok=True)
