"""Helpers shared by the parity tests: runtime.Generator against the reference pipeline, engine-directory checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from benchmarks.parity import compare_with_reference
from export.artifacts import read_manifest, sha256_file

_REFERENCE_RUNS: dict = {}  # the reference's outputs per (model, prompts, call): one run serves every backend and precision
PROMPTS = {1: ["a red circle at the top left"], 3: ["a red circle", "a blue square at the bottom right and a cyan circle at the top left", ""]}


def record(**measured: float) -> None:
    """With $CONTEXTDIFF_PARITY_LOG set, append what a parity test measured (one JSON line, named by the test): how
    the thresholds beside each assertion were set."""
    if os.environ.get("CONTEXTDIFF_PARITY_LOG"):
        with open(os.environ["CONTEXTDIFF_PARITY_LOG"], "a", encoding="utf-8") as f:
            f.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", "").removesuffix(" (call)"), **measured}) + "\n")


def compare(model_dir: Path, engine_dir: Path, *, batch: int, guidance: float, eta: float, steps: int = 20, backend: str = "auto",
            precision: str | None = None, **call) -> tuple[float, float, np.ndarray]:  # fmt: skip
    """(image PSNR, worst relative L2 error of x̂_0 over the steps, the runtime's images) for the same call and seed
    (``call``: further keyword arguments of both pipelines, e.g. ``contextual_guidance``)."""
    report = compare_with_reference(model_dir, engine_dir, PROMPTS[batch], num_inference_steps=steps, guidance_scale=guidance, eta=eta, seed=7,
                                    backend=backend, precision=precision, reference_cache=_REFERENCE_RUNS, **call)  # fmt: skip
    assert len(report.x0_rel_errors) == steps and report.images.dtype == np.float32
    record(psnr=report.image_psnr, x0=report.x0_max_rel_error)
    return report.image_psnr, report.x0_max_rel_error, report.images


def assert_complete(engine_dir: Path) -> dict:
    """The manifest exists, and every file it names exists with the recorded sha256."""
    manifest = read_manifest(engine_dir)
    assert manifest is not None
    files = [manifest["tokenizer"], manifest["scheduler"]]
    for entry in manifest["components"].values():
        files += [entry["onnx"], *entry["onnx"]["external_data"]] + ([entry["tensorrt"]] if "tensorrt" in entry else [])
    for f in files:
        assert sha256_file(engine_dir / f["file"]) == f["sha256"], f["file"]
    return manifest
