"""runtime.VideoEditor: text-to-video editing (method doc §7) from a video model's engine directory, with no torch.

The engines hold the inflated UNet and the video adapter with the video's F frames folded into the batch (F fixed
at export, recorded in the manifest), so an edit is the image runtime's own stages on F "images": the
:class:`runtime.generator.Generator` over the directory encodes the frames (the VAE encoder for latent models),
inverts them with the source prompt (:func:`runtime.sampling.invert`, the reference's loop) and samples back with
the edited prompt (:func:`runtime.sampling.generate`). Arguments, defaults and results are those of the reference
``contextdiff_ref.video.pipeline.VideoEditPipeline``; its argument checks are the same functions
(:mod:`runtime.validation`).

>>> editor = VideoEditor.from_dir("engines/shapes-video")
>>> frames = editor.edit(video, "a yellow square moving from the top right to the bottom right",
...                      "a magenta circle moving from the top right to the bottom right", strength=0.93, guidance_scale=15)
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import numpy as np

from runtime.errors import InvalidArgumentError
from runtime.frame_folded_editing import FrameFoldedEditing, recorder
from runtime.generator import Generator
from runtime.manifest import EngineManifest, load_manifest
from runtime.options import OpenVINOPrecision
from runtime.validation import validate_caption

logger = logging.getLogger(__name__)


def _require_video(manifest: EngineManifest, engine_dir: str | os.PathLike[str] | None = None) -> EngineManifest:
    if manifest.num_frames is None:
        raise InvalidArgumentError("engine_dir", str(engine_dir if engine_dir is not None else manifest.root),
                                   "a video model's engine directory (its manifest records num_frames): this one is an image model's; "
                                   "build one with `python export/build_engines.py --model VIDEO_MODEL_DIR`")  # fmt: skip
    return manifest


class VideoEditor(FrameFoldedEditing):
    """Edit videos with the engines of a (one-shot tuned) video model.

    ``clip_sample``: x̂_0 clipping for inversion and sampling alike; off by default, as in the reference (clipping
    makes DDIM inversion lossy); None uses the engine directory's scheduler setting.
    """

    def __init__(self, generator: Generator, *, clip_sample: bool | None = False) -> None:
        _require_video(generator.manifest)
        self.generator = generator
        generator.schedule = generator.schedule.with_clip_sample(clip_sample)

    @classmethod
    def from_dir(cls, engine_dir: str | os.PathLike[str], backend: str = "auto", device: int | None = None,
                 precision: str | OpenVINOPrecision | None = None, *, clip_sample: bool | None = False, loras: Sequence[Any] = (),
                 ignore_unmatched: bool = False) -> VideoEditor:  # fmt: skip
        """Validate ``engine_dir`` (as ``Generator.from_dir`` does: format, sha256 of every artifact, plans) and load
        its engines; ``backend``, ``device``, ``precision`` and ``loras`` as for ``Generator.from_dir`` (switch them
        with ``editor.generator.set_loras``). An image model's engine directory is refused with what to build instead."""
        manifest = _require_video(load_manifest(engine_dir), engine_dir)
        return cls(Generator.load(manifest, backend, device, precision, loras=loras, ignore_unmatched=ignore_unmatched), clip_sample=clip_sample)

    def close(self) -> None:
        self.generator.close()

    @property
    def num_frames(self) -> int:
        return int(self.generator.manifest.num_frames)  # type: ignore[arg-type]

    @property
    def backend(self) -> str:
        return self.generator.backend

    @property
    def image_pipeline(self) -> Generator:
        return self.generator

    def invert(self, video: np.ndarray, source_prompt: str, num_inference_steps: int = 50, *, strength: float = 1.0,
               progress: bool = True, trajectory: list[np.ndarray] | None = None) -> np.ndarray:  # fmt: skip
        """x_T (F, C, h, w) float32 of the frames, inverted with the source prompt (x_t part way for ``strength`` < 1):
        1. encode the frames to x_0; 2. contextual DDIM inversion, no guidance (method doc §7). ``trajectory`` as in
        :meth:`runtime.frame_folded_editing.FrameFoldedEditing.invert`."""
        frames = self.check_video(video)
        validate_caption("source_prompt", source_prompt)
        gen = self.generator
        gen.validate([source_prompt] * self.num_frames, num_inference_steps=num_inference_steps, guidance_scale=1.0, height=frames.shape[1],
                     width=frames.shape[2], seed=0)  # the engines' profiles take this size, before the VAE encoder runs; inversion draws no noise  # fmt: skip
        x_0 = gen.encode_images(frames)  # 1.
        record = None if trajectory is None else recorder(trajectory)  # checks it
        if trajectory is not None:
            trajectory.append(x_0)
        return gen.invert(x_0, [source_prompt] * self.num_frames, num_inference_steps, strength=strength, progress=progress, callback=record)  # 2.
