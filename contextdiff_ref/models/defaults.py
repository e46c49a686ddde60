"""Where the embedded default model lives: ``contextdiff_ref/models/`` in the package.

``shapes-contextdiff`` is the ContextDiff model trained on the shapes dataset (``python -m contextdiff_ref.train``;
how it was trained and how it scores: docs/shapes-model.md). The no-adapter baseline it is compared
with (``python -m benchmarks.alignment --baseline DIR``) is trained by the same script with ``--baseline``.

``shapes-video-base`` is that model taught the moving-shapes vocabulary (``python -m contextdiff_ref.video.build_base``):
the image model video editing inflates. ``shapes-video`` is the embedded default *video* model: the video base
inflated to 8 frames and tuned one-shot (``python -m contextdiff_ref.tune_video``) on the source clip shipped beside
it (``source.gif``, clip 0 of the editing evaluation) captioned in ``source.txt``. How both were
made and how they edit: docs/guides/video-editing.md.

``shapes-latent-contextdiff`` is the latent, Stable-Diffusion-shaped ContextDiff model that "Train your own"
produces (``python -m benchmarks.finetune_shapes --ship contextdiff_ref/models``): a tiny VAE and the recipe
fine-tuning uses by default — the shipped model that exercises the VAE.
"""

from __future__ import annotations

from pathlib import Path

from contextdiff_ref.models.model_dir import check_model_dir, check_weights
from runtime import DEFAULT_MODEL_NAME, DEFAULT_VIDEO_MODEL_NAME

SHIPPED_MODELS = Path(__file__).resolve().parent
VIDEO_BASE_NAME = "shapes-video-base"
VIDEO_MODEL_NAME = DEFAULT_VIDEO_MODEL_NAME  # its engines: engines/<this name>, the runtime's `edit` default
LATENT_MODEL_NAME = "shapes-latent-contextdiff"


def default_model_dir() -> Path:
    """Path of the embedded default model directory (checked: a broken install names the missing file)."""
    path = SHIPPED_MODELS / DEFAULT_MODEL_NAME
    check_model_dir(path)
    return path


def latent_model_dir() -> Path:
    """Path of the shipped latent shapes model, checked."""
    path = SHIPPED_MODELS / LATENT_MODEL_NAME
    check_model_dir(path)
    return path


def default_video_base_dir() -> Path:
    """Path of the embedded video base (an image model directory; checked like :func:`default_model_dir`)."""
    path = SHIPPED_MODELS / VIDEO_BASE_NAME
    check_model_dir(path)
    return path


def default_video_model_dir() -> Path:
    """Path of the embedded default video model directory (a tuned video model; checked)."""
    from contextdiff_ref.video.model_dir import TEMPORAL, VIDEO_ADAPTER

    path = SHIPPED_MODELS / VIDEO_MODEL_NAME
    check_model_dir(path)
    for name in (TEMPORAL, VIDEO_ADAPTER):
        check_weights(path / name)
    return path
