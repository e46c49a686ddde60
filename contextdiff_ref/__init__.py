"""PyTorch reference implementation of ContextDiff — the source of truth for export and runtime."""

from contextdiff_ref.adapter import ContextAdapter
from contextdiff_ref.pipeline import ContextDiffPipeline

__all__ = ["ContextAdapter", "ContextDiffPipeline"]
