"""The model directory (diffusers layout): checking, loading and saving it. Weights: safetensors only.

    model_index.json            {"_class_name": ..., "recommended_guidance_scale": 7.5 (optional),
                                 "unet_coordinate_channels": true (optional; contextdiff_ref/models/coordinates.py), ...}
    tokenizer/                  tokenizer.json, or vocab.json + merges.txt (CLIP BPE)
    text_encoder/               config.json + model.safetensors            (transformers CLIPTextModel)
    unet/                       config.json + diffusion_pytorch_model.safetensors (UNet2DConditionModel)
    adapter/                    config.json + diffusion_pytorch_model.safetensors (ContextAdapter)
    scheduler/                  scheduler_config.json (DDIM fields + shift_schedule)
    vae/  (optional)            config.json + diffusion_pytorch_model.safetensors (AutoencoderKL)

A Stable Diffusion 1.x/2.x directory in diffusers format plus an ``adapter/`` folder is a valid model
directory; its other folders (safety_checker/, feature_extractor/) are ignored.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from contextdiff_ref.models.adapter import ContextAdapter
from contextdiff_ref.models.coordinates import COORDINATE_CHANNELS, unet_forward
from runtime.errors import ContextDiffError, ModelDirectoryError
from runtime.files import atomic_directory
from runtime.schedule import SchedulerConfig
from runtime.validation import ModelLimits

logger = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
SCHEDULER_CONFIG = "scheduler_config.json"
WEIGHT_COMPONENTS = ("text_encoder", "unet", "adapter")  # folders with config.json + safetensors weights


@dataclass
class ModelComponents:
    """Everything a model directory holds, loaded."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    adapter: ContextAdapter
    scheduler_config: SchedulerConfig
    vae: AutoencoderKL | None = None
    recommended_guidance_scale: float | None = None
    unet_coordinate_channels: bool = False  # the UNet also sees x/y coordinate planes (contextdiff_ref/models/coordinates.py)

    def predict(self, sample: torch.Tensor, timestep: torch.Tensor | int, text: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction (B, C, H, W) for a sample (B, C, H, W) and text states (B, L, D)."""
        return unet_forward(self.unet, sample, timestep, text, coordinates=self.unet_coordinate_channels)


def model_limits(components: ModelComponents) -> ModelLimits:
    """Sizes and defaults a call is validated against (height/width must be multiples of ``pixel_factor``)."""
    unet, vae, adapter = components.unet.config, components.vae, components.adapter.config
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    sample_factor = math.lcm(2 ** (len(unet.block_out_channels) - 1), adapter.patch_size)
    size = unet.sample_size if isinstance(unet.sample_size, int) else unet.sample_size[0]
    width = unet.sample_size if isinstance(unet.sample_size, int) else unet.sample_size[1]
    return ModelLimits(
        num_train_timesteps=components.scheduler_config.num_train_timesteps,
        sample_channels=unet.out_channels,
        default_height=size * vae_scale,
        default_width=width * vae_scale,
        pixel_factor=sample_factor * vae_scale,
        vae_scale_factor=vae_scale,
        recommended_guidance_scale=components.recommended_guidance_scale,
    )


def runtime_tokenizer_json(components: ModelComponents, length: int) -> str:
    """The tokenizer as the runtime uses it (an engine directory's tokenizer.json): padded and truncated to the text
    encoder's length L."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(components.tokenizer.backend_tokenizer.to_str())
    tokenizer.enable_truncation(max_length=length)
    pad = components.tokenizer.pad_token
    tokenizer.enable_padding(length=length, pad_id=tokenizer.token_to_id(pad), pad_token=pad)
    return tokenizer.to_str(pretty=True)


def quiet_loading() -> None:
    """Turn off diffusers' and transformers' own progress bars and info logs (for command-line tools)."""
    import diffusers.utils.logging
    import transformers.utils.logging

    for library in (diffusers.utils.logging, transformers.utils.logging):
        library.disable_progress_bar()
        library.set_verbosity_error()


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelDirectoryError(f"missing file: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelDirectoryError(f"cannot read {path} as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelDirectoryError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def check_weights(folder: Path) -> None:
    if not folder.is_dir():
        raise ModelDirectoryError(f"missing folder: {folder}")
    _read_json(folder / "config.json")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.safetensors.index.json")):
        pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.ckpt"))
        hint = f" (found {', '.join(pickled)}: pickle weights are never loaded; convert them to safetensors)" if pickled else ""
        raise ModelDirectoryError(f"missing weight file: {folder}/*.safetensors{hint}")


def check_model_dir(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Raise :class:`ModelDirectoryError` naming the first missing or unreadable path; return model_index.json."""
    root = Path(path)
    if not root.is_dir():
        raise ModelDirectoryError(f"model directory not found: {root}")
    index = _read_json(root / MODEL_INDEX)
    tokenizer = root / "tokenizer"
    if not tokenizer.is_dir():
        raise ModelDirectoryError(f"missing folder: {tokenizer}")
    if not (tokenizer / "tokenizer.json").is_file() and not ((tokenizer / "vocab.json").is_file() and (tokenizer / "merges.txt").is_file()):
        raise ModelDirectoryError(f"missing file: {tokenizer}/tokenizer.json (or vocab.json + merges.txt)")
    for name in WEIGHT_COMPONENTS:
        check_weights(root / name)
    _read_json(root / "scheduler" / SCHEDULER_CONFIG)
    if (root / "vae").exists():
        check_weights(root / "vae")
    return index


def _guidance_from_index(index: dict[str, Any], path: Path) -> float | None:
    value = index.get("recommended_guidance_scale")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ModelDirectoryError(f"{path / MODEL_INDEX}: recommended_guidance_scale={value!r} must be a finite number >= 0")
    return float(value)


def _coordinates_from_index(index: dict[str, Any], path: Path, unet: UNet2DConditionModel) -> bool:
    value = index.get("unet_coordinate_channels", False)
    if not isinstance(value, bool):
        raise ModelDirectoryError(f"{path / MODEL_INDEX}: unet_coordinate_channels={value!r} must be true or false")
    extra = COORDINATE_CHANNELS if value else 0
    if unet.config.in_channels != unet.config.out_channels + extra:
        raise ModelDirectoryError(
            f"{path / 'unet'}: in_channels={unet.config.in_channels} must be out_channels ({unet.config.out_channels}) + {extra} "
            f"when model_index.json has unet_coordinate_channels={str(value).lower()}"
        )
    return value


def _load(folder: Path, loader: Callable[[], Any]) -> Any:
    try:
        return loader()
    except ContextDiffError:
        raise
    except Exception as exc:  # library loaders raise many types; the user needs the path and the reason
        raise ModelDirectoryError(f"cannot load {folder}: {type(exc).__name__}: {exc}") from exc


def load_model_dir(path: str | os.PathLike[str], *, torch_dtype: torch.dtype = torch.float32) -> ModelComponents:
    """Load every component of a model directory (checked first) onto the CPU."""
    root = Path(path)
    index = check_model_dir(root)
    weights = dict(torch_dtype=torch_dtype, use_safetensors=True)
    tokenizer = _load(root / "tokenizer", lambda: CLIPTokenizer.from_pretrained(root / "tokenizer"))
    text_encoder = _load(root / "text_encoder", lambda: CLIPTextModel.from_pretrained(root / "text_encoder", dtype=torch_dtype, use_safetensors=True))
    unet = _load(root / "unet", lambda: UNet2DConditionModel.from_pretrained(root / "unet", **weights))
    adapter = _load(root / "adapter", lambda: ContextAdapter.from_pretrained(root / "adapter", **weights))
    vae = _load(root / "vae", lambda: AutoencoderKL.from_pretrained(root / "vae", **weights)) if (root / "vae").exists() else None
    scheduler_path = root / "scheduler" / SCHEDULER_CONFIG
    scheduler_config = _load(scheduler_path, lambda: SchedulerConfig.from_dict(_read_json(scheduler_path)))
    for module in (text_encoder, unet, adapter, vae):
        if module is not None:
            module.eval().requires_grad_(False)
    return ModelComponents(tokenizer, text_encoder, unet, adapter, scheduler_config, vae, _guidance_from_index(index, root),
                           _coordinates_from_index(index, root, unet))


def model_index(*, vae: bool, recommended_guidance_scale: float | None = None, unet_coordinate_channels: bool = False) -> dict[str, Any]:
    """The model_index.json of a ContextDiff model directory."""
    index: dict[str, Any] = {
        "_class_name": "ContextDiffPipeline",
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "adapter": ["contextdiff_ref", "ContextAdapter"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    if vae:
        index["vae"] = ["diffusers", "AutoencoderKL"]
    if recommended_guidance_scale is not None:
        index["recommended_guidance_scale"] = recommended_guidance_scale
    if unet_coordinate_channels:
        index["unet_coordinate_channels"] = True
    return index


def save_model_dir(components: ModelComponents, path: str | os.PathLike[str], extra: Callable[[Path], dict[str, Any]] | None = None) -> Path:
    """Write a model directory atomically (:func:`atomic_directory`). ``extra(tmp)`` writes further folders into the
    temporary directory and returns entries to add to model_index.json (the video model)."""
    root = Path(path).resolve()
    with atomic_directory(root) as tmp:
        components.tokenizer.save_pretrained(tmp / "tokenizer")
        components.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        for name in ("unet", "adapter", "vae"):
            module = getattr(components, name)
            if module is not None:
                module.save_pretrained(tmp / name, safe_serialization=True)
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / SCHEDULER_CONFIG).write_text(json.dumps(components.scheduler_config.to_dict(), indent=2) + "\n")
        index = model_index(vae=components.vae is not None, recommended_guidance_scale=components.recommended_guidance_scale,
                            unet_coordinate_channels=components.unet_coordinate_channels)
        if extra is not None:
            index.update(extra(tmp))
        (tmp / MODEL_INDEX).write_text(json.dumps(index, indent=2) + "\n")  # written last
    logger.info("saved model directory %s", root)
    return root
