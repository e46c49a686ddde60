"""A LoRA of the base image model on a video model's engines (the inflated UNet: the image UNet's modules under
``unet.``, beside the temporal layers), applied at load without rebuilding."""

from __future__ import annotations

import numpy as np
import pytest

from contextdiff_ref.models.model_dir import load_model_dir
from contextdiff_ref.video.model_dir import inflate, save_video_model_dir
from export.build import BuildOptions, build_engine_dir
from runtime.lora import LoraSpec, lora_weights
from runtime.manifest import load_manifest
from runtime.metrics import psnr
from runtime.options import BuildBackend, Precision
from runtime.specs import Component
from runtime.video_editor import VideoEditor
from tests.runtime.lora_files import make_lora


def _video_engines(image_model, root, name):
    """The video model of ``image_model`` (2 frames, temporal layers seeded alike) and its fp32 engine directory."""
    model = save_video_model_dir(inflate(load_model_dir(image_model), 2, seed=3), root / f"{name}-model")
    build_engine_dir(model, root / name, BuildOptions(backend=BuildBackend.ONNXRUNTIME, precision=Precision.FP32))
    return root / name


@pytest.mark.slow
def test_an_image_lora_on_video_engines_equals_the_video_engines_of_the_merged_model(pixel_model_dir, tmp_path):
    """Measured bitwise (max |Δ| 0; the LoRA'd edit 28.0 dB from the base's), as for image engines: the video UNet's
    LoRA'd initializers are peft's merged weights exactly; the floor leaves room for a BLAS that rounds B·A differently."""
    lora = make_lora(pixel_model_dir, tmp_path / "a.safetensors", seed=0, merged_dir=tmp_path / "merged")
    base, merged = _video_engines(pixel_model_dir, tmp_path, "video"), _video_engines(tmp_path / "merged", tmp_path, "merged-video")
    changed = lora_weights(load_manifest(base), [LoraSpec(lora)])
    assert set(changed) == {Component.UNET, Component.TEXT_ENCODER} and len(changed[Component.UNET].initializers) >= 16
    video = np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)

    def edit(editor: VideoEditor) -> np.ndarray:
        return editor.edit(video, "a red circle", "a blue square", 3, 3.0, progress=False)

    want = edit(VideoEditor.from_dir(merged, backend="onnxruntime-cpu"))
    editor = VideoEditor.from_dir(base, backend="onnxruntime-cpu", loras=[(lora, 1.0)])
    got = edit(editor)
    editor.generator.set_loras([])
    plain = edit(editor)
    assert psnr(got, want) >= 100.0 and psnr(got, plain) < 60.0, (psnr(got, want), psnr(got, plain))
