"""VideoEditPipeline: Tune-A-Video-style editing with the contextual trajectory (method doc §7), reference PyTorch.

A video's F frames are folded into the batch and run through :class:`contextdiff_ref.pipelines.text_to_image.ContextDiffPipeline`
with the video model's components (the inflated UNet, the video adapter), so inversion, sampling, guidance and the
schedule are the image pipeline's own code:
1. encode the frames to x_0 (pixels to [-1, 1], or VAE latents);
2. contextual DDIM inversion with the source prompt, no guidance (§7) -> x_T (or, with ``strength`` < 1, part way);
3. contextual DDIM (§5) from there with the edited prompt and classifier-free guidance; decode.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline
from contextdiff_ref.video.model_dir import VideoComponents, load_video_model_dir, save_video_model_dir
from runtime.frame_folded_editing import FrameFoldedEditing, recorder
from runtime.validation import validate_caption

logger = logging.getLogger(__name__)


class VideoEditPipeline(FrameFoldedEditing):
    """Edit a video with a (one-shot tuned) video model.

    >>> pipe = VideoEditPipeline.from_pretrained("path/to/video_model")
    >>> frames = pipe.edit(video, "a red circle moving from the top left to the top right",
    ...                    "a blue square moving from the top left to the top right")  # (F, H, W, 3) in [0, 1]

    ``clip_sample``: x̂_0 clipping for inversion and sampling alike. Off by default: clipping makes DDIM inversion
    lossy (the shapes model, clipping on, tuned: invert-then-reconstruct at 9–10 dB PSNR; off: 31–43 dB), so an edit
    would not keep the source's structure. None uses the model's scheduler setting (method doc §7 as written).
    """

    def __init__(self, video: VideoComponents, device: str | torch.device = "cpu", *, clip_sample: bool | None = False) -> None:
        self.video = video
        self.pipe = ContextDiffPipeline(video.components, device=device)
        self.pipe.schedule = self.pipe.schedule.with_clip_sample(clip_sample)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], *, device: str | torch.device = "cpu", torch_dtype: torch.dtype = torch.float32,
                        clip_sample: bool | None = False) -> VideoEditPipeline:  # fmt: skip
        """Load a video model directory (:mod:`contextdiff_ref.video.model_dir`); an image model directory is
        refused with what to do."""
        return cls(load_video_model_dir(path, torch_dtype=torch_dtype), device=device, clip_sample=clip_sample)

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        save_video_model_dir(self.video, path)

    @property
    def num_frames(self) -> int:
        return self.video.num_frames

    @property
    def image_pipeline(self) -> ContextDiffPipeline:
        return self.pipe

    def invert(self, video: np.ndarray, source_prompt: str, num_inference_steps: int = 50, *, strength: float = 1.0,
               progress: bool = True, trajectory: list[np.ndarray] | None = None) -> np.ndarray:  # fmt: skip
        """Steps 1–2: x_T (F, C, h, w) float32 of the frames, inverted with the source prompt (x_t part way for
        ``strength`` < 1); ``trajectory`` as in :meth:`runtime.frame_folded_editing.FrameFoldedEditing.invert`."""
        frames = self.check_video(video)
        validate_caption("source_prompt", source_prompt)
        record = None if trajectory is None else recorder(trajectory)  # checks it
        x_0 = self.pipe.encode(frames)
        if trajectory is not None:
            trajectory.append(x_0)
        return self.pipe.invert(x_0, [source_prompt] * self.num_frames, num_inference_steps, strength=strength, progress=progress, callback=record)
