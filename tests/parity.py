"""Helpers shared by the parity tests: PSNR, runtime.Generator against the reference pipeline, engine-directory checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from contextdiff_ref.pipeline import ContextDiffPipeline
from export.artifacts import read_manifest, sha256_file
from runtime.generator import Generator

PROMPTS = {1: ["a red circle at the top left"], 3: ["a red circle", "a blue square at the bottom right and a cyan circle at the top left", ""]}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(np.mean((a.astype(np.float64) - b) ** 2), 1e-30)))


def compare(model_dir: Path, engine_dir: Path, *, batch: int, guidance: float, eta: float, steps: int = 20) -> tuple[float, float, np.ndarray]:
    """(image PSNR, worst relative L2 error of x̂_0 over the steps, the runtime's images) for the same call and seed."""
    pipe, gen = ContextDiffPipeline.from_pretrained(model_dir), Generator.from_dir(engine_dir)
    ref_steps, rt_steps = [], []
    kwargs = dict(num_inference_steps=steps, guidance_scale=guidance, eta=eta, seed=7, progress=False)
    expected = pipe(PROMPTS[batch], callback=ref_steps.append, **kwargs).images
    got = gen(PROMPTS[batch], callback=rt_steps.append, **kwargs).images
    x0_errors = [np.linalg.norm(b.pred_original_sample - a.pred_original_sample.numpy()) / np.linalg.norm(a.pred_original_sample.numpy())
                 for a, b in zip(ref_steps, rt_steps)]  # fmt: skip
    assert len(x0_errors) == steps and got.shape == expected.shape and got.dtype == np.float32
    return psnr(got, expected), max(x0_errors), got


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
