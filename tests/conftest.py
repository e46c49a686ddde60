"""Shared fixtures: tiny seeded model directories, built once per test session (a few seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The default model is written to a cache directory; keep tests from touching the user's.
os.environ.setdefault("CONTEXTDIFF_CACHE", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "contextdiff"))


@pytest.fixture(scope="session")
def pixel_model_dir(tmp_path_factory) -> Path:
    from contextdiff_ref.tiny import write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-pixel", latent=False, seed=0)


@pytest.fixture(scope="session")
def latent_model_dir(tmp_path_factory) -> Path:
    from contextdiff_ref.tiny import write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-latent", latent=True, seed=1)


@pytest.fixture(scope="session")
def pixel_pipe(pixel_model_dir):
    from contextdiff_ref.pipeline import ContextDiffPipeline

    return ContextDiffPipeline.from_pretrained(pixel_model_dir)


@pytest.fixture(scope="session")
def latent_pipe(latent_model_dir):
    from contextdiff_ref.pipeline import ContextDiffPipeline

    return ContextDiffPipeline.from_pretrained(latent_model_dir)
