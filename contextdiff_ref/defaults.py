"""Where the embedded default model lives.

Until a trained model ships with the package, the default is the tiny pixel-space model (seed 0), written on
first use into the cache directory (``$CONTEXTDIFF_CACHE``, else ``$XDG_CACHE_HOME/contextdiff``, else
``~/.cache/contextdiff``). The write is atomic, so an interrupted first run leaves nothing a later run accepts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from contextdiff_ref.model_dir import MODEL_INDEX
from contextdiff_ref.tiny import write_tiny_model_dir

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "tiny-pixel-seed0"


def cache_dir() -> Path:
    if "CONTEXTDIFF_CACHE" in os.environ:
        return Path(os.environ["CONTEXTDIFF_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "contextdiff"


def default_model_dir() -> Path:
    """Path of the embedded default model directory, built if it is not there yet."""
    path = cache_dir() / DEFAULT_MODEL_NAME
    if not (path / MODEL_INDEX).is_file():
        logger.info("building the default model (tiny, random weights) in %s", path)
        write_tiny_model_dir(path, latent=False, seed=0)
    return path
