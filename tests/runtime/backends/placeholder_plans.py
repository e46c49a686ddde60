"""Engine directories whose manifests record a TensorRT plan per component, for the TensorRT tests that run without
TensorRT: the plan files are placeholders (nothing here deserializes them); their sha256 is real so the manifest
validates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from runtime.manifest import sha256_file


def with_placeholder_plans(src: Path, dst: Path, *, version: str = "10.16.1.11", **fields: Any) -> Path:
    """A copy of the engine directory ``src`` at ``dst`` with a placeholder plan per component; ``fields`` (e.g.
    ``runtime="lean"``, ``refittable=True``) are added to each plan entry, those given as None left out."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    for name, entry in manifest["components"].items():
        plan = dst / f"{name}.plan"
        plan.write_bytes(b"placeholder plan " + name.encode())
        entry["tensorrt"] = {"file": plan.name, "sha256": sha256_file(plan), "bytes": plan.stat().st_size, "builder": "tensorrt",
                             "builder_version": version, "compute_capability": "9.0", "key": "k"}  # fmt: skip
        entry["tensorrt"].update({k: v for k, v in fields.items() if v is not None})
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst
