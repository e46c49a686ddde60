"""Where the embedded default model lives: ``contextdiff_ref/models/`` in the package.

``shapes-contextdiff`` is the ContextDiff model trained on the shapes dataset (``python -m contextdiff_ref.train``;
how it was trained and how it scores: README, "The embedded default model"). The no-adapter baseline it is compared
with (``python -m benchmarks.alignment --baseline DIR``) is trained by the same script with ``--baseline``.
"""

from __future__ import annotations

from pathlib import Path

from contextdiff_ref.models.model_dir import check_model_dir
from runtime import DEFAULT_MODEL_NAME

SHIPPED_MODELS = Path(__file__).resolve().parent


def default_model_dir() -> Path:
    """Path of the embedded default model directory (checked: a broken install names the missing file)."""
    path = SHIPPED_MODELS / DEFAULT_MODEL_NAME
    check_model_dir(path)
    return path
