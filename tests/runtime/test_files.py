"""Atomic writes (runtime.files): the one implementation every package uses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runtime.files import TMP_PREFIX, atomic_directory, atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, staging_dir


def test_writes_replace_the_file_and_leave_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and target.read_text().endswith("}\n")
    atomic_write_text(target, "text")
    assert target.read_text() == "text"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_the_temporary_path_keeps_the_suffix_and_is_removed_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "clip.gif"
    target.write_text("previous")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(TMP_PREFIX) and tmp.suffix == ".gif"
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif"]


def test_atomic_directory_swaps_on_success_and_keeps_the_old_one_on_failure(tmp_path: Path) -> None:
    root = tmp_path / "model"
    with atomic_directory(root) as tmp:
        (tmp / "a").write_text("1")
    assert (root / "a").read_text() == "1"
    with pytest.raises(ValueError):
        with atomic_directory(root) as tmp:
            (tmp / "b").write_text("2")
            raise ValueError
    assert sorted(p.name for p in root.iterdir()) == ["a"] and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with atomic_directory(root) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in root.iterdir()) == ["c"] and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_staging_dir_is_removed(tmp_path: Path) -> None:
    with staging_dir(tmp_path) as stage:
        (stage / "x").write_text("x")
        assert stage.name.startswith(TMP_PREFIX)
    assert not list(tmp_path.iterdir())
