"""The video model directory: an image model directory (``contextdiff_ref.models.model_dir``) plus

    temporal/        config.json + diffusion_pytorch_model.safetensors (TemporalLayers: one layer per transformer block)
    video_adapter/   config.json + diffusion_pytorch_model.safetensors (VideoContextAdapter)
    model_index.json + "num_frames": F, "contextual": true|false (false: the r ≡ 0 baseline, plain Tune-A-Video)

``unet/`` holds the 2-D UNet's weights (after tuning: with its tuned query projections) and ``adapter/`` the image
adapter, so the directory still loads as an image model. :func:`inflate` makes the video model from an image model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AddedToken

from contextdiff_ref.models.adapter import ContextAdapter
from contextdiff_ref.models.model_dir import MODEL_INDEX, ModelComponents, _load, _read_json, check_weights, load_model_dir, save_model_dir
from contextdiff_ref.video.adapter import VideoContextAdapter
from contextdiff_ref.video.unet import TemporalLayers, VideoUNet
from runtime.errors import InvalidArgumentError, ModelDirectoryError

logger = logging.getLogger(__name__)

TEMPORAL, VIDEO_ADAPTER = "temporal", "video_adapter"


@dataclass
class VideoComponents:
    """A loaded video model. ``components`` is what the image pipeline and the objective use on frames folded into
    the batch: its ``unet`` is the :class:`VideoUNet`, its ``adapter`` the :class:`VideoContextAdapter`."""

    components: ModelComponents
    image_adapter: ContextAdapter  # kept so the directory stays a complete image model
    contextual: bool = True  # False: r ≡ 0 (the video adapter's output projection is zero and never trained)

    @property
    def video_unet(self) -> VideoUNet:
        return self.components.unet

    @property
    def video_adapter(self) -> VideoContextAdapter:
        return self.components.adapter

    @property
    def num_frames(self) -> int:
        return self.video_unet.num_frames

    def tuned_parameters(self) -> list[torch.nn.Parameter]:
        """One-shot tuning's parameters (§7): temporal layers, attention queries and (ContextDiff only) the adapter."""
        return self.video_unet.tuned_parameters() + (list(self.video_adapter.parameters()) if self.contextual else [])


def add_words(components: ModelComponents, words: Sequence[str], seed: int = 0) -> list[str]:
    """Make each of ``words`` one whole-word token (transformers' ``add_tokens``; new embedding rows from
    ``resize_token_embeddings``, i.e. the mean and covariance of the trained rows, drawn with ``seed`` from a
    forked torch generator, so the rows do not depend on what ran before). Returns the words added."""
    tokenizer = components.tokenizer
    new = [w for w in words if len(tokenizer.tokenize(w)) != 1]
    for word in new:
        if not word or not word.isalnum():
            raise InvalidArgumentError("add_words", word, "whole words of letters and digits")
    if new:
        tokenizer.add_tokens([AddedToken(w, single_word=True) for w in new])
        with torch.random.fork_rng(devices=[]):  # transformers draws the new rows from torch's global generator
            torch.manual_seed(seed)
            components.text_encoder.resize_token_embeddings(len(tokenizer))
        components.text_encoder.requires_grad_(False)
        logger.info("added %s to the tokenizer (%d tokens)", new, len(tokenizer))
    return new


def inflate(image: ModelComponents, num_frames: int, *, contextual: bool = True, words: Sequence[str] = (), seed: int = 0) -> VideoComponents:
    """The video model of ``image`` (whose modules it takes over: the UNet is inflated in place): sparse-causal
    self-attention, fresh temporal layers (seeded; output 0), the video adapter (its new layers seeded) copied from the image adapter
    (zero output for the baseline, ``contextual=False``), ``words`` added to the tokenizer (their embeddings seeded too)."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 2:
        raise InvalidArgumentError("num_frames", num_frames, "an integer >= 2")
    add_words(image, words, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        temporal = TemporalLayers.for_unet(image.unet, num_frames)
        video_adapter = VideoContextAdapter.from_image_adapter(image.adapter, num_frames)
    if temporal.dtype != image.unet.dtype:
        temporal = temporal.to(image.unet.dtype)
    if not contextual:
        with torch.no_grad():
            video_adapter.proj_out.weight.zero_()
            video_adapter.proj_out.bias.zero_()
    for module in (temporal, video_adapter):
        module.eval().requires_grad_(False)
    folded = dataclasses.replace(image, unet=VideoUNet(image.unet, temporal), adapter=video_adapter)
    return VideoComponents(folded, image.adapter, contextual)


def save_video_model_dir(video: VideoComponents, path: str | os.PathLike[str]) -> Path:
    """Write the video model directory atomically (like :func:`contextdiff_ref.models.model_dir.save_model_dir`)."""

    def extra(tmp: Path) -> dict[str, Any]:
        video.video_unet.temporal.save_pretrained(tmp / TEMPORAL, safe_serialization=True)
        video.video_adapter.save_pretrained(tmp / VIDEO_ADAPTER, safe_serialization=True)
        return {"_class_name": "VideoEditPipeline", "temporal": ["contextdiff_ref", "TemporalLayers"],
                "video_adapter": ["contextdiff_ref", "VideoContextAdapter"], "num_frames": video.num_frames, "contextual": video.contextual}  # fmt: skip

    image = dataclasses.replace(video.components, unet=video.video_unet.unet, adapter=video.image_adapter)
    return save_model_dir(image, path, extra=extra)


def is_video_model_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a video model (its ``temporal/`` layers), not only an image model."""
    return (Path(path) / TEMPORAL).exists()


def load_video_model_dir(path: str | os.PathLike[str], *, torch_dtype: torch.dtype = torch.float32) -> VideoComponents:
    """Load a video model directory; an image model directory (no ``temporal/``) is refused with what to do."""
    root = Path(path)
    if root.is_dir() and not is_video_model_dir(root) and (root / MODEL_INDEX).is_file():
        raise ModelDirectoryError(f"{root} has no temporal weights ({root / TEMPORAL}): it is an image model directory; "
                                  "tune it on a video first (python -m contextdiff_ref.tune_video --model DIR ...)")  # fmt: skip
    image = load_model_dir(root, torch_dtype=torch_dtype)
    index = _read_json(root / MODEL_INDEX)
    for name in (TEMPORAL, VIDEO_ADAPTER):
        check_weights(root / name)
    weights = dict(torch_dtype=torch_dtype, use_safetensors=True)
    temporal = _load(root / TEMPORAL, lambda: TemporalLayers.from_pretrained(root / TEMPORAL, **weights))
    video_adapter = _load(root / VIDEO_ADAPTER, lambda: VideoContextAdapter.from_pretrained(root / VIDEO_ADAPTER, **weights))
    num_frames, contextual = index.get("num_frames"), index.get("contextual", True)
    if num_frames != temporal.config.num_frames or num_frames != video_adapter.config.num_frames:
        raise ModelDirectoryError(f"{root / MODEL_INDEX}: num_frames={num_frames!r} must equal the temporal layers' "
                                  f"({temporal.config.num_frames}) and the video adapter's ({video_adapter.config.num_frames})")  # fmt: skip
    if not isinstance(contextual, bool):
        raise ModelDirectoryError(f"{root / MODEL_INDEX}: contextual={contextual!r} must be true or false")
    for module in (temporal, video_adapter):
        module.eval().requires_grad_(False)
    folded = dataclasses.replace(image, unet=_load(root / "unet", lambda: VideoUNet(image.unet, temporal)), adapter=video_adapter)
    return VideoComponents(folded, image.adapter, contextual)
