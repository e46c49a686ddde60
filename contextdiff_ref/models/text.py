"""Prompt tokenization shared by the reference pipeline and training."""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from contextdiff_ref.models.model_dir import ModelComponents

logger = logging.getLogger(__name__)


def max_text_length(components: ModelComponents) -> int:
    """Token length L of the text states: the tokenizer's limit, capped by the text encoder's positions."""
    return min(components.tokenizer.model_max_length, components.text_encoder.config.max_position_embeddings)


def tokenize(components: ModelComponents, prompts: Sequence[str]) -> torch.Tensor:
    """Prompts -> token ids (N, L) int64, padded to L; longer prompts are truncated with a warning."""
    tokenizer, length = components.tokenizer, max_text_length(components)
    ids = tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    for prompt, full in zip(prompts, tokenizer(list(prompts), truncation=False).input_ids):
        if len(full) > length:
            logger.warning("prompt truncated to the tokenizer's %d tokens: %r", length, prompt)
    return ids
