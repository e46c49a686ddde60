"""What the reference ``contextdiff_ref.video.pipeline.VideoEditPipeline`` and :class:`runtime.video_editor.VideoEditor`
share: an edit is an image pipeline run on a video's F frames folded into the batch (method doc §7), so checking the
frames, :meth:`FrameFoldedEditing.edit` (invert, then sample) and :meth:`FrameFoldedEditing.sample` are one code over
either image pipeline — the reference ``ContextDiffPipeline`` or the engine-backed ``Generator``, which take the same
call arguments. Only the inversion (steps 1–2), which encodes the frames where each pipeline keeps them, is the
subclasses' own. Torch-free.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.validation import inverted_size, validate_caption, validate_video


class FrameFoldedEditing:
    """Base of the two video editors: subclasses give ``num_frames``, ``image_pipeline`` (called like
    ``Generator.__call__``, with ``limits``) and :meth:`invert`."""

    @property
    def num_frames(self) -> int:
        raise NotImplementedError

    @property
    def image_pipeline(self) -> Any:
        raise NotImplementedError

    def invert(self, video: np.ndarray, source_prompt: str, num_inference_steps: int = 50, *, strength: float = 1.0,
               progress: bool = True) -> np.ndarray:  # fmt: skip
        """Steps 1–2: x_T (F, C, h, w) float32 of the frames, inverted with the source prompt (x_t part way for
        ``strength`` < 1)."""
        raise NotImplementedError

    def check_video(self, video: np.ndarray) -> np.ndarray:
        """The frames as float32 (F, H, W, 3) in [0, 1], or an error saying what the model takes."""
        return validate_video(video, self.num_frames, self.image_pipeline.limits)

    def edit(self, video: np.ndarray, source_prompt: str, prompt: str, num_inference_steps: int = 50, guidance_scale: float | None = None,
             seed: int | None = None, *, strength: float = 1.0, negative_prompt: str | None = None, eta: float = 0.0,
             progress: bool = True) -> np.ndarray:  # fmt: skip
        """Frames (F, H, W, 3) float32 in [0, 1] of ``video`` edited from ``source_prompt`` to ``prompt``: :meth:`invert`,
        then 3. contextual DDIM (§5) with the edited prompt and classifier-free guidance.
        ``guidance_scale=None`` uses the model's recommendation (7.5 if none); ``seed`` draws the step noise when
        ``eta`` > 0 (with eta = 0 the edit is deterministic). ``strength`` < 1 inverts only part way and samples back
        from there (the last ⌊n · strength⌋ of n steps, diffusers' image-to-image rule): it keeps more of the
        source's structure; 1 is method doc §7 as written. ``negative_prompt`` is the unconditional branch of the
        guidance (e.g. the source prompt, steering away from what the edit replaces)."""
        validate_caption("prompt", prompt)
        x_T = self.invert(video, source_prompt, num_inference_steps, strength=strength, progress=progress)
        return self.sample(x_T, prompt, num_inference_steps, guidance_scale, seed, strength=strength, negative_prompt=negative_prompt, eta=eta,
                           progress=progress)  # fmt: skip

    def sample(self, x_T: np.ndarray, prompt: str, num_inference_steps: int = 50, guidance_scale: float | None = None, seed: int | None = None,
               *, strength: float = 1.0, negative_prompt: str | None = None, eta: float = 0.0, progress: bool = True) -> np.ndarray:  # fmt: skip
        """Step 3 of :meth:`edit` from :meth:`invert`'s x_T (with the same steps and ``strength``): one inversion
        serves several edits of a video."""
        validate_caption("prompt", prompt)
        height, width = inverted_size(x_T, self.num_frames, self.image_pipeline.limits)
        negative = None if negative_prompt is None else [negative_prompt] * self.num_frames
        out = self.image_pipeline([prompt] * self.num_frames, negative, num_inference_steps, guidance_scale, eta=eta, seed=seed, latents=x_T,
                                  height=height, width=width, strength=strength, progress=progress)  # fmt: skip
        return out.images
