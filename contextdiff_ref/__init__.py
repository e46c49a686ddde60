"""PyTorch reference implementation of ContextDiff — the source of truth for export and runtime."""

from contextdiff_ref.models.adapter import ContextAdapter
from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline

__all__ = ["ContextAdapter", "ContextDiffPipeline"]
