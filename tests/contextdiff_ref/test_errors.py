"""Bad input: a clear error naming the argument, its value and what is allowed — never a deep traceback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline
from runtime.errors import ConfigError, ContextDiffError, InvalidArgumentError, ModelDirectoryError

BAD_CALLS = [
    (dict(prompt=[]), "prompt"),
    (dict(prompt=3), "prompt"),
    (dict(prompt=["ok", None]), "prompt"),
    (dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"]), "negative_prompt"),
    (dict(negative_prompt=5), "negative_prompt"),
    (dict(seed="1"), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(seed=-1), "seed"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(num_inference_steps=1001), "num_inference_steps"),
    (dict(num_inference_steps=2.0), "num_inference_steps"),
    (dict(eta=-0.1), "eta"),
    (dict(eta=1.5), "eta"),
    (dict(guidance_scale=float("nan")), "guidance_scale"),
    (dict(guidance_scale=float("inf")), "guidance_scale"),
    (dict(guidance_scale=-1.0), "guidance_scale"),
    (dict(height=33), "height"),
    (dict(width=0), "width"),
    (dict(width=10**6), "width"),
    (dict(latents=np.zeros((1, 3, 16, 16), np.float32)), "latents"),
    (dict(latents=np.zeros((1, 3, 32, 32), np.float64)), "latents"),
    (dict(latents=[[0.0]]), "latents"),
    (dict(latents=np.full((1, 3, 32, 32), np.nan, np.float32)), "latents"),
    (dict(output_type="jpg"), "output_type"),
    (dict(callback="not callable"), "callback"),
]  # fmt: skip


@pytest.mark.parametrize("kwargs,name", BAD_CALLS, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD_CALLS)])
def test_bad_call_arguments(pixel_pipe, kwargs, name):
    kwargs = {"prompt": "a red circle at the top left", **kwargs}
    with pytest.raises(InvalidArgumentError) as info:
        pixel_pipe(num_inference_steps=kwargs.pop("num_inference_steps", 2), progress=False, **kwargs)
    message = str(info.value)
    assert message.startswith(f"invalid {name}=") and ":" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, ContextDiffError)


def test_latent_model_size_factor(latent_pipe):
    # 2 (VAE) x lcm(2 (UNet downsampling), 2 (adapter patch)) = 4
    assert latent_pipe.limits.pixel_factor == 4
    with pytest.raises(InvalidArgumentError, match="multiple of 4"):
        latent_pipe("x", height=30, num_inference_steps=1, progress=False)


def _broken_copy(src, tmp_path, name="m"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("remove", ["unet", "adapter", "tokenizer", "scheduler", "text_encoder", "model_index.json",
                                    "unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                                    "adapter/config.json", "tokenizer/tokenizer.json"])  # fmt: skip
def test_missing_parts_of_the_model_directory_are_named(pixel_model_dir, tmp_path, remove):
    root = _broken_copy(pixel_model_dir, tmp_path)
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ModelDirectoryError) as info:
        ContextDiffPipeline.from_pretrained(root)
    assert str(root / remove.split("/")[0]) in str(info.value)


def test_missing_model_directory(tmp_path):
    with pytest.raises(ModelDirectoryError, match="not found"):
        ContextDiffPipeline.from_pretrained(tmp_path / "nope")


def test_pickle_weights_are_refused(pixel_model_dir, tmp_path):
    root = _broken_copy(pixel_model_dir, tmp_path)
    (root / "unet" / "diffusion_pytorch_model.safetensors").rename(root / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelDirectoryError, match="pickle weights are never loaded"):
        ContextDiffPipeline.from_pretrained(root)


def test_corrupted_weights_name_the_folder(pixel_model_dir, tmp_path):
    root = _broken_copy(pixel_model_dir, tmp_path)
    (root / "adapter" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ModelDirectoryError, match="adapter"):
        ContextDiffPipeline.from_pretrained(root)


def test_malformed_json(pixel_model_dir, tmp_path):
    root = _broken_copy(pixel_model_dir, tmp_path)
    (root / "model_index.json").write_text("{not json")
    with pytest.raises(ModelDirectoryError, match="model_index.json"):
        ContextDiffPipeline.from_pretrained(root)


@pytest.mark.parametrize("key,value", [("beta_schedule", "cosine"), ("prediction_type", "flow"), ("shift_schedule", "cubic")])
def test_unknown_scheduler_values(pixel_model_dir, tmp_path, key, value):
    root = _broken_copy(pixel_model_dir, tmp_path)
    path = root / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    with pytest.raises(ConfigError, match=f"{key}={value!r}"):
        ContextDiffPipeline.from_pretrained(root)


def test_bad_adapter_config_value(pixel_model_dir, tmp_path):
    root = _broken_copy(pixel_model_dir, tmp_path)
    path = root / "adapter" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "patch_size": 0}))
    with pytest.raises(ContextDiffError, match="patch_size=0"):
        ContextDiffPipeline.from_pretrained(root)


def test_bad_recommended_guidance(pixel_model_dir, tmp_path):
    root = _broken_copy(pixel_model_dir, tmp_path)
    path = root / "model_index.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "recommended_guidance_scale": "high"}))
    with pytest.raises(ModelDirectoryError, match="recommended_guidance_scale"):
        ContextDiffPipeline.from_pretrained(root)
