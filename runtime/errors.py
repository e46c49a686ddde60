"""The package's one exception hierarchy.

Every error raised on purpose by ``contextdiff_ref``, ``export`` and ``runtime`` derives from
:class:`ContextDiffError`. Argument and configuration errors also derive from :class:`ValueError`,
so callers that already catch ``ValueError`` keep working.
"""

from __future__ import annotations

from typing import Any


class ContextDiffError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidArgumentError(ContextDiffError, ValueError):
    """A public function was called with a value it does not accept.

    The message names the argument, the value received and what is allowed.
    """

    def __init__(self, name: str, value: Any, allowed: str) -> None:
        shown = repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        super().__init__(f"invalid {name}={shown}: {allowed}")
        self.name = name
        self.value = value
        self.allowed = allowed


class ConfigError(ContextDiffError, ValueError):
    """A configuration file or object holds a key or value this package does not support."""


class ModelDirectoryError(ContextDiffError):
    """A model directory is missing a file or folder, or one of its files cannot be read."""


class RunnerError(ContextDiffError, RuntimeError):
    """A backend runner failed to load or run a component (ONNX Runtime, OpenVINO, TensorRT, CUDA): the message names
    the component and carries the backend's own first line. Also a RuntimeError, which the backends raised before."""


def first_line(exc: BaseException, *, with_type: bool = True) -> str:
    """``Type: first line of the message`` of an exception (backends' messages run to many lines); without the type,
    the first line alone (the type's name for an empty message)."""
    lines = str(exc).strip().splitlines()
    if not with_type:
        return lines[0] if lines else type(exc).__name__
    return f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"
