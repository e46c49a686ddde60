"""Reading and writing videos through imageio: mp4 (and other ffmpeg formats) via imageio-ffmpeg, GIF via Pillow.
Torch-free: the runtime's video editor and the reference share it, with the edit-region masks read from such files
(:func:`read_mask`, grown by :func:`dilate`).

Frames are float32 (F, H, W, 3) in [0, 1], like the image API. mp4 is written with libx264 at ``-crf 0`` and full
chroma (yuv444p), so a round trip changes a pixel by at most 1/255; GIF is exact for up to 256 colours, but Pillow
merges identical consecutive frames into one (a still video written as GIF reads back shorter).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from runtime.errors import ContextDiffError, InvalidArgumentError
from runtime.files import atomic_path

GIF_SUFFIXES = (".gif",)
FFMPEG_SUFFIXES = (".mp4", ".mkv", ".mov")
VIDEO_SUFFIXES = FFMPEG_SUFFIXES + GIF_SUFFIXES


def _imageio():  # the imageio.v3 module
    try:
        import imageio.v3 as iio
    except ImportError:
        raise ContextDiffError("reading and writing videos needs imageio and imageio-ffmpeg: pip install 'contextdiff-deploy[video]'") from None
    return iio


def read_video(path: str | os.PathLike[str]) -> np.ndarray:
    """All frames of the video at ``path`` -> (F, H, W, 3) float32 in [0, 1] (alpha dropped, grey expanded)."""
    p = Path(path)
    if not p.is_file():
        raise InvalidArgumentError("video", str(p), "an existing video file (mp4 or GIF)")
    iio = _imageio()
    try:
        frames = np.asarray(iio.imread(p, index=None))
    except Exception as exc:  # imageio's plugins raise many types for unreadable files
        raise InvalidArgumentError("video", str(p), f"a readable video (mp4 or GIF); imageio said {type(exc).__name__}: {exc}") from None
    if frames.ndim == 3:  # one frame of a GIF, or grey frames
        frames = frames[None] if frames.shape[-1] in (3, 4) and p.suffix.lower() in GIF_SUFFIXES else frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        raise InvalidArgumentError("video", str(p), f"frames of shape (F, H, W, 3); this file decodes to {frames.shape}")
    frames = frames[..., :3] if frames.shape[-1] != 1 else np.repeat(frames, 3, axis=-1)
    scale = 1.0 / np.iinfo(frames.dtype).max if np.issubdtype(frames.dtype, np.integer) else 1.0
    return (frames.astype(np.float32) * scale).clip(0.0, 1.0)


def write_video(path: str | os.PathLike[str], frames: np.ndarray, fps: float = 8.0) -> Path:
    """Write (F, H, W, 3) frames in [0, 1] as mp4 (lossless H.264) or GIF by the suffix; written to a temporary
    sibling and renamed into place, so ``path`` never holds a half-written video."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InvalidArgumentError("frames", f"array of shape {frames.shape}", "shape (F, H, W, 3) with values in [0, 1]")
    if not (isinstance(fps, (int, float)) and 0 < fps <= 240):
        raise InvalidArgumentError("fps", fps, "a number in (0, 240]")
    p = Path(path)
    iio = _imageio()
    data = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if p.suffix.lower() not in GIF_SUFFIXES + FFMPEG_SUFFIXES:
        raise InvalidArgumentError("output", str(p), f"a path ending in one of {', '.join(VIDEO_SUFFIXES)}")
    with atomic_path(p) as tmp:
        if p.suffix.lower() in GIF_SUFFIXES:
            iio.imwrite(tmp, data, duration=1000.0 / fps, loop=0)
        else:
            iio.imwrite(tmp, data, fps=fps, codec="libx264", pixelformat="yuv444p", macro_block_size=1, output_params=["-crf", "0"])
    return p


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` (..., H, W) bool grown by ``pixels`` steps to the 4 neighbours (a diamond of that radius)."""
    out = np.asarray(mask, dtype=bool).copy()
    for _ in range(pixels):
        grown = out.copy()
        grown[..., 1:, :] |= out[..., :-1, :]
        grown[..., :-1, :] |= out[..., 1:, :]
        grown[..., :, 1:] |= out[..., :, :-1]
        grown[..., :, :-1] |= out[..., :, 1:]
        out = grown
    return out


def read_mask(path: str | os.PathLike[str], num_frames: int, dilation: int = 0) -> np.ndarray:
    """An edit region from a video file: (num_frames, H, W) bool, True where a frame's largest channel is > 0.5,
    grown by ``dilation`` pixels (:func:`dilate`). One frame (a still GIF: its writers merge identical frames) applies
    to every frame."""
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 0:
        raise InvalidArgumentError("mask_dilation", dilation, "an integer >= 0 (pixels)")
    region = read_video(path).max(axis=-1) > 0.5
    if region.shape[0] == 1:
        region = np.repeat(region, num_frames, axis=0)
    return dilate(region, dilation)
