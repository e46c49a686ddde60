"""Where the embedded default model lives: ``contextdiff_ref/models/`` in the package.

``shapes-contextdiff`` is the ContextDiff model trained on the shapes dataset (``python -m contextdiff_ref.train``;
how it was trained and how it scores: README, "The embedded default model"); ``shapes-baseline`` is the same
model trained with the same budget and no adapter, shipped for the comparison (``python -m contextdiff_ref.evaluate``).
"""

from __future__ import annotations

from pathlib import Path

from contextdiff_ref.model_dir import check_model_dir
from runtime import DEFAULT_MODEL_NAME

SHIPPED_MODELS = Path(__file__).resolve().parent / "models"
BASELINE_MODEL_NAME = "shapes-baseline"


def default_model_dir() -> Path:
    """Path of the embedded default model directory (checked: a broken install names the missing file)."""
    path = SHIPPED_MODELS / DEFAULT_MODEL_NAME
    check_model_dir(path)
    return path


def baseline_model_dir() -> Path:
    """Path of the shipped no-adapter baseline trained alongside the default model."""
    path = SHIPPED_MODELS / BASELINE_MODEL_NAME
    check_model_dir(path)
    return path
