"""Lean ContextDiff runtime: schedule math, sampling loop and (later) the engine-backed Generator.

Importing this package never imports torch, diffusers or transformers.
"""

from runtime.errors import ConfigError, ContextDiffError, InvalidArgumentError, ModelDirectoryError
from runtime.schedule import Schedule, SchedulerConfig

__all__ = ["ConfigError", "ContextDiffError", "InvalidArgumentError", "ModelDirectoryError", "Schedule", "SchedulerConfig"]
__version__ = "0.1.0"
