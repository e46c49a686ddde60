"""Lean ContextDiff runtime: schedule math, sampling loop and the engine-backed :class:`Generator`.

Importing this package never imports torch, diffusers or transformers; ``runtime.Generator`` and
``runtime.VideoEditor`` (and with them ONNX Runtime and tokenizers) load on first access.
"""

from runtime.errors import ConfigError, ContextDiffError, InvalidArgumentError, ModelDirectoryError
from runtime.schedule import Schedule, SchedulerConfig

__all__ = ["ConfigError", "ContextDiffError", "Generator", "InvalidArgumentError", "ModelDirectoryError", "Schedule", "SchedulerConfig", "VideoEditor"]
__version__ = "0.1.0"
DEFAULT_MODEL_NAME = "shapes-contextdiff"  # the embedded default model; its engines go to engines/<this name>
DEFAULT_VIDEO_MODEL_NAME = "shapes-video"  # the embedded default video model (contextdiff_ref/models/shapes-video)


def __getattr__(name: str):
    if name == "Generator":
        from runtime.generator import Generator

        return Generator
    if name == "VideoEditor":
        from runtime.video_editor import VideoEditor

        return VideoEditor
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
