"""A LoRA of the base image model on a video model's engines (the inflated UNet: the image UNet's modules under
``unet.``, beside the temporal layers), applied at load without rebuilding."""

from __future__ import annotations

import numpy as np
import pytest

from contextdiff_ref.models.model_dir import load_model_dir
from contextdiff_ref.video.model_dir import inflate, save_video_model_dir
from contextdiff_ref.video.pipeline import VideoEditPipeline
from export.build import BuildOptions, build_engine_dir
from runtime.lora import LoraSpec, lora_weights
from runtime.manifest import load_manifest
from runtime.metrics import psnr
from runtime.options import BuildBackend, Precision
from runtime.specs import Component
from runtime.video_editor import VideoEditor
from tests.parity import record
from tests.runtime.lora_files import make_lora

# measured on 1 thread of an AMD EPYC (AVX-512), 2026-12-05: LoRA'd engines vs the merged model's reference 132.6 dB,
# the base's engines vs its reference 134.0; the LoRA'd edit 28.0 dB from the base's
LORA_DB = 110.0


def _video_model(image_model, root, name):
    """The video model of ``image_model`` (2 frames, temporal layers seeded alike)."""
    return save_video_model_dir(inflate(load_model_dir(image_model), 2, seed=3), root / f"{name}-model")


@pytest.mark.slow
def test_an_image_lora_on_video_engines_equals_the_merged_model(pixel_model_dir, tmp_path):
    """The base's video engines with the LoRA applied at load edit as the reference does with the peft-merged model
    (an oracle that shares no runtime code); the LoRA'd
    edit is far from the base's, and removing the LoRA gives the base's back."""
    lora = make_lora(pixel_model_dir, tmp_path / "a.safetensors", seed=0, merged_dir=tmp_path / "merged")
    base = _video_model(pixel_model_dir, tmp_path, "video")
    build_engine_dir(base, tmp_path / "video", BuildOptions(backend=BuildBackend.ONNXRUNTIME, precision=Precision.FP32))
    changed = lora_weights(load_manifest(tmp_path / "video"), [LoraSpec(lora)])
    assert set(changed) == {Component.UNET, Component.TEXT_ENCODER} and len(changed[Component.UNET].initializers) >= 16
    video = np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)

    def edit(editor) -> np.ndarray:
        return editor.edit(video, "a red circle", "a blue square", 3, 3.0, progress=False)

    want = edit(VideoEditPipeline.from_pretrained(_video_model(tmp_path / "merged", tmp_path, "merged-video")))
    base_ref = edit(VideoEditPipeline.from_pretrained(base))
    editor = VideoEditor.from_dir(tmp_path / "video", backend="onnxruntime-cpu", loras=[(lora, 1.0)])
    got = edit(editor)
    editor.generator.set_loras([])
    plain = edit(editor)
    record(lora_vs_merged_reference=psnr(got, want), base_vs_base_reference=psnr(plain, base_ref), lora_vs_base=psnr(got, plain))
    assert psnr(got, want) >= LORA_DB and psnr(plain, base_ref) >= LORA_DB and psnr(got, plain) < 60.0, (psnr(got, want), psnr(plain, base_ref), psnr(got, plain))
