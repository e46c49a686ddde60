"""Lean ContextDiff runtime: schedule math, sampling loop and the engine-backed :class:`Generator`.

Importing this package never imports torch, diffusers or transformers; ``runtime.Generator`` (and with it ONNX
Runtime and tokenizers) loads on first access.
"""

from runtime.errors import ConfigError, ContextDiffError, InvalidArgumentError, ModelDirectoryError
from runtime.schedule import Schedule, SchedulerConfig

__all__ = ["ConfigError", "Generator", "ContextDiffError", "InvalidArgumentError", "ModelDirectoryError", "Schedule", "SchedulerConfig"]
__version__ = "0.1.0"
DEFAULT_MODEL_NAME = "shapes-contextdiff"  # the embedded default model; its engines go to engines/<this name>


def __getattr__(name: str):
    if name == "Generator":
        from runtime.generator import Generator

        return Generator
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
